//! Operations: liveness, readiness and metrics.

use std::time::Duration;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use crate::auth::hash_token;
use crate::error::{ApiError, ApiResult, Problem};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", operation_id = "getHealth", tag = "operations",
    responses((status = 200, description = "Up", body = Health)))]
pub async fn healthz() -> axum::Json<Health> {
    axum::Json(Health { status: "ok" })
}

/// The database is reachable.
#[utoipa::path(get, path = "/readyz", operation_id = "getReadiness", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "The database is unreachable", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn readyz(State(state): State<AppState>) -> ApiResult<axum::Json<Health>> {
    // Pooled connections the server dropped (a restart, a failover, a
    // KILL) each fail once and are discarded; trying past them (at most one
    // try per pooled connection, plus a fresh one) makes the probe answer
    // for the database, not for stale connections.
    let db = &state.db;
    let ping = async {
        let mut tries = db.size() + 1;
        loop {
            match sqlx::query("SELECT 1").execute(db).await {
                Ok(_) => return Ok(()),
                Err(e) if tries > 1 && is_connection_lost(&e) => tries -= 1,
                Err(e) => return Err(e),
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(2), ping).await {
        Ok(Ok(())) => Ok(axum::Json(Health { status: "ready" })),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness check failed");
            Err(ApiError::Unavailable("the database is unreachable"))
        }
        Err(_) => Err(ApiError::Unavailable("the database did not answer in time")),
    }
}

fn is_connection_lost(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Io(_) | sqlx::Error::Protocol(_))
}

/// Prometheus metrics. Needs `Authorization: Bearer $METRICS_TOKEN` when that is set.
#[utoipa::path(get, path = "/metrics", operation_id = "getMetrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
        (status = 401, description = "`METRICS_TOKEN` is set and was not sent", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    if let Some(expected) = &state.metrics_token_hash {
        let sent = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(hash_token);
        if !sent.is_some_and(|sent| bool::from(sent.ct_eq(expected))) {
            return Err(ApiError::Unauthorized);
        }
    }
    let mut text = state.metrics.render();
    text.push_str(&pool_metrics(&state));
    // The backlog is read from the database; without one, it is left out.
    if let Ok((count, age)) = crate::db::order_events::outbox_backlog(&state.db).await {
        text.push_str(&format!(
            "# HELP outbox_backlog Events committed but not yet published to SQS.\n\
             # TYPE outbox_backlog gauge\n\
             outbox_backlog {count}\n\
             # HELP outbox_oldest_age_seconds Age of the oldest unpublished event.\n\
             # TYPE outbox_oldest_age_seconds gauge\n\
             outbox_oldest_age_seconds {age}\n"
        ));
    }
    if let Ok(parked) = crate::db::outbox_parked::count(&state.db).await {
        text.push_str(&format!(
            "# HELP outbox_parked Events SQS refused for good (and events held behind them), waiting for the operator.\n\
             # TYPE outbox_parked gauge\n\
             outbox_parked {parked}\n"
        ));
    }
    Ok(([(CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

fn pool_metrics(state: &AppState) -> String {
    format!(
        "# HELP db_pool_connections Open database connections.\n\
         # TYPE db_pool_connections gauge\n\
         db_pool_connections {}\n\
         # HELP db_pool_idle_connections Idle database connections.\n\
         # TYPE db_pool_idle_connections gauge\n\
         db_pool_idle_connections {}\n",
        state.db.size(),
        state.db.num_idle()
    )
}
