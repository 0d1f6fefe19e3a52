//! The worker's operations endpoints on `WORKER_METRICS_ADDR`, built by
//! [`shared::ops::router`]: `/health` (liveness: the worker id and the
//! leases it holds), `/ready` (Redis reachable) and `/metrics`, with each
//! queue's depths and this process's leases sampled at scrape.

use queue::Queues;
use serde_json::{Value, json};
use shared::ops::Probe;

use crate::backend::InFlight;

/// What the worker's operations endpoints read.
#[derive(Clone)]
pub(crate) struct WorkerProbe {
    /// Every queue, for the depth gauges and the Redis check.
    pub queues: Queues,
    /// The jobs this process holds a lease on.
    pub inflight: InFlight,
    /// This worker's id.
    pub worker_id: String,
}

/// The `/metrics`, `/health` and `/ready` router.
pub(crate) fn router(probe: WorkerProbe) -> axum::Router {
    let router = shared::ops::router().with_state(probe);
    // The recorder is installed now: describe before any job is counted.
    crate::metrics::describe();
    router
}

impl Probe for WorkerProbe {
    type Health = Value;
    type Readiness = Value;

    async fn health(&self) -> Value {
        json!({
            "status": "ok",
            "service": crate::config::SERVICE_NAME,
            "worker_id": self.worker_id,
            "leases_held": self.inflight.len(),
        })
    }

    /// Ready while Redis answers.
    async fn readiness(&self) -> (bool, Value) {
        match self.queues.pool().ping_all().await {
            Ok(()) => (true, json!({"status": "ready", "redis": {"ok": true}})),
            Err(e) => (
                false,
                json!({"status": "degraded", "redis": {"ok": false, "error": e.to_string()}}),
            ),
        }
    }

    async fn before_scrape(&self) {
        metrics::gauge!("worker_leases_held").set(self.inflight.len() as f64);
        for (name, queue) in self.queues.iter() {
            match queue.depths().await {
                Ok(d) => {
                    for (state, n) in [
                        ("pending", d.pending),
                        ("delayed", d.delayed),
                        ("running", d.running),
                        ("dead", d.dead),
                    ] {
                        metrics::gauge!("queue_depth", "queue" => name.to_string(), "state" => state)
                            .set(n as f64);
                    }
                }
                Err(e) => tracing::warn!(queue = name, error = %e, "cannot sample queue depths"),
            }
        }
    }
}
