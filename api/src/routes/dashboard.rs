//! The JSON behind the dashboard: one overview call, and pages of a
//! queue's jobs by state. Both are bounded work in Redis whatever the
//! backlog (see `queue::browse`); neither walks the keyspace.

use axum::extract::State;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use queue::browse::{MAX_PAGE, RATE_WINDOW};
use queue::{Depths, JobState, Throughput};
use serde::{Deserialize, Serialize};
use shared::event_bus::StreamInfo;
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ValidPath, ValidQuery};
use crate::routes::tasks::TaskStatus;
use crate::routes::{Routes as _, get};
use crate::state::AppState;

/// Newest market events the overview shows.
pub(crate) const RECENT_EVENTS: usize = 10;

/// Routes of this module.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .at("/api/v1/dashboard/overview", get(overview))
        .at("/api/v1/queues/{name}/jobs", get(jobs))
}

/// Everything the overview page shows, in one call.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Overview {
    /// Every queue, by name.
    pub queues: Vec<QueueOverview>,
    /// The live workers, summed.
    pub workers: WorkersSummary,
    /// The market-event stream: length, consumer lag, newest events.
    pub events: StreamInfo,
    /// When the api put this together.
    pub generated_at: DateTime<Utc>,
}

/// One queue on the overview.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct QueueOverview {
    /// The queue.
    pub name: String,
    /// Depths by state, lifetime counters, whether paused.
    pub depths: Depths,
    /// Rates over the last minute (or less, see `window_secs`), and the
    /// age of the job next to run.
    pub throughput: Throughput,
}

/// The live workers, summed.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub(crate) struct WorkersSummary {
    /// Workers whose lease has not run out.
    pub live: usize,
    /// Their slots.
    pub slots: usize,
    /// Their slots running a job now.
    pub busy: usize,
}

/// The dashboard's overview: every queue's depths by state, jobs started
/// and finished per second over the last minute, failure rate, the age of
/// the oldest pending job; the live workers' slots; the market-event
/// stream's length, its consumer groups' lag and its newest events. Each
/// call also leaves a sample of each queue's counters that the rates of
/// later calls (from any api) are measured against.
#[utoipa::path(get, path = "/api/v1/dashboard/overview", tag = "dashboard",
    responses(
        (status = 200, description = "The overview", body = Overview),
        (status = 503, description = "Redis unavailable", body = ErrorBody),
    ))]
pub(crate) async fn overview(State(state): State<AppState>) -> Result<Json<Overview>, ApiError> {
    let queues = futures::future::try_join_all(state.queues.iter().map(|(name, q)| async move {
        let (depths, throughput) = tokio::try_join!(q.depths(), q.throughput(RATE_WINDOW))?;
        Ok::<_, ApiError>(QueueOverview {
            name: name.to_string(),
            depths,
            throughput,
        })
    }));
    let workers = async {
        state.workers.list().await.map_err(|e| {
            tracing::error!(error = %e, "worker registry unavailable");
            ApiError::Unavailable("the worker registry (Redis) is unavailable; retry later".into())
        })
    };
    let events = async {
        state.events.info(RECENT_EVENTS).await.map_err(|e| {
            tracing::error!(error = %e, "event stream unavailable");
            ApiError::Unavailable("the event stream (Redis) is unavailable; retry later".into())
        })
    };
    let (queues, workers, events) = tokio::try_join!(queues, workers, events)?;
    let workers = workers.iter().fold(WorkersSummary::default(), |mut s, w| {
        s.live += 1;
        s.slots += w.report.concurrency;
        s.busy += w.report.busy;
        s
    });
    Ok(Json(Overview {
        queues,
        workers,
        events,
        generated_at: Utc::now(),
    }))
}

/// Query of a job listing.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct JobsQuery {
    /// pending (default), scheduled, running, retrying, succeeded, failed,
    /// skipped or cancelled.
    pub state: Option<String>,
    /// Where to go on: the `next_cursor` of the page before (default 0).
    pub cursor: Option<u64>,
    /// Jobs per page (1–200, default 50).
    pub limit: Option<usize>,
}

/// A page of one queue's jobs in one state.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct JobList {
    /// The queue.
    pub queue: String,
    /// The state listed.
    pub state: JobState,
    /// The jobs: pending next to run first, scheduled and retrying soonest
    /// due first, running soonest lease end first, the others newest first.
    pub jobs: Vec<TaskStatus>,
    /// Entries in the set the state is read from (the wait list for
    /// pending, the delayed set for scheduled and retrying, the finished set
    /// for succeeded, skipped and cancelled).
    pub set_size: u64,
    /// The `cursor` of the next page; `null` at the end. A page of a state
    /// that shares its set may be short, or empty, with more to come.
    pub next_cursor: Option<u64>,
}

/// A page of a queue's jobs in one state, sorted by time. Bounded work
/// whatever the backlog: it reads at most 1,000 ids from one list or sorted
/// set, by rank from `cursor`.
#[utoipa::path(get, path = "/api/v1/queues/{name}/jobs", tag = "dashboard",
    params(("name" = String, Path, description = "Queue name"), JobsQuery),
    responses(
        (status = 200, description = "A page of jobs", body = JobList),
        (status = 404, description = "No such queue", body = ErrorBody),
        (status = 422, description = "Bad state, cursor or limit", body = ErrorBody),
        (status = 503, description = "Redis unavailable", body = ErrorBody),
    ))]
pub(crate) async fn jobs(
    State(state): State<AppState>,
    ValidPath(name): ValidPath<String>,
    ValidQuery(query): ValidQuery<JobsQuery>,
) -> Result<Json<JobList>, ApiError> {
    let queue = state
        .queues
        .get(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no queue {name:?}")))?;
    let listed = match query.state.as_deref() {
        None => JobState::Pending,
        Some(s) => serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
            ApiError::field(
                "state",
                "state must be one of pending, scheduled, running, retrying, succeeded, failed, skipped, cancelled",
            )
        })?,
    };
    let limit = query.limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::field(
            "limit",
            format!("limit must be between 1 and {MAX_PAGE}"),
        ));
    }
    let page = queue.list(listed, query.cursor.unwrap_or(0), limit).await?;
    Ok(Json(JobList {
        state: listed,
        jobs: page
            .jobs
            .into_iter()
            .map(|s| TaskStatus::of(&name, s))
            .collect(),
        set_size: page.set_size,
        next_cursor: page.next_cursor,
        queue: name,
    }))
}
