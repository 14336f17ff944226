//! Group work: requests that arrive while the database is busy share one
//! round trip instead of taking one each. A caller hands in an item and
//! waits for its own answer; a task takes the first waiting item and
//! whatever else is already waiting (up to a limit), and answers them all
//! with one call. A lone request is handled at once; a busy API handles
//! bigger groups. One group runs at a time and the next fills meanwhile:
//! a group costs its statements and its commit whatever its size, and at
//! 800 changes a second two groups at a time made groups of 1.9–2.7
//! changes, not 3.4, and every call waited longer for the CPU they took.
//!
//! An answer is final (SPEC §14):
//! - an item whose caller is gone (its client hung up, its time ran out)
//!   before its group was taken is never handed to the work;
//! - an item that waited longer than `MAX_WAIT`, or found the queue full,
//!   is refused (`NotDone::Overloaded`) without being handed to the work;
//! - a group that writes asks `Group::hold` before it commits: from then on
//!   its callers' answers are the commit's; a caller dropped during the
//!   commit raises the request's `IN_DOUBT` flag, so that the answer it got
//!   instead (the request's time ran out) says the outcome is unknown.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Mutex};

/// Groups handled at once (see the module doc for why one).
const TASKS: usize = 1;

/// Full groups' worth of items that may wait; past that, a call is refused
/// at once as overload.
const WAITING_GROUPS: usize = 8;

/// Longest an item waits for its group before it is refused as overload.
pub const MAX_WAIT: Duration = Duration::from_secs(2);

tokio::task_local! {
    /// Set by the request's time limit around its handler: raised when the
    /// handler is dropped while an item of its is being committed.
    pub static IN_DOUBT: Arc<AtomicBool>;
}

/// Why an item got no answer from the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotDone {
    /// It waited too long, or the queue was full: nothing was done.
    Overloaded,
    /// Its group's work panicked, or the tasks are gone.
    Failed,
}

const WAITING: u8 = 0;
const HELD: u8 = 1;
const GONE: u8 = 2;

/// Where one caller stands, seen by the caller and by its group.
struct Caller {
    state: AtomicU8,
    in_doubt: Option<Arc<AtomicBool>>,
}

struct Waiting<T, R> {
    item: T,
    answer: oneshot::Sender<Result<R, NotDone>>,
    caller: Arc<Caller>,
    since: Instant,
}

/// The callers of a group being worked on.
pub struct Group {
    callers: Vec<Arc<Caller>>,
}

impl Group {
    /// Before a commit of the items at `indexes`: holds their callers to
    /// the commit's outcome, if every one is still waiting. Otherwise holds
    /// none and returns the indexes of those gone: write without them.
    pub fn hold(&self, indexes: &[usize]) -> Result<(), Vec<usize>> {
        let gone: Vec<usize> = indexes
            .iter()
            .copied()
            .filter(|&i| {
                self.callers[i]
                    .state
                    .compare_exchange(WAITING, HELD, Ordering::SeqCst, Ordering::SeqCst)
                    .is_err_and(|state| state == GONE)
            })
            .collect();
        if gone.is_empty() {
            return Ok(());
        }
        for &i in indexes {
            let _ = self.callers[i].state.compare_exchange(
                HELD,
                WAITING,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
        Err(gone)
    }

    /// All of the group's items, for `hold`.
    pub fn all(&self) -> Vec<usize> {
        (0..self.callers.len()).collect()
    }
}

/// Cheap to clone; the tasks end when the last clone is dropped, after
/// answering everything already handed in.
pub struct Batcher<T, R> {
    queue: mpsc::Sender<Waiting<T, R>>,
}

impl<T, R> Clone for Batcher<T, R> {
    fn clone(&self) -> Self {
        Batcher {
            queue: self.queue.clone(),
        }
    }
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// Starts the tasks (within a Tokio runtime). `handle` gets up to `max`
    /// items with their `Group` and returns one answer per item, in the
    /// same order.
    pub fn start<F, Fut>(max: usize, handle: F) -> Batcher<T, R>
    where
        F: Fn(Vec<T>, Group) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        let (queue, received) = mpsc::channel(max * WAITING_GROUPS);
        let received = Arc::new(Mutex::new(received));
        let handle = Arc::new(handle);
        for _ in 0..TASKS {
            tokio::spawn(run(max, received.clone(), handle.clone()));
        }
        Batcher { queue }
    }

    /// Hands in `item` and waits for its answer.
    pub async fn call(&self, item: T) -> Result<R, NotDone> {
        let caller = Arc::new(Caller {
            state: AtomicU8::new(WAITING),
            in_doubt: IN_DOUBT.try_with(Arc::clone).ok(),
        });
        let mut leaving = Leaving {
            caller: caller.clone(),
            answered: false,
        };
        let (answer, answered) = oneshot::channel();
        self.queue
            .try_send(Waiting {
                item,
                answer,
                caller,
                since: Instant::now(),
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => NotDone::Overloaded,
                mpsc::error::TrySendError::Closed(_) => NotDone::Failed,
            })?;
        let answer = answered.await.unwrap_or(Err(NotDone::Failed));
        leaving.answered = true;
        answer
    }
}

/// Marks the caller gone if it is dropped before its answer.
struct Leaving {
    caller: Arc<Caller>,
    answered: bool,
}

impl Drop for Leaving {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let state = &self.caller.state;
        if state
            .compare_exchange(WAITING, GONE, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            // Its item is being committed: the answer given instead cannot
            // say whether it was carried out.
            if let Some(in_doubt) = &self.caller.in_doubt {
                in_doubt.store(true, Ordering::SeqCst);
            }
        }
    }
}

async fn run<T: Send + 'static, R: Send + 'static, F, Fut>(
    max: usize,
    received: Arc<Mutex<mpsc::Receiver<Waiting<T, R>>>>,
    handle: Arc<F>,
) where
    F: Fn(Vec<T>, Group) -> Fut,
    Fut: Future<Output = Vec<R>> + Send + 'static,
{
    while let Some(group) = next_group(max, &received).await {
        let mut items = Vec::with_capacity(group.len());
        let mut answers = Vec::with_capacity(group.len());
        let mut callers = Vec::with_capacity(group.len());
        for waiting in group {
            if waiting.caller.state.load(Ordering::SeqCst) == GONE {
                continue;
            }
            if waiting.since.elapsed() > MAX_WAIT {
                let _ = waiting.answer.send(Err(NotDone::Overloaded));
                continue;
            }
            items.push(waiting.item);
            answers.push(waiting.answer);
            callers.push(waiting.caller);
        }
        if items.is_empty() {
            continue;
        }
        let count = items.len();
        // In a task of its own, so that a panic fails this group's callers
        // (they get `Failed`) and not every later one.
        match tokio::spawn(handle(items, Group { callers })).await {
            Ok(results) if results.len() == count => {
                for (answer, result) in answers.into_iter().zip(results) {
                    // The caller may have gone (its client hung up); nothing to do.
                    let _ = answer.send(Ok(result));
                }
            }
            Ok(results) => {
                tracing::error!(
                    items = count,
                    answers = results.len(),
                    "a group's work answered the wrong number of items"
                );
                for answer in answers {
                    let _ = answer.send(Err(NotDone::Failed));
                }
            }
            Err(e) => tracing::error!(error = %e, count, "a group's work failed"),
        }
    }
}

/// Waits for one item, then takes whatever else is already waiting, up to
/// `max`. `None` once every sender is gone and everything is taken.
async fn next_group<T>(max: usize, received: &Mutex<mpsc::Receiver<T>>) -> Option<Vec<T>> {
    let mut received = received.lock().await;
    let mut group = vec![received.recv().await?];
    while group.len() < max {
        let Ok(next) = received.try_recv() else {
            break;
        };
        group.push(next);
    }
    Some(group)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn each_caller_gets_its_own_answer_and_waiting_callers_share_a_call() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let doubler = Batcher::start(8, move |items: Vec<u32>, _| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                items.into_iter().map(|n| n * 2).collect()
            }
        });
        let callers: Vec<_> = (0..40u32)
            .map(|n| {
                let doubler = doubler.clone();
                tokio::spawn(async move { (n, doubler.call(n).await) })
            })
            .collect();
        for caller in callers {
            let (n, answer) = caller.await.unwrap();
            assert_eq!(answer, Ok(n * 2));
        }
        let calls = calls.load(Ordering::SeqCst);
        // 40 items, at most 8 to a call: at least 5 calls, far fewer than 40.
        assert!((5..=12).contains(&calls), "{calls} calls for 40 items");
    }

    #[tokio::test]
    async fn a_panic_fails_its_group_only() {
        let picky = Batcher::start(8, |items: Vec<u32>, _| async move {
            assert!(!items.contains(&13), "unlucky");
            items
        });
        // More panics than there are tasks.
        for _ in 0..=TASKS {
            assert_eq!(picky.call(13).await, Err(NotDone::Failed));
        }
        for n in 20..40 {
            assert_eq!(
                picky.call(n).await,
                Ok(n),
                "the batcher died with the panic"
            );
        }
    }

    #[tokio::test]
    async fn a_wrong_number_of_answers_fails_the_group_in_release_builds_too() {
        let short = Batcher::start(8, |_: Vec<u32>, _| async move { Vec::<u32>::new() });
        assert_eq!(short.call(1).await, Err(NotDone::Failed));
    }

    /// Items whose callers left before their group was taken are never
    /// worked on; items that waited too long are refused, not worked on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn gone_and_stale_items_are_never_handed_to_the_work() {
        let seen = Arc::new(std::sync::Mutex::new(vec![]));
        let record = seen.clone();
        let slow = Batcher::start(1, move |items: Vec<u32>, _| {
            record.lock().unwrap().extend(items.iter().copied());
            async move {
                tokio::time::sleep(MAX_WAIT + Duration::from_millis(500)).await;
                items
            }
        });
        // 1 keeps the task busy past `MAX_WAIT`.
        let busy = {
            let slow = slow.clone();
            tokio::spawn(async move { slow.call(1).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        // 3's caller hangs up; 4 waits past `MAX_WAIT`.
        let gone = {
            let slow = slow.clone();
            tokio::spawn(async move { slow.call(3).await })
        };
        let stale = {
            let slow = slow.clone();
            tokio::spawn(async move { slow.call(4).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        gone.abort();
        assert_eq!(stale.await.unwrap(), Err(NotDone::Overloaded));
        assert!(busy.await.unwrap().is_ok());
        assert_eq!(*seen.lock().unwrap(), [1]);
    }

    /// A caller dropped while its item is held for a commit raises its
    /// request's doubt flag; one dropped before is simply gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_dropped_during_its_commit_raises_the_doubt_flag() {
        let committing = Arc::new(tokio::sync::Notify::new());
        let entered = committing.clone();
        let writer = Batcher::start(8, move |items: Vec<u32>, group: Group| {
            let entered = entered.clone();
            async move {
                assert_eq!(group.hold(&group.all()), Ok(()));
                entered.notify_one();
                tokio::time::sleep(Duration::from_millis(300)).await;
                items
            }
        });
        let in_doubt = Arc::new(AtomicBool::new(false));
        let call = {
            let (writer, in_doubt) = (writer.clone(), in_doubt.clone());
            tokio::spawn(IN_DOUBT.scope(in_doubt, async move { writer.call(7).await }))
        };
        committing.notified().await;
        call.abort();
        let _ = call.await;
        assert!(in_doubt.load(Ordering::SeqCst));

        let group = Group {
            callers: (0..3)
                .map(|state| {
                    Arc::new(Caller {
                        state: AtomicU8::new([WAITING, GONE, WAITING][state]),
                        in_doubt: None,
                    })
                })
                .collect(),
        };
        assert_eq!(group.hold(&group.all()), Err(vec![1]));
        assert_eq!(group.hold(&[0, 2]), Ok(()));
    }
}
