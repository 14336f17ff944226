//! The committed OpenAPI document is current, served, and the docs page
//! works offline.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

#[test]
fn the_committed_document_is_current() {
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json"))
            .unwrap_or_default();
    let generated = mechanica::http::openapi::render();
    assert!(
        committed == generated,
        "openapi/openapi.json is stale: run `cargo run -q -- openapi > openapi/openapi.json`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_served_and_documents_every_route() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let doc: Value = response.json().await.unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/customers", "post"),
        ("/v1/customers", "get"),
        ("/v1/customers/{id}", "get"),
        ("/v1/customers/{id}/api-keys", "post"),
        ("/v1/customers/{id}/api-keys", "get"),
        ("/v1/customers/{id}/api-keys/{key_id}", "delete"),
        ("/v1/orders", "post"),
        ("/v1/orders", "get"),
        ("/v1/orders/{id}", "get"),
        ("/v1/orders/{id}/status", "post"),
        ("/v1/orders/{id}/events", "get"),
        ("/v1/events", "get"),
        ("/v1/webhooks", "post"),
        ("/v1/webhooks", "get"),
        ("/v1/webhooks/{id}", "get"),
        ("/v1/webhooks/{id}", "patch"),
        ("/v1/webhooks/{id}", "delete"),
        ("/v1/webhooks/{id}/secret", "get"),
        ("/v1/webhooks/{id}/secret/rotate", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
    ] {
        assert!(
            paths[path][method].is_object(),
            "{method} {path} is undocumented"
        );
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_page_is_served_from_the_binary() {
    let app = TestApp::spawn().await;
    let page = app.client.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"));
    assert!(
        !html.contains("https://"),
        "the page must not load assets from the internet"
    );
    for asset in [
        "/docs/swagger-ui.css",
        "/docs/swagger-ui-bundle.js",
        "/docs/swagger-initializer.js",
    ] {
        let response = app.client.get(app.url(asset)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
        let body = response.text().await.unwrap();
        assert!(body.len() > 50, "{asset} is empty");
    }
}

/// Client generators name a method after each `operationId`: every one must
/// be there, unique, and read as a method name (`listOrders`).
#[test]
fn every_operation_id_is_unique_and_reads_as_a_method_name() {
    let doc: Value =
        serde_json::from_str(include_str!("../../openapi/openapi.json")).expect("openapi.json");
    let mut seen = std::collections::HashSet::new();
    for (path, operations) in doc["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            let id = operation["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path} has no operationId"));
            assert!(
                id.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                    && id.chars().all(|c| c.is_ascii_alphanumeric()),
                "{method} {path}: `{id}` is not camelCase"
            );
            assert!(
                seen.insert(id.to_string()),
                "{method} {path}: `{id}` repeats"
            );
        }
    }
}

/// SPEC §10: `Idempotency-Key` on every POST, and documented on each.
#[test]
fn every_post_documents_idempotency_key() {
    let doc: Value =
        serde_json::from_str(include_str!("../../openapi/openapi.json")).expect("openapi.json");
    let mut posts = 0;
    for (path, operations) in doc["paths"].as_object().unwrap() {
        let Some(post) = operations.get("post") else {
            continue;
        };
        posts += 1;
        let documented = post["parameters"].as_array().is_some_and(|params| {
            params
                .iter()
                .any(|p| p["in"] == "header" && p["name"] == "Idempotency-Key")
        });
        assert!(documented, "POST {path} does not document Idempotency-Key");
    }
    assert!(posts >= 11, "only {posts} POST routes");
}
