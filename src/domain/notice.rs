//! News about a customer's own webhooks (SPEC §13): `endpoint.disabled`
//! and `delivery.failed`, and the `webhook.test` envelope. They share the
//! event envelope but not the order's data, and are built here, the one
//! place both the worker and the catalog's examples take them from.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::EventType;

/// What `delivery.failed` says about the delivery that failed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailedDelivery {
    pub customer_id: Uuid,
    pub endpoint_id: Uuid,
    pub delivery_id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    pub order_id: Uuid,
    pub sequence: u32,
    pub attempts: u32,
    pub last_response_status: Option<u16>,
    pub last_error: Option<String>,
}

/// The `endpoint.disabled` envelope. The URL goes without its query or
/// fragment: they may carry a token.
pub fn endpoint_disabled(
    event_id: Uuid,
    at: DateTime<Utc>,
    customer_id: Uuid,
    endpoint_id: Uuid,
    url: &str,
    disabled_reason: &str,
) -> Value {
    envelope(
        event_id,
        EventType::EndpointDisabled,
        at,
        json!({
            "customer_id": customer_id,
            "endpoint_id": endpoint_id,
            "url": without_query(url),
            "disabled_reason": disabled_reason,
        }),
    )
}

/// The `delivery.failed` envelope.
pub fn delivery_failed(event_id: Uuid, at: DateTime<Utc>, failed: &FailedDelivery) -> Value {
    let data = serde_json::to_value(failed).unwrap_or_default();
    envelope(event_id, EventType::DeliveryFailed, at, data)
}

/// The envelope of a `webhook.test` event.
pub fn test_envelope(
    event_id: Uuid,
    customer_id: Uuid,
    endpoint_id: Uuid,
    at: DateTime<Utc>,
) -> Value {
    envelope(
        event_id,
        EventType::WebhookTest,
        at,
        json!({
            "customer_id": customer_id,
            "endpoint_id": endpoint_id,
            "message": "A test event from Mechanica: your endpoint is reachable and verifies signatures."
        }),
    )
}

fn envelope(event_id: Uuid, event_type: EventType, at: DateTime<Utc>, data: Value) -> Value {
    json!({
        "id": event_id,
        "type": event_type.as_str(),
        "timestamp": at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "data": data,
    })
}

/// The URL up to its query or fragment.
pub fn without_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_in_a_notice_loses_its_query_and_fragment() {
        for (url, shown) in [
            (
                "https://p.example/hook?token=s3cret",
                "https://p.example/hook",
            ),
            ("https://p.example/hook#x?y", "https://p.example/hook"),
            ("https://p.example/hook", "https://p.example/hook"),
        ] {
            assert_eq!(without_query(url), shown);
        }
        let sent = endpoint_disabled(
            Uuid::nil(),
            Utc::now(),
            Uuid::nil(),
            Uuid::nil(),
            "https://p.example/hook?token=s3cret",
            "gone",
        );
        assert!(!sent.to_string().contains("s3cret"), "{sent}");
    }
}
