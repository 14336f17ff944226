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
pub mod portal_page;
pub mod portal_sessions;
pub mod preconditions;
pub mod webhooks;

use axum::Router;
use serde::Serialize;
use utoipa::ToSchema;

use crate::app::AppState;

/// Every route of the API, without middleware (see `app`).
pub fn router() -> Router<AppState> {
    Router::new()
        .merge(customers::router())
        .merge(api_keys::router())
        .merge(orders::router())
        .merge(events::router())
        .merge(event_types::router())
        .merge(webhooks::router())
        .merge(deliveries::router())
        .merge(outbox::router())
        .merge(portal_sessions::router())
        .merge(portal_page::router())
        .merge(ops::router())
}

/// One page of a list, newest first unless the route says otherwise.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub data: Vec<T>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from rows fetched with `LIMIT limit + 1`.
    pub fn from_rows<R>(
        mut rows: Vec<R>,
        limit: u32,
        cursor_of: impl Fn(&R) -> String,
        into: impl Fn(R) -> T,
    ) -> Page<T> {
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_cursor = if more {
            rows.last().map(cursor_of)
        } else {
            None
        };
        Page {
            data: rows.into_iter().map(into).collect(),
            next_cursor,
        }
    }
}

/// Default and largest page sizes of every list but the event feed.
pub const DEFAULT_LIMIT: u32 = 20;
pub const MAX_LIMIT: u32 = 100;
