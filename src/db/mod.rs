//! The database: connecting, creating and migrating it, and one module of
//! SQL per table. Query functions take any executor, so a caller can run
//! several of them in one transaction.

pub mod api_keys;
pub mod customers;
pub mod deliveries;
pub mod feed_clock;
pub mod idempotency;
pub mod ops_notifications;
pub mod order_events;
pub mod orders;
pub mod outbox_parked;
pub mod portal_sessions;
pub mod retention;
pub mod server_secrets;
pub mod webhook_attempts;
pub mod webhook_endpoints;

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::MigrateDatabase;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{MySql, MySqlPool, QueryBuilder};
use uuid::Uuid;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Opens a pool. Connections are made on demand, so the API starts (and
/// `/readyz` says 503) while the database is away, and recovers without a
/// restart when it is back.
pub fn pool(url: &str, max_connections: u32) -> Result<MySqlPool, sqlx::Error> {
    Ok(options(max_connections).connect_lazy_with(MySqlConnectOptions::from_str(url)?))
}

/// A pool whose sessions read committed data, set once when each connection
/// is made. The pipeline (sequencer, relay, worker) needs it: its reads must
/// see every committed event and its locks must not cover gaps. Vitess
/// applies `SET TRANSACTION ISOLATION LEVEL` to the whole session, so no
/// code sets it per transaction on a shared pool.
pub fn read_committed_pool(url: &str, max_connections: u32) -> Result<MySqlPool, sqlx::Error> {
    Ok(options(max_connections)
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::query("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    .execute(conn)
                    .await?;
                Ok(())
            })
        })
        .connect_lazy_with(MySqlConnectOptions::from_str(url)?))
}

fn options(max_connections: u32) -> MySqlPoolOptions {
    MySqlPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        .idle_timeout(Duration::from_secs(300))
        // Recycled well within PlanetScale's (and MySQL's `wait_timeout`) day.
        .max_lifetime(Duration::from_secs(30 * 60))
        // A ping before every use costs ~15 % of throughput; a connection
        // idle for a second or more is pinged, so one the server closed while
        // it sat (a restart, a failover, `wait_timeout`) is replaced unseen.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for < Duration::from_secs(1) {
                    return Ok(true);
                }
                Ok(sqlx::Connection::ping(conn).await.is_ok())
            })
        })
}

/// Creates the database named in the URL if missing, then applies migrations.
pub async fn migrate(url: &str, pool: &MySqlPool) -> Result<(), sqlx::Error> {
    if !MySql::database_exists(url).await? {
        tracing::info!("creating the database");
        MySql::create_database(url).await?;
    }
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// `LIMIT` for a page: one more than asked, to learn whether more follow.
pub fn fetch_limit(limit: u32) -> i64 {
    i64::from(limit) + 1
}

/// `values`, then the last of them again up to the next power of two.
/// Lists bound into a statement are padded so: `IN (…)` and `CASE id WHEN
/// …` mean the same with an entry repeated, and lists of similar length
/// then share one statement text, which sqlx's per-connection cache of
/// prepared statements (100) keeps, instead of preparing another (a round
/// trip and a parse) for every length.
pub fn padded<T>(values: &[T]) -> impl Iterator<Item = &T> + Clone {
    let extra = values.len().next_power_of_two() - values.len();
    values
        .iter()
        .chain(std::iter::repeat_n(values.last(), extra).flatten())
}

/// Binds `ids`, padded, as the list of an `IN (…)`.
pub(crate) fn push_ids(sql: &mut QueryBuilder<'_, MySql>, ids: &[Uuid]) {
    let mut list = sql.separated(", ");
    for id in padded(ids) {
        list.push_bind(*id);
    }
}

#[cfg(test)]
mod tests {
    use super::padded;

    #[test]
    fn lists_are_padded_with_their_last_entry_to_a_power_of_two() {
        for (values, expected) in [
            (vec![], vec![]),
            (vec![1], vec![1]),
            (vec![1, 2], vec![1, 2]),
            (vec![1, 2, 3], vec![1, 2, 3, 3]),
            (vec![1, 2, 3, 4, 5], vec![1, 2, 3, 4, 5, 5, 5, 5]),
            (
                (1..=9).collect(),
                [(1..=9).collect::<Vec<_>>(), vec![9; 7]].concat(),
            ),
        ] {
            let got: Vec<i32> = padded(&values).copied().collect();
            assert_eq!(got, expected, "{values:?}");
        }
    }
}
