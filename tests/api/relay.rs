//! The outbox relay, against the real SQS emulator.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

const LIFE: [&str; 5] = [
    "confirmed",
    "picked_up",
    "in_transit",
    "out_for_delivery",
    "delivered",
];

async fn history(app: &TestApp, order_id: &str) -> Vec<Value> {
    let page: Value = app
        .get(&format!("/v1/orders/{order_id}/events?limit=100"), ADMIN)
        .await
        .json()
        .await
        .unwrap();
    page["data"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_the_queue_once_with_its_attributes() {
    let queue = TestQueue::create(false).await;
    let app = TestApp::spawn_publishing(&fresh_db_name(), &queue.url, &sqs_endpoint()).await;
    let tenant = app.tenant("Published").await;
    let order = app.new_order(&tenant).await;
    let id = order["id"].as_str().unwrap();
    app.drive(id, &LIFE).await;

    let received = queue.receive(6, Duration::from_secs(10)).await;

    let expected = history(&app, id).await;
    assert_eq!(received.len(), 6);
    let mut bodies: Vec<Value> = received.iter().map(|m| m.body.clone()).collect();
    bodies.sort_by_key(|b| b["data"]["sequence"].as_u64());
    assert_eq!(bodies, expected, "message bodies are the event envelopes");
    for message in &received {
        assert_eq!(message.event_type.as_deref(), message.body["type"].as_str());
        assert_eq!(message.customer_id.as_deref(), Some(tenant.id.as_str()));
        assert_eq!(message.group_id, None, "a standard queue has no groups");
    }
    assert!(
        queue
            .receive(1, Duration::from_millis(1500))
            .await
            .is_empty(),
        "published twice"
    );

    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("outbox_backlog 0"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_queue_gets_group_and_deduplication_ids() {
    let queue = TestQueue::create(true).await;
    let app = TestApp::spawn_publishing(&fresh_db_name(), &queue.url, &sqs_endpoint()).await;
    let tenant = app.tenant("Fifo").await;
    let order = app.new_order(&tenant).await;
    let id = order["id"].as_str().unwrap();
    app.drive(id, &LIFE[..2]).await;

    let received = queue.receive(3, Duration::from_secs(10)).await;

    assert_eq!(received.len(), 3);
    let sequences: Vec<u64> = received
        .iter()
        .map(|m| m.body["data"]["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(sequences, [1, 2, 3]);
    for message in &received {
        assert_eq!(message.group_id.as_deref(), Some(id));
        assert_eq!(message.dedup_id.as_deref(), message.body["id"].as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_out_an_sqs_outage_and_keep_their_order() {
    let queue = TestQueue::create(true).await;
    let mut tunnel = Tunnel::open(0, sqs_address()).await;
    let endpoint = format!("http://127.0.0.1:{}", tunnel.port);
    let app = TestApp::spawn_publishing(&fresh_db_name(), &queue.url, &endpoint).await;
    let tenant = app.tenant("Patient").await;
    tunnel.cut();

    // 10 orders, 5 events each: 50 changes while SQS is unreachable.
    let ids: Vec<String> = join_all((0..10).map(|_| async {
        let order = app.new_order(&tenant).await;
        let id = order["id"].as_str().unwrap().to_string();
        app.drive(&id, &LIFE[..4]).await;
        id
    }))
    .await;
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(
        ready.status(),
        StatusCode::OK,
        "readiness is about the database"
    );
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("outbox_backlog 50"), "{metrics}");
    assert!(queue
        .receive(1, Duration::from_millis(500))
        .await
        .is_empty());

    let _restored = Tunnel::open(tunnel.port, sqs_address()).await;
    let received = queue.receive_each_once(50, Duration::from_secs(40)).await;

    assert_in_order(&received, &ids, &[1, 2, 3, 4, 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_publish_every_event_exactly_once() {
    let (queue, first, second) = two_instances().await;
    let tenant = first.tenant("Twins").await;

    // 100 orders, each moved 5 times, alternating instances: 500 changes.
    let apps = [&first, &second];
    join_all((0..100).map(|i| {
        let tenant = &tenant;
        async move {
            let order = apps[i % 2].new_order(tenant).await;
            let id = order["id"].as_str().unwrap();
            for (step, status) in LIFE.iter().enumerate() {
                let response = apps[(i + step + 1) % 2]
                    .change_status(ADMIN, id, status)
                    .await;
                assert_eq!(response.status(), StatusCode::OK);
            }
        }
    }))
    .await;

    queue.receive_each_once(600, Duration::from_secs(60)).await;
    assert!(queue
        .receive(1, Duration::from_millis(1500))
        .await
        .is_empty());
    drop(second);
}

/// When the API holding the relay's turn dies, another instance publishes
/// within 2 s, at 200 changes a second, and says so (`/metrics`, a log
/// line). The turn used to be a 15 s lease: in a chaos run nothing was
/// published for 13.5 s after the holder was killed. A message's publish
/// time is when SQS accepted it (`SentTimestamp`), not when this test got
/// round to reading it: reading the takeover's backlog, and deleting it one
/// message at a time, took up to 0.5 s under CI's load (seen once: 2.05 s
/// in all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_relay_holder_dies_another_instance_publishes_within_2_s() {
    use std::time::{Instant, SystemTime};
    let (queue, first, second) = two_instances().await;
    let tenant = first.tenant("Failover").await;
    let mut apps = vec![first, second];

    let answered = std::sync::Mutex::new(HashMap::<String, SystemTime>::new());
    let arrived = std::sync::Mutex::new(HashMap::<String, SystemTime>::new());
    let done = std::sync::atomic::AtomicBool::new(false);
    let load = async {
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let start = Instant::now();
        let mut crashed_at = None;
        while start.elapsed() < Duration::from_secs(5) {
            tick.tick().await;
            if crashed_at.is_none() && start.elapsed() > Duration::from_millis(1500) {
                // Whichever holds the turn now dies.
                let mut holder = None;
                for (i, app) in apps.iter().enumerate() {
                    if metric(&app.url("/metrics"), "relay_holding").await == 1.0 {
                        holder = Some(i);
                    }
                }
                let holder = holder.expect("an instance holds the turn under load");
                apps.remove(holder).crash();
                crashed_at = Some(SystemTime::now());
            }
            let order = apps[0].new_order(&tenant).await;
            let id = order["id"].as_str().unwrap().to_string();
            answered.lock().unwrap().insert(id, SystemTime::now());
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        crashed_at.unwrap()
    };
    let receive = async {
        let mut quiet_since = None;
        loop {
            let got = queue.receive(1, Duration::from_millis(10)).await;
            let now = Instant::now();
            for message in &got {
                let order = message.body["data"]["order_id"]
                    .as_str()
                    .unwrap()
                    .to_string();
                let sent = message.sent_at.expect("SQS gives SentTimestamp");
                let mut arrived = arrived.lock().unwrap();
                let first = arrived.entry(order).or_insert(sent);
                *first = (*first).min(sent);
            }
            if got.is_empty() && done.load(std::sync::atomic::Ordering::SeqCst) {
                let since = *quiet_since.get_or_insert(now);
                if now - since > Duration::from_secs(3) {
                    break;
                }
            } else {
                quiet_since = None;
            }
        }
    };
    let (crashed_at, ()) = tokio::join!(load, receive);

    let answered = answered.into_inner().unwrap();
    let arrived = arrived.into_inner().unwrap();
    assert!(answered.len() > 400, "{} changes", answered.len());
    let missing = answered
        .keys()
        .filter(|id| !arrived.contains_key(*id))
        .count();
    assert_eq!(missing, 0, "events never published");
    let worst = answered
        .iter()
        .filter(|(_, at)| **at > crashed_at)
        .map(|(id, at)| arrived[id].duration_since(*at).unwrap_or_default())
        .max()
        .unwrap();
    assert!(
        worst < Duration::from_secs(2),
        "an event answered after the crash waited {worst:?}"
    );
    assert_eq!(
        metric(&apps[0].url("/metrics"), "relay_handovers_total").await,
        1.0
    );
}

/// An instance that shuts down gracefully gives the relay's turn up, and
/// another takes it at once. The turn given up (its lease emptied) read as
/// NULL in the old lock query, not as free: the other instances' passes
/// failed to decode it, and nothing was published until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_given_up_at_shutdown_is_taken_by_another_instance() {
    let queue = TestQueue::create(false).await;
    let db_name = fresh_db_name();
    let first = TestApp::spawn_publishing(&db_name, &queue.url, &sqs_endpoint()).await;
    let tenant = first.tenant("Blue-green").await;
    first.new_order(&tenant).await;
    assert_eq!(queue.receive(1, Duration::from_secs(10)).await.len(), 1);
    let second = TestApp::spawn_publishing(&db_name, &queue.url, &sqs_endpoint()).await;
    first.new_order(&tenant).await;
    assert_eq!(queue.receive(1, Duration::from_secs(10)).await.len(), 1);

    first.shut_down().await;
    second.new_order(&tenant).await;
    let published = queue.receive(1, Duration::from_secs(10)).await;
    assert_eq!(published.len(), 1, "the second instance never published");
}

/// An event takes its feed position in the transaction that writes it,
/// as that transaction's last step: while another transaction holds the
/// feed clock, a new order waits for it, and the order's event has its
/// position once the order is answered. Positions are handed out in
/// commit order. The relay used to number events after they committed,
/// one more transaction per round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_numbered_in_the_transaction_that_writes_it() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Numbered").await;
    app.new_order(&tenant).await;

    let mut holder = app.db.begin().await.unwrap();
    sqlx::query("SELECT next_position FROM feed_clock WHERE id = 1 FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let creating = {
        let (client, url, token) = (
            app.client.clone(),
            app.url("/v1/orders"),
            tenant.token.clone(),
        );
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(token)
                .json(&order_body())
                .send()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !creating.is_finished(),
        "the order committed without the feed clock"
    );
    holder.rollback().await.unwrap();

    let created = creating.await.unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let order: Value = created.json().await.unwrap();
    let (position,): (Option<u64>,) =
        sqlx::query_as("SELECT feed_position FROM order_events WHERE order_id = ?")
            .bind(uuid::Uuid::parse_str(order["id"].as_str().unwrap()).unwrap())
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(
        position,
        Some(2),
        "numbered right after the first order's event"
    );
}

/// The relay publishes what its own instance's commits hand it without
/// reading it back from the database (`relay_rounds_total`), in each
/// order's order, every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_publishes_its_own_commits_without_reading_them_back() {
    let queue = TestQueue::create(true).await;
    let app = TestApp::spawn_publishing(&fresh_db_name(), &queue.url, &sqs_endpoint()).await;
    let tenant = app.tenant("Handed").await;
    let mut ids = vec![];
    for _ in 0..4 {
        let order = app.new_order(&tenant).await;
        let id = order["id"].as_str().unwrap().to_string();
        app.drive(&id, &LIFE).await;
        ids.push(id);
    }

    let received = queue.receive_each_once(24, Duration::from_secs(10)).await;
    assert_in_order(&received, &ids, &[1, 2, 3, 4, 5, 6]);
    let metrics = app.url("/metrics");
    let handed = metric(&metrics, "relay_rounds_total{kind=\"handed\"}").await;
    let full = metric(&metrics, "relay_rounds_total{kind=\"full\"}").await;
    assert!(
        handed >= 6.0,
        "24 events, one request after another: {handed} handed rounds, {full} full"
    );
}

/// An instance that does not hold the relay's turn leaves its commits to
/// the holder: numbered where they are written, they need no pass of its
/// own, and a pass per commit would hold the feed clock that every writer
/// needs. It looks again every tenth of a second or so, to take the turn over
/// when the holder's lease lapses. It used to run a full pass for every
/// commit of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_without_the_turn_leaves_its_commits_to_the_holder() {
    let queue = TestQueue::create(true).await;
    let app = TestApp::spawn_publishing(&fresh_db_name(), &queue.url, &sqs_endpoint()).await;
    let tenant = app.tenant("Beside").await;
    let metrics = app.url("/metrics");
    // Once its start-up round is done and it has given the turn up (it
    // has nothing to publish), another relay, not running here, holds it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metric(&metrics, "relay_holding").await != 0.0
        || metric(&metrics, "relay_rounds_total{kind=\"full\"}").await == 0.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay never gave its turn up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sqlx::query(
        "UPDATE feed_clock SET relay_holder = ?, relay_lease_until = NOW(3) + INTERVAL 60 SECOND WHERE id = 1",
    )
    .bind(uuid::Uuid::now_v7())
    .execute(&app.db)
    .await
    .unwrap();
    let before = metric(&metrics, "relay_rounds_total{kind=\"full\"}").await;

    let mut ids = vec![];
    for _ in 0..6 {
        let order = app.new_order(&tenant).await;
        let id = order["id"].as_str().unwrap().to_string();
        app.drive(&id, &LIFE).await;
        ids.push(id);
    }
    let full = metric(&metrics, "relay_rounds_total{kind=\"full\"}").await - before;
    assert!(
        full <= 12.0,
        "36 commits while another relay held the turn: {full} full rounds"
    );
    assert!(
        queue
            .receive(1, Duration::from_millis(300))
            .await
            .is_empty(),
        "published without the turn"
    );

    // The holder stops renewing: this instance takes over and publishes all.
    sqlx::query(
        "UPDATE feed_clock SET relay_lease_until = NOW(3) - INTERVAL 1 SECOND WHERE id = 1",
    )
    .execute(&app.db)
    .await
    .unwrap();
    let received = queue.receive_each_once(36, Duration::from_secs(10)).await;
    assert_in_order(&received, &ids, &[1, 2, 3, 4, 5, 6]);
}

/// The relay's turn follows the commits. Once an instance that holds the
/// turn has nothing of its own to publish and publishes another instance's
/// events, it gives the turn up, and that instance takes it and publishes
/// its commits as they are handed. The holder used to keep the turn while
/// others' events were waiting, and published them only at its own
/// 200 ms tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_turn_follows_the_instance_that_commits() {
    let (queue, first, second) = two_instances().await;
    let tenant = first.tenant("Follow").await;
    first.new_order(&tenant).await;
    queue.receive_each_once(1, Duration::from_secs(10)).await;
    assert_eq!(metric(&first.url("/metrics"), "relay_holding").await, 1.0);

    // From now on only the second instance writes: a change every 30 ms
    // or so, for about a second and a half.
    let mut ids = vec![];
    for _ in 0..8 {
        let order = second.new_order(&tenant).await;
        let id = order["id"].as_str().unwrap().to_string();
        for status in LIFE {
            tokio::time::sleep(Duration::from_millis(30)).await;
            let response = second.change_status(ADMIN, &id, status).await;
            assert_eq!(response.status(), StatusCode::OK, "moving to {status}");
        }
        ids.push(id);
    }
    let received = queue.receive_each_once(48, Duration::from_secs(10)).await;
    assert_in_order(&received, &ids, &[1, 2, 3, 4, 5, 6]);
    // It took the turn and published its own commits as they were handed
    // (and gave the turn up since if it went idle).
    let handed = metric(
        &second.url("/metrics"),
        "relay_rounds_total{kind=\"handed\"}",
    )
    .await;
    assert!(
        handed >= 6.0,
        "48 events committed on the second instance, {handed} of its rounds handed"
    );
}

/// During a rolling deploy the version before this one still writes events
/// without a feed position, leaving them to the relay's numbering pass:
/// such an event is numbered after the events already numbered, published,
/// and in the feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_an_older_version_left_unnumbered_is_numbered_and_published() {
    let queue = TestQueue::create(false).await;
    let app = TestApp::spawn_publishing(&fresh_db_name(), &queue.url, &sqs_endpoint()).await;
    let tenant = app.tenant("Rolling").await;
    let order = app.new_order(&tenant).await;
    assert_eq!(queue.receive(1, Duration::from_secs(10)).await.len(), 1);

    let old = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO order_events (id, order_id, customer_id, sequence, event_type, status, payload, created_at)
         SELECT ?, order_id, customer_id, 2, event_type, status,
                JSON_SET(payload, '$.id', ?, '$.data.sequence', 2), NOW(3)
         FROM order_events WHERE order_id = ? AND sequence = 1",
    )
    .bind(old)
    .bind(old.to_string())
    .bind(uuid::Uuid::parse_str(order["id"].as_str().unwrap()).unwrap())
    .execute(&app.db)
    .await
    .unwrap();

    let published = queue.receive(1, Duration::from_secs(10)).await;
    assert_eq!(
        published.len(),
        1,
        "the unnumbered event was never published"
    );
    assert_eq!(published[0].body["id"], old.to_string());
    let feed: Value = app
        .get("/v1/events", &tenant.token)
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = feed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(
        ids[1],
        old.to_string(),
        "numbered after the event before it"
    );
}

/// A standard queue and two API instances publishing to it from one
/// database.
async fn two_instances() -> (TestQueue, TestApp, TestApp) {
    let queue = TestQueue::create(false).await;
    let db_name = fresh_db_name();
    let first = TestApp::spawn_publishing(&db_name, &queue.url, &sqs_endpoint()).await;
    let second = TestApp::spawn_publishing(&db_name, &queue.url, &sqs_endpoint()).await;
    (queue, first, second)
}
