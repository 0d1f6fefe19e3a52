//! `AppState`: the clients every handler shares.

use std::sync::Arc;

use queue::Queues;
use shared::cache::PriceCache;
use shared::store::CatalogStore;

/// One clonable bundle of shared clients; cloning copies a few `Arc`s and
/// allocates nothing (axum clones it for every request: the queue's keys
/// alone are 13 strings).
#[derive(Clone)]
pub struct AppState {
    /// The Redis price cache (and its connection pool).
    pub cache: Arc<PriceCache>,
    /// The catalog store.
    pub store: Arc<dyn CatalogStore>,
    /// The job queues and the routes into them, for the task endpoints.
    pub queues: Queues,
    /// The bearer token of the admin endpoints, when one is configured.
    pub admin_token: Option<Arc<str>>,
    /// Retry policy given to the recalculations this api queues.
    pub recalc_retry: queue::RetryPolicy,
    /// Publishes market events (stream + channel).
    pub events: Arc<shared::event_bus::EventBus>,
    /// The live worker registry.
    pub workers: Arc<queue::workers::WorkerRegistry>,
    /// The channel that tells workers to revoke a job.
    pub control_channel: Arc<str>,
    /// The Jaeger UI the dashboard links traces to (`JAEGER_UI_URL`).
    pub jaeger_ui_url: Option<Arc<str>>,
}
