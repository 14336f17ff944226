//! The rest of an order's life (SPEC §13): tracking updates and amendments,
//! what they answer, what they write, and every way to ask wrongly, each of
//! which changes nothing.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;

/// What is asked (a name, path, token, body, headers) and the answer
/// expected (status, problem type).
type TrackingCase<'a> = (
    &'a str,
    String,
    &'a str,
    Value,
    Vec<(&'a str, &'a str)>,
    StatusCode,
    &'a str,
);

/// A `TrackingCase` with the fields the problem names.
type AmendCase<'a> = (
    &'a str,
    String,
    &'a str,
    Value,
    Vec<(&'a str, &'a str)>,
    StatusCode,
    &'a str,
    Vec<&'a str>,
);

/// The order as stored and its history's length: what "changes nothing"
/// is checked against.
async fn state(app: &TestApp, id: &str) -> (Value, usize) {
    let order: Value = app
        .get(&format!("/v1/orders/{id}"), ADMIN)
        .await
        .json()
        .await
        .unwrap();
    (order, history(app, id).await.len())
}

async fn history(app: &TestApp, id: &str) -> Vec<Value> {
    let page: Value = app
        .get(&format!("/v1/orders/{id}/events?limit=100"), ADMIN)
        .await
        .json()
        .await
        .unwrap();
    page["data"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracking_update_moves_the_order_and_records_its_event() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Tracked").await;
    let order = app.new_order(&tenant).await;
    assert_eq!(order["eta"], Value::Null);
    assert_eq!(order["last_location"], Value::Null);
    let id = order["id"].as_str().unwrap();
    app.drive(id, &["confirmed", "picked_up"]).await;

    let path = format!("/v1/orders/{id}/tracking");
    let body =
        json!({"location": "Antwerp depot", "note": "sorted", "eta": "2026-12-24T17:00:00+01:00"});
    let response = app.post(&path, ADMIN, &body).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["etag"], "\"4\"");
    let tracked: Value = response.json().await.unwrap();
    assert_eq!(tracked["version"], 4);
    assert_eq!(tracked["status"], "picked_up");
    assert_eq!(tracked["eta"], "2026-12-24T16:00:00.000Z");
    assert_eq!(tracked["last_location"], "Antwerp depot");

    let events = history(&app, id).await;
    let event = &events[3];
    assert_eq!(event["type"], "order.tracking_updated");
    assert_eq!(event["data"]["sequence"], 4);
    assert_eq!(event["data"]["status"], "picked_up");
    assert_eq!(event["data"]["location"], "Antwerp depot");
    assert_eq!(event["data"]["note"], "sorted");
    assert_eq!(event["data"]["eta"], "2026-12-24T16:00:00.000Z");
    assert_eq!(event["data"]["previous_eta"], Value::Null);
    assert_eq!(event["data"]["order"], tracked);

    // Without `eta` it is kept; `null` clears it.
    let kept: Value = app
        .post(&path, ADMIN, &json!({"location": "Ghent"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(kept["eta"], "2026-12-24T16:00:00.000Z");
    let cleared: Value = app
        .post(&path, ADMIN, &json!({"location": "Ghent", "eta": null}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cleared["eta"], Value::Null);
    let events = history(&app, id).await;
    assert_eq!(
        events[5]["data"]["previous_eta"],
        "2026-12-24T16:00:00.000Z"
    );
    assert_eq!(events[5]["data"]["eta"], Value::Null);

    // A status change with a location moves `last_location` too.
    let moved: Value = app
        .post(
            &format!("/v1/orders/{id}/status"),
            ADMIN,
            &json!({"status": "in_transit", "location": "E19 near Breda"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(moved["last_location"], "E19 near Breda");
    assert_eq!(moved["version"], 7);

    // With an Idempotency-Key, a retry replays the answer and writes nothing.
    let once = [("Idempotency-Key", "scan-0042")];
    let body = json!({"location": "Rotterdam hub"});
    let first = app.send(Method::POST, &path, ADMIN, &body, &once).await;
    assert_eq!(first.status(), StatusCode::OK);
    let first: Value = first.json().await.unwrap();
    let again = app.send(Method::POST, &path, ADMIN, &body, &once).await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    assert_eq!(history(&app, id).await.len(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_tracking_update_answers_precisely_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Tracked").await;
    let other = app.tenant("Other").await;
    let on_its_way = app.new_order(&tenant).await;
    let id = on_its_way["id"].as_str().unwrap();
    app.drive(id, &["confirmed"]).await;
    let pending = app.new_order(&tenant).await;
    let pending_id = pending["id"].as_str().unwrap();
    let done = app.new_order(&tenant).await;
    let done_id = done["id"].as_str().unwrap();
    app.drive(done_id, &["cancelled"]).await;
    let good = json!({"location": "Antwerp depot"});
    let path = |id: &str| format!("/v1/orders/{id}/tracking");

    let cases: Vec<TrackingCase> = vec![
        (
            "the customer",
            path(id),
            &tenant.token,
            good.clone(),
            vec![],
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            "another customer",
            path(id),
            &other.token,
            good.clone(),
            vec![],
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            "an unknown field",
            path(id),
            ADMIN,
            json!({"location": "x", "speed": 80}),
            vec![],
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
        ),
        (
            "{}",
            path(id),
            ADMIN,
            json!({}),
            vec![],
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
        ),
        (
            "a blank location",
            path(id),
            ADMIN,
            json!({"location": "  "}),
            vec![],
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
        ),
        (
            "a bad eta",
            path(id),
            ADMIN,
            json!({"location": "x", "eta": "tomorrow"}),
            vec![],
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
        ),
        (
            "an eta out of range",
            path(id),
            ADMIN,
            json!({"location": "x", "eta": "0999-01-01T00:00:00Z"}),
            vec![],
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
        ),
        (
            "a stale If-Match",
            path(id),
            ADMIN,
            good.clone(),
            vec![("If-Match", "\"1\"")],
            StatusCode::PRECONDITION_FAILED,
            "precondition-failed",
        ),
        (
            "a pending order",
            path(pending_id),
            ADMIN,
            good.clone(),
            vec![],
            StatusCode::CONFLICT,
            "wrong-status",
        ),
        (
            "a cancelled order",
            path(done_id),
            ADMIN,
            good.clone(),
            vec![],
            StatusCode::CONFLICT,
            "wrong-status",
        ),
        (
            "no such order",
            path("0193f000-0000-7000-8000-000000000000"),
            ADMIN,
            good.clone(),
            vec![],
            StatusCode::NOT_FOUND,
            "not-found",
        ),
    ];
    for (name, path, token, body, headers, status, kind) in cases {
        let before = (
            state(&app, id).await,
            state(&app, pending_id).await,
            state(&app, done_id).await,
        );
        let response = app.send(Method::POST, &path, token, &body, &headers).await;
        let problem = assert_problem(response, status).await;
        assert!(
            problem["type"].as_str().unwrap().ends_with(kind),
            "{name}: {problem}"
        );
        let after = (
            state(&app, id).await,
            state(&app, pending_id).await,
            state(&app, done_id).await,
        );
        assert_eq!(before, after, "{name} changed something");
    }
    let problem = assert_problem(
        app.post(
            &path(id),
            ADMIN,
            &json!({"location": "x", "eta": "tomorrow"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(fields(&problem), ["eta"]);
    let problem = assert_problem(
        app.post(&path(pending_id), ADMIN, &good).await,
        StatusCode::CONFLICT,
    )
    .await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("`pending`") && detail.contains("confirmed, picked_up"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amendment_replaces_what_it_names_and_a_no_op_writes_nothing() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Amending").await;
    let order = app.new_order(&tenant).await;
    let id = order["id"].as_str().unwrap();
    let path = format!("/v1/orders/{id}");
    let delivery = address("Northwind Depot", "BE");

    let body = json!({"delivery": delivery, "notes": "Back door"});
    let response = app
        .send(
            Method::PATCH,
            &path,
            &tenant.token,
            &body,
            &[("If-Match", "\"1\"")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["etag"], "\"2\"");
    let amended: Value = response.json().await.unwrap();
    assert_eq!(amended["delivery"], delivery);
    assert_eq!(amended["notes"], "Back door");
    assert_eq!(amended["parcels"], order["parcels"]);
    assert_eq!(amended["pickup"], order["pickup"]);
    let events = history(&app, id).await;
    assert_eq!(events.len(), 2);
    let event = &events[1];
    assert_eq!(event["type"], "order.updated");
    assert_eq!(event["data"]["sequence"], 2);
    assert_eq!(event["data"]["status"], "pending");
    assert_eq!(event["data"]["changed"], json!(["delivery", "notes"]));
    assert_eq!(
        event["data"]["previous"],
        json!({"delivery": order["delivery"], "notes": order["notes"]})
    );
    assert_eq!(event["data"]["order"], amended);

    // The same values again: 200, the same version, no event.
    let same = app.patch(&path, &tenant.token, &body).await;
    assert_eq!(same.status(), StatusCode::OK);
    assert_eq!(same.headers()["etag"], "\"2\"");
    assert_eq!(same.json::<Value>().await.unwrap(), amended);
    assert_eq!(history(&app, id).await.len(), 2);

    // The operator may amend too, while confirmed; `null` clears the notes.
    app.drive(id, &["confirmed"]).await;
    let cleared: Value = app
        .patch(&path, ADMIN, &json!({"notes": null}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cleared["notes"], Value::Null);
    assert_eq!(cleared["version"], 4);
    let events = history(&app, id).await;
    assert_eq!(events[3]["data"]["previous"], json!({"notes": "Back door"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_amendment_answers_precisely_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Amending").await;
    let other = app.tenant("Other").await;
    let order = app.new_order(&tenant).await;
    let id = order["id"].as_str().unwrap();
    let picked = app.new_order(&tenant).await;
    let picked_id = picked["id"].as_str().unwrap();
    app.drive(picked_id, &["confirmed", "picked_up"]).await;
    let path = |id: &str| format!("/v1/orders/{id}");
    let good = json!({"notes": "Ring twice"});
    let mut bad_country = address("Northwind", "BE");
    bad_country["country"] = json!("be");

    let cases: Vec<AmendCase> = vec![
        (
            "{}",
            path(id),
            &tenant.token,
            json!({}),
            vec![],
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            vec!["body"],
        ),
        (
            "an unknown field",
            path(id),
            &tenant.token,
            json!({"notes": "x", "colour": "red"}),
            vec![],
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            vec![],
        ),
        (
            "the pickup address",
            path(id),
            &tenant.token,
            json!({"pickup": address("Elsewhere", "NL")}),
            vec![],
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            vec![],
        ),
        (
            "a bad delivery address",
            path(id),
            &tenant.token,
            json!({"delivery": bad_country}),
            vec![],
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            vec!["delivery.country"],
        ),
        (
            "no parcels",
            path(id),
            &tenant.token,
            json!({"parcels": []}),
            vec![],
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            vec!["parcels"],
        ),
        (
            "a null delivery",
            path(id),
            &tenant.token,
            json!({"delivery": null}),
            vec![],
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            vec![],
        ),
        (
            "a stale If-Match",
            path(id),
            &tenant.token,
            good.clone(),
            vec![("If-Match", "\"7\"")],
            StatusCode::PRECONDITION_FAILED,
            "precondition-failed",
            vec![],
        ),
        (
            "past pickup",
            path(picked_id),
            &tenant.token,
            good.clone(),
            vec![],
            StatusCode::CONFLICT,
            "wrong-status",
            vec![],
        ),
        (
            "another customer's order",
            path(id),
            &other.token,
            good.clone(),
            vec![],
            StatusCode::NOT_FOUND,
            "not-found",
            vec![],
        ),
    ];
    for (name, path, token, body, headers, status, kind, bad_fields) in cases {
        let before = (state(&app, id).await, state(&app, picked_id).await);
        let response = app.send(Method::PATCH, &path, token, &body, &headers).await;
        let problem = assert_problem(response, status).await;
        assert!(
            problem["type"].as_str().unwrap().ends_with(kind),
            "{name}: {problem}"
        );
        if !bad_fields.is_empty() {
            assert_eq!(fields(&problem), bad_fields, "{name}");
        }
        let after = (state(&app, id).await, state(&app, picked_id).await);
        assert_eq!(before, after, "{name} changed something");
    }
}
