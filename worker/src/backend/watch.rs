//! Blocking waits on empty queues: a queue the fetch found empty is left
//! to a task blocked on it (`BLMOVE wait wait RIGHT RIGHT` on a dedicated
//! connection) until a job arrives, so an idle worker costs Redis nothing
//! and a busy one never polls its empty queues.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use queue::{Consume, Queue, Queues};
use shared::redis_pool::Conn;
use shared::redis_pool::{INITIAL_RECONNECT_DELAY, MAX_RECONNECT_DELAY};

use super::*;

/// How long to wait before looking again when a queue has jobs but no fetch
/// could start one (all over their rate limit): without it the worker would
/// spin on a list that is never empty.
pub(crate) const IDLE_RECHECK: Duration = Duration::from_millis(100);

/// A queue's state for the fetch: look at it, or leave it to its watcher.
pub(crate) const READY: u8 = 0;

/// Its last fetch found it empty: its watcher blocks on it until a job comes.
pub(crate) const DRAINED: u8 = 1;

/// It is paused: its watcher makes it ready again after [`BLOCK_TIMEOUT`].
pub(crate) const PAUSED: u8 = 2;

/// One consumed queue's fetch state, shared with its watcher task.
#[derive(Default)]
pub(crate) struct QueueWatch {
    pub(crate) state: std::sync::atomic::AtomicU8,
    pub(crate) arm: tokio::sync::Notify,
}

impl QueueWatch {
    pub(crate) fn is_ready(&self) -> bool {
        self.state.load(std::sync::atomic::Ordering::Acquire) == READY
    }

    /// Hands the queue to its watcher until it has work again.
    pub(crate) fn park(&self, state: u8) {
        self.state
            .store(state, std::sync::atomic::Ordering::Release);
        self.arm.notify_one();
    }
}

/// Which consumed queues a fetch looks at. A queue found empty (or paused)
/// is left out of later fetches until its watcher, blocked on it with
/// `BLMOVE wait wait RIGHT RIGHT` on a connection of its own, sees a job
/// (or [`BLOCK_TIMEOUT`] passes): so a fetch over several queues costs a
/// round trip per queue that has jobs, not one per queue consumed, and a job
/// pushed to an idle higher-priority queue is still in the very next fetch.
/// With every queue empty, the fetch waits for any watcher to wake it.
pub(crate) struct Watches {
    pub(crate) queues: HashMap<String, Arc<QueueWatch>>,
    pub(crate) woke: Arc<tokio::sync::Notify>,
    pub(crate) tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Watches {
    pub(crate) fn spawn(queues: &Queues, consume: &Consume) -> redis::RedisResult<Self> {
        let woke = Arc::new(tokio::sync::Notify::new());
        let (mut watched, mut tasks) = (HashMap::new(), Vec::new());
        for name in consume.queues() {
            let Some(queue) = queues.get(name).cloned() else {
                continue;
            };
            // Blocking commands get connections of their own: on a shared
            // multiplexed one they would hold up every command behind them.
            let conn = queue
                .pool()
                .blocking(BLOCK_TIMEOUT + Duration::from_secs(3))?;
            let w = Arc::new(QueueWatch::default());
            tasks.push(tokio::spawn(watch(queue, conn, w.clone(), woke.clone())));
            watched.insert(name.to_string(), w);
        }
        Ok(Self {
            queues: watched,
            woke,
            tasks,
        })
    }

    pub(crate) fn get(&self, queue: &str) -> Option<&QueueWatch> {
        self.queues.get(queue).map(|w| &**w)
    }

    pub(crate) fn any_ready(&self) -> bool {
        self.queues.values().any(|w| w.is_ready())
    }
}

impl Drop for Watches {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A queue's watcher: each time the fetch parks the queue, waits until it
/// may have work (a job in its list, or the pause's recheck time), marks it
/// ready and wakes the fetch.
pub(crate) async fn watch(
    queue: Queue,
    mut conn: Conn,
    w: Arc<QueueWatch>,
    woke: Arc<tokio::sync::Notify>,
) {
    let mut delay = INITIAL_RECONNECT_DELAY;
    loop {
        w.arm.notified().await;
        match w.state.load(std::sync::atomic::Ordering::Acquire) {
            DRAINED => match queue.wait_for_work(&mut conn, BLOCK_TIMEOUT).await {
                Ok(_) => delay = INITIAL_RECONNECT_DELAY,
                Err(e) => {
                    tracing::warn!(queue = queue.name(), error = %e, retry_in = ?delay, "waiting for jobs failed");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RECONNECT_DELAY);
                }
            },
            PAUSED => tokio::time::sleep(BLOCK_TIMEOUT).await,
            _ => {}
        }
        w.state.store(READY, std::sync::atomic::Ordering::Release);
        woke.notify_one();
    }
}
