//! The OpenAPI document, generated from the handlers' annotations. The
//! committed copy is `openapi/openapi.json`; regenerate it with
//! `cargo run -q -- openapi > openapi/openapi.json`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{api_keys, customers, deliveries, events, ops, orders, webhooks};
use crate::domain::{Address, Event, EventType, Order, OrderEventData, OrderStatus, Parcel};
use crate::error::{FieldError, Problem};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Mechanica shipping API",
        description = "Shipping orders, their status history and events. \
            Errors are RFC 9457 `application/problem+json`. \
            Authenticate with `Authorization: Bearer <token>`: the operator token or a customer API key."
    ),
    paths(
        customers::create, customers::list, customers::show,
        api_keys::create, api_keys::list, api_keys::revoke,
        orders::create, orders::list, orders::show, orders::change_status, orders::history,
        events::feed,
        webhooks::create, webhooks::list, webhooks::show, webhooks::update, webhooks::remove,
        webhooks::secret, webhooks::rotate,
        deliveries::list, deliveries::attempts, deliveries::retry, deliveries::test,
        ops::healthz, ops::readyz, ops::metrics,
    ),
    components(schemas(
        Problem, FieldError, Address, Parcel, Order, OrderStatus, Event, EventType, OrderEventData,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "customers", description = "Customers (operator only)"),
        (name = "api keys", description = "Customer API keys (operator only)"),
        (name = "orders", description = "Shipping orders and their status machine"),
        (name = "events", description = "The ordered event feed, for partners that pull"),
        (name = "webhooks", description = "Webhook endpoints and their Standard Webhooks signing secrets"),
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
                        "The operator token (`ADMIN_TOKEN`) or a customer API key (`mk_…`)",
                    ))
                    .build(),
            ),
        );
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
