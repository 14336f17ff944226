//! `/v1/webhooks`: a customer's webhook endpoints (their signing secrets'
//! routes are `webhook_secrets`).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::extract::{parse_id, present, Invalid, Json, Params, PathText};
use super::idempotent;
use super::page::{Page, DEFAULT_LIMIT, MAX_LIMIT};
use super::preconditions::idempotency_key;
use crate::db;
use crate::db::webhook_endpoints::EndpointRow;
use crate::domain::cursor::{self, CursorKind};
use crate::domain::text::Checks;
use crate::domain::time;
use crate::domain::webhook::{
    EventFilter, SigningSecret, StatusFilter, MAX_ENDPOINTS_PER_CUSTOMER, MAX_RATE_LIMIT,
};
use crate::domain::webhook_headers::CustomHeaders;
use crate::domain::webhook_url::WebhookUrl;
use crate::domain::OrderStatus;
use crate::error::{ApiError, ApiResult, FieldError, Problem};
use crate::principal::Principal;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/webhooks", get(list).post(create))
        .route("/v1/webhooks/{id}", get(show).patch(update).delete(remove))
}

const MAX_DESCRIPTION_CHARS: usize = 500;

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"url": "https://partner.example.com/webhooks/mechanica", "description": "Order updates", "event_types": ["order.status_changed"]}))]
pub struct WebhookIn {
    /// Required for the operator, acting for a customer.
    #[serde(default)]
    pub customer_id: Option<Uuid>,
    /// http(s), no credentials, at most 2048 bytes, a public host.
    pub url: String,
    /// Up to 500 characters.
    #[serde(default)]
    pub description: Option<String>,
    /// Any of the subscribable types of `GET /v1/event-types`; absent or
    /// empty: every `order.*` type, including ones added later.
    /// `endpoint.disabled` and `delivery.failed` come only when listed.
    #[serde(default)]
    pub event_types: Option<Vec<String>>,
    /// Only these new statuses' `order.status_changed` events; absent or
    /// null: every status. Other types are not filtered by it.
    #[serde(default)]
    #[schema(value_type = Option<Vec<OrderStatus>>, example = json!(["delivered", "exception"]))]
    pub statuses: Option<Vec<String>>,
    /// Default true.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Your own secret (`whsec_` + base64 of 24..64 bytes); generated if absent.
    #[serde(default)]
    pub secret: Option<String>,
    /// At most this many attempts a second to this endpoint (1..10000); absent: no limit.
    #[serde(default)]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 10000)]
    pub rate_limit_per_second: Option<i64>,
    /// Up to 10 headers sent with every attempt. Names are HTTP tokens;
    /// `webhook-*`, `content-type`, `content-length`, `host`, `user-agent`
    /// and hop-by-hop headers are refused; values are printable ASCII.
    #[serde(default)]
    #[schema(example = json!({"X-Partner-Id": "acme-42"}))]
    pub headers: Option<BTreeMap<String, String>>,
}

/// Any subset of the fields; at least one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"enabled": true}))]
pub struct WebhookPatch {
    #[serde(default)]
    pub url: Option<String>,
    /// `null` clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    #[serde(default)]
    pub event_types: Option<Vec<String>>,
    /// `null` sends status changes to every status again.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<OrderStatus>>)]
    pub statuses: Option<Option<Vec<String>>>,
    /// Re-enabling clears `disabled_reason`.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// 1..10000; `null` removes the limit.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 10000)]
    pub rate_limit_per_second: Option<Option<i64>>,
    /// Replaces every custom header; `null` or `{}` removes them.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    pub headers: Option<Option<BTreeMap<String, String>>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookOut {
    pub id: Uuid,
    pub customer_id: Uuid,
    #[schema(example = "https://partner.example.com/webhooks/mechanica")]
    pub url: String,
    pub description: Option<String>,
    #[schema(example = json!(["order.created", "order.status_changed"]))]
    pub event_types: Vec<&'static str>,
    /// The new statuses it gets `order.status_changed` for; null: all.
    #[schema(value_type = Option<Vec<OrderStatus>>)]
    pub statuses: Option<Vec<&'static str>>,
    pub enabled: bool,
    /// Why the system disabled it (for example, every delivery failing for 5 days).
    pub disabled_reason: Option<String>,
    pub rate_limit_per_second: Option<u32>,
    /// Custom headers sent with every attempt.
    pub headers: BTreeMap<String, String>,
    #[serde(with = "time::millis")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    #[serde(with = "time::millis")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: DateTime<Utc>,
}

/// The endpoint with its signing secret, on creation only.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookCreated {
    #[serde(flatten)]
    pub endpoint: WebhookOut,
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]
    pub secret: String,
}

impl From<&EndpointRow> for WebhookOut {
    fn from(row: &EndpointRow) -> Self {
        WebhookOut {
            id: row.id,
            customer_id: row.customer_id,
            url: row.url.clone(),
            description: row.description.clone(),
            event_types: row.event_filter().names(),
            statuses: row.status_filter().names(),
            enabled: row.enabled,
            disabled_reason: row.disabled_reason.clone(),
            rate_limit_per_second: row.rate_limit_per_second,
            headers: CustomHeaders::from_stored(row.headers.as_deref()).into_map(),
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// Parses a URL and, unless private networks are allowed, checks where it points.
async fn checked_url(state: &AppState, raw: &str) -> Result<WebhookUrl, FieldError> {
    let url = WebhookUrl::parse(raw).map_err(|e| FieldError::new("url", e))?;
    if !state.allow_private_networks {
        url.check_destination()
            .await
            .map_err(|e| FieldError::new("url", e))?;
    }
    Ok(url)
}

fn check_description(checks: &mut Checks, description: &str) {
    checks.text("description", description, MAX_DESCRIPTION_CHARS, false);
}

fn check_rate_limit(checks: &mut Checks, limit: i64) -> Option<u32> {
    if (1..=i64::from(MAX_RATE_LIMIT)).contains(&limit) {
        u32::try_from(limit).ok()
    } else {
        checks.fail(
            "rate_limit_per_second",
            format!("must be between 1 and {MAX_RATE_LIMIT}"),
        );
        None
    }
}

fn check_headers(checks: &mut Checks, headers: BTreeMap<String, String>) -> Option<CustomHeaders> {
    CustomHeaders::parse(headers)
        .map_err(|errors| {
            for e in errors {
                checks.fail(e.field, e.message);
            }
        })
        .ok()
}

pub(super) fn parse_secret(raw: Option<&str>) -> Result<SigningSecret, FieldError> {
    match raw {
        None => Ok(SigningSecret::generate()),
        Some(raw) => SigningSecret::parse(raw).map_err(|e| FieldError::new("secret", e)),
    }
}

pub(super) async fn visible_endpoint(
    state: &AppState,
    principal: Principal,
    raw_id: &str,
) -> ApiResult<EndpointRow> {
    let id = parse_id(raw_id, "webhook endpoint")?;
    match db::webhook_endpoints::find(&state.db, id).await? {
        Some(row) if principal.can_see(row.customer_id) => Ok(row),
        _ => Err(ApiError::NotFound("webhook endpoint")),
    }
}

/// Register a webhook endpoint. The response holds its signing secret.
#[utoipa::path(post, path = "/v1/webhooks", operation_id = "createWebhook", tag = "webhooks",
    request_body = WebhookIn,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[ -~]+$",
            description = "1..255 printable ASCII characters; the same key within 24 h replays the first response, its secret included, when the server has SECRETS_ENCRYPTION_KEY (the answer is sealed under it and this key); without it the replay is refused with 409 replay-withheld and nothing is done twice")),
    responses(
        (status = 201, description = "Created, with `secret`", body = WebhookCreated),
        (status = 409, description = "The customer already has 20 endpoints, or a replay whose secret this server does not keep (`replay-withheld`: no SECRETS_ENCRYPTION_KEY)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field (e.g. a URL pointing to a private network), or a malformed or reused `Idempotency-Key`", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn create(
    principal: Principal,
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<WebhookIn>,
) -> ApiResult<Response> {
    let key = idempotency_key(&headers)?;
    let customer_id = principal.scope(body.customer_id)?.ok_or_else(|| {
        ApiError::invalid(
            "customer_id",
            "required when the operator registers an endpoint",
        )
    })?;
    let mut checks = Checks::default();
    let url = checked_url(&state, &body.url)
        .await
        .map_err(|e| checks.fail(e.field, e.message))
        .ok();
    if let Some(description) = &body.description {
        check_description(&mut checks, description);
    }
    let filter = EventFilter::parse(body.event_types.as_deref())
        .map_err(|e| checks.fail("event_types", e))
        .ok();
    let statuses = StatusFilter::parse(body.statuses.as_deref())
        .map_err(|e| checks.fail("statuses", e))
        .ok();
    let secret = parse_secret(body.secret.as_deref())
        .map_err(|e| checks.fail(e.field, e.message))
        .ok();
    let rate_limit = body
        .rate_limit_per_second
        .and_then(|limit| check_rate_limit(&mut checks, limit));
    let headers = check_headers(&mut checks, body.headers.clone().unwrap_or_default());
    checks.finish().map_err(ApiError::Validation)?;
    let (Some(url), Some(filter), Some(statuses), Some(secret), Some(headers)) =
        (url, filter, statuses, secret, headers)
    else {
        return Err(ApiError::Internal);
    };

    let request = idempotent::request_hash(&[
        b"create webhook",
        customer_id.as_bytes(),
        &serde_json::to_vec(&body).unwrap_or_default(),
    ]);
    let owner = principal.owner_id();
    let mut tx = state.db.begin().await?;
    if let Some(answer) = idempotent::claim_sealed(
        &mut tx,
        owner,
        key.as_deref(),
        request,
        state.secrets.replay_key(),
    )
    .await?
    {
        return Ok(answer);
    }
    // Locking the customer serializes its creations, so the limit holds.
    if db::customers::find_for_update(&mut *tx, customer_id)
        .await?
        .is_none()
    {
        return Err(ApiError::invalid("customer_id", "no such customer"));
    }
    if db::webhook_endpoints::count_for_customer(&mut *tx, customer_id).await?
        >= MAX_ENDPOINTS_PER_CUSTOMER
    {
        return Err(ApiError::conflict(
            "endpoint-limit",
            format!("a customer may have at most {MAX_ENDPOINTS_PER_CUSTOMER} webhook endpoints"),
        ));
    }
    let now = time::now();
    let row = EndpointRow {
        id: Uuid::now_v7(),
        customer_id,
        url: url.as_str().to_string(),
        description: body.description,
        event_mask: filter.orders,
        notice_mask: filter.notices,
        status_mask: statuses.0,
        enabled: body.enabled.unwrap_or(true),
        disabled_reason: None,
        secret: state.secrets.seal(&secret),
        previous_secret: None,
        previous_secret_expires_at: None,
        created_at: now,
        updated_at: now,
        failing_since: None,
        rate_limit_per_second: rate_limit,
        headers: headers.to_stored(),
    };
    db::webhook_endpoints::insert(&mut *tx, &row).await?;
    let created = WebhookCreated {
        endpoint: (&row).into(),
        secret: secret.expose().to_string(),
    };
    idempotent::complete_sealed(
        &mut tx,
        owner,
        key.as_deref(),
        StatusCode::CREATED,
        &created,
        state.secrets.replay_key(),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

/// List webhook endpoints, newest first (no secrets).
#[utoipa::path(get, path = "/v1/webhooks", operation_id = "listWebhooks", tag = "webhooks",
    params(
        ("customer_id" = Option<Uuid>, Query, description = "Operator only: one customer's endpoints"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "1..100, default 20"),
        ("cursor" = Option<String>, Query, min_length = 1, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of endpoints", body = Page<WebhookOut>),
        (status = 422, description = "Bad query parameter", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn list(
    principal: Principal,
    State(state): State<AppState>,
    params: Params,
) -> ApiResult<axum::Json<Page<WebhookOut>>> {
    let mut invalid = Invalid::default();
    let limit = invalid.take(params.limit(DEFAULT_LIMIT, MAX_LIMIT));
    let before = invalid.take(params.cursor_id(CursorKind::Webhooks));
    let requested = invalid.take(params.uuid("customer_id"));
    invalid.finish()?;
    let customer_id = principal.scope(requested)?;
    let rows =
        db::webhook_endpoints::list(&state.db, customer_id, before, db::fetch_limit(limit)).await?;
    Ok(axum::Json(Page::from_rows(
        rows,
        limit,
        |row| cursor::encode_id(CursorKind::Webhooks, row.id),
        |row| WebhookOut::from(&row),
    )))
}

/// Get a webhook endpoint (no secret).
#[utoipa::path(get, path = "/v1/webhooks/{id}", operation_id = "getWebhook", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Endpoint id")),
    responses(
        (status = 200, description = "The endpoint", body = WebhookOut),
        (status = 404, description = "No such endpoint (or another customer's)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn show(
    principal: Principal,
    State(state): State<AppState>,
    PathText(id): PathText<String>,
) -> ApiResult<axum::Json<WebhookOut>> {
    let row = visible_endpoint(&state, principal, &id).await?;
    Ok(axum::Json((&row).into()))
}

/// Change any of url, description, event_types, statuses, enabled, rate_limit_per_second, headers.
#[utoipa::path(patch, path = "/v1/webhooks/{id}", operation_id = "updateWebhook", tag = "webhooks",
    request_body = WebhookPatch,
    params(("id" = Uuid, Path, description = "Endpoint id")),
    responses(
        (status = 200, description = "The updated endpoint", body = WebhookOut),
        (status = 404, description = "No such endpoint (or another customer's)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field, or nothing to change", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn update(
    principal: Principal,
    State(state): State<AppState>,
    PathText(id): PathText<String>,
    Json(patch): Json<WebhookPatch>,
) -> ApiResult<axum::Json<WebhookOut>> {
    let id = parse_id(&id, "webhook endpoint")?;
    if patch.url.is_none()
        && patch.description.is_none()
        && patch.event_types.is_none()
        && patch.statuses.is_none()
        && patch.enabled.is_none()
        && patch.rate_limit_per_second.is_none()
        && patch.headers.is_none()
    {
        return Err(ApiError::invalid(
            "body",
            "name at least one of url, description, event_types, statuses, enabled, rate_limit_per_second, headers",
        ));
    }
    let mut checks = Checks::default();
    let url = match &patch.url {
        Some(raw) => checked_url(&state, raw)
            .await
            .map_err(|e| checks.fail(e.field, e.message))
            .ok(),
        None => None,
    };
    if let Some(Some(description)) = &patch.description {
        check_description(&mut checks, description);
    }
    let filter = match &patch.event_types {
        Some(names) => EventFilter::parse(Some(names))
            .map_err(|e| checks.fail("event_types", e))
            .ok(),
        None => None,
    };
    let statuses = match &patch.statuses {
        Some(names) => StatusFilter::parse(names.as_deref())
            .map_err(|e| checks.fail("statuses", e))
            .ok(),
        None => None,
    };
    let rate_limit = patch
        .rate_limit_per_second
        .map(|limit| limit.map(|l| check_rate_limit(&mut checks, l)));
    let headers = patch
        .headers
        .map(|headers| check_headers(&mut checks, headers.unwrap_or_default()));
    checks.finish().map_err(ApiError::Validation)?;

    let mut tx = state.db.begin().await?;
    let mut row = match db::webhook_endpoints::find_for_update(&mut *tx, id).await? {
        Some(row) if principal.can_see(row.customer_id) => row,
        _ => return Err(ApiError::NotFound("webhook endpoint")),
    };
    if let Some(limit) = rate_limit {
        row.rate_limit_per_second = limit.flatten();
    }
    if let Some(headers) = headers.flatten() {
        row.headers = headers.to_stored();
    }
    if let Some(url) = url {
        row.url = url.as_str().to_string();
    }
    if let Some(description) = patch.description {
        row.description = description;
    }
    if let Some(filter) = filter {
        row.event_mask = filter.orders;
        row.notice_mask = filter.notices;
    }
    if let Some(statuses) = statuses {
        row.status_mask = statuses.0;
    }
    if let Some(enabled) = patch.enabled {
        if enabled && !row.enabled {
            // Re-enabled: its failure clock starts again, so one more
            // failure does not disable it at once.
            row.disabled_reason = None;
            row.failing_since = None;
        }
        row.enabled = enabled;
    }
    row.updated_at = time::now();
    db::webhook_endpoints::update(&mut *tx, &row).await?;
    tx.commit().await?;
    Ok(axum::Json((&row).into()))
}

/// Delete a webhook endpoint; nothing is delivered to it afterwards.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", operation_id = "deleteWebhook", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Endpoint id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such endpoint (or another customer's)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn remove(
    principal: Principal,
    State(state): State<AppState>,
    PathText(id): PathText<String>,
) -> ApiResult<StatusCode> {
    let row = visible_endpoint(&state, principal, &id).await?;
    db::webhook_endpoints::delete(&state.db, row.id).await?;
    Ok(StatusCode::NO_CONTENT)
}
