//! Webhook delivery: the worker that consumes SQS, fans events out to the
//! subscribed endpoints, signs and POSTs them, retries on a schedule kept in
//! the database, and records every attempt.

pub mod client;
pub mod fan_out;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod metrics;
pub mod outcome;
pub mod schedule;
pub mod signing;
pub mod worker;
