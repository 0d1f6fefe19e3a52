//! [`Conn`]: one connection the pool hands out, to one server (a
//! `ConnectionManager`) or to a Redis Cluster, connected on first use
//! ([`LazyCluster`]) so a service starts while Redis is down.

use std::sync::Arc;

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
    cell: tokio::sync::OnceCell<ClusterConnection>,
}

impl LazyCluster {
    pub(crate) fn new(client: ClusterClient, config: ClusterConfig) -> Self {
        Self {
            inner: Arc::new(LazyInner {
                client,
                config,
                cell: tokio::sync::OnceCell::new(),
            }),
        }
    }

    pub(crate) async fn connection(&self) -> redis::RedisResult<ClusterConnection> {
        let inner = &self.inner;
        inner
            .cell
            .get_or_try_init(|| {
                inner
                    .client
                    .get_async_connection_with_config(inner.config.clone())
            })
            .await
            .cloned()
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Managed(c) => c.req_packed_command(cmd),
            Conn::Multiplexed(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => Box::pin(async move {
                let mut conn = c.connection().await?;
                conn.req_packed_command(cmd).await
            }),
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
            Conn::Cluster(c) => Box::pin(async move {
                let mut conn = c.connection().await?;
                conn.req_packed_commands(pipeline, offset, count).await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        0
    }
}
