//! The OpenAPI document, generated from the handlers' annotations. The
//! committed copy is `openapi/openapi.json`; regenerate it with
//! `cargo run -q -- openapi > openapi/openapi.json`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{
    api_keys, customers, deliveries, event_types, events, ops, orders, outbox, portal_sessions,
    webhook_secrets, webhooks,
};
use crate::domain::event::Change;
use crate::domain::{Address, Event, EventType, Order, OrderEventData, OrderStatus, Parcel};
use crate::error::{FieldError, Problem};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Mechanica shipping API",
        description = "Shipping orders, their status history and events. \
            Errors are RFC 9457 `application/problem+json`. \
            Authenticate with `Authorization: Bearer <token>`: the operator token, a customer API key (`mk_…`) or a customer portal session (`mps_…`, \
            only `/v1/webhooks…` and `/v1/event-types`, within its capabilities)."
    ),
    paths(
        customers::create, customers::list, customers::show,
        api_keys::create, api_keys::list, api_keys::revoke,
        orders::create, orders::list, orders::show, orders::amend, orders::change_status,
        orders::track, orders::history,
        events::feed,
        webhooks::create, webhooks::list, webhooks::show, webhooks::update, webhooks::remove,
        webhook_secrets::secret, webhook_secrets::rotate,
        deliveries::list, deliveries::attempts, deliveries::retry, deliveries::test,
        deliveries::recover, deliveries::for_order, event_types::list,
        portal_sessions::create, portal_sessions::end_all,
        outbox::list, outbox::retry,
        ops::healthz, ops::readyz, ops::metrics,
    ),
    components(schemas(
        Problem, FieldError, Address, Parcel, Order, OrderStatus, Event, EventType, OrderEventData,
        Change,
    )),
    modifiers(&BearerAuth, &CommonResponses),
    tags(
        (name = "customers", description = "Customers (operator only)"),
        (name = "api keys", description = "Customer API keys (operator only)"),
        (name = "orders", description = "Shipping orders and their status machine"),
        (name = "events", description = "The ordered event feed, for partners that pull"),
        (name = "webhooks", description = "Webhook endpoints and their Standard Webhooks signing secrets"),
        (name = "portal", description = "Customer portal sessions (operator only): links to /portal, scoped to one customer"),
        (name = "operations", description = "Health, readiness, metrics"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The operator token (`ADMIN_TOKEN`), a customer API key (`mk_…`) or a portal session token (`mps_…`)",
                    ))
                    .build(),
            ),
        );
    }
}

/// Answers every authenticated route can give, added here rather than on
/// each handler: 401 (no or bad token), 429 (over the key's rate), 503
/// (the database is away); and on routes that read a body, the ways a body
/// can be refused. A handler's own description of a status is kept.
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, HeaderBuilder, ResponseBuilder};
        use utoipa::openapi::{HttpMethod, Ref};

        let problem = |description: &str, retry_after: bool| {
            let mut response = ResponseBuilder::new().description(description).content(
                "application/problem+json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            );
            if retry_after {
                response = response.header(
                    "Retry-After",
                    HeaderBuilder::new()
                        .schema(<u64 as utoipa::PartialSchema>::schema())
                        .description(Some("Seconds to wait before retrying"))
                        .build(),
                );
            }
            response.build()
        };
        for item in openapi.paths.paths.values_mut() {
            for method in [
                HttpMethod::Get,
                HttpMethod::Post,
                HttpMethod::Patch,
                HttpMethod::Delete,
            ] {
                let operation = match method {
                    HttpMethod::Get => item.get.as_mut(),
                    HttpMethod::Post => item.post.as_mut(),
                    HttpMethod::Patch => item.patch.as_mut(),
                    _ => item.delete.as_mut(),
                };
                let Some(operation) = operation else { continue };
                if operation.security.is_none() {
                    continue;
                }
                let responses = &mut operation.responses.responses;
                responses
                    .entry("401".into())
                    .or_insert_with(|| problem("No or bad token", false).into());
                responses
                    .entry("429".into())
                    .or_insert_with(|| problem("Over this API key's request rate", true).into());
                responses.entry("503".into()).or_insert_with(|| {
                    problem("The database is unavailable; retry shortly", true).into()
                });
                if operation.request_body.is_some() {
                    for (status, description) in [
                        ("400", "Malformed JSON"),
                        ("408", "The request body did not arrive in time"),
                        ("413", "Body over 256 KiB"),
                        ("415", "Not JSON"),
                        ("422", "Invalid fields, each named"),
                    ] {
                        responses
                            .entry(status.into())
                            .or_insert_with(|| problem(description, false).into());
                    }
                }
            }
        }
    }
}

/// The document as committed: pretty JSON with a final newline.
pub fn render() -> String {
    let mut json = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    json.push('\n');
    json
}
