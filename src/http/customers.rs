//! `/v1/customers`: the operator's list of customers.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::extract::{parse_id, Invalid, Json, Params, PathText};
use super::idempotent;
use super::page::{Page, DEFAULT_LIMIT, MAX_LIMIT};
use super::preconditions::idempotency_key;
use crate::auth::Operator;
use crate::db;
use crate::domain::cursor::{self, CursorKind};
use crate::domain::text::Checks;
use crate::domain::time;
use crate::error::{ApiError, ApiResult, Problem};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/customers", get(list).post(create))
        .route("/v1/customers/{id}", get(show))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerIn {
    /// 1..200 characters.
    #[schema(example = "Empress Products")]
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerOut {
    pub id: Uuid,
    #[schema(example = "Empress Products")]
    pub name: String,
    #[serde(with = "time::millis")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
}

impl From<db::customers::CustomerRow> for CustomerOut {
    fn from(row: db::customers::CustomerRow) -> Self {
        CustomerOut {
            id: row.id,
            name: row.name,
            created_at: row.created_at,
        }
    }
}

/// Create a customer (operator). With `Idempotency-Key`, a retry returns the first response.
#[utoipa::path(post, path = "/v1/customers", operation_id = "createCustomer", tag = "customers",
    request_body = CustomerIn,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[ -~]+$",
        description = "1..255 printable ASCII characters; the same key and body within 24 h replays the first response")),
    responses(
        (status = 201, description = "Created", body = CustomerOut),
        (status = 403, description = "Not the operator", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn create(
    operator: Operator,
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<CustomerIn>,
) -> ApiResult<Response> {
    let key = idempotency_key(&headers)?;
    let mut checks = Checks::default();
    checks.line("name", &body.name, 200);
    checks.finish().map_err(ApiError::Validation)?;
    let mut tx = state.db.begin().await?;
    let request = idempotent::request_hash(&[b"create customer", body.name.as_bytes()]);
    let owner = operator.owner_id();
    if let Some(answer) = idempotent::claim(&mut tx, owner, key.as_deref(), request).await? {
        return Ok(answer);
    }
    let row = db::customers::CustomerRow {
        id: Uuid::now_v7(),
        name: body.name,
        created_at: time::now(),
    };
    db::customers::insert(&mut *tx, &row).await?;
    let out = CustomerOut::from(row);
    idempotent::complete(&mut tx, owner, key.as_deref(), StatusCode::CREATED, &out).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, axum::Json(out)).into_response())
}

/// List customers, newest first (operator).
#[utoipa::path(get, path = "/v1/customers", operation_id = "listCustomers", tag = "customers",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "1..100, default 20"),
        ("cursor" = Option<String>, Query, min_length = 1, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of customers", body = Page<CustomerOut>),
        (status = 403, description = "Not the operator", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad query parameter", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn list(
    _: Operator,
    State(state): State<AppState>,
    params: Params,
) -> ApiResult<axum::Json<Page<CustomerOut>>> {
    let mut invalid = Invalid::default();
    let limit = invalid.take(params.limit(DEFAULT_LIMIT, MAX_LIMIT));
    let before = invalid.take(params.cursor_id(CursorKind::Customers));
    invalid.finish()?;
    let rows = db::customers::list(&state.db, before, db::fetch_limit(limit)).await?;
    Ok(axum::Json(Page::from_rows(
        rows,
        limit,
        |row| cursor::encode_id(CursorKind::Customers, row.id),
        CustomerOut::from,
    )))
}

/// Get a customer (operator).
#[utoipa::path(get, path = "/v1/customers/{id}", operation_id = "getCustomer", tag = "customers",
    params(("id" = Uuid, Path, description = "Customer id")),
    responses(
        (status = 200, description = "The customer", body = CustomerOut),
        (status = 403, description = "Not the operator", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such customer", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn show(
    _: Operator,
    State(state): State<AppState>,
    PathText(id): PathText<String>,
) -> ApiResult<axum::Json<CustomerOut>> {
    let id = parse_id(&id, "customer")?;
    let row = db::customers::find(&state.db, id)
        .await?
        .ok_or(ApiError::NotFound("customer"))?;
    Ok(axum::Json(row.into()))
}
