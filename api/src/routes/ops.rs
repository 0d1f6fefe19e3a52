//! Operations endpoints: `/health` (liveness), `/ready` (Redis and the
//! store) and `/metrics` (Prometheus), built by [`shared::ops::router_with`]
//! over the api's [`Probe`].

use axum::Router;
use axum::handler::Handler;
use axum::routing::MethodRouter;
use serde::{Deserialize, Serialize};
use shared::ops::Probe;
use utoipa::ToSchema;

use crate::config::SERVICE_NAME;
use crate::state::AppState;

/// Routes of this module: `shared`'s, each handler observed like the
/// api's own.
pub(crate) fn router() -> Router<AppState> {
    shared::ops::router_with::<AppState, Observed>()
}

/// Registers `shared`'s handlers as [`crate::routes::Routes::at`] does.
struct Observed;

impl shared::ops::Get<AppState> for Observed {
    fn get<H: Handler<T, AppState>, T: 'static>(
        route: &'static str,
        handler: H,
    ) -> MethodRouter<AppState> {
        crate::routes::get(handler).at(route)
    }
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

impl Probe for AppState {
    type Health = Health;
    type Readiness = Readiness;

    /// The process is up.
    async fn health(&self) -> Health {
        Health {
            status: "ok".into(),
            service: SERVICE_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    /// Redis and the store both answer.
    async fn readiness(&self) -> (bool, Readiness) {
        let (redis, store) = tokio::join!(self.cache.pool().ping_all(), self.store.ping());
        let (redis, store) = (Check::from(redis), Check::from(store));
        let ok = redis.ok && store.ok;
        let body = Readiness {
            status: if ok { "ready" } else { "degraded" }.into(),
            redis,
            store,
        };
        (ok, body)
    }

    /// The Redis pool's and the runtime's state, sampled at scrape.
    async fn before_scrape(&self) {
        crate::metrics::sample_pool(self.cache.pool());
        crate::metrics::sample_runtime();
        if let Some(near) = self.cache.near() {
            near.sample();
        }
    }
}
