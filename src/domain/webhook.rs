//! Webhook endpoint values: which event types an endpoint receives, and
//! signing secrets.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::EventType;

pub const SECRET_PREFIX: &str = "whsec_";
pub const MAX_ENDPOINTS_PER_CUSTOMER: i64 = 20;
/// The largest `rate_limit_per_second` an endpoint may ask for.
pub const MAX_RATE_LIMIT: u32 = 10_000;

/// The event types an endpoint can subscribe to.
pub const SUBSCRIBABLE: [EventType; 2] = [EventType::OrderCreated, EventType::OrderStatusChanged];

/// Event types as a bit set, stored as an integer. "All" sets every bit, so
/// an endpoint that asked for all also gets types added later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventFilter(pub u32);

impl EventFilter {
    pub const ALL: EventFilter = EventFilter(u32::MAX);

    pub fn bit(event_type: EventType) -> u32 {
        match event_type {
            EventType::OrderCreated => 1,
            EventType::OrderStatusChanged => 2,
            // Never subscribed to: sent to one endpoint by request.
            EventType::WebhookTest => 0,
        }
    }

    /// Parses requested type names; absent or empty means all.
    pub fn parse(names: Option<&[String]>) -> Result<EventFilter, String> {
        let Some(names) = names.filter(|n| !n.is_empty()) else {
            return Ok(EventFilter::ALL);
        };
        let mut mask = 0;
        for name in names {
            let event_type = SUBSCRIBABLE
                .into_iter()
                .find(|t| t.as_str() == name)
                .ok_or_else(|| {
                    let known: Vec<&str> = SUBSCRIBABLE.iter().map(|t| t.as_str()).collect();
                    format!("unknown event type {name:?}; known: {}", known.join(", "))
                })?;
            mask |= EventFilter::bit(event_type);
        }
        Ok(EventFilter(mask))
    }

    pub fn includes(self, event_type: EventType) -> bool {
        self.0 & EventFilter::bit(event_type) != 0
    }

    /// The names of the subscribed types, in a stable order.
    pub fn names(self) -> Vec<&'static str> {
        SUBSCRIBABLE
            .into_iter()
            .filter(|t| self.includes(*t))
            .map(EventType::as_str)
            .collect()
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
    fn filters_parse_known_types_and_default_to_all() {
        assert_eq!(EventFilter::parse(None), Ok(EventFilter::ALL));
        assert_eq!(EventFilter::parse(Some(&[])), Ok(EventFilter::ALL));
        let created = EventFilter::parse(Some(&["order.created".to_string()])).unwrap();
        assert!(created.includes(EventType::OrderCreated));
        assert!(!created.includes(EventType::OrderStatusChanged));
        assert_eq!(created.names(), ["order.created"]);
        assert_eq!(
            EventFilter::ALL.names(),
            ["order.created", "order.status_changed"]
        );
        assert!(EventFilter::parse(Some(&["order.deleted".to_string()])).is_err());
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
