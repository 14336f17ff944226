//! News about a customer's webhooks (SPEC §13): when the system disables an
//! endpoint, or a delivery of an order event fails for good, the customer's
//! other endpoints that list the type get a delivery of the notice, written
//! in the transaction that records what happened, so a notice exists if
//! and only if its cause committed. Notices are not order events: they have
//! no order and no sequence (nothing waits behind them, they wait behind
//! nothing), are in no history or feed, and go through the usual dispatch,
//! attempt and settle, visible in each endpoint's delivery log.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::MySqlConnection;
use uuid::Uuid;

use crate::db;
use crate::db::deliveries::{DeliveryRow, NewDelivery};
use crate::db::webhook_endpoints::EndpointRow;
use crate::domain::notice::{self, FailedDelivery};
use crate::domain::EventType;

/// Writes a delivery of the notice `envelope` to each endpoint of
/// `endpoints` (the customer's enabled ones) that lists `event_type`,
/// except the endpoint `about`; returns how many.
async fn tell(
    tx: &mut MySqlConnection,
    endpoints: &[EndpointRow],
    about: Uuid,
    event_type: EventType,
    envelope: &Value,
    now: DateTime<Utc>,
) -> sqlx::Result<usize> {
    let event_id = envelope["id"]
        .as_str()
        .and_then(|id| Uuid::parse_str(id).ok())
        .unwrap_or_else(Uuid::now_v7);
    let payload = envelope.to_string();
    let rows: Vec<DeliveryRow> = endpoints
        .iter()
        .filter(|e| e.id != about && e.event_filter().includes(event_type))
        .map(|e| {
            let new = NewDelivery {
                endpoint_id: e.id,
                customer_id: e.customer_id,
                event_id,
                event_type: event_type.as_str(),
                order_id: None,
                sequence: None,
                payload: &payload,
                event_created_at: now,
            };
            DeliveryRow::pending(new, now, true)
        })
        .collect();
    db::deliveries::insert_many(&mut *tx, &rows).await?;
    Ok(rows.len())
}

/// `endpoint.disabled`, for an endpoint just disabled with `reason`.
pub(super) async fn endpoint_disabled(
    tx: &mut MySqlConnection,
    endpoint: &EndpointRow,
    reason: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<usize> {
    let envelope = notice::endpoint_disabled(
        Uuid::now_v7(),
        now,
        endpoint.customer_id,
        endpoint.id,
        &endpoint.url,
        reason,
    );
    let endpoints = db::webhook_endpoints::enabled_for(&mut *tx, &[endpoint.customer_id]).await?;
    let kind = EventType::EndpointDisabled;
    tell(tx, &endpoints, endpoint.id, kind, &envelope, now).await
}

/// `delivery.failed`, for deliveries that just failed for good.
pub(super) async fn deliveries_failed(
    tx: &mut MySqlConnection,
    failed: &[&FailedDelivery],
    now: DateTime<Utc>,
) -> sqlx::Result<usize> {
    let mut customers: Vec<Uuid> = failed.iter().map(|f| f.customer_id).collect();
    customers.sort();
    customers.dedup();
    let endpoints = db::webhook_endpoints::enabled_for(&mut *tx, &customers).await?;
    let mut told = 0;
    for failure in failed {
        let theirs: Vec<EndpointRow> = endpoints
            .iter()
            .filter(|e| e.customer_id == failure.customer_id)
            .cloned()
            .collect();
        let envelope = notice::delivery_failed(Uuid::now_v7(), now, failure);
        let kind = EventType::DeliveryFailed;
        told += tell(tx, &theirs, failure.endpoint_id, kind, &envelope, now).await?;
    }
    Ok(told)
}
