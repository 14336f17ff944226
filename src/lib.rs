//! Mechanica shipping API. The code tour:

/// `App::build` (shared by `main` and the tests), middleware, shutdown.
pub mod app;
/// Bearer tokens: the operator's, API keys and portal sessions; the `Principal` extractor.
pub mod auth;
/// Group work: concurrent requests share one round trip.
pub mod batch;
/// Every setting, read from the environment and validated once.
pub mod config;
/// Pool, migrations, and the SQL of each table.
pub mod db;
/// Webhook delivery: fan-out, attempts, outcomes, the worker's loops.
pub mod delivery;
/// Types that refuse invalid values: order status machine, contents, events, cursors.
pub mod domain;
/// `ApiError` and its problem+json form.
pub mod error;
/// Handlers, request/response types and routers, one module per resource.
pub mod http;
/// API-key lookups, grouped and briefly remembered.
pub mod key_lookups;
/// Request counts and latencies in Prometheus text.
pub mod metrics;
/// Operator notifications (Slack-compatible), at most one per subject per 10 minutes.
pub mod ops_notify;
/// Group commit for new orders and order changes: `creates`, `changes`, and what a failed `group` answers.
pub mod order_writer;
/// The relay from the outbox to SQS: a lease, a high-water mark, parking.
pub mod outbox;
/// Who is calling, and what each caller may see.
pub mod principal;
/// The SQS client wrapper.
pub mod queue;
/// Per-API-key token buckets.
pub mod rate_limit;
/// Webhook signing secrets at rest (AES-256-GCM when a key is set).
pub mod secrets;
/// Assigns feed positions to committed events, in commit order (the relay's pass).
pub mod sequencer;
/// The HTTP/1 server loop with header timeouts and size limits.
pub mod server;
/// In-process wake-ups between commits, the sequencer, the relay and long polls.
pub mod signals;
/// `AppState`: what every handler shares (below `http/` and `auth`).
pub mod state;
/// Tracing set-up for both binaries.
pub mod telemetry;
/// Random bytes, random tokens and their hashes (a leaf: uses nothing else).
pub mod tokens;
