//! SQL for `orders`. Addresses and parcels are kept as JSON text.

use chrono::{DateTime, Utc};
use sqlx::{MySql, MySqlExecutor, QueryBuilder};
use uuid::Uuid;

use crate::db::{padded, push_ids};
use crate::domain::{Order, OrderStatus};
use crate::error::is_duplicate_key;

/// `reference` compares byte for byte (`utf8mb4_bin`); sqlx reads a
/// binary-collated column as bytes, so it is converted back to text here.
const COLUMNS: &str = "id, customer_id, CONVERT(reference USING utf8mb4) AS reference, status, \
                       pickup, delivery, parcels, notes, eta, last_location, version, created_at, \
                       updated_at";

#[derive(sqlx::FromRow)]
struct OrderRow {
    id: Uuid,
    customer_id: Uuid,
    reference: Option<String>,
    status: String,
    pickup: String,
    delivery: String,
    parcels: String,
    notes: Option<String>,
    eta: Option<DateTime<Utc>>,
    last_location: Option<String>,
    version: u32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<OrderRow> for Order {
    type Error = sqlx::Error;

    fn try_from(row: OrderRow) -> Result<Order, sqlx::Error> {
        let decode = |e: serde_json::Error| sqlx::Error::Decode(Box::new(e));
        Ok(Order {
            id: row.id,
            customer_id: row.customer_id,
            reference: row.reference,
            status: OrderStatus::parse(&row.status).ok_or_else(|| {
                sqlx::Error::Decode(format!("unknown order status {:?}", row.status).into())
            })?,
            pickup: serde_json::from_str(&row.pickup).map_err(decode)?,
            delivery: serde_json::from_str(&row.delivery).map_err(decode)?,
            parcels: serde_json::from_str(&row.parcels).map_err(decode)?,
            notes: row.notes,
            eta: row.eta,
            last_location: row.last_location,
            version: row.version,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

pub enum InsertError {
    DuplicateReference,
    Db(sqlx::Error),
}

impl From<sqlx::Error> for InsertError {
    fn from(e: sqlx::Error) -> InsertError {
        if is_duplicate_key(&e) {
            InsertError::DuplicateReference
        } else {
            InsertError::Db(e)
        }
    }
}

/// Which of these (customer, reference) pairs an order already has.
pub async fn existing_references(
    db: impl MySqlExecutor<'_>,
    pairs: &[(Uuid, &str)],
) -> sqlx::Result<Vec<(Uuid, String)>> {
    if pairs.is_empty() {
        return Ok(vec![]);
    }
    let mut sql = QueryBuilder::new(
        "SELECT customer_id, CONVERT(reference USING utf8mb4) FROM orders WHERE customer_id IN (",
    );
    let mut customers = sql.separated(", ");
    for (customer, _) in padded(pairs) {
        customers.push_bind(*customer);
    }
    sql.push(") AND reference IN (");
    let mut references = sql.separated(", ");
    for (_, reference) in padded(pairs) {
        references.push_bind(*reference);
    }
    sql.push(")");
    let found: Vec<(Uuid, String)> = sql.build_query_as().fetch_all(db).await?;
    Ok(found
        .into_iter()
        .filter(|(c, r)| pairs.iter().any(|(pc, pr)| pc == c && pr == r))
        .collect())
}

pub async fn insert(db: impl MySqlExecutor<'_>, order: &Order) -> Result<(), InsertError> {
    insert_many(db, &[order]).await
}

/// Inserts several orders in one statement; all or none.
pub async fn insert_many(db: impl MySqlExecutor<'_>, orders: &[&Order]) -> Result<(), InsertError> {
    let mut sql = QueryBuilder::new(
        "INSERT INTO orders (id, customer_id, reference, status, pickup, delivery, parcels, notes,
                             eta, last_location, version, created_at, updated_at) ",
    );
    sql.push_values(orders, |mut row, order| {
        row.push_bind(order.id)
            .push_bind(order.customer_id)
            .push_bind(&order.reference)
            .push_bind(order.status.as_str())
            .push_bind(json(&order.pickup))
            .push_bind(json(&order.delivery))
            .push_bind(json(&order.parcels))
            .push_bind(&order.notes)
            .push_bind(order.eta)
            .push_bind(&order.last_location)
            .push_bind(order.version)
            .push_bind(order.created_at)
            .push_bind(order.updated_at);
    });
    sql.build().execute(db).await.map_err(InsertError::from)?;
    Ok(())
}

pub async fn find(db: impl MySqlExecutor<'_>, id: Uuid) -> sqlx::Result<Option<Order>> {
    let sql = format!("SELECT {COLUMNS} FROM orders WHERE id = ?");
    let row: Option<OrderRow> = sqlx::query_as(&sql).bind(id).fetch_optional(db).await?;
    row.map(Order::try_from).transpose()
}

/// Reads the order and locks it until the transaction ends.
pub async fn find_for_update(db: impl MySqlExecutor<'_>, id: Uuid) -> sqlx::Result<Option<Order>> {
    let sql = format!("SELECT {COLUMNS} FROM orders WHERE id = ? FOR UPDATE");
    let row: Option<OrderRow> = sqlx::query_as(&sql).bind(id).fetch_optional(db).await?;
    row.map(Order::try_from).transpose()
}

/// Reads and locks, until the transaction ends, those of the orders no
/// other transaction holds, without waiting for the others (`SKIP LOCKED`):
/// a group of changes is not held up by one order someone else is
/// changing. Missing ids (held, or not there) are missing from the answer.
/// Pass the ids sorted, so that two groups lock shared orders in the same
/// order.
pub async fn lock_free_ones(db: impl MySqlExecutor<'_>, ids: &[Uuid]) -> sqlx::Result<Vec<Order>> {
    let mut sql = QueryBuilder::new(format!(
        "SELECT {COLUMNS} FROM orders FORCE INDEX (PRIMARY) WHERE id IN ("
    ));
    push_ids(&mut sql, ids);
    sql.push(") ORDER BY id FOR UPDATE SKIP LOCKED");
    let rows: Vec<OrderRow> = sql.build_query_as().fetch_all(db).await?;
    rows.into_iter().map(Order::try_from).collect()
}

/// Which of these orders exist (a plain read: it waits for no lock).
pub async fn existing(db: impl MySqlExecutor<'_>, ids: &[Uuid]) -> sqlx::Result<Vec<Uuid>> {
    let mut sql = QueryBuilder::new("SELECT id FROM orders WHERE id IN (");
    push_ids(&mut sql, ids);
    sql.push(")");
    sql.build_query_scalar().fetch_all(db).await
}

/// Writes what changes can change (status, version, update time, eta,
/// last location; with `amended`, also delivery, parcels and notes) of
/// several orders in one statement.
pub async fn update_many(
    db: impl MySqlExecutor<'_>,
    orders: &[&Order],
    amended: bool,
) -> sqlx::Result<()> {
    // By the primary key, always: a scan (the planner's choice on a small
    // table) would lock every row it passes, and wait for orders that other
    // transactions hold.
    let mut sql = QueryBuilder::new("UPDATE orders FORCE INDEX (PRIMARY) SET ");
    set_case(&mut sql, orders, "status", |o| o.status.as_str());
    set_case(&mut sql, orders, ", version", |o| o.version);
    set_case(&mut sql, orders, ", updated_at", |o| o.updated_at);
    set_case(&mut sql, orders, ", eta", |o| o.eta);
    set_case(&mut sql, orders, ", last_location", |o| {
        o.last_location.clone()
    });
    if amended {
        set_case(&mut sql, orders, ", delivery", |o| json(&o.delivery));
        set_case(&mut sql, orders, ", parcels", |o| json(&o.parcels));
        set_case(&mut sql, orders, ", notes", |o| o.notes.clone());
    }
    sql.push(" WHERE id IN (");
    let mut list = sql.separated(", ");
    for order in padded(orders) {
        list.push_bind(order.id);
    }
    sql.push(")");
    sql.build().execute(db).await?;
    Ok(())
}

/// `column = CASE id WHEN … THEN … END`, each order's value by its id.
fn set_case<'a, T>(
    sql: &mut QueryBuilder<'a, MySql>,
    orders: &[&Order],
    column: &str,
    value: impl Fn(&Order) -> T,
) where
    T: 'a + sqlx::Encode<'a, MySql> + sqlx::Type<MySql>,
{
    sql.push(column).push(" = CASE id");
    for order in padded(orders) {
        sql.push(" WHEN ").push_bind(order.id);
        sql.push(" THEN ").push_bind(value(order));
    }
    sql.push(" END");
}

pub struct ListFilter {
    /// `None` only for the operator listing every customer's orders.
    pub customer_id: Option<Uuid>,
    pub status: Option<OrderStatus>,
    pub before: Option<Uuid>,
    pub limit: i64,
}

/// Newest first (ids are UUIDv7), served by the `orders_customer*` and
/// `orders_status` keys or the primary key.
pub async fn list(db: impl MySqlExecutor<'_>, filter: &ListFilter) -> sqlx::Result<Vec<Order>> {
    let mut sql = QueryBuilder::new(format!("SELECT {COLUMNS} FROM orders WHERE 1=1"));
    if let Some(customer_id) = filter.customer_id {
        sql.push(" AND customer_id = ").push_bind(customer_id);
    }
    if let Some(status) = filter.status {
        sql.push(" AND status = ").push_bind(status.as_str());
    }
    if let Some(before) = filter.before {
        sql.push(" AND id < ").push_bind(before);
    }
    sql.push(" ORDER BY id DESC LIMIT ").push_bind(filter.limit);
    let rows: Vec<OrderRow> = sql.build_query_as().fetch_all(db).await?;
    rows.into_iter().map(Order::try_from).collect()
}

/// The JSON columns; these types always serialize.
fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}
