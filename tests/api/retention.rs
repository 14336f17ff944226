//! Retention (SPEC §9): settled deliveries older than `RETENTION_DAYS` go
//! with their attempts, idempotency keys after 24 h; nothing else, and never
//! the order history.

use chrono::Duration;
use mechanica::db::deliveries::{self, DeliveryRow, NewDelivery};
use mechanica::db::retention;
use mechanica::db::webhook_attempts::{self, AttemptRow};
use uuid::Uuid;

use crate::helpers::*;

async fn delivery(app: &TestApp, status: &str, age: Duration) -> Uuid {
    let now = mechanica::domain::time::now();
    let row = DeliveryRow::pending(
        NewDelivery {
            endpoint_id: Uuid::now_v7(),
            customer_id: Uuid::now_v7(),
            event_id: Uuid::now_v7(),
            event_type: "order.created",
            order_id: Some(Uuid::now_v7()),
            sequence: Some(1),
            payload: "{}",
            event_created_at: now - age,
        },
        now - age,
        true,
    );
    deliveries::insert_ignore(&app.db, &row).await.unwrap();
    sqlx::query("UPDATE webhook_deliveries SET status = ?, updated_at = ? WHERE id = ?")
        .bind(status)
        .bind(now - age)
        .bind(row.id)
        .execute(&app.db)
        .await
        .unwrap();
    let attempt = AttemptRow {
        id: Uuid::now_v7(),
        delivery_id: row.id,
        attempt: 1,
        started_at: now - age,
        duration_ms: 3,
        response_status: Some(200),
        response_body: Some(String::new()),
        error: None,
    };
    webhook_attempts::insert_many(&app.db, &[attempt])
        .await
        .unwrap();
    row.id
}

async fn exists(app: &TestApp, table: &str, column: &str, id: Uuid) -> bool {
    let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table} WHERE {column} = ?"))
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    n > 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_purge_deletes_what_is_old_and_nothing_else() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("Kept").await;
    let order = app.new_order(&tenant).await;
    let old_succeeded = delivery(&app, "succeeded", Duration::days(40)).await;
    let old_failed = delivery(&app, "failed", Duration::days(31)).await;
    let recent = delivery(&app, "succeeded", Duration::days(29)).await;
    let old_pending = delivery(&app, "pending", Duration::days(40)).await;
    let now = mechanica::domain::time::now();
    for (key, age) in [
        ("old-key", Duration::hours(25)),
        ("new-key", Duration::hours(1)),
    ] {
        sqlx::query(
            "INSERT INTO idempotency_keys (owner_id, idempotency_key, request_hash, response_status, response_body, created_at)
             VALUES (?, ?, ?, 201, '{}', ?)",
        )
        .bind(Uuid::nil())
        .bind(key)
        .bind(&[0u8; 32][..])
        .bind(now - age)
        .execute(&app.db)
        .await
        .unwrap();
    }

    for (id, expires) in [
        (Uuid::now_v7(), now - Duration::minutes(1)),
        (Uuid::now_v7(), now + Duration::minutes(5)),
    ] {
        sqlx::query(
            "INSERT INTO portal_sessions (id, customer_id, token_hash, capabilities, expires_at, created_at)
             VALUES (?, ?, ?, 15, ?, ?)",
        )
        .bind(id)
        .bind(Uuid::nil())
        .bind(&id.as_bytes().repeat(2)[..])
        .bind(expires)
        .bind(now - Duration::hours(1))
        .execute(&app.db)
        .await
        .unwrap();
    }

    let purged = retention::purge(&app.db, now, Duration::days(30))
        .await
        .unwrap();

    assert_eq!(
        purged,
        retention::Purged {
            deliveries: 2,
            attempts: 2,
            idempotency_keys: 1,
            portal_sessions: 1,
        }
    );
    let live: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM portal_sessions WHERE expires_at > ?")
        .bind(now)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(live, 1, "a live session is kept");
    for gone in [old_succeeded, old_failed] {
        assert!(!exists(&app, "webhook_deliveries", "id", gone).await);
        assert!(!exists(&app, "webhook_attempts", "delivery_id", gone).await);
    }
    for kept in [recent, old_pending] {
        assert!(exists(&app, "webhook_deliveries", "id", kept).await);
        assert!(exists(&app, "webhook_attempts", "delivery_id", kept).await);
    }
    let keys: Vec<String> =
        sqlx::query_scalar("SELECT CONVERT(idempotency_key USING utf8mb4) FROM idempotency_keys")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(keys, ["new-key"]);
    let history = app
        .get(
            &format!("/v1/orders/{}/events", order["id"].as_str().unwrap()),
            &tenant.token,
        )
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(
        history["data"].as_array().unwrap().len(),
        1,
        "the history is kept"
    );
}
