//! Orders: creation, reading, listing, history and their events.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_an_order_returns_it_and_records_its_first_event() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Empress").await;
    let mut body = order_body();
    body["reference"] = json!("PO-1");
    body["notes"] = json!("Fragile.\nHandle with care.");

    let response = app.create_order(&tenant.token, &body).await;

    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["etag"], "\"1\"");
    let order: Value = response.json().await.unwrap();
    let id = order["id"].as_str().unwrap();
    assert_eq!(order["customer_id"], tenant.id.as_str());
    assert_eq!(order["reference"], "PO-1");
    assert_eq!(order["status"], "pending");
    assert_eq!(order["version"], 1);
    assert_eq!(order["pickup"], body["pickup"]);
    assert_eq!(order["delivery"], body["delivery"]);
    assert_eq!(order["parcels"], body["parcels"]);
    assert_eq!(order["notes"], body["notes"]);
    assert_eq!(order["created_at"], order["updated_at"]);

    let fetched = app.get(&format!("/v1/orders/{id}"), &tenant.token).await;
    assert_eq!(fetched.headers()["etag"], "\"1\"");
    assert_eq!(fetched.json::<Value>().await.unwrap(), order);

    let history: Value = app
        .get(&format!("/v1/orders/{id}/events"), &tenant.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(history["next_cursor"], Value::Null);
    let events = history["data"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(event["type"], "order.created");
    assert_eq!(event["timestamp"], order["created_at"]);
    assert_eq!(event["data"]["order_id"], id);
    assert_eq!(event["data"]["customer_id"], tenant.id.as_str());
    assert_eq!(event["data"]["sequence"], 1);
    assert_eq!(event["data"]["status"], "pending");
    assert_eq!(event["data"]["order"], order);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_change_records_the_full_envelope() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Tracker").await;
    let order = app.new_order(&tenant).await;
    let id = order["id"].as_str().unwrap();
    app.drive(id, &["confirmed", "picked_up"]).await;

    let response = app
        .post(
            &format!("/v1/orders/{id}/status"),
            ADMIN,
            &json!({ "status": "in_transit", "note": "on the ferry", "location": "Hook of Holland" }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let moved: Value = response.json().await.unwrap();

    let history: Value = app
        .get(&format!("/v1/orders/{id}/events"), &tenant.token)
        .await
        .json()
        .await
        .unwrap();
    let events = history["data"].as_array().unwrap();
    let sequences: Vec<u64> = events
        .iter()
        .map(|e| e["data"]["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(sequences, [1, 2, 3, 4]);
    let last = &events[3];
    assert_eq!(last["type"], "order.status_changed");
    assert_eq!(last["data"]["previous_status"], "picked_up");
    assert_eq!(last["data"]["status"], "in_transit");
    assert_eq!(last["data"]["note"], "on the ferry");
    assert_eq!(last["data"]["location"], "Hook of Holland");
    assert_eq!(last["data"]["order"], moved);
    let ids: HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 4, "event ids are unique");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_oldest_first() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Pager").await;
    let order = app.new_order(&tenant).await;
    let id = order["id"].as_str().unwrap();
    app.drive(
        id,
        &[
            "confirmed",
            "picked_up",
            "in_transit",
            "out_for_delivery",
            "delivered",
        ],
    )
    .await;

    let mut sequences = vec![];
    let mut path = format!("/v1/orders/{id}/events?limit=4");
    loop {
        let page: Value = app.get(&path, &tenant.token).await.json().await.unwrap();
        for event in page["data"].as_array().unwrap() {
            sequences.push(event["data"]["sequence"].as_u64().unwrap());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/orders/{id}/events?limit=4&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(sequences, [1, 2, 3, 4, 5, 6]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_returns_every_order_exactly_once_newest_first() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Lister").await;
    let mut created = vec![];
    for _ in 0..23 {
        created.push(
            app.new_order(&tenant).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    for id in &created[..5] {
        app.drive(id, &["confirmed"]).await;
    }

    let collect = |query: &'static str| {
        let (app, token) = (&app, tenant.token.clone());
        async move {
            let mut seen = vec![];
            let mut path = format!("/v1/orders?limit=7{query}");
            loop {
                let response = app.get(&path, &token).await;
                assert_eq!(response.status(), StatusCode::OK);
                let page: Value = response.json().await.unwrap();
                let data = page["data"].as_array().unwrap();
                assert!(data.len() <= 7);
                seen.extend(data.iter().map(|o| o["id"].as_str().unwrap().to_string()));
                match page["next_cursor"].as_str() {
                    Some(cursor) => path = format!("/v1/orders?limit=7{query}&cursor={cursor}"),
                    None => break,
                }
            }
            seen
        }
    };

    let all = collect("").await;
    let mut newest_first = created.clone();
    newest_first.reverse();
    assert_eq!(all, newest_first);

    let confirmed = collect("&status=confirmed").await;
    let mut expected: Vec<String> = created[..5].to_vec();
    expected.reverse();
    assert_eq!(confirmed, expected);

    let pending = collect("&status=pending").await;
    assert_eq!(pending.len(), 18);

    let default_page: Value = app
        .get("/v1/orders", &tenant.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(default_page["data"].as_array().unwrap().len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_are_unique_per_customer() {
    let app = TestApp::spawn().await;
    let a = app.tenant("A").await;
    let b = app.tenant("B").await;
    let mut body = order_body();
    body["reference"] = json!("PO-7");

    assert_eq!(
        app.create_order(&a.token, &body).await.status(),
        StatusCode::CREATED
    );
    let again = app.create_order(&a.token, &body).await;
    let problem = assert_problem(again, StatusCode::CONFLICT).await;
    assert!(problem["detail"].as_str().unwrap().contains("PO-7"));
    assert_eq!(
        app.create_order(&b.token, &body).await.status(),
        StatusCode::CREATED
    );

    let page: Value = app.get("/v1/orders", &a.token).await.json().await.unwrap();
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
}

/// Orders created at the same moment share a transaction (`order_writer`):
/// a duplicate reference among them is refused alone, every other order and
/// its first event are written, and every key is checked (one deleted key
/// among many is refused while the others are served).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_created_together_succeed_or_fail_alone() {
    let app = TestApp::spawn().await;
    let a = app.tenant("A").await;
    let b = app.tenant("B").await;
    let gone = app.tenant("Gone").await;
    let key_id: Vec<u8> = sqlx::query_scalar("SELECT id FROM api_keys WHERE customer_id = ?")
        .bind(gone.id.parse::<uuid::Uuid>().unwrap())
        .fetch_one(&app.db)
        .await
        .unwrap();
    let key_id = uuid::Uuid::from_slice(&key_id).unwrap();
    let deleted = app
        .delete(
            &format!("/v1/customers/{}/api-keys/{key_id}", gone.id),
            ADMIN,
        )
        .await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);

    let requests = (0..60).map(|n| {
        let (token, reference) = match n {
            // Two of A's orders share a reference; B's may reuse it.
            0..=2 => (a.token.as_str(), "SAME".to_string()),
            3 => (b.token.as_str(), "SAME".to_string()),
            4 => (gone.token.as_str(), "GONE".to_string()),
            n if n % 2 == 0 => (a.token.as_str(), format!("A-{n}")),
            n => (b.token.as_str(), format!("B-{n}")),
        };
        let mut body = order_body();
        body["reference"] = json!(reference);
        let app = &app;
        async move { (n, app.create_order(token, &body).await.status()) }
    });
    let statuses = futures::future::join_all(requests).await;
    let count = |status| statuses.iter().filter(|(_, s)| *s == status).count();
    assert_eq!(count(StatusCode::CREATED), 57, "{statuses:?}");
    assert_eq!(count(StatusCode::CONFLICT), 2, "{statuses:?}");
    assert_eq!(statuses[4].1, StatusCode::UNAUTHORIZED);

    let orders: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let created_events: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM order_events e JOIN orders o ON o.id = e.order_id
         WHERE e.sequence = 1 AND e.event_type = 'order.created'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!((orders, created_events), (57, 57));
    let same: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE reference = 'SAME'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(same, 2, "one for A, one for B");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_creates_orders_for_a_named_customer() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Managed").await;

    let unnamed = app.create_order(ADMIN, &order_body()).await;
    let problem = assert_problem(unnamed, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(fields(&problem), ["customer_id"]);

    let mut body = order_body();
    body["customer_id"] = json!(uuid::Uuid::now_v7());
    let unknown = app.create_order(ADMIN, &body).await;
    let problem = assert_problem(unknown, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(fields(&problem), ["customer_id"]);

    body["customer_id"] = json!(tenant.id);
    let response = app.create_order(ADMIN, &body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let order: Value = response.json().await.unwrap();
    assert_eq!(order["customer_id"], tenant.id.as_str());

    let filtered: Value = app
        .get(&format!("/v1/orders?customer_id={}", tenant.id), ADMIN)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(filtered["data"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_field_is_named_and_nothing_is_created() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Sloppy").await;
    let body = json!({
        "reference": "",
        "pickup": { "name": "", "line1": "x", "city": "y", "postal_code": "1", "country": "XX" },
        "delivery": { "name": "n", "line1": "x".repeat(201), "city": "y", "postal_code": "1", "country": "de" },
        "parcels": [
            { "weight_grams": 0, "length_mm": 1, "width_mm": -4, "height_mm": 1 },
            { "weight_grams": 99999999999i64, "length_mm": 1, "width_mm": 1, "height_mm": 10001 }
        ],
        "notes": "n".repeat(2001)
    });

    let response = app.create_order(&tenant.token, &body).await;

    let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(
        fields(&problem),
        [
            "reference",
            "pickup.name",
            "pickup.country",
            "delivery.line1",
            "delivery.country",
            "parcels[0].weight_grams",
            "parcels[0].width_mm",
            "parcels[1].weight_grams",
            "parcels[1].height_mm",
            "notes"
        ]
    );
    let page: Value = app
        .get("/v1/orders", &tenant.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["data"], json!([]));

    let mut none = order_body();
    none["parcels"] = json!([]);
    let problem = assert_problem(
        app.create_order(&tenant.token, &none).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(fields(&problem), ["parcels"]);

    let mut many = order_body();
    many["parcels"] = json!(vec![order_body()["parcels"][0].clone(); 101]);
    let problem = assert_problem(
        app.create_order(&tenant.token, &many).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(fields(&problem), ["parcels"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_change_input_is_validated() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Mover").await;
    let order = app.new_order(&tenant).await;
    let path = format!("/v1/orders/{}/status", order["id"].as_str().unwrap());

    let cases = [
        (json!({ "status": "teleported" }), vec!["status"]),
        (
            json!({ "status": "confirmed", "note": "n".repeat(501) }),
            vec!["note"],
        ),
        (
            json!({ "status": "confirmed", "location": "l".repeat(501) }),
            vec!["location"],
        ),
        (
            json!({ "status": "confirmed", "colour": "red" }),
            vec!["colour"],
        ),
        (json!({ "note": "no status" }), vec!["status"]),
        (json!({ "status": 3 }), vec!["status"]),
    ];
    for (body, expected) in cases {
        let problem = assert_problem(
            app.post(&path, ADMIN, &body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(fields(&problem), expected, "{body}");
    }
    let order: Value = app
        .get(
            &format!("/v1/orders/{}", order["id"].as_str().unwrap()),
            ADMIN,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(order["version"], 1);
}

/// SQS refuses U+FFFE and U+FFFF in a message body: an order holding one was
/// accepted and then stalled the relay for everyone. Now every text field
/// that reaches an event refuses them, naming the field, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_sqs_cannot_carry_is_refused_in_every_field() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Unicode").await;
    let mut body = order_body();
    body["notes"] = json!("fragile \u{FFFF}");
    body["reference"] = json!("PO-\u{FFFE}");
    body["pickup"]["line2"] = json!("\u{FFFF}");
    body["delivery"]["city"] = json!("Berlin \u{FFFE}");
    let problem = assert_problem(
        app.create_order(&tenant.token, &body).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    let mut named = fields(&problem);
    named.sort();
    assert_eq!(
        named,
        ["delivery.city", "notes", "pickup.line2", "reference"]
    );
    let orders: Value = app
        .get("/v1/orders", &tenant.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        orders["data"].as_array().unwrap().len(),
        0,
        "nothing written"
    );

    let order = app.new_order(&tenant).await;
    let id = order["id"].as_str().unwrap();
    let response = app
        .post(
            &format!("/v1/orders/{id}/status"),
            ADMIN,
            &json!({"status": "confirmed", "note": "\u{FFFF}", "location": "hub \u{FFFE}"}),
        )
        .await;
    let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(fields(&problem), ["note", "location"]);
    let unchanged: Value = app
        .get(&format!("/v1/orders/{id}"), &tenant.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(unchanged["status"], "pending");
}

/// References compare byte for byte (SPEC §9): `PO-1` and `po-1` are two
/// orders' references; whitespace around one is refused rather than
/// silently ignored by the database's comparison.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_differing_only_in_case_are_two_references() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Referenced").await;
    for reference in ["PO-1", "po-1"] {
        let mut body = order_body();
        body["reference"] = json!(reference);
        let response = app.create_order(&tenant.token, &body).await;
        assert_eq!(response.status(), StatusCode::CREATED, "{reference}");
    }
    let mut padded = order_body();
    padded["reference"] = json!("PO-1 ");
    let problem = assert_problem(
        app.create_order(&tenant.token, &padded).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(fields(&problem), ["reference"]);
}
