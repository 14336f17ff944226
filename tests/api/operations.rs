//! Health, readiness (including a database outage and its recovery),
//! metrics, the OpenAPI document and the docs page.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let app = TestApp::spawn().await;
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_database_and_recovers_without_a_restart() {
    let db_name = format!("mechanica_test_{}", uuid::Uuid::new_v4().simple());
    // Migrate directly, then run the app through the tunnel.
    let direct = TestApp::spawn_with(
        test_config(format!("{}/{db_name}", server_url())),
        db_name.clone(),
    )
    .await;
    let mut tunnel = Tunnel::open(0, "127.0.0.1:3306").await;
    let mut config = test_config(format!("mysql://root@127.0.0.1:{}/{db_name}", tunnel.port));
    config.auto_migrate = false;
    let app = TestApp::spawn_with(config, format!("{db_name}_unused")).await;
    let tenant = direct.tenant("Outage").await;

    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);

    tunnel.cut();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let down = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_problem(down, StatusCode::SERVICE_UNAVAILABLE).await;
    let order = app.create_order(&tenant.token, &order_body()).await;
    assert_problem(order, StatusCode::SERVICE_UNAVAILABLE).await;
    let list = app.get("/v1/orders", &tenant.token).await;
    assert_problem(list, StatusCode::SERVICE_UNAVAILABLE).await;

    let _restored = Tunnel::open(tunnel.port, "127.0.0.1:3306").await;
    let mut recovered = false;
    for _ in 0..50 {
        let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
        if ready.status() == StatusCode::OK {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "readyz did not recover");
    let order = app.create_order(&tenant.token, &order_body()).await;
    assert_eq!(order.status(), StatusCode::CREATED);
    drop(direct);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_route_and_status() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Counted").await;
    app.new_order(&tenant).await;
    app.get("/v1/orders/not-an-id", &tenant.token).await;
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(r#"http_requests_total{method="POST",route="/v1/orders",status="201"} 1"#),
        "{text}"
    );
    assert!(text
        .contains(r#"http_requests_total{method="GET",route="/v1/orders/{id}",status="404"} 1"#));
    assert!(text.contains(
        r#"http_request_duration_seconds_count{method="POST",route="/v1/orders",status="201"} 1"#
    ));
    assert!(text.contains("db_pool_connections"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_require_a_token() {
    let db_name = format!("mechanica_test_{}", uuid::Uuid::new_v4().simple());
    let mut config = test_config(format!("{}/{db_name}", server_url()));
    config.metrics_token = Some("metrics-token-0123456789".into());
    let app = TestApp::spawn_with(config, db_name).await;
    let anonymous = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_problem(anonymous, StatusCode::UNAUTHORIZED).await;
    let scraped = app.get("/metrics", "metrics-token-0123456789").await;
    assert_eq!(scraped.status(), StatusCode::OK);
}

/// The worker binary started against `system` with metrics on a free
/// port, its log in `log_format` piped here; returns it and the first log
/// line that names that port.
async fn worker_binary(system: &System, log_format: &str) -> (tokio::process::Child, String) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_mechanica-delivery"))
        .env(
            "DATABASE_URL",
            format!("{}/{}", server_url(), system.db_name),
        )
        .env("SQS_QUEUE_URL", &system.queue.url)
        .env("DELIVERY_METRICS_ADDR", "127.0.0.1:0")
        .env("LOG_FORMAT", log_format)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the worker starts");
    let mut lines = BufReader::new(worker.stderr.take().unwrap()).lines();
    let start_up = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("metrics_port") {
                return line;
            }
        }
        panic!("the worker never said where its metrics are");
    })
    .await
    .expect("the start-up line within 20 s");
    (worker, start_up)
}

/// SPEC §10: `DELIVERY_METRICS_ADDR` with port 0 picks a free port, which
/// the worker reports in its start-up log line, and serves `/healthz` there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_binary_takes_port_zero_for_its_metrics() {
    let system = System::without_worker().await;
    let (mut worker, start_up) = worker_binary(&system, "json").await;
    let entry: Value = serde_json::from_str(&start_up).expect("a JSON log line");
    let port = entry["metrics_port"].as_u64().expect("the port, a number");
    assert_ne!(port, 0);
    let health = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("webhook_attempts_total"), "{metrics}");
    let _ = worker.kill().await;
}

/// The readable log format is for a terminal: written to a file or a pipe
/// (a log collector, `scripts/dev`'s files, the bench's), its lines carry
/// no colour codes, which would be noise in every search and dashboard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readable_logs_to_a_pipe_carry_no_colour_codes() {
    let system = System::without_worker().await;
    let (mut worker, start_up) = worker_binary(&system, "pretty").await;
    assert!(
        !start_up.contains('\u{1b}'),
        "colour codes in a piped log line: {start_up:?}"
    );
    let _ = worker.kill().await;
}

/// An instance started while others serve a heavy load meets their locks:
/// its start-up work used to exit on InnoDB's deadlock (seen in a chaos run,
/// two of three restarts at 200 changes/s). Here the sequencer's lock order
/// is played by hand: the feed clock locked, then an event given its feed
/// position while start-up reads the feed's end; InnoDB picks start-up as
/// the victim. The instance must retry and start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_started_into_a_deadlock_retries_and_starts() {
    let db_name = fresh_db_name();
    let url = format!("{}/{db_name}", server_url());
    let pool = mechanica::db::pool(&url, 2).unwrap();
    mechanica::db::migrate(&url, &pool).await.unwrap();
    for feed_position in [Some(1u64), None] {
        sqlx::query(
            "INSERT INTO order_events (id, order_id, customer_id, sequence, event_type, payload, created_at, feed_position)
             VALUES (?, ?, ?, 1, 'order.created', '{}', NOW(3), ?)",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(uuid::Uuid::now_v7())
        .bind(uuid::Uuid::now_v7())
        .bind(feed_position)
        .execute(&pool)
        .await
        .unwrap();
    }

    let mut sequencer = pool.begin().await.unwrap();
    sqlx::query("UPDATE feed_clock SET next_position = next_position + 1 WHERE id = 1")
        .execute(&mut *sequencer)
        .await
        .unwrap();
    let config = test_config(url.clone());
    let starting =
        tokio::spawn(async move { mechanica::app::App::build(&config).await.map(|_| ()) });
    // Start-up now reads the feed's end and waits for the clock.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sqlx::query("UPDATE order_events SET feed_position = 2 WHERE feed_position IS NULL")
        .execute(&mut *sequencer)
        .await
        .expect("start-up, not the sequencer, is the deadlock's victim");
    tokio::time::sleep(Duration::from_millis(100)).await;
    sequencer.commit().await.unwrap();

    let started = tokio::time::timeout(Duration::from_secs(30), starting)
        .await
        .expect("start-up finishes")
        .unwrap();
    pool.close().await;
    drop_database(&db_name).await;
    if let Err(e) = started {
        panic!("the instance exited at start-up: {e}");
    }
}
