//! Standard Webhooks v1 signatures (standardwebhooks.com), as pure functions:
//! `v1,` + base64(HMAC-SHA256(secret bytes, "{id}.{timestamp}.{body}")),
//! with every secret still live (`live_secrets`).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::db::webhook_endpoints::EndpointRow;
use crate::domain::webhook::SigningSecret;
use crate::secrets::SecretBox;

/// One `v1,<base64>` signature.
pub fn sign(secret: &SigningSecret, id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.key()).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` header value: one signature per live secret,
/// separated by a space (two during a rotation's grace period).
pub fn signature_header(
    secrets: &[&SigningSecret],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|secret| sign(secret, id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The current secret, and the previous one during its grace period.
pub fn live_secrets(
    secrets: &SecretBox,
    endpoint: &EndpointRow,
    now: DateTime<Utc>,
) -> Result<Vec<SigningSecret>, String> {
    let mut live = vec![secrets.open(&endpoint.secret)?];
    if let (Some(previous), Some(until)) = (
        &endpoint.previous_secret,
        endpoint.previous_secret_expires_at,
    ) {
        if until > now {
            live.push(secrets.open(previous)?);
        }
    }
    Ok(live)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The specification's published test vector.
    #[test]
    fn known_answer() {
        let secret = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = sign(
            &secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn two_secrets_give_two_signatures() {
        let old = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let new = SigningSecret::generate();
        let header = signature_header(&[&new, &old], "msg_1", 1614265330, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], sign(&new, "msg_1", 1614265330, b"{}"));
        assert_eq!(parts[1], sign(&old, "msg_1", 1614265330, b"{}"));
    }
}
