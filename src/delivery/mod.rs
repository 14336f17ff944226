//! Webhook delivery: consumes SQS, fans events out to the subscribed
//! endpoints, signs and POSTs them, retries on a schedule kept in the
//! database, and records every attempt.
//!
//! One event's path through the stages, each a file:
//!
//! ```text
//!  SQS message {"id": event}
//!      │
//!  ingest ──── fan_out: one transaction makes the event's deliveries, one per
//!      │       subscribed endpoint; those free to go now are leased here
//!      │       (a later event of an order waits behind an earlier pending one)
//!      │       and start while it commits (recording: what the commit
//!      │       left, the attempted deliveries written again if it failed)
//!      ▼
//!  attempt ─── waits for its endpoint's slot and pace turn, then a worker
//!      │       slot; signs (signing), POSTs (client), decides (outcome);
//!      │       the outcome waits for its fan-out's commit to have held
//!      ▼
//!  settle ──── writes what finished meanwhile in one transaction: attempts,
//!      │       new states, the release of the next delivery of each order
//!      │
//!      ├──► retry due later, released, manual retry, lease run out:
//!      │    dispatch claims it when due, and it goes to attempt again
//!      └──► reconcile: an event whose message was lost is fanned out again
//! ```
//!
//! `worker` wires the stages into the long-running process; `runner` runs
//! them to completion per call, which is what a Lambda invocation does
//! (`lambda` speaks the Runtime API around it). `shared` holds what every
//! stage shares; `pace` an endpoint's lane and rate limit; `polls` how many
//! long polls ingest keeps waiting; `deletes` how handled messages leave
//! SQS, ten to a request; `refusals` how long it pauses when the
//! database answers but refuses a fan-out; `release` which delivery of an
//! order goes next once settle wrote the one before.

mod attempt;
pub mod client;
mod deletes;
mod dispatch;
pub mod fan_out;
mod ingest;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod metrics;
mod notices;
pub mod outcome;
mod pace;
mod polls;
mod reconcile;
pub mod recording;
mod refusals;
mod release;
mod runner;
pub mod schedule;
mod settle;
mod shared;
pub mod signing;
pub mod worker;
