//! Recovering an endpoint's failed deliveries, and an order's deliveries
//! across endpoints (SPEC §10).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

async fn wait_for(app: &TestApp, token: &str, endpoint: &str, status: &str, count: usize) {
    for _ in 0..300 {
        let rows = deliveries(app, token, endpoint, &format!("&status={status}")).await;
        if rows.len() >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{count} deliveries never became {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_deliveries_are_recovered_in_order_per_order() {
    let system = System::start().await;
    let up = Arc::new(AtomicBool::new(false));
    let seen = up.clone();
    let receiver = Receiver::start(move |_, _, _| {
        if seen.load(Ordering::SeqCst) {
            (200, Duration::ZERO)
        } else {
            (500, Duration::ZERO)
        }
    })
    .await;
    let tenant = system.app.tenant("Recovering").await;
    let (endpoint, _) = system
        .endpoint(&tenant.token, &format!("{}/hooks", receiver.base), None)
        .await;
    let mut orders = vec![];
    for _ in 0..3 {
        let order = system.app.new_order(&tenant).await;
        let id = order["id"].as_str().unwrap().to_string();
        system.app.drive(&id, &["confirmed", "picked_up"]).await;
        orders.push(id);
    }
    // 9 events, each failed after the (compressed) schedule.
    wait_for(&system.app, &tenant.token, &endpoint, "failed", 9).await;
    let before = receiver.hits_on("/hooks").len();

    let path = format!("/v1/webhooks/{endpoint}/recover");
    let now = chrono::Utc::now();
    let bad = [
        json!({"since": (now - chrono::Duration::days(15)).to_rfc3339()}),
        json!({"since": now.to_rfc3339(), "until": (now - chrono::Duration::hours(1)).to_rfc3339()}),
        json!({"since": "yesterday"}),
        json!({}),
    ];
    for body in bad {
        let response = system.app.post(&path, &tenant.token, &body).await;
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    }
    // A window that ends before the events: nothing to recover.
    let early = system
        .app
        .post(
            &path,
            &tenant.token,
            &json!({"since": (now - chrono::Duration::hours(2)).to_rfc3339(),
                    "until": (now - chrono::Duration::hours(1)).to_rfc3339()}),
        )
        .await;
    assert_eq!(early.status(), StatusCode::ACCEPTED);
    assert_eq!(
        early.json::<Value>().await.unwrap(),
        json!({"deliveries": 0})
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.hits_on("/hooks").len(), before, "nothing was sent");

    up.store(true, Ordering::SeqCst);
    let response = system
        .app
        .post(
            &path,
            &tenant.token,
            &json!({"since": (now - chrono::Duration::hours(1)).to_rfc3339()}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"deliveries": 9})
    );
    let ok = receiver
        .wait_for_successes("/hooks", 9, Duration::from_secs(20))
        .await;
    for order in &orders {
        let sequences: Vec<u64> = ok
            .iter()
            .map(Hit::json)
            .filter(|b| b["data"]["order_id"] == order.as_str())
            .map(|b| b["data"]["sequence"].as_u64().unwrap())
            .collect();
        assert_eq!(sequences, [1, 2, 3], "order {order} recovered in order");
    }
    wait_for(&system.app, &tenant.token, &endpoint, "succeeded", 9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orders_deliveries_are_listed_across_endpoints() {
    let system = System::start().await;
    let receiver = Receiver::start(|_, _, _| (200, Duration::ZERO)).await;
    let tenant = system.app.tenant("Tracing").await;
    let intruder = system.app.tenant("Intruder").await;
    let (first, _) = system
        .endpoint(&tenant.token, &format!("{}/a", receiver.base), None)
        .await;
    let (second, _) = system
        .endpoint(&tenant.token, &format!("{}/b", receiver.base), None)
        .await;
    let order = system.app.new_order(&tenant).await;
    let other = system.app.new_order(&tenant).await;
    let id = order["id"].as_str().unwrap();
    system.app.drive(id, &["confirmed"]).await;
    receiver
        .wait_for_successes("/a", 3, Duration::from_secs(20))
        .await;
    receiver
        .wait_for_successes("/b", 3, Duration::from_secs(20))
        .await;

    let page: Value = system
        .app
        .get(&format!("/v1/orders/{id}/deliveries"), &tenant.token)
        .await
        .json()
        .await
        .unwrap();
    let rows = page["data"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "two events to two endpoints: {page}");
    for row in rows {
        assert_eq!(row["order_id"], id);
        assert!([first.as_str(), second.as_str()].contains(&row["endpoint_id"].as_str().unwrap()));
    }
    let mut sequences: Vec<u64> = rows
        .iter()
        .map(|r| r["sequence"].as_u64().unwrap())
        .collect();
    sequences.sort();
    assert_eq!(sequences, [1, 1, 2, 2]);
    assert!(rows.iter().all(|r| r["order_id"] != other["id"]));
    let paged: Value = system
        .app
        .get(
            &format!("/v1/orders/{id}/deliveries?limit=3"),
            &tenant.token,
        )
        .await
        .json()
        .await
        .unwrap();
    let cursor = paged["next_cursor"].as_str().unwrap();
    let rest: Value = system
        .app
        .get(
            &format!("/v1/orders/{id}/deliveries?limit=3&cursor={cursor}"),
            &tenant.token,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rest["data"].as_array().unwrap().len(), 1);

    let hidden = system
        .app
        .get(&format!("/v1/orders/{id}/deliveries"), &intruder.token)
        .await;
    assert_problem(hidden, StatusCode::NOT_FOUND).await;
}
