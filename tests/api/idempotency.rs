//! `Idempotency-Key` on order creation.

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

async fn create_with_key(app: &TestApp, token: &str, key: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url("/v1/orders"))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn order_count(app: &TestApp, token: &str) -> usize {
    let page: Value = app
        .get("/v1/orders?limit=100", token)
        .await
        .json()
        .await
        .unwrap();
    page["data"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_the_same_key_replays_the_first_response() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Retrier").await;
    let body = order_body();

    let first = create_with_key(&app, &tenant.token, "order-1", &body).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();

    let second = create_with_key(&app, &tenant.token, "order-1", &body).await;
    assert_eq!(second.status(), StatusCode::CREATED);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    assert_eq!(second.json::<Value>().await.unwrap(), first);
    assert_eq!(order_count(&app, &tenant.token).await, 1);

    let mut other = order_body();
    other["notes"] = json!("different");
    let mismatch = create_with_key(&app, &tenant.token, "order-1", &other).await;
    let problem = assert_problem(mismatch, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(fields(&problem), ["Idempotency-Key"]);
    assert_eq!(order_count(&app, &tenant.token).await, 1);

    // Keys belong to their customer: another customer's same key is its own.
    let neighbour = app.tenant("Neighbour").await;
    let theirs = create_with_key(&app, &neighbour.token, "order-1", &body).await;
    assert_eq!(theirs.status(), StatusCode::CREATED);
    assert!(theirs.headers().get("idempotent-replayed").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_requests_create_one_order() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Stampede").await;
    let body = order_body();

    let responses =
        join_all((0..16).map(|_| create_with_key(&app, &tenant.token, "same-key", &body))).await;

    // Each waits for the one doing the work, then replays its answer.
    let mut created = 0;
    let mut ids = vec![];
    for response in responses {
        assert_eq!(response.status(), StatusCode::CREATED);
        if response.headers().get("idempotent-replayed").is_none() {
            created += 1;
        }
        ids.push(response.json::<Value>().await.unwrap()["id"].clone());
    }
    assert_eq!(created, 1, "exactly one request did the work");
    assert!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "every 201 names the same order"
    );
    assert_eq!(order_count(&app, &tenant.token).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_request_does_not_burn_its_key() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Fixer").await;
    let mut body = order_body();
    body["reference"] = json!("R-1");
    assert_eq!(
        app.create_order(&tenant.token, &body).await.status(),
        StatusCode::CREATED
    );

    // The key's first use fails (duplicate reference): nothing is stored.
    let failed = create_with_key(&app, &tenant.token, "k", &body).await;
    assert_problem(failed, StatusCode::CONFLICT).await;
    body["reference"] = json!("R-2");
    let fixed = create_with_key(&app, &tenant.token, "k", &body).await;
    assert_eq!(fixed.status(), StatusCode::CREATED);
    assert!(fixed.headers().get("idempotent-replayed").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_keys_are_refused() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Odd").await;
    for key in ["".to_string(), "k".repeat(256), "tab\there".to_string()] {
        let response = create_with_key(&app, &tenant.token, &key, &order_body()).await;
        let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(fields(&problem), ["Idempotency-Key"]);
    }
    assert_eq!(order_count(&app, &tenant.token).await, 0);
}

/// SPEC §6 and §10: `Idempotency-Key` on every POST. A status change
/// replayed with its key answers the first response (not a 409) and
/// records one event; the same key with another body is 422.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_change_replayed_with_its_key_returns_the_first_response() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Retrying").await;
    let order = app.new_order(&tenant).await;
    let id = order["id"].as_str().unwrap();
    let change = |body: Value| {
        app.client
            .post(app.url(&format!("/v1/orders/{id}/status")))
            .bearer_auth(ADMIN)
            .header("Idempotency-Key", "move-it-once")
            .json(&body)
            .send()
    };
    let first = change(json!({"status": "confirmed", "note": "booked"}))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let first: Value = first.json().await.unwrap();

    let again = change(json!({"status": "confirmed", "note": "booked"}))
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);

    let history: Value = app
        .get(&format!("/v1/orders/{id}/events"), ADMIN)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        history["data"].as_array().unwrap().len(),
        2,
        "changed twice"
    );

    let other = change(json!({"status": "cancelled"})).await.unwrap();
    let problem = assert_problem(other, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(fields(&problem), ["Idempotency-Key"]);
}

/// Keys compare byte for byte (SPEC §9): `abc` and `ABC` are two keys. The
/// server's default collation made them one on MariaDB and MySQL 8 alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_differing_only_in_case_are_two_keys() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Cased").await;
    let lower = create_with_key(&app, &tenant.token, "abc", &order_body()).await;
    assert_eq!(lower.status(), StatusCode::CREATED);
    let mut other = order_body();
    other["notes"] = json!("a different order");
    let upper = create_with_key(&app, &tenant.token, "ABC", &other).await;
    assert_eq!(upper.status(), StatusCode::CREATED);
    assert!(upper.headers().get("idempotent-replayed").is_none());
    assert_eq!(order_count(&app, &tenant.token).await, 2);
}

async fn post_with_key(
    app: &TestApp,
    path: &str,
    token: &str,
    key: &str,
    body: &Value,
) -> (StatusCode, Value, bool) {
    let response = app
        .client
        .post(app.url(path))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    let replayed = response.headers().get("idempotent-replayed").is_some();
    (response.status(), response.json().await.unwrap(), replayed)
}

/// A `SECRETS_ENCRYPTION_KEY` (32 bytes of 7, base64).
const SECRETS_KEY: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

async fn scalar(app: &TestApp, sql: &str) -> String {
    sqlx::query_scalar(sql).fetch_one(&app.db).await.unwrap()
}

/// An app that allows private webhook URLs, a tenant, and an endpoint of it.
async fn app_with_endpoint(name: &str) -> (TestApp, Tenant, String) {
    app_with_endpoint_and_key(name, None).await
}

/// The same, with `SECRETS_ENCRYPTION_KEY` set to `key`.
async fn app_with_endpoint_and_key(name: &str, key: Option<String>) -> (TestApp, Tenant, String) {
    let db_name = fresh_db_name();
    let mut config = test_config(format!("{}/{db_name}", server_url()));
    config.webhook_allow_private_networks = true;
    config.secrets_encryption_key = key;
    let app = TestApp::spawn_with(config, db_name).await;
    let tenant = app.tenant(name).await;
    let hook: Value = app
        .post(
            "/v1/webhooks",
            &tenant.token,
            &json!({"url": "http://127.0.0.1:9/hooks"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let endpoint = hook["id"].as_str().unwrap().to_string();
    (app, tenant, endpoint)
}

/// SPEC §10: the other POST routes whose answer holds no secret replay their
/// first response and do nothing twice (a test event sent once, a retry
/// asked once, a parked event retried once, one customer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_posts_replay_their_first_response_and_do_nothing_twice() {
    let (app, tenant, endpoint) = app_with_endpoint("Once").await;
    let endpoint = endpoint.as_str();

    // A customer.
    let customer = json!({"name": "Only once"});
    let (status, first, _) =
        post_with_key(&app, "/v1/customers", ADMIN, "customer-once", &customer).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, again, replayed) =
        post_with_key(&app, "/v1/customers", ADMIN, "customer-once", &customer).await;
    assert!(replayed);
    assert_eq!(again, first);
    let named = scalar(
        &app,
        "SELECT CAST(COUNT(*) AS CHAR) FROM customers WHERE name = 'Only once'",
    )
    .await;
    assert_eq!(named, "1");

    // A test event.
    let path = format!("/v1/webhooks/{endpoint}/test");
    let (status, sent, replayed) =
        post_with_key(&app, &path, &tenant.token, "test-once", &json!({})).await;
    assert_eq!((status, replayed), (StatusCode::ACCEPTED, false));
    let (status, again, replayed) =
        post_with_key(&app, &path, &tenant.token, "test-once", &json!({})).await;
    assert_eq!((status, replayed), (StatusCode::ACCEPTED, true));
    assert_eq!(again, sent);
    let tests = scalar(
        &app,
        "SELECT CAST(COUNT(*) AS CHAR) FROM webhook_deliveries",
    )
    .await;
    assert_eq!(tests, "1", "the test event was sent twice");

    // A manual retry of it.
    let delivery = sent["delivery_id"].as_str().unwrap();
    let path = format!("/v1/webhooks/{endpoint}/deliveries/{delivery}/retry");
    let (status, asked, _) =
        post_with_key(&app, &path, &tenant.token, "retry-once", &json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let requested_at = || {
        scalar(
            &app,
            "SELECT CAST(manual_requested_at AS CHAR) FROM webhook_deliveries",
        )
    };
    let at_first = requested_at().await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let (status, again, replayed) =
        post_with_key(&app, &path, &tenant.token, "retry-once", &json!({})).await;
    assert_eq!((status, replayed), (StatusCode::ACCEPTED, true));
    assert_eq!(again, asked);
    assert_eq!(
        requested_at().await,
        at_first,
        "the retry was asked for twice"
    );

    // A parked event's retry (the operator's).
    let parked = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO outbox_parked (event_id, order_id, feed_position, reason, parked_at)
         VALUES (?, ?, 1, 'refused', NOW(3))",
    )
    .bind(parked)
    .bind(uuid::Uuid::now_v7())
    .execute(&app.db)
    .await
    .unwrap();
    let path = format!("/v1/admin/outbox/parked/{parked}/retry");
    let (status, first, _) = post_with_key(&app, &path, ADMIN, "parked-once", &json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let retry_at = || {
        scalar(
            &app,
            "SELECT CAST(retry_requested_at AS CHAR) FROM outbox_parked",
        )
    };
    let at_first = retry_at().await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let (status, again, replayed) =
        post_with_key(&app, &path, ADMIN, "parked-once", &json!({})).await;
    assert_eq!((status, replayed), (StatusCode::ACCEPTED, true));
    assert_eq!(again, first);
    assert_eq!(
        retry_at().await,
        at_first,
        "the parked event was retried twice"
    );
}

/// The routes whose answer holds a secret replay it too, yet the database
/// holds neither the secret nor the key that opens it (SPEC §10, and API
/// keys and portal tokens stored hashed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_bearing_posts_replay_their_secret_without_storing_it() {
    let (app, tenant, endpoint) =
        app_with_endpoint_and_key("Sealed", Some(SECRETS_KEY.into())).await;
    let routes = [
        (
            format!("/v1/customers/{}/api-keys", tenant.id),
            ADMIN.to_string(),
            json!({}),
            "token",
            "SELECT CAST(COUNT(*) AS CHAR) FROM api_keys",
        ),
        (
            format!("/v1/customers/{}/portal-sessions", tenant.id),
            ADMIN.to_string(),
            json!({"capabilities": ["secrets:read"]}),
            "token",
            "SELECT CAST(COUNT(*) AS CHAR) FROM portal_sessions",
        ),
        (
            "/v1/webhooks".to_string(),
            tenant.token.clone(),
            json!({"url": "http://127.0.0.1:9/once"}),
            "secret",
            "SELECT CAST(COUNT(*) AS CHAR) FROM webhook_endpoints",
        ),
        (
            format!("/v1/webhooks/{endpoint}/secret/rotate"),
            tenant.token.clone(),
            json!({}),
            "secret",
            "SELECT CAST(COUNT(DISTINCT previous_secret) AS CHAR) FROM webhook_endpoints WHERE previous_secret IS NOT NULL",
        ),
    ];
    for (n, (path, token, body, secret_field, count_sql)) in routes.iter().enumerate() {
        let key = format!("2b7c9c1e-sealed-{n}");
        let (status, first, replayed) = post_with_key(&app, path, token, &key, body).await;
        assert!(status.is_success() && !replayed, "{path}: {status} {first}");
        let count = scalar(&app, count_sql).await;
        let (again_status, again, replayed) = post_with_key(&app, path, token, &key, body).await;
        assert_eq!((again_status, replayed), (status, true), "{path}");
        assert_eq!(
            again, first,
            "{path}: the replay is the first answer, secret included"
        );
        assert_eq!(scalar(&app, count_sql).await, count, "{path}: done twice");
        let secret = first[*secret_field].as_str().unwrap();
        let stored: Vec<(String, String)> = sqlx::query_as(
            "SELECT CONVERT(idempotency_key USING utf8mb4), COALESCE(response_body, '') FROM idempotency_keys",
        )
        .fetch_all(&app.db)
        .await
        .unwrap();
        for (stored_key, stored_body) in &stored {
            assert_ne!(stored_key, &key, "{path}: the key is stored in clear");
            assert!(
                !stored_body.contains(secret),
                "{path}: the secret is stored"
            );
            assert!(
                !stored_body.contains(&secret[6..]),
                "{path}: the secret is stored"
            );
        }
        if path.contains("portal") {
            let changed = json!({"capabilities": ["secrets:rotate"]});
            let (status, _, _) = post_with_key(&app, path, token, &key, &changed).await;
            assert_eq!(
                status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{path}: another request, same key"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_replays_its_first_answer_and_asks_nothing_twice() {
    let (app, tenant, endpoint) = app_with_endpoint("Recover once").await;
    let endpoint = endpoint.as_str();
    let test = app
        .post(
            &format!("/v1/webhooks/{endpoint}/test"),
            &tenant.token,
            &json!({}),
        )
        .await;
    assert_eq!(test.status(), StatusCode::ACCEPTED);
    sqlx::query("UPDATE webhook_deliveries SET status = 'failed', next_attempt_at = NULL, manual_requested_at = NULL")
        .execute(&app.db)
        .await
        .unwrap();
    let path = format!("/v1/webhooks/{endpoint}/recover");
    let body = json!({"since": (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339()});
    let (status, first, replayed) =
        post_with_key(&app, &path, &tenant.token, "recover-once", &body).await;
    assert_eq!((status, replayed), (StatusCode::ACCEPTED, false));
    assert_eq!(first, json!({"deliveries": 1}));
    let asked = || {
        scalar(
            &app,
            "SELECT CAST(manual_requested_at AS CHAR) FROM webhook_deliveries",
        )
    };
    let at_first = asked().await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let (status, again, replayed) =
        post_with_key(&app, &path, &tenant.token, "recover-once", &body).await;
    assert_eq!((status, replayed), (StatusCode::ACCEPTED, true));
    assert_eq!(again, first);
    assert_eq!(asked().await, at_first, "the recovery was asked for twice");
}

/// The two routes whose replay used to hand a database copy a token.
fn token_routes(tenant: &Tenant) -> [(String, Value); 2] {
    [
        (format!("/v1/customers/{}/api-keys", tenant.id), json!({})),
        (
            format!("/v1/customers/{}/portal-sessions", tenant.id),
            json!({"capabilities": ["secrets:read"]}),
        ),
    ]
}

/// A dump of the database, with every Idempotency-Key ever used, yields no
/// token: an API started on a restored copy without the server's
/// `SECRETS_ENCRYPTION_KEY` does not replay one. The old code sealed the
/// replay under a hash of the client's key alone, and such an API answered
/// the replay with the original token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_the_database_replays_no_token() {
    let (original, tenant, _) = app_with_endpoint_and_key("Copied", Some(SECRETS_KEY.into())).await;
    // Keys a client derives from a business id: no secret.
    let keys = ["order-42", "order-42-portal"];
    let mut tokens = vec![];
    for ((path, body), key) in token_routes(&tenant).into_iter().zip(keys) {
        let (status, first, _) = post_with_key(&original, &path, ADMIN, key, &body).await;
        assert_eq!(status, StatusCode::CREATED, "{first}");
        let (_, again, replayed) = post_with_key(&original, &path, ADMIN, key, &body).await;
        assert!(
            replayed && again == first,
            "{path}: replays with the server's key"
        );
        tokens.push(first["token"].as_str().unwrap().to_string());
    }

    let (copy_name, text) = copy_database(&original.db_name, &["--single-transaction"]).await;
    for token in &tokens {
        assert!(!text.contains(token.as_str()), "the dump holds a token");
    }
    let copy = TestApp::spawn_with(
        test_config(format!("{}/{copy_name}", server_url())),
        copy_name,
    )
    .await;

    for (((path, body), token), key) in token_routes(&tenant).iter().zip(&tokens).zip(keys) {
        let response = copy
            .client
            .post(copy.url(path))
            .bearer_auth(ADMIN)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
            .unwrap();
        let text = response.text().await.unwrap();
        assert!(
            !text.contains(token.as_str()),
            "{path}: the copy replayed the token"
        );
    }
}

/// Without `SECRETS_ENCRYPTION_KEY` a secret-bearing answer is not kept:
/// its replay is refused (409 `replay-withheld`, naming what was made) and
/// nothing is done twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_servers_key_a_token_replay_is_withheld_and_nothing_done_twice() {
    let (app, tenant, _) = app_with_endpoint("Withheld").await;
    let keys = "SELECT CAST(COUNT(*) AS CHAR) FROM api_keys";
    let (path, body) = token_routes(&tenant)[0].clone();
    let (status, first, _) = post_with_key(&app, &path, ADMIN, "order-43", &body).await;
    assert_eq!(status, StatusCode::CREATED);
    let count = scalar(&app, keys).await;
    let (status, problem, _) = post_with_key(&app, &path, ADMIN, "order-43", &body).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("/replay-withheld"),
        "{problem}"
    );
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains(first["id"].as_str().unwrap()), "{detail}");
    assert!(!detail.contains(first["token"].as_str().unwrap()));
    assert_eq!(scalar(&app, keys).await, count, "done twice");
}
