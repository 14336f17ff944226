//! The event envelope of SPEC §5: the history item, the outbox row's payload,
//! the SQS message body and the feed item are all this one shape. The
//! notices about a customer's webhooks (`endpoint.*`, `delivery.*`) share
//! the envelope but not the order's data: they are built in `notice`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use super::order::Order;
use super::order_status::OrderStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum EventType {
    #[serde(rename = "order.created")]
    OrderCreated,
    #[serde(rename = "order.status_changed")]
    OrderStatusChanged,
    #[serde(rename = "order.tracking_updated")]
    OrderTrackingUpdated,
    #[serde(rename = "order.updated")]
    OrderUpdated,
    /// The system disabled one of the customer's endpoints.
    #[serde(rename = "endpoint.disabled")]
    EndpointDisabled,
    /// A delivery of an `order.*` event ended `failed`.
    #[serde(rename = "delivery.failed")]
    DeliveryFailed,
    /// Sent by `POST /v1/webhooks/{id}/test` to that endpoint only.
    #[serde(rename = "webhook.test")]
    WebhookTest,
}

impl EventType {
    pub const ALL: [EventType; 7] = [
        EventType::OrderCreated,
        EventType::OrderStatusChanged,
        EventType::OrderTrackingUpdated,
        EventType::OrderUpdated,
        EventType::EndpointDisabled,
        EventType::DeliveryFailed,
        EventType::WebhookTest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::OrderCreated => "order.created",
            EventType::OrderStatusChanged => "order.status_changed",
            EventType::OrderTrackingUpdated => "order.tracking_updated",
            EventType::OrderUpdated => "order.updated",
            EventType::EndpointDisabled => "endpoint.disabled",
            EventType::DeliveryFailed => "delivery.failed",
            EventType::WebhookTest => "webhook.test",
        }
    }

    pub fn parse(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// An event of an order's life: in its history and the feed, ordered
    /// by its sequence.
    pub fn is_order(self) -> bool {
        self.as_str().starts_with("order.")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub event_type: EventType,
    #[serde(with = "super::time::millis")]
    #[schema(value_type = String, format = DateTime, example = "2026-11-24T19:20:56.123Z")]
    pub timestamp: DateTime<Utc>,
    pub data: OrderEventData,
    /// The W3C `traceparent` of the request that made it: stored beside
    /// the envelope, never in it.
    #[serde(skip)]
    pub traceparent: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OrderEventData {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    /// Counts the order's events from 1: receivers order and de-duplicate by it.
    #[schema(example = 3)]
    pub sequence: u32,
    /// What this event says happened; its fields depend on the type.
    #[serde(flatten)]
    pub change: Change,
    /// The whole order as it is after this event.
    pub order: Order,
}

/// The fields of an order event beyond the order and its sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Change {
    /// `order.created` and `order.status_changed`.
    Status {
        /// Null on `order.created`.
        #[schema(required = true)]
        previous_status: Option<OrderStatus>,
        status: OrderStatus,
        #[schema(required = true)]
        note: Option<String>,
        #[schema(required = true)]
        location: Option<String>,
    },
    /// `order.tracking_updated`.
    Tracking {
        status: OrderStatus,
        location: String,
        #[schema(required = true)]
        note: Option<String>,
        #[serde(with = "super::time::millis_option")]
        #[schema(value_type = Option<String>, format = DateTime, required = true)]
        eta: Option<DateTime<Utc>>,
        #[serde(with = "super::time::millis_option")]
        #[schema(value_type = Option<String>, format = DateTime, required = true)]
        previous_eta: Option<DateTime<Utc>>,
    },
    /// `order.updated`.
    Amended {
        status: OrderStatus,
        /// The fields the amendment changed, sorted.
        changed: Vec<String>,
        /// Each changed field's value before the amendment.
        #[schema(value_type = Object)]
        previous: Map<String, Value>,
    },
}

impl Event {
    /// The event recording that `order` was created (its sequence is 1).
    pub fn created(order: &Order) -> Event {
        Event::of(
            EventType::OrderCreated,
            order,
            Change::Status {
                previous_status: None,
                status: order.status,
                note: None,
                location: None,
            },
        )
    }

    /// The event recording that `order` (as it is now) left `previous`.
    pub fn status_changed(
        order: &Order,
        previous: OrderStatus,
        note: Option<String>,
        location: Option<String>,
    ) -> Event {
        Event::of(
            EventType::OrderStatusChanged,
            order,
            Change::Status {
                previous_status: Some(previous),
                status: order.status,
                note,
                location,
            },
        )
    }

    /// The event of a change to `order` (as it is now), stamped with its
    /// version and update time.
    pub fn of(event_type: EventType, order: &Order, change: Change) -> Event {
        Event {
            id: Uuid::now_v7(),
            event_type,
            timestamp: order.updated_at,
            data: OrderEventData {
                order_id: order.id,
                customer_id: order.customer_id,
                sequence: order.version,
                change,
                order: order.clone(),
            },
            traceparent: None,
        }
    }

    /// The event, made in the trace `traceparent` names.
    pub fn traced(mut self, traceparent: Option<String>) -> Event {
        self.traceparent = traceparent;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_parses_back_from_its_name() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            assert_eq!(
                serde_json::to_value(t).unwrap(),
                Value::String(t.as_str().into())
            );
        }
        let order_types: Vec<&str> = EventType::ALL
            .into_iter()
            .filter(|t| t.is_order())
            .map(EventType::as_str)
            .collect();
        assert_eq!(
            order_types,
            [
                "order.created",
                "order.status_changed",
                "order.tracking_updated",
                "order.updated"
            ]
        );
    }
}
