//! In-process wake-ups: a commit wakes the relay (which numbers events for
//! the feed and publishes them), and a numbering pass wakes the feed's long
//! polls. Other instances' commits are found by the relay's fallback tick.

use tokio::sync::{watch, Notify};

pub struct Signals {
    relay: Notify,
    feed: watch::Sender<u64>,
}

impl Default for Signals {
    fn default() -> Self {
        Signals {
            relay: Notify::new(),
            feed: watch::channel(0).0,
        }
    }
}

impl Signals {
    /// Call after committing a transaction that wrote events.
    pub fn events_committed(&self) {
        self.relay.notify_one();
    }

    pub async fn relay_woken(&self) {
        self.relay.notified().await
    }

    /// Call after new events became visible in the feed.
    pub fn feed_advanced(&self) {
        self.feed.send_modify(|generation| *generation += 1);
    }

    pub fn watch_feed(&self) -> watch::Receiver<u64> {
        self.feed.subscribe()
    }
}
