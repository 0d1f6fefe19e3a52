//! Operations endpoints: `/health` (liveness), `/ready` (dependencies) and
//! `/metrics` (Prometheus).

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::config::SERVICE_NAME;
use crate::state::AppState;

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
}

/// Liveness answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok` while the process serves requests.
    pub status: String,
    /// Service name.
    pub service: String,
    /// Build version.
    pub version: String,
}

/// The state of one dependency.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Check {
    /// Whether it answered.
    pub ok: bool,
    /// Why not, when it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Readiness answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    /// `ready` when every dependency answered, else `degraded`.
    pub status: String,
    /// Redis.
    pub redis: Check,
    /// The catalog store.
    pub store: Check,
}

impl Check {
    fn from<E: std::fmt::Display>(r: Result<(), E>) -> Self {
        match r {
            Ok(()) => Check {
                ok: true,
                error: None,
            },
            Err(e) => Check {
                ok: false,
                error: Some(e.to_string()),
            },
        }
    }
}

/// Liveness: the process is up.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "Alive", body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        service: SERVICE_NAME.into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// Readiness: Redis and the store both answer.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Redis and the store answer", body = Readiness),
        (status = 503, description = "At least one dependency is down; each is reported", body = Readiness),
    ))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let (redis, store) = tokio::join!(state.cache.pool().ping_all(), state.store.ping());
    let (redis, store) = (Check::from(redis), Check::from(store));
    let ok = redis.ok && store.ok;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        status: if ok { "ready" } else { "degraded" }.into(),
        redis,
        store,
    };
    (status, Json(body))
}

/// Prometheus exposition.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(&state.metrics, state.cache.pool()),
    )
}
