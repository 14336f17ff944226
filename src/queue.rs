//! The SQS client wrapper: publishing event batches (and, for the worker,
//! receiving and deleting). Nothing here knows which SQS it talks to:
//! `AWS_ENDPOINT_URL` and `AWS_REGION` are read by the SDK itself.

use std::time::Duration;

use aws_sdk_sqs::config::timeout::TimeoutConfig;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use aws_sdk_sqs::Client;

#[derive(Clone)]
pub struct Queue {
    client: Client,
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
        Queue {
            client: Client::new(&shared),
            url: url.to_string(),
            fifo: url.ends_with(".fifo"),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn is_fifo(&self) -> bool {
        self.fifo
    }

    /// Sends up to 10 messages; returns the ids SQS accepted. An error means
    /// none were (the call failed as a whole).
    #[tracing::instrument(skip_all, fields(count = messages.len()))]
    pub async fn publish(&self, messages: &[Outgoing<'_>]) -> Result<Vec<String>, String> {
        let mut request = self.client.send_message_batch().queue_url(&self.url);
        for m in messages {
            let mut entry = SendMessageBatchRequestEntry::builder()
                .id(&m.id)
                .message_body(m.body)
                .message_attributes("event_type", string_attribute(m.event_type))
                .message_attributes("customer_id", string_attribute(&m.customer_id));
            if self.fifo {
                entry = entry
                    .message_group_id(&m.group)
                    .message_deduplication_id(&m.id);
            }
            request = request.entries(entry.build().map_err(|e| e.to_string())?);
        }
        // Publishing is short: a hung SQS must not hold the relay for long.
        let output = request
            .customize()
            .config_override(
                aws_sdk_sqs::config::Config::builder().timeout_config(
                    TimeoutConfig::builder()
                        .operation_attempt_timeout(Duration::from_secs(5))
                        .operation_timeout(Duration::from_secs(10))
                        .build(),
                ),
            )
            .send()
            .await
            .map_err(describe)?;
        for failure in output.failed() {
            tracing::warn!(
                id = failure.id(),
                code = failure.code(),
                message = failure.message().unwrap_or_default(),
                "SQS refused a message"
            );
        }
        Ok(output
            .successful()
            .iter()
            .map(|s| s.id().to_string())
            .collect())
    }
}

fn string_attribute(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .expect("data type is set")
}

/// The SDK error with its cause, for logs (no credentials are in it).
pub fn describe<E: std::error::Error>(err: E) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
