//! `/v1/orders`: create (idempotently), read, list, move through the status
//! machine, and read an order's history. Every change writes its event in
//! the same transaction.

use axum::extract::State;
use axum::http::header::{ETAG, LOCATION};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;
use uuid::Uuid;

use super::extract::{object, objects, parse_id, present, Invalid, Json, Params, PathText};
use super::idempotent;
use super::page::{Page, DEFAULT_LIMIT, MAX_LIMIT};
use super::preconditions::{idempotency_key, if_match};
use crate::db;
use crate::domain::cursor::{self, CursorKind};
use crate::domain::order::Amendment;
use crate::domain::text::Checks;
use crate::domain::{time, Address, Event, Order, OrderContents, OrderStatus, Parcel};
use crate::error::{ApiError, ApiResult, FieldError, Problem};
use crate::order_writer::{self, ChangeKind, OrderChange};
use crate::principal::Principal;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/orders", get(list).post(create))
        .route("/v1/orders/{id}", get(show).patch(amend))
        .route("/v1/orders/{id}/status", post(change_status))
        .route("/v1/orders/{id}/tracking", post(track))
        .route("/v1/orders/{id}/events", get(history))
}

const MAX_NOTE_CHARS: usize = 500;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderIn {
    /// Required for the operator, who creates orders on a customer's behalf;
    /// a customer may leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<Uuid>,
    /// The customer's own reference, unique per customer (1..100 characters).
    #[serde(default)]
    #[schema(example = "PO-2026-0042")]
    pub reference: Option<String>,
    #[serde(deserialize_with = "object")]
    pub pickup: Address,
    #[serde(deserialize_with = "object")]
    pub delivery: Address,
    /// 1..100 parcels.
    #[serde(deserialize_with = "objects")]
    pub parcels: Vec<Parcel>,
    /// Up to 2000 characters.
    #[serde(default)]
    pub notes: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusChangeIn {
    /// The status to move to.
    #[schema(value_type = OrderStatus)]
    pub status: String,
    /// Free text, up to 500 characters.
    #[serde(default)]
    pub note: Option<String>,
    /// Free text, up to 500 characters.
    #[serde(default)]
    #[schema(example = "Rotterdam hub")]
    pub location: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrackingIn {
    /// Where the parcel is: free text, 1..500 characters.
    #[schema(example = "Antwerp depot")]
    pub location: String,
    /// Free text, up to 500 characters.
    #[serde(default)]
    pub note: Option<String>,
    /// When it should arrive, RFC 3339; `null` clears it, absent keeps it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = DateTime, example = "2026-11-26T16:00:00Z")]
    pub eta: Option<Option<String>>,
}

/// Any of the fields; each replaces the order's whole, under the rules of
/// creation. The pickup address cannot be amended.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"notes": "Deliver to the back door"}))]
pub struct OrderPatch {
    #[serde(default, deserialize_with = "some_object")]
    #[schema(value_type = Option<Address>)]
    pub delivery: Option<Address>,
    /// 1..100 parcels.
    #[serde(default, deserialize_with = "some_objects")]
    #[schema(value_type = Option<Vec<Parcel>>)]
    pub parcels: Option<Vec<Parcel>>,
    /// Up to 2000 characters; `null` clears them.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub notes: Option<Option<String>>,
}

fn some_object<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Address>, D::Error> {
    object(d).map(Some)
}

fn some_objects<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<Parcel>>, D::Error> {
    objects(d).map(Some)
}

/// Create an order. With `Idempotency-Key`, a retry returns the first response.
#[utoipa::path(post, path = "/v1/orders", operation_id = "createOrder", tag = "orders",
    request_body = OrderIn,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[ -~]+$",
        description = "1..255 printable ASCII characters; the same key and body within 24 h replays the first response")),
    responses(
        (status = 201, description = "Created (or replayed, with `Idempotent-Replayed: true`)", body = Order,
            headers(("ETag" = String, description = "The order's version, quoted"))),
        (status = 409, description = "Duplicate reference", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field, or the key was used with another body", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn create(
    principal: Principal,
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<OrderIn>,
) -> ApiResult<Response> {
    let key = idempotency_key(&headers)?;
    let customer_id = principal.scope(body.customer_id)?.ok_or_else(|| {
        ApiError::invalid("customer_id", "required when the operator creates an order")
    })?;
    // What makes a retry "the same request"; only needed with a key.
    let request = key.as_ref().map(|_| request_hash(customer_id, &body));
    let contents = OrderContents::parse(
        body.reference,
        body.pickup,
        body.delivery,
        body.parcels,
        body.notes,
    )
    .map_err(ApiError::Validation)?;

    if principal == Principal::Operator
        && db::customers::find(&state.db, customer_id).await?.is_none()
    {
        return Err(ApiError::invalid("customer_id", "no such customer"));
    }
    let order = new_order(customer_id, contents);
    let order = match (key, request) {
        (Some(key), Some(request)) => {
            // The key's claim, the order and the stored answer commit
            // together; on any error the transaction rolls back, the claim
            // with it.
            let mut tx = state.db.begin().await?;
            if let Some(answer) =
                idempotent::claim(&mut tx, principal.owner_id(), Some(&key), request).await?
            {
                return Ok(answer);
            }
            let events =
                order_writer::insert_one(&mut tx, &order, crate::telemetry::current_traceparent())
                    .await
                    .map_err(|e| order_writer::insert_error(e, &order))?;
            let owner = principal.owner_id();
            idempotent::complete(&mut tx, owner, Some(&key), StatusCode::CREATED, &order).await?;
            tx.commit().await?;
            state.signals.events_committed(events);
            order
        }
        _ => state.orders.create(order).await?,
    };
    let location = format!("/v1/orders/{}", order.id);
    Ok((
        StatusCode::CREATED,
        [(LOCATION, location), (ETAG, etag(&order))],
        axum::Json(order),
    )
        .into_response())
}

/// A new order, pending, at version 1.
fn new_order(customer_id: Uuid, contents: OrderContents) -> Order {
    let now = time::now();
    Order {
        id: Uuid::now_v7(),
        customer_id,
        reference: contents.reference,
        status: OrderStatus::Pending,
        pickup: contents.pickup,
        delivery: contents.delivery,
        parcels: contents.parcels,
        notes: contents.notes,
        eta: None,
        last_location: None,
        version: 1,
        created_at: now,
        updated_at: now,
    }
}

/// What makes two creations "the same": the customer and the parsed body.
fn request_hash(customer_id: Uuid, body: &OrderIn) -> [u8; 32] {
    let body = serde_json::to_vec(body).unwrap_or_default();
    idempotent::request_hash(&[b"create order", customer_id.as_bytes(), &body])
}

/// What makes two status changes "the same": the order and the body.
fn status_request_hash(order_id: Uuid, body: &StatusChangeIn) -> [u8; 32] {
    let body = serde_json::to_vec(&(&body.status, &body.note, &body.location)).unwrap_or_default();
    idempotent::request_hash(&[b"change status", order_id.as_bytes(), &body])
}

fn etag(order: &Order) -> String {
    format!("\"{}\"", order.version)
}

/// Finds an order the caller may see; anything else is 404.
pub(super) async fn visible_order(
    state: &AppState,
    principal: Principal,
    raw_id: &str,
) -> ApiResult<Order> {
    let id = parse_id(raw_id, "order")?;
    match db::orders::find(&state.db, id).await? {
        Some(order) if principal.can_see(order.customer_id) => Ok(order),
        _ => Err(ApiError::NotFound("order")),
    }
}

/// Get an order.
#[utoipa::path(get, path = "/v1/orders/{id}", operation_id = "getOrder", tag = "orders",
    params(("id" = Uuid, Path, description = "Order id")),
    responses(
        (status = 200, description = "The order", body = Order,
            headers(("ETag" = String, description = "The order's version, quoted"))),
        (status = 404, description = "No such order (or another customer's)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn show(
    principal: Principal,
    State(state): State<AppState>,
    PathText(id): PathText<String>,
) -> ApiResult<Response> {
    let order = visible_order(&state, principal, &id).await?;
    Ok(([(ETAG, etag(&order))], axum::Json(order)).into_response())
}

/// List orders, newest first.
#[utoipa::path(get, path = "/v1/orders", operation_id = "listOrders", tag = "orders",
    params(
        ("status" = Option<OrderStatus>, Query, description = "Only orders in this status"),
        ("customer_id" = Option<Uuid>, Query, description = "Operator only: one customer's orders"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "1..100, default 20"),
        ("cursor" = Option<String>, Query, min_length = 1, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of orders", body = Page<Order>),
        (status = 422, description = "Bad query parameter", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn list(
    principal: Principal,
    State(state): State<AppState>,
    params: Params,
) -> ApiResult<axum::Json<Page<Order>>> {
    let mut invalid = Invalid::default();
    let limit = invalid.take(params.limit(DEFAULT_LIMIT, MAX_LIMIT));
    let before = invalid.take(params.cursor_id(CursorKind::Orders));
    let requested = invalid.take(params.uuid("customer_id"));
    let status = invalid.take(
        params
            .get("status")
            .map(|s| OrderStatus::parse(s).ok_or_else(|| unknown_status("status")))
            .transpose(),
    );
    invalid.finish()?;
    let customer_id = principal.scope(requested)?;
    let filter = db::orders::ListFilter {
        customer_id,
        status,
        before,
        limit: db::fetch_limit(limit),
    };
    let orders = db::orders::list(&state.db, &filter).await?;
    Ok(axum::Json(Page::from_rows(
        orders,
        limit,
        |o| cursor::encode_id(CursorKind::Orders, o.id),
        |o| o,
    )))
}

fn unknown_status(field: &str) -> FieldError {
    let names: Vec<&str> = OrderStatus::ALL.iter().map(|s| s.as_str()).collect();
    FieldError::new(field, format!("must be one of {}", names.join(", ")))
}

/// Move an order to another status. Customers may only cancel. With
/// `Idempotency-Key`, a retry returns the first response and changes nothing.
#[utoipa::path(post, path = "/v1/orders/{id}/status", operation_id = "changeOrderStatus", tag = "orders",
    request_body = StatusChangeIn,
    params(
        ("id" = Uuid, Path, description = "Order id"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[ -~]+$",
            description = "1..255 printable ASCII characters; the same key and body within 24 h replays the first response"),
        ("If-Match" = Option<String>, Header, pattern = r#"^\s*(\*|"[0-9]{1,9}"(\s*,\s*"[0-9]{1,9}")*)\s*$"#, description = "The version you last saw, quoted: 412 if the order has changed since"),
    ),
    responses(
        (status = 200, description = "The updated order", body = Order,
            headers(("ETag" = String, description = "The order's new version, quoted"))),
        (status = 403, description = "A customer asked for a status other than `cancelled`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order (or another customer's)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not allowed from the current status (`invalid-transition`)", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`If-Match` is stale", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn change_status(
    principal: Principal,
    State(state): State<AppState>,
    PathText(id): PathText<String>,
    headers: HeaderMap,
    Json(body): Json<StatusChangeIn>,
) -> ApiResult<Response> {
    let id = parse_id(&id, "order")?;
    let expected = if_match(&headers)?;
    let key = idempotency_key(&headers)?;
    let mut checks = Checks::default();
    let target = OrderStatus::parse(&body.status);
    if target.is_none() {
        let e = unknown_status("status");
        checks.fail(e.field, e.message);
    }
    if let Some(note) = &body.note {
        checks.text("note", note, MAX_NOTE_CHARS, true);
    }
    if let Some(location) = &body.location {
        checks.text("location", location, MAX_NOTE_CHARS, false);
    }
    checks.finish().map_err(ApiError::Validation)?;
    let target = target.ok_or(ApiError::Internal)?;
    let change = OrderChange {
        order_id: id,
        principal,
        expected,
        trace: crate::telemetry::current_traceparent(),
        kind: ChangeKind::Status {
            target,
            note: body.note.clone(),
            location: body.location.clone(),
        },
    };
    let request = key.as_ref().map(|_| status_request_hash(id, &body));
    make(&state, change, key.zip(request)).await
}

/// Record where an order is and when it should arrive (operator only):
/// the event `order.tracking_updated`. With `Idempotency-Key`, a retry
/// returns the first response and changes nothing.
#[utoipa::path(post, path = "/v1/orders/{id}/tracking", operation_id = "updateOrderTracking", tag = "orders",
    request_body = TrackingIn,
    params(
        ("id" = Uuid, Path, description = "Order id"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[ -~]+$",
            description = "1..255 printable ASCII characters; the same key and body within 24 h replays the first response"),
        ("If-Match" = Option<String>, Header, pattern = r#"^\s*(\*|"[0-9]{1,9}"(\s*,\s*"[0-9]{1,9}")*)\s*$"#, description = "The version you last saw, quoted: 412 if the order has changed since"),
    ),
    responses(
        (status = 200, description = "The updated order", body = Order,
            headers(("ETag" = String, description = "The order's new version, quoted"))),
        (status = 403, description = "Customers cannot send tracking updates", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The order is not under way (`wrong-status`): tracking updates are accepted while it is confirmed, picked_up, in_transit, out_for_delivery or exception", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`If-Match` is stale", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn track(
    principal: Principal,
    State(state): State<AppState>,
    PathText(id): PathText<String>,
    headers: HeaderMap,
    Json(body): Json<TrackingIn>,
) -> ApiResult<Response> {
    if principal != Principal::Operator {
        return Err(ApiError::Forbidden(
            "tracking updates come from the operator".into(),
        ));
    }
    let id = parse_id(&id, "order")?;
    let expected = if_match(&headers)?;
    let key = idempotency_key(&headers)?;
    let mut checks = Checks::default();
    checks.line("location", &body.location, MAX_NOTE_CHARS);
    if let Some(note) = &body.note {
        checks.text("note", note, MAX_NOTE_CHARS, true);
    }
    let eta = match &body.eta {
        Some(Some(text)) => match parse_eta(text) {
            Ok(eta) => Some(Some(eta)),
            Err(message) => {
                checks.fail("eta", message);
                None
            }
        },
        Some(None) => Some(None),
        None => None,
    };
    checks.finish().map_err(ApiError::Validation)?;
    let request = key.as_ref().map(|_| {
        let body = serde_json::to_vec(&(&body.location, &body.note, &body.eta)).unwrap_or_default();
        idempotent::request_hash(&[b"tracking", id.as_bytes(), &body])
    });
    let change = OrderChange {
        order_id: id,
        principal,
        expected,
        trace: crate::telemetry::current_traceparent(),
        kind: ChangeKind::Tracking {
            location: body.location,
            note: body.note,
            eta,
        },
    };
    make(&state, change, key.zip(request)).await
}

/// An RFC 3339 time the database can keep, to the millisecond.
fn parse_eta(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    use chrono::{Datelike, SubsecRound};
    let eta = chrono::DateTime::parse_from_rfc3339(text)
        .map_err(|_| "must be an RFC 3339 time, like 2026-11-26T16:00:00Z, or null".to_string())?
        .with_timezone(&chrono::Utc)
        .trunc_subsecs(3);
    if !(2000..=9999).contains(&eta.year()) {
        return Err("must be a time between the years 2000 and 9999".into());
    }
    Ok(eta)
}

/// Amend an order before pickup: its delivery address, parcels or notes
/// (the event `order.updated`). A patch that changes nothing answers the
/// order as it is, at the same version, and writes no event.
#[utoipa::path(patch, path = "/v1/orders/{id}", operation_id = "amendOrder", tag = "orders",
    request_body = OrderPatch,
    params(
        ("id" = Uuid, Path, description = "Order id"),
        ("If-Match" = Option<String>, Header, pattern = r#"^\s*(\*|"[0-9]{1,9}"(\s*,\s*"[0-9]{1,9}")*)\s*$"#, description = "The version you last saw, quoted: 412 if the order has changed since"),
    ),
    responses(
        (status = 200, description = "The order, amended (or unchanged)", body = Order,
            headers(("ETag" = String, description = "The order's version, quoted"))),
        (status = 404, description = "No such order (or another customer's)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The order is past pickup (`wrong-status`): amendments are accepted while it is pending or confirmed", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`If-Match` is stale", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid or unknown field, or no field at all", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn amend(
    principal: Principal,
    State(state): State<AppState>,
    PathText(id): PathText<String>,
    headers: HeaderMap,
    Json(body): Json<OrderPatch>,
) -> ApiResult<Response> {
    let id = parse_id(&id, "order")?;
    let expected = if_match(&headers)?;
    let amendment =
        Amendment::parse(body.delivery, body.parcels, body.notes).map_err(ApiError::Validation)?;
    let change = OrderChange {
        order_id: id,
        principal,
        expected,
        trace: crate::telemetry::current_traceparent(),
        kind: ChangeKind::Amend(amendment),
    };
    make(&state, change, None).await
}

/// Makes a change: with an idempotency key (and the request's hash) in one
/// transaction with the key's claim and stored answer, otherwise in a group.
async fn make(
    state: &AppState,
    change: OrderChange,
    key: Option<(String, [u8; 32])>,
) -> ApiResult<Response> {
    let order = match key {
        Some((key, request)) => {
            let mut tx = state.db.begin().await?;
            let owner = change.principal.owner_id();
            if let Some(answer) = idempotent::claim(&mut tx, owner, Some(&key), request).await? {
                return Ok(answer);
            }
            let (order, events) = order_writer::change_one(&mut tx, &change).await?;
            idempotent::complete(&mut tx, owner, Some(&key), StatusCode::OK, &order).await?;
            tx.commit().await?;
            state.signals.events_committed(events);
            order
        }
        None => state.orders.change(change).await?,
    };
    Ok(([(ETAG, etag(&order))], axum::Json(order)).into_response())
}

/// An order's events, oldest first: the same envelopes webhooks carry.
#[utoipa::path(get, path = "/v1/orders/{id}/events", operation_id = "listOrderEvents", tag = "orders",
    params(
        ("id" = Uuid, Path, description = "Order id"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "1..100, default 20"),
        ("cursor" = Option<String>, Query, min_length = 1, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of the order's events", body = Page<Event>),
        (status = 404, description = "No such order (or another customer's)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad query parameter", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn history(
    principal: Principal,
    State(state): State<AppState>,
    PathText(id): PathText<String>,
    params: Params,
) -> ApiResult<axum::Json<Page<Box<RawValue>>>> {
    let order = visible_order(&state, principal, &id).await?;
    let mut invalid = Invalid::default();
    let limit = invalid.take(params.limit(DEFAULT_LIMIT, MAX_LIMIT));
    let after = invalid.take(params.cursor_number(CursorKind::OrderEvents));
    invalid.finish()?;
    let after = after.map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    let events =
        db::order_events::history(&state.db, order.id, after, db::fetch_limit(limit)).await?;
    let mut page = Page::from_rows(
        events,
        limit,
        |e| cursor::encode_number(CursorKind::OrderEvents, e.sequence.into()),
        |e| e.payload,
    );
    let data = page
        .data
        .drain(..)
        .map(RawValue::from_string)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::internal("stored event is not JSON", e))?;
    Ok(axum::Json(Page {
        data,
        next_cursor: page.next_cursor,
    }))
}
