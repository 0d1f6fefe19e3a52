//! The worker's Prometheus series and its `/metrics` + `/health` server.
//!
//! - `jobs_started_total{job}`, and `jobs_finished_total{job, outcome}` with
//!   outcome `succeeded`, `failed`, `retried` or `skipped`.
//! - `job_duration_seconds{job}`: handler run time, a histogram.
//! - `worker_busy_slots`: handlers running now; `worker_leases_held`: jobs leased by this process.
//! - `queue_depth{state}`: `pending`, `delayed`, `running`, `dead`, sampled at scrape.

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use shared::queue::Queue;

use crate::backend::InFlight;

/// Counts a handler start.
pub fn record_start(job: &str) {
    metrics::counter!("jobs_started_total", "job" => job.to_string()).increment(1);
}

/// Counts an outcome.
pub fn record_outcome(job: &str, outcome: &'static str) {
    metrics::counter!("jobs_finished_total", "job" => job.to_string(), "outcome" => outcome)
        .increment(1);
}

/// Records a handler's run time.
pub fn record_duration(job: &str, seconds: f64) {
    metrics::histogram!("job_duration_seconds", "job" => job.to_string()).record(seconds);
}

/// Tracks the busy-slots gauge for the lifetime of the guard.
pub struct BusySlot;

impl BusySlot {
    /// Marks a slot busy.
    pub fn take() -> Self {
        metrics::gauge!("worker_busy_slots").increment(1.0);
        BusySlot
    }
}

impl Drop for BusySlot {
    fn drop(&mut self) {
        metrics::gauge!("worker_busy_slots").decrement(1.0);
    }
}

#[derive(Clone)]
struct MetricsState {
    handle: PrometheusHandle,
    queue: Queue,
    inflight: InFlight,
    worker_id: String,
}

/// The `/metrics` and `/health` router.
pub fn router(queue: Queue, inflight: InFlight, worker_id: String) -> Router {
    describe();
    Router::new()
        .route("/metrics", get(render))
        .route("/health", get(health))
        .with_state(MetricsState {
            handle: shared::metrics::recorder(),
            queue,
            inflight,
            worker_id,
        })
}

/// Binds the metrics server; returns the bound address and the serving future.
pub async fn bind(
    addr: SocketAddr,
    router: Router,
) -> std::io::Result<(
    SocketAddr,
    impl std::future::Future<Output = std::io::Result<()>>,
)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    Ok((bound, async move { axum::serve(listener, router).await }))
}

fn describe() {
    metrics::describe_counter!("jobs_started_total", "Job attempts started, by job type");
    metrics::describe_counter!(
        "jobs_finished_total",
        "Job attempts finished, by job type and outcome"
    );
    metrics::describe_histogram!(
        "job_duration_seconds",
        metrics::Unit::Seconds,
        "Handler run time"
    );
    metrics::describe_gauge!("worker_busy_slots", "Handlers running now");
    metrics::describe_gauge!("worker_leases_held", "Jobs leased by this process");
    metrics::describe_gauge!(
        "queue_depth",
        "Jobs in the queue by state, sampled at scrape"
    );
}

async fn render(State(s): State<MetricsState>) -> impl IntoResponse {
    metrics::gauge!("worker_leases_held").set(s.inflight.len() as f64);
    match s.queue.depths().await {
        Ok(d) => {
            for (state, n) in [
                ("pending", d.pending),
                ("delayed", d.delayed),
                ("running", d.running),
                ("dead", d.dead),
            ] {
                metrics::gauge!("queue_depth", "state" => state).set(n as f64);
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot sample queue depths"),
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.handle.render(),
    )
}

async fn health(State(s): State<MetricsState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "service": crate::config::SERVICE_NAME,
        "worker_id": s.worker_id,
        "leases_held": s.inflight.len(),
    }))
}
