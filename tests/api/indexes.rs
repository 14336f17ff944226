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

/// Handler reads of index entries on this connection so far.
async fn index_reads(conn: &mut sqlx::MySqlConnection) -> u64 {
    let (_, value): (String, String) =
        sqlx::query_as("SHOW SESSION STATUS LIKE 'Handler_read_next'")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    value.parse().unwrap()
}

/// A sequencer pass takes the events that have no feed position yet. With
/// statistics taken during a backlog (most events unnumbered, as after an
/// outage) the optimizer used to walk the primary key from the first event
/// on every pass, reading the whole table to find the few new ones (seen in
/// the benchmark: every pass read every event). It reads only those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequencer_pass_reads_only_unnumbered_events() {
    let app = TestApp::spawn().await;
    for sql in [
        // Statistics stay as they were taken (no background recount).
        "ALTER TABLE order_events STATS_AUTO_RECALC = 0",
        "INSERT INTO order_events (id, order_id, customer_id, sequence, event_type, payload, created_at)
         SELECT UNHEX(REPLACE(UUID(), '-', '')), UNHEX(REPLACE(UUID(), '-', '')),
                UNHEX(MD5(seq MOD 50)), 1, 'order.created', REPEAT('x', 1000), NOW(3)
         FROM seq_1_to_3000",
        "ANALYZE TABLE order_events",
    ] {
        sqlx::query(sql).execute(&app.db).await.unwrap();
    }
    // The backlog is numbered, all but the five newest events.
    let last: u64 = sqlx::query_scalar("SELECT MAX(position) FROM order_events")
        .fetch_one(&app.db)
        .await
        .unwrap();
    sqlx::query("UPDATE order_events SET feed_position = position WHERE position <= ?")
        .bind(last - 5)
        .execute(&app.db)
        .await
        .unwrap();

    let mut conn = app.db.acquire().await.unwrap();
    let before = index_reads(&mut conn).await;
    let events = mechanica::db::order_events::unsequenced(&mut *conn, 1000)
        .await
        .unwrap();
    let read = index_reads(&mut conn).await - before;
    assert_eq!(events.len(), 5);
    assert!(read <= 10, "{read} index entries read to find 5 events");
}
