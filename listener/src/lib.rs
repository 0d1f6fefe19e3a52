//! The listener: turns market events from Redis pub/sub into jobs.
//!
//! This is the skeleton the event bridge grows into: today it opens the
//! catalog store, connects to Redis (retrying with backoff while Redis is
//! down), serves `/metrics` and `/health` on `LISTENER_METRICS_ADDR`, reports
//! that it is ready, and stops cleanly on SIGTERM. The subscription to
//! market events is not implemented yet.
//!
//! # Layout
//! - [`config`]: [`config::Settings`] from the environment.
//! - [`run`]: connect, serve until the shutdown future resolves, stop.

pub mod config;

use std::future::Future;

use anyhow::Context as _;
use axum::Json;
use axum::routing::get;
use shared::redis_pool::{RedisPool, wait_until_ready};

use crate::config::{SERVICE_NAME, Settings};

fn router() -> axum::Router {
    shared::metrics::recorder();
    axum::Router::new()
        .route("/metrics", get(|| async { shared::metrics::exposition() }))
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({"status": "ok", "service": SERVICE_NAME})) }),
        )
}

/// Runs the listener until `shutdown` resolves.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let store = shared::store::open(&settings.database)
        .await
        .context("opening the catalog store")?;
    let pool = RedisPool::new(&settings.redis).context("REDIS_URL")?;
    let (metrics_addr, server) = shared::metrics::bind(settings.metrics_addr, router())
        .await
        .with_context(|| format!("binding LISTENER_METRICS_ADDR {}", settings.metrics_addr))?;
    let server = tokio::spawn(server);
    tokio::pin!(shutdown);
    if wait_until_ready(&pool, &mut shutdown).await {
        tracing::info!(redis = %settings.redis.url, metrics = %metrics_addr, "listener ready");
        shutdown.await;
    }
    server.abort();
    store.close().await;
    tracing::info!("listener stopped");
    Ok(())
}
