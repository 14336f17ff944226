//! Every error is RFC 9457 problem+json with the right status, including
//! axum's own rejections, and no input produces a 500.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

async fn raw_post(
    app: &TestApp,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut request = app.client.post(app.url(path)).bearer_auth(ADMIN).body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_are_not_json_of_the_right_shape() {
    let app = TestApp::spawn().await;
    let json_type = Some("application/json");

    let malformed = raw_post(&app, "/v1/customers", json_type, b"{\"name\": ".to_vec()).await;
    assert_problem(malformed, StatusCode::BAD_REQUEST).await;

    let invalid_utf8 = raw_post(
        &app,
        "/v1/customers",
        json_type,
        b"{\"name\": \"\xff\xfe\"}".to_vec(),
    )
    .await;
    assert_problem(invalid_utf8, StatusCode::BAD_REQUEST).await;

    let deep = raw_post(
        &app,
        "/v1/orders",
        json_type,
        "[".repeat(100_000).into_bytes(),
    )
    .await;
    assert_problem(deep, StatusCode::BAD_REQUEST).await;

    let huge_number = raw_post(
        &app,
        "/v1/customers",
        json_type,
        br#"{"name": 1e999999}"#.to_vec(),
    )
    .await;
    // Refused as malformed (400) or invalid (422), never a 500.
    let status = huge_number.status();
    assert!(matches!(
        status,
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY
    ));
    assert_problem(huge_number, status).await;

    let mut order = order_body();
    order["parcels"][0]["weight_grams"] = json!(1e300);
    let float_weight = app.create_order(ADMIN, &order).await;
    assert_problem(float_weight, StatusCode::UNPROCESSABLE_ENTITY).await;

    let wrong_type = raw_post(
        &app,
        "/v1/customers",
        Some("text/plain"),
        b"{\"name\":\"x\"}".to_vec(),
    )
    .await;
    assert_problem(wrong_type, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    let no_type = raw_post(&app, "/v1/customers", None, b"{\"name\":\"x\"}".to_vec()).await;
    assert_problem(no_type, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    let with_charset = raw_post(
        &app,
        "/v1/customers",
        Some("application/json; charset=utf-8"),
        b"{\"name\":\"x\"}".to_vec(),
    )
    .await;
    assert_eq!(with_charset.status(), StatusCode::CREATED);

    let mut big = order_body();
    big["notes"] = json!("x".repeat(300 * 1024));
    let too_large = app.create_order(ADMIN, &big).await;
    assert_problem(too_large, StatusCode::PAYLOAD_TOO_LARGE).await;

    let unknown = app
        .post("/v1/customers", ADMIN, &json!({ "name": "x", "vip": true }))
        .await;
    let problem = assert_problem(unknown, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(fields(&problem), ["vip"]);

    let mut nested_unknown = order_body();
    nested_unknown["pickup"]["floor"] = json!(3);
    let problem = assert_problem(
        app.create_order(ADMIN, &nested_unknown).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(fields(&problem), ["pickup.floor"]);

    let mut missing = order_body();
    missing.as_object_mut().unwrap().remove("delivery");
    let problem = assert_problem(
        app.create_order(ADMIN, &missing).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(fields(&problem), ["delivery"]);

    // Only the valid request above created anything.
    let customers: Value = app.get("/v1/customers", ADMIN).await.json().await.unwrap();
    assert_eq!(customers["data"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_required_and_checked() {
    let app = TestApp::spawn().await;
    let anonymous = app.client.get(app.url("/v1/orders")).send().await.unwrap();
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    assert_problem(anonymous, StatusCode::UNAUTHORIZED).await;
    for token in [
        "nope",
        "mk_forged-token-that-was-never-issued",
        "test-admin-token-012345678",
    ] {
        let response = app.get("/v1/orders", token).await;
        assert_problem(response, StatusCode::UNAUTHORIZED).await;
    }
    let basic = app
        .client
        .get(app.url("/v1/orders"))
        .header("authorization", format!("Basic {ADMIN}"))
        .send()
        .await
        .unwrap();
    assert_problem(basic, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_methods_and_ids() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Lost").await;
    let p = assert_problem;

    p(app.get("/v1/nowhere", ADMIN).await, StatusCode::NOT_FOUND).await;
    p(app.get("/", ADMIN).await, StatusCode::NOT_FOUND).await;
    let put = app
        .client
        .put(app.url("/v1/orders"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    p(put, StatusCode::METHOD_NOT_ALLOWED).await;
    let delete = app.delete("/v1/customers", ADMIN).await;
    p(delete, StatusCode::METHOD_NOT_ALLOWED).await;

    for id in [
        "not-a-uuid",
        "123",
        "%FF%FE",
        "00000000-0000-0000-0000-00000000000g",
    ] {
        p(
            app.get(&format!("/v1/orders/{id}"), &tenant.token).await,
            StatusCode::NOT_FOUND,
        )
        .await;
        p(
            app.get(&format!("/v1/orders/{id}/events"), &tenant.token)
                .await,
            StatusCode::NOT_FOUND,
        )
        .await;
        p(
            app.get(&format!("/v1/customers/{id}"), ADMIN).await,
            StatusCode::NOT_FOUND,
        )
        .await;
        let status = app.change_status(ADMIN, id, "confirmed").await;
        assert!(matches!(
            status.status(),
            StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST
        ));
        p(status, StatusCode::NOT_FOUND).await;
    }
    let missing = uuid::Uuid::now_v7();
    p(
        app.get(&format!("/v1/orders/{missing}"), &tenant.token)
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_query_parameters_are_named() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Querier").await;
    let cases = [
        ("/v1/orders?limit=ten", vec!["limit"]),
        ("/v1/orders?limit=0", vec!["limit"]),
        ("/v1/orders?limit=101", vec!["limit"]),
        ("/v1/orders?limit=-1", vec!["limit"]),
        ("/v1/orders?limit=99999999999999999999", vec!["limit"]),
        ("/v1/orders?cursor=garbage", vec!["cursor"]),
        ("/v1/orders?cursor=", vec!["cursor"]),
        ("/v1/orders?status=lost", vec!["status"]),
        (
            "/v1/orders?limit=x&cursor=y&status=z",
            vec!["limit", "cursor", "status"],
        ),
    ];
    for (path, expected) in cases {
        let problem = assert_problem(
            app.get(path, &tenant.token).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(fields(&problem), expected, "{path}");
    }
    // A cursor from another list is refused, not reinterpreted.
    let order = app.new_order(&tenant).await;
    app.new_order(&tenant).await;
    let page: Value = app
        .get("/v1/orders?limit=1", &tenant.token)
        .await
        .json()
        .await
        .unwrap();
    let orders_cursor = page["next_cursor"].as_str().unwrap();
    let events = app
        .get(
            &format!(
                "/v1/orders/{}/events?cursor={orders_cursor}",
                order["id"].as_str().unwrap()
            ),
            &tenant.token,
        )
        .await;
    let problem = assert_problem(events, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(fields(&problem), ["cursor"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_a_request_id() {
    let app = TestApp::spawn().await;
    let ok = app.client.get(app.url("/healthz")).send().await.unwrap();
    let id = ok.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 36);
    let not_found = app.client.get(app.url("/nope")).send().await.unwrap();
    assert!(not_found.headers().contains_key("x-request-id"));
    let chosen = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(chosen.headers()["x-request-id"], "trace-me-42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrays_are_not_read_as_objects() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Shapes").await;
    let cases = [
        (
            "pickup",
            json!(["A", "1 Road", null, "Rotterdam", "3011", "NL"]),
        ),
        ("parcels[0]", json!([[100, 10, 10, 10]])),
    ];
    for (field, value) in cases {
        let mut body = order_body();
        let key = field.split('[').next().unwrap();
        body[key] = value;
        let problem = assert_problem(
            app.create_order(&tenant.token, &body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(fields(&problem), vec![field.to_string()]);
    }
    let whole = app
        .post("/v1/orders", &tenant.token, &json!([order_body()]))
        .await;
    assert_problem(whole, StatusCode::UNPROCESSABLE_ENTITY).await;
    let listed: Value = app
        .get("/v1/orders", &tenant.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"], json!([]));
}
