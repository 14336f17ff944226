//! The operator's alarm on the outbox: events waiting too long for SQS.

use std::time::Duration;

use sqlx::MySqlPool;
use tokio::sync::watch;

use crate::db;
use crate::ops_notify::Notifier;

/// Tells the operator when the outbox's oldest unpublished event is older
/// than `max_age`: one statement every half of it (at most every 30 s),
/// on every instance (the notification's rate limit is shared).
pub async fn watch_age(
    pool: MySqlPool,
    notifier: Notifier,
    max_age: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let every = (max_age / 2).clamp(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        match db::order_events::outbox_backlog(&pool).await {
            Ok((count, age)) if age > max_age.as_secs_f64() => notifier.tell(
                "outbox-age",
                format!(
                    "Mechanica: the outbox's oldest unpublished event is {age:.0} s old ({count} waiting; the limit is {} s). Events are safe in the database; is SQS reachable? See outbox_backlog and the API's logs.",
                    max_age.as_secs()
                ),
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the outbox's age"),
        }
    }
}
