//! The SQS client wrapper: publishing event batches (and, for the worker,
//! receiving and deleting). Nothing here knows which SQS it talks to:
//! `AWS_ENDPOINT_URL` and `AWS_REGION` are read by the SDK itself.

use std::time::Duration;

use aws_sdk_sqs::config::timeout::TimeoutConfig;
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageAttributeValue, SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;

#[derive(Clone)]
pub struct Queue {
    client: Client,
    /// The same, with `publish_timeouts`: publishing is short, and a hung
    /// SQS must not hold the relay for long. A client of its own rather
    /// than a per-call override, which the SDK would merge into a fresh
    /// configuration on every send.
    publisher: Client,
    url: String,
    fifo: bool,
}

/// One event to publish.
pub struct Outgoing<'a> {
    /// Unique within a batch; the event id serves.
    pub id: String,
    pub body: &'a str,
    pub event_type: &'a str,
    pub customer_id: String,
    /// FIFO group: events of one order stay in order.
    pub group: String,
    /// The W3C trace context of the request that made the event, carried
    /// as the `traceparent` message attribute.
    pub traceparent: Option<&'a str>,
}

impl Queue {
    /// A client for `url`, configured from the environment like any AWS SDK
    /// (region, credentials), at `endpoint` if given.
    pub async fn connect(url: &str, endpoint: Option<&str>) -> Queue {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(endpoint) = endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let shared = loader
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(2))
                    // Above the 20 s long poll of ReceiveMessage.
                    .operation_attempt_timeout(Duration::from_secs(25))
                    .operation_timeout(Duration::from_secs(30))
                    .build(),
            )
            .load()
            .await;
        let publisher = aws_sdk_sqs::config::Builder::from(&shared)
            .timeout_config(publish_timeouts())
            .build();
        Queue {
            client: Client::new(&shared),
            publisher: Client::from_conf(publisher),
            url: url.to_string(),
            fifo: url.ends_with(".fifo"),
        }
    }

    /// Sends up to 10 messages; returns what became of each, in order.
    /// SQS refuses a message for what it holds either as one entry of the
    /// answer (fauxqs, AWS) or as the whole call (moto refuses a batch
    /// holding one oversized message with `InvalidParameterValue`): a whole
    /// call refused so is split in halves and each sent again, until the
    /// message at fault is refused alone; the others go out.
    #[tracing::instrument(skip_all, fields(count = messages.len()))]
    pub async fn publish(&self, messages: &[Outgoing<'_>]) -> Vec<Sent> {
        match self.send_batch(messages).await {
            Ok(sent) => sent,
            Err(BatchError::Content(reason)) if messages.len() == 1 => vec![Sent::Refused(reason)],
            Err(BatchError::Content(reason)) => {
                tracing::info!(count = messages.len(), %reason, "SQS refused a batch for what a message holds; sending it in halves");
                let (left, right) = messages.split_at(messages.len() / 2);
                let (mut sent, right) = futures_util::future::join(
                    Box::pin(self.publish(left)),
                    Box::pin(self.publish(right)),
                )
                .await;
                sent.extend(right);
                sent
            }
            Err(BatchError::Transient(reason)) => vec![Sent::Failed(reason); messages.len()],
        }
    }

    async fn send_batch(&self, messages: &[Outgoing<'_>]) -> Result<Vec<Sent>, BatchError> {
        let mut request = self.publisher.send_message_batch().queue_url(&self.url);
        for (i, m) in messages.iter().enumerate() {
            let mut entry = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(m.body)
                .message_attributes("event_type", string_attribute(m.event_type))
                .message_attributes("customer_id", string_attribute(&m.customer_id));
            if let Some(traceparent) = m.traceparent {
                entry = entry.message_attributes("traceparent", string_attribute(traceparent));
            }
            if self.fifo {
                entry = entry
                    .message_group_id(&m.group)
                    .message_deduplication_id(&m.id);
            }
            request = request.entries(
                entry
                    .build()
                    .map_err(|e| BatchError::Transient(e.to_string()))?,
            );
        }
        let output = request.send().await.map_err(|e| {
            let reason = describe(&e);
            if refuses_content(e.code().unwrap_or_default()) {
                BatchError::Content(reason)
            } else {
                BatchError::Transient(reason)
            }
        })?;
        let mut sent = vec![Sent::Failed("SQS did not answer for it".into()); messages.len()];
        for ok in output.successful() {
            if let Some(slot) = ok.id().parse::<usize>().ok().and_then(|i| sent.get_mut(i)) {
                *slot = Sent::Accepted;
            }
        }
        for failure in output.failed() {
            let reason = format!(
                "SQS refused it: {}: {}",
                failure.code(),
                failure.message().unwrap_or_default()
            );
            tracing::warn!(code = failure.code(), sender_fault = failure.sender_fault(), %reason, "SQS refused a message");
            if let Some(slot) = failure
                .id()
                .parse::<usize>()
                .ok()
                .and_then(|i| sent.get_mut(i))
            {
                // Refused for what it holds: sending it again cannot help.
                // Any other refusal (KMS, permissions, throttling) is the
                // queue's or the account's, and passes.
                *slot = if failure.sender_fault() && refuses_content(failure.code()) {
                    Sent::Refused(reason)
                } else {
                    Sent::Failed(reason)
                };
            }
        }
        Ok(sent)
    }
}

impl Queue {
    /// Long-polls for up to 10 messages, each hidden from other receivers
    /// for `RECEIVED_HIDDEN` whatever the queue's own visibility timeout: a
    /// batch that takes long (a database that does not answer) is not
    /// handed to another receiver meanwhile, which would spend its receive
    /// count on the way to the dead-letter queue.
    pub async fn receive(&self, wait: Duration) -> Result<Vec<Received>, String> {
        let output = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(PER_CALL as i32)
            .visibility_timeout(RECEIVED_HIDDEN.as_secs() as i32)
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .send()
            .await
            .map_err(|e| describe(&e))?;
        Ok(output
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(|m| Received {
                message_id: m.message_id.unwrap_or_default(),
                body: m.body.unwrap_or_default(),
                receipt: m.receipt_handle.unwrap_or_default(),
            })
            .collect())
    }

    /// Keeps received messages out of sight for `hidden` (from now).
    pub async fn change_visibility(
        &self,
        receipts: &[&str],
        hidden: Duration,
    ) -> Result<(), String> {
        for chunk in receipts.chunks(PER_CALL) {
            let mut request = self
                .client
                .change_message_visibility_batch()
                .queue_url(&self.url);
            for (i, receipt) in chunk.iter().enumerate() {
                request = request.entries(
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(*receipt)
                        .visibility_timeout(hidden.as_secs() as i32)
                        .build()
                        .map_err(|e| e.to_string())?,
                );
            }
            request.send().await.map_err(|e| describe(&e))?;
        }
        Ok(())
    }

    /// Deletes received messages, ten per call.
    pub async fn delete(&self, receipts: &[&str]) -> Result<(), String> {
        for chunk in receipts.chunks(PER_CALL) {
            let mut request = self.client.delete_message_batch().queue_url(&self.url);
            for (i, receipt) in chunk.iter().enumerate() {
                request = request.entries(
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(*receipt)
                        .build()
                        .map_err(|e| e.to_string())?,
                );
            }
            let output = request.send().await.map_err(|e| describe(&e))?;
            if let Some(failure) = output.failed().first() {
                return Err(format!(
                    "{}: {}",
                    failure.code(),
                    failure.message().unwrap_or_default()
                ));
            }
        }
        Ok(())
    }
}

/// The most messages one SQS call takes or gives: `SendMessageBatch`,
/// `ReceiveMessage`, `DeleteMessageBatch`, `ChangeMessageVisibilityBatch`.
pub const PER_CALL: usize = 10;

/// A publish's limits: the relay tries again soon rather than wait.
fn publish_timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(2))
        .operation_attempt_timeout(Duration::from_secs(5))
        .operation_timeout(Duration::from_secs(10))
        .build()
}

/// How long a received message stays hidden (see `receive`).
pub const RECEIVED_HIDDEN: Duration = Duration::from_secs(30);

/// A message as received: its body is not trusted.
pub struct Received {
    pub message_id: String,
    pub body: String,
    pub receipt: String,
}

/// What became of one message of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    Accepted,
    /// Refused for what it holds (size, content): retrying cannot help.
    Refused(String),
    /// Not taken this time (SQS unreachable, throttled, failing): retry.
    Failed(String),
}

enum BatchError {
    Content(String),
    Transient(String),
}

/// Error codes, of a whole call or of one entry, that are about what the
/// messages hold. `InvalidParameterValue` is how SQS and the emulators
/// refuse a message over the queue's `MaximumMessageSize`. Every other code
/// (access denied, KMS, a missing queue, throttling) is about the queue or
/// the account: nothing is parked for it, publishing waits and alarms.
fn refuses_content(code: &str) -> bool {
    matches!(
        code.rsplit('.').next().unwrap_or_default(),
        "BatchRequestTooLong"
            | "InvalidMessageContents"
            | "MessageTooLong"
            | "InvalidParameterValue"
    )
}

/// The size SQS counts for a message: its body and attributes.
pub fn message_size(m: &Outgoing<'_>) -> usize {
    m.body.len()
        + "event_type".len()
        + "String".len()
        + m.event_type.len()
        + "customer_id".len()
        + "String".len()
        + m.customer_id.len()
}

/// The most one `SendMessageBatch` may carry, all messages together.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

fn string_attribute(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .expect("data type is set")
}

/// The SDK error with its cause, for logs (no credentials are in it).
pub fn describe<E: std::error::Error>(err: &E) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a refusal of what a message holds parks it; a fault of the
    /// queue, the key or the account stops publishing until it is fixed.
    #[test]
    fn only_content_refusals_park() {
        for (code, parks) in [
            ("InvalidParameterValue", true),
            ("InvalidMessageContents", true),
            ("AWS.SimpleQueueService.MessageTooLong", true),
            ("AWS.SimpleQueueService.BatchRequestTooLong", true),
            ("KMS.AccessDeniedException", false),
            ("KMS.DisabledException", false),
            ("AccessDenied", false),
            ("AWS.SimpleQueueService.NonExistentQueue", false),
            ("QueueDoesNotExist", false),
            ("InvalidClientTokenId", false),
            ("RequestThrottled", false),
            ("MissingParameter", false),
        ] {
            assert_eq!(refuses_content(code), parks, "{code}");
        }
    }

    /// Publishing gives up within seconds; receiving outlasts its 20 s
    /// long poll.
    #[tokio::test]
    async fn publishing_has_short_limits_and_receiving_long_ones() {
        let queue = Queue::connect("http://127.0.0.1:1/q", Some("http://127.0.0.1:1")).await;
        let limits = |client: &Client| {
            let t = client.config().timeout_config().cloned().unwrap();
            (
                t.connect_timeout(),
                t.operation_attempt_timeout(),
                t.operation_timeout(),
            )
        };
        let s = Duration::from_secs;
        assert_eq!(
            limits(&queue.publisher),
            (Some(s(2)), Some(s(5)), Some(s(10)))
        );
        assert_eq!(
            limits(&queue.client),
            (Some(s(2)), Some(s(25)), Some(s(30)))
        );
    }
}
