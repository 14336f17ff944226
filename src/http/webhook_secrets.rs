//! `/v1/webhooks/{id}/secret…`: reading and rotating an endpoint's
//! Standard Webhooks signing secret.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::Duration;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{parse_id, OptionalJson, PathText};
use super::idempotent;
use super::preconditions::idempotency_key;
use super::webhooks::{parse_secret, visible_endpoint};
use crate::db;
use crate::domain::time;
use crate::domain::webhook::SigningSecret;
use crate::error::{ApiError, ApiResult, Problem};
use crate::principal::Principal;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/webhooks/{id}/secret", get(secret))
        .route("/v1/webhooks/{id}/secret/rotate", post(rotate))
}

/// How long a rotated-out secret keeps signing beside the new one.
pub const ROTATION_GRACE: Duration = Duration::hours(24);
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateIn {
    /// Your own new secret; generated if absent.
    #[serde(default)]
    pub secret: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SecretOut {
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]
    pub secret: String,
}

fn open_secret(state: &AppState, stored: &str) -> ApiResult<SigningSecret> {
    state
        .secrets
        .open(stored)
        .map_err(|e| ApiError::internal("cannot open a webhook secret", e))
}

/// The endpoint's current signing secret.
#[utoipa::path(get, path = "/v1/webhooks/{id}/secret", operation_id = "getWebhookSecret", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Endpoint id")),
    responses(
        (status = 200, description = "The current secret", body = SecretOut),
        (status = 404, description = "No such endpoint (or another customer's)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn secret(
    principal: Principal,
    State(state): State<AppState>,
    PathText(id): PathText<String>,
) -> ApiResult<axum::Json<SecretOut>> {
    let row = visible_endpoint(&state, principal, &id).await?;
    let secret = open_secret(&state, &row.secret)?;
    Ok(axum::Json(SecretOut {
        secret: secret.expose().to_string(),
    }))
}

/// Rotate the signing secret. The previous one keeps signing beside the new
/// one for 24 hours; a second rotation within that time drops the oldest.
#[utoipa::path(post, path = "/v1/webhooks/{id}/secret/rotate", operation_id = "rotateWebhookSecret", tag = "webhooks",
    request_body(content = Option<RotateIn>, description = "Optional: your own new secret"),
    params(("id" = Uuid, Path, description = "Endpoint id"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[ -~]+$",
            description = "1..255 printable ASCII characters; the same key within 24 h replays the first response, its secret included, when the server has SECRETS_ENCRYPTION_KEY (the answer is sealed under it and this key); without it the replay is refused with 409 replay-withheld and nothing is done twice")),
    responses(
        (status = 200, description = "The new secret", body = SecretOut),
        (status = 404, description = "No such endpoint (or another customer's)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A replay whose secret this server does not keep (`replay-withheld`: no SECRETS_ENCRYPTION_KEY)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The supplied secret is malformed, or a malformed or reused `Idempotency-Key`", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn rotate(
    principal: Principal,
    State(state): State<AppState>,
    headers: HeaderMap,
    PathText(id): PathText<String>,
    OptionalJson(body): OptionalJson<RotateIn>,
) -> ApiResult<Response> {
    let key = idempotency_key(&headers)?;
    let id = parse_id(&id, "webhook endpoint")?;
    let requested = body.and_then(|b| b.secret);
    let new = parse_secret(requested.as_deref()).map_err(|e| ApiError::Validation(vec![e]))?;
    let request = idempotent::request_hash(&[
        b"rotate secret",
        id.as_bytes(),
        requested.as_deref().unwrap_or_default().as_bytes(),
    ]);
    let owner = principal.owner_id();
    let mut tx = state.db.begin().await?;
    let mut row = match db::webhook_endpoints::find_for_update(&mut *tx, id).await? {
        Some(row) if principal.can_see(row.customer_id) => row,
        _ => return Err(ApiError::NotFound("webhook endpoint")),
    };
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
    let now = time::now();
    row.previous_secret = Some(std::mem::replace(&mut row.secret, state.secrets.seal(&new)));
    row.previous_secret_expires_at = Some(now + ROTATION_GRACE);
    row.updated_at = now;
    db::webhook_endpoints::update(&mut *tx, &row).await?;
    let rotated = SecretOut {
        secret: new.expose().to_string(),
    };
    idempotent::complete_sealed(
        &mut tx,
        owner,
        key.as_deref(),
        StatusCode::OK,
        &rotated,
        state.secrets.replay_key(),
    )
    .await?;
    tx.commit().await?;
    Ok(axum::Json(rotated).into_response())
}
