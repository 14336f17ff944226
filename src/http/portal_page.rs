//! `/portal`: the customer portal page (SPEC §11). Every asset is compiled
//! into the binary; the page loads nothing from another origin and may be
//! framed only by `PORTAL_FRAME_ANCESTORS`.

use axum::extract::{RawQuery, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::ApiError;
use crate::state::AppState;

const INDEX: &str = include_str!("../portal/index.html");
const SCRIPT: &str = include_str!("../portal/portal.js");
const STYLE: &str = include_str!("../portal/portal.css");

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/portal", get(index))
        .route("/portal/portal.js", get(script))
        .route("/portal/portal.css", get(style))
}

/// `Content-Security-Policy` for the portal: this origin only, framed by
/// the listed origins or by none.
pub fn content_security_policy(frame_ancestors: &[String]) -> String {
    let ancestors = if frame_ancestors.is_empty() {
        "'none'".to_string()
    } else {
        frame_ancestors.join(" ")
    };
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
         frame-ancestors {ancestors}"
    )
}

fn asset(state: &AppState, content_type: &'static str, body: &'static str) -> Response {
    let csp = HeaderValue::from_str(&content_security_policy(&state.portal_frame_ancestors))
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'"));
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (HeaderName::from_static("content-security-policy"), csp),
            (
                HeaderName::from_static("x-content-type-options"),
                HeaderValue::from_static("nosniff"),
            ),
            (
                HeaderName::from_static("referrer-policy"),
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        body,
    )
        .into_response()
}

/// The page. A token belongs in the fragment (`#token=…`), which browsers
/// never send: one in the query string is refused.
pub async fn index(State(state): State<AppState>, RawQuery(query): RawQuery) -> Response {
    if crate::auth::token_in_query(query.as_deref()) {
        return ApiError::BadRequest(
            "the portal token belongs in the URL fragment (/portal#token=…), which is never sent to a server"
                .into(),
        )
        .into_response();
    }
    asset(&state, "text/html; charset=utf-8", INDEX)
}

pub async fn script(State(state): State<AppState>) -> Response {
    asset(&state, "text/javascript; charset=utf-8", SCRIPT)
}

pub async fn style(State(state): State<AppState>) -> Response {
    asset(&state, "text/css; charset=utf-8", STYLE)
}
