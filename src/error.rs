//! `ApiError`, the one error type of the API, and its RFC 9457
//! problem+json form. This is the only place HTTP error statuses are chosen.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// One invalid input, named by its JSON path, query parameter or header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    #[schema(example = "parcels[0].weight_grams")]
    pub field: String,
    #[schema(example = "must be between 1 and 1000000")]
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    #[schema(example = "https://mechanica.dev/problems/validation")]
    pub problem_type: String,
    #[schema(example = "Invalid request")]
    pub title: String,
    #[schema(example = 422)]
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("malformed request: {0}")]
    BadRequest(String),
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("not found: {0}")]
    NotFound(&'static str),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("conflict ({kind}): {detail}")]
    Conflict { kind: &'static str, detail: String },
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    #[error("validation failed: {0:?}")]
    Validation(Vec<FieldError>),
    #[error("rate limited: retry after {retry_after_secs}s")]
    TooManyRequests { retry_after_secs: u64 },
    #[error("request timeout")]
    RequestTimeout,
    #[error("service unavailable: {0}")]
    Unavailable(&'static str),
    /// The answer to the commit was lost (or the request's time ran out
    /// while it was committing): whether the change was made is unknown.
    #[error("outcome unknown")]
    OutcomeUnknown,
    /// Already logged where it happened; the client gets an opaque 500.
    #[error("internal error")]
    Internal,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Validation(vec![FieldError::new(field, message)])
    }

    pub fn conflict(kind: &'static str, detail: impl Into<String>) -> Self {
        ApiError::Conflict {
            kind,
            detail: detail.into(),
        }
    }

    /// Logs an unexpected failure with its context and hides it from the client.
    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "{context}");
        ApiError::Internal
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unavailable(_) | ApiError::OutcomeUnknown => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn problem(&self) -> Problem {
        let (slug, title, detail, errors) = match self {
            ApiError::BadRequest(d) => ("malformed-request", "Malformed request", d.clone(), None),
            ApiError::Unauthorized => (
                "unauthorized",
                "Authentication required",
                "send `Authorization: Bearer <token>` with a valid operator token, API key or \
                 portal session (an expired or ended session is no longer valid)"
                    .into(),
                None,
            ),
            ApiError::Forbidden(d) => ("forbidden", "Forbidden", d.clone(), None),
            ApiError::NotFound(what) => {
                ("not-found", "Not found", format!("{what} not found"), None)
            }
            ApiError::MethodNotAllowed => (
                "method-not-allowed",
                "Method not allowed",
                "this route does not accept that method".into(),
                None,
            ),
            ApiError::Conflict { kind, detail } => (*kind, "Conflict", detail.clone(), None),
            ApiError::PreconditionFailed(d) => (
                "precondition-failed",
                "Precondition failed",
                d.clone(),
                None,
            ),
            ApiError::PayloadTooLarge => (
                "payload-too-large",
                "Payload too large",
                "the request body is over 256 KiB".into(),
                None,
            ),
            ApiError::UnsupportedMediaType(d) => (
                "unsupported-media-type",
                "Unsupported media type",
                d.clone(),
                None,
            ),
            ApiError::Validation(errors) => (
                "validation",
                "Invalid request",
                describe(errors),
                Some(errors.clone()),
            ),
            ApiError::TooManyRequests { retry_after_secs } => (
                "rate-limited",
                "Too many requests",
                format!("this API key is over its request rate; retry after {retry_after_secs} s"),
                None,
            ),
            ApiError::RequestTimeout => (
                "request-timeout",
                "Request timeout",
                "the request body did not arrive in time".into(),
                None,
            ),
            ApiError::Unavailable(d) => ("unavailable", "Service unavailable", (*d).into(), None),
            ApiError::OutcomeUnknown => (
                "outcome-unknown",
                "Outcome unknown",
                "the change was being committed when its answer was lost, so whether it was \
                 made is unknown: read the resource before retrying, or retry with the same \
                 `Idempotency-Key`"
                    .into(),
                None,
            ),
            ApiError::Internal => (
                "internal",
                "Internal error",
                "an unexpected error occurred; it has been logged".into(),
                None,
            ),
        };
        Problem {
            problem_type: format!("https://mechanica.dev/problems/{slug}"),
            title: title.into(),
            status: self.status().as_u16(),
            detail,
            errors,
        }
    }
}

fn describe(errors: &[FieldError]) -> String {
    match errors {
        [one] => format!("{}: {}", one.field, one.message),
        many => format!("{} fields are invalid", many.len()),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match self {
            ApiError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::Unavailable(_) | ApiError::OutcomeUnknown => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::TooManyRequests { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            _ => {}
        }
        response
    }
}

/// Database failures: an unreachable or overloaded database is a 503 the
/// client may retry; anything else is a bug, logged and answered as a 500.
impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        if is_unreachable(&err) {
            tracing::warn!(error = %err, "database unavailable");
            ApiError::Unavailable("the database is unavailable; retry shortly")
        } else if is_transient_error(&err) {
            tracing::warn!(error = %err, "database contention");
            ApiError::Unavailable("the database is busy; retry shortly")
        } else {
            ApiError::internal("database error", err)
        }
    }
}

/// No connection to the database could be had or kept.
pub fn is_unreachable(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed
    )
}

/// A database error that says nothing about the request: the database was
/// unreachable, busy or restarting, or the transaction lost a race. The
/// same work may succeed if run again shortly.
pub fn is_transient_error(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => is_transient(db.as_ref()),
        other => is_unreachable(other),
    }
}

/// A database error worth retrying, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transient {
    /// The transaction lost a race (deadlock, lock wait timeout): run it again.
    Conflict,
    /// The server is going away, restarting or overloaded: try again shortly.
    Unavailable,
}

/// Classifies a MySQL error by number and message. Vitess (PlanetScale)
/// reports most failures as errno 1105 with the real cause in the text
/// ("vttablet: rpc error: code = Aborted … (errno 1213)"), so 1105 is read.
pub fn transient(number: u16, message: &str) -> Option<Transient> {
    match number {
        1205 | 1213 => Some(Transient::Conflict),
        1040 | 1053 | 1317 | 1927 | 2006 | 2013 => Some(Transient::Unavailable),
        1105 => {
            let text = message.to_ascii_lowercase();
            let any = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
            if any(&[
                "errno 1213",
                "errno 1205",
                "deadlock",
                "lock wait timeout",
                "code = aborted",
            ]) {
                Some(Transient::Conflict)
            } else if any(&[
                "code = unavailable",
                "code = resourceexhausted",
                "errno 1053",
                "errno 2006",
                "errno 2013",
                "errno 1317",
                "not serving",
                "server shutdown",
                "connection refused",
                "transaction pool",
            ]) {
                Some(Transient::Unavailable)
            } else {
                None
            }
        }
        _ => None,
    }
}

fn is_transient(err: &dyn sqlx::error::DatabaseError) -> bool {
    err.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .is_some_and(|e| transient(e.number(), e.message()).is_some())
}

fn mysql_errno(err: &dyn sqlx::error::DatabaseError) -> Option<u16> {
    err.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .map(|e| e.number())
}

/// True when the transaction lost a race (deadlock, lock wait timeout, or
/// Vitess's wrapping of either) and may simply be run again.
pub fn is_retryable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .is_some_and(|e| transient(e.number(), e.message()) == Some(Transient::Conflict)),
        _ => false,
    }
}

/// True when a database error is a duplicate-key violation (MySQL 1062).
pub fn is_duplicate_key(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => mysql_errno(db.as_ref()) == Some(1062),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_errors_are_recognised_plain_and_wrapped_by_vitess() {
        #[rustfmt::skip]
        let table: [(u16, &str, Option<Transient>); 10] = [
            (1213, "Deadlock found when trying to get lock", Some(Transient::Conflict)),
            (1205, "Lock wait timeout exceeded", Some(Transient::Conflict)),
            (1053, "Server shutdown in progress", Some(Transient::Unavailable)),
            (1105, "target: ks.-.primary: vttablet: rpc error: code = Aborted desc = Deadlock found when trying to get lock; try restarting transaction (errno 1213) (sqlstate 40001)", Some(Transient::Conflict)),
            (1105, "vttablet: rpc error: code = Aborted desc = transaction 1682: ended at 2026-11-27 (exceeded timeout: 20s)", Some(Transient::Conflict)),
            (1105, "target: ks.-.primary: vttablet: rpc error: code = Unavailable desc = operation not allowed in state NOT_SERVING", Some(Transient::Unavailable)),
            (1105, "vttablet: rpc error: code = ResourceExhausted desc = transaction pool connection limit exceeded", Some(Transient::Unavailable)),
            (1105, "syntax error at position 7", None),
            (1062, "Duplicate entry", None),
            (1146, "Table doesn't exist", None),
        ];
        for (number, message, want) in table {
            assert_eq!(transient(number, message), want, "{number} {message}");
        }
    }
}
