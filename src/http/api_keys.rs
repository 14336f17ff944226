//! `/v1/customers/{id}/api-keys`: customer API keys, made and revoked by the
//! operator. A token is shown once, at creation; only its hash is kept.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::Router;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::extract::{parse_id, Invalid, Params, PathText};
use super::idempotent;
use super::page::{Page, DEFAULT_LIMIT, MAX_LIMIT};
use super::preconditions::idempotency_key;
use crate::auth::{self, Operator};
use crate::db;
use crate::db::api_keys::ApiKeyRow;
use crate::domain::cursor::{self, CursorKind};
use crate::domain::time;
use crate::error::{ApiError, ApiResult, Problem};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/customers/{id}/api-keys", get(list).post(create))
        .route("/v1/customers/{id}/api-keys/{key_id}", delete(revoke))
}

/// A new key, with its token: the only time the token is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyCreated {
    pub id: Uuid,
    /// Keep it: it cannot be shown again.
    #[schema(example = "mk_q2l0aW5nLW9ubHktZXhhbXBsZS1ub3QtYS1rZXk")]
    pub token: String,
    #[schema(example = "mk_q2l0aW5n")]
    pub prefix: String,
    #[serde(with = "time::millis")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyOut {
    pub id: Uuid,
    pub customer_id: Uuid,
    /// The first characters of the token, to tell keys apart.
    #[schema(example = "mk_q2l0aW5n")]
    pub prefix: String,
    #[serde(with = "time::millis")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
}

impl From<ApiKeyRow> for ApiKeyOut {
    fn from(row: ApiKeyRow) -> Self {
        ApiKeyOut {
            id: row.id,
            customer_id: row.customer_id,
            prefix: row.prefix,
            created_at: row.created_at,
        }
    }
}

async fn existing_customer(state: &AppState, raw_id: &str) -> ApiResult<Uuid> {
    let id = parse_id(raw_id, "customer")?;
    db::customers::find(&state.db, id)
        .await?
        .map(|c| c.id)
        .ok_or(ApiError::NotFound("customer"))
}

/// Create an API key for a customer (operator). The token is in this response only.
#[utoipa::path(post, path = "/v1/customers/{id}/api-keys", operation_id = "createApiKey", tag = "api keys",
    params(("id" = Uuid, Path, description = "Customer id"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[ -~]+$",
            description = "1..255 printable ASCII characters; the same key within 24 h replays the first response, its token included, when the server has SECRETS_ENCRYPTION_KEY (the answer is sealed under it and this key); without it the replay is refused with 409 replay-withheld and nothing is done twice")),
    responses(
        (status = 201, description = "Created; `token` is shown only here", body = ApiKeyCreated),
        (status = 403, description = "Not the operator", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such customer", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A replay whose secret this server does not keep (`replay-withheld`: no SECRETS_ENCRYPTION_KEY)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A malformed or reused `Idempotency-Key`", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn create(
    operator: Operator,
    State(state): State<AppState>,
    headers: HeaderMap,
    PathText(id): PathText<String>,
) -> ApiResult<Response> {
    let key = idempotency_key(&headers)?;
    let customer_id = existing_customer(&state, &id).await?;
    let owner = operator.owner_id();
    let request = idempotent::request_hash(&[b"create api key", customer_id.as_bytes()]);
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
    let token = auth::generate_token(auth::API_KEY_PREFIX);
    let row = ApiKeyRow {
        id: Uuid::now_v7(),
        customer_id,
        prefix: token[..auth::DISPLAY_PREFIX_LEN].to_string(),
        created_at: time::now(),
    };
    db::api_keys::insert(&mut *tx, &row, &auth::hash_token(&token)).await?;
    let created = ApiKeyCreated {
        id: row.id,
        token,
        prefix: row.prefix,
        created_at: row.created_at,
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

/// List a customer's API keys, newest first, without tokens (operator).
#[utoipa::path(get, path = "/v1/customers/{id}/api-keys", operation_id = "listApiKeys", tag = "api keys",
    params(
        ("id" = Uuid, Path, description = "Customer id"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "1..100, default 20"),
        ("cursor" = Option<String>, Query, min_length = 1, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of keys", body = Page<ApiKeyOut>),
        (status = 403, description = "Not the operator", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such customer", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad query parameter", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn list(
    _: Operator,
    State(state): State<AppState>,
    PathText(id): PathText<String>,
    params: Params,
) -> ApiResult<axum::Json<Page<ApiKeyOut>>> {
    let customer_id = existing_customer(&state, &id).await?;
    let mut invalid = Invalid::default();
    let limit = invalid.take(params.limit(DEFAULT_LIMIT, MAX_LIMIT));
    let before = invalid.take(params.cursor_id(CursorKind::ApiKeys));
    invalid.finish()?;
    let rows = db::api_keys::list(&state.db, customer_id, before, db::fetch_limit(limit)).await?;
    Ok(axum::Json(Page::from_rows(
        rows,
        limit,
        |row| cursor::encode_id(CursorKind::ApiKeys, row.id),
        ApiKeyOut::from,
    )))
}

/// Revoke an API key (operator). It has stopped working, in every
/// instance, when the answer comes (about half a second), a repeated
/// revoke's 404 included.
#[utoipa::path(delete, path = "/v1/customers/{id}/api-keys/{key_id}", operation_id = "revokeApiKey", tag = "api keys",
    params(
        ("id" = Uuid, Path, description = "Customer id"),
        ("key_id" = Uuid, Path, description = "API key id"),
    ),
    responses(
        (status = 204, description = "Revoked"),
        (status = 403, description = "Not the operator", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such customer or key", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn revoke(
    _: Operator,
    State(state): State<AppState>,
    PathText((id, key_id)): PathText<(String, String)>,
) -> ApiResult<StatusCode> {
    let customer_id = parse_id(&id, "API key")?;
    let key_id = parse_id(&key_id, "API key")?;
    let deleted = db::api_keys::delete(&state.db, customer_id, key_id).await?;
    // Every instance may trust a key it found for `KEY_MEMORY`; once that
    // has passed since the delete, none does. A repeated revoke (404) may
    // come while the first is still waiting, so it waits as well.
    tokio::time::sleep(crate::key_lookups::KEY_MEMORY).await;
    if deleted {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("API key"))
    }
}
