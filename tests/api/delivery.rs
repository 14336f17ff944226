//! The whole path: API → MariaDB → relay → SQS emulator → worker → real
//! HTTP receivers on loopback, signatures checked with `standardwebhooks`.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

const LIFE: [&str; 5] = [
    "confirmed",
    "picked_up",
    "in_transit",
    "out_for_delivery",
    "delivered",
];
const FAST: Duration = Duration::ZERO;

async fn attempts(app: &TestApp, token: &str, endpoint: &str, delivery: &str) -> Vec<Value> {
    let page: Value = app
        .get(
            &format!("/v1/webhooks/{endpoint}/deliveries/{delivery}/attempts"),
            token,
        )
        .await
        .json()
        .await
        .unwrap();
    page["data"].as_array().unwrap().clone()
}

/// Waits until the delivery of `event_type`/`sequence` reaches `status`.
async fn settled(
    app: &TestApp,
    token: &str,
    endpoint: &str,
    status: &str,
    count: usize,
) -> Vec<Value> {
    for _ in 0..200 {
        let rows = deliveries(app, token, endpoint, &format!("&status={status}")).await;
        if rows.len() >= count {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{count} deliveries never became {status}: {:?}",
        deliveries(app, token, endpoint, "").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_of_an_order_arrives_once_signed_and_in_order() {
    let system = System::start().await;
    let receiver = Receiver::start(|_, _, _| (200, FAST)).await;
    let tenant = system.app.tenant("Empress").await;
    let (endpoint, secret) = system
        .endpoint(&tenant.token, &format!("{}/hooks", receiver.base), None)
        .await;

    let order = system.app.new_order(&tenant).await;
    let id = order["id"].as_str().unwrap();
    system.app.drive(id, &LIFE).await;

    let hits = receiver
        .wait_for_successes("/hooks", 6, Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.hits_on("/hooks").len(),
        6,
        "each event exactly once"
    );
    let sequences: Vec<u64> = hits
        .iter()
        .map(|h| h.json()["data"]["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(sequences, [1, 2, 3, 4, 5, 6]);
    for hit in &hits {
        assert!(hit.verifies_with(&secret), "signature verifies");
        assert_eq!(hit.header("webhook-id"), hit.json()["id"].as_str().unwrap());
        assert_eq!(hit.header("content-type"), "application/json");
        assert!(hit.header("user-agent").starts_with("Mechanica-Webhooks/"));
        assert_eq!(hit.json()["data"]["order_id"], id);
    }
    let history: Value = system
        .app
        .get(&format!("/v1/orders/{id}/events"), &tenant.token)
        .await
        .json()
        .await
        .unwrap();
    let bodies: Vec<Value> = hits.iter().map(Hit::json).collect();
    assert_eq!(
        Value::Array(bodies),
        history["data"],
        "the body is the envelope"
    );

    let rows = settled(&system.app, &tenant.token, &endpoint, "succeeded", 6).await;
    for row in &rows {
        assert_eq!(row["attempts"], 1);
        assert_eq!(row["last_response_status"], 200);
        let tries = attempts(
            &system.app,
            &tenant.token,
            &endpoint,
            row["id"].as_str().unwrap(),
        )
        .await;
        assert_eq!(tries.len(), 1);
        assert_eq!(tries[0]["response_status"], 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_with_the_same_id_and_fresh_timestamps() {
    let system = System::start().await;
    // 500, 500, then 200; the schedule in tests is 300 ms between tries, so
    // the endpoint is slowed to cross a second between attempts.
    let receiver = Receiver::start(|_, nth, _| match nth {
        0 | 1 => (500, Duration::from_millis(400)),
        _ => (200, FAST),
    })
    .await;
    let tenant = system.app.tenant("Flaky").await;
    let (endpoint, secret) = system
        .endpoint(
            &tenant.token,
            &format!("{}/flaky", receiver.base),
            Some(json!(["order.created"])),
        )
        .await;
    system.app.new_order(&tenant).await;

    receiver
        .wait_for_successes("/flaky", 1, Duration::from_secs(20))
        .await;
    let hits = receiver.hits_on("/flaky");
    assert_eq!(
        hits.iter().map(|h| h.status).collect::<Vec<_>>(),
        [500, 500, 200]
    );
    let ids: Vec<String> = hits.iter().map(|h| h.header("webhook-id")).collect();
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "same webhook-id on every retry"
    );
    assert!(
        hits.iter().all(|h| h.verifies_with(&secret)),
        "each attempt re-signed"
    );
    let stamps: Vec<i64> = hits
        .iter()
        .map(|h| h.header("webhook-timestamp").parse().unwrap())
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]));
    assert!(stamps[2] > stamps[0], "fresh timestamps: {stamps:?}");

    let rows = settled(&system.app, &tenant.token, &endpoint, "succeeded", 1).await;
    let tries = attempts(
        &system.app,
        &tenant.token,
        &endpoint,
        rows[0]["id"].as_str().unwrap(),
    )
    .await;
    let statuses: Vec<u64> = tries
        .iter()
        .map(|t| t["response_status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [500, 500, 200]);
    assert_eq!(rows[0]["attempts"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_fails_after_the_schedule_and_a_manual_retry_is_one_more_attempt() {
    let system = System::start().await;
    let receiver = Receiver::start(|_, _, _| (500, FAST)).await;
    let tenant = system.app.tenant("Broken").await;
    let (endpoint, _) = system
        .endpoint(&tenant.token, &format!("{}/down", receiver.base), None)
        .await;
    system.app.new_order(&tenant).await;

    let failed = settled(&system.app, &tenant.token, &endpoint, "failed", 1).await;
    let delivery = failed[0]["id"].as_str().unwrap().to_string();
    assert_eq!(failed[0]["attempts"], 4, "first try and 3 retries");
    assert_eq!(failed[0]["last_response_status"], 500);
    assert_eq!(failed[0]["next_attempt_at"], Value::Null);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        receiver.hits_on("/down").len(),
        4,
        "nothing after the schedule"
    );

    let retry = system
        .app
        .post(
            &format!("/v1/webhooks/{endpoint}/deliveries/{delivery}/retry"),
            &tenant.token,
            &json!({}),
        )
        .await;
    assert_eq!(retry.status(), StatusCode::ACCEPTED);
    for _ in 0..100 {
        if receiver.hits_on("/down").len() == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        receiver.hits_on("/down").len(),
        5,
        "exactly one more attempt"
    );
    let tries = attempts(&system.app, &tenant.token, &endpoint, &delivery).await;
    assert_eq!(tries.len(), 5);
    assert_eq!(tries[4]["attempt"], 5);
    let row = deliveries(&system.app, &tenant.token, &endpoint, "").await;
    assert_eq!(row[0]["status"], "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_endpoint_and_filters_and_deletion_are_respected() {
    let system = System::start().await;
    let receiver = Receiver::start(|path, _, _| {
        if path == "/gone" {
            (410, FAST)
        } else {
            (200, FAST)
        }
    })
    .await;
    let tenant = system.app.tenant("Picky").await;
    let (gone, _) = system
        .endpoint(&tenant.token, &format!("{}/gone", receiver.base), None)
        .await;
    let (_, _) = system
        .endpoint(
            &tenant.token,
            &format!("{}/created-only", receiver.base),
            Some(json!(["order.created"])),
        )
        .await;
    let (deleted, _) = system
        .endpoint(&tenant.token, &format!("{}/deleted", receiver.base), None)
        .await;
    let (disabled, _) = system
        .endpoint(&tenant.token, &format!("{}/disabled", receiver.base), None)
        .await;
    assert_eq!(
        system
            .app
            .delete(&format!("/v1/webhooks/{deleted}"), &tenant.token)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let off = system
        .app
        .client
        .patch(system.app.url(&format!("/v1/webhooks/{disabled}")))
        .bearer_auth(&tenant.token)
        .json(&json!({ "enabled": false }))
        .send()
        .await
        .unwrap();
    assert_eq!(off.status(), StatusCode::OK);

    let order = system.app.new_order(&tenant).await;
    receiver
        .wait_for_successes("/created-only", 1, Duration::from_secs(20))
        .await;
    for _ in 0..100 {
        let endpoint: Value = system
            .app
            .get(&format!("/v1/webhooks/{gone}"), &tenant.token)
            .await
            .json()
            .await
            .unwrap();
        if endpoint["enabled"] == false {
            assert!(endpoint["disabled_reason"]
                .as_str()
                .unwrap()
                .contains("410"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    system
        .app
        .drive(order["id"].as_str().unwrap(), &LIFE[..2])
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    assert_eq!(receiver.hits_on("/gone").len(), 1, "nothing after 410");
    assert_eq!(
        receiver.hits_on("/created-only").len(),
        1,
        "status changes filtered out"
    );
    assert!(receiver.hits_on("/deleted").is_empty());
    assert!(receiver.hits_on("/disabled").is_empty());
    let gone_rows = deliveries(&system.app, &tenant.token, &gone, "").await;
    assert_eq!(
        gone_rows.len(),
        1,
        "a disabled endpoint gets no new deliveries"
    );
    assert_eq!(gone_rows[0]["status"], "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orders_events_wait_for_an_earlier_one_while_other_orders_flow() {
    let system = System::start().await;
    let slow_order = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let failing = slow_order.clone();
    let attempts_on_two = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = attempts_on_two.clone();
    let receiver = Receiver::start(move |_, _, body| {
        let is_target = body["data"]["order_id"].as_str() == Some(failing.lock().unwrap().as_str())
            && body["data"]["sequence"] == 2;
        if is_target && counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
            (500, FAST)
        } else {
            (200, FAST)
        }
    })
    .await;
    let tenant = system.app.tenant("Orderly").await;
    system
        .endpoint(&tenant.token, &format!("{}/ordered", receiver.base), None)
        .await;
    let x = system.app.new_order(&tenant).await;
    let x_id = x["id"].as_str().unwrap().to_string();
    *slow_order.lock().unwrap() = x_id.clone();
    let y = system.app.new_order(&tenant).await;
    let y_id = y["id"].as_str().unwrap().to_string();
    receiver
        .wait_for_successes("/ordered", 2, Duration::from_secs(20))
        .await;

    // X: events 2, 3, 4 committed at once; 2 fails twice. Y moves meanwhile.
    system.app.drive(&x_id, &LIFE[..3]).await;
    system.app.drive(&y_id, &LIFE[..3]).await;
    receiver
        .wait_for_successes("/ordered", 8, Duration::from_secs(30))
        .await;

    let hits = receiver.hits_on("/ordered");
    let x_hits: Vec<(u64, u16)> = hits
        .iter()
        .filter(|h| h.json()["data"]["order_id"] == x_id.as_str())
        .map(|h| (h.json()["data"]["sequence"].as_u64().unwrap(), h.status))
        .collect();
    assert_eq!(
        x_hits,
        [(1, 200), (2, 500), (2, 500), (2, 200), (3, 200), (4, 200)]
    );
    let first_x2_failure = hits
        .iter()
        .position(|h| h.json()["data"]["order_id"] == x_id.as_str() && h.status == 500)
        .unwrap();
    let x2_success = hits
        .iter()
        .position(|h| {
            h.json()["data"]["order_id"] == x_id.as_str()
                && h.json()["data"]["sequence"] == 2
                && h.status == 200
        })
        .unwrap();
    let y_done: Vec<usize> = hits
        .iter()
        .enumerate()
        .filter(|(_, h)| {
            h.json()["data"]["order_id"] == y_id.as_str()
                && h.json()["data"]["sequence"].as_u64().unwrap() > 1
        })
        .map(|(i, _)| i)
        .collect();
    assert_eq!(y_done.len(), 3);
    assert!(
        y_done.iter().all(|i| *i < x2_success) && y_done.iter().any(|i| *i > first_x2_failure),
        "Y's events flowed while X's event 2 was retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_event_goes_to_that_endpoint_only() {
    let system = System::start().await;
    let receiver = Receiver::start(|_, _, _| (204, FAST)).await;
    let tenant = system.app.tenant("Tester").await;
    let (a, secret) = system
        .endpoint(
            &tenant.token,
            &format!("{}/a", receiver.base),
            Some(json!(["order.created"])),
        )
        .await;
    system
        .endpoint(&tenant.token, &format!("{}/b", receiver.base), None)
        .await;

    let response = system
        .app
        .post(&format!("/v1/webhooks/{a}/test"), &tenant.token, &json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let hits = receiver
        .wait_for_successes("/a", 1, Duration::from_secs(10))
        .await;
    assert_eq!(hits[0].json()["type"], "webhook.test");
    assert!(hits[0].verifies_with(&secret));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(receiver.hits_on("/b").is_empty());
    let feed: Value = system
        .app
        .get("/v1/events", &tenant.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(feed["data"], json!([]), "test events are not in the feed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_address_is_refused_when_the_worker_connects() {
    // The API was told private networks are fine; the worker was not.
    let queue = TestQueue::create(false).await;
    let db_name = fresh_db_name();
    let mut config = test_config(format!("{}/{db_name}", server_url()));
    config.sqs_queue_url = Some(queue.url.clone());
    config.aws_endpoint_url = Some(sqs_endpoint());
    config.webhook_allow_private_networks = true;
    let app = TestApp::spawn_with(config, db_name.clone()).await;
    let mut strict = worker_config(&db_name, &queue.url);
    strict.allow_private_networks = false;
    strict.retry_schedule = mechanica::delivery::schedule::RetrySchedule(vec![]);
    let _worker = TestWorker::start(strict).await;
    let receiver = Receiver::start(|_, _, _| (200, FAST)).await;
    let tenant = app.tenant("Rebound").await;
    let port = receiver.base.rsplit(':').next().unwrap().to_string();
    let system = System {
        app,
        worker: None,
        queue,
        db_name,
    };
    let (literal, _) = system
        .endpoint(&tenant.token, &format!("{}/x", receiver.base), None)
        .await;
    let (named, _) = system
        .endpoint(&tenant.token, &format!("http://localhost:{port}/y"), None)
        .await;
    system.app.new_order(&tenant).await;

    for endpoint in [&literal, &named] {
        let rows = settled(&system.app, &tenant.token, endpoint, "failed", 1).await;
        let error = rows[0]["last_error"].as_str().unwrap();
        assert!(error.contains("loopback"), "{error}");
    }
    assert!(
        receiver.hits().is_empty(),
        "no request reached the private address"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_replaced_and_nothing_is_delivered_twice() {
    // (A worker killed during a long poll would hide the message it was
    // being handed for the queue's visibility timeout, as real SQS does.)
    let system = System::without_worker().await;
    let receiver =
        Receiver::start(|_, nth, _| if nth == 0 { (503, FAST) } else { (200, FAST) }).await;
    let tenant = system.app.tenant("Resilient").await;
    let (endpoint, _) = system
        .endpoint(&tenant.token, &format!("{}/r", receiver.base), None)
        .await;
    let mut schedule = worker_config(&system.db_name, &system.queue.url);
    schedule.retry_schedule = mechanica::delivery::schedule::RetrySchedule::parse("2s").unwrap();
    let first = TestWorker::start(schedule.clone()).await;
    system.app.new_order(&tenant).await;
    for _ in 0..100 {
        if !receiver.hits_on("/r").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(receiver.hits_on("/r").len(), 1);
    first.kill();
    let _second = TestWorker::start(schedule).await;

    receiver
        .wait_for_successes("/r", 1, Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let hits = receiver.hits_on("/r");
    let successes: HashMap<String, usize> =
        hits.iter()
            .filter(|h| h.status == 200)
            .fold(HashMap::new(), |mut m, h| {
                *m.entry(h.header("webhook-id")).or_default() += 1;
                m
            });
    assert_eq!(successes.len(), 1);
    assert!(
        successes.values().all(|n| *n == 1),
        "no duplicate successful POSTs"
    );
    let rows = settled(&system.app, &tenant.token, &endpoint, "succeeded", 1).await;
    assert_eq!(rows[0]["attempts"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_does_not_delay_a_healthy_one() {
    let system = System::start().await;
    // The worker's timeout in tests is 2 s; /slow sleeps past it.
    let receiver = Receiver::start(|path, _, _| {
        if path == "/slow" {
            (200, Duration::from_secs(3))
        } else {
            (200, FAST)
        }
    })
    .await;
    let tenant = system.app.tenant("Mixed").await;
    let (slow, _) = system
        .endpoint(&tenant.token, &format!("{}/slow", receiver.base), None)
        .await;
    system
        .endpoint(&tenant.token, &format!("{}/fast", receiver.base), None)
        .await;

    let started = std::time::Instant::now();
    for _ in 0..10 {
        system.app.new_order(&tenant).await;
    }
    receiver
        .wait_for_successes("/fast", 10, Duration::from_secs(10))
        .await;
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the healthy endpoint got all 10 in {:?}, while the slow one was still timing out",
        started.elapsed()
    );
    // Meanwhile the slow endpoint's attempts time out and are recorded so.
    let mut timed_out = false;
    for _ in 0..100 {
        let rows = deliveries(&system.app, &tenant.token, &slow, "").await;
        if rows.iter().any(|r| {
            r["last_error"]
                .as_str()
                .unwrap_or_default()
                .contains("timed out")
        }) {
            timed_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(timed_out, "attempts to the slow endpoint time out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_rotation_each_delivery_carries_both_signatures() {
    let system = System::start().await;
    let receiver = Receiver::start(|_, _, _| (200, FAST)).await;
    let tenant = system.app.tenant("Rotating").await;
    let (endpoint, old) = system
        .endpoint(&tenant.token, &format!("{}/rot", receiver.base), None)
        .await;
    let rotated: Value = system
        .app
        .post(
            &format!("/v1/webhooks/{endpoint}/secret/rotate"),
            &tenant.token,
            &json!({}),
        )
        .await
        .json()
        .await
        .unwrap();
    let new = rotated["secret"].as_str().unwrap();
    system.app.new_order(&tenant).await;

    let hits = receiver
        .wait_for_successes("/rot", 1, Duration::from_secs(10))
        .await;
    let header = hits[0].header("webhook-signature");
    let signatures: Vec<&str> = header.split(' ').collect();
    assert_eq!(signatures.len(), 2, "{header}");
    assert!(hits[0].verifies_with(new));
    assert!(hits[0].verifies_with(&old));
    // Each signature on its own verifies with its own secret.
    let mut only_new = hits[0].clone();
    only_new
        .headers
        .insert("webhook-signature", signatures[0].parse().unwrap());
    assert!(only_new.verifies_with(new) && !only_new.verifies_with(&old));
    let mut only_old = hits[0].clone();
    only_old
        .headers
        .insert("webhook-signature", signatures[1].parse().unwrap());
    assert!(only_old.verifies_with(&old) && !only_old.verifies_with(new));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failing_for_the_whole_disable_period_is_disabled() {
    // WEBHOOK_DISABLE_AFTER compressed from 5 days to half a second; the
    // schedule's three retries (300 ms ± 20 % each) span more than that.
    let system = System::without_worker().await;
    let mut config = worker_config(&system.db_name, &system.queue.url);
    config.disable_after = Duration::from_millis(500);
    let _worker = TestWorker::start(config).await;
    let receiver = Receiver::start(|_, _, _| (500, FAST)).await;
    let tenant = system.app.tenant("Dead").await;
    let (endpoint, _) = system
        .endpoint(&tenant.token, &format!("{}/dead", receiver.base), None)
        .await;
    system.app.new_order(&tenant).await;

    let mut disabled = Value::Null;
    for _ in 0..100 {
        let e: Value = system
            .app
            .get(&format!("/v1/webhooks/{endpoint}"), &tenant.token)
            .await
            .json()
            .await
            .unwrap();
        if e["enabled"] == false {
            disabled = e;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        disabled["disabled_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("every delivery failed"),
        "{disabled}"
    );
    // Re-enabling clears the reason.
    let enabled: Value = system
        .app
        .client
        .patch(system.app.url(&format!("/v1/webhooks/{endpoint}")))
        .bearer_auth(&tenant.token)
        .json(&json!({ "enabled": true }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(enabled["disabled_reason"], Value::Null);

    // Its failure clock started again: the next single failure does not
    // disable it (it kept the old `failing_since`, and did).
    let order = system.app.new_order(&tenant).await;
    let event_order = order["id"].as_str().unwrap().to_string();
    for _ in 0..200 {
        let rows = deliveries(&system.app, &tenant.token, &endpoint, "").await;
        let tried = rows.iter().any(|r| {
            r["attempts"].as_u64() >= Some(1)
                && r["status"] == "pending"
                && r["created_at"].is_string()
        });
        if tried
            && receiver
                .hits()
                .iter()
                .any(|h| h.json()["data"]["order_id"] == event_order.as_str())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let after: Value = system
        .app
        .get(&format!("/v1/webhooks/{endpoint}"), &tenant.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        after["enabled"], true,
        "disabled again by one failure: {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_reports_health_and_attempts_on_its_metrics_port() {
    let system = System::start().await;
    let receiver = Receiver::start(|_, _, _| (204, FAST)).await;
    let tenant = system.app.tenant("Watched").await;
    system
        .endpoint(&tenant.token, &format!("{}/hooks", receiver.base), None)
        .await;
    system.app.new_order(&tenant).await;
    receiver
        .wait_for_successes("/hooks", 1, Duration::from_secs(10))
        .await;

    let port = system.worker.as_ref().unwrap().metrics_port;
    let health = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains("webhook_deliveries_pending 0\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        metrics.contains("webhook_attempts_total{outcome=\"succeeded\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("webhook_attempts_total{outcome=\"failed\"} 0\n"));
    assert!(metrics.contains("webhook_end_to_end_seconds_count 1\n"));
    assert!(
        metrics.contains("webhook_deliveries_pending 0\n"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_finishes_the_attempt_in_flight() {
    let mut system = System::start().await;
    let receiver = Receiver::start(|_, _, _| (200, Duration::from_millis(1500))).await;
    let tenant = system.app.tenant("Patient").await;
    system
        .endpoint(&tenant.token, &format!("{}/hooks", receiver.base), None)
        .await;
    system.app.new_order(&tenant).await;
    // Wait until the attempt is under way (its row leased), then stop.
    for _ in 0..100 {
        let (leased,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM webhook_deliveries WHERE lease_until IS NOT NULL")
                .fetch_one(&system.app.db)
                .await
                .unwrap();
        if leased == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(receiver.hits().is_empty(), "the attempt is still in flight");
    system.worker.take().unwrap().stop().await;

    // Stopping waited for the answer and recorded it.
    assert_eq!(receiver.hits_on("/hooks").len(), 1);
    let (status, attempts, lease): (String, u32, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT status, attempts, lease_until FROM webhook_deliveries")
            .fetch_one(&system.app.db)
            .await
            .unwrap();
    assert_eq!((status.as_str(), attempts, lease), ("succeeded", 1, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_on_503_is_honoured_up_to_an_hour() {
    use axum::http::header::RETRY_AFTER;
    // Answers 503 with the Retry-After its path names.
    async fn busy(uri: axum::http::Uri) -> impl axum::response::IntoResponse {
        let seconds = uri.path().trim_start_matches('/').to_string();
        (StatusCode::SERVICE_UNAVAILABLE, [(RETRY_AFTER, seconds)])
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(busy)).await });

    let system = System::start().await;
    let tenant = system.app.tenant("Busy").await;
    let (short, _) = system
        .endpoint(&tenant.token, &format!("{base}/3"), None)
        .await;
    let (long, _) = system
        .endpoint(&tenant.token, &format!("{base}/86400"), None)
        .await;
    system.app.new_order(&tenant).await;

    // The next attempt's delay after the first: what the endpoint asked for
    // (not the 300 ms schedule), but never more than an hour.
    let delay = |endpoint: String| {
        let db = system.app.db.clone();
        async move {
            let id: uuid::Uuid = endpoint.parse().unwrap();
            for _ in 0..200 {
                let row: Option<(i64,)> = sqlx::query_as(
                    "SELECT TIMESTAMPDIFF(MICROSECOND, a.started_at, d.next_attempt_at)
                     FROM webhook_deliveries d JOIN webhook_attempts a ON a.delivery_id = d.id
                     WHERE d.endpoint_id = ? AND d.next_attempt_at IS NOT NULL",
                )
                .bind(id)
                .fetch_optional(&db)
                .await
                .unwrap();
                if let Some((micros,)) = row {
                    return Duration::from_micros(micros as u64);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("no attempt was recorded");
        }
    };
    let short = delay(short).await;
    assert!(
        short >= Duration::from_secs(3) && short < Duration::from_secs(4),
        "{short:?}"
    );
    let long = delay(long).await;
    assert!(
        long >= Duration::from_secs(3600) && long < Duration::from_secs(3601),
        "{long:?}"
    );
}
