//! How many of the worker's receivers long-poll SQS at once.
//!
//! Every receiver (`WEBHOOK_RECEIVERS`) can hold a batch in hand, but only
//! as many as the messages need keep a poll waiting: two while messages come
//! a few at a time, one more for each batch that comes at least half full
//! (messages pile up between polls), one fewer for each poll that comes
//! back empty (no message was waiting for it). Growing only on full batches
//! kept the count at two under a closed-loop load whose batches rarely
//! fill, and cost about a tenth of its throughput; half full did not. A
//! receiver holds its poll slot only while its receive is on its way, not
//! while its batch is fanned out.
//!
//! The emulators answer every waiting poll when one message arrives (fauxqs
//! did eight polls, one send, eight answers, seven empty): at 50 messages a
//! second, eight polls made 10 SQS requests a message, and every
//! `SendMessageBatch` waited for the emulator to answer them all. Real SQS
//! answers one poll per message; there, fewer polls mean fewer empty
//! receives on a quiet queue, and a busy one still gets all of them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::{Semaphore, SemaphorePermit};

/// Polls kept waiting however quiet the queue (or `WEBHOOK_RECEIVERS`, if
/// fewer): one to take the next message, one while the first is answered.
const FEWEST: usize = 2;

/// A receive that returns at least this many messages (half of the most
/// one returns, `queue::Queue::receive`) adds a poll.
const GROW_AT: usize = 5;

/// The number of polls after a receive returned `received` messages.
pub(super) fn after_receive(polls: usize, fewest: usize, most: usize, received: usize) -> usize {
    if received >= GROW_AT {
        (polls + 1).min(most)
    } else if received == 0 {
        polls.saturating_sub(1).max(fewest)
    } else {
        polls
    }
}

pub(super) struct Polls {
    slots: Semaphore,
    /// Slots in all: held or free.
    polls: AtomicUsize,
    fewest: usize,
    most: usize,
    /// Receives answered, and the messages they brought.
    receives: AtomicU64,
    received: AtomicU64,
}

impl Polls {
    /// Up to `receivers` polls; as few as two to start.
    pub(super) fn new(receivers: usize) -> Polls {
        let fewest = FEWEST.min(receivers);
        Polls {
            slots: Semaphore::new(fewest),
            polls: AtomicUsize::new(fewest),
            fewest,
            most: receivers,
            receives: AtomicU64::new(0),
            received: AtomicU64::new(0),
        }
    }

    /// A slot to poll with; give it back with `received`.
    pub(super) async fn slot(&self) -> SemaphorePermit<'_> {
        self.slots
            .acquire()
            .await
            .expect("poll slots are never closed")
    }

    /// Gives a slot back after its receive returned `received` messages,
    /// one more slot beside it, or none at all.
    pub(super) fn received(&self, slot: SemaphorePermit<'_>, received: usize) {
        self.receives.fetch_add(1, Ordering::Relaxed);
        self.received.fetch_add(received as u64, Ordering::Relaxed);
        let changed = self
            .polls
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |polls| {
                let next = after_receive(polls, self.fewest, self.most, received);
                (next != polls).then_some(next)
            });
        match changed {
            Ok(was) if after_receive(was, self.fewest, self.most, received) > was => {
                self.slots.add_permits(1);
            }
            Ok(_) => slot.forget(),
            Err(_) => {}
        }
    }

    /// The gauge and the counters for `/metrics`.
    pub(super) fn render(&self) -> String {
        format!(
            "# HELP webhook_sqs_polls Long polls SQS may have waiting at once (2 up to WEBHOOK_RECEIVERS, by how full batches come).\n# TYPE webhook_sqs_polls gauge\nwebhook_sqs_polls {}\n\
             # HELP webhook_sqs_receive_requests_total ReceiveMessage requests answered (empty or not).\n# TYPE webhook_sqs_receive_requests_total counter\nwebhook_sqs_receive_requests_total {}\n\
             # HELP webhook_sqs_messages_received_total SQS messages received.\n# TYPE webhook_sqs_messages_received_total counter\nwebhook_sqs_messages_received_total {}\n",
            self.polls.load(Ordering::Relaxed),
            self.receives.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_follow_how_full_the_batches_come() {
        // (polls, fewest, most, received) → polls after
        let cases = [
            ((2, 2, 8, 10), 3, "a full batch: one more"),
            ((2, 2, 8, 5), 3, "half full: one more"),
            ((8, 2, 8, 10), 8, "never above WEBHOOK_RECEIVERS"),
            ((5, 2, 8, 0), 4, "an empty answer: one fewer"),
            ((2, 2, 8, 0), 2, "never below two"),
            ((1, 1, 1, 0), 1, "one receiver: one poll"),
            ((1, 1, 1, 10), 1, "one receiver, full batches: still one"),
            ((4, 2, 8, 3), 4, "a few messages: as many as now"),
            ((4, 2, 8, 4), 4, "four: as many as now"),
        ];
        for ((polls, fewest, most, received), want, why) in cases {
            assert_eq!(after_receive(polls, fewest, most, received), want, "{why}");
        }
    }

    #[tokio::test]
    async fn a_slot_given_back_grows_or_shrinks_the_polls_within_bounds() {
        let polls = Polls::new(4);
        assert_eq!(polls.slots.available_permits(), 2);
        let slot = polls.slot().await;
        polls.received(slot, 10);
        assert_eq!(polls.polls.load(Ordering::Relaxed), 3);
        assert_eq!(
            polls.slots.available_permits(),
            3,
            "the slot back, one more"
        );
        for _ in 0..5 {
            let slot = polls.slot().await;
            polls.received(slot, 10);
        }
        assert_eq!(
            polls.slots.available_permits(),
            4,
            "at most WEBHOOK_RECEIVERS"
        );
        let (a, b) = (polls.slot().await, polls.slot().await);
        polls.received(a, 0);
        assert_eq!(
            polls.slots.available_permits(),
            2,
            "an empty answer's slot is gone"
        );
        polls.received(b, 0);
        let slot = polls.slot().await;
        polls.received(slot, 0);
        assert_eq!(polls.polls.load(Ordering::Relaxed), 2);
        assert_eq!(polls.slots.available_permits(), 2, "never fewer than two");
        assert!(polls.render().contains("webhook_sqs_polls 2\n"));
    }
}
