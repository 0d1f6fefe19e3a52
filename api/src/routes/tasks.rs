//! The task API: status by id, the dead set, re-enqueue, cancel.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use queue::{CancelOutcome, JobState, JobStatus, ResurrectOutcome, RevokeOutcome};
use serde::{Deserialize, Serialize};
use shared::jobs::recalculate_all_job;
use utoipa::{IntoParams, ToSchema};

use crate::error::{AdminRefusal, ApiError, ErrorBody};
use crate::extract::{Admin, ValidPath, ValidQuery};
use crate::routes::{Routes as _, delete, get, post};
use crate::state::AppState;

/// Most dead jobs one listing returns.
pub(crate) const MAX_DEAD_LIMIT: usize = 1_000;

/// Routes of this module.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .at("/api/v1/tasks/dead", get(dead))
        .at("/api/v1/tasks/{task_id}", get(status).merge(delete(cancel)))
        .at("/api/v1/tasks/{task_id}/retry", post(retry))
        .at("/api/v1/tasks/recalculate-all", post(recalculate_all))
}

/// A task as the API reports it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct TaskStatus {
    /// The task id.
    pub task_id: String,
    /// The queue that holds it.
    pub queue: String,
    /// The job type.
    pub name: String,
    /// Where it is in its life.
    pub status: JobState,
    /// Attempts started so far.
    pub attempts: u32,
    /// Attempts it may use.
    pub max_attempts: u32,
    /// When it was queued.
    pub enqueued_at: Option<DateTime<Utc>>,
    /// When it is due (scheduled jobs and waiting retries).
    pub run_at: Option<DateTime<Utc>>,
    /// When its latest attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// Its result, once finished.
    pub result: Option<serde_json::Value>,
    /// Its latest error.
    pub error: Option<String>,
    /// The worker that ran its latest attempt.
    pub worker: Option<String>,
    /// Its arguments, while it may still run (dropped when it succeeds, is
    /// skipped or cancelled; dead jobs keep them). Left out of listings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<serde_json::Value>,
    /// The trace it belongs to (from the trace context it was pushed with).
    pub trace_id: Option<String>,
    /// The schedule that queued it, if one did.
    pub schedule: Option<String>,
    /// Times its worker was lost while running it.
    pub leases_lost: u32,
}

impl TaskStatus {
    /// The status of a task of `queue`.
    pub(crate) fn of(queue: &str, s: JobStatus) -> Self {
        let t = |ms: Option<i64>| ms.and_then(queue::ms_to_datetime);
        let r = s.record;
        TaskStatus {
            task_id: s.id,
            queue: queue.to_string(),
            name: r.name,
            status: r.state,
            attempts: r.attempts,
            max_attempts: r.max_attempts,
            enqueued_at: t(r.enqueued_at),
            run_at: t(r.run_at),
            started_at: t(r.started_at),
            finished_at: t(r.finished_at),
            result: s.result,
            error: r.error,
            worker: r.worker,
            args: s.args,
            trace_id: r.traceparent.as_deref().and_then(trace_id_of),
            schedule: r.schedule,
            leases_lost: r.leases_lost,
        }
    }
}

/// The trace id of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`).
fn trace_id_of(traceparent: &str) -> Option<String> {
    let id = traceparent.split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id.bytes().any(|b| b != b'0'))
        .then(|| id.to_ascii_lowercase())
}

/// The dead set.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct DeadList {
    /// Failed tasks, newest first.
    pub tasks: Vec<TaskStatus>,
}

/// Query of the dead-set listing.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeadQuery {
    /// How many to list (1–1,000, default 50).
    pub limit: Option<usize>,
}

/// A task accepted into the queue.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Accepted {
    /// The task id.
    pub task_id: String,
    /// Where to follow it.
    pub status_url: String,
}

/// A recalculation trigger's answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Triggered {
    /// The task that will run (an already waiting one when `joined`).
    pub task_id: String,
    /// Where to follow it.
    pub status_url: String,
    /// `true` when a recalculation was already waiting and this trigger joined it.
    pub joined: bool,
}

/// A running task being revoked.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Revoking {
    /// The task id.
    pub task_id: String,
    /// Always `revoking`: it will end `cancelled`.
    pub status: String,
    /// Where to follow it.
    pub status_url: String,
}

/// A cancelled task.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Cancelled {
    /// The task id.
    pub task_id: String,
    /// Always `cancelled`.
    pub status: JobState,
}

fn check_task_id(id: &str) -> Result<(), ApiError> {
    shared::domain::validate_product_id(id)
        .map_err(|e| ApiError::field("task_id", format!("task_id {e}")))
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("task {id} not found"))
}

/// Status of one task.
#[utoipa::path(get, path = "/api/v1/tasks/{task_id}", tag = "tasks",
    params(("task_id" = String, Path, description = "Task id")),
    responses(
        (status = 200, description = "The task", body = TaskStatus),
        (status = 404, description = "Unknown (or expired) task id; never reported as pending", body = ErrorBody),
        (status = 503, description = "Redis unavailable", body = ErrorBody),
    ))]
pub(crate) async fn status(
    State(state): State<AppState>,
    ValidPath(task_id): ValidPath<String>,
) -> Result<Json<TaskStatus>, ApiError> {
    check_task_id(&task_id)?;
    let (queue, status) = state
        .queues
        .find(&task_id)
        .await?
        .ok_or_else(|| not_found(&task_id))?;
    Ok(Json(TaskStatus::of(queue.name(), status)))
}

/// Cancel a pending or scheduled task, or revoke a running one: the
/// worker that holds it is asked to stop it (its cancellation token
/// fires; after `WORKER_REVOKE_GRACE_SECS` it is dropped) and it ends
/// `cancelled`, also when its worker is dead (when its lease is reaped).
#[utoipa::path(delete, path = "/api/v1/tasks/{task_id}", tag = "tasks",
    params(("task_id" = String, Path, description = "Task id")),
    responses(
        (status = 200, description = "Cancelled; it will not run", body = Cancelled),
        (status = 202, description = "Running: revoking; it will end cancelled", body = Revoking),
        (status = 404, description = "Unknown task id", body = ErrorBody),
        (status = 409, description = "Already finished", body = ErrorBody),
        AdminRefusal,
    ))]
pub(crate) async fn cancel(
    _admin: Admin,
    State(state): State<AppState>,
    ValidPath(task_id): ValidPath<String>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse as _;
    check_task_id(&task_id)?;
    let Some((queue, _)) = state.queues.find(&task_id).await? else {
        return Err(not_found(&task_id));
    };
    match queue.cancel(&task_id).await? {
        CancelOutcome::Cancelled => Ok(Json(Cancelled {
            task_id,
            status: JobState::Cancelled,
        })
        .into_response()),
        CancelOutcome::NotFound => Err(not_found(&task_id)),
        CancelOutcome::TooLate(JobState::Running) => {
            match queue.revoke(&task_id, &state.control_channel).await? {
                RevokeOutcome::Revoking => Ok((
                    StatusCode::ACCEPTED,
                    Json(Revoking {
                        status_url: format!("/api/v1/tasks/{task_id}"),
                        task_id,
                        status: "revoking".into(),
                    }),
                )
                    .into_response()),
                RevokeOutcome::NotFound => Err(not_found(&task_id)),
                // It finished between the two looks.
                RevokeOutcome::NotRunning(s) => Err(too_late(&task_id, s)),
            }
        }
        CancelOutcome::TooLate(s) => Err(too_late(&task_id, s)),
    }
}

fn too_late(task_id: &str, s: JobState) -> ApiError {
    ApiError::Conflict(format!(
        "task {task_id} is {}; only pending, scheduled or running tasks can be cancelled",
        state_name(s)
    ))
}

/// Re-enqueue a task from the dead set.
#[utoipa::path(post, path = "/api/v1/tasks/{task_id}/retry", tag = "tasks",
    params(("task_id" = String, Path, description = "Task id")),
    responses(
        (status = 202, description = "Queued again with a fresh attempt budget", body = Accepted),
        (status = 404, description = "Unknown task id", body = ErrorBody),
        (status = 409, description = "The task is not in the dead set", body = ErrorBody),
        AdminRefusal,
    ))]
pub(crate) async fn retry(
    _admin: Admin,
    State(state): State<AppState>,
    ValidPath(task_id): ValidPath<String>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    check_task_id(&task_id)?;
    let Some((queue, _)) = state.queues.find(&task_id).await? else {
        return Err(not_found(&task_id));
    };
    match queue.resurrect(&task_id).await? {
        ResurrectOutcome::Queued => Ok((
            StatusCode::ACCEPTED,
            Json(Accepted {
                status_url: format!("/api/v1/tasks/{task_id}"),
                task_id,
            }),
        )),
        ResurrectOutcome::NotFound => Err(not_found(&task_id)),
        ResurrectOutcome::NotDead(s) => Err(ApiError::Conflict(format!(
            "task {task_id} is {}, not failed",
            state_name(s)
        ))),
    }
}

/// The dead set, newest first.
#[utoipa::path(get, path = "/api/v1/tasks/dead", tag = "tasks", params(DeadQuery),
    responses(
        (status = 200, description = "Failed tasks with their last error", body = DeadList),
        (status = 422, description = "Bad limit", body = ErrorBody),
    ))]
pub(crate) async fn dead(
    State(state): State<AppState>,
    ValidQuery(query): ValidQuery<DeadQuery>,
) -> Result<Json<DeadList>, ApiError> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=MAX_DEAD_LIMIT).contains(&limit) {
        return Err(ApiError::field(
            "limit",
            format!("limit must be between 1 and {MAX_DEAD_LIMIT}"),
        ));
    }
    // The newest `limit` of every queue, merged newest first.
    let mut tasks: Vec<TaskStatus> = Vec::new();
    for (name, queue) in state.queues.iter() {
        tasks.extend(
            queue
                .dead(limit)
                .await?
                .into_iter()
                .map(|s| TaskStatus::of(name, s)),
        );
    }
    tasks.sort_by_key(|t| std::cmp::Reverse(t.finished_at));
    tasks.truncate(limit);
    Ok(Json(DeadList { tasks }))
}

/// Queue a full recalculation of every price. Answers at once; while one
/// recalculation waits to run, further triggers join it.
#[utoipa::path(post, path = "/api/v1/tasks/recalculate-all", tag = "tasks",
    responses(
        (status = 202, description = "Queued, or joined the waiting one", body = Triggered),
        AdminRefusal,
        (status = 503, description = "Redis unavailable", body = ErrorBody),
    ))]
pub(crate) async fn recalculate_all(
    _admin: Admin,
    State(state): State<AppState>,
) -> Result<(StatusCode, Json<Triggered>), ApiError> {
    let job = recalculate_all_job(state.recalc_retry);
    let pushed = state.queues.push(job).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Triggered {
            status_url: format!("/api/v1/tasks/{}", pushed.id),
            task_id: pushed.id,
            joined: pushed.duplicate,
        }),
    ))
}

fn state_name(s: JobState) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}
