//! An endpoint's custom headers (SPEC §10): at most ten, sent with every
//! attempt. Names are HTTP tokens and may not collide with what the
//! delivery itself sets (the Standard Webhooks headers, the body's framing,
//! hop-by-hop headers); values are printable ASCII.

use std::collections::BTreeMap;

use crate::error::FieldError;

pub const MAX_HEADERS: usize = 10;
const MAX_NAME_LEN: usize = 64;
const MAX_VALUE_LEN: usize = 1024;

/// Set by the delivery, or meaningful only to one connection.
const RESERVED: [&str; 13] = [
    "content-type",
    "content-length",
    "host",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
];

/// Checked custom headers, names as given (sent in that case), in name order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomHeaders(BTreeMap<String, String>);

impl CustomHeaders {
    /// Checks every header; the errors name `headers.<name>`.
    pub fn parse(headers: BTreeMap<String, String>) -> Result<CustomHeaders, Vec<FieldError>> {
        let mut errors = vec![];
        if headers.len() > MAX_HEADERS {
            errors.push(FieldError::new(
                "headers",
                format!("at most {MAX_HEADERS} custom headers"),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (name, value) in &headers {
            let field = format!("headers.{name}");
            if let Err(message) = check_name(name) {
                errors.push(FieldError::new(field, message));
            } else if !seen.insert(name.to_ascii_lowercase()) {
                errors.push(FieldError::new(
                    field,
                    "named twice (header names ignore case)",
                ));
            } else if let Err(message) = check_value(value) {
                errors.push(FieldError::new(field, message));
            }
        }
        if errors.is_empty() {
            Ok(CustomHeaders(headers))
        } else {
            Err(errors)
        }
    }

    /// Reads what `to_stored` wrote; `None` (no column value) is no headers.
    pub fn from_stored(stored: Option<&str>) -> CustomHeaders {
        stored
            .and_then(|s| serde_json::from_str(s).ok())
            .map(CustomHeaders)
            .unwrap_or_default()
    }

    /// JSON for the `headers` column; `None` when there are none.
    pub fn to_stored(&self) -> Option<String> {
        (!self.0.is_empty()).then(|| serde_json::to_string(&self.0).unwrap_or_default())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn into_map(self) -> BTreeMap<String, String> {
        self.0
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("a header name has 1 to {MAX_NAME_LEN} characters"));
    }
    // RFC 9110 token characters.
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    {
        return Err(
            "a header name is letters, digits and !#$%&'*+-.^_`|~ only (no spaces or colons)"
                .into(),
        );
    }
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("webhook-") || RESERVED.contains(&lower.as_str()) {
        return Err(format!(
            "{name} is set by the delivery itself and cannot be replaced"
        ));
    }
    Ok(())
}

fn check_value(value: &str) -> Result<(), String> {
    if value.len() > MAX_VALUE_LEN {
        return Err(format!(
            "a header value has at most {MAX_VALUE_LEN} characters"
        ));
    }
    if value.trim() != value {
        return Err("a header value must not start or end with whitespace".into());
    }
    if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err("a header value is printable ASCII only (no line breaks)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<CustomHeaders, Vec<FieldError>> {
        CustomHeaders::parse(
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn good_headers_are_kept_as_given() {
        let headers =
            parse(&[("X-Partner-Id", "acme-42"), ("Authorization", "Bearer abc")]).unwrap();
        let stored = headers.to_stored().unwrap();
        assert_eq!(CustomHeaders::from_stored(Some(&stored)), headers);
        assert_eq!(
            headers.iter().collect::<Vec<_>>(),
            [("Authorization", "Bearer abc"), ("X-Partner-Id", "acme-42")]
        );
        assert_eq!(CustomHeaders::default().to_stored(), None);
        assert_eq!(CustomHeaders::from_stored(None), CustomHeaders::default());
    }

    #[test]
    fn bad_headers_are_refused_by_name() {
        let long = "x".repeat(65);
        let cases: &[(&str, &str)] = &[
            ("X Space", "v"),
            ("X:Colon", "v"),
            ("", "v"),
            (&long, "v"),
            ("webhook-signature", "v"),
            ("Webhook-Id", "v"),
            ("Content-Type", "text/plain"),
            ("content-length", "1"),
            ("Host", "evil.example"),
            ("Transfer-Encoding", "chunked"),
            ("Connection", "close"),
            ("X-Crlf", "a\r\nInjected: yes"),
            ("X-Tab", "a\tb"),
            ("X-Unicode", "café"),
            ("X-Padded", " v"),
        ];
        for (name, value) in cases {
            let errors = parse(&[(name, value)]).unwrap_err();
            assert_eq!(errors.len(), 1, "{name:?}: {value:?}");
            assert_eq!(errors[0].field, format!("headers.{name}"));
        }
        let duplicate = parse(&[("X-A", "1"), ("x-a", "2")]).unwrap_err();
        assert_eq!(duplicate.len(), 1);
        let eleven: Vec<(String, &str)> = (0..11).map(|i| (format!("X-{i}"), "v")).collect();
        let eleven: Vec<(&str, &str)> = eleven.iter().map(|(n, v)| (n.as_str(), *v)).collect();
        assert_eq!(parse(&eleven).unwrap_err()[0].field, "headers");
        assert!(parse(&eleven[..10]).is_ok());
    }
}
