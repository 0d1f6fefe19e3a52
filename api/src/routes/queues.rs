//! The queues: their depths, and pausing and resuming one.

use axum::extract::State;
use axum::{Json, Router};
use queue::{Depths, Queue};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{AdminRefusal, ApiError, ErrorBody};
use crate::extract::{Admin, ValidPath};
use crate::routes::{Routes as _, get, post};
use crate::state::AppState;

/// Routes of this module.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .at("/api/v1/queues", get(list))
        .at("/api/v1/queues/{name}", get(one))
        .at("/api/v1/queues/{name}/pause", post(pause))
        .at("/api/v1/queues/{name}/resume", post(resume))
}

/// Depths of every queue.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct QueueDepths {
    /// Queue name → depths by state.
    pub queues: std::collections::BTreeMap<String, Depths>,
}

/// One queue's depths.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct QueueDetail {
    /// The queue.
    pub queue: String,
    /// Its depths, counters and whether it is paused.
    #[serde(flatten)]
    pub depths: Depths,
}

fn queue_named<'a>(state: &'a AppState, name: &str) -> Result<&'a Queue, ApiError> {
    state
        .queues
        .get(name)
        .ok_or_else(|| ApiError::NotFound(format!("no queue {name:?}")))
}

/// Every queue's depths by state.
#[utoipa::path(get, path = "/api/v1/queues", tag = "queues",
    responses((status = 200, description = "Depths by state, lifetime counters and whether paused, of every queue", body = QueueDepths)))]
pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<QueueDepths>, ApiError> {
    let mut queues = std::collections::BTreeMap::new();
    for (name, queue) in state.queues.iter() {
        queues.insert(name.to_string(), queue.depths().await?);
    }
    Ok(Json(QueueDepths { queues }))
}

/// One queue's depths.
#[utoipa::path(get, path = "/api/v1/queues/{name}", tag = "queues",
    params(("name" = String, Path, description = "Queue name")),
    responses(
        (status = 200, description = "The queue", body = QueueDetail),
        (status = 404, description = "No such queue", body = ErrorBody),
    ))]
pub(crate) async fn one(
    State(state): State<AppState>,
    ValidPath(name): ValidPath<String>,
) -> Result<Json<QueueDetail>, ApiError> {
    let queue = queue_named(&state, &name)?;
    Ok(Json(QueueDetail {
        depths: queue.depths().await?,
        queue: name,
    }))
}

/// Pause a queue: workers take no job from it; running ones finish; pushes are still accepted.
#[utoipa::path(post, path = "/api/v1/queues/{name}/pause", tag = "queues",
    params(("name" = String, Path, description = "Queue name")),
    responses(
        (status = 200, description = "Paused", body = QueueDetail),
        (status = 404, description = "No such queue", body = ErrorBody),
        AdminRefusal,
    ))]
pub(crate) async fn pause(
    _admin: Admin,
    State(state): State<AppState>,
    ValidPath(name): ValidPath<String>,
) -> Result<Json<QueueDetail>, ApiError> {
    set_paused(&state, name, true).await
}

/// Resume a paused queue.
#[utoipa::path(post, path = "/api/v1/queues/{name}/resume", tag = "queues",
    params(("name" = String, Path, description = "Queue name")),
    responses(
        (status = 200, description = "Resumed", body = QueueDetail),
        (status = 404, description = "No such queue", body = ErrorBody),
        AdminRefusal,
    ))]
pub(crate) async fn resume(
    _admin: Admin,
    State(state): State<AppState>,
    ValidPath(name): ValidPath<String>,
) -> Result<Json<QueueDetail>, ApiError> {
    set_paused(&state, name, false).await
}

/// Pauses or resumes the named queue and answers with its depths.
async fn set_paused(
    state: &AppState,
    name: String,
    paused: bool,
) -> Result<Json<QueueDetail>, ApiError> {
    let queue = queue_named(state, &name)?;
    if paused {
        queue.pause().await?;
    } else {
        queue.resume().await?;
    }
    tracing::info!(queue = %name, paused, "queue pause state set");
    Ok(Json(QueueDetail {
        depths: queue.depths().await?,
        queue: name,
    }))
}
