//! Group work: requests that arrive while the database is busy share one
//! round trip instead of taking one each. A caller hands in an item and
//! waits for its own answer; a task takes the first waiting item and
//! whatever else is already waiting (up to a limit), and answers them all
//! with one call. A lone request is handled at once; a busy API handles
//! bigger groups. Two groups run at a time, so one fills while the other
//! is in the database.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Mutex};

/// Groups handled at once.
const TASKS: usize = 2;

type Waiting<T, R> = (T, oneshot::Sender<R>);

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
    /// items and returns one answer per item, in the same order.
    pub fn start<F, Fut>(max: usize, handle: F) -> Batcher<T, R>
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        let (queue, received) = mpsc::channel(max * TASKS * 4);
        let received = Arc::new(Mutex::new(received));
        let handle = Arc::new(handle);
        for _ in 0..TASKS {
            tokio::spawn(run(max, received.clone(), handle.clone()));
        }
        Batcher { queue }
    }

    /// Hands in `item` and waits for its answer; `None` if its group's work
    /// panicked or the tasks are gone (the runtime is shutting down).
    pub async fn call(&self, item: T) -> Option<R> {
        let (answer, answered) = oneshot::channel();
        self.queue.send((item, answer)).await.ok()?;
        answered.await.ok()
    }
}

async fn run<T: Send + 'static, R: Send + 'static, F, Fut>(
    max: usize,
    received: Arc<Mutex<mpsc::Receiver<Waiting<T, R>>>>,
    handle: Arc<F>,
) where
    F: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = Vec<R>> + Send + 'static,
{
    while let Some(group) = next_group(max, &received).await {
        let (items, answers): (Vec<T>, Vec<oneshot::Sender<R>>) = group.into_iter().unzip();
        // In a task of its own, so that a panic fails this group's callers
        // (they get `None`) and not every later one.
        match tokio::spawn(handle(items)).await {
            Ok(results) => {
                debug_assert_eq!(results.len(), answers.len());
                for (answer, result) in answers.into_iter().zip(results) {
                    // The caller may have gone (its client hung up); nothing to do.
                    let _ = answer.send(result);
                }
            }
            Err(e) => tracing::error!(error = %e, count = answers.len(), "a group's work failed"),
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn each_caller_gets_its_own_answer_and_waiting_callers_share_a_call() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let doubler = Batcher::start(8, move |items: Vec<u32>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
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
            assert_eq!(answer, Some(n * 2));
        }
        let calls = calls.load(Ordering::SeqCst);
        // 40 items, at most 8 to a call: at least 5 calls, far fewer than 40.
        assert!((5..=12).contains(&calls), "{calls} calls for 40 items");
    }

    #[tokio::test]
    async fn a_panic_fails_its_group_only() {
        let picky = Batcher::start(8, |items: Vec<u32>| async move {
            assert!(!items.contains(&13), "unlucky");
            items
        });
        // More panics than there are tasks.
        for _ in 0..=TASKS {
            assert_eq!(picky.call(13).await, None);
        }
        for n in 20..40 {
            assert_eq!(
                picky.call(n).await,
                Some(n),
                "the batcher died with the panic"
            );
        }
    }
}
