//! The pipeline's promises under the conditions that used to break them
//! (issue 10): an event SQS refuses, forged messages, manual retries out of
//! order, stale leases, a starved pool, an unreadable secret, a database
//! outage with a dead-letter queue, a database that refuses the fan-out,
//! and lost messages.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

/// Polls `check` until it gives a value, or panics after `within`.
async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sequences(hits: &[Hit], order: &str) -> Vec<u64> {
    hits.iter()
        .filter(|h| (200..300).contains(&h.status) && h.json()["data"]["order_id"] == order)
        .map(|h| h.json()["data"]["sequence"].as_u64().unwrap())
        .collect()
}

/// SQS refuses an event (here: larger than the queue's `MaximumMessageSize`).
/// It is parked: other orders flow on, its order's later event waits behind
/// it, the operator sees both, and a retry publishes them in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_sqs_refuses_is_parked_and_holds_back_only_its_order() {
    let queue = TestQueue::create_with(
        false,
        &[(QueueAttributeName::MaximumMessageSize, "4096".into())],
    )
    .await;
    let mut system = System::on_queue(queue).await;
    system.worker =
        Some(TestWorker::start(worker_config(&system.db_name, &system.queue.url)).await);
    let receiver = Receiver::start(|_, _, _| (200, Duration::ZERO)).await;
    let tenant = system.app.tenant("Parked").await;
    system
        .endpoint(&tenant.token, &format!("{}/hooks", receiver.base), None)
        .await;

    // 2,000 three-byte characters: 6 KB of notes, over the queue's 4 KB.
    let mut big = order_body();
    big["notes"] = json!("€".repeat(2000));
    let response = system.app.create_order(&tenant.token, &big).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let big: Value = response.json().await.unwrap();
    let big_id = big["id"].as_str().unwrap().to_string();
    system.app.drive(&big_id, &["confirmed"]).await;
    let small = system.app.new_order(&tenant).await;
    let small_id = small["id"].as_str().unwrap().to_string();
    system.app.drive(&small_id, &["confirmed"]).await;

    receiver
        .wait_for_successes("/hooks", 2, Duration::from_secs(15))
        .await;
    assert_eq!(sequences(&receiver.hits(), &small_id), [1, 2]);
    assert!(sequences(&receiver.hits(), &big_id).is_empty());

    let parked = wait_for_parked(&system.app, 2).await;
    assert_eq!(parked[0]["order_id"], big_id.as_str());
    assert!(
        parked[0]["reason"]
            .as_str()
            .unwrap()
            .contains("shorter than"),
        "{parked:?}"
    );
    assert!(
        parked[1]["reason"]
            .as_str()
            .unwrap()
            .contains("held behind"),
        "{parked:?}"
    );
    let api_metrics = system.app.url("/metrics");
    assert_eq!(metric(&api_metrics, "outbox_parked").await, 2.0);
    // Parked events hold back nothing: the relay's mark passes them (it is
    // written with the relay's next pass, within a tick).
    wait_for("an empty backlog", Duration::from_secs(5), || async {
        (metric(&api_metrics, "outbox_backlog").await == 0.0).then_some(())
    })
    .await;

    // Only the operator sees or retries them; an unknown id is 404.
    let forbidden = system
        .app
        .get("/v1/admin/outbox/parked", &tenant.token)
        .await;
    assert_problem(forbidden, StatusCode::FORBIDDEN).await;
    let unknown = system
        .app
        .post(
            &format!("/v1/admin/outbox/parked/{}/retry", uuid::Uuid::now_v7()),
            ADMIN,
            &json!({}),
        )
        .await;
    assert_problem(unknown, StatusCode::NOT_FOUND).await;

    // The queue takes larger messages now; the retry sends both, in order.
    system
        .queue
        .client
        .set_queue_attributes()
        .queue_url(&system.queue.url)
        .attributes(QueueAttributeName::MaximumMessageSize, "262144")
        .send()
        .await
        .unwrap();
    let first = parked[0]["event_id"].as_str().unwrap();
    let retried = system
        .app
        .post(
            &format!("/v1/admin/outbox/parked/{first}/retry"),
            ADMIN,
            &json!({}),
        )
        .await;
    assert_eq!(retried.status(), StatusCode::ACCEPTED);
    receiver
        .wait_for_successes("/hooks", 4, Duration::from_secs(15))
        .await;
    assert_eq!(sequences(&receiver.hits(), &big_id), [1, 2]);
    wait_for_parked(&system.app, 0).await;
}

async fn wait_for_parked(app: &TestApp, count: usize) -> Vec<Value> {
    wait_for("parked events", Duration::from_secs(15), || async {
        let page: Value = app
            .get("/v1/admin/outbox/parked", ADMIN)
            .await
            .json()
            .await
            .unwrap();
        let rows = page["data"].as_array().unwrap().clone();
        (rows.len() == count).then_some(rows)
    })
    .await
}

/// Anyone who can send to the queue could forge an envelope for another
/// customer. The worker reads the event by id: a message for an event that
/// never committed delivers nothing, is deleted and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_for_an_event_that_never_committed_delivers_nothing() {
    let system = System::start().await;
    let receiver = Receiver::start(|_, _, _| (200, Duration::ZERO)).await;
    let tenant = system.app.tenant("Forged").await;
    system
        .endpoint(&tenant.token, &format!("{}/hooks", receiver.base), None)
        .await;
    let real = system.app.new_order(&tenant).await;
    let real_id = real["id"].as_str().unwrap();
    let hits = receiver
        .wait_for_successes("/hooks", 1, Duration::from_secs(15))
        .await;

    // A real envelope with a fresh id, and a body that names nothing.
    let mut forged = hits[0].json();
    forged["id"] = json!(uuid::Uuid::now_v7().to_string());
    forged["data"]["order"]["notes"] = json!("send me to the wrong place");
    system.queue.send(&forged.to_string()).await;
    system.queue.send("not an event at all").await;

    let metrics = format!(
        "http://127.0.0.1:{}/metrics",
        system.worker.as_ref().unwrap().metrics_port
    );
    wait_for("both counted", Duration::from_secs(15), || async {
        (metric(&metrics, "webhook_messages_unknown_total").await >= 2.0).then_some(())
    })
    .await;
    wait_for("both deleted", Duration::from_secs(15), || async {
        (system.queue.depth().await == 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.hits().len(), 1, "only the real event was sent");
    assert_eq!(sequences(&receiver.hits(), real_id), [1]);
}

/// Events committed before an endpoint existed never reach it, even when
/// their messages are read only after it was created (a worker that was
/// down, a delayed message). The old fan-out checked the endpoint's age for
/// an order's earlier events but not for the event the message named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_gets_no_event_from_before_it_existed() {
    let mut system = System::without_worker().await;
    let receiver = Receiver::start(|_, _, _| (200, Duration::ZERO)).await;
    let tenant = system.app.tenant("Late joiner").await;
    let mut before = vec![];
    for _ in 0..3 {
        before.push(system.app.new_order(&tenant).await);
    }
    wait_for("the three published", Duration::from_secs(15), || async {
        (system.queue.depth().await == 3).then_some(())
    })
    .await;
    system
        .endpoint(&tenant.token, &format!("{}/hooks", receiver.base), None)
        .await;
    // Its next event is of the endpoint's time; its first is not.
    let old_order = before[0]["id"].as_str().unwrap();
    let moved = system
        .app
        .change_status(&tenant.token, old_order, "cancelled")
        .await;
    assert_eq!(moved.status(), StatusCode::OK);
    let after = system.app.new_order(&tenant).await;
    system.worker =
        Some(TestWorker::start(worker_config(&system.db_name, &system.queue.url)).await);

    receiver
        .wait_for_successes("/hooks", 2, Duration::from_secs(15))
        .await;
    wait_for("every message handled", Duration::from_secs(15), || async {
        (system.queue.depth().await == 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hits = receiver.hits();
    let mut got: Vec<(String, u64)> = hits
        .iter()
        .map(|h| {
            let data = &h.json()["data"];
            (
                data["order_id"].as_str().unwrap().to_string(),
                data["sequence"].as_u64().unwrap(),
            )
        })
        .collect();
    got.sort();
    let mut want = vec![
        (old_order.to_string(), 2),
        (after["id"].as_str().unwrap().to_string(), 1),
    ];
    want.sort();
    assert_eq!(
        got, want,
        "only events committed after the endpoint was created"
    );
}

/// An order's first event fails for good, its second waits out a long
/// `Retry-After`, its third waits behind the second. A manual retry of the
/// first (which fails again) must not release the third ahead of the
/// second; the old code released the lowest waiting row on any settle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_retry_of_an_old_event_never_releases_a_later_one_early() {
    use axum::http::header::RETRY_AFTER;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let log = seen.clone();
    let handler = move |body: axum::body::Bytes| {
        let log = log.clone();
        async move {
            let event: Value = serde_json::from_slice(&body).unwrap();
            let sequence = event["data"]["sequence"].as_u64().unwrap();
            log.lock().unwrap().push(sequence);
            match sequence {
                1 => (
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    [(RETRY_AFTER, "0")],
                ),
                2 => (
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    [(RETRY_AFTER, "3600")],
                ),
                _ => (axum::http::StatusCode::OK, [(RETRY_AFTER, "0")]),
            }
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(handler)).await });

    let system = System::start().await;
    let tenant = system.app.tenant("Ordered").await;
    let (endpoint, _) = system
        .endpoint(&tenant.token, &format!("{base}/hooks"), None)
        .await;
    let order = system.app.new_order(&tenant).await;
    let id = order["id"].as_str().unwrap();
    system.app.drive(id, &["confirmed", "picked_up"]).await;

    // Sequence 1 fails through the whole (test) schedule; 2 is tried once
    // and told to come back in an hour; 3 waits behind 2.
    let rows = wait_for("1 failed, 2 tried", Duration::from_secs(20), || async {
        let rows = deliveries(&system.app, &tenant.token, &endpoint, "").await;
        let failed = rows.iter().filter(|r| r["status"] == "failed").count();
        let tried_pending = rows
            .iter()
            .filter(|r| r["status"] == "pending" && r["attempts"] == 1)
            .count();
        (failed == 1 && tried_pending == 1).then_some(rows)
    })
    .await;
    let first = rows.iter().find(|r| r["status"] == "failed").unwrap();
    let attempts = first["attempts"].as_u64().unwrap();
    let first_id = first["id"].as_str().unwrap().to_string();

    let retry = system
        .app
        .post(
            &format!("/v1/webhooks/{endpoint}/deliveries/{first_id}/retry"),
            &tenant.token,
            &json!({}),
        )
        .await;
    assert_eq!(retry.status(), StatusCode::ACCEPTED);
    wait_for("the manual attempt", Duration::from_secs(10), || async {
        let rows = deliveries(&system.app, &tenant.token, &endpoint, "").await;
        rows.iter()
            .any(|r| r["id"] == first_id.as_str() && r["attempts"].as_u64() == Some(attempts + 1))
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let sent = seen.lock().unwrap().clone();
    assert!(
        !sent.contains(&3),
        "event 3 went out while event 2 was still pending: {sent:?}"
    );
    let rows = deliveries(&system.app, &tenant.token, &endpoint, "").await;
    let waiting: Vec<&Value> = rows
        .iter()
        .filter(|r| r["status"] == "pending" && r["attempts"] == 0)
        .collect();
    assert_eq!(waiting.len(), 1, "{rows:?}");
}

/// A settle carries the lease it was attempted under: once the lease has
/// passed to another claim (it ran out), a late settle changes nothing; and
/// a manual retry asked for during an attempt survives that attempt's settle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_from_a_stale_lease_changes_nothing() {
    use mechanica::db::deliveries::{self, DeliveryRow, NewDelivery, Settled, SUCCEEDED};
    let app = TestApp::spawn().await;
    let now = mechanica::domain::time::now();
    let row = DeliveryRow::pending(
        NewDelivery {
            endpoint_id: uuid::Uuid::now_v7(),
            customer_id: uuid::Uuid::now_v7(),
            event_id: uuid::Uuid::now_v7(),
            event_type: "order.created",
            order_id: Some(uuid::Uuid::now_v7()),
            sequence: Some(1),
            payload: "{}",
            event_created_at: now,
        },
        now,
        true,
    );
    assert!(deliveries::insert_ignore(&app.db, &row).await.unwrap());
    let claim = |lease: uuid::Uuid, at: chrono::DateTime<chrono::Utc>| {
        let db = app.db.clone();
        async move {
            let mut tx = db.begin().await.unwrap();
            let rows = deliveries::claim(
                &mut tx,
                &[row.id],
                at,
                at + chrono::Duration::seconds(30),
                lease,
            )
            .await
            .unwrap();
            tx.commit().await.unwrap();
            rows.len()
        }
    };
    let (stale, fresh) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    assert_eq!(claim(stale, now).await, 1);
    // The first lease runs out; another worker claims the row.
    let later = now + chrono::Duration::seconds(60);
    assert_eq!(claim(fresh, later).await, 1);
    let settled = |lease, leased_at| Settled {
        id: row.id,
        lease_id: lease,
        leased_at,
        status: SUCCEEDED,
        attempts: 1,
        last_response_status: Some(200),
        last_error: None,
        next_attempt_at: None,
    };
    let written = deliveries::settle(&app.db, &[settled(stale, now)], later)
        .await
        .unwrap();
    assert_eq!(written, 0, "the stale settle wrote");
    let current = deliveries::find(&app.db, row.id).await.unwrap().unwrap();
    assert_eq!(current.status, "pending");
    assert_eq!(current.lease_id, Some(fresh));

    // A manual retry arrives while the fresh attempt is in flight.
    deliveries::request_manual(&app.db, row.id, later + chrono::Duration::seconds(1))
        .await
        .unwrap();
    let written = deliveries::settle(&app.db, &[settled(fresh, later)], later)
        .await
        .unwrap();
    assert_eq!(written, 1);
    let current = deliveries::find(&app.db, row.id).await.unwrap().unwrap();
    assert_eq!(current.status, "succeeded");
    assert!(
        current.manual_requested_at.is_some(),
        "the retry asked for during the attempt was dropped"
    );
}

/// Many attempts in flight, two connections, and the database slow to take
/// their outcomes: every 2xx is recorded and no webhook goes out twice.
/// Each attempt used to take a connection of its own to record its
/// outcome; while the delivery rows were locked (a long transaction, a
/// migration) the two connections stalled, the other attempts waited more
/// than the pool's 5 s, recorded nothing after their 2xx, and their
/// deliveries stayed leased, to be sent again when the lease ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_webhook_is_sent_twice_under_pool_pressure() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    const WEBHOOKS: usize = 40;
    let mut system = System::without_worker().await;
    let mut config = worker_config(&system.db_name, &system.queue.url);
    config.database_max_connections = 2;
    config.max_in_flight = 128;
    config.max_in_flight_per_endpoint = 128;
    system.worker = Some(TestWorker::start(config).await);
    let arrived = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = arrived.clone();
    let receiver = Receiver::start(move |_, _, _| {
        counter.fetch_add(1, Ordering::SeqCst);
        (200, Duration::from_millis(1500))
    })
    .await;
    let tenant = system.app.tenant("Crowded").await;
    system
        .endpoint(&tenant.token, &format!("{}/hooks", receiver.base), None)
        .await;
    for _ in 0..WEBHOOKS {
        system.app.new_order(&tenant).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while arrived.load(Ordering::SeqCst) < WEBHOOKS {
        assert!(
            std::time::Instant::now() < deadline,
            "the webhooks never went out"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every attempt is in flight; their outcomes now meet locked rows.
    let mut lock = system.app.db.begin().await.unwrap();
    sqlx::query("SELECT id FROM webhook_deliveries FOR UPDATE")
        .fetch_all(&mut *lock)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    lock.rollback().await.unwrap();

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let succeeded: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'succeeded'",
        )
        .fetch_one(&system.app.db)
        .await
        .unwrap();
        if succeeded == WEBHOOKS as i64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{succeeded} of {WEBHOOKS} recorded as succeeded 10 s after the rows were free"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut per_event: HashMap<String, usize> = HashMap::new();
    for hit in receiver.hits() {
        *per_event.entry(hit.header("webhook-id")).or_default() += 1;
    }
    assert_eq!(per_event.len(), WEBHOOKS);
    assert!(
        per_event.values().all(|n| *n == 1),
        "sent twice: {:?}",
        per_event.values().filter(|n| **n > 1).count()
    );
}

/// A secret the worker cannot open (sealed with a key it does not have)
/// used to leave the delivery claimed and re-claimed forever, blocking its
/// order. It fails, visibly, and the order's next event is not stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_secret_fails_the_delivery_with_a_readable_error() {
    let system = System::start().await;
    let receiver = Receiver::start(|_, _, _| (200, Duration::ZERO)).await;
    let tenant = system.app.tenant("Sealed").await;
    let (endpoint, _) = system
        .endpoint(&tenant.token, &format!("{}/hooks", receiver.base), None)
        .await;
    sqlx::query(
        "UPDATE webhook_endpoints SET secret = 'v1:c2VhbGVkIHdpdGggYW5vdGhlciBrZXk=' WHERE id = ?",
    )
    .bind(endpoint.parse::<uuid::Uuid>().unwrap())
    .execute(&system.app.db)
    .await
    .unwrap();
    let order = system.app.new_order(&tenant).await;
    system
        .app
        .drive(order["id"].as_str().unwrap(), &["confirmed"])
        .await;
    let rows = wait_for("both failed", Duration::from_secs(15), || async {
        let rows = deliveries(&system.app, &tenant.token, &endpoint, "").await;
        (rows.len() == 2 && rows.iter().all(|r| r["status"] == "failed")).then_some(rows)
    })
    .await;
    for row in &rows {
        let error = row["last_error"].as_str().unwrap();
        assert!(error.contains("signing secret cannot be opened"), "{error}");
        assert!(
            !error.contains("c2VhbGVk"),
            "the error shows the stored secret"
        );
    }
    assert!(receiver.hits().is_empty());
}

/// While the worker cannot reach the database it stops receiving: with a
/// dead-letter queue after two receives and a one-second visibility
/// timeout, an outage of several seconds sends nothing there, and every
/// event is delivered once the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_sends_nothing_to_the_dead_letter_queue() {
    let dlq = TestQueue::create(false).await;
    let redrive = json!({"deadLetterTargetArn": dlq.arn().await, "maxReceiveCount": "2"});
    let queue = TestQueue::create_with(
        false,
        &[
            (QueueAttributeName::RedrivePolicy, redrive.to_string()),
            (QueueAttributeName::VisibilityTimeout, "1".into()),
        ],
    )
    .await;
    let mut system = System::on_queue(queue).await;
    let receiver = Receiver::start(|_, _, _| (200, Duration::ZERO)).await;
    let tenant = system.app.tenant("Outage").await;
    system
        .endpoint(&tenant.token, &format!("{}/hooks", receiver.base), None)
        .await;

    let mut tunnel = Tunnel::open(0, "127.0.0.1:3306").await;
    system.start_worker_through(&tunnel).await;
    tunnel.cut();

    let orders: Vec<Value> =
        futures::future::join_all((0..5).map(|_| system.app.new_order(&tenant))).await;
    // Several visibility timeouts pass while the worker's database is away.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(receiver.hits().is_empty());
    let _restored = Tunnel::open(tunnel.port, "127.0.0.1:3306").await;

    receiver
        .wait_for_successes("/hooks", 5, Duration::from_secs(30))
        .await;
    for order in &orders {
        assert_eq!(
            sequences(&receiver.hits(), order["id"].as_str().unwrap()),
            [1]
        );
    }
    assert_eq!(
        dlq.depth().await,
        0,
        "messages reached the dead-letter queue"
    );
}

/// Messages deleted behind the worker's back (lost, or dead-lettered):
/// reconciliation still gives every committed event its deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_delivers_events_whose_messages_were_lost() {
    let mut system = System::without_worker().await;
    let receiver = Receiver::start(|_, _, _| (200, Duration::ZERO)).await;
    let tenant = system.app.tenant("Lost").await;
    system
        .endpoint(&tenant.token, &format!("{}/hooks", receiver.base), None)
        .await;
    let order = system.app.new_order(&tenant).await;
    let id = order["id"].as_str().unwrap().to_string();
    system.app.drive(&id, &["confirmed", "picked_up"]).await;
    // Published, then taken off the queue by someone else.
    let taken = system.queue.receive(3, Duration::from_secs(10)).await;
    assert_eq!(taken.len(), 3);

    let mut config = worker_config(&system.db_name, &system.queue.url);
    config.reconcile_every = Duration::from_millis(300);
    config.reconcile_after = Duration::from_millis(500);
    let worker = TestWorker::start(config).await;
    let metrics = format!("http://127.0.0.1:{}/metrics", worker.metrics_port);
    system.worker = Some(worker);
    receiver
        .wait_for_successes("/hooks", 3, Duration::from_secs(20))
        .await;
    assert_eq!(sequences(&receiver.hits(), &id), [1, 2, 3]);
    assert!(metric(&metrics, "webhook_events_reconciled_total").await >= 3.0);
}

/// Deliveries fanned out while their endpoint had no room in the worker
/// used to wait for the dispatcher's one-second idle poll once room freed
/// up: a busy endpoint's webhooks went out in bursts with pauses between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_waiting_for_room_starts_when_room_frees_up() {
    const WEBHOOKS: usize = 16;
    let mut system = System::without_worker().await;
    let mut config = worker_config(&system.db_name, &system.queue.url);
    // One attempt at a time, four deliveries held in memory for the endpoint.
    config.max_in_flight_per_endpoint = 1;
    system.worker = Some(TestWorker::start(config).await);
    let receiver = Receiver::start(|_, _, _| (200, Duration::from_millis(100))).await;
    let tenant = system.app.tenant("Busy").await;
    system
        .endpoint(&tenant.token, &format!("{}/hooks", receiver.base), None)
        .await;
    for _ in 0..WEBHOOKS {
        system.app.new_order(&tenant).await;
    }
    let hits = receiver
        .wait_for_successes("/hooks", WEBHOOKS, Duration::from_secs(30))
        .await;
    let mut arrivals: Vec<std::time::Instant> = hits.iter().map(|h| h.at).collect();
    arrivals.sort();
    let longest = arrivals.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    // Each attempt takes 100 ms; an idle poll left gaps of 600 ms and more.
    assert!(
        longest < Duration::from_millis(400),
        "{longest:?} between two webhooks to an endpoint with work waiting"
    );
}

/// A settle wrote its deliveries (primary key) and only then read its
/// orders' deliveries through the order index; a fan-out takes the index
/// record first, then the row: the two deadlocked now and then (seen in
/// `scripts/bench-slow-sqs`). A settle now holds the order's index record
/// before it waits for any row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_holds_the_order_index_before_it_waits_for_a_row() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let system = System::start().await;
    let arrived = std::sync::Arc::new(AtomicBool::new(false));
    let seen = arrived.clone();
    let receiver = Receiver::start(move |_, _, _| {
        seen.store(true, Ordering::SeqCst);
        (200, Duration::from_millis(1000))
    })
    .await;
    let tenant = system.app.tenant("Lock order").await;
    system
        .endpoint(&tenant.token, &format!("{}/hooks", receiver.base), None)
        .await;
    system.app.new_order(&tenant).await;
    wait_for("the attempt", Duration::from_secs(10), || async {
        arrived.load(Ordering::SeqCst).then_some(())
    })
    .await;
    let db = &system.app.db;
    let (delivery, endpoint, order): (uuid::Uuid, uuid::Uuid, uuid::Uuid) =
        sqlx::query_as("SELECT id, endpoint_id, order_id FROM webhook_deliveries")
            .fetch_one(db)
            .await
            .unwrap();
    // The row only, through the primary key, while the attempt is in flight.
    let mut holder = db.begin().await.unwrap();
    sqlx::query("SELECT id FROM webhook_deliveries WHERE id = ? FOR UPDATE")
        .bind(delivery)
        .execute(&mut *holder)
        .await
        .unwrap();
    // The answer comes; the settle waits for the row. (MariaDB's
    // INNODB_TRX does not list it; its statement in the process list does.)
    wait_for("the settle to wait", Duration::from_secs(15), || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST
             WHERE DB = ? AND COMMAND <> 'Sleep' AND TIME_MS > 300
               AND (INFO LIKE '%webhook_deliveries%FOR UPDATE%'
                    OR INFO LIKE 'UPDATE webhook_deliveries%')
               AND INFO NOT LIKE '%PROCESSLIST%'",
        )
        .bind(&system.db_name)
        .fetch_one(db)
        .await
        .unwrap();
        (waiting > 0).then_some(())
    })
    .await;
    let index_record = sqlx::query(
        "SELECT id FROM webhook_deliveries FORCE INDEX (webhook_deliveries_order)
         WHERE endpoint_id = ? AND order_id = ? FOR UPDATE NOWAIT",
    )
    .bind(endpoint)
    .bind(order)
    .execute(&mut *holder)
    .await;
    match index_record {
        Ok(_) => panic!("the settle waits for the row without holding the order's index record"),
        Err(e) => assert!(
            e.to_string().contains("Lock wait timeout"),
            "not a lock conflict: {e}"
        ),
    }
    holder.rollback().await.unwrap();
    wait_for(
        "the delivery to succeed",
        Duration::from_secs(15),
        || async {
            let status: String = sqlx::query_scalar("SELECT status FROM webhook_deliveries")
                .fetch_one(db)
                .await
                .unwrap();
            (status == "succeeded").then_some(())
        },
    )
    .await;
}

/// The answer to a settle's commit lost on a cut connection: the group was
/// written, so writing it again met its own attempts as duplicate keys. The
/// settle used to retry that for as long as the leases lasted (32 s here),
/// every other outcome waiting behind it; now it finds its attempts
/// recorded and moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_whose_commit_went_unanswered_does_not_hold_up_the_next() {
    let mut system = System::without_worker().await;
    let tunnel = Tunnel::open(0, "127.0.0.1:3306").await;
    system.start_worker_through(&tunnel).await;
    // The first webhook's settle is the worker's next commit.
    let lose = tunnel.commit_answer_loser();
    let receiver = Receiver::start(move |_, n, _| {
        if n == 0 {
            lose.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        (200, Duration::ZERO)
    })
    .await;
    let tenant = system.app.tenant("Unanswered").await;
    let (endpoint, _) = system
        .endpoint(&tenant.token, &format!("{}/hooks", receiver.base), None)
        .await;
    let order = system.app.new_order(&tenant).await;
    let id = order["id"].as_str().unwrap().to_string();
    receiver
        .wait_for_successes("/hooks", 1, Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    system.app.drive(&id, &["confirmed"]).await;
    receiver
        .wait_for_successes("/hooks", 2, Duration::from_secs(10))
        .await;
    // Both recorded delivered soon after: nothing waits behind the first.
    let recorded = wait_for(
        "both deliveries recorded",
        Duration::from_secs(5),
        || async {
            let rows = deliveries(&system.app, &tenant.token, &endpoint, "").await;
            (rows.len() == 2 && rows.iter().all(|d| d["status"] == "succeeded")).then_some(rows)
        },
    )
    .await;
    for row in recorded {
        assert_eq!(row["attempts"], 1, "{row}");
    }
    assert_eq!(sequences(&receiver.hits(), &id), [1, 2]);
}

/// The first attempts of a batch go out while its fan-out commits. When
/// the answer to that commit is lost (it did commit), the worker finds its
/// deliveries there and records the attempt made meanwhile: the webhook
/// goes out once, recorded once, and nothing is stuck. (Before, the attempt
/// went unrecorded and the event was sent again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_whose_commit_went_unanswered_is_delivered_and_recorded_once() {
    fan_out_commit_fails(|tunnel| tunnel.commit_answer_loser()).await;
}

/// The same when that commit never reaches the server (its connection
/// closes, the transaction rolls back): the delivery whose attempt went out
/// is written again on its own and the attempt recorded; the batch, fanned
/// out again, finds it and sends nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_whose_commit_rolled_back_records_the_attempt_it_made() {
    fan_out_commit_fails(|tunnel| tunnel.commit_dropper()).await;
}

async fn fan_out_commit_fails(armed: impl Fn(&Tunnel) -> Arc<AtomicBool>) {
    let mut system = System::without_worker().await;
    let tunnel = Tunnel::open(0, "127.0.0.1:3306").await;
    system.start_worker_through(&tunnel).await;
    let receiver = Receiver::start(|_, _, _| (200, Duration::ZERO)).await;
    let tenant = system.app.tenant("Failed fan-out commit").await;
    let (endpoint, _) = system
        .endpoint(&tenant.token, &format!("{}/hooks", receiver.base), None)
        .await;
    // The worker's next commit is the fan-out of the order's first event.
    armed(&tunnel).store(true, Ordering::SeqCst);
    let order = system.app.new_order(&tenant).await;
    let id = order["id"].as_str().unwrap().to_string();
    let recorded = wait_for(
        "the delivery recorded succeeded",
        Duration::from_secs(20),
        || async {
            let rows = deliveries(&system.app, &tenant.token, &endpoint, "").await;
            (rows.len() == 1 && rows[0]["status"] == "succeeded").then_some(rows)
        },
    )
    .await;
    assert!(
        !armed(&tunnel).load(Ordering::SeqCst),
        "the fan-out's commit went through the tunnel"
    );
    assert_eq!(recorded[0]["attempts"], 1, "{}", recorded[0]);
    // A second request, had there been one, would come at once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hits = receiver.hits_on("/hooks");
    assert_eq!(sequences(&hits, &id), [1], "sent once");
    assert_eq!(hits.len(), 1, "sent once");
}

/// Eight receivers kept eight long polls waiting however few messages came,
/// and the emulator answers every waiting poll when one message arrives:
/// seven empty answers a message, about ten SQS requests a webhook at 50
/// a second. Polls now follow how full the batches come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_keeps_as_many_polls_waiting_as_the_messages_need() {
    let mut system = System::without_worker().await;
    // A backlog comes in full batches. Messages naming no event are simply
    // deleted and counted, which is all this test needs of them.
    for _ in 0..200 {
        let body = json!({ "id": uuid::Uuid::now_v7() }).to_string();
        system.queue.send(&body).await;
    }
    let mut config = worker_config(&system.db_name, &system.queue.url);
    config.receivers = 8;
    let worker = TestWorker::start(config).await;
    let metrics = format!("http://127.0.0.1:{}/metrics", worker.metrics_port);
    system.worker = Some(worker);
    wait_for("the backlog", Duration::from_secs(20), || async {
        (metric(&metrics, "webhook_messages_unknown_total").await >= 200.0).then_some(())
    })
    .await;
    let busy = metric(&metrics, "webhook_sqs_polls").await;
    assert!(busy > 2.0, "full batches add polls: {busy}");

    // One message at a time: every poll but one comes back empty.
    for _ in 0..12 {
        let body = json!({ "id": uuid::Uuid::now_v7() }).to_string();
        system.queue.send(&body).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for("the trickle", Duration::from_secs(10), || async {
        (metric(&metrics, "webhook_messages_unknown_total").await >= 212.0).then_some(())
    })
    .await;
    assert_eq!(metric(&metrics, "webhook_sqs_polls").await, 2.0);
}

/// Under a steady trickle a receive brings a message or two, and each
/// batch was deleted with a `DeleteMessageBatch` of its own: a request per
/// receive, where SQS takes ten messages a request. Handled messages are now
/// gathered for a moment and deleted up to ten at a time; a worker that
/// stops deletes what it gathered before it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handled_messages_are_deleted_up_to_ten_to_a_request() {
    const MESSAGES: usize = 40;
    let system = System::without_worker().await;
    let worker = TestWorker::start(worker_config(&system.db_name, &system.queue.url)).await;
    let metrics = format!("http://127.0.0.1:{}/metrics", worker.metrics_port);
    // Messages naming no event are handled (counted) and deleted like any.
    for _ in 0..MESSAGES {
        let body = json!({ "id": uuid::Uuid::now_v7() }).to_string();
        system.queue.send(&body).await;
    }
    wait_for("every message deleted", Duration::from_secs(15), || async {
        (metric(&metrics, "webhook_sqs_messages_deleted_total").await >= MESSAGES as f64)
            .then_some(())
    })
    .await;
    let received = metric(&metrics, "webhook_sqs_messages_received_total").await;
    let receives = metric(&metrics, "webhook_sqs_receive_requests_total").await;
    let deletes = metric(&metrics, "webhook_sqs_delete_requests_total").await;
    assert_eq!(received, MESSAGES as f64);
    assert!(
        receives >= 10.0,
        "the messages came a few at a time: {receives} receives"
    );
    assert!(
        deletes <= (MESSAGES / 4) as f64,
        "{deletes} DeleteMessageBatch requests for {MESSAGES} messages in {receives} receives"
    );
    assert_eq!(system.queue.depth().await, 0);

    // Handled, then the worker stops at once: nothing is left in flight.
    for _ in 0..3 {
        let body = json!({ "id": uuid::Uuid::now_v7() }).to_string();
        system.queue.send(&body).await;
    }
    wait_for("the three handled", Duration::from_secs(15), || async {
        (metric(&metrics, "webhook_messages_unknown_total").await >= (MESSAGES + 3) as f64)
            .then_some(())
    })
    .await;
    worker.stop().await;
    assert_eq!(
        system.queue.depth().await,
        0,
        "deleted before the worker exited"
    );
}

/// A database that answers but refuses the fan-out (a column the worker
/// reads renamed, as a deploy request ahead of the code could) is no
/// outage. The worker took it for one: it hid the batch, found the
/// database answering `SELECT 1` and received the next at once, pulling
/// the whole queue through the failing statement. Now receipt pauses,
/// longer after each refusal in a row, the refusals are counted, and
/// every event is delivered once the schema fits again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_the_database_refuses_pauses_receipt_instead_of_churning_the_queue() {
    const EVENTS: usize = 100;
    let mut system = System::without_worker().await;
    let receiver = Receiver::start(|_, _, _| (200, Duration::ZERO)).await;
    let tenant = system.app.tenant("Refused").await;
    system
        .endpoint(&tenant.token, &format!("{}/hooks", receiver.base), None)
        .await;
    let mut orders = vec![];
    for _ in 0..EVENTS {
        orders.push(system.app.new_order(&tenant).await);
    }
    wait_for("the messages", Duration::from_secs(20), || async {
        (system.queue.visible().await == EVENTS as u64).then_some(())
    })
    .await;
    let rename = |from: &str, to: &str| {
        format!("ALTER TABLE webhook_endpoints RENAME COLUMN {from} TO {to}")
    };
    sqlx::query(&rename("headers", "headers_renamed"))
        .execute(&system.app.db)
        .await
        .unwrap();

    let worker = TestWorker::start(worker_config(&system.db_name, &system.queue.url)).await;
    let metrics = format!("http://127.0.0.1:{}/metrics", worker.metrics_port);
    system.worker = Some(worker);
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Two receivers, each refused twice at most by now (paused 1–2 s, then
    // 4–8 s): at most 40 messages received; before, all of them.
    let visible = system.queue.visible().await;
    assert!(
        visible >= (EVENTS - 40) as u64,
        "the worker pulled the queue through a refused fan-out: {visible} of {EVENTS} left"
    );
    let refused = metric(&metrics, "webhook_fan_outs_refused_total").await;
    assert!(refused >= 1.0, "refusals are counted: {refused}");
    assert!(receiver.hits().is_empty());

    sqlx::query(&rename("headers_renamed", "headers"))
        .execute(&system.app.db)
        .await
        .unwrap();
    receiver
        .wait_for_successes("/hooks", EVENTS, Duration::from_secs(60))
        .await;
    for order in &orders {
        assert_eq!(
            sequences(&receiver.hits(), order["id"].as_str().unwrap()),
            [1]
        );
    }
}
