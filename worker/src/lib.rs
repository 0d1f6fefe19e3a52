//! The worker: runs price recalculation jobs off the request path.
//!
//! This is the skeleton the job queue grows into: today it opens the
//! catalog store, connects to Redis (retrying with backoff while Redis is
//! down), reports that it is ready, and stops cleanly on SIGTERM. The job
//! queue and the recalculation jobs are not implemented yet.
//!
//! # Layout
//! - [`config`]: [`config::Settings`] from the environment.
//! - [`run`]: connect, serve until the shutdown future resolves, stop.

pub mod config;

use std::future::Future;

use anyhow::Context as _;
use shared::redis_pool::{RedisPool, wait_until_ready};

use crate::config::Settings;

/// Runs the worker until `shutdown` resolves.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let store = shared::store::open(&settings.database)
        .await
        .context("opening the catalog store")?;
    let pool = RedisPool::new(&settings.redis).context("REDIS_URL")?;
    tokio::pin!(shutdown);
    if wait_until_ready(&pool, &mut shutdown).await {
        tracing::info!(redis = %settings.redis.url, "worker ready");
        shutdown.await;
    }
    store.close().await;
    tracing::info!("worker stopped");
    Ok(())
}
