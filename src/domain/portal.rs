//! Customer portal sessions (SPEC §11): what a session may do, and which
//! routes a portal token reaches. Pure, with its table beside it.

/// An action beyond reading that a session may be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    EndpointsWrite,
    SecretsRead,
    SecretsRotate,
    DeliveriesRetry,
}

impl Capability {
    pub const ALL: [Capability; 4] = [
        Capability::EndpointsWrite,
        Capability::SecretsRead,
        Capability::SecretsRotate,
        Capability::DeliveriesRetry,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Capability::EndpointsWrite => "endpoints:write",
            Capability::SecretsRead => "secrets:read",
            Capability::SecretsRotate => "secrets:rotate",
            Capability::DeliveriesRetry => "deliveries:retry",
        }
    }

    fn bit(self) -> u32 {
        match self {
            Capability::EndpointsWrite => 1,
            Capability::SecretsRead => 2,
            Capability::SecretsRotate => 4,
            Capability::DeliveriesRetry => 8,
        }
    }
}

/// A set of capabilities, stored as a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities(pub u32);

impl Capabilities {
    pub fn all() -> Capabilities {
        Capabilities(Capability::ALL.iter().map(|c| c.bit()).sum())
    }

    /// Parses names; absent means all. Unknown names are refused.
    pub fn parse(names: Option<&[String]>) -> Result<Capabilities, String> {
        let Some(names) = names else {
            return Ok(Capabilities::all());
        };
        let mut bits = 0;
        for name in names {
            let capability = Capability::ALL
                .into_iter()
                .find(|c| c.as_str() == name)
                .ok_or_else(|| {
                    let known: Vec<&str> = Capability::ALL.iter().map(|c| c.as_str()).collect();
                    format!("unknown capability {name:?}; known: {}", known.join(", "))
                })?;
            bits |= capability.bit();
        }
        Ok(Capabilities(bits))
    }

    pub fn has(self, capability: Capability) -> bool {
        self.0 & capability.bit() != 0
    }

    pub fn names(self) -> Vec<&'static str> {
        Capability::ALL
            .into_iter()
            .filter(|c| self.has(*c))
            .map(Capability::as_str)
            .collect()
    }
}

/// What a portal token may do on a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reading: always allowed.
    Read,
    /// Allowed with this capability.
    Needs(Capability),
    /// Not a portal route.
    Outside,
}

/// The access a portal token has to `method` on the route `path` (the
/// router's template, `/v1/webhooks/{id}`).
pub fn access(method: &str, path: &str) -> Access {
    use Capability::*;
    match (method, path) {
        ("GET", "/v1/event-types")
        | ("GET", "/v1/webhooks")
        | ("GET", "/v1/webhooks/{id}")
        | ("GET", "/v1/webhooks/{id}/deliveries")
        | ("GET", "/v1/webhooks/{id}/deliveries/{delivery_id}/attempts") => Access::Read,
        ("POST", "/v1/webhooks")
        | ("PATCH", "/v1/webhooks/{id}")
        | ("DELETE", "/v1/webhooks/{id}")
        | ("POST", "/v1/webhooks/{id}/test") => Access::Needs(EndpointsWrite),
        ("GET", "/v1/webhooks/{id}/secret") => Access::Needs(SecretsRead),
        ("POST", "/v1/webhooks/{id}/secret/rotate") => Access::Needs(SecretsRotate),
        ("POST", "/v1/webhooks/{id}/deliveries/{delivery_id}/retry")
        | ("POST", "/v1/webhooks/{id}/recover") => Access::Needs(DeliveriesRetry),
        _ => Access::Outside,
    }
}

/// Shortest and longest session, and the default (seconds).
pub const MIN_EXPIRES_IN: i64 = 300;
pub const MAX_EXPIRES_IN: i64 = 604_800;
pub const DEFAULT_EXPIRES_IN: i64 = 3_600;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_parse_and_default_to_all() {
        let all = Capabilities::parse(None).unwrap();
        assert_eq!(all, Capabilities::all());
        assert_eq!(
            all.names(),
            [
                "endpoints:write",
                "secrets:read",
                "secrets:rotate",
                "deliveries:retry"
            ]
        );
        let none = Capabilities::parse(Some(&[])).unwrap();
        assert!(none.names().is_empty());
        let read = Capabilities::parse(Some(&["secrets:read".to_string()])).unwrap();
        assert!(read.has(Capability::SecretsRead));
        assert!(!read.has(Capability::EndpointsWrite));
        assert!(Capabilities::parse(Some(&["orders:write".to_string()])).is_err());
    }

    #[test]
    fn routes_map_to_access() {
        use Capability::*;
        let table = [
            ("GET", "/v1/event-types", Access::Read),
            ("GET", "/v1/webhooks", Access::Read),
            ("GET", "/v1/webhooks/{id}", Access::Read),
            ("GET", "/v1/webhooks/{id}/deliveries", Access::Read),
            (
                "GET",
                "/v1/webhooks/{id}/deliveries/{delivery_id}/attempts",
                Access::Read,
            ),
            ("POST", "/v1/webhooks", Access::Needs(EndpointsWrite)),
            ("PATCH", "/v1/webhooks/{id}", Access::Needs(EndpointsWrite)),
            ("DELETE", "/v1/webhooks/{id}", Access::Needs(EndpointsWrite)),
            (
                "POST",
                "/v1/webhooks/{id}/test",
                Access::Needs(EndpointsWrite),
            ),
            (
                "GET",
                "/v1/webhooks/{id}/secret",
                Access::Needs(SecretsRead),
            ),
            (
                "POST",
                "/v1/webhooks/{id}/secret/rotate",
                Access::Needs(SecretsRotate),
            ),
            (
                "POST",
                "/v1/webhooks/{id}/deliveries/{delivery_id}/retry",
                Access::Needs(DeliveriesRetry),
            ),
            (
                "POST",
                "/v1/webhooks/{id}/recover",
                Access::Needs(DeliveriesRetry),
            ),
            ("GET", "/v1/orders", Access::Outside),
            ("GET", "/v1/orders/{id}/deliveries", Access::Outside),
            ("GET", "/v1/events", Access::Outside),
            (
                "POST",
                "/v1/customers/{id}/portal-sessions",
                Access::Outside,
            ),
            ("GET", "/v1/admin/outbox/parked", Access::Outside),
            ("PUT", "/v1/webhooks/{id}", Access::Outside),
        ];
        for (method, path, expected) in table {
            assert_eq!(access(method, path), expected, "{method} {path}");
        }
    }
}
