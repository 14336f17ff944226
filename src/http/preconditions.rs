//! Request headers with rules of their own: `Idempotency-Key` and
//! `If-Match`. Each is 422 naming the header when malformed.

use axum::http::header::IF_MATCH;
use axum::http::{HeaderMap, HeaderName};

use crate::error::{ApiError, ApiResult};

pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The `Idempotency-Key`, if sent: 1 to 255 printable ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let valid = value
        .to_str()
        .ok()
        .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| (0x20..0x7f).contains(&b)));
    match valid {
        Some(key) => Ok(Some(key.to_string())),
        None => Err(ApiError::invalid(
            "Idempotency-Key",
            "must be 1 to 255 printable ASCII characters",
        )),
    }
}

/// Reads `If-Match`: `*`, or one or more quoted versions. `None` if absent.
pub fn if_match(headers: &HeaderMap) -> ApiResult<Option<Vec<u32>>> {
    let Some(value) = headers.get(IF_MATCH) else {
        return Ok(None);
    };
    let bad = || ApiError::invalid("If-Match", "must be `*` or a quoted version like \"3\"");
    let value = value.to_str().map_err(|_| bad())?;
    if value.trim() == "*" {
        return Ok(None);
    }
    value
        .split(',')
        .map(|tag| {
            tag.trim()
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .and_then(|t| t.parse::<u32>().ok())
                .ok_or_else(bad)
        })
        .collect::<ApiResult<Vec<u32>>>()
        .map(Some)
}
