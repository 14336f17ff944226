//! Customers and their API keys.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_shown_once_stored_hashed_and_stops_working_when_revoked() {
    let app = TestApp::spawn().await;
    let customer = app.create_customer("Keyholder").await;
    let customer_id = customer["id"].as_str().unwrap();

    let key = app.create_api_key(customer_id).await;
    let token = key["token"].as_str().unwrap();
    let key_id = key["id"].as_str().unwrap();
    assert!(token.starts_with("mk_"));
    assert!(token.starts_with(key["prefix"].as_str().unwrap()));

    let listed: Value = app
        .get(&format!("/v1/customers/{customer_id}/api-keys"), ADMIN)
        .await
        .json()
        .await
        .unwrap();
    let keys = listed["data"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["id"], key_id);
    assert!(keys[0].get("token").is_none());
    assert!(!listed.to_string().contains(token));

    // Only a hash is stored: the token appears in no column.
    let rows: Vec<(Vec<u8>, String)> = sqlx::query_as("SELECT token_hash, prefix FROM api_keys")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0.len(), 32);
    assert_ne!(rows[0].0, token.as_bytes());
    assert!(token.len() > rows[0].1.len());

    assert_eq!(app.get("/v1/orders", token).await.status(), StatusCode::OK);
    let revoked = app
        .delete(
            &format!("/v1/customers/{customer_id}/api-keys/{key_id}"),
            ADMIN,
        )
        .await;
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    assert_problem(app.get("/v1/orders", token).await, StatusCode::UNAUTHORIZED).await;
    let again = app
        .delete(
            &format!("/v1/customers/{customer_id}/api-keys/{key_id}"),
            ADMIN,
        )
        .await;
    assert_problem(again, StatusCode::NOT_FOUND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_another_customer_cannot_be_revoked_through_the_wrong_path() {
    let app = TestApp::spawn().await;
    let a = app.create_customer("A").await;
    let b = app.create_customer("B").await;
    let key = app.create_api_key(a["id"].as_str().unwrap()).await;
    let wrong = app
        .delete(
            &format!(
                "/v1/customers/{}/api-keys/{}",
                b["id"].as_str().unwrap(),
                key["id"].as_str().unwrap()
            ),
            ADMIN,
        )
        .await;
    assert_problem(wrong, StatusCode::NOT_FOUND).await;
    assert_eq!(
        app.get("/v1/orders", key["token"].as_str().unwrap())
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_are_created_listed_and_fetched() {
    let app = TestApp::spawn().await;
    let mut ids = vec![];
    for i in 0..5 {
        ids.push(app.create_customer(&format!("Customer {i}")).await["id"].clone());
    }
    let mut seen = vec![];
    let mut path = "/v1/customers?limit=2".to_string();
    loop {
        let page: Value = app.get(&path, ADMIN).await.json().await.unwrap();
        seen.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].clone()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/customers?limit=2&cursor={c}"),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids);

    let one: Value = app
        .get(
            &format!("/v1/customers/{}", ids[0].as_str().unwrap()),
            ADMIN,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["name"], "Customer 4");

    let blank = app
        .post("/v1/customers", ADMIN, &json!({ "name": " " }))
        .await;
    assert_eq!(
        fields(&assert_problem(blank, StatusCode::UNPROCESSABLE_ENTITY).await),
        ["name"]
    );
    let missing = app
        .get(&format!("/v1/customers/{}", uuid::Uuid::now_v7()), ADMIN)
        .await;
    assert_problem(missing, StatusCode::NOT_FOUND).await;
    let no_keys_for_ghost = app
        .post(
            &format!("/v1/customers/{}/api-keys", uuid::Uuid::now_v7()),
            ADMIN,
            &json!({}),
        )
        .await;
    assert_problem(no_keys_for_ghost, StatusCode::NOT_FOUND).await;
}

/// Instances remember keys they found for a moment; a revoke answers only
/// once no instance can still be trusting the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_by_every_instance_once_the_revoke_has_answered() {
    let first = TestApp::spawn().await;
    let second = TestApp::spawn_with(
        test_config(format!("{}/{}", server_url(), first.db_name)),
        first.db_name.clone(),
    )
    .await;
    let tenant = first.tenant("Two instances").await;
    let key_id: String = sqlx::query_scalar("SELECT id FROM api_keys")
        .fetch_one(&first.db)
        .await
        .map(|id: uuid::Uuid| id.to_string())
        .unwrap();

    // Both instances have just found the key.
    for app in [&first, &second] {
        assert_eq!(
            app.get("/v1/orders", &tenant.token).await.status(),
            StatusCode::OK
        );
    }
    let revoked = second
        .delete(
            &format!("/v1/customers/{}/api-keys/{key_id}", tenant.id),
            ADMIN,
        )
        .await;
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    for app in [&first, &second] {
        assert_problem(
            app.get("/v1/orders", &tenant.token).await,
            StatusCode::UNAUTHORIZED,
        )
        .await;
    }
}

/// A repeated revoke (a client's retry while the first is still waiting)
/// finds no key and answers 404, and that answer too comes only once no
/// instance trusts the key; it used to come at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_revoke_answers_only_once_no_instance_trusts_the_key() {
    let first = TestApp::spawn().await;
    let second = TestApp::spawn_with(
        test_config(format!("{}/{}", server_url(), first.db_name)),
        first.db_name.clone(),
    )
    .await;
    let tenant = first.tenant("Retried revoke").await;
    let key_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM api_keys")
        .fetch_one(&first.db)
        .await
        .unwrap();
    let path = format!("/v1/customers/{}/api-keys/{key_id}", tenant.id);

    for app in [&first, &second] {
        assert_eq!(
            app.get("/v1/orders", &tenant.token).await.status(),
            StatusCode::OK
        );
    }
    let revoke = first.delete(&path, ADMIN);
    let retry = async {
        // The first revoke's delete has committed; its answer is still
        // waiting out the instances' memory of the key.
        loop {
            let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_keys WHERE id = ?")
                .bind(key_id)
                .fetch_one(&first.db)
                .await
                .unwrap();
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let repeated = second.delete(&path, ADMIN).await;
        assert_eq!(repeated.status(), StatusCode::NOT_FOUND);
        for app in [&first, &second] {
            assert_problem(
                app.get("/v1/orders", &tenant.token).await,
                StatusCode::UNAUTHORIZED,
            )
            .await;
        }
    };
    let (revoked, ()) = tokio::join!(revoke, retry);
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
}
