//! `/v1/event-types`: the event catalog, for any token (portal sessions too).

use axum::routing::get;
use axum::Router;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::domain::event_catalog;
use crate::error::ApiResult;
use crate::principal::Principal;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/event-types", get(list))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventTypeOut {
    #[serde(rename = "type")]
    #[schema(example = "order.status_changed")]
    pub event_type: &'static str,
    pub description: &'static str,
    /// Endpoints can subscribe to it; `webhook.test` is sent to one endpoint on request.
    pub subscribable: bool,
    /// An endpoint created without `event_types` receives it: every `order.*`
    /// type, including ones added later; the news about your webhooks only
    /// when listed.
    pub default: bool,
    /// JSON Schema (2020-12) of the envelope.
    #[schema(value_type = Object)]
    pub schema: Value,
    /// An example envelope, as a webhook body carries it.
    #[schema(value_type = Object)]
    pub example: Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventTypes {
    pub data: Vec<EventTypeOut>,
}

/// Every event type the system sends, with its envelope's JSON Schema and an example.
#[utoipa::path(get, path = "/v1/event-types", operation_id = "listEventTypes", tag = "webhooks",
    responses((status = 200, description = "The catalog", body = EventTypes)),
    security(("bearer" = [])))]
pub async fn list(_principal: Principal) -> ApiResult<axum::Json<EventTypes>> {
    let data = event_catalog::catalog()
        .into_iter()
        .map(|entry| EventTypeOut {
            event_type: entry.event_type.as_str(),
            description: entry.description,
            subscribable: entry.subscribable,
            default: entry.default,
            schema: entry.schema,
            example: entry.example,
        })
        .collect();
    Ok(axum::Json(EventTypes { data }))
}
