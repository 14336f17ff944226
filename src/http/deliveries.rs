//! `/v1/webhooks/{id}/deliveries` and `/v1/webhooks/{id}/test`: what was
//! delivered to an endpoint, each attempt, manual retries and test events.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::extract::{parse_id, Invalid, Json, Params, PathText};
use super::idempotent;
use super::page::{Page, DEFAULT_LIMIT, MAX_LIMIT};
use super::preconditions::idempotency_key;
use super::webhooks::visible_endpoint;
use crate::db;
use crate::db::deliveries::{DeliveryRow, NewDelivery, FAILED, PENDING, SUCCEEDED};
use crate::db::webhook_attempts::AttemptRow;
use crate::domain::cursor::{self, CursorKind};
use crate::domain::{notice, time, EventType};
use crate::error::{ApiError, ApiResult, FieldError, Problem};
use crate::principal::Principal;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/webhooks/{id}/deliveries", get(list))
        .route(
            "/v1/webhooks/{id}/deliveries/{delivery_id}/attempts",
            get(attempts),
        )
        .route(
            "/v1/webhooks/{id}/deliveries/{delivery_id}/retry",
            post(retry),
        )
        .route("/v1/webhooks/{id}/test", post(test))
        .route("/v1/webhooks/{id}/recover", post(recover))
        .route("/v1/orders/{id}/deliveries", get(for_order))
}

/// The longest a recovery reaches back.
pub const MAX_RECOVERY: chrono::Duration = chrono::Duration::days(14);

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryOut {
    pub id: Uuid,
    pub endpoint_id: Uuid,
    pub event_id: Uuid,
    #[schema(example = "order.status_changed")]
    pub event_type: String,
    /// The order the event is of (null for `webhook.test`).
    pub order_id: Option<Uuid>,
    /// The event's sequence within its order.
    pub sequence: Option<u32>,
    /// `pending`, `succeeded` or `failed`.
    #[schema(example = "succeeded")]
    pub status: String,
    pub attempts: u32,
    pub last_response_status: Option<u16>,
    pub last_error: Option<String>,
    #[serde(with = "time::millis_option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_attempt_at: Option<DateTime<Utc>>,
    #[serde(with = "time::millis")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    #[serde(with = "time::millis")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: DateTime<Utc>,
}

impl From<DeliveryRow> for DeliveryOut {
    fn from(row: DeliveryRow) -> Self {
        DeliveryOut {
            id: row.id,
            endpoint_id: row.endpoint_id,
            event_id: row.event_id,
            event_type: row.event_type,
            order_id: row.order_id,
            sequence: row.sequence,
            status: row.status,
            attempts: row.attempts,
            last_response_status: row.last_response_status,
            last_error: row.last_error,
            next_attempt_at: row.next_attempt_at,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptOut {
    pub id: Uuid,
    pub attempt: u32,
    #[serde(with = "time::millis")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: DateTime<Utc>,
    pub duration_ms: u32,
    pub response_status: Option<u16>,
    /// The first 1 KiB of the response body.
    pub response_body: Option<String>,
    pub error: Option<String>,
}

impl From<AttemptRow> for AttemptOut {
    fn from(row: AttemptRow) -> Self {
        AttemptOut {
            id: row.id,
            attempt: row.attempt,
            started_at: row.started_at,
            duration_ms: row.duration_ms,
            response_status: row.response_status,
            response_body: row.response_body,
            error: row.error,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"since": "2026-11-26T08:00:00Z"}))]
pub struct RecoverIn {
    /// RFC 3339; at most 14 days ago.
    #[schema(format = DateTime)]
    pub since: String,
    /// RFC 3339, after `since`; default now.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub until: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Recovering {
    /// How many failed deliveries will be attempted again.
    pub deliveries: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    pub delivery_id: Uuid,
    pub event_id: Uuid,
}

/// A delivery of this endpoint the caller may see.
async fn visible_delivery(
    state: &AppState,
    principal: Principal,
    endpoint_id: &str,
    delivery_id: &str,
) -> ApiResult<DeliveryRow> {
    let endpoint = visible_endpoint(state, principal, endpoint_id).await?;
    let id = parse_id(delivery_id, "delivery")?;
    match db::deliveries::find(&state.db, id).await? {
        Some(row) if row.endpoint_id == endpoint.id => Ok(row),
        _ => Err(ApiError::NotFound("delivery")),
    }
}

/// An endpoint's deliveries, newest first: one per (event, endpoint).
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", operation_id = "listDeliveries", tag = "webhooks",
    params(
        ("id" = Uuid, Path, description = "Endpoint id"),
        ("status" = Option<String>, Query, pattern = "^(pending|succeeded|failed)$", description = "pending, succeeded or failed"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "1..100, default 20"),
        ("cursor" = Option<String>, Query, min_length = 1, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of deliveries", body = Page<DeliveryOut>),
        (status = 404, description = "No such endpoint (or another customer's)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad query parameter", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn list(
    principal: Principal,
    State(state): State<AppState>,
    PathText(id): PathText<String>,
    params: Params,
) -> ApiResult<axum::Json<Page<DeliveryOut>>> {
    let endpoint = visible_endpoint(&state, principal, &id).await?;
    let mut invalid = Invalid::default();
    let limit = invalid.take(params.limit(DEFAULT_LIMIT, MAX_LIMIT));
    let before = invalid.take(params.cursor_id(CursorKind::Deliveries));
    let status = invalid.take(
        params
            .get("status")
            .map(|s| {
                [PENDING, SUCCEEDED, FAILED]
                    .into_iter()
                    .find(|known| *known == s)
                    .ok_or_else(|| {
                        FieldError::new("status", "must be pending, succeeded or failed")
                    })
            })
            .transpose(),
    );
    invalid.finish()?;
    let rows = db::deliveries::list(
        &state.db,
        endpoint.id,
        status,
        before,
        db::fetch_limit(limit),
    )
    .await?;
    Ok(axum::Json(Page::from_rows(
        rows,
        limit,
        |row| cursor::encode_id(CursorKind::Deliveries, row.id),
        DeliveryOut::from,
    )))
}

/// A delivery's attempts, oldest first.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries/{delivery_id}/attempts", operation_id = "listDeliveryAttempts", tag = "webhooks",
    params(
        ("id" = Uuid, Path, description = "Endpoint id"),
        ("delivery_id" = Uuid, Path, description = "Delivery id"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "1..100, default 20"),
        ("cursor" = Option<String>, Query, min_length = 1, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of attempts", body = Page<AttemptOut>),
        (status = 404, description = "No such endpoint or delivery", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad query parameter", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn attempts(
    principal: Principal,
    State(state): State<AppState>,
    PathText((id, delivery_id)): PathText<(String, String)>,
    params: Params,
) -> ApiResult<axum::Json<Page<AttemptOut>>> {
    let delivery = visible_delivery(&state, principal, &id, &delivery_id).await?;
    let mut invalid = Invalid::default();
    let limit = invalid.take(params.limit(DEFAULT_LIMIT, MAX_LIMIT));
    let after = invalid.take(params.cursor_number(CursorKind::Attempts));
    invalid.finish()?;
    let after = after.map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    let rows =
        db::webhook_attempts::list(&state.db, delivery.id, after, db::fetch_limit(limit)).await?;
    Ok(axum::Json(Page::from_rows(
        rows,
        limit,
        |row| cursor::encode_number(CursorKind::Attempts, row.attempt.into()),
        AttemptOut::from,
    )))
}

/// One more attempt now, whatever the delivery's state (not a new schedule).
#[utoipa::path(post, path = "/v1/webhooks/{id}/deliveries/{delivery_id}/retry", operation_id = "retryDelivery", tag = "webhooks",
    params(
        ("id" = Uuid, Path, description = "Endpoint id"),
        ("delivery_id" = Uuid, Path, description = "Delivery id"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[ -~]+$",
            description = "1..255 printable ASCII characters; the same key within 24 h replays the first response"),
    ),
    responses(
        (status = 202, description = "The attempt is queued", body = Accepted),
        (status = 404, description = "No such endpoint or delivery", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Malformed `Idempotency-Key`, or the key was used with another request", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn retry(
    principal: Principal,
    State(state): State<AppState>,
    headers: HeaderMap,
    PathText((id, delivery_id)): PathText<(String, String)>,
) -> ApiResult<Response> {
    let key = idempotency_key(&headers)?;
    let delivery = visible_delivery(&state, principal, &id, &delivery_id).await?;
    let mut tx = state.db.begin().await?;
    let request = idempotent::request_hash(&[b"retry delivery", delivery.id.as_bytes()]);
    let owner = principal.owner_id();
    if let Some(answer) = idempotent::claim(&mut tx, owner, key.as_deref(), request).await? {
        return Ok(answer);
    }
    db::deliveries::request_manual(&mut *tx, delivery.id, time::now()).await?;
    let accepted = Accepted {
        delivery_id: delivery.id,
        event_id: delivery.event_id,
    };
    idempotent::complete(
        &mut tx,
        owner,
        key.as_deref(),
        StatusCode::ACCEPTED,
        &accepted,
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::ACCEPTED, axum::Json(accepted)).into_response())
}

/// Send a `webhook.test` event to this endpoint only, through the usual delivery path.
#[utoipa::path(post, path = "/v1/webhooks/{id}/test", operation_id = "sendTestEvent", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Endpoint id"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[ -~]+$",
            description = "1..255 printable ASCII characters; the same key within 24 h replays the first response")),
    responses(
        (status = 202, description = "The test event is queued for this endpoint", body = Accepted),
        (status = 404, description = "No such endpoint (or another customer's)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Malformed `Idempotency-Key`, or the key was used with another request", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn test(
    principal: Principal,
    State(state): State<AppState>,
    headers: HeaderMap,
    PathText(id): PathText<String>,
) -> ApiResult<Response> {
    let key = idempotency_key(&headers)?;
    let endpoint = visible_endpoint(&state, principal, &id).await?;
    let mut tx = state.db.begin().await?;
    let request = idempotent::request_hash(&[b"test event", endpoint.id.as_bytes()]);
    let owner = principal.owner_id();
    if let Some(answer) = idempotent::claim(&mut tx, owner, key.as_deref(), request).await? {
        return Ok(answer);
    }
    let now = time::now();
    let event_id = Uuid::now_v7();
    let envelope = notice::test_envelope(event_id, endpoint.customer_id, endpoint.id, now);
    let payload = envelope.to_string();
    let new = NewDelivery {
        endpoint_id: endpoint.id,
        customer_id: endpoint.customer_id,
        event_id,
        event_type: EventType::WebhookTest.as_str(),
        order_id: None,
        sequence: None,
        payload: &payload,
        event_created_at: now,
    };
    let row = DeliveryRow::pending(new, now, true);
    db::deliveries::insert_ignore(&mut *tx, &row).await?;
    let accepted = Accepted {
        delivery_id: row.id,
        event_id,
    };
    idempotent::complete(
        &mut tx,
        owner,
        key.as_deref(),
        StatusCode::ACCEPTED,
        &accepted,
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::ACCEPTED, axum::Json(accepted)).into_response())
}

/// Every failed delivery of this endpoint whose event happened in
/// `[since, until)` is attempted once more: in order within each order, at
/// the endpoint's pace.
#[utoipa::path(post, path = "/v1/webhooks/{id}/recover", operation_id = "recoverFailedDeliveries", tag = "webhooks",
    request_body = RecoverIn,
    params(("id" = Uuid, Path, description = "Endpoint id"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[ -~]+$",
            description = "1..255 printable ASCII characters; the same key within 24 h replays the first response")),
    responses(
        (status = 202, description = "The failed deliveries are queued again", body = Recovering),
        (status = 404, description = "No such endpoint (or another customer's)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad window (backwards, or over 14 days back), or a malformed `Idempotency-Key`", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn recover(
    principal: Principal,
    State(state): State<AppState>,
    headers: HeaderMap,
    PathText(id): PathText<String>,
    Json(body): Json<RecoverIn>,
) -> ApiResult<Response> {
    let key = idempotency_key(&headers)?;
    let endpoint = visible_endpoint(&state, principal, &id).await?;
    let now = time::now();
    let (since, until) = recovery_window(&body, now).map_err(ApiError::Validation)?;
    let mut tx = state.db.begin().await?;
    // The body as sent: an absent `until` means "now" at the first request,
    // and a replay must match it, not a later "now".
    let request = idempotent::request_hash(&[
        b"recover",
        endpoint.id.as_bytes(),
        body.since.as_bytes(),
        body.until.as_deref().unwrap_or_default().as_bytes(),
    ]);
    let owner = principal.owner_id();
    if let Some(answer) = idempotent::claim(&mut tx, owner, key.as_deref(), request).await? {
        return Ok(answer);
    }
    let deliveries =
        db::deliveries::request_recovery(&mut *tx, endpoint.id, since, until, now).await?;
    let answer = Recovering { deliveries };
    idempotent::complete(
        &mut tx,
        owner,
        key.as_deref(),
        StatusCode::ACCEPTED,
        &answer,
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::ACCEPTED, axum::Json(answer)).into_response())
}

/// `[since, until)`, checked: RFC 3339, forwards, at most 14 days back.
fn recovery_window(
    body: &RecoverIn,
    now: DateTime<Utc>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), Vec<FieldError>> {
    let parse = |field: &str, raw: &str| {
        DateTime::parse_from_rfc3339(raw)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                FieldError::new(field, "must be an RFC 3339 time, like 2026-11-26T08:00:00Z")
            })
    };
    let since = parse("since", &body.since).map_err(|e| vec![e])?;
    let until = match &body.until {
        Some(raw) => parse("until", raw).map_err(|e| vec![e])?,
        None => now,
    };
    if since < now - MAX_RECOVERY {
        return Err(vec![FieldError::new(
            "since",
            "must be at most 14 days ago",
        )]);
    }
    if until <= since {
        return Err(vec![FieldError::new("until", "must be after since")]);
    }
    Ok((since, until))
}

/// The deliveries of an order's events, across the customer's endpoints,
/// newest first.
#[utoipa::path(get, path = "/v1/orders/{id}/deliveries", operation_id = "listOrderDeliveries", tag = "orders",
    params(
        ("id" = Uuid, Path, description = "Order id"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "1..100, default 20"),
        ("cursor" = Option<String>, Query, min_length = 1, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of deliveries", body = Page<DeliveryOut>),
        (status = 404, description = "No such order (or another customer's)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad query parameter", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn for_order(
    principal: Principal,
    State(state): State<AppState>,
    PathText(id): PathText<String>,
    params: Params,
) -> ApiResult<axum::Json<Page<DeliveryOut>>> {
    let order = super::orders::visible_order(&state, principal, &id).await?;
    let mut invalid = Invalid::default();
    let limit = invalid.take(params.limit(DEFAULT_LIMIT, MAX_LIMIT));
    let before = invalid.take(params.cursor_id(CursorKind::Deliveries));
    invalid.finish()?;
    let rows =
        db::deliveries::list_for_order(&state.db, order.id, before, db::fetch_limit(limit)).await?;
    Ok(axum::Json(Page::from_rows(
        rows,
        limit,
        |row| cursor::encode_id(CursorKind::Deliveries, row.id),
        DeliveryOut::from,
    )))
}
