//! The event envelope of SPEC §5: the history item, the outbox row's payload,
//! the SQS message body and the feed item are all this one shape.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
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
    /// Sent by `POST /v1/webhooks/{id}/test` to that endpoint only.
    #[serde(rename = "webhook.test")]
    WebhookTest,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::OrderCreated => "order.created",
            EventType::OrderStatusChanged => "order.status_changed",
            EventType::WebhookTest => "webhook.test",
        }
    }

    pub fn parse(name: &str) -> Option<EventType> {
        [
            EventType::OrderCreated,
            EventType::OrderStatusChanged,
            EventType::WebhookTest,
        ]
        .into_iter()
        .find(|t| t.as_str() == name)
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OrderEventData {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    /// Counts the order's events from 1: receivers order and de-duplicate by it.
    #[schema(example = 3)]
    pub sequence: u32,
    /// Null on `order.created`.
    pub previous_status: Option<OrderStatus>,
    pub status: OrderStatus,
    pub note: Option<String>,
    pub location: Option<String>,
    /// The whole order as it is after this event.
    pub order: Order,
}

impl Event {
    /// The event recording that `order` was created (its sequence is 1).
    pub fn created(order: &Order) -> Event {
        Event::new(EventType::OrderCreated, order, None, None, None)
    }

    /// The event recording that `order` (as it is now) left `previous`.
    pub fn status_changed(
        order: &Order,
        previous: OrderStatus,
        note: Option<String>,
        location: Option<String>,
    ) -> Event {
        Event::new(
            EventType::OrderStatusChanged,
            order,
            Some(previous),
            note,
            location,
        )
    }

    fn new(
        event_type: EventType,
        order: &Order,
        previous_status: Option<OrderStatus>,
        note: Option<String>,
        location: Option<String>,
    ) -> Event {
        Event {
            id: Uuid::now_v7(),
            event_type,
            timestamp: order.updated_at,
            data: OrderEventData {
                order_id: order.id,
                customer_id: order.customer_id,
                sequence: order.version,
                previous_status,
                status: order.status,
                note,
                location,
                order: order.clone(),
            },
        }
    }
}
