//! Opaque pagination cursors: a version byte, the list they belong to, and
//! the position of the last item returned, in URL-safe base64. A cursor from
//! one list is refused by another; a forged one can only move the caller
//! within its own data, since every query also filters by tenant.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use uuid::Uuid;

const VERSION: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CursorKind {
    Orders = 1,
    Customers = 2,
    ApiKeys = 3,
    OrderEvents = 4,
    Feed = 5,
    Webhooks = 6,
    Deliveries = 7,
    Attempts = 8,
    Parked = 9,
}

/// A position after an item with this id (lists ordered by UUIDv7 id).
pub fn encode_id(kind: CursorKind, id: Uuid) -> String {
    encode(kind, id.as_bytes())
}

pub fn decode_id(kind: CursorKind, cursor: &str) -> Option<Uuid> {
    let payload = decode(kind, cursor)?;
    Uuid::from_slice(&payload).ok()
}

/// A position after an item with this number (lists ordered by a counter).
pub fn encode_number(kind: CursorKind, n: u64) -> String {
    encode(kind, &n.to_be_bytes())
}

pub fn decode_number(kind: CursorKind, cursor: &str) -> Option<u64> {
    let payload = decode(kind, cursor)?;
    Some(u64::from_be_bytes(payload.try_into().ok()?))
}

/// A feed position for one reader (`scope`: the customer, or nil for the
/// operator's whole feed), with a MAC so that a forged cursor, or one
/// issued to another reader, is refused.
pub fn encode_feed(key: &[u8], scope: Uuid, position: u64) -> String {
    let mut payload = position.to_be_bytes().to_vec();
    payload.extend_from_slice(&feed_mac(key, scope, position));
    encode(CursorKind::Feed, &payload)
}

pub fn decode_feed(key: &[u8], scope: Uuid, cursor: &str) -> Option<u64> {
    let payload = decode(CursorKind::Feed, cursor)?;
    if payload.len() != 8 + FEED_MAC_LEN {
        return None;
    }
    let position = u64::from_be_bytes(payload[..8].try_into().ok()?);
    let expected = feed_mac(key, scope, position);
    bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], &payload[8..])).then_some(position)
}

const FEED_MAC_LEN: usize = 16;

fn feed_mac(key: &[u8], scope: Uuid, position: u64) -> [u8; FEED_MAC_LEN] {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(&[VERSION, CursorKind::Feed as u8]);
    mac.update(scope.as_bytes());
    mac.update(&position.to_be_bytes());
    let tag = mac.finalize().into_bytes();
    let mut out = [0u8; FEED_MAC_LEN];
    out.copy_from_slice(&tag[..FEED_MAC_LEN]);
    out
}

fn encode(kind: CursorKind, payload: &[u8]) -> String {
    let mut bytes = Vec::with_capacity(payload.len() + 2);
    bytes.push(VERSION);
    bytes.push(kind as u8);
    bytes.extend_from_slice(payload);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn decode(kind: CursorKind, cursor: &str) -> Option<Vec<u8>> {
    if cursor.len() > 64 {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    match bytes.as_slice() {
        [VERSION, k, payload @ ..] if *k == kind as u8 => Some(payload.to_vec()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let id = Uuid::now_v7();
        let c = encode_id(CursorKind::Orders, id);
        assert_eq!(decode_id(CursorKind::Orders, &c), Some(id));
        let n = encode_number(CursorKind::OrderEvents, 42);
        assert_eq!(decode_number(CursorKind::OrderEvents, &n), Some(42));
    }

    #[test]
    fn feed_cursors_are_bound_to_their_reader_and_key() {
        let key = b"0123456789abcdef0123456789abcdef";
        let (me, you) = (Uuid::now_v7(), Uuid::now_v7());
        let cursor = encode_feed(key, me, 77);
        assert_eq!(decode_feed(key, me, &cursor), Some(77));
        assert_eq!(decode_feed(key, you, &cursor), None);
        assert_eq!(decode_feed(b"another key", me, &cursor), None);
        // Same position, MAC not recomputed: a forgery.
        let mut bytes = URL_SAFE_NO_PAD.decode(&cursor).unwrap();
        bytes[9] ^= 1;
        assert_eq!(decode_feed(key, me, &URL_SAFE_NO_PAD.encode(bytes)), None);
        assert_eq!(
            decode_feed(key, me, &encode_number(CursorKind::Feed, 77)),
            None
        );
    }

    #[test]
    fn refuses_foreign_and_malformed_cursors() {
        let id = Uuid::now_v7();
        let orders = encode_id(CursorKind::Orders, id);
        assert_eq!(decode_id(CursorKind::Customers, &orders), None);
        assert_eq!(decode_number(CursorKind::OrderEvents, &orders), None);
        for bad in [
            "",
            "x",
            "!!!!",
            "AQE",
            &"A".repeat(100),
            "AQEAAAAAAAAAAAAAAAAAAAAA=",
        ] {
            assert_eq!(decode_id(CursorKind::Orders, bad), None, "{bad}");
        }
    }
}
