//! A customer never sees or changes another customer's data: 404, never 403,
//! never the data. Customers cannot reach operator routes (403).

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_customers_order_is_not_found_on_every_order_route() {
    let app = TestApp::spawn().await;
    let owner = app.tenant("Owner").await;
    let intruder = app.tenant("Intruder").await;
    let order = app.new_order(&owner).await;
    let id = order["id"].as_str().unwrap();

    let get = app.get(&format!("/v1/orders/{id}"), &intruder.token).await;
    let problem = assert_problem(get, StatusCode::NOT_FOUND).await;
    assert!(!problem.to_string().contains(&owner.id), "no data leaks");

    let history = app
        .get(&format!("/v1/orders/{id}/events"), &intruder.token)
        .await;
    assert_problem(history, StatusCode::NOT_FOUND).await;

    let cancel = app.change_status(&intruder.token, id, "cancelled").await;
    assert_problem(cancel, StatusCode::NOT_FOUND).await;
    let other_status = app.change_status(&intruder.token, id, "confirmed").await;
    assert_problem(other_status, StatusCode::NOT_FOUND).await;

    let listed: Value = app
        .get("/v1/orders", &intruder.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"], json!([]));

    let named = app
        .get(
            &format!("/v1/orders?customer_id={}", owner.id),
            &intruder.token,
        )
        .await;
    assert_problem(named, StatusCode::UNPROCESSABLE_ENTITY).await;
    let mut body = order_body();
    body["customer_id"] = json!(owner.id);
    let for_other = app.create_order(&intruder.token, &body).await;
    assert_problem(for_other, StatusCode::UNPROCESSABLE_ENTITY).await;

    // Nothing changed: the owner still has one pending order with one event.
    let fetched: Value = app
        .get(&format!("/v1/orders/{id}"), &owner.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(fetched, order);
    let page: Value = app
        .get("/v1/orders", &owner.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_from_another_customer_shows_only_your_own_orders() {
    let app = TestApp::spawn().await;
    let a = app.tenant("A").await;
    let b = app.tenant("B").await;
    for _ in 0..3 {
        app.new_order(&a).await;
    }
    let mine = app.new_order(&b).await;
    let page: Value = app
        .get("/v1/orders?limit=1", &a.token)
        .await
        .json()
        .await
        .unwrap();
    let cursor = page["next_cursor"].as_str().unwrap();

    let theirs: Value = app
        .get(&format!("/v1/orders?cursor={cursor}"), &b.token)
        .await
        .json()
        .await
        .unwrap();
    for order in theirs["data"].as_array().unwrap() {
        assert_eq!(order["customer_id"], b.id.as_str());
    }
    let _ = mine;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_cannot_use_operator_routes() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Curious").await;
    let other = app.create_customer("Other").await;
    let other_id = other["id"].as_str().unwrap();
    let key = app.create_api_key(other_id).await;
    let key_id = key["id"].as_str().unwrap();

    let token = tenant.token.as_str();
    let attempts = [
        app.get("/v1/customers", token).await,
        app.post("/v1/customers", token, &json!({ "name": "Mine now" }))
            .await,
        app.get(&format!("/v1/customers/{other_id}"), token).await,
        app.get(&format!("/v1/customers/{}", tenant.id), token)
            .await,
        app.get(&format!("/v1/customers/{other_id}/api-keys"), token)
            .await,
        app.post(
            &format!("/v1/customers/{other_id}/api-keys"),
            token,
            &json!({}),
        )
        .await,
        app.delete(
            &format!("/v1/customers/{other_id}/api-keys/{key_id}"),
            token,
        )
        .await,
    ];
    for response in attempts {
        assert_problem(response, StatusCode::FORBIDDEN).await;
    }
    // The other customer's key still works and no customer was added.
    let still = app.get("/v1/orders", key["token"].as_str().unwrap()).await;
    assert_eq!(still.status(), StatusCode::OK);
    let customers: Value = app.get("/v1/customers", ADMIN).await.json().await.unwrap();
    assert_eq!(customers["data"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_sees_and_moves_every_customers_orders() {
    let app = TestApp::spawn().await;
    let a = app.tenant("A").await;
    let b = app.tenant("B").await;
    let order_a = app.new_order(&a).await;
    app.new_order(&b).await;

    let all: Value = app.get("/v1/orders", ADMIN).await.json().await.unwrap();
    assert_eq!(all["data"].as_array().unwrap().len(), 2);
    let id = order_a["id"].as_str().unwrap();
    assert_eq!(
        app.get(&format!("/v1/orders/{id}"), ADMIN).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.change_status(ADMIN, id, "confirmed").await.status(),
        StatusCode::OK
    );
}
