//! A small pool of multiplexed, self-reconnecting Redis connections.
//!
//! One multiplexed connection already pipelines every concurrent request onto
//! one socket, so a "pool" here is not a checkout queue: it is a handful of
//! [`ConnectionManager`]s handed out round-robin, which spreads the parsing
//! work of a busy process over a few sockets. Handing one out is an `Arc`
//! clone; no request ever opens a connection of its own.
//!
//! The connections are created lazily, so a service starts even while Redis
//! is down (its `/ready` says so). Each manager reconnects by itself after an
//! I/O error, and every command is bounded by the configured timeout, so a
//! dead or hung Redis costs a request at most that long.
//!
//! The pool keeps counters that `/metrics` reports as the pool state: its
//! size, how many connections answered their last command, and how many
//! commands failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::RedisSettings;

/// Reconnection attempts a manager makes per failed command before giving up
/// on that command. Kept low so that a dead Redis fails requests fast instead
/// of queueing them behind retries; the next command tries again anyway.
const RECONNECT_RETRIES: usize = 1;

/// Response timeout of a [`RedisPool::dedicated`] connection: a pipelined
/// write of thousands of keys may take longer than one command.
pub const BULK_RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A cheaply clonable handle to the pool.
#[derive(Clone)]
pub struct RedisPool {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    timeout: std::time::Duration,
    slots: Vec<Slot>,
    next: AtomicUsize,
    errors: AtomicU64,
}

struct Slot {
    conn: ConnectionManager,
    healthy: AtomicBool,
}

/// A snapshot of the pool for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolState {
    /// Connections in the pool.
    pub size: usize,
    /// Connections whose last command succeeded.
    pub healthy: usize,
    /// Commands that failed since start.
    pub errors: u64,
}

/// Remembers which slot a connection came from, so that the outcome of its
/// command can be recorded in the pool state.
pub struct Tracker<'a> {
    pool: &'a Inner,
    slot: usize,
}

impl Tracker<'_> {
    /// Records the outcome of a command, for the pool state, and passes it on.
    pub fn track<T>(&self, result: redis::RedisResult<T>) -> redis::RedisResult<T> {
        let healthy = match &result {
            Ok(_) => true,
            // A server-side error reply (WRONGTYPE, NOSCRIPT, …) means the
            // connection itself is fine.
            Err(e) => !(e.is_io_error() || e.is_timeout() || e.is_connection_dropped()),
        };
        if result.is_err() {
            self.pool.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.pool.slots[self.slot]
            .healthy
            .store(healthy, Ordering::Relaxed);
        result
    }
}

impl RedisPool {
    /// Builds the pool. No connection is opened until the first command.
    pub fn new(settings: &RedisSettings) -> redis::RedisResult<Self> {
        let client = redis::Client::open(settings.url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_max_delay(settings.timeout);
        let slots = (0..settings.pool_size.max(1))
            .map(|_| {
                Ok(Slot {
                    conn: ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?,
                    healthy: AtomicBool::new(false),
                })
            })
            .collect::<redis::RedisResult<Vec<_>>>()?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                timeout: settings.timeout,
                slots,
                next: AtomicUsize::new(0),
                errors: AtomicU64::new(0),
            }),
        })
    }

    /// A new connection of its own, outside the pool, for a task that
    /// needs connection state (`WATCH`) or sends large bulk writes. Its
    /// response timeout is [`BULK_RESPONSE_TIMEOUT`] or the pool's, whichever
    /// is longer. Dropping it closes it.
    pub async fn dedicated(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.inner.timeout))
            .set_response_timeout(Some(self.inner.timeout.max(BULK_RESPONSE_TIMEOUT)));
        let res = self
            .inner
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await;
        if res.is_err() {
            self.inner.errors.fetch_add(1, Ordering::Relaxed);
        }
        res
    }

    /// A new pub/sub connection (subscriptions need a connection of their own).
    pub async fn pubsub(&self) -> redis::RedisResult<redis::aio::PubSub> {
        let res = self.inner.client.get_async_pubsub().await;
        if res.is_err() {
            self.inner.errors.fetch_add(1, Ordering::Relaxed);
        }
        res
    }

    /// The next connection, round-robin, with the tracker for its outcome.
    pub fn get(&self) -> (ConnectionManager, Tracker<'_>) {
        let slot = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.slots.len();
        self.slot(slot)
    }

    fn slot(&self, slot: usize) -> (ConnectionManager, Tracker<'_>) {
        (
            self.inner.slots[slot].conn.clone(),
            Tracker {
                pool: &self.inner,
                slot,
            },
        )
    }

    /// Sends PING on every connection; used by readiness checks. Succeeds
    /// only if all of them answer.
    pub async fn ping_all(&self) -> redis::RedisResult<()> {
        for i in 0..self.inner.slots.len() {
            let (mut conn, tracker) = self.slot(i);
            let res: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
            tracker.track(res)?;
        }
        Ok(())
    }

    /// Current pool state.
    pub fn state(&self) -> PoolState {
        PoolState {
            size: self.inner.slots.len(),
            healthy: self
                .inner
                .slots
                .iter()
                .filter(|s| s.healthy.load(Ordering::Relaxed))
                .count(),
            errors: self.inner.errors.load(Ordering::Relaxed),
        }
    }
}

/// First pause between connection attempts at startup.
pub const INITIAL_RECONNECT_DELAY: std::time::Duration = std::time::Duration::from_millis(100);

/// Longest pause between connection attempts: long enough not to hammer a
/// Redis that is restarting, short enough that a service notices within seconds.
pub const MAX_RECONNECT_DELAY: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits until every pool connection answers PING, retrying with exponential
/// backoff between [`INITIAL_RECONNECT_DELAY`] and [`MAX_RECONNECT_DELAY`].
/// Returns `false` if `stop` resolves first.
pub async fn wait_until_ready(
    pool: &RedisPool,
    stop: impl std::future::Future<Output = ()>,
) -> bool {
    tokio::pin!(stop);
    let mut delay = INITIAL_RECONNECT_DELAY;
    loop {
        match pool.ping_all().await {
            Ok(()) => return true,
            Err(e) => tracing::warn!(error = %e, retry_in = ?delay, "redis not reachable yet"),
        }
        tokio::select! {
            () = &mut stop => return false,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(MAX_RECONNECT_DELAY);
    }
}
