//! Operator notifications (SPEC §15): a Slack-compatible incoming webhook
//! (`OPS_NOTIFY_URL`, `POST {"text": "…"}`) is told when an endpoint is
//! disabled, an event is parked, or the outbox's oldest unpublished event
//! is older than `OPS_NOTIFY_OUTBOX_AGE`.
//!
//! At most one message per subject per 10 minutes, across every instance
//! (`db::ops_notifications`). Nothing waits for a notification: `tell`
//! hands it to a background task through a bounded queue and returns (a
//! full queue drops it, with a warning), and the task sends each with a
//! 5 s timeout, so a URL that fails or hangs delays nothing else. The URL
//! holds Slack's secret: it is never logged. It is the operator's own, but
//! it is held to the webhook rule all the same (a public address, checked
//! when connecting) unless `OPS_NOTIFY_ALLOW_PRIVATE_NETWORKS=true` says
//! otherwise: a mistyped or re-pointed name must not make the API post into
//! its own network.

use std::time::Duration;

use serde_json::json;
use sqlx::MySqlPool;
use tokio::sync::mpsc;

use crate::db;
use crate::delivery::client::WebhookClient;
use crate::domain::time;

/// One message per subject per this long.
pub const WINDOW: Duration = Duration::from_secs(600);
/// Notifications waiting to be sent at most; more are dropped.
const QUEUE: usize = 64;
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// `OPS_NOTIFY_*`, shared by both binaries.
#[derive(Clone, Default)]
pub struct OpsNotifyConfig {
    /// `None`: nobody is told.
    pub url: Option<String>,
    /// Tell when the outbox's oldest unpublished event is older than this.
    pub outbox_age: Duration,
    pub allow_private_networks: bool,
}

impl std::fmt::Debug for OpsNotifyConfig {
    // The URL is a secret (Slack's is a bearer capability).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpsNotifyConfig")
            .field("url", &self.url.as_ref().map(|_| "***"))
            .field("outbox_age", &self.outbox_age)
            .field("allow_private_networks", &self.allow_private_networks)
            .finish()
    }
}

/// One notification: what it is about (the rate limit's key) and its text.
#[derive(Debug)]
struct Note {
    subject: String,
    text: String,
}

/// Hands notifications to the sender; cheap to clone. Without a URL it
/// tells nobody.
#[derive(Clone, Default)]
pub struct Notifier {
    queue: Option<mpsc::Sender<Note>>,
}

impl Notifier {
    /// Starts the sender (within a Tokio runtime), if a URL is set.
    pub fn start(config: &OpsNotifyConfig, pool: MySqlPool) -> Result<Notifier, String> {
        let Some(url) = config.url.clone() else {
            return Ok(Notifier::default());
        };
        let client = WebhookClient::new(SEND_TIMEOUT, config.allow_private_networks, None)
            .map_err(|e| format!("OPS_NOTIFY_URL: {e}"))?;
        let (queue, notes) = mpsc::channel(QUEUE);
        tokio::spawn(send_loop(notes, client, url, pool));
        Ok(Notifier { queue: Some(queue) })
    }

    /// Whether anyone is told (to skip work that only feeds notifications).
    pub fn is_on(&self) -> bool {
        self.queue.is_some()
    }

    /// Tells the operator, unless `subject` was told of within 10 minutes.
    /// Never waits.
    pub fn tell(&self, subject: impl Into<String>, text: impl Into<String>) {
        let Some(queue) = &self.queue else {
            return;
        };
        let note = Note {
            subject: subject.into(),
            text: text.into(),
        };
        if let Err(e) = queue.try_send(note) {
            tracing::warn!(subject = %e.into_inner().subject, "operator notifications are backed up; one was dropped");
        }
    }
}

async fn send_loop(
    mut notes: mpsc::Receiver<Note>,
    client: WebhookClient,
    url: String,
    pool: MySqlPool,
) {
    let window = chrono::Duration::from_std(WINDOW).unwrap_or(chrono::Duration::minutes(10));
    while let Some(note) = notes.recv().await {
        let now = time::now();
        let claimed = async {
            let mut conn = pool.acquire().await?;
            db::ops_notifications::claim(&mut conn, &note.subject, now, window).await
        };
        match tokio::time::timeout(SEND_TIMEOUT, claimed).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => continue,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, subject = %note.subject, "cannot check the notification's rate limit; not sent");
                continue;
            }
            Err(_) => {
                tracing::warn!(subject = %note.subject, "checking the notification's rate limit timed out; not sent");
                continue;
            }
        }
        let body = json!({ "text": note.text }).to_string();
        let result = client
            .attempt(&url, reqwest::header::HeaderMap::new(), body)
            .await;
        if result.succeeded() {
            tracing::info!(subject = %note.subject, "operator notified");
            continue;
        }
        let error = result.error.unwrap_or_default();
        tracing::warn!(subject = %note.subject, %error, "notifying the operator failed");
        // Not sent: the next occurrence may try again.
        if let Err(e) = db::ops_notifications::release(&pool, &note.subject, now).await {
            tracing::warn!(error = %e, subject = %note.subject, "cannot release the notification's claim");
        }
    }
}
