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
