//! Property tests for every parser of outside input: cursors, webhook URLs
//! and the addresses they may reach, `Idempotency-Key`, `If-Match`, status
//! names and signing secrets. Each parser must never panic on any input,
//! must accept what it issues, and must refuse what breaks its rules.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use axum::http::{HeaderMap, HeaderValue};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use mechanica::domain::cursor::{self, CursorKind};
use mechanica::domain::webhook::SigningSecret;
use mechanica::domain::webhook_url::{forbidden_reason, WebhookUrl};
use mechanica::domain::OrderStatus;
use mechanica::http::preconditions::{idempotency_key, if_match, IDEMPOTENCY_KEY};
use proptest::prelude::*;
use uuid::Uuid;

const KINDS: [CursorKind; 8] = [
    CursorKind::Orders,
    CursorKind::Customers,
    CursorKind::ApiKeys,
    CursorKind::OrderEvents,
    CursorKind::Feed,
    CursorKind::Webhooks,
    CursorKind::Deliveries,
    CursorKind::Attempts,
];

fn kind() -> impl Strategy<Value = CursorKind> {
    prop::sample::select(KINDS.to_vec())
}

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

/// Text that looks like what a client might send: printable ASCII, base64
/// characters, and anything at all.
fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,80}",
        "[A-Za-z0-9_-]{0,64}",
        any::<String>(),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| URL_SAFE_NO_PAD.encode(b)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn cursors_round_trip_and_stay_in_their_list(k in kind(), other in kind(), id in uuid(), n in any::<u64>()) {
        let by_id = cursor::encode_id(k, id);
        prop_assert_eq!(cursor::decode_id(k, &by_id), Some(id));
        let by_number = cursor::encode_number(k, n);
        prop_assert_eq!(cursor::decode_number(k, &by_number), Some(n));
        if other != k {
            prop_assert_eq!(cursor::decode_id(other, &by_id), None);
            prop_assert_eq!(cursor::decode_number(other, &by_number), None);
        }
    }

    #[test]
    fn cursor_parsers_never_panic(k in kind(), text in hostile_text(), key in prop::collection::vec(any::<u8>(), 1..40), scope in uuid()) {
        let _ = cursor::decode_id(k, &text);
        let _ = cursor::decode_number(k, &text);
        // A forged feed cursor would need the server's key.
        prop_assert_eq!(cursor::decode_feed(&key, scope, &text), None);
    }

    #[test]
    fn feed_cursors_only_work_for_their_reader(key in prop::collection::vec(any::<u8>(), 32), scope in uuid(), other in uuid(), position in any::<u64>(), flip in 0usize..24) {
        let issued = cursor::encode_feed(&key, scope, position);
        prop_assert_eq!(cursor::decode_feed(&key, scope, &issued), Some(position));
        if other != scope {
            prop_assert_eq!(cursor::decode_feed(&key, other, &issued), None);
        }
        // Any change to the cursor's bytes is refused.
        let mut bytes = URL_SAFE_NO_PAD.decode(&issued).unwrap();
        let at = flip % bytes.len();
        bytes[at] ^= 0x01;
        prop_assert_eq!(cursor::decode_feed(&key, scope, &URL_SAFE_NO_PAD.encode(bytes)), None);
    }

    #[test]
    fn webhook_urls_are_http_with_a_host_and_no_credentials(text in hostile_text()) {
        if let Ok(url) = WebhookUrl::parse(&text) {
            let parsed = url.url();
            prop_assert!(matches!(parsed.scheme(), "http" | "https"));
            prop_assert!(parsed.username().is_empty() && parsed.password().is_none());
            prop_assert!(parsed.host().is_some());
            // What is stored parses back to the same URL.
            prop_assert_eq!(WebhookUrl::parse(url.as_str()).unwrap(), url);
        }
    }

    #[test]
    fn webhook_urls_with_credentials_or_other_schemes_are_refused(
        user in "[a-z]{1,8}", host in "[a-z]{1,12}\\.(com|net|io)", scheme in "(ftp|file|gopher|javascript|data|ws)"
    ) {
        let with_credentials = format!("https://{user}:pw@{host}/hook");
        prop_assert!(WebhookUrl::parse(&with_credentials).is_err());
        let other_scheme = format!("{scheme}://{host}/hook");
        prop_assert!(WebhookUrl::parse(&other_scheme).is_err());
    }

    #[test]
    fn private_ipv4_addresses_are_refused_in_every_spelling(a in any::<u8>(), b in any::<u8>(), c in any::<u8>(), range in 0usize..6) {
        let v4 = match range {
            0 => Ipv4Addr::new(10, a, b, c),
            1 => Ipv4Addr::new(127, a, b, c),
            2 => Ipv4Addr::new(192, 168, b, c),
            3 => Ipv4Addr::new(172, 16 + (a % 16), b, c),
            4 => Ipv4Addr::new(169, 254, b, c),
            _ => Ipv4Addr::new(100, 64 + (a % 64), b, c),
        };
        prop_assert!(forbidden_reason(IpAddr::V4(v4)).is_some(), "{v4}");
        let mapped = IpAddr::V6(v4.to_ipv6_mapped());
        prop_assert!(forbidden_reason(mapped).is_some(), "{mapped}");
        // NAT64 (64:ff9b::/96) reaching the same address.
        let [w, x, y, z] = v4.octets();
        let nat64 = IpAddr::V6(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, u16::from_be_bytes([w, x]), u16::from_be_bytes([y, z])));
        prop_assert!(forbidden_reason(nat64).is_some(), "{nat64}");
        // And as a URL host, in decimal, hex or octal.
        for spelling in [v4.to_string(), u32::from(v4).to_string(), format!("0x{:x}", u32::from(v4))] {
            if let Ok(url) = WebhookUrl::parse(&format!("http://{spelling}/hook")) {
                if let Some(url::Host::Ipv4(ip)) = url.url().host() {
                    prop_assert!(forbidden_reason(IpAddr::V4(ip)).is_some(), "{spelling}");
                }
            }
        }
    }

    #[test]
    fn a_mapped_address_gets_the_verdict_of_its_ipv4(bits in any::<u32>()) {
        let v4 = Ipv4Addr::from(bits);
        let mapped = IpAddr::V6(v4.to_ipv6_mapped());
        prop_assert_eq!(forbidden_reason(IpAddr::V4(v4)).is_some(), forbidden_reason(mapped).is_some());
    }

    #[test]
    fn idempotency_keys_are_1_to_255_printable_ascii(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let Ok(value) = HeaderValue::from_bytes(&bytes) else { return Ok(()) };
        let mut headers = HeaderMap::new();
        headers.insert(IDEMPOTENCY_KEY, value);
        let valid = (1..=255).contains(&bytes.len()) && bytes.iter().all(|b| (0x20..0x7f).contains(b));
        match idempotency_key(&headers) {
            Ok(Some(key)) => {
                prop_assert!(valid);
                prop_assert_eq!(key.as_bytes(), &bytes[..]);
            }
            Ok(None) => prop_assert!(false, "a sent key was ignored"),
            Err(_) => prop_assert!(!valid),
        }
    }

    #[test]
    fn if_match_reads_back_the_versions_it_was_given(versions in prop::collection::vec(any::<u32>(), 1..5), spaces in " {0,2}") {
        let value = versions
            .iter()
            .map(|v| format!("{spaces}\"{v}\"{spaces}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut headers = HeaderMap::new();
        headers.insert(axum::http::header::IF_MATCH, HeaderValue::from_str(&value).unwrap());
        prop_assert_eq!(if_match(&headers).unwrap(), Some(versions));
    }

    #[test]
    fn if_match_never_panics_and_refuses_unquoted_versions(text in "[ -~]{0,40}", n in any::<u32>()) {
        let mut headers = HeaderMap::new();
        headers.insert(axum::http::header::IF_MATCH, HeaderValue::from_str(&text).unwrap());
        let _ = if_match(&headers);
        headers.insert(axum::http::header::IF_MATCH, HeaderValue::from_str(&n.to_string()).unwrap());
        prop_assert!(if_match(&headers).is_err());
    }

    #[test]
    fn only_the_nine_status_names_parse(text in hostile_text()) {
        match OrderStatus::parse(&text) {
            Some(status) => prop_assert_eq!(status.as_str(), text.as_str()),
            None => prop_assert!(OrderStatus::ALL.iter().all(|s| s.as_str() != text)),
        }
        // Case and padding are not forgiven.
        for status in OrderStatus::ALL {
            prop_assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
            prop_assert_eq!(OrderStatus::parse(&status.as_str().to_uppercase()), None);
            prop_assert_eq!(OrderStatus::parse(&format!(" {}", status.as_str())), None);
        }
    }

    #[test]
    fn secrets_hold_24_to_64_bytes(key in prop::collection::vec(any::<u8>(), 0..100)) {
        let text = format!("whsec_{}", STANDARD.encode(&key));
        match SigningSecret::parse(&text) {
            Ok(secret) => {
                prop_assert!((24..=64).contains(&key.len()));
                prop_assert_eq!(secret.key(), &key[..]);
                prop_assert_eq!(secret.expose(), text.as_str());
            }
            Err(_) => prop_assert!(!(24..=64).contains(&key.len())),
        }
    }

    #[test]
    fn secret_parsing_never_panics_and_needs_the_prefix(text in hostile_text()) {
        if SigningSecret::parse(&text).is_ok() {
            prop_assert!(text.starts_with("whsec_"));
        }
        let unprefixed = STANDARD.encode([7u8; 32]);
        prop_assert!(SigningSecret::parse(&unprefixed).is_err());
    }
}
