//! The event catalog (SPEC §10): its schemas validate its own examples and
//! every envelope the system really sends, by webhook, in the feed and in an
//! order's history.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

fn validators(catalog: &Value) -> HashMap<String, jsonschema::Validator> {
    catalog["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            let validator = jsonschema::validator_for(&entry["schema"])
                .unwrap_or_else(|e| panic!("{}: not a JSON Schema: {e}", entry["type"]));
            (entry["type"].as_str().unwrap().to_string(), validator)
        })
        .collect()
}

fn assert_valid(validators: &HashMap<String, jsonschema::Validator>, envelope: &Value) {
    let kind = envelope["type"].as_str().unwrap();
    let validator = validators
        .get(kind)
        .unwrap_or_else(|| panic!("{kind} is not in the catalog"));
    let errors: Vec<String> = validator
        .iter_errors(envelope)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{kind}: {errors:?} in {envelope}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_envelope_sent_matches_its_types_schema() {
    let system = System::start().await;
    let receiver = Receiver::start(|_, _, _| (200, Duration::ZERO)).await;
    let tenant = system.app.tenant("Catalog").await;
    let response = system.app.get("/v1/event-types", &tenant.token).await;
    assert_eq!(response.status(), StatusCode::OK);
    let catalog: Value = response.json().await.unwrap();
    let names: Vec<&str> = catalog["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "order.created",
            "order.status_changed",
            "order.tracking_updated",
            "order.updated",
            "endpoint.disabled",
            "delivery.failed",
            "webhook.test"
        ]
    );
    let validators = validators(&catalog);
    for entry in catalog["data"].as_array().unwrap() {
        let description = entry["description"].as_str().unwrap();
        assert!(!description.is_empty());
        // The portal shows it as text: no Markdown.
        assert!(!description.contains('`'), "{description}");
        assert_valid(&validators, &entry["example"]);
        let kind = entry["type"].as_str().unwrap();
        assert_eq!(entry["default"], kind.starts_with("order."), "{kind}");
    }
    // A schema that accepted anything would pass the rest: it must refuse.
    let mut wrong = catalog["data"][1]["example"].clone();
    wrong["data"]["sequence"] = Value::from("3");
    assert!(!validators["order.status_changed"].is_valid(&wrong));
    let mut extra = catalog["data"][0]["example"].clone();
    extra["data"]["order"]["surprise"] = Value::from(1);
    assert!(!validators["order.created"].is_valid(&extra));

    let (endpoint, _) = system
        .endpoint(&tenant.token, &format!("{}/hooks", receiver.base), None)
        .await;
    // An endpoint that answers 410 (disabled, its delivery failed) and one
    // that hears about it.
    let gone = Receiver::start(|_, _, _| (410, Duration::ZERO)).await;
    system
        .endpoint(&tenant.token, &format!("{}/gone?token=x", gone.base), None)
        .await;
    let news = serde_json::json!(["endpoint.disabled", "delivery.failed"]);
    system
        .endpoint(
            &tenant.token,
            &format!("{}/news", receiver.base),
            Some(news),
        )
        .await;
    let mut body = order_body();
    body["notes"] = Value::from("Fragile: glass\nRing twice");
    body["reference"] = Value::from("PO-77");
    body["delivery"]["line2"] = Value::from("Unit 4");
    let created = system.app.create_order(&tenant.token, &body).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let order: Value = created.json().await.unwrap();
    let id = order["id"].as_str().unwrap();
    let plain = system.app.new_order(&tenant).await;
    system.app.drive(id, &["confirmed", "picked_up"]).await;
    let moved = system
        .app
        .post(
            &format!("/v1/orders/{}/status", plain["id"].as_str().unwrap()),
            ADMIN,
            &serde_json::json!({"status": "cancelled", "note": "customer asked", "location": "Rotterdam"}),
        )
        .await;
    assert_eq!(moved.status(), StatusCode::OK);
    let tracked = system
        .app
        .post(
            &format!("/v1/orders/{id}/tracking"),
            ADMIN,
            &serde_json::json!({"location": "Antwerp depot", "note": "sorted", "eta": "2026-12-24T16:00:00Z"}),
        )
        .await;
    assert_eq!(tracked.status(), StatusCode::OK);
    let amended = system.app.new_order(&tenant).await;
    let patched = system
        .app
        .patch(
            &format!("/v1/orders/{}", amended["id"].as_str().unwrap()),
            &tenant.token,
            &serde_json::json!({"notes": "Back door", "parcels": [{"weight_grams": 5, "length_mm": 5, "width_mm": 5, "height_mm": 5}]}),
        )
        .await;
    assert_eq!(patched.status(), StatusCode::OK);
    let test = system
        .app
        .post(
            &format!("/v1/webhooks/{endpoint}/test"),
            &tenant.token,
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(test.status(), StatusCode::ACCEPTED);

    let hits = receiver
        .wait_for_successes("/hooks", 9, Duration::from_secs(20))
        .await;
    let mut kinds: Vec<String> = hits
        .iter()
        .map(|h| h.json()["type"].as_str().unwrap().to_string())
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "order.created",
            "order.created",
            "order.created",
            "order.status_changed",
            "order.status_changed",
            "order.status_changed",
            "order.tracking_updated",
            "order.updated",
            "webhook.test"
        ]
    );
    for hit in &hits {
        assert_valid(&validators, &hit.json());
    }
    // Every 410 fails its delivery; the first disables the endpoint.
    let mut notices = vec![];
    for _ in 0..200 {
        notices = receiver.hits_on("/news");
        let has = |t: &str| notices.iter().any(|h| h.json()["type"] == t);
        if has("endpoint.disabled") && has("delivery.failed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let kinds: std::collections::BTreeSet<String> = notices
        .iter()
        .map(|h| h.json()["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        ["delivery.failed", "endpoint.disabled"]
    );
    for hit in &notices {
        assert_valid(&validators, &hit.json());
        assert!(!hit.body.contains("token=x"), "{}", hit.body);
    }
    let feed: Value = system
        .app
        .get("/v1/events", &tenant.token)
        .await
        .json()
        .await
        .unwrap();
    // Order events only: the notices are not in the feed.
    assert_eq!(feed["data"].as_array().unwrap().len(), 8);
    for item in feed["data"].as_array().unwrap() {
        assert_valid(&validators, item);
    }
    let history: Value = system
        .app
        .get(&format!("/v1/orders/{id}/events"), &tenant.token)
        .await
        .json()
        .await
        .unwrap();
    for item in history["data"].as_array().unwrap() {
        assert_valid(&validators, item);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_needs_a_token() {
    let app = TestApp::spawn().await;
    let response = app.get("/v1/event-types", "mk_not-a-key").await;
    assert_problem(response, StatusCode::UNAUTHORIZED).await;
    assert_eq!(
        app.get("/v1/event-types", ADMIN).await.status(),
        StatusCode::OK
    );
}
