//! The live worker registry: who runs, and what each runs now.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use shared::workers::WorkerInfo;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/workers", get(list))
}

/// Every live worker.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkerList {
    /// The workers whose last heartbeat is within their lease, by id.
    pub workers: Vec<WorkerInfo>,
}

/// The live workers: id, host, pid, version, start, last heartbeat, queues,
/// slots, busy slots and the jobs each holds now. A worker that stops
/// heartbeating leaves the list when its lease (`JOB_LEASE_SECS`) passes;
/// a graceful stop removes it at once.
#[utoipa::path(get, path = "/api/v1/workers", tag = "workers",
    responses(
        (status = 200, description = "The live workers", body = WorkerList),
        (status = 503, description = "Redis is unavailable", body = ErrorBody),
    ))]
pub async fn list(State(state): State<AppState>) -> Result<Json<WorkerList>, ApiError> {
    let workers = state.workers.list().await.map_err(|e| {
        tracing::error!(error = %e, "worker registry unavailable");
        ApiError::Unavailable("the worker registry (Redis) is unavailable; retry later".into())
    })?;
    Ok(Json(WorkerList { workers }))
}
