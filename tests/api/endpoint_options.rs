//! An endpoint's custom headers and rate limit (SPEC §10).

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_headers_go_with_every_attempt() {
    let system = System::start().await;
    // The first attempt fails, so the header must survive a retry too.
    let receiver = Receiver::start(|_, nth, _| {
        if nth == 0 {
            (503, Duration::ZERO)
        } else {
            (200, Duration::ZERO)
        }
    })
    .await;
    let tenant = system.app.tenant("Headers").await;
    let response = system
        .app
        .post(
            "/v1/webhooks",
            &tenant.token,
            &json!({
                "url": format!("{}/hooks", receiver.base),
                "headers": {"X-Partner-Id": "acme-42", "Authorization": "Bearer partner-secret"},
            }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    assert_eq!(
        created["headers"],
        json!({"Authorization": "Bearer partner-secret", "X-Partner-Id": "acme-42"})
    );
    let secret = created["secret"].as_str().unwrap();
    system.app.new_order(&tenant).await;
    let ok = receiver
        .wait_for_successes("/hooks", 1, Duration::from_secs(20))
        .await;
    let hits = receiver.hits_on("/hooks");
    assert_eq!(hits.len(), 2, "one failure, one retry");
    for hit in &hits {
        assert_eq!(hit.header("x-partner-id"), "acme-42");
        assert_eq!(hit.header("authorization"), "Bearer partner-secret");
        assert_eq!(hit.header("content-type"), "application/json");
    }
    assert!(ok[0].verifies_with(secret));

    // Replacing them replaces all; null removes them.
    let id = created["id"].as_str().unwrap();
    let patched: Value = system
        .app
        .client
        .patch(system.app.url(&format!("/v1/webhooks/{id}")))
        .bearer_auth(&tenant.token)
        .json(&json!({"headers": {"X-Other": "1"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(patched["headers"], json!({"X-Other": "1"}));
    let cleared: Value = system
        .app
        .client
        .patch(system.app.url(&format!("/v1/webhooks/{id}")))
        .bearer_auth(&tenant.token)
        .json(&json!({"headers": null, "rate_limit_per_second": 20}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cleared["headers"], json!({}));
    assert_eq!(cleared["rate_limit_per_second"], 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_headers_and_limits_are_refused_by_field_and_change_nothing() {
    let system = System::without_worker().await;
    let app = &system.app;
    let tenant = app.tenant("Careless").await;
    let cases = [
        (json!({"headers": {"X Space": "v"}}), "headers.X Space"),
        (
            json!({"headers": {"X-Crlf": "a\r\nInjected: 1"}}),
            "headers.X-Crlf",
        ),
        (
            json!({"headers": {"Webhook-Signature": "v1,forged"}}),
            "headers.Webhook-Signature",
        ),
        (json!({"headers": {"Host": "elsewhere"}}), "headers.Host"),
        (
            json!({"headers": {"Transfer-Encoding": "chunked"}}),
            "headers.Transfer-Encoding",
        ),
        (json!({"rate_limit_per_second": 0}), "rate_limit_per_second"),
        (
            json!({"rate_limit_per_second": 10001}),
            "rate_limit_per_second",
        ),
    ];
    for (extra, field) in cases {
        let mut body = json!({"url": "http://127.0.0.1:9/hooks"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let response = app.post("/v1/webhooks", &tenant.token, &body).await;
        let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(fields(&problem), [field], "{body}");
    }
    let eleven: serde_json::Map<String, Value> =
        (0..11).map(|i| (format!("X-{i}"), json!("v"))).collect();
    let response = app
        .post(
            "/v1/webhooks",
            &tenant.token,
            &json!({"url": "http://127.0.0.1:9/hooks", "headers": eleven}),
        )
        .await;
    let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(fields(&problem), ["headers"]);
    let listed: Value = app
        .get("/v1/webhooks", &tenant.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"], json!([]), "nothing was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_sent_no_faster_than_the_endpoints_rate_limit() {
    let system = System::without_worker().await;
    let receiver = Receiver::start(|_, _, _| (200, Duration::ZERO)).await;
    let tenant = system.app.tenant("Paced").await;
    let response = system
        .app
        .post(
            "/v1/webhooks",
            &tenant.token,
            &json!({"url": format!("{}/paced", receiver.base), "rate_limit_per_second": 5}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let (_, _) = system
        .endpoint(&tenant.token, &format!("{}/free", receiver.base), None)
        .await;
    // The backlog: 20 events queued before the worker starts.
    for _ in 0..20 {
        system.app.new_order(&tenant).await;
    }
    let started = Instant::now();
    let _worker = TestWorker::start(worker_config(&system.db_name, &system.queue.url)).await;
    let free = receiver
        .wait_for_successes("/free", 20, Duration::from_secs(20))
        .await;
    let paced = receiver
        .wait_for_successes("/paced", 20, Duration::from_secs(30))
        .await;
    let arrivals: Vec<Instant> = paced.iter().map(|h| h.at).collect();
    let span = *arrivals.iter().max().unwrap() - *arrivals.iter().min().unwrap();
    println!(
        "20 paced deliveries over {span:?}, busiest second {}; unpaced done {:?} after start",
        busiest_second(&arrivals),
        free.iter().map(|h| h.at).max().unwrap() - started
    );
    assert!(busiest_second(&arrivals) <= 5, "{arrivals:?}");
    assert!(span >= Duration::from_millis(3800), "{span:?}");
    // The limit is the paced endpoint's alone: the other one is not held back.
    let free_span = free.iter().map(|h| h.at).max().unwrap() - started;
    assert!(free_span < Duration::from_secs(3), "{free_span:?}");
}

/// An endpoint's rate limit holds for all workers together, and when a slow
/// endpoint keeps every attempt slot busy. The pace used to be kept per
/// worker (three workers sent an endpoint limited to 4/s up to 12 requests
/// in one second), and a delivery slept through its turn before it took a
/// worker slot, so turns that passed while slots were busy started together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_together_keep_an_endpoints_rate_limit() {
    let system = System::without_worker().await;
    let receiver = Receiver::start(|path, _, _| match path {
        "/slow" => (200, Duration::from_millis(400)),
        _ => (200, Duration::ZERO),
    })
    .await;
    let tenant = system.app.tenant("Shared pace").await;
    system
        .paced_endpoint(&tenant.token, &format!("{}/paced", receiver.base), 4)
        .await;
    system
        .endpoint(&tenant.token, &format!("{}/slow", receiver.base), None)
        .await;
    for _ in 0..24 {
        system.app.new_order(&tenant).await;
    }
    let mut workers = vec![];
    for _ in 0..3 {
        let mut config = worker_config(&system.db_name, &system.queue.url);
        config.max_in_flight = 3;
        config.max_in_flight_per_endpoint = 3;
        workers.push(TestWorker::start(config).await);
    }
    let paced = receiver
        .wait_for_successes("/paced", 24, Duration::from_secs(40))
        .await;
    let arrivals: Vec<Instant> = paced.iter().map(|h| h.at).collect();
    assert!(
        busiest_second(&arrivals) <= 4,
        "busiest second: {}",
        busiest_second(&arrivals)
    );
    let span = *arrivals.iter().max().unwrap() - *arrivals.iter().min().unwrap();
    assert!(span >= Duration::from_millis(5500), "{span:?}");
}
