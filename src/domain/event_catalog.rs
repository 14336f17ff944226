//! The event catalog (SPEC §10, `GET /v1/event-types`): every type the
//! system sends, what it means, the JSON Schema (2020-12) of its envelope and
//! an example envelope built by the same code that builds real ones.
//! `tests/api/event_types.rs` validates every envelope the system sends
//! against these schemas.

use chrono::{TimeZone, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use super::order_status::OrderStatus;
use super::webhook::SUBSCRIBABLE;
use super::{Address, Event, EventType, Order, Parcel};

pub struct CatalogEntry {
    pub event_type: EventType,
    pub description: &'static str,
    /// Endpoints can subscribe to it (`webhook.test` goes to one endpoint on request).
    pub subscribable: bool,
    pub schema: Value,
    pub example: Value,
}

pub fn catalog() -> Vec<CatalogEntry> {
    [
        EventType::OrderCreated,
        EventType::OrderStatusChanged,
        EventType::WebhookTest,
    ]
    .into_iter()
    .map(|event_type| CatalogEntry {
        event_type,
        description: description(event_type),
        subscribable: SUBSCRIBABLE.contains(&event_type),
        schema: schema(event_type),
        example: example(event_type),
    })
    .collect()
}

fn description(event_type: EventType) -> &'static str {
    match event_type {
        EventType::OrderCreated => {
            "An order was placed. Always the order's first event (sequence 1); `previous_status` is null."
        }
        EventType::OrderStatusChanged => {
            "An order moved to another status. `sequence` grows by one with each of the order's events: order and de-duplicate by it."
        }
        EventType::WebhookTest => {
            "Sent to one endpoint when someone asks for a test event: the endpoint is reachable and verifies signatures."
        }
    }
}

fn schema(event_type: EventType) -> Value {
    let data = match event_type {
        EventType::WebhookTest => json!({
            "type": "object",
            "required": ["customer_id", "endpoint_id", "message"],
            "properties": {
                "customer_id": uuid(),
                "endpoint_id": uuid(),
                "message": {"type": "string"}
            },
            "additionalProperties": false
        }),
        _ => order_event_data(event_type),
    };
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": event_type.as_str(),
        "type": "object",
        "required": ["id", "type", "timestamp", "data"],
        "properties": {
            "id": uuid(),
            "type": {"const": event_type.as_str()},
            "timestamp": timestamp(),
            "data": data
        },
        "additionalProperties": false,
        "$defs": {
            "address": address(),
            "status": {"enum": OrderStatus::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>()}
        }
    })
}

fn uuid() -> Value {
    json!({"type": "string", "format": "uuid", "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"})
}

fn timestamp() -> Value {
    json!({"type": "string", "format": "date-time", "pattern": "^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}\\.\\d{3}Z$"})
}

fn nullable_text() -> Value {
    json!({"type": ["string", "null"]})
}

fn address() -> Value {
    let line = json!({"type": "string", "minLength": 1});
    json!({
        "type": "object",
        "required": ["name", "line1", "city", "postal_code", "country"],
        "properties": {
            "name": line, "line1": line, "line2": {"type": "string"},
            "city": line, "postal_code": line,
            "country": {"type": "string", "pattern": "^[A-Z]{2}$"}
        },
        "additionalProperties": false
    })
}

fn order_event_data(event_type: EventType) -> Value {
    let dimension = |max: u32| json!({"type": "integer", "minimum": 1, "maximum": max});
    let previous_status = if event_type == EventType::OrderCreated {
        json!({"type": "null"})
    } else {
        json!({"$ref": "#/$defs/status"})
    };
    let order = json!({
        "type": "object",
        "required": ["id", "customer_id", "reference", "status", "pickup", "delivery",
                     "parcels", "notes", "version", "created_at", "updated_at"],
        "properties": {
            "id": uuid(),
            "customer_id": uuid(),
            "reference": nullable_text(),
            "status": {"$ref": "#/$defs/status"},
            "pickup": {"$ref": "#/$defs/address"},
            "delivery": {"$ref": "#/$defs/address"},
            "parcels": {
                "type": "array", "minItems": 1, "maxItems": 100,
                "items": {
                    "type": "object",
                    "required": ["weight_grams", "length_mm", "width_mm", "height_mm"],
                    "properties": {
                        "weight_grams": dimension(1_000_000),
                        "length_mm": dimension(10_000),
                        "width_mm": dimension(10_000),
                        "height_mm": dimension(10_000)
                    },
                    "additionalProperties": false
                }
            },
            "notes": nullable_text(),
            "version": {"type": "integer", "minimum": 1},
            "created_at": timestamp(),
            "updated_at": timestamp()
        },
        "additionalProperties": false
    });
    let sequence = if event_type == EventType::OrderCreated {
        json!({"const": 1})
    } else {
        json!({"type": "integer", "minimum": 2})
    };
    json!({
        "type": "object",
        "required": ["order_id", "customer_id", "sequence", "previous_status", "status",
                     "note", "location", "order"],
        "properties": {
            "order_id": uuid(),
            "customer_id": uuid(),
            "sequence": sequence,
            "previous_status": previous_status,
            "status": {"$ref": "#/$defs/status"},
            "note": nullable_text(),
            "location": nullable_text(),
            "order": order
        },
        "additionalProperties": false
    })
}

fn example(event_type: EventType) -> Value {
    let at = Utc.with_ymd_and_hms(2026, 11, 24, 19, 20, 56).unwrap();
    let id = |n: u128| Uuid::from_u128(0x0193_5f3e_7a00_7000_8000_0000_0000_0000 | n);
    let address = |name: &str, city: &str, country: &str| Address {
        name: name.into(),
        line1: "12 Dock Road".into(),
        line2: None,
        city: city.into(),
        postal_code: "3011 AA".into(),
        country: country.into(),
    };
    let mut order = Order {
        id: id(1),
        customer_id: id(2),
        reference: Some("PO-1042".into()),
        status: OrderStatus::Pending,
        pickup: address("Empress Products Ltd", "Rotterdam", "NL"),
        delivery: address("Northwind Traders", "Antwerp", "BE"),
        parcels: vec![Parcel {
            weight_grams: 1200,
            length_mm: 300,
            width_mm: 200,
            height_mm: 100,
        }],
        notes: None,
        version: 1,
        created_at: at,
        updated_at: at,
    };
    let mut event = match event_type {
        EventType::OrderCreated => Event::created(&order),
        EventType::OrderStatusChanged => {
            order.status = OrderStatus::PickedUp;
            order.version = 3;
            order.updated_at = at + chrono::Duration::hours(2);
            Event::status_changed(
                &order,
                OrderStatus::Confirmed,
                Some("Collected at dock 4".into()),
                Some("Rotterdam".into()),
            )
        }
        EventType::WebhookTest => return test_envelope(id(3), id(2), id(4), at),
    };
    event.id = id(3);
    serde_json::to_value(event).unwrap_or_default()
}

/// The envelope of a `webhook.test` event (built here so the route and the
/// catalog's example are one shape).
pub fn test_envelope(
    event_id: Uuid,
    customer_id: Uuid,
    endpoint_id: Uuid,
    at: chrono::DateTime<Utc>,
) -> Value {
    json!({
        "id": event_id,
        "type": EventType::WebhookTest.as_str(),
        "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": {
            "customer_id": customer_id,
            "endpoint_id": endpoint_id,
            "message": "A test event from Mechanica: your endpoint is reachable and verifies signatures."
        }
    })
}
