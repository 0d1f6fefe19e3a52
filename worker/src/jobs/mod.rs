//! The job handlers this worker runs.
//!
//! - `noop`: does nothing; health checks and queue benchmarks.
//! - `sleep {millis}`: sleeps; drills of leases, heartbeats and shutdown.
//! - [`recalc`]: `recalculate_all_prices` and `recalculate_prices`.
//! - [`feed`]: the market-data feed the recalculations may read.

pub mod feed;
pub mod recalc;

use std::time::Duration;

use queue::{JobError, JobOutcome, Noop, Sleep};
use serde_json::json;

use crate::registry::{JobContext, Registry};

/// The registry of every built-in job.
pub fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.register(noop).register(sleep);
    registry
}

async fn noop(_job: Noop, _ctx: JobContext) -> Result<JobOutcome, JobError> {
    Ok(JobOutcome::succeeded(serde_json::Value::Null))
}

async fn sleep(job: Sleep, ctx: JobContext) -> Result<JobOutcome, JobError> {
    tokio::time::sleep(Duration::from_millis(job.millis)).await;
    Ok(JobOutcome::succeeded(
        json!({"slept_ms": job.millis, "worker": ctx.worker_id}),
    ))
}
