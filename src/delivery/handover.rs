//! How receivers hand their batches to the fan-out: one fan-out runs at a
//! time, and the batches received while it runs go together in the next.
//!
//! A fan-out costs its statements and its commit whatever its size (five
//! round trips and a flush), and under a closed loop receivers brought
//! 6.5 messages each, fanned out each on its own. A lone batch is fanned
//! out at once; a busy worker fans out bigger groups. What a failure does
//! to a group (hidden, shown again, its leases given back) it does to all
//! of its messages, as it did to one batch.
//!
//! A receiver waits until the group its batch went in is done before it
//! polls again, as when it fanned out its batch itself: a worker holds no
//! more messages than before (a batch per receiver), and a receiver whose
//! fan-out found the database away, or refusing, pauses before it takes
//! more. Receivers that ran ahead of a stuck fan-out would receive the
//! same messages again and again, on their way to the dead-letter queue.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::queue::Received;

/// The most messages fanned out together: ten receives' worth.
const GROUP_UP_TO: usize = 100;

/// A batch handed over, and who waits for its group to be done.
type Batch = (Vec<Received>, oneshot::Sender<()>);

/// Where receivers hand over their batches.
#[derive(Clone)]
pub(super) struct Handover {
    batches: mpsc::Sender<Batch>,
}

/// Where the fan-out takes them, a group at a time.
pub(super) struct Handed {
    batches: mpsc::Receiver<Batch>,
    groups: Arc<Groups>,
}

/// Batches to fan out together. Dropping `done` tells their receivers.
pub(super) struct Group {
    pub(super) messages: Vec<Received>,
    pub(super) done: Done,
}

/// Held while a group is fanned out: its receivers wait.
pub(super) struct Done {
    _receivers: Vec<oneshot::Sender<()>>,
}

/// Groups taken, for `/metrics`.
#[derive(Default)]
pub(super) struct Groups(AtomicU64);

/// Room for `receivers` batches waiting.
pub(super) fn channel(receivers: usize) -> (Handover, Handed, Arc<Groups>) {
    let (batches, handed) = mpsc::channel(receivers.max(1));
    let groups = Arc::new(Groups::default());
    let handed = Handed {
        batches: handed,
        groups: groups.clone(),
    };
    (Handover { batches }, handed, groups)
}

impl Handover {
    /// Hands `batch` over and waits until its group is done. A fan-out
    /// that has ended (the worker is stopping) leaves the batch to come
    /// back once visible, as after a crash.
    pub(super) async fn hand(&self, batch: Vec<Received>) {
        let (done, group_done) = oneshot::channel();
        if self.batches.send((batch, done)).await.is_ok() {
            let _ = group_done.await;
        }
    }
}

impl Handed {
    /// The next group: the first batch waited for, and every other one
    /// already waiting, up to `GROUP_UP_TO` messages. None once every
    /// `Handover` is dropped and all is taken.
    pub(super) async fn next_group(&mut self) -> Option<Group> {
        let (mut messages, first) = self.batches.recv().await?;
        let mut done = vec![first];
        while messages.len() < GROUP_UP_TO {
            match self.batches.try_recv() {
                Ok((batch, waits)) => {
                    messages.extend(batch);
                    done.push(waits);
                }
                Err(_) => break,
            }
        }
        self.groups.0.fetch_add(1, Ordering::Relaxed);
        Some(Group {
            messages,
            done: Done { _receivers: done },
        })
    }
}

impl Groups {
    /// The counter for `/metrics`.
    pub(super) fn render(&self) -> String {
        format!(
            "# HELP webhook_fan_outs_total Groups of received messages fanned out (batches received while one ran go together in the next).\n# TYPE webhook_fan_outs_total counter\nwebhook_fan_outs_total {}\n",
            self.0.load(Ordering::Relaxed)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize) -> Vec<Received> {
        (0..n)
            .map(|i| Received {
                message_id: i.to_string(),
                receipt: i.to_string(),
                body: String::new(),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_receiver_waits_until_its_group_is_done() {
        let (handover, mut handed, _) = channel(4);
        let receiver = tokio::spawn(async move { handover.hand(batch(3)).await });
        let group = handed.next_group().await.expect("a batch is waiting");
        assert_eq!(group.messages.len(), 3, "a lone batch goes at once, alone");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !receiver.is_finished(),
            "it polls again only once its group is done"
        );
        drop(group);
        receiver.await.unwrap();
        assert!(
            handed.next_group().await.is_none(),
            "every receiver gone, none left"
        );
    }

    #[tokio::test]
    async fn batches_waiting_go_together_up_to_a_hundred_messages() {
        let (handover, mut handed, groups) = channel(16);
        let mut waiting = vec![];
        for n in [10, 2, 10, 10, 10, 10, 10, 10, 10, 10, 10, 4] {
            let (done, group_done) = oneshot::channel();
            handover.batches.send((batch(n), done)).await.unwrap();
            waiting.push(group_done);
        }
        let first = handed.next_group().await.unwrap();
        let second = handed.next_group().await.unwrap();
        assert_eq!(
            [first.messages.len(), second.messages.len()],
            [102, 4],
            "batches are taken whole until a group has a hundred messages"
        );
        drop(first);
        let last = waiting.pop().unwrap();
        for group_done in waiting {
            assert!(
                group_done.await.is_err(),
                "the first group's receivers are told"
            );
        }
        drop(second);
        assert!(last.await.is_err());
        assert!(groups.render().contains("webhook_fan_outs_total 2\n"));
    }
}
