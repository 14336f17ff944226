//! Per-key rate limits and the limits on slow or oversized requests.

use std::time::{Duration, Instant};

use mechanica::rate_limit::RateLimit;
use mechanica::server::{HEADER_READ_TIMEOUT, MAX_HEADERS, MAX_HEADER_BYTES};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{
    assert_problem, fresh_db_name, order_body, server_url, test_config, TestApp, ADMIN,
};

async fn spawn_limited(per_second: u32, burst: u32) -> TestApp {
    let db_name = fresh_db_name();
    let mut config = test_config(format!("{}/{db_name}", server_url()));
    config.rate_limit = RateLimit { per_second, burst };
    TestApp::spawn_with(config, db_name).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_rate_gets_429_with_retry_after_and_changes_nothing() {
    let app = spawn_limited(1, 3).await;
    let noisy = app.tenant("Noisy").await;
    let quiet = app.tenant("Quiet").await;

    for _ in 0..3 {
        let response = app.get("/v1/orders", &noisy.token).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let refused = app.create_order(&noisy.token, &order_body()).await;
    let retry_after: u64 = refused
        .headers()
        .get("retry-after")
        .expect("Retry-After on a 429")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    let problem = assert_problem(refused, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(
        problem["type"],
        "https://mechanica.dev/problems/rate-limited"
    );
    let (orders,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM orders")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(orders, 0, "a refused request changes nothing");

    // Another key and the operator are unaffected.
    assert_eq!(
        app.get("/v1/orders", &quiet.token).await.status(),
        StatusCode::OK
    );
    for _ in 0..10 {
        assert_eq!(
            app.get("/v1/customers", ADMIN).await.status(),
            StatusCode::OK
        );
    }

    // After the advertised wait the key may go on.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let response = app.create_order(&noisy.token, &order_body()).await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tokens_are_401_not_rate_limited() {
    let app = spawn_limited(1, 1).await;
    for _ in 0..5 {
        let response = app.get("/v1/orders", "mk_not-a-real-key").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Reads until the server closes the connection; what it sent.
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> String {
    let mut received = Vec::new();
    let read = tokio::time::timeout(within, stream.read_to_end(&mut received)).await;
    assert!(
        read.is_ok(),
        "the server kept a stalled connection open for over {within:?}"
    );
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let app = TestApp::spawn().await;
    let mut stream = connect(&app).await;
    let started = Instant::now();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    read_to_close(&mut stream, HEADER_READ_TIMEOUT + Duration::from_secs(5)).await;
    assert!(started.elapsed() >= HEADER_READ_TIMEOUT - Duration::from_secs(1));
    // The server still answers everyone else.
    let response = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_gets_408() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Slow").await;
    let mut stream = connect(&app).await;
    let head = format!(
        "POST /v1/orders HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{{\"parcels\":",
        tenant.token
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let response = read_to_close(
        &mut stream,
        mechanica::app::BODY_READ_TIMEOUT + Duration::from_secs(5),
    )
    .await;
    assert!(
        response.starts_with("HTTP/1.1 408"),
        "got: {}",
        response.lines().next().unwrap_or("")
    );
    assert!(response.contains("application/problem+json"));
    let (orders,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM orders")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(orders, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_refused() {
    let app = TestApp::spawn().await;

    let mut stream = connect(&app).await;
    let big = "a".repeat(MAX_HEADER_BYTES + 1);
    let request = format!("GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: {big}\r\n\r\n");
    let _ = stream.write_all(request.as_bytes()).await;
    let response = read_head(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 431"), "got: {response:.40}");

    let mut stream = connect(&app).await;
    let many: String = (0..=MAX_HEADERS)
        .map(|i| format!("X-H{i}: v\r\n"))
        .collect();
    let request = format!("GET /healthz HTTP/1.1\r\nHost: localhost\r\n{many}\r\n");
    let _ = stream.write_all(request.as_bytes()).await;
    let response = read_head(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 431"), "got: {response:.40}");
}

/// Reads a response's status line and headers (or whatever came before
/// the server closed the connection).
async fn read_head(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while !received.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer within 5 s");
    String::from_utf8_lossy(&received).into_owned()
}
