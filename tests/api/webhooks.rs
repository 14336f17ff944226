//! Webhook endpoints: registration, secrets and rotation, URL safety,
//! tenancy, the 20-endpoint limit, and the worker's indexed lookup.

use std::collections::HashSet;

use futures::future::join_all;
use mechanica::delivery::signing;
use mechanica::domain::webhook::SigningSecret;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Row;

use crate::helpers::*;

const HOOK: &str = "https://93.184.215.14/hooks/mechanica";

async fn create(app: &TestApp, token: &str, body: Value) -> reqwest::Response {
    app.post("/v1/webhooks", token, &body).await
}

async fn patch(app: &TestApp, token: &str, id: &str, body: Value) -> reqwest::Response {
    app.client
        .patch(app.url(&format!("/v1/webhooks/{id}")))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_is_created_read_changed_and_deleted() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Hooked").await;

    let response = create(
        &app,
        &tenant.token,
        json!({ "url": HOOK, "description": "orders" }),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_str().unwrap();
    let secret = created["secret"].as_str().unwrap().to_string();
    assert!(SigningSecret::parse(&secret).unwrap().key().len() == 32);
    assert_eq!(created["url"], HOOK);
    assert_eq!(created["customer_id"], tenant.id.as_str());
    // Every order type, none of the news about webhooks (SPEC §13).
    assert_eq!(
        created["event_types"],
        json!([
            "order.created",
            "order.status_changed",
            "order.tracking_updated",
            "order.updated"
        ])
    );
    assert_eq!(created["statuses"], Value::Null);
    assert_eq!(created["enabled"], true);
    assert_eq!(created["disabled_reason"], Value::Null);

    let fetched: Value = app
        .get(&format!("/v1/webhooks/{id}"), &tenant.token)
        .await
        .json()
        .await
        .unwrap();
    assert!(fetched.get("secret").is_none());
    assert_eq!(fetched["description"], "orders");
    let listed: Value = app
        .get("/v1/webhooks", &tenant.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    assert!(!listed.to_string().contains(&secret), "no secret in lists");
    let shown: Value = app
        .get(&format!("/v1/webhooks/{id}/secret"), &tenant.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown["secret"], secret.as_str());

    let changed = patch(
        &app,
        &tenant.token,
        id,
        json!({ "event_types": ["order.created"], "description": null }),
    )
    .await;
    assert_eq!(changed.status(), StatusCode::OK);
    let changed: Value = changed.json().await.unwrap();
    assert_eq!(changed["event_types"], json!(["order.created"]));
    assert_eq!(changed["description"], Value::Null);
    assert_eq!(changed["url"], HOOK);

    // The system disables an endpoint with a reason; re-enabling clears it.
    sqlx::query("UPDATE webhook_endpoints SET enabled = 0, disabled_reason = 'failing for 5 days'")
        .execute(&app.db)
        .await
        .unwrap();
    let disabled: Value = app
        .get(&format!("/v1/webhooks/{id}"), &tenant.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(disabled["disabled_reason"], "failing for 5 days");
    let enabled: Value = patch(&app, &tenant.token, id, json!({ "enabled": true }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(enabled["enabled"], true);
    assert_eq!(enabled["disabled_reason"], Value::Null);

    let deleted = app
        .delete(&format!("/v1/webhooks/{id}"), &tenant.token)
        .await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_problem(
        app.get(&format!("/v1/webhooks/{id}"), &tenant.token).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_endpoints")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(
        rows, 0,
        "a deleted endpoint is gone, so nothing is delivered to it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_names_every_field_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Careless").await;
    let response = create(
        &app,
        &tenant.token,
        json!({
            "url": "ftp://example.com/",
            "description": "d".repeat(501),
            "event_types": ["order.deleted"],
            "secret": "whsec_tooshort"
        }),
    )
    .await;
    let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(
        fields(&problem),
        ["url", "description", "event_types", "secret"]
    );

    let unknown = create(&app, &tenant.token, json!({ "url": HOOK, "retries": 3 })).await;
    assert_eq!(
        fields(&assert_problem(unknown, StatusCode::UNPROCESSABLE_ENTITY).await),
        ["retries"]
    );
    let missing = create(&app, &tenant.token, json!({ "description": "no url" })).await;
    assert_eq!(
        fields(&assert_problem(missing, StatusCode::UNPROCESSABLE_ENTITY).await),
        ["url"]
    );

    let created: Value = create(&app, &tenant.token, json!({ "url": HOOK }))
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    let empty = patch(&app, &tenant.token, id, json!({})).await;
    assert_eq!(
        fields(&assert_problem(empty, StatusCode::UNPROCESSABLE_ENTITY).await),
        ["body"]
    );
    let bad_patch = patch(
        &app,
        &tenant.token,
        id,
        json!({ "url": "http://10.0.0.1/", "secret": "x" }),
    )
    .await;
    assert_eq!(
        fields(&assert_problem(bad_patch, StatusCode::UNPROCESSABLE_ENTITY).await),
        ["secret"]
    );
    // The statuses filter: a status that does not exist, an empty list (it
    // would match nothing; null means every status), a type a customer
    // cannot subscribe to; each named, nothing changed.
    for (body, field) in [
        (json!({ "statuses": ["lost"] }), "statuses"),
        (json!({ "statuses": [] }), "statuses"),
        (json!({ "statuses": "delivered" }), "statuses"),
        (json!({ "event_types": ["webhook.test"] }), "event_types"),
    ] {
        let refused = patch(&app, &tenant.token, id, body.clone()).await;
        let problem = assert_problem(refused, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(fields(&problem), [field], "{body}");
        let refused = create(&app, &tenant.token, {
            let mut create = body.clone();
            create["url"] = json!(HOOK);
            create
        })
        .await;
        let problem = assert_problem(refused, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(fields(&problem), [field], "create {body}");
    }
    let unchanged: Value = app
        .get(&format!("/v1/webhooks/{id}"), &tenant.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(unchanged["statuses"], Value::Null);
    assert_eq!(unchanged["updated_at"], created["updated_at"]);
    let bad_url = patch(
        &app,
        &tenant.token,
        id,
        json!({ "url": "http://10.0.0.1/" }),
    )
    .await;
    assert_eq!(
        fields(&assert_problem(bad_url, StatusCode::UNPROCESSABLE_ENTITY).await),
        ["url"]
    );
    for bad_id in ["nope", "123"] {
        assert_problem(
            app.get(&format!("/v1/webhooks/{bad_id}"), &tenant.token)
                .await,
            StatusCode::NOT_FOUND,
        )
        .await;
        assert_problem(
            patch(&app, &tenant.token, bad_id, json!({ "enabled": false })).await,
            StatusCode::NOT_FOUND,
        )
        .await;
    }
    let unchanged: Value = app
        .get(&format!("/v1/webhooks/{id}"), &tenant.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(unchanged["url"], HOOK);
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_endpoints")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_that_point_into_private_networks_are_refused() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Sneaky").await;
    let cases = [
        ("http://127.0.0.1:8080/", "loopback"),
        ("http://localhost./hook", "loopback"),
        ("http://0x7f.1/", "loopback"),
        ("http://2130706433/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://10.1.2.3/", "private"),
        ("http://172.20.0.1/", "private"),
        ("http://192.168.0.10/", "private"),
        ("http://100.64.1.1/", "CGNAT"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[fd00::1]/", "unique-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://224.0.0.1/", "multicast"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://192.0.2.10/", "documentation"),
        ("http://198.18.0.1/", "benchmarking"),
        ("https://user:pw@93.184.215.14/", "credentials"),
    ];
    for (url, reason) in cases {
        let response = create(&app, &tenant.token, json!({ "url": url })).await;
        let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(fields(&problem), ["url"], "{url}");
        let message = problem["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains(reason), "{url}: {message}");
    }

    // Allowed when the operator of the system says so (dev and tests).
    let db_name = fresh_db_name();
    let mut config = test_config(format!("{}/{db_name}", server_url()));
    config.webhook_allow_private_networks = true;
    let permissive = TestApp::spawn_with(config, db_name).await;
    let local = permissive.tenant("Local").await;
    let response = create(
        &permissive,
        &local.token,
        json!({ "url": "http://127.0.0.1:9/hook" }),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let still_no_credentials = create(
        &permissive,
        &local.token,
        json!({ "url": "http://a:b@127.0.0.1/" }),
    )
    .await;
    assert_problem(still_no_credentials, StatusCode::UNPROCESSABLE_ENTITY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_has_at_most_twenty_endpoints_even_under_concurrency() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Greedy").await;
    let responses = join_all(
        (0..25).map(|i| create(&app, &tenant.token, json!({ "url": format!("{HOOK}/{i}") }))),
    )
    .await;
    let mut statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    statuses.sort();
    assert_eq!(statuses, [vec![201; 20], vec![409; 5]].concat());
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_endpoints")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(count, 20);
    let one_more = create(&app, &tenant.token, json!({ "url": HOOK })).await;
    let problem = assert_problem(one_more, StatusCode::CONFLICT).await;
    assert!(problem["type"]
        .as_str()
        .unwrap()
        .ends_with("/endpoint-limit"));

    // Pagination returns each exactly once.
    let mut seen = HashSet::new();
    let mut path = "/v1/webhooks?limit=6".to_string();
    loop {
        let page: Value = app.get(&path, &tenant.token).await.json().await.unwrap();
        for endpoint in page["data"].as_array().unwrap() {
            assert!(seen.insert(endpoint["id"].as_str().unwrap().to_string()));
        }
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/webhooks?limit=6&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 20);

    // Another customer's limit is its own.
    let other = app.tenant("Other").await;
    assert_eq!(
        create(&app, &other.token, json!({ "url": HOOK }))
            .await
            .status(),
        StatusCode::CREATED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_customers_endpoint_is_not_found_on_every_route() {
    let app = TestApp::spawn().await;
    let owner = app.tenant("Owner").await;
    let intruder = app.tenant("Intruder").await;
    let created: Value = create(&app, &owner.token, json!({ "url": HOOK }))
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    let t = intruder.token.as_str();

    let attempts = [
        app.get(&format!("/v1/webhooks/{id}"), t).await,
        app.get(&format!("/v1/webhooks/{id}/secret"), t).await,
        patch(&app, t, id, json!({ "enabled": false })).await,
        app.post(&format!("/v1/webhooks/{id}/secret/rotate"), t, &json!({}))
            .await,
        app.delete(&format!("/v1/webhooks/{id}"), t).await,
    ];
    for response in attempts {
        let problem = assert_problem(response, StatusCode::NOT_FOUND).await;
        assert!(!problem.to_string().contains("whsec_"));
    }
    let theirs: Value = app.get("/v1/webhooks", t).await.json().await.unwrap();
    assert_eq!(theirs["data"], json!([]));
    let named = app
        .get(&format!("/v1/webhooks?customer_id={}", owner.id), t)
        .await;
    assert_problem(named, StatusCode::UNPROCESSABLE_ENTITY).await;
    let for_owner = create(&app, t, json!({ "url": HOOK, "customer_id": owner.id })).await;
    assert_problem(for_owner, StatusCode::UNPROCESSABLE_ENTITY).await;

    let untouched: Value = app
        .get(&format!("/v1/webhooks/{id}"), &owner.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(untouched["enabled"], true);
    let secret: Value = app
        .get(&format!("/v1/webhooks/{id}/secret"), &owner.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(secret["secret"], created["secret"]);

    // The operator acts for a customer by naming it.
    let unnamed = create(&app, ADMIN, json!({ "url": HOOK })).await;
    assert_eq!(
        fields(&assert_problem(unnamed, StatusCode::UNPROCESSABLE_ENTITY).await),
        ["customer_id"]
    );
    let named = create(&app, ADMIN, json!({ "url": HOOK, "customer_id": owner.id })).await;
    assert_eq!(named.status(), StatusCode::CREATED);
    let owners: Value = app
        .get(&format!("/v1/webhooks?customer_id={}", owner.id), ADMIN)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(owners["data"].as_array().unwrap().len(), 2);
    assert_eq!(
        app.get(&format!("/v1/webhooks/{id}"), ADMIN).await.status(),
        StatusCode::OK
    );
}

/// Verifies a signature header with the independent `standardwebhooks` crate.
fn verifies(secret: &str, id: &str, timestamp: i64, body: &[u8], signature: &str) -> bool {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("webhook-id", id.parse().unwrap());
    headers.insert("webhook-timestamp", timestamp.to_string().parse().unwrap());
    headers.insert("webhook-signature", signature.parse().unwrap());
    standardwebhooks::Webhook::new(secret)
        .unwrap()
        .verify(body, &headers)
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_the_old_secret_signing_for_a_day_and_at_most_two_sign() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Rotator").await;
    let own = SigningSecret::generate();
    let created: Value = create(
        &app,
        &tenant.token,
        json!({ "url": HOOK, "secret": own.expose() }),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(created["secret"], own.expose());
    let id = created["id"].as_str().unwrap();

    let first = app
        .post(
            &format!("/v1/webhooks/{id}/secret/rotate"),
            &tenant.token,
            &json!({}),
        )
        .await;
    assert_eq!(first.status(), StatusCode::OK);
    let first: Value = first.json().await.unwrap();
    let second_secret = first["secret"].as_str().unwrap().to_string();
    assert_ne!(second_secret, own.expose());
    let shown: Value = app
        .get(&format!("/v1/webhooks/{id}/secret"), &tenant.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown["secret"], second_secret.as_str());

    let row = sqlx::query("SELECT secret, previous_secret, TIMESTAMPDIFF(MINUTE, NOW(3), previous_secret_expires_at) AS grace FROM webhook_endpoints")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>("previous_secret"), own.expose());
    let grace: i64 = row.get("grace");
    assert!(
        (24 * 60 - 2..=24 * 60).contains(&grace),
        "grace {grace} minutes"
    );

    // Both live secrets sign; each signature verifies with its own secret.
    let current = SigningSecret::parse(&second_secret).unwrap();
    let now = chrono::Utc::now().timestamp();
    let body = br#"{"type":"order.created"}"#;
    let header = signing::signature_header(&[&current, &own], "evt_1", now, body);
    let parts: Vec<&str> = header.split(' ').collect();
    assert_eq!(parts.len(), 2);
    assert!(verifies(&second_secret, "evt_1", now, body, parts[0]));
    assert!(verifies(own.expose(), "evt_1", now, body, parts[1]));
    assert!(verifies(own.expose(), "evt_1", now, body, &header));
    assert!(verifies(&second_secret, "evt_1", now, body, &header));
    assert!(!verifies(
        SigningSecret::generate().expose(),
        "evt_1",
        now,
        body,
        &header
    ));

    // A second rotation within the day drops the oldest: two sign at most.
    let custom = SigningSecret::generate();
    let second = app
        .post(
            &format!("/v1/webhooks/{id}/secret/rotate"),
            &tenant.token,
            &json!({ "secret": custom.expose() }),
        )
        .await;
    assert_eq!(
        second.json::<Value>().await.unwrap()["secret"],
        custom.expose()
    );
    let previous: String = sqlx::query_scalar("SELECT previous_secret FROM webhook_endpoints")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(previous, second_secret);

    let bad = app
        .post(
            &format!("/v1/webhooks/{id}/secret/rotate"),
            &tenant.token,
            &json!({ "secret": "whsec_" }),
        )
        .await;
    assert_eq!(
        fields(&assert_problem(bad, StatusCode::UNPROCESSABLE_ENTITY).await),
        ["secret"]
    );
    let no_body = app
        .client
        .post(app.url(&format!("/v1/webhooks/{id}/secret/rotate")))
        .bearer_auth(&tenant.token)
        .send()
        .await
        .unwrap();
    assert_eq!(no_body.status(), StatusCode::OK);
}

#[test]
fn signatures_match_the_published_vector_and_an_independent_implementation() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let ours = signing::sign(
        &SigningSecret::parse(secret).unwrap(),
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        br#"{"test": 2432232314}"#,
    );
    assert_eq!(ours, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    let theirs = standardwebhooks::Webhook::new(secret)
        .unwrap()
        .sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        )
        .unwrap();
    assert_eq!(ours, theirs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_encrypted_at_rest_when_a_key_is_set() {
    let db_name = fresh_db_name();
    let mut config = test_config(format!("{}/{db_name}", server_url()));
    config.secrets_encryption_key = Some("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into());
    let app = TestApp::spawn_with(config, db_name).await;
    let tenant = app.tenant("Vaulted").await;
    let created: Value = create(&app, &tenant.token, json!({ "url": HOOK }))
        .await
        .json()
        .await
        .unwrap();
    let secret = created["secret"].as_str().unwrap();
    let id = created["id"].as_str().unwrap();
    app.post(
        &format!("/v1/webhooks/{id}/secret/rotate"),
        &tenant.token,
        &json!({}),
    )
    .await;

    let (stored, previous): (String, String) =
        sqlx::query_as("SELECT secret, previous_secret FROM webhook_endpoints")
            .fetch_one(&app.db)
            .await
            .unwrap();
    for column in [&stored, &previous] {
        assert!(column.starts_with("v1:"), "{column}");
        assert!(!column.contains("whsec_"));
    }
    let key_part = secret.trim_start_matches("whsec_");
    assert!(
        !previous.contains(key_part),
        "the plaintext is not in the column"
    );
    let shown: Value = app
        .get(&format!("/v1/webhooks/{id}/secret"), &tenant.token)
        .await
        .json()
        .await
        .unwrap();
    assert!(shown["secret"].as_str().unwrap().starts_with("whsec_"));
}

/// An `EXPLAIN` row served by `key`, with no full table or index scan.
fn assert_served_by(row: &sqlx::mysql::MySqlRow, key: &str) {
    let access: Option<String> = row.try_get("type").unwrap();
    let used: Option<String> = row.try_get("key").unwrap();
    assert!(
        !matches!(access.as_deref(), Some("ALL" | "index")),
        "scan: {access:?}"
    );
    assert_eq!(used.as_deref(), Some(key));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_endpoint_lookups_are_indexed() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Indexed").await;
    for i in 0..3 {
        create(&app, &tenant.token, json!({ "url": format!("{HOOK}/{i}") })).await;
    }
    // 5,000 endpoints of 250 customers, so the optimizer plans as at scale.
    sqlx::query(
        "INSERT INTO webhook_endpoints (id, customer_id, url, description, event_mask, enabled,
             disabled_reason, secret, previous_secret, previous_secret_expires_at, created_at, updated_at)
         SELECT UNHEX(REPLACE(UUID(), '-', '')), UNHEX(MD5(seq MOD 250)), 'https://93.184.215.14/', NULL,
                4294967295, seq MOD 5 <> 0, NULL, 'whsec_x', NULL, NULL, NOW(3), NOW(3)
         FROM seq_1_to_5000",
    )
    .execute(&app.db)
    .await
    .unwrap();
    sqlx::query("ANALYZE TABLE webhook_endpoints")
        .execute(&app.db)
        .await
        .unwrap();

    let customer = uuid::Uuid::parse_str(&tenant.id).unwrap();
    let plan = sqlx::query(&format!(
        "EXPLAIN {}",
        mechanica::db::webhook_endpoints::enabled_for_sql(1)
    ))
    .bind(customer)
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(plan.len(), 1);
    assert_served_by(&plan[0], "webhook_endpoints_subscribed");

    let found = mechanica::db::webhook_endpoints::enabled_for(&app.db, &[customer])
        .await
        .unwrap();
    assert_eq!(found.len(), 3);

    // A fan-out reads its events and their customers' endpoints in one
    // statement: the endpoints' half is the same indexed lookup.
    let order = app.new_order(&tenant).await;
    let order_id = uuid::Uuid::parse_str(order["id"].as_str().unwrap()).unwrap();
    let event: uuid::Uuid = sqlx::query_scalar("SELECT id FROM order_events WHERE order_id = ?")
        .bind(order_id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    let plan = sqlx::query(&format!(
        "EXPLAIN {}",
        mechanica::db::order_events::for_fan_out_sql(1)
    ))
    .bind(event)
    .bind(event)
    .bind(event)
    .fetch_all(&app.db)
    .await
    .unwrap();
    let endpoints: Vec<_> = plan
        .iter()
        .filter(|row| {
            row.try_get::<Option<String>, _>("table")
                .unwrap()
                .as_deref()
                == Some("webhook_endpoints")
        })
        .collect();
    assert_eq!(endpoints.len(), 1, "the endpoints are read once");
    assert_served_by(endpoints[0], "webhook_endpoints_subscribed");

    let read = mechanica::db::order_events::for_fan_out(&app.db, &[event, uuid::Uuid::now_v7()])
        .await
        .unwrap();
    let mut urls: Vec<String> = read.endpoints.iter().map(|e| e.url.clone()).collect();
    urls.sort();
    let expected: Vec<String> = (0..3).map(|i| format!("{HOOK}/{i}")).collect();
    assert_eq!(
        urls, expected,
        "the customer's enabled endpoints, no other's"
    );
    assert_eq!(
        read.events.len(),
        1,
        "the one event; the unknown id is absent"
    );
    assert_eq!(read.events[0].id, event);
    assert_eq!(read.events[0].order_id, order_id);
    assert_eq!(read.events[0].customer_id, customer);
    assert!(
        read.events[0].payload.is_some(),
        "a named event carries its payload"
    );
}
