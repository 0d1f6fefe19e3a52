//! A small pool of multiplexed, self-reconnecting Redis connections, to
//! one server or to a Redis Cluster, in plain TCP or TLS.
//!
//! One multiplexed connection already pipelines every concurrent request onto
//! one socket, so a "pool" here is not a checkout queue: it is a handful of
//! connections handed out round-robin, which spreads the parsing work of a
//! busy process over a few sockets. Handing one out is an `Arc` clone; no
//! request ever opens a connection of its own. Each is a [`Conn`]: a
//! `ConnectionManager` to one server, or a cluster connection (`REDIS_CLUSTER`)
//! that follows `MOVED`/`ASK` redirects, refreshes its slot map after a
//! failover and retries, so callers never see the cluster's topology.
//!
//! The connections are created lazily, so a service starts even while Redis
//! is down (its `/ready` says so). Each reconnects by itself after an I/O
//! error, and every command is bounded by the configured timeout, so a dead
//! or hung Redis costs a request at most that long.
//!
//! **TLS**: `rediss://` URLs verify the server against the system's roots,
//! plus those in `REDIS_CA_FILE` when it is set. [`RedisPool::check_tls`]
//! tells at startup whether a server's certificate is refused, so a wrong
//! CA is one clear error instead of a service that never connects.
//!
//! **Cluster pub/sub**: a message published on any node reaches the
//! subscribers of every node, so [`RedisPool::pubsub`] subscribes through
//! one seed node, the next one each time it is asked again.
//!
//! The pool keeps counters that `/metrics` reports as the pool state: its
//! size, how many connections answered their last command, and how many
//! commands failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::{Cmd, Value};

use crate::config::RedisSettings;

mod conn;
mod tls;

pub use conn::{Conn, LazyCluster};
use tls::{extra_roots, single_client};

/// Reconnection attempts a manager makes per failed command before giving up
/// on that command. Kept low so that a dead Redis fails requests fast instead
/// of queueing them behind retries; the next command tries again anyway.
const RECONNECT_RETRIES: usize = 1;

/// Retries of a command on a cluster connection: redirects (`MOVED`, `ASK`)
/// and the refresh of the slot map after a failover, within the timeout.
const CLUSTER_RETRIES: u32 = 4;

/// Response timeout of a [`RedisPool::dedicated`] connection: a pipelined
/// write of thousands of keys may take longer than one command.
pub const BULK_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A cheaply clonable handle to the pool.
#[derive(Clone)]
pub struct RedisPool {
    inner: Arc<Inner>,
}

/// What the pool connects with.
enum Clients {
    Single(redis::Client),
    Cluster {
        /// For dedicated and blocking connections: no overall timeout
        /// beyond each attempt's.
        client: Box<ClusterClient>,
        /// One client per seed node, for pub/sub.
        seeds: Vec<redis::Client>,
        next_seed: AtomicUsize,
    },
}

struct Inner {
    clients: Clients,
    timeout: Duration,
    wait_replicas: u32,
    wait_timeout: Duration,
    slots: Vec<Slot>,
    next: AtomicUsize,
    /// Connections for writes followed by `WAIT` (empty without
    /// `REDIS_WAIT_REPLICAS`): `WAIT` blocks its connection, so it must
    /// never hold up the reads multiplexed on the others.
    durable: Vec<Slot>,
    next_durable: AtomicUsize,
    /// Connections for a worker's bulk writes ([`RedisPool::get_bulk`]),
    /// opened on first use: bounded per attempt by
    /// [`BULK_RESPONSE_TIMEOUT`], not overall by the pool's timeout.
    bulk: Vec<Slot>,
    next_bulk: AtomicUsize,
    errors: AtomicU64,
    waits_short: AtomicU64,
    /// Until when (ms since `started`) `WAIT` is skipped after a short one.
    skip_wait_until_ms: AtomicU64,
    started: std::time::Instant,
}

/// How long writes skip `WAIT` after one came back short: a primary whose
/// replica is gone would otherwise make every durable write wait out
/// `REDIS_WAIT_TIMEOUT_MS`, for nothing until the replica is back.
pub const SKIP_WAIT_AFTER_SHORT: Duration = Duration::from_secs(1);

struct Slot {
    conn: Conn,
    healthy: AtomicBool,
}

impl Slot {
    fn new(conn: Conn) -> Self {
        Self {
            conn,
            healthy: AtomicBool::new(false),
        }
    }
}

/// Why [`RedisPool::open`] failed: one line, naming the setting to fix.
#[derive(Debug, thiserror::Error)]
#[error("cannot use Redis ({setting}): {reason}")]
pub struct OpenError {
    /// `REDIS_URL` or `REDIS_CA_FILE`.
    pub setting: &'static str,
    /// What went wrong.
    pub reason: String,
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
    /// `WAIT`s that returned before `REDIS_WAIT_REPLICAS` replicas acknowledged.
    pub waits_short: u64,
}

/// Remembers which slot a connection came from, so that the outcome of its
/// command can be recorded in the pool state.
pub struct Tracker<'a> {
    pool: &'a Inner,
    slot: &'a Slot,
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
        self.slot.healthy.store(healthy, Ordering::Relaxed);
        result
    }
}

impl RedisPool {
    /// Builds the pool. No connection is opened until the first command.
    pub fn new(settings: &RedisSettings) -> redis::RedisResult<Self> {
        let roots = extra_roots(settings)?;
        let durable_timeout = settings.timeout + settings.wait_timeout;
        let durable_n = if settings.wait_replicas > 0 {
            settings.pool_size.max(1)
        } else {
            0
        };
        let bulk_timeout = settings.timeout.max(BULK_RESPONSE_TIMEOUT);
        let (clients, slots, durable, bulk) = if settings.cluster {
            let urls = settings.urls();
            let builder = || {
                let b = ClusterClient::builder(urls.iter().copied())
                    .connection_timeout(settings.timeout)
                    .response_timeout(settings.timeout)
                    .retries(CLUSTER_RETRIES)
                    .min_retry_wait(20)
                    .max_retry_wait(settings.timeout.as_millis().max(20) as u64);
                match &roots {
                    Some(certs) => b.certs(certs.clone()),
                    None => b,
                }
            };
            // The pool's commands, retries included, end within the timeout
            // (a read then falls back to the store); the long client's are
            // bounded per attempt only, by its connection's response timeout
            // (blocking reads, bulk writes, writes followed by WAIT).
            let client = builder().build()?;
            let long = builder().overall_response_timeout(None).build()?;
            let seeds = urls
                .iter()
                .map(|u| single_client(u, &roots))
                .collect::<redis::RedisResult<Vec<_>>>()?;
            let slots_of = |client: &ClusterClient, n: usize, response: Duration| -> Vec<Slot> {
                let family = conn::Family::default();
                (0..n)
                    .map(|_| {
                        Slot::new(Conn::Cluster(LazyCluster::new(
                            client.clone(),
                            settings.timeout,
                            response,
                            CLUSTER_RETRIES,
                            family.clone(),
                        )))
                    })
                    .collect()
            };
            let slots = slots_of(&client, settings.pool_size.max(1), settings.timeout);
            let durable = slots_of(&long, durable_n, durable_timeout);
            let bulk = slots_of(&long, settings.pool_size.max(1), bulk_timeout);
            let clients = Clients::Cluster {
                client: Box::new(long),
                seeds,
                next_seed: AtomicUsize::new(0),
            };
            (clients, slots, durable, bulk)
        } else {
            let client = single_client(settings.url.trim(), &roots)?;
            let slots_of = |n: usize, response: Duration| -> redis::RedisResult<Vec<Slot>> {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(settings.timeout))
                    .set_response_timeout(Some(response))
                    .set_number_of_retries(RECONNECT_RETRIES)
                    .set_max_delay(settings.timeout);
                (0..n)
                    .map(|_| {
                        Ok(Slot::new(Conn::Managed(
                            ConnectionManager::new_lazy_with_config(
                                client.clone(),
                                config.clone(),
                            )?,
                        )))
                    })
                    .collect()
            };
            let slots = slots_of(settings.pool_size.max(1), settings.timeout)?;
            let durable = slots_of(durable_n, durable_timeout)?;
            let bulk = slots_of(settings.pool_size.max(1), bulk_timeout)?;
            (Clients::Single(client), slots, durable, bulk)
        };
        Ok(Self {
            inner: Arc::new(Inner {
                clients,
                timeout: settings.timeout,
                wait_replicas: settings.wait_replicas,
                wait_timeout: settings.wait_timeout,
                slots,
                next: AtomicUsize::new(0),
                durable,
                next_durable: AtomicUsize::new(0),
                bulk,
                next_bulk: AtomicUsize::new(0),
                errors: AtomicU64::new(0),
                waits_short: AtomicU64::new(0),
                skip_wait_until_ms: AtomicU64::new(0),
                started: std::time::Instant::now(),
            }),
        })
    }

    /// [`Self::new`], then [`Self::check_tls`]: what a service starts with.
    /// Fails, in one line naming the setting, when the client cannot be
    /// built or a TLS server's certificate is refused.
    pub async fn open(settings: &RedisSettings) -> Result<Self, OpenError> {
        let pool = Self::new(settings).map_err(|e| OpenError {
            setting: "REDIS_URL",
            reason: e.to_string(),
        })?;
        pool.check_tls().await.map_err(|reason| OpenError {
            setting: if settings.ca_file.is_some() {
                "REDIS_CA_FILE"
            } else {
                "REDIS_URL"
            },
            reason: format!("the server's TLS certificate is not trusted: {reason}"),
        })?;
        Ok(pool)
    }

    /// Whether this pool speaks Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.clients, Clients::Cluster { .. })
    }

    /// A new connection of its own, outside the pool, for a task that
    /// sends blocking commands or large bulk writes. Its response timeout is
    /// [`BULK_RESPONSE_TIMEOUT`] or the pool's, whichever is longer.
    /// Dropping it closes it.
    pub async fn dedicated(&self) -> redis::RedisResult<Conn> {
        self.dedicated_with(self.inner.timeout.max(BULK_RESPONSE_TIMEOUT))
            .await
    }

    /// [`Self::dedicated`] with this response timeout: a blocking command's
    /// connection must wait longer than the command blocks.
    pub async fn dedicated_with(&self, response_timeout: Duration) -> redis::RedisResult<Conn> {
        let res = match &self.inner.clients {
            Clients::Single(client) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.inner.timeout))
                    .set_response_timeout(Some(response_timeout));
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(Conn::Multiplexed)
            }
            Clients::Cluster { client, .. } => {
                let lazy = LazyCluster::new(
                    ClusterClient::clone(client),
                    self.inner.timeout,
                    response_timeout,
                    CLUSTER_RETRIES,
                    conn::Family::default(),
                );
                lazy.connection().await.map(|_| Conn::Cluster(lazy))
            }
        };
        if res.is_err() {
            self.inner.errors.fetch_add(1, Ordering::Relaxed);
        }
        res
    }

    /// A connection for blocking commands that reconnects by itself and
    /// waits up to `response_timeout` for an answer; opened on first use.
    pub fn blocking(&self, response_timeout: Duration) -> redis::RedisResult<Conn> {
        Ok(match &self.inner.clients {
            Clients::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.inner.timeout))
                    .set_response_timeout(Some(response_timeout))
                    .set_number_of_retries(RECONNECT_RETRIES);
                Conn::Managed(ConnectionManager::new_lazy_with_config(
                    client.clone(),
                    config,
                )?)
            }
            Clients::Cluster { client, .. } => Conn::Cluster(LazyCluster::new(
                ClusterClient::clone(client),
                self.inner.timeout,
                response_timeout,
                CLUSTER_RETRIES,
                conn::Family::default(),
            )),
        })
    }

    /// Clients speaking RESP3, for connections that receive pushes (the
    /// near cache's invalidations): of the one server, or of each cluster
    /// seed. Each keeps its URL's credentials and TLS roots.
    pub fn resp3_clients(&self) -> redis::RedisResult<Vec<redis::Client>> {
        let resp3 = |client: &redis::Client| {
            let info = client.get_connection_info().clone();
            let settings = info
                .redis_settings()
                .clone()
                .set_protocol(redis::ProtocolVersion::RESP3);
            redis::Client::open(info.set_redis_settings(settings))
        };
        match &self.inner.clients {
            Clients::Single(client) => Ok(vec![resp3(client)?]),
            Clients::Cluster { seeds, .. } => seeds.iter().map(resp3).collect(),
        }
    }

    /// A new pub/sub connection (subscriptions need a connection of their
    /// own); on a cluster, through the next seed node.
    pub async fn pubsub(&self) -> redis::RedisResult<redis::aio::PubSub> {
        let client = match &self.inner.clients {
            Clients::Single(client) => client,
            Clients::Cluster {
                seeds, next_seed, ..
            } => &seeds[next_seed.fetch_add(1, Ordering::Relaxed) % seeds.len()],
        };
        let res = client.get_async_pubsub().await;
        if res.is_err() {
            self.inner.errors.fetch_add(1, Ordering::Relaxed);
        }
        res
    }

    /// The next connection, round-robin, with the tracker for its outcome.
    pub fn get(&self) -> (Conn, Tracker<'_>) {
        let slot = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.slots.len();
        self.slot(&self.inner.slots[slot])
    }

    /// The connection for a write that [`Self::wait_for_replicas`] follows:
    /// one of its own set when `REDIS_WAIT_REPLICAS` is on (a `WAIT`
    /// blocks its connection), else [`Self::get`]'s.
    pub fn get_durable(&self) -> (Conn, Tracker<'_>) {
        if self.inner.durable.is_empty() {
            return self.get();
        }
        let i = self.inner.next_durable.fetch_add(1, Ordering::Relaxed) % self.inner.durable.len();
        self.slot(&self.inner.durable[i])
    }

    fn slot<'a>(&'a self, slot: &'a Slot) -> (Conn, Tracker<'a>) {
        (
            slot.conn.clone(),
            Tracker {
                pool: &self.inner,
                slot,
            },
        )
    }

    /// A connection for a bulk write by a job (thousands of keys in one
    /// pipeline, or one per hash slot on a cluster): each attempt may take
    /// up to [`BULK_RESPONSE_TIMEOUT`], and on a cluster the retries after a
    /// failover (a stale node, the slot map refreshed) are not cut short by
    /// the pool's overall `REDIS_TIMEOUT_MS`, which bounds the read path.
    /// Kept apart from [`Self::get`]'s, so a long write never delays a read.
    pub fn get_bulk(&self) -> (Conn, Tracker<'_>) {
        let i = self.inner.next_bulk.fetch_add(1, Ordering::Relaxed) % self.inner.bulk.len();
        self.slot(&self.inner.bulk[i])
    }

    /// After a write on `conn` (from [`Self::get_durable`]) that must
    /// survive a failover, waits until `REDIS_WAIT_REPLICAS` replicas hold
    /// it, at most `REDIS_WAIT_TIMEOUT_MS` (`WAIT`, on the same connection;
    /// on a cluster, on the primary of `key`, the key written). Does nothing
    /// when the setting is 0. A `WAIT` that comes back short is logged and
    /// counted, never an error: the write is on the primary either way; the
    /// writes of the next [`SKIP_WAIT_AFTER_SHORT`] skip `WAIT` (and count
    /// as short), so a missing replica does not slow every write.
    pub async fn wait_for_replicas(&self, conn: &mut Conn, key: &str) {
        let want = self.inner.wait_replicas;
        if want == 0 {
            return;
        }
        let now_ms = self.inner.started.elapsed().as_millis() as u64;
        if now_ms < self.inner.skip_wait_until_ms.load(Ordering::Relaxed) {
            self.inner.waits_short.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("redis_wait_short_total").increment(1);
            return;
        }
        let short = || {
            self.inner.waits_short.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("redis_wait_short_total").increment(1);
            let until = self.inner.started.elapsed() + SKIP_WAIT_AFTER_SHORT;
            self.inner
                .skip_wait_until_ms
                .store(until.as_millis() as u64, Ordering::Relaxed);
        };
        let mut wait = redis::cmd("WAIT");
        wait.arg(want)
            .arg(self.inner.wait_timeout.as_millis() as u64);
        let acked: redis::RedisResult<u32> = match conn {
            // To the primary that took the write, not every primary (one of
            // which may be the dead one being failed over).
            Conn::Cluster(lazy) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let route = Route::new(crate::keys::hash_slot(key.as_bytes()), SlotAddr::Master);
                lazy.request("WAIT", move |mut c| {
                    Box::pin(async move {
                        c.route_command(
                            wait,
                            RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                        )
                        .await
                    })
                })
                .await
                .and_then(|v| Ok(redis::from_redis_value(v)?))
            }
            _ => wait.query_async(conn).await,
        };
        match acked {
            Ok(n) if n >= want => {}
            Ok(n) => {
                short();
                tracing::warn!(
                    replicas = n,
                    wanted = want,
                    "a write reached fewer replicas than REDIS_WAIT_REPLICAS in time"
                );
            }
            Err(e) => {
                short();
                tracing::warn!(error = %e, "WAIT for replicas failed");
            }
        }
    }

    /// Runs commands that each address one key as one pipeline on one
    /// server; on a cluster, where a pipeline must stay in one hash slot,
    /// as one pipeline per slot, all at once. The answers come back in the
    /// order of `cmds`.
    pub async fn query_keyed(
        &self,
        conn: &mut Conn,
        cmds: Vec<(String, Cmd)>,
    ) -> redis::RedisResult<Vec<Value>> {
        if !self.is_cluster() {
            let mut pipe = redis::pipe();
            for (_, cmd) in cmds {
                pipe.add_command(cmd);
            }
            return pipe.query_async(conn).await;
        }
        let mut by_slot: std::collections::BTreeMap<u16, (Vec<usize>, redis::Pipeline)> =
            std::collections::BTreeMap::new();
        let n = cmds.len();
        for (i, (key, cmd)) in cmds.into_iter().enumerate() {
            let (at, pipe) = by_slot
                .entry(crate::keys::hash_slot(key.as_bytes()))
                .or_insert_with(|| (Vec::new(), redis::pipe()));
            at.push(i);
            pipe.add_command(cmd);
        }
        let answers = futures::future::try_join_all(by_slot.into_values().map(|(at, pipe)| {
            let mut conn = conn.clone();
            async move {
                let values: Vec<Value> = pipe.query_async(&mut conn).await?;
                Ok::<_, redis::RedisError>((at, values))
            }
        }))
        .await?;
        let mut out = vec![Value::Nil; n];
        for (at, values) in answers {
            for (i, v) in at.into_iter().zip(values) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// Sends PING on every connection (on a cluster, to every primary);
    /// used by readiness checks. Succeeds only if all of them answer.
    pub async fn ping_all(&self) -> redis::RedisResult<()> {
        for slot in &self.inner.slots {
            let (mut conn, tracker) = self.slot(slot);
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
            waits_short: self.inner.waits_short.load(Ordering::Relaxed),
        }
    }
}

/// First pause between connection attempts at startup.
pub const INITIAL_RECONNECT_DELAY: Duration = Duration::from_millis(100);

/// Longest pause between connection attempts: long enough not to hammer a
/// Redis that is restarting, short enough that a service notices within seconds.
pub const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

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
