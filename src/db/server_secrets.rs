//! SQL for `server_secrets`: keys shared by every instance, made once.

use sqlx::MySqlPool;

/// The named secret, made from `candidate` by whichever instance asks first.
pub async fn get_or_create(db: &MySqlPool, name: &str, candidate: &[u8]) -> sqlx::Result<Vec<u8>> {
    sqlx::query("INSERT IGNORE INTO server_secrets (name, value) VALUES (?, ?)")
        .bind(name)
        .bind(candidate)
        .execute(db)
        .await?;
    sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = ?")
        .bind(name)
        .fetch_one(db)
        .await
}
