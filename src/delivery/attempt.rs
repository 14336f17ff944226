//! Attempt: a leased delivery waits for its endpoint's slot, its turn under
//! the endpoint's rate limit and a worker-wide slot; then it is signed and
//! POSTed, and what came of it goes to the settle task as an `Outcome`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;
use uuid::Uuid;

use super::fan_out::Leased as LeasedDelivery;
use super::outcome::{self, Before, Decision, Health, Outcome, Response};
use super::pace::{self, Lane};
use super::recording::Kept;
use super::shared::{with_retries, Shared, HELD_PER_SLOT};
use super::signing;
use crate::db;
use crate::db::deliveries::{DeliveryRow, Settled, FAILED, PENDING, SUCCEEDED};
use crate::db::webhook_attempts::AttemptRow;
use crate::db::webhook_endpoints::EndpointRow;
use crate::domain::notice::FailedDelivery;
use crate::domain::time;
use crate::domain::webhook_headers::CustomHeaders;

/// Longest a held delivery waits for a slot before its lease is given back.
const HOLD_WAIT: Duration = Duration::from_secs(20);

/// A leased delivery's place in memory: its endpoint's and the worker's.
pub(super) struct Held {
    lane: Lane,
    _endpoint: OwnedSemaphorePermit,
    _worker: OwnedSemaphorePermit,
}

/// A place for one more leased delivery of this endpoint, if there is room.
pub(super) fn hold(shared: &Shared, endpoint_id: Uuid) -> Option<Held> {
    let per_endpoint = shared.config.max_in_flight_per_endpoint;
    let lane = shared
        .lanes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(endpoint_id)
        .or_insert_with(|| Lane {
            in_flight: Arc::new(Semaphore::new(per_endpoint)),
            held: Arc::new(Semaphore::new(per_endpoint * HELD_PER_SLOT)),
            pacer: Arc::default(),
        })
        .clone();
    let endpoint = lane.held.clone().try_acquire_owned().ok()?;
    let worker = shared.held.clone().try_acquire_owned().ok()?;
    Some(Held {
        lane,
        _endpoint: endpoint,
        _worker: worker,
    })
}

/// Which deliveries of a batch still committing exist: told once the
/// commit answered (`Recording::commit_or_rewrite`). An attempt made
/// meanwhile has its outcome written only if its delivery is among them;
/// if not, its event is fanned out and sent again (the same `webhook-id`),
/// and that first request goes unrecorded.
pub(super) type Committed = watch::Receiver<Option<Arc<Kept>>>;

/// Starts a leased delivery's attempt in a task of its own; it must start
/// by `start_by` if given (a Lambda invocation's), else within `HOLD_WAIT`.
pub(super) fn spawn_attempt(
    shared: &Arc<Shared>,
    leased: LeasedDelivery<Held>,
    start_by: Option<tokio::time::Instant>,
    committed: Option<Committed>,
) {
    let shared = shared.clone();
    tokio::spawn(async move {
        let endpoint = Some(leased.endpoint);
        run_held(
            &shared,
            leased.permit,
            leased.row,
            endpoint,
            None,
            start_by,
            committed,
        )
        .await;
    });
}

/// Waits for an attempt slot (its endpoint's, then the worker's) and, for
/// a rate-limited endpoint, its turn; attempts and hands the outcome to the
/// settle task. Gives the lease back if it cannot start by `start_by` (or
/// within `HOLD_WAIT`): a Lambda invocation never waits past its deadline.
pub(super) async fn run_held(
    shared: &Shared,
    held: Held,
    row: DeliveryRow,
    endpoint: Option<EndpointRow>,
    leased_at: Option<DateTime<Utc>>,
    start_by: Option<tokio::time::Instant>,
    committed: Option<Committed>,
) {
    let rate_limit = endpoint.as_ref().and_then(|e| e.rate_limit_per_second);
    let hold_until = tokio::time::Instant::now() + HOLD_WAIT;
    let deadline = start_by.map_or(hold_until, |by| by.min(hold_until));
    let slots = tokio::time::timeout_at(deadline, async {
        let endpoint = held.lane.in_flight.clone().acquire_owned().await.ok()?;
        // One delivery of the endpoint at a time takes and awaits a turn.
        let pacer = match rate_limit {
            Some(_) => Some(held.lane.pacer.clone().lock_owned().await),
            None => None,
        };
        let worker = shared.in_flight.clone().acquire_owned().await.ok()?;
        Some((endpoint, worker, pacer))
    })
    .await;
    let Ok(Some((_endpoint_slot, _worker_slot, mut pacer))) = slots else {
        give_back(shared, held, &row).await;
        return;
    };
    let leased_at = leased_at.unwrap_or_else(time::now);
    let outcome = loop {
        let leave_by = match rate_limit {
            Some(per_second) => match await_turn(shared, &row, per_second, deadline).await {
                Some(by) => Some(by),
                None => break None,
            },
            None => None,
        };
        drop(pacer.take());
        if let Some(outcome) = attempt(shared, &row, endpoint.as_ref(), leased_at, leave_by).await {
            break Some(outcome);
        }
        // Held up on its way out past its turn, and not sent: another turn.
        // Reserved without the pacer: each reservation is atomic on the
        // endpoint's row, and waiting for the pacer while holding a worker
        // slot could hold up the delivery that has it.
        shared.metrics.turn_missed();
    };
    let Some(outcome) = outcome else {
        // No turn came in time: the lease goes back, no turn taken.
        give_back(shared, held, &row).await;
        return;
    };
    let kept = match committed {
        Some(mut committed) => match committed.wait_for(Option::is_some).await {
            Ok(kept) => kept.as_ref().is_some_and(|kept| kept.holds(row.id)),
            Err(_) => false,
        },
        None => true,
    };
    if kept {
        let _ = shared.settles.send(outcome);
    } else {
        tracing::info!(delivery_id = %row.id, event_id = %row.event_id, "a request went out while its delivery's commit failed: not recorded; the event is fanned out and sent again");
    }
    drop(held);
    room_freed(shared);
}

/// Reserves the endpoint's next turn, now that the delivery can start, and
/// waits for it: never two attempts to the endpoint closer than the
/// interval, from any process. A turn found passed by more than the pace
/// allows is left unused and another reserved. The time by which the
/// request must leave, or `None` if no turn comes by `deadline` (or the
/// reservation failed).
async fn await_turn(
    shared: &Shared,
    row: &DeliveryRow,
    per_second: u32,
    deadline: tokio::time::Instant,
) -> Option<tokio::time::Instant> {
    let interval = pace::interval(per_second);
    loop {
        let reserve = || async {
            let within = deadline.saturating_duration_since(tokio::time::Instant::now());
            let mut conn = shared.pool.acquire().await?;
            db::webhook_endpoints::reserve_turn(&mut conn, row.endpoint_id, interval, within).await
        };
        let turn = match with_retries(reserve).await {
            Ok(Some(turn)) => turn,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(error = %e, endpoint_id = %row.endpoint_id, "reserving a turn under the endpoint's rate limit failed; the lease goes back");
                return None;
            }
        };
        let now = tokio::time::Instant::now();
        let at = now + Duration::from_micros(turn.in_us.max(0) as u64);
        // Waiting from now could be late by as long as the answer took.
        let late_already = Duration::from_micros(turn.in_us.min(0).unsigned_abs()) + turn.read_in;
        if pace::still_on_time(late_already) {
            tokio::time::sleep_until(at).await;
            let late = late_already + tokio::time::Instant::now().saturating_duration_since(at);
            if pace::still_on_time(late) {
                return Some(tokio::time::Instant::now() + pace::LATE_AT_MOST.saturating_sub(late));
            }
        }
        shared.metrics.turn_missed();
    }
}

/// Gives a held delivery's lease back: it did not start.
async fn give_back(shared: &Shared, held: Held, row: &DeliveryRow) {
    let ids = [row.id];
    if let Err(e) = with_retries(|| db::deliveries::release(&shared.pool, &ids)).await {
        tracing::warn!(error = %e, "giving a lease back failed; it runs out by itself");
    }
    drop(held);
    room_freed(shared);
}

/// Wakes the dispatcher if its last pass left deliveries for lack of room.
fn room_freed(shared: &Shared) {
    if shared.short_of_room.swap(false, Ordering::SeqCst) {
        shared.wake.notify_one();
    }
}

/// One attempt of one leased delivery; `None` if its request would have
/// left after `leave_by` (its turn under a rate limit) and was not sent.
pub(super) async fn attempt(
    shared: &Shared,
    row: &DeliveryRow,
    endpoint: Option<&EndpointRow>,
    leased_at: DateTime<Utc>,
    leave_by: Option<tokio::time::Instant>,
) -> Option<Outcome> {
    let manual = row.manual_requested_at.is_some();
    let endpoint = match endpoint {
        Some(endpoint) if endpoint.enabled || manual => endpoint,
        other => {
            let reason = if other.is_some() {
                "the endpoint is disabled"
            } else {
                "the endpoint was deleted"
            };
            return Some(outcome::unattempted(row, leased_at, reason.into()));
        }
    };
    let secrets = match signing::live_secrets(&shared.secrets, endpoint, time::now()) {
        Ok(secrets) => secrets,
        Err(e) => {
            tracing::error!(error = %e, endpoint_id = %endpoint.id, "cannot open the endpoint's signing secret");
            return Some(outcome::unattempted(
                row,
                leased_at,
                format!("the endpoint's signing secret cannot be opened: {e}"),
            ));
        }
    };
    let started_at = time::now();
    let timestamp = started_at.timestamp();
    let id = row.event_id.to_string();
    let signature = signing::signature_header(
        &secrets.iter().collect::<Vec<_>>(),
        &id,
        timestamp,
        row.payload.as_bytes(),
    );
    let mut headers = HeaderMap::new();
    for (name, value) in CustomHeaders::from_stored(endpoint.headers.as_deref()).iter() {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    for (name, value) in [
        ("webhook-id", id),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signature),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    // In the trace of the event's fan-out (and so of the request that made
    // the event); ids and the status only, never the URL.
    let span = if crate::telemetry::exporting_traces() {
        let span = tracing::info_span!(
            "webhook attempt",
            otel.kind = "client",
            endpoint_id = %endpoint.id,
            event_id = %row.event_id,
            event_type = %row.event_type,
            attempt = row.attempts + 1,
            http.response.status_code = tracing::field::Empty,
        );
        crate::telemetry::continue_trace(&span, row.traceparent.as_deref());
        span
    } else {
        tracing::Span::none()
    };
    let payload = row.payload.clone();
    let client = &shared.client;
    let result = async {
        match leave_by {
            Some(by) => client.attempt_by(&endpoint.url, headers, payload, by).await,
            None => client.attempt(&endpoint.url, headers, payload).await,
        }
    }
    .instrument(span.clone())
    .await;
    if result.left_late {
        return None;
    }
    if let Some(status) = result.response_status {
        span.record("http.response.status_code", status);
    }
    drop(span);
    let succeeded = result.succeeded();
    let now = time::now();
    let since_commit = succeeded
        .then(|| (now - row.event_created_at).to_std().ok())
        .flatten();
    shared
        .metrics
        .attempt(succeeded, result.duration, since_commit);
    let before = Before {
        status: status_name(&row.status),
        attempts: row.attempts,
        manual,
        next_attempt_at: row.next_attempt_at,
    };
    let Decision {
        status,
        attempts,
        next_attempt_at,
    } = outcome::decide(
        before,
        Response {
            status: result.response_status,
            retry_after: result.retry_after,
        },
        shared.config.retry_schedule.after(row.attempts + 1),
        now,
    );
    let health = if succeeded {
        Health::Succeeded {
            was_failing: endpoint.failing_since.is_some(),
        }
    } else if result.response_status == Some(410) {
        Health::Gone
    } else {
        Health::Failed
    };
    // Pending until now, and an order event's: the customer's other
    // endpoints may want to know (a hand-made retry of a failed delivery
    // that fails again tells nobody twice).
    let failed = match (row.order_id, row.sequence) {
        (Some(order_id), Some(sequence)) if status == FAILED && row.status == PENDING => {
            Some(FailedDelivery {
                customer_id: row.customer_id,
                endpoint_id: row.endpoint_id,
                delivery_id: row.id,
                event_id: row.event_id,
                event_type: row.event_type.clone(),
                order_id,
                sequence,
                attempts,
                last_response_status: result.response_status,
                last_error: result.error.clone(),
            })
        }
        _ => None,
    };
    Some(Outcome {
        settled: Settled {
            id: row.id,
            lease_id: row.lease_id.unwrap_or_default(),
            leased_at,
            status,
            attempts,
            last_response_status: result.response_status,
            last_error: result.error.clone(),
            next_attempt_at,
        },
        attempt: Some(AttemptRow {
            id: Uuid::now_v7(),
            delivery_id: row.id,
            attempt: attempts,
            started_at,
            duration_ms: u32::try_from(result.duration.as_millis()).unwrap_or(u32::MAX),
            response_status: result.response_status,
            response_body: result.response_body,
            error: result.error,
        }),
        endpoint_id: row.endpoint_id,
        order_id: row.order_id,
        health,
        failed,
    })
}

fn status_name(status: &str) -> &'static str {
    match status {
        SUCCEEDED => SUCCEEDED,
        FAILED => FAILED,
        _ => PENDING,
    }
}
