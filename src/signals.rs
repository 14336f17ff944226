//! In-process wake-ups: a commit of events wakes the relay, handing it the
//! events (numbered: `sequencer::record`) so that it can publish them
//! without reading them back, and wakes the feed's long polls. Other
//! instances' commits are found by the relay's fallback tick.

use std::sync::Mutex;

use tokio::sync::{watch, Notify};

use crate::db::order_events::OutboxEvent;

/// Events held for the relay at most: past this, commits only wake it and
/// it reads what it missed back from the database.
const HELD: usize = 1000;

pub struct Signals {
    relay: Notify,
    /// Committed events the relay has not taken yet.
    committed: Mutex<Vec<OutboxEvent>>,
    feed: watch::Sender<u64>,
}

impl Default for Signals {
    fn default() -> Self {
        Signals {
            relay: Notify::new(),
            committed: Mutex::new(vec![]),
            feed: watch::channel(0).0,
        }
    }
}

impl Signals {
    /// Call after committing a transaction that wrote `events` (or that
    /// the relay must look at: a parked event's retry, a commit whose
    /// answer was lost), with what `sequencer::record` returned.
    pub fn events_committed(&self, events: Vec<OutboxEvent>) {
        if !events.is_empty() {
            let mut held = self.committed.lock().unwrap_or_else(|e| e.into_inner());
            if held.len() + events.len() <= HELD {
                held.extend(events);
            }
            drop(held);
            self.feed_advanced();
        }
        self.relay.notify_one();
    }

    /// The events committed since the last call, in no particular order.
    pub fn take_committed(&self) -> Vec<OutboxEvent> {
        std::mem::take(&mut *self.committed.lock().unwrap_or_else(|e| e.into_inner()))
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
