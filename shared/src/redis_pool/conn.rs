//! [`Conn`]: one connection the pool hands out, to one server (a
//! `ConnectionManager`) or to a Redis Cluster, connected on first use
//! ([`LazyCluster`]) so a service starts while Redis is down.
//!
//! Two guards around redis 1.8's cluster client, which across a failover
//! (a primary killed while commands are in flight) was seen to stop
//! answering on a connection for good: a job's price write never returned
//! and its worker held the job `running` for ever
//! (listener/tests/shared_catalog.rs).
//! - A command that has waited a response timeout has its connection
//!   probed with a `PING` every [`PROBE_EVERY`]; a probe unanswered for a
//!   response timeout fails the command now.
//! - Every command, its connect included, ends by a deadline of our own.
//!
//! Either way the command fails as a timeout, so its caller retries it like
//! any other transient error, and the connection is replaced, with the
//! others of its [`Family`] (the same kind in the same process), which were
//! seen stuck alike.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, RedisFuture, Value};

/// One connection of the pool, or a dedicated one: commands sent through
/// it go to the one server, or to the cluster node that owns their keys.
#[derive(Clone)]
pub enum Conn {
    /// To one server, reconnecting by itself.
    Managed(ConnectionManager),
    /// To one server, for one task (fails once the server is gone).
    Multiplexed(redis::aio::MultiplexedConnection),
    /// To a Redis Cluster, connected on first use.
    Cluster(LazyCluster),
}

/// A cluster connection opened on its first command, so a pool can be
/// built without Redis, and opened again if that first attempt failed.
#[derive(Clone)]
pub struct LazyCluster {
    inner: Arc<LazyInner>,
}

pub(crate) struct LazyInner {
    client: ClusterClient,
    config: ClusterConfig,
    /// The open connection, its generation and the family epoch it was
    /// opened in, once opened.
    open: std::sync::RwLock<Option<(u64, u64, ClusterConnection)>>,
    /// The connections opened alike, which are replaced together.
    family: Family,
    /// Held while one task opens it, so the others wait for that one.
    opening: tokio::sync::Mutex<u64>,
    /// The longest one command may take, connect and retries included.
    deadline: Duration,
    /// How long a command waits before its connection is probed, and a
    /// probe for its answer: one response timeout.
    probe_after: Duration,
}

/// Connections of one kind in one process (the pool's bulk connections,
/// say): when one is found to have stopped answering, the others, opened
/// alike and likely stuck alike (seen after a failover), are replaced too,
/// each on its next command.
#[derive(Clone, Default)]
pub(crate) struct Family(Arc<AtomicU64>);

impl LazyCluster {
    /// A connection of `client` in `family` that waits `connect` for a node
    /// to accept and `response` for each answer; `retries` is the client's
    /// number of retries, from which the deadline of a whole command follows.
    pub(crate) fn new(
        client: ClusterClient,
        connect: Duration,
        response: Duration,
        retries: u32,
        family: Family,
    ) -> Self {
        let config = ClusterConfig::new()
            .set_connection_timeout(connect)
            .set_response_timeout(response);
        Self {
            inner: Arc::new(LazyInner {
                client,
                config,
                open: std::sync::RwLock::new(None),
                family,
                opening: tokio::sync::Mutex::new(0),
                deadline: deadline(connect, response, retries),
                probe_after: response,
            }),
        }
    }

    /// The open connection and its generation, unless its family has been
    /// told to replace it.
    fn current(&self) -> Option<(u64, ClusterConnection)> {
        let epoch = self.inner.family.0.load(Ordering::Acquire);
        match &*self.inner.open.read().unwrap_or_else(|p| p.into_inner()) {
            Some((generation, at, conn)) if *at == epoch => Some((*generation, conn.clone())),
            _ => None,
        }
    }

    /// The cluster connection and its generation, opened now if it is not
    /// open (within the deadline).
    async fn generation(&self) -> redis::RedisResult<(u64, ClusterConnection)> {
        if let Some(open) = self.current() {
            return Ok(open);
        }
        let mut opened = self.inner.opening.lock().await;
        if let Some(open) = self.current() {
            return Ok(open);
        }
        let inner = &self.inner;
        let epoch = inner.family.0.load(Ordering::Acquire);
        let conn = self
            .bounded(
                "connecting to the cluster",
                inner
                    .client
                    .get_async_connection_with_config(inner.config.clone()),
            )
            .await??;
        *opened += 1;
        *inner.open.write().unwrap_or_else(|p| p.into_inner()) =
            Some((*opened, epoch, conn.clone()));
        Ok((*opened, conn))
    }

    /// The cluster connection, opened now if it is not open yet (within
    /// the deadline).
    pub(crate) async fn connection(&self) -> redis::RedisResult<ClusterConnection> {
        self.generation().await.map(|(_, conn)| conn)
    }

    /// Runs `fut` (opening the connection, or one command on it) within
    /// the deadline; past it, fails as a timeout.
    async fn bounded<F: Future>(
        &self,
        what: &'static str,
        fut: F,
    ) -> redis::RedisResult<F::Output> {
        let deadline = self.inner.deadline;
        tokio::time::timeout(deadline, fut).await.map_err(|_| {
            tracing::warn!(
                ?deadline,
                what,
                "a Redis Cluster command outlived its deadline; given up"
            );
            timed_out(format!("{what}: no answer within {deadline:?}"))
        })
    }

    /// Runs `send` on the connection within the deadline, probing the
    /// connection while it waits long (see [`PROBE_EVERY`]). A connection
    /// found not answering, or that a command outlived the deadline on, is
    /// closed with the rest of its family: the next command opens another.
    /// The client's own errors, its timeouts included, leave it open.
    pub(crate) async fn request<'a, T>(
        &'a self,
        what: &'static str,
        send: impl FnOnce(ClusterConnection) -> RedisFuture<'a, T>,
    ) -> redis::RedisResult<T> {
        let (generation, conn) = self.generation().await?;
        let err = match self.bounded(what, self.watched(send(conn))).await {
            Ok(Ok(answer)) => return answer,
            Ok(Err(Stuck)) => {
                tracing::warn!(what, probe_timeout = ?self.inner.probe_after, "a Redis Cluster connection stopped answering; the command is given up and the connection replaced");
                timed_out(format!("{what}: the cluster connection stopped answering"))
            }
            Err(past_deadline) => past_deadline,
        };
        let mut open = self.inner.open.write().unwrap_or_else(|p| p.into_inner());
        if let Some((g, epoch, _)) = *open
            && g == generation
        {
            *open = None;
            // Once per epoch, however many commands found it.
            let _ = self.inner.family.0.compare_exchange(
                epoch,
                epoch + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
        Err(err)
    }

    /// Drives `fut`, a command on this connection, to its answer. Once it
    /// has waited a response timeout, the connection is probed with a
    /// `PING` every [`PROBE_EVERY`]: a probe that gets no answer (not even
    /// an error) within a response timeout means the connection has
    /// stopped answering ([`Stuck`]).
    async fn watched<T>(&self, fut: impl Future<Output = T>) -> Result<T, Stuck> {
        let patience = self.inner.probe_after;
        tokio::pin!(fut);
        tokio::select! {
            answer = &mut fut => return Ok(answer),
            () = tokio::time::sleep(patience) => {}
        }
        loop {
            let Some((_, mut conn)) = self.current() else {
                return Ok(fut.await);
            };
            let probe = async move {
                let ping = redis::cmd("PING");
                tokio::time::timeout(patience, conn.req_packed_command(&ping))
                    .await
                    .is_ok()
            };
            let answered = tokio::select! {
                answer = &mut fut => return Ok(answer),
                answered = probe => answered,
            };
            if !answered {
                return Err(Stuck);
            }
            tokio::select! {
                answer = &mut fut => return Ok(answer),
                () = tokio::time::sleep(PROBE_EVERY) => {}
            }
        }
    }
}

/// A connection's probe went unanswered: it has stopped answering.
struct Stuck;

/// A timeout error saying `message`: transient, so its caller retries.
fn timed_out(message: String) -> redis::RedisError {
    std::io::Error::new(std::io::ErrorKind::TimedOut, message).into()
}

/// How often a connection whose command has waited a response timeout is
/// probed. redis 1.8's cluster client, across a failover, was seen to stop
/// answering on a connection for good (every command on it pending, a
/// `PING` too), while the cluster and the service's other connections
/// worked: a worker's price write on it never returned. The probe tells
/// such a connection from a command that is merely slow.
pub(crate) const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The longest a command may take on a cluster connection that connects
/// within `connect`, answers each attempt within `response` and retries
/// `retries` times: every attempt, a reconnect before each, and a margin
/// for the waits between retries.
pub(crate) fn deadline(connect: Duration, response: Duration, retries: u32) -> Duration {
    (connect + response) * (retries + 1) + Duration::from_secs(1)
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Managed(c) => c.req_packed_command(cmd),
            Conn::Multiplexed(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => Box::pin(c.request("a command", move |mut conn| {
                Box::pin(async move { conn.req_packed_command(cmd).await })
            })),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Multiplexed(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => Box::pin(c.request("a pipeline", move |mut conn| {
                Box::pin(async move { conn.req_packed_commands(pipeline, offset, count).await })
            })),
        }
    }

    fn get_db(&self) -> i64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cluster_command_that_never_answers_fails_as_a_timeout() {
        let client = ClusterClient::new(vec!["redis://127.0.0.1:1"]).unwrap();
        let short = Duration::from_millis(1);
        let lazy = LazyCluster::new(client, short, short, 0, Family::default());

        let res: redis::RedisResult<()> = lazy.bounded("a pipeline", std::future::pending()).await;

        let err = res.unwrap_err();
        assert!(
            err.is_timeout(),
            "a transient error its caller retries: {err}"
        );
        assert!(err.to_string().contains("a pipeline"), "{err}");
    }

    #[tokio::test]
    async fn a_connection_a_command_outlived_its_deadline_on_is_replaced() {
        let cluster = testkit::RedisCluster::start().await;
        let client = ClusterClient::new(cluster.seeds()).unwrap();
        let short = Duration::from_millis(300);
        let lazy = LazyCluster::new(client, short, short, 0, Family::default());
        let ping = |c: &LazyCluster| {
            let c = c.clone();
            async move {
                c.request("PING", |mut conn| {
                    Box::pin(async move { conn.req_packed_command(&redis::cmd("PING")).await })
                })
                .await
            }
        };
        ping(&lazy).await.unwrap();
        let first = lazy.current().map(|(g, _)| g);

        // The client's own timeout (a slow answer) keeps the connection.
        let res: redis::RedisResult<()> = lazy
            .request("GET", |_| {
                Box::pin(async { Err(timed_out("the client's response timeout".into())) })
            })
            .await;
        assert!(res.unwrap_err().is_timeout());
        assert_eq!(lazy.current().map(|(g, _)| g), first, "still open");

        // A command that never answers, as one did after a failover.
        let res: redis::RedisResult<()> = lazy
            .request("a pipeline", |_| Box::pin(std::future::pending()))
            .await;

        assert!(res.unwrap_err().is_timeout());
        assert!(lazy.current().is_none(), "the connection is closed");
        ping(&lazy).await.unwrap();
        let second = lazy.current().map(|(g, _)| g);
        assert_eq!((first, second), (Some(1), Some(2)), "and another opened");
    }

    #[tokio::test]
    async fn a_connection_that_stops_answering_is_replaced_with_its_family_before_the_deadline() {
        let cluster = testkit::RedisCluster::start().await;
        let client = ClusterClient::new(cluster.seeds()).unwrap();
        let (connect, response) = (Duration::from_millis(300), Duration::from_millis(300));
        let family = Family::default();
        let lazy = LazyCluster::new(client.clone(), connect, response, 4, family.clone());
        let sibling = LazyCluster::new(client, connect, response, 4, family);
        let get = |c: &LazyCluster| {
            let c = c.clone();
            async move {
                c.request("GET", |mut conn| {
                    Box::pin(
                        async move { conn.req_packed_command(redis::cmd("GET").arg("k")).await },
                    )
                })
                .await
            }
        };
        get(&lazy).await.unwrap();
        get(&sibling).await.unwrap();

        // Every node frozen: a command, and the probe after it, go unanswered.
        cluster.pause();
        let res = get(&lazy).await;
        cluster.resume();

        let err = res.unwrap_err();
        assert!(err.is_timeout(), "{err}");
        assert!(
            err.to_string().contains("stopped answering"),
            "found by the probe, not the deadline: {err}"
        );
        assert!(lazy.current().is_none(), "the connection is replaced");
        assert!(
            sibling.current().is_none(),
            "and so is the rest of its family"
        );
        get(&lazy).await.unwrap();
        get(&sibling).await.unwrap();
        assert!(sibling.current().is_some());
    }

    #[test]
    fn the_deadline_covers_every_attempt_and_its_reconnect() {
        let d = deadline(Duration::from_millis(500), Duration::from_secs(10), 4);
        assert_eq!(d, Duration::from_millis(53_500));
    }
}
