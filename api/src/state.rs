//! `AppState`: the clients every handler shares.

use std::sync::Arc;

use anyhow::Context as _;
use queue::Queues;
use shared::cache::PriceCache;
use shared::cache::near::NearCache;
use shared::keys::Keys;
use shared::redis_pool::RedisPool;
use shared::store::CatalogStore;

use crate::config::Settings;

/// One clonable handle on the shared clients ([`Clients`], which it
/// dereferences to). axum clones the state several times for every request,
/// so a clone is one reference-count increment: cloning the nine handles of
/// [`Clients`] one by one cost about 6% of the api's CPU on a near-cache hit
/// (perf, 2026-12-05), their counters bouncing between the cores.
#[derive(Clone)]
pub struct AppState(Arc<Clients>);

impl std::ops::Deref for AppState {
    type Target = Clients;

    fn deref(&self) -> &Clients {
        &self.0
    }
}

/// The clients every handler shares.
pub struct Clients {
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

impl AppState {
    /// The clients for `settings` over an open store. Opens no Redis
    /// connection (the pool connects on first use), so a router over it
    /// answers every request that never reaches Redis even with none running.
    pub async fn build(settings: &Settings, store: Arc<dyn CatalogStore>) -> anyhow::Result<Self> {
        // The recorder first: the near cache's task reports from its start.
        crate::metrics::recorder();
        let pool = RedisPool::open(&settings.redis).await?;
        let queues = Queues::new(
            pool.clone(),
            &settings.redis.namespace,
            settings.routes.clone(),
            settings.queue.clone(),
        );
        let keys = Keys::new(&settings.redis.namespace);
        let events = shared::event_bus::EventBus::new(pool.clone(), &keys, settings.events.clone());
        let control_channel = keys.control_channel();
        let workers = queue::workers::WorkerRegistry::new(pool.clone(), &settings.redis.namespace);
        let mut cache = PriceCache::new(pool.clone(), keys.clone(), settings.cache.ttl);
        if settings.near_cache_max_entries > 0 {
            let near = NearCache::tracking(settings.near_cache_max_entries, keys, &pool)
                .context("REDIS_URL")?;
            cache = cache.with_near(near);
        }
        Ok(AppState(Arc::new(Clients {
            cache: Arc::new(cache),
            store,
            queues,
            control_channel: control_channel.into(),
            workers: Arc::new(workers),
            admin_token: settings.admin_token.as_deref().map(Arc::from),
            recalc_retry: settings.recalc_retry,
            events: Arc::new(events),
            jaeger_ui_url: settings.jaeger_ui_url.as_deref().map(Arc::from),
        })))
    }
}
