//! Tenant isolation over the whole API, derived from `openapi/openapi.json`:
//! every route with an id in its path is called with customer B's token on
//! customer A's resource. B gets 404 (403 on operator-only routes, where A
//! gets 403 too) and the database does not change; then A's own call on the
//! same resource proves the id was real. A route added later is walked
//! without anyone listing it here; one whose path names a new kind of id
//! fails until `resource_for` learns which fixture it is. B's portal session
//! walks every route too: 403 outside the portal's routes, 404 on A's
//! webhooks.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use mechanica::domain::portal;

use crate::helpers::*;

/// One of A's resources of each kind, fresh for each route.
struct Fixture {
    owner: Tenant,
    order: String,
    endpoint: String,
    delivery: String,
    api_key: String,
}

async fn fixture(app: &TestApp) -> Fixture {
    let owner = app.tenant("Owner").await;
    let order = app.new_order(&owner).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let created = app
        .post(
            "/v1/webhooks",
            &owner.token,
            &json!({ "url": "http://127.0.0.1:9/hooks" }),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let endpoint = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let test = app
        .post(
            &format!("/v1/webhooks/{endpoint}/test"),
            &owner.token,
            &json!({}),
        )
        .await;
    assert_eq!(test.status(), StatusCode::ACCEPTED);
    let delivery = test.json::<Value>().await.unwrap()["delivery_id"]
        .as_str()
        .unwrap()
        .to_string();
    let api_key = app.create_api_key(&owner.id).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    Fixture {
        owner,
        order,
        endpoint,
        delivery,
        api_key,
    }
}

/// Which of A's resources a path parameter names, from the path segment
/// before it.
fn resource_for<'a>(fixture: &'a Fixture, segment: &str) -> Option<&'a str> {
    match segment {
        "customers" => Some(&fixture.owner.id),
        "orders" => Some(&fixture.order),
        "webhooks" => Some(&fixture.endpoint),
        "deliveries" => Some(&fixture.delivery),
        "api-keys" => Some(&fixture.api_key),
        // Operator-only: a customer is refused before the id is looked at.
        "parked" => Some(&fixture.order),
        _ => None,
    }
}

/// The path with each `{param}` replaced by A's resource.
fn concrete_path(template: &str, fixture: &Fixture) -> String {
    let segments: Vec<&str> = template.split('/').collect();
    segments
        .iter()
        .enumerate()
        .map(|(i, segment)| {
            if segment.starts_with('{') {
                let before = segments[i - 1];
                resource_for(fixture, before)
                    .unwrap_or_else(|| {
                        panic!("{template}: teach resource_for which resource `{segment}` after `{before}` names")
                    })
                    .to_string()
            } else {
                segment.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// A body the route accepts, so the call reaches the ownership check
/// rather than stopping at validation.
fn valid_body(method: &Method, template: &str) -> Value {
    match (method.as_str(), template) {
        ("POST", "/v1/orders/{id}/status") => json!({ "status": "cancelled" }),
        ("PATCH", "/v1/orders/{id}") => json!({ "notes": "changed" }),
        ("POST", "/v1/orders/{id}/tracking") => json!({ "location": "Depot" }),
        ("PATCH", "/v1/webhooks/{id}") => json!({ "description": "changed" }),
        ("POST", "/v1/webhooks/{id}/recover") => {
            json!({ "since": (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339() })
        }
        _ => json!({}),
    }
}

/// Every table's row count and a checksum of its contents.
async fn snapshot(app: &TestApp) -> Vec<(String, String, String)> {
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT CAST(table_name AS CHAR) FROM information_schema.tables \
         WHERE table_schema = DATABASE() AND table_name NOT IN ('_sqlx_migrations', 'feed_clock') \
         ORDER BY table_name",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    let mut state = Vec::new();
    for (table,) in tables {
        let columns: Vec<(String,)> = sqlx::query_as(
            "SELECT CAST(column_name AS CHAR) FROM information_schema.columns \
             WHERE table_schema = DATABASE() AND table_name = ? ORDER BY ordinal_position",
        )
        .bind(&table)
        .fetch_all(&app.db)
        .await
        .unwrap();
        let columns: Vec<String> = columns
            .into_iter()
            .map(|(c,)| format!("COALESCE(HEX(`{c}`), 'null')"))
            .collect();
        let (count, sum): (String, String) = sqlx::query_as(&format!(
            "SELECT CAST(COUNT(*) AS CHAR), CAST(COALESCE(SUM(CRC32(CONCAT_WS('|', {}))), 0) AS CHAR) FROM `{table}`",
            columns.join(", ")
        ))
        .fetch_one(&app.db)
        .await
        .unwrap();
        state.push((table, count, sum));
    }
    state
}

/// Waits until the sequencer has placed every event in the feed, so the
/// snapshot is not taken mid-update.
async fn settled(app: &TestApp) {
    for _ in 0..100 {
        let (unplaced,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM order_events WHERE feed_position IS NULL")
                .fetch_one(&app.db)
                .await
                .unwrap();
        if unplaced == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("events were never placed in the feed");
}

async fn call(
    app: &TestApp,
    method: &Method,
    path: &str,
    token: &str,
    body: &Value,
) -> reqwest::Response {
    let mut request = app
        .client
        .request(method.clone(), app.url(path))
        .bearer_auth(token);
    if matches!(method.as_str(), "POST" | "PATCH" | "PUT") {
        request = request.json(body);
    }
    request.send().await.expect("request sent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_lets_one_customer_reach_anothers_resource() {
    let spec: Value =
        serde_json::from_str(include_str!("../../openapi/openapi.json")).expect("openapi.json");
    let db_name = fresh_db_name();
    let mut config = test_config(format!("{}/{db_name}", server_url()));
    config.webhook_allow_private_networks = true;
    let app = TestApp::spawn_with(config, db_name).await;
    let intruder = app.tenant("Intruder").await;
    // The intruder's portal session, with every capability.
    let portal: Value = app
        .post(
            &format!("/v1/customers/{}/portal-sessions", intruder.id),
            ADMIN,
            &json!({}),
        )
        .await
        .json()
        .await
        .unwrap();
    let portal = portal["token"].as_str().unwrap().to_string();
    let mut walked = Vec::new();

    for (template, operations) in spec["paths"].as_object().unwrap() {
        if !template.contains('{') {
            continue;
        }
        for method in operations.as_object().unwrap().keys() {
            let method: Method = method.to_uppercase().parse().unwrap();
            let fixture = fixture(&app).await;
            let path = concrete_path(template, &fixture);
            let body = valid_body(&method, template);
            settled(&app).await;
            let before = snapshot(&app).await;

            let response = call(&app, &method, &path, &intruder.token, &body).await;
            let intruder_status = response.status();
            let problem = response.text().await.unwrap();
            let through_portal = call(&app, &method, &path, &portal, &body).await;
            let portal_status = through_portal.status();
            let portal_problem = through_portal.text().await.unwrap();
            settled(&app).await;
            assert_eq!(
                snapshot(&app).await,
                before,
                "{method} {template}: the intruder's call changed the database"
            );
            for answer in [&problem, &portal_problem] {
                assert!(
                    !answer.contains(&fixture.owner.id),
                    "{method} {template}: the answer names the owner: {answer}"
                );
            }
            // A portal session: 403 outside the portal's routes, 404 on
            // another customer's webhooks.
            let portal_expected = match portal::access(method.as_str(), template) {
                portal::Access::Outside => StatusCode::FORBIDDEN,
                _ => StatusCode::NOT_FOUND,
            };
            assert_eq!(
                portal_status, portal_expected,
                "{method} {template} with a portal session: {portal_problem}"
            );

            let own = call(&app, &method, &path, &fixture.owner.token, &body).await;
            let own_status = own.status();
            assert_ne!(
                own_status,
                StatusCode::NOT_FOUND,
                "{method} {template}: the owner cannot reach its own resource, so the walk proves nothing"
            );
            if own_status == StatusCode::FORBIDDEN {
                // Operator-only: no customer may call it at all.
                assert_eq!(
                    intruder_status,
                    StatusCode::FORBIDDEN,
                    "{method} {template}"
                );
            } else {
                assert_eq!(
                    intruder_status,
                    StatusCode::NOT_FOUND,
                    "{method} {template}: another customer's resource must be 404; owner got {own_status}"
                );
            }
            walked.push(format!("{method} {template}"));
        }
    }
    // Every id-taking route the spec had when this was written, at least.
    assert!(walked.len() >= 16, "walked only {walked:?}");
    println!(
        "isolation walk covered {} routes: {walked:#?}",
        walked.len()
    );
}
