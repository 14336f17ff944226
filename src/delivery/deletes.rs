//! Deleting handled messages from SQS, up to ten to a request.
//!
//! A receiver hands over the receipts of its batch once the batch's
//! deliveries are recorded. Under a steady load a receive brings a message
//! or three (one relay round's), so deleting each batch on its own spent a
//! `DeleteMessageBatch` on two or three messages. One task gathers receipts
//! for up to `GATHER` after the first, or until it has ten, and deletes them
//! in one request: SQS bills by request, and each is work for the worker and
//! for SQS alike.
//!
//! A receipt not deleted (the worker killed meanwhile, SQS failing) only
//! means its message comes back once its visibility ends
//! (`queue::RECEIVED_HIDDEN`), to a fan-out that finds its deliveries made.
//! A worker that stops deletes what it gathered before it exits, waiting
//! for SQS a few seconds at most.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::queue::{Queue, PER_CALL};

/// How long receipts are gathered after the first: a small part of the
/// 30 s a received message stays hidden. At 200 messages a second it fills
/// a request.
const GATHER: Duration = Duration::from_millis(50);

/// How long a worker that stops waits for its last deletes: an SQS that
/// hangs must not hold it past the orchestrator's grace period (the SDK
/// gives a request 30 s). What is not deleted comes back, as after a crash.
const LAST_DELETES_WAIT: Duration = Duration::from_secs(5);

/// Where receivers hand over the receipts of handled messages.
#[derive(Clone)]
pub(super) struct Deletes {
    receipts: mpsc::UnboundedSender<String>,
}

/// What was deleted, for `/metrics`.
#[derive(Default)]
pub(super) struct Deleted {
    requests: AtomicU64,
    messages: AtomicU64,
}

impl Deletes {
    /// Starts the task that deletes; it ends, having deleted everything
    /// handed over, once every `Deletes` is dropped.
    pub(super) fn start(queue: Queue) -> (Deletes, Arc<Deleted>, JoinHandle<()>) {
        let (receipts, handed) = mpsc::unbounded_channel();
        let deleted = Arc::new(Deleted::default());
        let task = tokio::spawn(run(queue, handed, deleted.clone()));
        (Deletes { receipts }, deleted, task)
    }

    /// Hands over the receipts of messages whose deliveries are recorded.
    pub(super) fn delete(&self, receipts: impl IntoIterator<Item = String>) {
        for receipt in receipts {
            // Closed only once the task ended, after the worker stopped:
            // the message comes back, as after a crash.
            let _ = self.receipts.send(receipt);
        }
    }
}

/// Waits for `task` (from `start`, every `Deletes` dropped) to delete what
/// it was handed, for `LAST_DELETES_WAIT` at most.
pub(super) async fn finish(task: JoinHandle<()>) {
    if tokio::time::timeout(LAST_DELETES_WAIT, task).await.is_err() {
        tracing::warn!("SQS did not answer the last deletes in time; those messages come back once visible, to a fan-out that finds their deliveries made");
    }
}

async fn run(queue: Queue, mut handed: mpsc::UnboundedReceiver<String>, deleted: Arc<Deleted>) {
    let mut requests = JoinSet::new();
    while let Some(first) = handed.recv().await {
        let mut receipts = vec![first];
        let until = Instant::now() + GATHER;
        while receipts.len() < PER_CALL {
            match tokio::time::timeout_at(until, handed.recv()).await {
                Ok(Some(receipt)) => receipts.push(receipt),
                Ok(None) | Err(_) => break,
            }
        }
        while requests.try_join_next().is_some() {}
        // Each request on its own: a far-away SQS answers in tens of ms.
        let (queue, deleted) = (queue.clone(), deleted.clone());
        requests.spawn(async move {
            let refs: Vec<&str> = receipts.iter().map(String::as_str).collect();
            match queue.delete(&refs).await {
                Ok(()) => {
                    deleted.requests.fetch_add(1, Ordering::Relaxed);
                    deleted
                        .messages
                        .fetch_add(receipts.len() as u64, Ordering::Relaxed);
                }
                // Received again later: fan-out is idempotent.
                Err(e) => tracing::warn!(error = %e, "deleting SQS messages failed"),
            }
        });
    }
    while requests.join_next().await.is_some() {}
}

impl Deleted {
    /// The counters for `/metrics`.
    pub(super) fn render(&self) -> String {
        format!(
            "# HELP webhook_sqs_delete_requests_total DeleteMessageBatch requests that succeeded (up to ten messages each).\n# TYPE webhook_sqs_delete_requests_total counter\nwebhook_sqs_delete_requests_total {}\n\
             # HELP webhook_sqs_messages_deleted_total SQS messages deleted once their deliveries were recorded.\n# TYPE webhook_sqs_messages_deleted_total counter\nwebhook_sqs_messages_deleted_total {}\n",
            self.requests.load(Ordering::Relaxed),
            self.messages.load(Ordering::Relaxed)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worker waited for its last deletes as long as the SDK lets a
    /// request run (30 s) when SQS took them and never answered; an
    /// orchestrator's grace period is about as long.
    #[tokio::test]
    async fn a_stopping_worker_waits_for_a_hanging_sqs_a_few_seconds_at_most() {
        // Accepts every connection and never answers, as SQS behind a
        // stalled network.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", silent.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = vec![];
            while let Ok((connection, _)) = silent.accept().await {
                held.push(connection);
            }
        });
        let queue = Queue::connect(
            "http://sqs.us-east-1.localhost/000000000000/hanging",
            Some(&endpoint),
        )
        .await;
        let (deletes, deleted, task) = Deletes::start(queue);
        deletes.delete(["a-receipt".to_string()]);
        drop(deletes);
        let started = Instant::now();
        finish(task).await;
        let waited = started.elapsed();
        assert!(
            waited >= LAST_DELETES_WAIT && waited < LAST_DELETES_WAIT + Duration::from_secs(1),
            "waited {waited:?}"
        );
        assert!(deleted
            .render()
            .contains("webhook_sqs_messages_deleted_total 0\n"));
    }
}
