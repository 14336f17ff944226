//! Webhook signing secrets at rest: sealed with AES-256-GCM (a fresh
//! 96-bit nonce per value) when `SECRETS_ENCRYPTION_KEY` is set, stored as
//! given otherwise. Sealed values are `v1:` + base64(nonce ‖ ciphertext);
//! plain ones start with `whsec_`, so the two never mix up.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::domain::webhook::SigningSecret;

const SEALED: &str = "v1:";

#[derive(Clone, Default)]
pub struct SecretBox {
    cipher: Option<Aes256Gcm>,
    /// Derived from the key for another purpose: what idempotency replays
    /// of secret-bearing answers are named and sealed under.
    replay_key: Option<[u8; 32]>,
}

impl SecretBox {
    /// From a base64 32-byte key, or none (secrets kept as given).
    pub fn new(key_base64: Option<&str>) -> Result<SecretBox, String> {
        let Some(encoded) = key_base64 else {
            return Ok(SecretBox::default());
        };
        let key = STANDARD
            .decode(encoded.trim())
            .ok()
            .filter(|k| k.len() == 32)
            .ok_or("SECRETS_ENCRYPTION_KEY: must be 32 bytes in standard base64")?;
        let cipher = Aes256Gcm::new_from_slice(&key).map_err(|e| e.to_string())?;
        Ok(SecretBox {
            cipher: Some(cipher),
            replay_key: Some(crate::tokens::hmac_sha256(
                &key,
                b"mechanica idempotency replays v2",
            )),
        })
    }

    /// A key kept outside the database for sealing idempotency replays of
    /// answers that hold a secret (`http::idempotent`); none without
    /// `SECRETS_ENCRYPTION_KEY`.
    pub fn replay_key(&self) -> Option<&[u8; 32]> {
        self.replay_key.as_ref()
    }

    pub fn encrypts(&self) -> bool {
        self.cipher.is_some()
    }

    pub fn seal(&self, secret: &SigningSecret) -> String {
        let Some(cipher) = &self.cipher else {
            return secret.expose().to_string();
        };
        let nonce_bytes = crate::tokens::random_bytes::<12>();
        let sealed = cipher
            .encrypt(Nonce::from_slice(&nonce_bytes), secret.expose().as_bytes())
            .expect("AES-GCM encrypts any length we store");
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&sealed);
        format!("{SEALED}{}", STANDARD.encode(out))
    }

    pub fn open(&self, stored: &str) -> Result<SigningSecret, String> {
        let Some(sealed) = stored.strip_prefix(SEALED) else {
            return SigningSecret::parse(stored)
                .map_err(|_| "a stored secret is malformed".to_string());
        };
        let cipher = self
            .cipher
            .as_ref()
            .ok_or("a stored secret is encrypted and SECRETS_ENCRYPTION_KEY is not set")?;
        let bytes = STANDARD
            .decode(sealed)
            .map_err(|_| "a sealed secret is malformed")?;
        if bytes.len() < 12 {
            return Err("a sealed secret is malformed".into());
        }
        let (nonce, ciphertext) = bytes.split_at(12);
        let plain = cipher
            .decrypt(Nonce::from_slice(nonce), ciphertext)
            .map_err(|_| "a sealed secret does not open with SECRETS_ENCRYPTION_KEY")?;
        let text = String::from_utf8(plain).map_err(|_| "a sealed secret is malformed")?;
        SigningSecret::parse(&text).map_err(|_| "a sealed secret is malformed".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_their_key_and_hide_the_plaintext() {
        let key = STANDARD.encode([7u8; 32]);
        let secrets = SecretBox::new(Some(&key)).unwrap();
        let secret = SigningSecret::generate();
        let a = secrets.seal(&secret);
        let b = secrets.seal(&secret);
        assert_ne!(a, b, "a fresh nonce per value");
        assert!(!a.contains(secret.expose()) && !a.contains("whsec_"));
        assert_eq!(secrets.open(&a).unwrap(), secret);
        let other = SecretBox::new(Some(&STANDARD.encode([8u8; 32]))).unwrap();
        assert!(other.open(&a).is_err());
        assert!(SecretBox::default().open(&a).is_err());
        assert!(SecretBox::new(Some("short")).is_err());
    }

    #[test]
    fn without_a_key_secrets_are_kept_as_given() {
        let plain = SecretBox::default();
        let secret = SigningSecret::generate();
        assert_eq!(plain.seal(&secret), secret.expose());
        assert_eq!(plain.open(secret.expose()).unwrap(), secret);
    }
}
