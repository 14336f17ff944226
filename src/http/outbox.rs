//! `/v1/admin/outbox/parked` (operator): events SQS refused for good, and
//! the later events of their orders held behind them; a retry publishes
//! them again, in order.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::extract::{parse_id, Invalid, Params, PathText};
use super::idempotent;
use super::page::{Page, DEFAULT_LIMIT, MAX_LIMIT};
use super::preconditions::idempotency_key;
use crate::auth::Operator;
use crate::db;
use crate::db::outbox_parked::ParkedRow;
use crate::domain::cursor::{self, CursorKind};
use crate::domain::time;
use crate::error::{ApiError, ApiResult, Problem};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/outbox/parked", get(list))
        .route("/v1/admin/outbox/parked/{event_id}/retry", post(retry))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ParkedOut {
    pub event_id: Uuid,
    pub order_id: Uuid,
    /// The event's place in the feed.
    pub feed_position: u64,
    /// Why SQS refused it, or which parked event it waits behind.
    pub reason: String,
    #[serde(with = "time::millis")]
    #[schema(value_type = String, format = DateTime)]
    pub parked_at: DateTime<Utc>,
    /// Set while a retry is asked for and not yet made.
    #[serde(with = "time::millis_option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub retry_requested_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RetryAccepted {
    pub event_id: Uuid,
}

impl From<ParkedRow> for ParkedOut {
    fn from(row: ParkedRow) -> Self {
        ParkedOut {
            event_id: row.event_id,
            order_id: row.order_id,
            feed_position: row.feed_position,
            reason: row.reason,
            parked_at: row.parked_at,
            retry_requested_at: row.retry_requested_at,
        }
    }
}

/// List parked events, in feed order (operator).
#[utoipa::path(get, path = "/v1/admin/outbox/parked", tag = "operations",
    operation_id = "listParkedEvents",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "1..100, default 20"),
        ("cursor" = Option<String>, Query, min_length = 1, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of parked events", body = Page<ParkedOut>),
        (status = 403, description = "Not the operator", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad query parameter", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn list(
    _: Operator,
    State(state): State<AppState>,
    params: Params,
) -> ApiResult<axum::Json<Page<ParkedOut>>> {
    let mut invalid = Invalid::default();
    let limit = invalid.take(params.limit(DEFAULT_LIMIT, MAX_LIMIT));
    let after = invalid.take(params.cursor_number(CursorKind::Parked));
    invalid.finish()?;
    let rows = db::outbox_parked::list(&state.db, after, db::fetch_limit(limit)).await?;
    Ok(axum::Json(Page::from_rows(
        rows,
        limit,
        |row| cursor::encode_number(CursorKind::Parked, row.feed_position),
        ParkedOut::from,
    )))
}

/// Publish a parked event again, then the events of its order parked behind it (operator).
#[utoipa::path(post, path = "/v1/admin/outbox/parked/{event_id}/retry", tag = "operations",
    operation_id = "retryParkedEvent",
    params(("event_id" = Uuid, Path, description = "A parked event's id"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[ -~]+$",
            description = "1..255 printable ASCII characters; the same key within 24 h replays the first response")),
    responses(
        (status = 202, description = "The relay will try it (and those behind it) again", body = RetryAccepted),
        (status = 403, description = "Not the operator", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such parked event", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Malformed `Idempotency-Key`, or the key was used with another request", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn retry(
    operator: Operator,
    State(state): State<AppState>,
    headers: HeaderMap,
    PathText(event_id): PathText<String>,
) -> ApiResult<Response> {
    let key = idempotency_key(&headers)?;
    let event_id = parse_id(&event_id, "parked event")?;
    let mut tx = state.db.begin().await?;
    let request = idempotent::request_hash(&[b"retry parked", event_id.as_bytes()]);
    let owner = operator.owner_id();
    if let Some(answer) = idempotent::claim(&mut tx, owner, key.as_deref(), request).await? {
        return Ok(answer);
    }
    if !db::outbox_parked::request_retry(&mut tx, event_id, time::now()).await? {
        return Err(ApiError::NotFound("parked event"));
    }
    let accepted = RetryAccepted { event_id };
    idempotent::complete(
        &mut tx,
        owner,
        key.as_deref(),
        StatusCode::ACCEPTED,
        &accepted,
    )
    .await?;
    tx.commit().await?;
    state.signals.events_committed(vec![]);
    Ok((StatusCode::ACCEPTED, axum::Json(accepted)).into_response())
}
