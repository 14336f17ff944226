//! The event catalog (SPEC §10, `GET /v1/event-types`): every type the
//! system sends, what it means, the JSON Schema (2020-12) of its envelope and
//! an example envelope built by the same code that builds real ones.
//! `tests/api/event_types.rs` validates every envelope the system sends
//! against these schemas.

use chrono::{TimeZone, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use super::event::Change;
use super::notice::{self, FailedDelivery};
use super::order::AMENDABLE_FIELDS;
use super::order_status::OrderStatus;
use super::{Address, Event, EventType, Order, Parcel};

pub struct CatalogEntry {
    pub event_type: EventType,
    pub description: &'static str,
    /// Endpoints can subscribe to it (`webhook.test` goes to one endpoint on request).
    pub subscribable: bool,
    /// An endpoint created without `event_types` receives it.
    pub default: bool,
    pub schema: Value,
    pub example: Value,
}

pub fn catalog() -> Vec<CatalogEntry> {
    EventType::ALL
        .into_iter()
        .map(|event_type| CatalogEntry {
            event_type,
            description: description(event_type),
            subscribable: event_type != EventType::WebhookTest,
            default: event_type.is_order(),
            schema: schema(event_type),
            example: example(event_type),
        })
        .collect()
}

/// Plain text: the portal shows it as it is.
fn description(event_type: EventType) -> &'static str {
    match event_type {
        EventType::OrderCreated => {
            "An order was placed. Always the order's first event (sequence 1); its previous status is null."
        }
        EventType::OrderStatusChanged => {
            "An order moved to another status. The sequence grows by one with each of the order's events: order and de-duplicate by it. An endpoint's statuses filter picks which new statuses it gets."
        }
        EventType::OrderTrackingUpdated => {
            "Where the order is between two status changes, and when it should arrive: a carrier's scan, a new ETA. Delivered in its place among the order's other events."
        }
        EventType::OrderUpdated => {
            "The order was amended before pickup: a new delivery address, parcels or notes. Lists the fields that changed and their values before."
        }
        EventType::EndpointDisabled => {
            "One of your other endpoints was disabled by the system (every delivery failing for days, or a 410 Gone). Sent only to endpoints that list it, never to the one disabled."
        }
        EventType::DeliveryFailed => {
            "A delivery of an order event to one of your other endpoints failed for good after its last retry. Sent only to endpoints that list it, never to the one that failed."
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
        EventType::EndpointDisabled => json!({
            "type": "object",
            "required": ["customer_id", "endpoint_id", "url", "disabled_reason"],
            "properties": {
                "customer_id": uuid(),
                "endpoint_id": uuid(),
                "url": {"type": "string", "pattern": "^https?://[^?#]*$"},
                "disabled_reason": {"type": "string", "minLength": 1}
            },
            "additionalProperties": false
        }),
        EventType::DeliveryFailed => json!({
            "type": "object",
            "required": ["customer_id", "endpoint_id", "delivery_id", "event_id", "event_type",
                         "order_id", "sequence", "attempts", "last_response_status", "last_error"],
            "properties": {
                "customer_id": uuid(),
                "endpoint_id": uuid(),
                "delivery_id": uuid(),
                "event_id": uuid(),
                "event_type": {"enum": EventType::ALL.into_iter().filter(|t| t.is_order()).map(EventType::as_str).collect::<Vec<_>>()},
                "order_id": uuid(),
                "sequence": {"type": "integer", "minimum": 1},
                "attempts": {"type": "integer", "minimum": 1},
                "last_response_status": {"type": ["integer", "null"], "minimum": 100, "maximum": 599},
                "last_error": nullable_text()
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
            "parcels": parcels(),
            "status": {"enum": OrderStatus::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>()}
        }
    })
}

fn uuid() -> Value {
    json!({"type": "string", "format": "uuid", "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"})
}

fn nullable_timestamp() -> Value {
    json!({"oneOf": [timestamp(), {"type": "null"}]})
}

fn parcels() -> Value {
    let dimension = |max: u32| json!({"type": "integer", "minimum": 1, "maximum": max});
    json!({
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
    })
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
    let order = json!({
        "type": "object",
        "required": ["id", "customer_id", "reference", "status", "pickup", "delivery",
                     "parcels", "notes", "eta", "last_location", "version", "created_at",
                     "updated_at"],
        "properties": {
            "id": uuid(),
            "customer_id": uuid(),
            "reference": nullable_text(),
            "status": {"$ref": "#/$defs/status"},
            "pickup": {"$ref": "#/$defs/address"},
            "delivery": {"$ref": "#/$defs/address"},
            "parcels": {"$ref": "#/$defs/parcels"},
            "notes": nullable_text(),
            "eta": nullable_timestamp(),
            "last_location": nullable_text(),
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
    let mut properties = json!({
        "order_id": uuid(),
        "customer_id": uuid(),
        "sequence": sequence,
        "status": {"$ref": "#/$defs/status"},
        "order": order
    });
    let specific = match event_type {
        EventType::OrderTrackingUpdated => json!({
            "location": {"type": "string", "minLength": 1},
            "note": nullable_text(),
            "eta": nullable_timestamp(),
            "previous_eta": nullable_timestamp()
        }),
        EventType::OrderUpdated => json!({
            "changed": {
                "type": "array", "minItems": 1, "uniqueItems": true,
                "items": {"enum": AMENDABLE_FIELDS}
            },
            "previous": {
                "type": "object", "minProperties": 1,
                "properties": {
                    "delivery": {"$ref": "#/$defs/address"},
                    "parcels": {"$ref": "#/$defs/parcels"},
                    "notes": nullable_text()
                },
                "additionalProperties": false
            }
        }),
        _ => json!({
            "previous_status": if event_type == EventType::OrderCreated {
                json!({"type": "null"})
            } else {
                json!({"$ref": "#/$defs/status"})
            },
            "note": nullable_text(),
            "location": nullable_text()
        }),
    };
    let mut required = vec!["order_id", "customer_id", "sequence", "status", "order"];
    if let (Some(all), Some(specific)) = (properties.as_object_mut(), specific.as_object()) {
        for (name, schema) in specific {
            all.insert(name.clone(), schema.clone());
        }
    }
    if let Some(specific) = specific.as_object() {
        required.extend(specific.keys().map(String::as_str));
    }
    json!({
        "type": "object",
        "required": required,
        "properties": properties,
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
        eta: None,
        last_location: None,
        version: 1,
        created_at: at,
        updated_at: at,
    };
    let failed = FailedDelivery {
        customer_id: id(2),
        endpoint_id: id(4),
        delivery_id: id(5),
        event_id: id(6),
        event_type: EventType::OrderStatusChanged.as_str().into(),
        order_id: id(1),
        sequence: 3,
        attempts: 8,
        last_response_status: Some(503),
        last_error: None,
    };
    let mut event = match event_type {
        EventType::OrderCreated => Event::created(&order),
        EventType::OrderStatusChanged => {
            order.status = OrderStatus::PickedUp;
            order.version = 3;
            order.updated_at = at + chrono::Duration::hours(2);
            order.last_location = Some("Rotterdam".into());
            Event::status_changed(
                &order,
                OrderStatus::Confirmed,
                Some("Collected at dock 4".into()),
                Some("Rotterdam".into()),
            )
        }
        EventType::OrderTrackingUpdated => {
            order.status = OrderStatus::InTransit;
            order.version = 5;
            order.updated_at = at + chrono::Duration::hours(6);
            order.eta = Some(at + chrono::Duration::hours(26));
            order.last_location = Some("Antwerp depot".into());
            let change = Change::Tracking {
                status: order.status,
                location: "Antwerp depot".into(),
                note: Some("Sorted for the morning round".into()),
                eta: order.eta,
                previous_eta: Some(at + chrono::Duration::hours(30)),
            };
            Event::of(event_type, &order, change)
        }
        EventType::OrderUpdated => {
            order.version = 2;
            order.updated_at = at + chrono::Duration::minutes(20);
            order.notes = Some("Deliver to the back door".into());
            let mut previous = serde_json::Map::new();
            previous.insert("notes".into(), Value::Null);
            let change = Change::Amended {
                status: order.status,
                changed: vec!["notes".into()],
                previous,
            };
            Event::of(event_type, &order, change)
        }
        EventType::EndpointDisabled => {
            return notice::endpoint_disabled(
                id(3),
                at,
                id(2),
                id(4),
                "https://partner.example.com/webhooks/mechanica",
                "the endpoint answered 410 Gone",
            )
        }
        EventType::DeliveryFailed => return notice::delivery_failed(id(3), at, &failed),
        EventType::WebhookTest => return notice::test_envelope(id(3), id(2), id(4), at),
    };
    event.id = id(3);
    serde_json::to_value(event).unwrap_or_default()
}
