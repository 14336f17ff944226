//! `/v1/events`: the event feed for partners that pull. Events in commit
//! order (see `sequencer`), oldest first, with a long poll.

use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::time::Instant;
use utoipa::ToSchema;
use uuid::Uuid;

use super::extract::{Invalid, Params};
use crate::db;
use crate::domain::cursor;
use crate::domain::Event;
use crate::error::{ApiError, ApiResult, FieldError, Problem};
use crate::principal::Principal;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/events", get(feed))
}

pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;
pub const MAX_WAIT_SECS: u64 = 30;
/// How often a long poll looks for events sequenced by another instance.
const RECHECK: Duration = Duration::from_millis(250);

/// A page of the feed. `next_cursor` is never null: at the end it is the
/// position after the last event, to poll from.
#[derive(Debug, Serialize, ToSchema)]
pub struct FeedPage {
    #[schema(value_type = Vec<Event>)]
    pub data: Vec<Box<RawValue>>,
    pub next_cursor: String,
}

/// The caller's events in commit order, oldest first. Following
/// `next_cursor` from the start sees every event exactly once, in order.
#[utoipa::path(get, path = "/v1/events", operation_id = "listEvents", tag = "events",
    params(
        ("after" = Option<String>, Query, min_length = 1, description = "`next_cursor` of the previous page; absent: from the beginning"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "1..1000, default 100"),
        ("wait" = Option<u64>, Query, minimum = 0, maximum = 30, description = "0..30 seconds to hold the request open until an event arrives; default 0"),
        ("customer_id" = Option<Uuid>, Query, description = "Operator only: one customer's feed (default: every customer's)"),
    ),
    responses(
        (status = 200, description = "A page of events (possibly empty)", body = FeedPage),
        (status = 422, description = "Bad query parameter, or a cursor that is not yours", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn feed(
    principal: Principal,
    State(state): State<AppState>,
    params: Params,
) -> ApiResult<axum::Json<FeedPage>> {
    let mut invalid = Invalid::default();
    let requested = invalid.take(params.uuid("customer_id"));
    let limit = invalid.take(params.limit(DEFAULT_LIMIT, MAX_LIMIT));
    let wait = invalid.take(wait_param(params.get("wait")));
    invalid.finish()?;
    let customer_id = principal.scope(requested)?;
    let reader = customer_id.unwrap_or(Uuid::nil());
    let after = match params.get("after") {
        None => 0,
        Some(raw) => cursor::decode_feed(&state.cursor_key, reader, raw)
            .ok_or_else(|| ApiError::invalid("after", "is not a cursor this feed gave you"))?,
    };

    let deadline = Instant::now() + wait;
    // Subscribed before the first read, so no wake-up between the two is lost.
    let mut advanced = state.signals.watch_feed();
    // Read your writes: events committed before this request (by any
    // instance) are numbered now rather than at the relay's next pass.
    crate::sequencer::catch_up(&state.pipeline_db).await?;
    let events = loop {
        let events =
            db::order_events::feed(&state.db, customer_id, after, i64::from(limit)).await?;
        let now = Instant::now();
        if !events.is_empty() || now >= deadline {
            break events;
        }
        tokio::select! {
            _ = advanced.changed() => {}
            _ = tokio::time::sleep(RECHECK.min(deadline - now)) => {}
        }
    };

    let last = events.last().map_or(after, |e| e.feed_position);
    let data = events
        .into_iter()
        .map(|e| RawValue::from_string(e.payload))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::internal("stored event is not JSON", e))?;
    Ok(axum::Json(FeedPage {
        data,
        next_cursor: cursor::encode_feed(&state.cursor_key, reader, last),
    }))
}

fn wait_param(raw: Option<&str>) -> Result<Duration, FieldError> {
    match raw {
        None => Ok(Duration::ZERO),
        Some(raw) => raw
            .parse::<u64>()
            .ok()
            .filter(|s| *s <= MAX_WAIT_SECS)
            .map(Duration::from_secs)
            .ok_or_else(|| {
                FieldError::new(
                    "wait",
                    format!("must be whole seconds from 0 to {MAX_WAIT_SECS}"),
                )
            }),
    }
}
