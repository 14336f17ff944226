//! The event feed: commit order, exactly once, long poll, tenancy.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

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

async fn page(app: &TestApp, token: &str, query: &str) -> Value {
    let response = app.get(&format!("/v1/events?{query}"), token).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_sees_every_event_once_and_in_order_while_writers_commit() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Busy").await;
    // 8 writers, each with its own orders, 400 status changes in all.
    let orders: Vec<String> = join_all((0..80).map(|_| async {
        app.new_order(&tenant).await["id"]
            .as_str()
            .unwrap()
            .to_string()
    }))
    .await;

    let app = &app;
    let writers = async {
        join_all(orders.chunks(10).map(|chunk| async move {
            for status in LIFE {
                for id in chunk {
                    let response = app.change_status(ADMIN, id, status).await;
                    assert_eq!(response.status(), StatusCode::OK);
                }
            }
        }))
        .await;
    };
    let reader = async {
        let mut seen: Vec<Value> = vec![];
        let mut cursor: Option<String> = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        // 80 created + 400 changes.
        while seen.len() < 480 && Instant::now() < deadline {
            let query = match &cursor {
                Some(c) => format!("after={c}&limit=37&wait=1"),
                None => "limit=37&wait=1".to_string(),
            };
            let page = page(app, &tenant.token, &query).await;
            seen.extend(page["data"].as_array().unwrap().iter().cloned());
            cursor = Some(page["next_cursor"].as_str().unwrap().to_string());
        }
        seen
    };
    let ((), seen) = tokio::join!(writers, reader);

    let ids: Vec<&str> = seen.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "an event was seen twice");
    let committed: Vec<(String,)> = sqlx::query_as("SELECT LOWER(CONCAT_WS('-', HEX(SUBSTR(id,1,4)), HEX(SUBSTR(id,5,2)), HEX(SUBSTR(id,7,2)), HEX(SUBSTR(id,9,2)), HEX(SUBSTR(id,11,6)))) FROM order_events")
        .fetch_all(&app.db)
        .await
        .unwrap();
    let committed: HashSet<String> = committed.into_iter().map(|r| r.0).collect();
    let seen_ids: HashSet<String> = unique.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        seen_ids, committed,
        "the reader saw exactly the committed events"
    );
    let mut last: HashMap<&str, u64> = HashMap::new();
    for event in &seen {
        let order = event["data"]["order_id"].as_str().unwrap();
        let sequence = event["data"]["sequence"].as_u64().unwrap();
        let previous = last.insert(order, sequence).unwrap_or(0);
        assert_eq!(sequence, previous + 1, "order {order} out of sequence");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_returns_promptly_after_a_commit() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Waiting").await;
    let start = page(&app, &tenant.token, "").await;
    assert_eq!(start["data"], serde_json::json!([]));
    let cursor = start["next_cursor"].as_str().unwrap().to_string();

    let poll = async {
        let started = Instant::now();
        let page = page(&app, &tenant.token, &format!("after={cursor}&wait=10")).await;
        (page, Instant::now(), started)
    };
    let commit = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        app.new_order(&tenant).await;
        Instant::now()
    };
    let ((page, answered, started), committed) = tokio::join!(poll, commit);

    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    assert!(
        answered.duration_since(started) >= Duration::from_millis(1400),
        "it did wait"
    );
    let lag = answered.duration_since(committed);
    assert!(
        lag < Duration::from_secs(1),
        "answered {lag:?} after the commit"
    );

    // At the end, the cursor stays usable: polling from it waits, then returns nothing.
    let end = page["next_cursor"].as_str().unwrap();
    let empty = self::page(&app, &tenant.token, &format!("after={end}&wait=1")).await;
    assert_eq!(empty["data"], serde_json::json!([]));
    assert_eq!(empty["next_cursor"], end);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_shows_only_its_customers_events_and_refuses_foreign_cursors() {
    let app = TestApp::spawn().await;
    let a = app.tenant("A").await;
    let b = app.tenant("B").await;
    let order_a = app.new_order(&a).await;
    app.new_order(&b).await;
    app.drive(order_a["id"].as_str().unwrap(), &LIFE[..2]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let feed_a = page(&app, &a.token, "").await;
    let events = feed_a["data"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    assert!(events
        .iter()
        .all(|e| e["data"]["customer_id"] == a.id.as_str()));
    let feed_b = page(&app, &b.token, "").await;
    assert_eq!(feed_b["data"].as_array().unwrap().len(), 1);
    let all = page(&app, ADMIN, "").await;
    assert_eq!(all["data"].as_array().unwrap().len(), 4);
    let only_b = page(&app, ADMIN, &format!("customer_id={}", b.id)).await;
    assert_eq!(only_b["data"].as_array().unwrap().len(), 1);

    let a_cursor = feed_a["next_cursor"].as_str().unwrap();
    let order_cursor = {
        let p: Value = app
            .get("/v1/orders?limit=1", &a.token)
            .await
            .json()
            .await
            .unwrap();
        app.new_order(&a).await;
        let p2: Value = app
            .get("/v1/orders?limit=1", &a.token)
            .await
            .json()
            .await
            .unwrap();
        p2["next_cursor"]
            .as_str()
            .or(p["next_cursor"].as_str())
            .unwrap()
            .to_string()
    };
    let forged = {
        let mut c = a_cursor.to_string();
        let last = c.pop().unwrap();
        c.push(if last == 'A' { 'B' } else { 'A' });
        c
    };
    for (token, cursor) in [
        (&b.token, a_cursor.to_string()),
        (&a.token, forged),
        (&a.token, "not-a-cursor".to_string()),
        (&a.token, order_cursor),
    ] {
        let response = app.get(&format!("/v1/events?after={cursor}"), token).await;
        let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(fields(&problem), ["after"]);
    }
    for query in [
        "limit=0",
        "limit=1001",
        "limit=ten",
        "wait=31",
        "wait=-1",
        "wait=soon",
    ] {
        let response = app.get(&format!("/v1/events?{query}"), &a.token).await;
        let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(fields(&problem), [query.split('=').next().unwrap()]);
    }
}

/// SPEC §10, read your writes: each of several concurrent writers, right
/// after its 2xx, reads the feed (following its own cursor) and finds its
/// event, without sleeping; and still sees every event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_writer_finds_its_event_in_the_feed_right_after_its_2xx() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Eager").await;
    let orders: Vec<String> = join_all((0..30).map(|_| async {
        app.new_order(&tenant).await["id"]
            .as_str()
            .unwrap()
            .to_string()
    }))
    .await;
    let app = &app;
    let tenant = &tenant;
    join_all(orders.chunks(5).map(|chunk| async move {
        let mut cursor: Option<String> = None;
        let mut seen: HashSet<(String, u64)> = HashSet::new();
        for status in LIFE {
            for id in chunk {
                let response = app.change_status(ADMIN, id, status).await;
                assert_eq!(response.status(), StatusCode::OK);
                let version = response.json::<Value>().await.unwrap()["version"]
                    .as_u64()
                    .unwrap();
                let query = match &cursor {
                    Some(c) => format!("after={c}&limit=1000"),
                    None => "limit=1000".to_string(),
                };
                let page = page(app, &tenant.token, &query).await;
                for event in page["data"].as_array().unwrap() {
                    let key = (
                        event["data"]["order_id"].as_str().unwrap().to_string(),
                        event["data"]["sequence"].as_u64().unwrap(),
                    );
                    assert!(seen.insert(key), "an event was seen twice");
                }
                cursor = Some(page["next_cursor"].as_str().unwrap().to_string());
                assert!(
                    seen.contains(&(id.clone(), version)),
                    "{id} v{version} answered 2xx but is not in the feed read right after"
                );
            }
        }
    }))
    .await;
}
