//! Extractors whose rejections are `ApiError`s: JSON bodies with the bad
//! field named, query parameters, ids in paths.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::domain::cursor::{self, CursorKind};
use crate::error::{ApiError, FieldError};

/// A JSON request body. Wrong content type 415, too large 413, not JSON 400,
/// JSON of the wrong shape 422 naming the field.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers().get(CONTENT_TYPE)) {
            return Err(ApiError::UnsupportedMediaType(
                "send the body as `Content-Type: application/json`".into(),
            ));
        }
        let bytes = read_body(req, state).await?;
        parse_json(&bytes).map(Json)
    }
}

/// A JSON body that may be left out entirely (no bytes at all).
pub struct OptionalJson<T>(pub Option<T>);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = req.headers().get(CONTENT_TYPE).cloned();
        let bytes = read_body(req, state).await?;
        if bytes.is_empty() {
            return Ok(OptionalJson(None));
        }
        if !is_json(content_type.as_ref()) {
            return Err(ApiError::UnsupportedMediaType(
                "send the body as `Content-Type: application/json`".into(),
            ));
        }
        // `null` counts as no body.
        if bytes.trim_ascii() == b"null" {
            return Ok(OptionalJson(None));
        }
        parse_json(&bytes).map(|v| OptionalJson(Some(v)))
    }
}

/// A client has this long to send a request body.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The whole body, within `BODY_READ_TIMEOUT`: a client trickling its body
/// gets 408 instead of holding the request open.
async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(BODY_READ_TIMEOUT, Bytes::from_request(req, state)).await {
        Err(_) => Err(ApiError::RequestTimeout),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(rejection)) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Err(ApiError::PayloadTooLarge)
        }
        Ok(Err(_)) => Err(ApiError::BadRequest(
            "the request body could not be read".into(),
        )),
    }
}

/// For a nested struct field, `#[serde(deserialize_with = "object")]`:
/// serde would also read a struct from a JSON array, field by field; this
/// accepts only an object. Errors keep their full path (`pickup.country`).
pub fn object<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    deserializer.deserialize_map(ObjectOnly(std::marker::PhantomData))
}

/// For a field where `null` means something (clear it):
/// `#[serde(default, deserialize_with = "present")]` tells a field sent as
/// `null` (`Some(None)`) from one not sent (`None`).
pub fn present<'de, D: serde::Deserializer<'de>, T: serde::Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    <Option<T> as serde::Deserialize>::deserialize(d).map(Some)
}

/// `object` for each element of a list of structs.
pub fn objects<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    let list: Vec<Object<T>> = serde::Deserialize::deserialize(deserializer)?;
    Ok(list.into_iter().map(|Object(t)| t).collect())
}

/// `T`, read only from a JSON object.
struct Object<T>(T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        object(d).map(Object)
    }
}

struct ObjectOnly<T>(std::marker::PhantomData<T>);

impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for ObjectOnly<T> {
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
    }
}

fn is_json(content_type: Option<&axum::http::HeaderValue>) -> bool {
    let Some(mime) = content_type.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = mime
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses a body: malformed JSON is a 400; well-formed JSON of the wrong
/// shape a 422 naming the offending field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body is not valid JSON: {}",
            without_position(&e.to_string())
        ))
    })?;
    // Every body is an object, as every nested struct is.
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de)
        .map(|Object(body)| body)
        .map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            let message = without_position(&inner.to_string());
            match inner.classify() {
                // Skipping a value does not check its strings are UTF-8; reading does.
                serde_json::error::Category::Data => {
                    ApiError::Validation(vec![FieldError::new(field_of(&path, &message), message)])
                }
                _ => ApiError::BadRequest(format!("the body is not valid JSON: {message}")),
            }
        })
}

fn without_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// The field an error is about. The path already ends in an unknown
/// field's name; a missing field is reported at its parent's path.
fn field_of(path: &str, message: &str) -> String {
    let parent = if path == "." { "" } else { path };
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    match (missing, parent) {
        (Some(name), "") => name.to_string(),
        (Some(name), parent) => format!("{parent}.{name}"),
        (None, "") => "body".to_string(),
        (None, parent) => parent.to_string(),
    }
}

/// Query parameters, read by name; a value that does not parse is a 422
/// naming the parameter.
pub struct Params(HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(pairs) = Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::BadRequest("the query string is malformed".into()))?;
        let mut map = HashMap::new();
        for (name, value) in pairs {
            map.entry(name).or_insert(value);
        }
        Ok(Params(map))
    }
}

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// `limit` within 1..=max, `default` when absent.
    pub fn limit(&self, default: u32, max: u32) -> Result<u32, FieldError> {
        match self.get("limit") {
            None => Ok(default),
            Some(raw) => raw
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| {
                    FieldError::new("limit", format!("must be an integer from 1 to {max}"))
                }),
        }
    }

    pub fn cursor_id(&self, kind: CursorKind) -> Result<Option<Uuid>, FieldError> {
        self.get("cursor")
            .map(|raw| cursor::decode_id(kind, raw).ok_or_else(bad_cursor))
            .transpose()
    }

    pub fn cursor_number(&self, kind: CursorKind) -> Result<Option<u64>, FieldError> {
        self.get("cursor")
            .map(|raw| cursor::decode_number(kind, raw).ok_or_else(bad_cursor))
            .transpose()
    }

    pub fn uuid(&self, name: &str) -> Result<Option<Uuid>, FieldError> {
        self.get(name)
            .map(|raw| Uuid::parse_str(raw).map_err(|_| FieldError::new(name, "must be a UUID")))
            .transpose()
    }
}

fn bad_cursor() -> FieldError {
    FieldError::new("cursor", "is not a cursor this list returned")
}

/// Collects the errors of reading several parameters into one 422.
#[derive(Default)]
pub struct Invalid(Vec<FieldError>);

impl Invalid {
    /// The value, or its default with the error kept for `finish`.
    pub fn take<T: Default>(&mut self, result: Result<T, FieldError>) -> T {
        result.unwrap_or_else(|e| {
            self.0.push(e);
            T::default()
        })
    }

    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.0))
        }
    }
}

/// An id from the path. One that is not a UUID names nothing: 404.
pub fn parse_id(raw: &str, what: &'static str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(raw).map_err(|_| ApiError::NotFound(what))
}

/// Path segments as text, for `parse_id`. A segment that is not even UTF-8
/// names nothing either: 404, like any other id that is not a UUID.
pub struct PathText<T>(pub T);

impl<T, S> FromRequestParts<S> for PathText<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| PathText(value))
            .map_err(|_| ApiError::NotFound("resource"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        n: u32,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        items: Vec<Inner>,
    }

    fn field(body: &str) -> String {
        match parse_json::<Outer>(body.as_bytes()).unwrap_err() {
            ApiError::Validation(errors) => errors[0].field.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn shape_errors_name_the_field() {
        assert_eq!(field(r#"{"items":[{"n":1},{"n":-1}]}"#), "items[1].n");
        assert_eq!(field(r#"{"items":[{"n":1,"x":2}]}"#), "items[0].x");
        assert_eq!(field(r#"{"items":[],"extra":true}"#), "extra");
        assert_eq!(field(r#"{}"#), "items");
        assert_eq!(field(r#"[]"#), "body");
    }

    #[test]
    fn only_objects_are_bodies() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Body {
            a: Option<u32>,
            b: Option<u32>,
        }
        for body in ["[null, null]", "[1, 2]", "3", "\"x\"", "true", "null"] {
            let err = parse_json::<Body>(body.as_bytes()).unwrap_err();
            assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        }
        assert!(parse_json::<Body>(b" {\"a\": 1}").is_ok());
    }

    #[test]
    fn nested_structs_must_be_objects_too() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Inner {
            x: u32,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Outer {
            #[serde(deserialize_with = "super::object")]
            one: Inner,
            #[serde(deserialize_with = "super::objects")]
            many: Vec<Inner>,
        }
        assert!(parse_json::<Outer>(br#"{"one": {"x": 1}, "many": [{"x": 2}]}"#).is_ok());
        assert_eq!(field(r#"{"one": [1], "many": []}"#), "one");
        assert_eq!(
            field(r#"{"one": {"x": 1}, "many": [{"x": 1}, [2]]}"#),
            "many[1]"
        );
        // Paths inside still name the field.
        assert_eq!(field(r#"{"one": {"x": "a"}, "many": []}"#), "one.x");
        assert_eq!(
            field(r#"{"one": {"x": 1}, "many": [{"x": -1}]}"#),
            "many[0].x"
        );

        fn field(body: &str) -> String {
            match parse_json::<Outer>(body.as_bytes()) {
                Err(ApiError::Validation(errors)) => errors[0].field.clone(),
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn syntax_errors_are_bad_requests() {
        for body in ["{", "not json", "{\"items\":[]} trailing", "\u{0}"] {
            assert!(matches!(
                parse_json::<Outer>(body.as_bytes()),
                Err(ApiError::BadRequest(_))
            ));
        }
        let deep = "[".repeat(10_000);
        assert!(matches!(
            parse_json::<Outer>(deep.as_bytes()),
            Err(ApiError::BadRequest(_)) | Err(ApiError::Validation(_))
        ));
        for invalid_utf8 in [&b"{\"items\":\"\xff\"}"[..], b"{\"\xff\":1}"] {
            assert!(matches!(
                parse_json::<Outer>(invalid_utf8),
                Err(ApiError::BadRequest(_)) | Err(ApiError::Validation(_))
            ));
        }
    }
}
