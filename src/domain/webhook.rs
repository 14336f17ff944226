//! Webhook endpoint values: which event types an endpoint receives, and
//! signing secrets.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::{EventType, OrderStatus};

pub const SECRET_PREFIX: &str = "whsec_";
pub const MAX_ENDPOINTS_PER_CUSTOMER: i64 = 20;
/// The largest `rate_limit_per_second` an endpoint may ask for.
pub const MAX_RATE_LIMIT: u32 = 10_000;

/// The event types an endpoint can subscribe to: every type but
/// `webhook.test`, which is sent to one endpoint on request.
pub fn subscribable() -> impl Iterator<Item = EventType> {
    EventType::ALL
        .into_iter()
        .filter(|t| *t != EventType::WebhookTest)
}

/// The event types an endpoint receives, stored as two bit sets:
/// `orders` (column `event_mask`) a bit per `order.*` type, every bit set
/// for "all", so an endpoint that asked for all also gets order types added
/// later; `notices` (column `notice_mask`) a bit per news about the
/// customer's webhooks, none unless listed (SPEC §13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventFilter {
    pub orders: u32,
    pub notices: u32,
}

impl EventFilter {
    /// What an endpoint created without `event_types` receives.
    pub const DEFAULT: EventFilter = EventFilter {
        orders: u32::MAX,
        notices: 0,
    };

    /// The type's bit in (`orders`, `notices`).
    fn bits(event_type: EventType) -> (u32, u32) {
        match event_type {
            EventType::OrderCreated => (1, 0),
            EventType::OrderStatusChanged => (2, 0),
            EventType::OrderTrackingUpdated => (4, 0),
            EventType::OrderUpdated => (8, 0),
            EventType::EndpointDisabled => (0, 1),
            EventType::DeliveryFailed => (0, 2),
            // Never subscribed to: sent to one endpoint by request.
            EventType::WebhookTest => (0, 0),
        }
    }

    /// Parses requested type names; absent or empty means the default.
    pub fn parse(names: Option<&[String]>) -> Result<EventFilter, String> {
        let Some(names) = names.filter(|n| !n.is_empty()) else {
            return Ok(EventFilter::DEFAULT);
        };
        let mut filter = EventFilter {
            orders: 0,
            notices: 0,
        };
        for name in names {
            let event_type = subscribable().find(|t| t.as_str() == name).ok_or_else(|| {
                let known: Vec<&str> = subscribable().map(EventType::as_str).collect();
                format!("unknown event type {name:?}; known: {}", known.join(", "))
            })?;
            let (orders, notices) = EventFilter::bits(event_type);
            filter.orders |= orders;
            filter.notices |= notices;
        }
        Ok(filter)
    }

    pub fn includes(self, event_type: EventType) -> bool {
        let (orders, notices) = EventFilter::bits(event_type);
        self.orders & orders != 0 || self.notices & notices != 0
    }

    /// The names of the subscribed types, in a stable order.
    pub fn names(self) -> Vec<&'static str> {
        subscribable()
            .filter(|t| self.includes(*t))
            .map(EventType::as_str)
            .collect()
    }
}

/// Which new statuses an endpoint gets `order.status_changed` for (column
/// `status_mask`, a bit per status); `None`: every status. Other types are
/// not filtered by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusFilter(pub Option<u32>);

impl StatusFilter {
    /// Parses requested status names; `None` (absent or null) means all.
    pub fn parse(names: Option<&[String]>) -> Result<StatusFilter, String> {
        let Some(names) = names else {
            return Ok(StatusFilter(None));
        };
        if names.is_empty() {
            return Err("list at least one status, or send null for every status".into());
        }
        let mut mask = 0;
        for name in names {
            let status = OrderStatus::parse(name).ok_or_else(|| {
                let known: Vec<&str> = OrderStatus::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown status {name:?}; known: {}", known.join(", "))
            })?;
            mask |= status.bit();
        }
        Ok(StatusFilter(Some(mask)))
    }

    /// Whether an event of `event_type` leaving the order in `status` passes.
    pub fn passes(self, event_type: EventType, status: Option<OrderStatus>) -> bool {
        match (self.0, event_type, status) {
            (Some(mask), EventType::OrderStatusChanged, Some(status)) => mask & status.bit() != 0,
            _ => true,
        }
    }

    /// The names of the listed statuses, or `None` for all.
    pub fn names(self) -> Option<Vec<&'static str>> {
        self.0.map(|mask| {
            OrderStatus::ALL
                .into_iter()
                .filter(|s| mask & s.bit() != 0)
                .map(OrderStatus::as_str)
                .collect()
        })
    }
}

/// A Standard Webhooks signing secret: `whsec_` + base64 of 24..=64 bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret {
    text: String,
    key: Vec<u8>,
}

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(***)")
    }
}

impl SigningSecret {
    /// A new secret of 32 bytes from the OS CSPRNG.
    pub fn generate() -> SigningSecret {
        let key = crate::tokens::random_bytes::<32>().to_vec();
        SigningSecret {
            text: format!("{SECRET_PREFIX}{}", STANDARD.encode(&key)),
            key,
        }
    }

    pub fn parse(text: &str) -> Result<SigningSecret, String> {
        let encoded = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or_else(|| format!("must start with {SECRET_PREFIX}"))?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| format!("must be {SECRET_PREFIX} followed by standard base64"))?;
        if !(24..=64).contains(&key.len()) {
            return Err("must encode 24 to 64 bytes".into());
        }
        Ok(SigningSecret {
            text: text.to_string(),
            key,
        })
    }

    /// The text form, `whsec_…`, as shown to the customer.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// The HMAC key: the decoded bytes.
    pub fn key(&self) -> &[u8] {
        &self.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_known_types_and_default_to_every_order_type() {
        let default = EventFilter::parse(None).unwrap();
        assert_eq!(default, EventFilter::DEFAULT);
        assert_eq!(EventFilter::parse(Some(&[])), Ok(EventFilter::DEFAULT));
        // Every order type, including ones added after the endpoint was
        // made (any bit of `orders`), and no notices.
        assert!(EventType::ALL
            .into_iter()
            .all(|t| default.includes(t) == t.is_order()));
        assert!(EventFilter {
            orders: u32::MAX,
            notices: 0
        }
        .includes(EventType::OrderUpdated));
        assert_eq!(
            default.names(),
            [
                "order.created",
                "order.status_changed",
                "order.tracking_updated",
                "order.updated"
            ]
        );
        let picked = EventFilter::parse(Some(&[
            "order.created".to_string(),
            "delivery.failed".to_string(),
        ]))
        .unwrap();
        assert!(picked.includes(EventType::OrderCreated));
        assert!(picked.includes(EventType::DeliveryFailed));
        assert!(!picked.includes(EventType::OrderStatusChanged));
        assert!(!picked.includes(EventType::EndpointDisabled));
        assert_eq!(picked.names(), ["order.created", "delivery.failed"]);
        for bad in ["order.deleted", "webhook.test"] {
            assert!(
                EventFilter::parse(Some(&[bad.to_string()])).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_status_filter_narrows_status_changes_only() {
        let delivered = StatusFilter::parse(Some(&["delivered".to_string()])).unwrap();
        let all = StatusFilter::parse(None).unwrap();
        use EventType::*;
        use OrderStatus::*;
        let cases = [
            (delivered, OrderStatusChanged, Some(Delivered), true),
            (delivered, OrderStatusChanged, Some(InTransit), false),
            (delivered, OrderTrackingUpdated, Some(InTransit), true),
            (delivered, OrderCreated, Some(Pending), true),
            (all, OrderStatusChanged, Some(InTransit), true),
        ];
        for (filter, t, status, passes) in cases {
            assert_eq!(
                filter.passes(t, status),
                passes,
                "{filter:?} {t:?} {status:?}"
            );
        }
        assert_eq!(delivered.names(), Some(vec!["delivered"]));
        assert_eq!(all.names(), None);
        assert!(StatusFilter::parse(Some(&[])).is_err());
        assert!(StatusFilter::parse(Some(&["lost".to_string()])).is_err());
    }

    #[test]
    fn secrets_are_generated_and_checked() {
        let secret = SigningSecret::generate();
        assert!(secret.expose().starts_with("whsec_"));
        assert_eq!(secret.key().len(), 32);
        assert_eq!(SigningSecret::parse(secret.expose()).unwrap(), secret);
        assert_ne!(SigningSecret::generate(), secret);
        assert!(SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        let short = format!("whsec_{}", STANDARD.encode([0u8; 23]));
        let long = format!("whsec_{}", STANDARD.encode([0u8; 65]));
        for bad in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_not base64!",
            &short,
            &long,
        ] {
            assert!(SigningSecret::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(format!("{secret:?}"), "SigningSecret(***)");
    }
}
