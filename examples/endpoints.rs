//! Endpoint lookup benchmark: the delivery worker's query (a customer's
//! enabled endpoints subscribed to an event type) for customers with 20
//! endpoints among 100,000 endpoints of 5,000 customers, on the local
//! MariaDB. Settings: DATABASE_SERVER, LOOKUPS (default 10000).

use std::time::{Duration, Instant};

use mechanica::db;
use uuid::Uuid;

#[tokio::main]
async fn main() {
    let server =
        std::env::var("DATABASE_SERVER").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
    let lookups: usize = std::env::var("LOOKUPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let url = format!("{server}/mechanica_bench_endpoints");
    let pool = db::pool(&url, 4).unwrap();
    {
        use sqlx::Connection;
        let mut conn = sqlx::MySqlConnection::connect(&server).await.unwrap();
        sqlx::query("DROP DATABASE IF EXISTS mechanica_bench_endpoints")
            .execute(&mut conn)
            .await
            .unwrap();
    }
    db::migrate(&url, &pool).await.unwrap();
    // Customer n has id UNHEX(MD5(n)); 20 endpoints each, every fifth disabled.
    sqlx::query(
        "INSERT INTO webhook_endpoints (id, customer_id, url, description, event_mask, enabled,
             disabled_reason, secret, previous_secret, previous_secret_expires_at, created_at, updated_at)
         SELECT UNHEX(REPLACE(UUID(), '-', '')), UNHEX(MD5(seq MOD 5000)), 'https://93.184.215.14/hook', NULL,
                IF(seq MOD 3 = 0, 1, 4294967295), seq MOD 5 <> 0, NULL, 'whsec_x', NULL, NULL, NOW(3), NOW(3)
         FROM seq_0_to_99999",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE TABLE webhook_endpoints")
        .execute(&pool)
        .await
        .unwrap();
    let customers: Vec<Uuid> =
        sqlx::query_scalar("SELECT DISTINCT customer_id FROM webhook_endpoints")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(customers.len(), 5000);

    let mut latencies = Vec::with_capacity(lookups);
    let mut found = 0;
    for i in 0..lookups {
        let customer = customers[(i * 7919) % customers.len()];
        let started = Instant::now();
        found += db::webhook_endpoints::enabled_for(&pool, &[customer])
            .await
            .unwrap()
            .iter()
            .filter(|e| e.event_mask & 2 != 0)
            .count();
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let at = |p: f64| -> Duration {
        latencies[((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    println!(
        "endpoint lookup (100,000 endpoints, 5,000 customers): {lookups} lookups, {:.1} endpoints each; p50 {:.3} ms  p99 {:.3} ms",
        found as f64 / lookups as f64,
        at(0.5).as_secs_f64() * 1000.0,
        at(0.99).as_secs_f64() * 1000.0
    );
    {
        use sqlx::Connection;
        let mut conn = sqlx::MySqlConnection::connect(&server).await.unwrap();
        sqlx::query("DROP DATABASE mechanica_bench_endpoints")
            .execute(&mut conn)
            .await
            .unwrap();
    }
}
