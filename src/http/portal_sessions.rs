//! `/v1/customers/{id}/portal-sessions`: customer portal links, minted and
//! ended by the operator (SPEC §11). A token is shown once; only its hash
//! is kept.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::extract::{parse_id, OptionalJson, PathText};
use super::idempotent;
use super::preconditions::idempotency_key;
use crate::auth::{self, Operator};
use crate::db;
use crate::db::portal_sessions::NewSession;
use crate::domain::portal::{Capabilities, DEFAULT_EXPIRES_IN, MAX_EXPIRES_IN, MIN_EXPIRES_IN};
use crate::domain::text::Checks;
use crate::domain::time;
use crate::error::{ApiError, ApiResult, Problem};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route(
        "/v1/customers/{id}/portal-sessions",
        post(create).delete(end_all),
    )
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"capabilities": ["endpoints:write", "secrets:read"], "expires_in": 3600}))]
pub struct PortalSessionIn {
    /// Any of `endpoints:write`, `secrets:read`, `secrets:rotate`,
    /// `deliveries:retry`; absent: all. Reading is always allowed.
    #[serde(default)]
    pub capabilities: Option<Vec<String>>,
    /// Seconds, 300..604800; default 3600.
    #[serde(default)]
    #[schema(value_type = Option<u32>, minimum = 300, maximum = 604800)]
    pub expires_in: Option<i64>,
}

/// A new session: open `url`, or send `token` as a bearer token.
#[derive(Debug, Serialize, ToSchema)]
pub struct PortalSessionCreated {
    pub id: Uuid,
    /// The portal page with the token in its fragment.
    #[schema(example = "https://api.mechanica.example/portal#token=mps_…")]
    pub url: String,
    /// Shown only here.
    #[schema(example = "mps_q2l0aW5nLW9ubHktZXhhbXBsZS1ub3QtYS1rZXk")]
    pub token: String,
    pub customer_id: Uuid,
    #[schema(example = json!(["endpoints:write", "secrets:read"]))]
    pub capabilities: Vec<&'static str>,
    #[serde(with = "time::millis")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: DateTime<Utc>,
}

/// Mint a portal session for a customer (operator). The token is in this response only.
#[utoipa::path(post, path = "/v1/customers/{id}/portal-sessions", operation_id = "createPortalSession", tag = "portal",
    request_body(content = Option<PortalSessionIn>, description = "Optional: capabilities and lifetime"),
    params(("id" = Uuid, Path, description = "Customer id"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[ -~]+$",
            description = "1..255 printable ASCII characters; the same key within 24 h replays the first response, its token included, when the server has SECRETS_ENCRYPTION_KEY (the answer is sealed under it and this key); without it the replay is refused with 409 replay-withheld and nothing is done twice")),
    responses(
        (status = 201, description = "Created; `token` is shown only here", body = PortalSessionCreated),
        (status = 403, description = "Not the operator", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such customer", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A replay whose secret this server does not keep (`replay-withheld`: no SECRETS_ENCRYPTION_KEY)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An unknown capability, `expires_in` out of range, or a malformed or reused `Idempotency-Key`", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn create(
    operator: Operator,
    State(state): State<AppState>,
    headers: HeaderMap,
    PathText(id): PathText<String>,
    OptionalJson(body): OptionalJson<PortalSessionIn>,
) -> ApiResult<Response> {
    let key = idempotency_key(&headers)?;
    let body = body.unwrap_or_default();
    let customer_id = parse_id(&id, "customer")?;
    let mut checks = Checks::default();
    let capabilities = Capabilities::parse(body.capabilities.as_deref())
        .map_err(|e| checks.fail("capabilities", e))
        .ok();
    let expires_in = body.expires_in.unwrap_or(DEFAULT_EXPIRES_IN);
    checks.range("expires_in", expires_in, MIN_EXPIRES_IN, MAX_EXPIRES_IN);
    checks.finish().map_err(ApiError::Validation)?;
    let Some(capabilities) = capabilities else {
        return Err(ApiError::Internal);
    };
    if db::customers::find(&state.db, customer_id).await?.is_none() {
        return Err(ApiError::NotFound("customer"));
    }
    let owner = operator.owner_id();
    let request = idempotent::request_hash(&[
        b"create portal session",
        customer_id.as_bytes(),
        &capabilities.0.to_be_bytes(),
        &expires_in.to_be_bytes(),
    ]);
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
    let token = auth::generate_token(auth::PORTAL_PREFIX);
    let now = time::now();
    let session = NewSession {
        id: Uuid::now_v7(),
        customer_id,
        token_hash: &auth::hash_token(&token),
        capabilities: capabilities.0,
        expires_at: now + Duration::seconds(expires_in),
        created_at: now,
    };
    db::portal_sessions::insert(&mut *tx, &session).await?;
    let created = PortalSessionCreated {
        id: session.id,
        url: format!("{}/portal#token={token}", state.public_base),
        token,
        customer_id,
        capabilities: capabilities.names(),
        expires_at: session.expires_at,
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

/// End every portal session of a customer at once (operator).
#[utoipa::path(delete, path = "/v1/customers/{id}/portal-sessions", operation_id = "endPortalSessions", tag = "portal",
    params(("id" = Uuid, Path, description = "Customer id")),
    responses(
        (status = 204, description = "Every session of the customer has ended"),
        (status = 403, description = "Not the operator", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such customer", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn end_all(
    _: Operator,
    State(state): State<AppState>,
    PathText(id): PathText<String>,
) -> ApiResult<StatusCode> {
    let customer_id = parse_id(&id, "customer")?;
    if db::customers::find(&state.db, customer_id).await?.is_none() {
        return Err(ApiError::NotFound("customer"));
    }
    db::portal_sessions::delete_for_customer(&state.db, customer_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
