//! Tokens and randomness: random bytes from the OS, prefixed random tokens
//! and their SHA-256. A leaf module (it uses nothing of the crate), so the
//! domain, secrets and config can use it without reaching `auth` and, through
//! it, the app.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::TryRngCore;
use sha2::{Digest, Sha256};

/// Customer API keys start with this.
pub const API_KEY_PREFIX: &str = "mk_";
/// Customer portal session tokens start with this.
pub const PORTAL_PREFIX: &str = "mps_";
/// A generated operator token starts with this.
pub const ADMIN_PREFIX: &str = "adm_";

/// A fresh random token: the prefix, then 32 bytes from the OS CSPRNG.
pub fn generate_token(prefix: &str) -> String {
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(random_bytes::<32>()))
}

/// `N` bytes from the OS CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the OS random source is available");
    bytes
}

/// What is stored of a token and compared against.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// HMAC-SHA256 of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_prefixed() {
        let a = generate_token("mk_");
        let b = generate_token("mk_");
        assert_ne!(a, b);
        assert!(a.starts_with("mk_"));
        assert_eq!(a.len(), 3 + 43);
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_ne!(hash_token(&a), hash_token(&b));
    }
}
