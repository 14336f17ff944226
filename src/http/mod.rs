//! The HTTP API: one module per resource, each with its request and
//! response types, handlers and `router()`.

pub mod api_keys;
pub mod customers;
pub mod deliveries;
pub mod event_types;
pub mod events;
pub mod extract;
pub mod idempotent;
pub mod openapi;
pub mod ops;
pub mod orders;
pub mod outbox;
pub mod page;
pub mod portal_page;
pub mod portal_sessions;
pub mod preconditions;
pub mod webhook_secrets;
pub mod webhooks;

use axum::Router;

use crate::state::AppState;

/// Every route of the API, without middleware (see `app`).
pub fn router() -> Router<AppState> {
    Router::new()
        .merge(customers::router())
        .merge(api_keys::router())
        .merge(orders::router())
        .merge(events::router())
        .merge(event_types::router())
        .merge(webhooks::router())
        .merge(webhook_secrets::router())
        .merge(deliveries::router())
        .merge(outbox::router())
        .merge(portal_sessions::router())
        .merge(portal_page::router())
        .merge(ops::router())
}
