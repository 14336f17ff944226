//! SQL for `api_keys`. Only the SHA-256 of a token is stored.

use chrono::{DateTime, Utc};
use sqlx::{MySqlExecutor, QueryBuilder};
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyRow {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
}

pub async fn insert(
    db: impl MySqlExecutor<'_>,
    row: &ApiKeyRow,
    token_hash: &[u8; 32],
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO api_keys (id, customer_id, prefix, token_hash, created_at)
         VALUES (?, ?, ?, ?, ?)",
    )
    .bind(row.id)
    .bind(row.customer_id)
    .bind(&row.prefix)
    .bind(&token_hash[..])
    .bind(row.created_at)
    .execute(db)
    .await?;
    Ok(())
}

/// The customer a token belongs to, by the token's hash.
pub async fn customer_for_hash(
    db: impl MySqlExecutor<'_>,
    token_hash: &[u8; 32],
) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar("SELECT customer_id FROM api_keys WHERE token_hash = ?")
        .bind(&token_hash[..])
        .fetch_optional(db)
        .await
}

/// The customers several tokens belong to, by the tokens' hashes; unknown
/// hashes are missing from the answer.
pub async fn customers_for_hashes(
    db: impl MySqlExecutor<'_>,
    token_hashes: &[[u8; 32]],
) -> sqlx::Result<Vec<(Vec<u8>, Uuid)>> {
    let mut sql =
        QueryBuilder::new("SELECT token_hash, customer_id FROM api_keys WHERE token_hash IN (");
    let mut list = sql.separated(", ");
    for hash in token_hashes {
        list.push_bind(&hash[..]);
    }
    sql.push(")");
    sql.build_query_as().fetch_all(db).await
}

/// A customer's keys, newest first, after the cursor's id.
pub async fn list(
    db: impl MySqlExecutor<'_>,
    customer_id: Uuid,
    before: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<ApiKeyRow>> {
    let mut sql = QueryBuilder::new(
        "SELECT id, customer_id, prefix, created_at FROM api_keys WHERE customer_id = ",
    );
    sql.push_bind(customer_id);
    if let Some(before) = before {
        sql.push(" AND id < ").push_bind(before);
    }
    sql.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
    sql.build_query_as().fetch_all(db).await
}

/// Deletes a key; false if the customer has no such key.
pub async fn delete(db: impl MySqlExecutor<'_>, customer_id: Uuid, id: Uuid) -> sqlx::Result<bool> {
    let result = sqlx::query("DELETE FROM api_keys WHERE id = ? AND customer_id = ?")
        .bind(id)
        .bind(customer_id)
        .execute(db)
        .await?;
    Ok(result.rows_affected() == 1)
}
