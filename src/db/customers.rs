//! SQL for `customers`.

use chrono::{DateTime, Utc};
use sqlx::{MySqlExecutor, QueryBuilder};
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CustomerRow {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

pub async fn insert(db: impl MySqlExecutor<'_>, row: &CustomerRow) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO customers (id, name, created_at) VALUES (?, ?, ?)")
        .bind(row.id)
        .bind(&row.name)
        .bind(row.created_at)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn find(db: impl MySqlExecutor<'_>, id: Uuid) -> sqlx::Result<Option<CustomerRow>> {
    sqlx::query_as("SELECT id, name, created_at FROM customers WHERE id = ?")
        .bind(id)
        .fetch_optional(db)
        .await
}

/// Reads the customer and locks it until the transaction ends.
pub async fn find_for_update(
    db: impl MySqlExecutor<'_>,
    id: Uuid,
) -> sqlx::Result<Option<CustomerRow>> {
    sqlx::query_as("SELECT id, name, created_at FROM customers WHERE id = ? FOR UPDATE")
        .bind(id)
        .fetch_optional(db)
        .await
}

/// Newest first, after the cursor's id.
pub async fn list(
    db: impl MySqlExecutor<'_>,
    before: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<CustomerRow>> {
    let mut sql = QueryBuilder::new("SELECT id, name, created_at FROM customers WHERE 1=1");
    if let Some(before) = before {
        sql.push(" AND id < ").push_bind(before);
    }
    sql.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
    sql.build_query_as().fetch_all(db).await
}
