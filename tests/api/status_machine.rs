//! Every move of the status machine through the API: each allowed one
//! answers 200 and records an event, each forbidden one 409 naming both
//! statuses and changes nothing.

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

const ALL: [&str; 9] = [
    "pending",
    "confirmed",
    "picked_up",
    "in_transit",
    "out_for_delivery",
    "delivered",
    "exception",
    "cancelled",
    "returned",
];

/// SPEC §4, written out as the table it is.
const ALLOWED: &[(&str, &str)] = &[
    ("pending", "confirmed"),
    ("pending", "cancelled"),
    ("confirmed", "picked_up"),
    ("confirmed", "cancelled"),
    ("picked_up", "in_transit"),
    ("picked_up", "exception"),
    ("in_transit", "out_for_delivery"),
    ("in_transit", "exception"),
    ("out_for_delivery", "delivered"),
    ("out_for_delivery", "exception"),
    ("exception", "in_transit"),
    ("exception", "out_for_delivery"),
    ("exception", "returned"),
];

/// A way to reach each status from `pending`.
fn path_to(status: &str) -> &'static [&'static str] {
    match status {
        "pending" => &[],
        "confirmed" => &["confirmed"],
        "picked_up" => &["confirmed", "picked_up"],
        "in_transit" => &["confirmed", "picked_up", "in_transit"],
        "out_for_delivery" => &["confirmed", "picked_up", "in_transit", "out_for_delivery"],
        "delivered" => &[
            "confirmed",
            "picked_up",
            "in_transit",
            "out_for_delivery",
            "delivered",
        ],
        "exception" => &["confirmed", "picked_up", "exception"],
        "cancelled" => &["cancelled"],
        "returned" => &["confirmed", "picked_up", "exception", "returned"],
        other => panic!("unknown status {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pair_of_statuses_follows_the_table() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Machine").await;
    let cases = ALL
        .iter()
        .flat_map(|from| ALL.iter().map(move |to| (*from, *to)));
    let results = join_all(cases.map(|(from, to)| {
        let (app, tenant) = (&app, &tenant);
        async move {
            let order = app.new_order(tenant).await;
            let id = order["id"].as_str().unwrap();
            app.drive(id, path_to(from)).await;
            let response = app.change_status(ADMIN, id, to).await;
            (from, to, id.to_string(), response)
        }
    }))
    .await;

    assert_eq!(results.len(), 81);
    for (from, to, id, response) in results {
        let allowed = ALLOWED.contains(&(from, to));
        let steps = path_to(from).len() as u64;
        let history: Value = app
            .get(&format!("/v1/orders/{id}/events?limit=100"), ADMIN)
            .await
            .json()
            .await
            .unwrap();
        let events = history["data"].as_array().unwrap();
        if allowed {
            assert_eq!(response.status(), StatusCode::OK, "{from} -> {to}");
            let order: Value = response.json().await.unwrap();
            assert_eq!(order["status"], to);
            assert_eq!(order["version"], steps + 2);
            let last = events.last().unwrap();
            assert_eq!(last["type"], "order.status_changed");
            assert_eq!(last["data"]["previous_status"], from);
            assert_eq!(last["data"]["status"], to);
            assert_eq!(last["data"]["sequence"], steps + 2);
            assert_eq!(events.len() as u64, steps + 2);
        } else {
            let problem = assert_problem(response, StatusCode::CONFLICT).await;
            assert!(problem["type"]
                .as_str()
                .unwrap()
                .ends_with("/invalid-transition"));
            let detail = problem["detail"].as_str().unwrap();
            assert!(detail.contains(from), "{from} -> {to}: {detail}");
            assert!(detail.contains(to), "{from} -> {to}: {detail}");
            assert_eq!(
                events.len() as u64,
                steps + 1,
                "a refused move wrote an event"
            );
            let order: Value = app
                .get(&format!("/v1/orders/{id}"), ADMIN)
                .await
                .json()
                .await
                .unwrap();
            assert_eq!(order["status"], from);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_may_only_cancel() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Canceller").await;
    let order = app.new_order(&tenant).await;
    let id = order["id"].as_str().unwrap();
    for status in ALL.iter().filter(|s| **s != "cancelled") {
        let response = app.change_status(&tenant.token, id, status).await;
        assert_problem(response, StatusCode::FORBIDDEN).await;
    }
    let response = app.change_status(&tenant.token, id, "cancelled").await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = app.change_status(&tenant.token, id, "cancelled").await;
    assert_problem(response, StatusCode::CONFLICT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_match_guards_against_stale_writes() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Careful").await;
    let order = app.new_order(&tenant).await;
    let id = order["id"].as_str().unwrap();
    let path = format!("/v1/orders/{id}/status");
    let send = |if_match: &'static str, status: &'static str| {
        app.client
            .post(app.url(&path))
            .bearer_auth(ADMIN)
            .header("if-match", if_match)
            .json(&serde_json::json!({ "status": status }))
            .send()
    };

    let response = send("\"1\"", "confirmed").await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["etag"], "\"2\"");

    let stale = send("\"1\"", "picked_up").await.unwrap();
    assert_problem(stale, StatusCode::PRECONDITION_FAILED).await;
    let malformed = send("version-2", "picked_up").await.unwrap();
    let problem = assert_problem(malformed, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(fields(&problem), ["If-Match"]);

    let order: Value = app
        .get(&format!("/v1/orders/{id}"), ADMIN)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(order["status"], "confirmed");
    assert_eq!(order["version"], 2);

    let response = send("\"2\"", "picked_up").await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = send("*", "in_transit").await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// Changes arriving together share a transaction (`order_writer`): two
/// changes to one order apply one after the other (one wins, the other is
/// refused by the status machine), a stale `If-Match` and another
/// customer's order are refused alone, and every accepted change has its
/// event, numbered after the order's previous one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_together_succeed_or_fail_alone() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Together").await;
    let other = app.tenant("Other").await;
    let mut orders = vec![];
    for _ in 0..20 {
        orders.push(
            app.new_order(&tenant).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let foreign = app.new_order(&other).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let send = |order: String, status: &'static str, if_match: Option<&'static str>| {
        let app = &app;
        async move {
            let mut request = app
                .client
                .post(app.url(&format!("/v1/orders/{order}/status")))
                .bearer_auth(ADMIN)
                .json(&serde_json::json!({ "status": status }));
            if let Some(version) = if_match {
                request = request.header("if-match", version);
            }
            request.send().await.unwrap().status()
        }
    };
    let mut requests = vec![];
    for order in &orders {
        // Twice the same move: one applies, the other finds it done.
        requests.push(send(order.clone(), "confirmed", None));
        requests.push(send(order.clone(), "confirmed", None));
    }
    requests.push(send(orders[0].clone(), "cancelled", Some("\"7\"")));
    let statuses = join_all(requests).await;
    let customer_moves = join_all(
        [&orders[1], &foreign].map(|order| app.change_status(&tenant.token, order, "cancelled")),
    )
    .await;

    for pair in statuses[..40].chunks(2) {
        let mut pair = pair.to_vec();
        pair.sort();
        assert_eq!(pair, [StatusCode::OK, StatusCode::CONFLICT]);
    }
    assert_eq!(statuses[40], StatusCode::PRECONDITION_FAILED);
    assert_eq!(customer_moves[0].status(), StatusCode::OK);
    assert_eq!(customer_moves[1].status(), StatusCode::NOT_FOUND);
    for (n, order) in orders.iter().enumerate() {
        let history: Value = app
            .get(&format!("/v1/orders/{order}/events"), &tenant.token)
            .await
            .json()
            .await
            .unwrap();
        let events: Vec<(u64, String)> = history["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let status = e["data"]["status"].as_str().unwrap().to_string();
                (e["data"]["sequence"].as_u64().unwrap(), status)
            })
            .collect();
        let mut expected = vec![(1, "pending".to_string()), (2, "confirmed".to_string())];
        if n == 1 {
            expected.push((3, "cancelled".to_string()));
        }
        assert_eq!(events, expected, "order {n}");
    }
    let foreign_events: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM order_events WHERE order_id = ?")
            .bind(foreign.parse::<uuid::Uuid>().unwrap())
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(foreign_events, 1);
}
