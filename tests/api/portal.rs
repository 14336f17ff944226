//! Customer portal sessions (SPEC §11): minted by the operator, hashed at
//! rest, scoped to one customer and to capabilities, expiring, ended all at
//! once; and the page that holds them.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::helpers::*;

async fn mint(app: &TestApp, customer: &str, body: Value) -> Value {
    let response = app
        .post(
            &format!("/v1/customers/{customer}/portal-sessions"),
            ADMIN,
            &body,
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.unwrap()
}

async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = app.client.request(method, app.url(path)).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

async fn count(app: &TestApp, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(&app.db)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_mints_a_session_kept_only_as_a_hash() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Portal").await;
    let before = chrono::Utc::now();
    let session = mint(&app, &tenant.id, json!({})).await;
    let token = session["token"].as_str().unwrap();
    assert!(token.starts_with("mps_") && token.len() > 40, "{token}");
    let url = session["url"].as_str().unwrap();
    assert_eq!(url, app.url(&format!("/portal#token={token}")));
    assert_eq!(
        session["capabilities"],
        json!([
            "endpoints:write",
            "secrets:read",
            "secrets:rotate",
            "deliveries:retry"
        ])
    );
    let expires: chrono::DateTime<chrono::Utc> =
        session["expires_at"].as_str().unwrap().parse().unwrap();
    let lifetime = (expires - before).num_seconds();
    assert!((3595..=3605).contains(&lifetime), "{lifetime}");

    // Only the hash is stored: no column holds the token.
    let hash: Vec<u8> = sqlx::query_scalar("SELECT token_hash FROM portal_sessions")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(hash, Sha256::digest(token.as_bytes()).to_vec());
    let dump: String = sqlx::query_scalar(
        "SELECT CONCAT_WS('|', HEX(id), HEX(customer_id), HEX(token_hash), capabilities, expires_at) FROM portal_sessions",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!(!dump.contains(&token[4..]));

    // Works as a bearer token, and says what it may do.
    let listed = app.get("/v1/webhooks", token).await;
    assert_eq!(listed.status(), StatusCode::OK);
    assert_eq!(
        listed.headers()["portal-capabilities"],
        "endpoints:write, secrets:read, secrets:rotate, deliveries:retry"
    );
    assert!(listed.headers().contains_key("portal-expires-at"));
    assert!(!app
        .get("/v1/webhooks", &tenant.token)
        .await
        .headers()
        .contains_key("portal-capabilities"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_mint_requests_are_refused_and_change_nothing() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Portal").await;
    let path = format!("/v1/customers/{}/portal-sessions", tenant.id);
    for (body, field) in [
        (json!({"capabilities": ["orders:write"]}), "capabilities"),
        (
            json!({"capabilities": ["endpoints:write", "admin"]}),
            "capabilities",
        ),
        (json!({"expires_in": 299}), "expires_in"),
        (json!({"expires_in": 604_801}), "expires_in"),
        (json!({"expires_in": -1}), "expires_in"),
    ] {
        let response = app.post(&path, ADMIN, &body).await;
        let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(fields(&problem), [field], "{body}");
    }
    let unknown = app
        .post(
            &format!("/v1/customers/{}/portal-sessions", uuid::Uuid::now_v7()),
            ADMIN,
            &json!({}),
        )
        .await;
    assert_problem(unknown, StatusCode::NOT_FOUND).await;
    let by_customer = app.post(&path, &tenant.token, &json!({})).await;
    assert_problem(by_customer, StatusCode::FORBIDDEN).await;
    assert_eq!(count(&app, "portal_sessions").await, 0);

    // A session cannot mint another.
    let session = mint(&app, &tenant.id, json!({})).await;
    let again = app
        .post(&path, session["token"].as_str().unwrap(), &json!({}))
        .await;
    assert_problem(again, StatusCode::FORBIDDEN).await;
    assert_eq!(count(&app, "portal_sessions").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_reaches_only_its_customers_webhooks_within_its_capabilities() {
    let system = System::without_worker().await;
    let app = &system.app;
    let tenant = app.tenant("Portal").await;
    let order = app.new_order(&tenant).await;
    let (endpoint, _) = system
        .endpoint(&tenant.token, "http://127.0.0.1:9/hooks", None)
        .await;
    let test: Value = app
        .post(
            &format!("/v1/webhooks/{endpoint}/test"),
            &tenant.token,
            &json!({}),
        )
        .await
        .json()
        .await
        .unwrap();
    let delivery = test["delivery_id"].as_str().unwrap();
    let read_only = mint(app, &tenant.id, json!({"capabilities": []})).await;
    let read_only = read_only["token"].as_str().unwrap();

    // Reading is always allowed.
    for path in [
        "/v1/event-types".to_string(),
        "/v1/webhooks".to_string(),
        format!("/v1/webhooks/{endpoint}"),
        format!("/v1/webhooks/{endpoint}/deliveries"),
        format!("/v1/webhooks/{endpoint}/deliveries/{delivery}/attempts"),
    ] {
        assert_eq!(
            app.get(&path, read_only).await.status(),
            StatusCode::OK,
            "{path}"
        );
    }
    // Everything else needs a capability it lacks, or is outside the portal.
    let since = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let refused = [
        (
            Method::POST,
            "/v1/webhooks".to_string(),
            Some(json!({"url": "http://127.0.0.1:9/x"})),
            "endpoints:write",
        ),
        (
            Method::PATCH,
            format!("/v1/webhooks/{endpoint}"),
            Some(json!({"enabled": false})),
            "endpoints:write",
        ),
        (
            Method::DELETE,
            format!("/v1/webhooks/{endpoint}"),
            None,
            "endpoints:write",
        ),
        (
            Method::POST,
            format!("/v1/webhooks/{endpoint}/test"),
            Some(json!({})),
            "endpoints:write",
        ),
        (
            Method::GET,
            format!("/v1/webhooks/{endpoint}/secret"),
            None,
            "secrets:read",
        ),
        (
            Method::POST,
            format!("/v1/webhooks/{endpoint}/secret/rotate"),
            Some(json!({})),
            "secrets:rotate",
        ),
        (
            Method::POST,
            format!("/v1/webhooks/{endpoint}/deliveries/{delivery}/retry"),
            Some(json!({})),
            "deliveries:retry",
        ),
        (
            Method::POST,
            format!("/v1/webhooks/{endpoint}/recover"),
            Some(json!({"since": since})),
            "deliveries:retry",
        ),
        (Method::GET, "/v1/orders".to_string(), None, "/v1/webhooks"),
        (
            Method::GET,
            format!("/v1/orders/{}", order["id"].as_str().unwrap()),
            None,
            "/v1/webhooks",
        ),
        (
            Method::GET,
            format!("/v1/orders/{}/deliveries", order["id"].as_str().unwrap()),
            None,
            "/v1/webhooks",
        ),
        (Method::GET, "/v1/events".to_string(), None, "/v1/webhooks"),
        (
            Method::GET,
            "/v1/customers".to_string(),
            None,
            "/v1/webhooks",
        ),
        (
            Method::GET,
            "/v1/admin/outbox/parked".to_string(),
            None,
            "/v1/webhooks",
        ),
    ];
    let deliveries_before = count(app, "webhook_deliveries").await;
    for (method, path, body, says) in refused {
        let response = call(app, method.clone(), &path, read_only, body).await;
        let problem = assert_problem(response, StatusCode::FORBIDDEN).await;
        assert!(
            problem["detail"].as_str().unwrap().contains(says),
            "{method} {path}: {problem}"
        );
    }
    let still: Value = app
        .get(&format!("/v1/webhooks/{endpoint}"), &tenant.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(still["enabled"], true, "nothing changed");
    assert_eq!(count(app, "webhook_deliveries").await, deliveries_before);
    assert_eq!(count(app, "webhook_endpoints").await, 1);

    // With the capabilities, the same calls work.
    let full = mint(app, &tenant.id, json!({})).await;
    let full = full["token"].as_str().unwrap();
    assert_eq!(
        app.get(&format!("/v1/webhooks/{endpoint}/secret"), full)
            .await
            .status(),
        StatusCode::OK
    );
    let created = app
        .post(
            "/v1/webhooks",
            full,
            &json!({"url": "http://127.0.0.1:9/portal"}),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Value = created.json().await.unwrap();
    assert_eq!(
        created["customer_id"],
        tenant.id.as_str(),
        "made for the session's customer"
    );
    let naming_other = app
        .post(
            "/v1/webhooks",
            full,
            &json!({"url": "http://127.0.0.1:9/x", "customer_id": uuid::Uuid::now_v7()}),
        )
        .await;
    assert_problem(naming_other, StatusCode::UNPROCESSABLE_ENTITY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_ended_sessions_are_refused() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Portal").await;
    let other = app.tenant("Other").await;
    let first = mint(&app, &tenant.id, json!({"expires_in": 300})).await;
    let second = mint(&app, &tenant.id, json!({})).await;
    let others = mint(&app, &other.id, json!({})).await;
    for session in [&first, &second, &others] {
        assert_eq!(
            app.get("/v1/webhooks", session["token"].as_str().unwrap())
                .await
                .status(),
            StatusCode::OK
        );
    }
    // Expired: as if its 300 seconds had passed.
    sqlx::query("UPDATE portal_sessions SET expires_at = NOW(3) - INTERVAL 1 SECOND WHERE id = ?")
        .bind(first["id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap())
        .execute(&app.db)
        .await
        .unwrap();
    assert_problem(
        app.get("/v1/webhooks", first["token"].as_str().unwrap())
            .await,
        StatusCode::UNAUTHORIZED,
    )
    .await;

    // Ended: every session of the customer at once, no one else's.
    let by_customer = app
        .delete(
            &format!("/v1/customers/{}/portal-sessions", tenant.id),
            &tenant.token,
        )
        .await;
    assert_problem(by_customer, StatusCode::FORBIDDEN).await;
    let ended = app
        .delete(
            &format!("/v1/customers/{}/portal-sessions", tenant.id),
            ADMIN,
        )
        .await;
    assert_eq!(ended.status(), StatusCode::NO_CONTENT);
    assert_problem(
        app.get("/v1/webhooks", second["token"].as_str().unwrap())
            .await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(
        app.get("/v1/webhooks", others["token"].as_str().unwrap())
            .await
            .status(),
        StatusCode::OK
    );

    // Forged: right prefix, wrong token.
    let forged = format!("mps_{}", "A".repeat(43));
    assert_problem(
        app.get("/v1/webhooks", &forged).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_in_urls_are_refused() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Portal").await;
    let session = mint(&app, &tenant.id, json!({})).await;
    let token = session["token"].as_str().unwrap();
    let in_query = app.get(&format!("/v1/webhooks?token={token}"), token).await;
    let problem = assert_problem(in_query, StatusCode::BAD_REQUEST).await;
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("Authorization"));
    let bare = app
        .client
        .get(app.url(&format!("/v1/webhooks?access_token={token}")))
        .send()
        .await
        .unwrap();
    assert_problem(bare, StatusCode::BAD_REQUEST).await;
    let page = app
        .client
        .get(app.url(&format!("/portal?token={token}")))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(page, StatusCode::BAD_REQUEST).await;
    assert!(problem["detail"].as_str().unwrap().contains("fragment"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_self_contained_and_framed_only_by_the_listed_origins() {
    let app = TestApp::spawn().await;
    let page = app.client.get(app.url("/portal")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    let html = page.text().await.unwrap();
    for asset in ["/portal/portal.js", "/portal/portal.css"] {
        assert!(html.contains(asset));
        let response = app.client.get(app.url(asset)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
    }
    // Nothing loaded from another origin (the browser test also watches
    // every request the page makes).
    for asset in ["/portal", "/portal/portal.js", "/portal/portal.css"] {
        let text = app
            .client
            .get(app.url(asset))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for loader in [
            "src=\"http",
            "href=\"http",
            "url(http",
            "from \"http",
            "fetch(\"http",
            "//cdn",
        ] {
            assert!(!text.contains(loader), "{asset}: {loader}");
        }
    }

    let db_name = fresh_db_name();
    let mut config = test_config(format!("{}/{db_name}", server_url()));
    config.portal_frame_ancestors = vec!["https://app.mechanica.example".into()];
    config.public_url = Some("https://api.mechanica.example/".into());
    let framed = TestApp::spawn_with(config, db_name).await;
    let page = framed
        .client
        .get(framed.url("/portal"))
        .send()
        .await
        .unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("frame-ancestors https://app.mechanica.example"),
        "{csp}"
    );
    let tenant = framed.tenant("Framed").await;
    let session = mint(&framed, &tenant.id, json!({})).await;
    assert!(session["url"]
        .as_str()
        .unwrap()
        .starts_with("https://api.mechanica.example/portal#token=mps_"));
}
