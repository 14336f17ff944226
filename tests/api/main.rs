//! Integration tests: the real app on a random port, a fresh database each.

mod helpers;

mod answers;
mod api_keys;
mod dashboards;
mod delivery;
mod deploy;
mod endpoint_options;
mod errors;
mod event_types;
mod feed;
mod idempotency;
mod indexes;
mod isolation;
#[cfg(feature = "lambda")]
mod lambda;
mod layout;
mod limits;
mod notices;
mod openapi;
mod operations;
mod ops_notify;
mod order_life;
mod orders;
mod pipeline;
mod portal;
mod recovery;
mod refusals;
mod relay;
mod retention;
mod status_machine;
mod tenancy;
mod traces;
mod webhooks;
