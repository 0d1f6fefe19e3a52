//! The operations endpoints every service serves, built one way:
//! `/health` (liveness: always 200 while the process answers), `/ready`
//! (200 while the service can do its work, else 503 with the same body, so
//! a load balancer can tell the two apart) and `/metrics` (the Prometheus
//! exposition of the process-wide recorder, [`crate::metrics`]).
//!
//! A service says what it reports by implementing [`Probe`] for its state;
//! [`router`] wires the three routes to it. The api merges that router into
//! its own; the worker and the listener serve it on their metrics address
//! ([`crate::metrics::bind`]). [`instance_id`] names one process of a
//! service, for the worker registry and the listener's consumer group.

use std::future::Future;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::handler::Handler;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, get};
use serde::Serialize;

/// What one service reports on its operations endpoints.
pub trait Probe: Clone + Send + Sync + 'static {
    /// The body of `/health`.
    type Health: Serialize + Send;
    /// The body of `/ready`, whichever its status.
    type Readiness: Serialize + Send;

    /// The liveness body.
    fn health(&self) -> impl Future<Output = Self::Health> + Send;

    /// Whether the service is ready, and the body saying why.
    fn readiness(&self) -> impl Future<Output = (bool, Self::Readiness)> + Send;

    /// Sets the gauges that are sampled at scrape time (queue depths, pool
    /// state), just before `/metrics` renders. Nothing by default.
    fn before_scrape(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// `/health`, `/ready` and `/metrics` over `P`'s state. Installs the
/// process-wide recorder, so series counted before the first scrape are kept.
pub fn router<P: Probe>() -> Router<P> {
    router_with::<P, AxumGet>()
}

/// [`router`], with each handler registered by `G` (the api's wraps it to
/// time and trace it).
pub fn router_with<P: Probe, G: Get<P>>() -> Router<P> {
    crate::metrics::recorder();
    Router::new()
        .route(HEALTH, G::get(HEALTH, health::<P>))
        .route(READY, G::get(READY, ready::<P>))
        .route(METRICS, G::get(METRICS, metrics::<P>))
}

/// The operations routes' paths.
const HEALTH: &str = "/health";
const READY: &str = "/ready";
const METRICS: &str = "/metrics";

/// How [`router_with`] registers a `GET` handler.
pub trait Get<S> {
    /// The method router that serves `handler` on `GET` at `route` (a
    /// template, for a registrar that labels by it).
    fn get<H: Handler<T, S>, T: 'static>(route: &'static str, handler: H) -> MethodRouter<S>;
}

/// axum's own `get`.
#[derive(Debug, Clone, Copy)]
pub struct AxumGet;

impl<S: Clone + Send + Sync + 'static> Get<S> for AxumGet {
    fn get<H: Handler<T, S>, T: 'static>(_route: &'static str, handler: H) -> MethodRouter<S> {
        get(handler)
    }
}

/// Liveness: 200 with the service's health body.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "Alive: the service's liveness body", body = serde_json::Value)))]
pub async fn health<P: Probe>(State(probe): State<P>) -> Json<P::Health> {
    Json(probe.health().await)
}

/// Readiness: 200 when ready, else 503, with the same body either way.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Every dependency answers", body = serde_json::Value),
        (status = 503, description = "At least one dependency is down; each is reported", body = serde_json::Value),
    ))]
pub async fn ready<P: Probe>(State(probe): State<P>) -> (StatusCode, Json<P::Readiness>) {
    let (ok, body) = probe.readiness().await;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// The Prometheus exposition, after the service's scrape-time samples.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics<P: Probe>(State(probe): State<P>) -> impl IntoResponse {
    probe.before_scrape().await;
    crate::metrics::exposition()
}

/// A name for this process that no other process shares: the host, the pid
/// and a random suffix (`host-1234-7QX3KZ`). `fallback` stands in for the
/// host name where it cannot be read.
pub fn instance_id(fallback: &str) -> String {
    let host = hostname(fallback);
    let suffix = ulid::Ulid::new().to_string();
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &suffix[suffix.len() - 6..]
    )
}

/// This machine's host name, or `fallback` where it cannot be read.
pub fn hostname(fallback: &str) -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| fallback.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_differ_and_carry_the_pid() {
        let (a, b) = (instance_id("x"), instance_id("x"));
        assert_ne!(a, b);
        assert!(a.contains(&format!("-{}-", std::process::id())), "{a}");
        assert!(!a.contains(['\t', '\n']), "{a}");
    }
}
