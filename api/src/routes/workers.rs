//! The live worker registry (who runs, and what each runs now), and the
//! schedules those workers run.

use axum::extract::State;
use axum::{Json, Router};
use queue::LastRun;
use queue::schedule::ScheduleDef;
use queue::workers::WorkerInfo;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::routes::{Routes as _, get};
use crate::state::AppState;

/// Routes of this module.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .at("/api/v1/workers", get(list))
        .at("/api/v1/schedules", get(schedules))
}

/// Every live worker.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct WorkerList {
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
pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<WorkerList>, ApiError> {
    Ok(Json(WorkerList {
        workers: live_workers(&state).await?,
    }))
}

async fn live_workers(state: &AppState) -> Result<Vec<WorkerInfo>, ApiError> {
    state.workers.list().await.map_err(|e| {
        tracing::error!(error = %e, "worker registry unavailable");
        ApiError::Unavailable("the worker registry (Redis) is unavailable; retry later".into())
    })
}

/// Every schedule the live workers run.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct ScheduleList {
    /// By name.
    pub schedules: Vec<ScheduleStatus>,
}

/// One schedule: its definition, its last and next run.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct ScheduleStatus {
    /// The definition (as the first live worker, by id, reports it).
    #[serde(flatten)]
    pub definition: ScheduleDef,
    /// Its last claimed tick and the job queued for it; `null` before the first.
    pub last_run: Option<LastRun>,
    /// Its next tick.
    pub next_run: Option<chrono::DateTime<chrono::Utc>>,
    /// How many live workers run its scheduler (any of them queues each tick, once).
    pub workers: usize,
}

/// The schedules of the live workers (`SCHEDULE_<NAME>`), each with its
/// last run (the tick, the task queued for it and the worker that queued
/// it) and its next run. A schedule no live worker runs is not listed.
#[utoipa::path(get, path = "/api/v1/schedules", tag = "workers",
    responses(
        (status = 200, description = "The schedules", body = ScheduleList),
        (status = 503, description = "Redis is unavailable", body = ErrorBody),
    ))]
pub(crate) async fn schedules(
    State(state): State<AppState>,
) -> Result<Json<ScheduleList>, ApiError> {
    let mut by_name: std::collections::BTreeMap<String, (ScheduleDef, usize)> = Default::default();
    for w in live_workers(&state).await? {
        for def in w.report.schedules {
            by_name
                .entry(def.name.clone())
                .or_insert_with(|| (def, 0))
                .1 += 1;
        }
    }
    let mut last_runs = std::collections::HashMap::new();
    let now = chrono::Utc::now().timestamp_millis();
    let mut schedules = Vec::with_capacity(by_name.len());
    for (name, (definition, workers)) in by_name {
        if !last_runs.contains_key(&definition.queue)
            && let Some(q) = state.queues.get(&definition.queue)
        {
            last_runs.insert(definition.queue.clone(), q.last_runs().await?);
        }
        let last_run = last_runs
            .get(&definition.queue)
            .and_then(|runs| runs.get(&name))
            .cloned();
        let next_run = definition
            .schedule()
            .ok()
            .and_then(|s| s.next_after(now))
            .and_then(queue::ms_to_datetime);
        schedules.push(ScheduleStatus {
            definition,
            last_run,
            next_run,
            workers,
        });
    }
    Ok(Json(ScheduleList { schedules }))
}
