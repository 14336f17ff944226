//! In-process wake-ups: a commit wakes the sequencer and the relay at once,
//! and a sequencer pass wakes the feed's long polls. Other instances'
//! commits are found by the loops' short fallback ticks.

use tokio::sync::{watch, Notify};

pub struct Signals {
    sequencer: Notify,
    relay: Notify,
    feed: watch::Sender<u64>,
}

impl Default for Signals {
    fn default() -> Self {
        Signals {
            sequencer: Notify::new(),
            relay: Notify::new(),
            feed: watch::channel(0).0,
        }
    }
}

impl Signals {
    /// Call after committing a transaction that wrote events.
    pub fn events_committed(&self) {
        self.sequencer.notify_one();
        self.relay.notify_one();
    }

    pub async fn sequencer_woken(&self) {
        self.sequencer.notified().await
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
