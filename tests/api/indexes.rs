//! Every query on a hot path is served by an index: `EXPLAIN` must name a
//! key and must not show a full table scan.

use sqlx::Row;

use crate::helpers::*;

/// `keys`: the indexes that serve the query. On a table this small the
/// optimizer may pick any of them; at scale the first is the one it takes.
async fn assert_indexed(app: &TestApp, sql: &str, keys: &[&str]) {
    let rows = sqlx::query(&format!("EXPLAIN {sql}"))
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert!(!rows.is_empty());
    for row in rows {
        let access: Option<String> = row.try_get("type").unwrap();
        let key: Option<String> = row.try_get("key").unwrap();
        // ALL is a full table scan, `index` a full index scan: neither may serve a hot path.
        assert!(
            !matches!(access.as_deref(), Some("ALL" | "index")),
            "{access:?} scan: {sql}"
        );
        let key = key.unwrap_or_else(|| panic!("no index used: {sql}"));
        assert!(keys.contains(&key.as_str()), "{key} used for: {sql}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_queries_use_their_indexes() {
    let app = TestApp::spawn().await;
    // Enough rows of enough customers that the optimizer plans as it would
    // in production; a handful of rows makes any plan look cheap.
    let tenant = app.tenant("Indexed").await;
    for _ in 0..5 {
        app.new_order(&tenant).await;
    }
    sqlx::query(
        "INSERT INTO orders (id, customer_id, reference, status, pickup, delivery, parcels, notes,
                             version, created_at, updated_at)
         SELECT UNHEX(REPLACE(UUID(), '-', '')), UNHEX(MD5(seq MOD 50)), NULL,
                ELT(1 + seq MOD 4, 'pending', 'confirmed', 'delivered', 'cancelled'),
                '{}', '{}', '[]', NULL, 1, NOW(3), NOW(3)
         FROM seq_1_to_5000",
    )
    .execute(&app.db)
    .await
    .unwrap();
    sqlx::query("ANALYZE TABLE orders")
        .execute(&app.db)
        .await
        .unwrap();
    let order = app.new_order(&tenant).await;
    let keyed = app
        .client
        .post(app.url("/v1/orders"))
        .bearer_auth(&tenant.token)
        .header("idempotency-key", "k")
        .json(&order_body())
        .send()
        .await
        .unwrap();
    assert_eq!(keyed.status(), reqwest::StatusCode::CREATED);
    let hex = |s: &str| format!("X'{}'", s.replace('-', ""));
    // Real values: a lookup of a missing constant is "impossible WHERE", no plan at all.
    let id = hex(order["id"].as_str().unwrap());
    let customer = hex(&tenant.id);
    let hash: (Vec<u8>,) = sqlx::query_as("SELECT token_hash FROM api_keys LIMIT 1")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let hash = format!(
        "X'{}'",
        hash.0
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let cases = [
        (format!("SELECT customer_id FROM api_keys WHERE token_hash = {hash}"), &["api_keys_token_hash"][..]),
        (format!("SELECT * FROM orders WHERE id = {id}"), &["PRIMARY"]),
        (
            format!("SELECT * FROM orders WHERE customer_id = {customer} AND id < {id} ORDER BY id DESC LIMIT 21"),
            &["orders_customer", "orders_customer_status", "PRIMARY"],
        ),
        (
            format!("SELECT * FROM orders WHERE customer_id = {customer} AND status = 'pending' ORDER BY id DESC LIMIT 21"),
            &["orders_customer_status", "orders_customer"],
        ),
        (
            format!("SELECT sequence, payload FROM order_events WHERE order_id = {id} ORDER BY sequence LIMIT 21"),
            &["order_events_order_sequence"],
        ),
        (
            format!("SELECT id FROM api_keys WHERE customer_id = {customer} ORDER BY id DESC LIMIT 21"),
            &["api_keys_customer"],
        ),
        (
            format!("SELECT * FROM idempotency_keys WHERE owner_id = {customer} AND idempotency_key = 'k'"),
            &["PRIMARY"],
        ),
    ];
    for (sql, key) in cases {
        assert_indexed(&app, &sql, key).await;
    }
}
