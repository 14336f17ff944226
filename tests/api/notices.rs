//! News about a customer's webhooks (SPEC §13) end to end, with real
//! receivers: a 410 disables an endpoint, a schedule that runs out fails a
//! delivery, and the customer's endpoints that list those types hear of it;
//! and the filters that decide who gets which order event.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

/// Waits until `path` has a hit of type `kind`; returns its envelope.
async fn first_of(receiver: &Receiver, path: &str, kind: &str) -> Value {
    for _ in 0..400 {
        if let Some(hit) = receiver
            .hits_on(path)
            .into_iter()
            .find(|h| h.json()["type"] == kind)
        {
            return hit.json();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let seen: Vec<Value> = receiver
        .hits_on(path)
        .iter()
        .map(|h| h.json()["type"].clone())
        .collect();
    panic!("{path}: no {kind} in {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_disables_the_endpoint_and_the_endpoints_that_listen_hear_of_it() {
    let system = System::start().await;
    let receiver = Receiver::start(|path, _, _| match path {
        "/gone" => (410, Duration::ZERO),
        _ => (200, Duration::ZERO),
    })
    .await;
    let tenant = system.app.tenant("Listening").await;
    let other = system.app.tenant("Elsewhere").await;
    let (gone, _) = system
        .endpoint(
            &tenant.token,
            &format!("{}/gone?key=s3cret", receiver.base),
            None,
        )
        .await;
    let listens = json!(["endpoint.disabled"]);
    let (listener, _) = system
        .endpoint(
            &tenant.token,
            &format!("{}/listener", receiver.base),
            Some(listens.clone()),
        )
        .await;
    system
        .endpoint(&tenant.token, &format!("{}/quiet", receiver.base), None)
        .await;
    system
        .endpoint(
            &other.token,
            &format!("{}/other", receiver.base),
            Some(listens),
        )
        .await;

    let order = system.app.new_order(&tenant).await;
    let notice = first_of(&receiver, "/listener", "endpoint.disabled").await;
    assert_eq!(notice["data"]["customer_id"], tenant.id.as_str());
    assert_eq!(notice["data"]["endpoint_id"], gone.as_str());
    assert_eq!(notice["data"]["url"], format!("{}/gone", receiver.base));
    assert_eq!(
        notice["data"]["disabled_reason"],
        "the endpoint answered 410 Gone"
    );
    let shown: Value = system
        .app
        .get(&format!("/v1/webhooks/{gone}"), &tenant.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown["enabled"], false);

    // The quiet endpoint gets the order's event and no news; another
    // customer's endpoint gets nothing; the disabled one nothing more.
    receiver
        .wait_for_successes("/quiet", 1, Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let quiet: Vec<Value> = receiver
        .hits_on("/quiet")
        .iter()
        .map(|h| h.json()["type"].clone())
        .collect();
    assert_eq!(quiet, ["order.created"]);
    assert!(receiver.hits_on("/other").is_empty());
    assert_eq!(receiver.hits_on("/gone").len(), 1);
    assert_eq!(receiver.hits_on("/listener").len(), 1);

    // In the listener's delivery log like any event; in no order's history
    // and not in the feed.
    let log = deliveries(&system.app, &tenant.token, &listener, "").await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["event_type"], "endpoint.disabled");
    assert_eq!(log[0]["status"], "succeeded");
    let feed: Value = system
        .app
        .get("/v1/events", &tenant.token)
        .await
        .json()
        .await
        .unwrap();
    let types: Vec<&Value> = feed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["type"])
        .collect();
    assert_eq!(types, ["order.created"]);
    let id = order["id"].as_str().unwrap();
    let history: Value = system
        .app
        .get(&format!("/v1/orders/{id}/events"), &tenant.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(history["data"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_whose_schedule_runs_out_is_reported_failed_to_the_endpoints_that_listen() {
    let system = System::start().await;
    let receiver = Receiver::start(|path, _, _| match path {
        "/down" => (500, Duration::ZERO),
        _ => (200, Duration::ZERO),
    })
    .await;
    let tenant = system.app.tenant("Failing").await;
    let (down, _) = system
        .endpoint(&tenant.token, &format!("{}/down", receiver.base), None)
        .await;
    let (listener, _) = system
        .endpoint(
            &tenant.token,
            &format!("{}/listener", receiver.base),
            Some(json!(["delivery.failed", "order.status_changed"])),
        )
        .await;

    let order = system.app.new_order(&tenant).await;
    let id = order["id"].as_str().unwrap();
    // The test schedule: the first attempt and three retries 300 ms apart.
    let notice = first_of(&receiver, "/listener", "delivery.failed").await;
    let failed = deliveries(&system.app, &tenant.token, &down, "").await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["status"], "failed");
    let data = &notice["data"];
    assert_eq!(data["customer_id"], tenant.id.as_str());
    assert_eq!(data["endpoint_id"], down.as_str());
    assert_eq!(data["delivery_id"], failed[0]["id"]);
    assert_eq!(data["event_id"], failed[0]["event_id"]);
    assert_eq!(data["event_type"], "order.created");
    assert_eq!(data["order_id"], id);
    assert_eq!(data["sequence"], 1);
    assert_eq!(data["attempts"], 4);
    assert_eq!(data["last_response_status"], 500);
    // The listener did not list order.created, so that is all it got.
    assert_eq!(receiver.hits_on("/listener").len(), 1);
    let log = deliveries(&system.app, &tenant.token, &listener, "").await;
    assert_eq!(log.len(), 1);

    // A failed delivery retried by hand that fails again tells nobody twice.
    let retry = system
        .app
        .post(
            &format!(
                "/v1/webhooks/{down}/deliveries/{}/retry",
                failed[0]["id"].as_str().unwrap()
            ),
            &tenant.token,
            &json!({}),
        )
        .await;
    assert_eq!(retry.status(), StatusCode::ACCEPTED);
    for _ in 0..200 {
        if receiver.hits_on("/down").len() == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(receiver.hits_on("/down").len(), 5);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.hits_on("/listener").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_order_event_arrives_in_order_and_the_status_filter_keeps_only_listed_statuses() {
    let system = System::start().await;
    // A slow first answer, so later events queue behind it.
    let receiver = Receiver::start(|_, nth, _| {
        let delay = if nth == 0 { 300 } else { 0 };
        (200, Duration::from_millis(delay))
    })
    .await;
    let tenant = system.app.tenant("Ordered").await;
    system
        .endpoint(&tenant.token, &format!("{}/all", receiver.base), None)
        .await;
    let response = system
        .app
        .post(
            "/v1/webhooks",
            &tenant.token,
            &json!({"url": format!("{}/delivered", receiver.base), "statuses": ["delivered"]}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["statuses"], json!(["delivered"]));
    assert_eq!(
        created["event_types"],
        json!([
            "order.created",
            "order.status_changed",
            "order.tracking_updated",
            "order.updated"
        ])
    );

    let order = system.app.new_order(&tenant).await;
    let id = order["id"].as_str().unwrap();
    let amend = system
        .app
        .patch(
            &format!("/v1/orders/{id}"),
            &tenant.token,
            &json!({"notes": "Gate code 1234"}),
        )
        .await;
    assert_eq!(amend.status(), StatusCode::OK);
    system.app.drive(id, &["confirmed", "picked_up"]).await;
    let track = |location: &'static str| {
        let app = &system.app;
        async move {
            let path = format!("/v1/orders/{id}/tracking");
            let response = app.post(&path, ADMIN, &json!({"location": location})).await;
            assert_eq!(response.status(), StatusCode::OK);
        }
    };
    track("Antwerp depot").await;
    system.app.drive(id, &["in_transit"]).await;
    track("E19").await;
    system
        .app
        .drive(id, &["out_for_delivery", "delivered"])
        .await;

    let all = receiver
        .wait_for_successes("/all", 9, Duration::from_secs(20))
        .await;
    let sequences: Vec<u64> = all
        .iter()
        .map(|h| h.json()["data"]["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(sequences, (1..=9).collect::<Vec<u64>>(), "in commit order");
    let kinds: Vec<String> = all
        .iter()
        .map(|h| h.json()["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds,
        [
            "order.created",
            "order.updated",
            "order.status_changed",
            "order.status_changed",
            "order.tracking_updated",
            "order.status_changed",
            "order.tracking_updated",
            "order.status_changed",
            "order.status_changed",
        ]
    );
    let filtered = receiver
        .wait_for_successes("/delivered", 5, Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got: Vec<(String, u64)> = receiver
        .hits_on("/delivered")
        .iter()
        .map(|h| {
            let e = h.json();
            (
                e["type"].as_str().unwrap().to_string(),
                e["data"]["sequence"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("order.created".to_string(), 1),
            ("order.updated".to_string(), 2),
            ("order.tracking_updated".to_string(), 5),
            ("order.tracking_updated".to_string(), 7),
            ("order.status_changed".to_string(), 9),
        ]
    );
    assert_eq!(
        filtered.last().unwrap().json()["data"]["status"],
        "delivered"
    );
}

/// Endpoints an older version made (its columns only, "all" as every bit
/// of `event_mask`) keep what they asked for: the default one gets the new
/// order types and no news; one that listed types gets only those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_made_before_the_new_types_get_them_by_default_and_no_news() {
    let system = System::start().await;
    let receiver = Receiver::start(|path, _, _| match path {
        "/gone" => (410, Duration::ZERO),
        _ => (200, Duration::ZERO),
    })
    .await;
    let tenant = system.app.tenant("Longstanding").await;
    for (path, mask) in [("/all", u32::MAX), ("/changes", 2), ("/gone", u32::MAX)] {
        // The INSERT of the version before: no notice_mask, no status_mask.
        let now = chrono::Utc::now() - chrono::Duration::seconds(5);
        sqlx::query(
            "INSERT INTO webhook_endpoints (id, customer_id, url, description, event_mask, enabled,
                 disabled_reason, secret, previous_secret, previous_secret_expires_at, created_at,
                 updated_at, failing_since, rate_limit_per_second, headers)
             VALUES (?, ?, ?, NULL, ?, 1, NULL, ?, NULL, NULL, ?, ?, NULL, NULL, NULL)",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(uuid::Uuid::parse_str(&tenant.id).unwrap())
        .bind(format!("{}{path}", receiver.base))
        .bind(mask)
        .bind("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .bind(now)
        .bind(now)
        .execute(&system.app.db)
        .await
        .unwrap();
    }
    let order = system.app.new_order(&tenant).await;
    let id = order["id"].as_str().unwrap();
    system.app.drive(id, &["confirmed"]).await;
    let tracked = system
        .app
        .post(
            &format!("/v1/orders/{id}/tracking"),
            ADMIN,
            &json!({"location": "Depot"}),
        )
        .await;
    assert_eq!(tracked.status(), StatusCode::OK);

    let all = receiver
        .wait_for_successes("/all", 3, Duration::from_secs(20))
        .await;
    let kinds: Vec<Value> = all.iter().map(|h| h.json()["type"].clone()).collect();
    assert_eq!(
        kinds,
        [
            "order.created",
            "order.status_changed",
            "order.tracking_updated"
        ]
    );
    receiver
        .wait_for_successes("/changes", 1, Duration::from_secs(20))
        .await;
    // /gone was disabled meanwhile: the others heard nothing of it.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.hits_on("/all").len(), 3);
    let changes: Vec<Value> = receiver
        .hits_on("/changes")
        .iter()
        .map(|h| h.json()["type"].clone())
        .collect();
    assert_eq!(changes, ["order.status_changed"]);
}
