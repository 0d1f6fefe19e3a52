//! The api's settings, read once from the environment.

use std::net::SocketAddr;

use queue::{QueueSettings, Routes};
use shared::config::{
    CacheSettings, ConfigError, DatabaseSettings, RedisSettings, TelemetrySettings, env_or,
};

/// Service name on exported spans unless `OTEL_SERVICE_NAME` says otherwise.
pub(crate) const SERVICE_NAME: &str = "pricing-api";

/// Everything the api needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `API_ADDR`: address the HTTP server binds. Defaults to `127.0.0.1:8000`;
    /// port 0 picks a free port (tests use it).
    pub addr: SocketAddr,
    /// Redis connection settings.
    pub redis: RedisSettings,
    /// Catalog store settings.
    pub database: DatabaseSettings,
    /// Price cache settings.
    pub cache: CacheSettings,
    /// Logging and trace export.
    pub telemetry: TelemetrySettings,
    /// Job retention and leases (the task endpoints read and change jobs).
    pub queue: QueueSettings,
    /// `QUEUE_ROUTES`: which job type goes to which queue.
    pub routes: Routes,
    /// `ADMIN_TOKEN`: when set, the mutating admin endpoints (trigger a
    /// recalculation, cancel or re-enqueue a task) require
    /// `Authorization: Bearer <token>`. Unset: they are open.
    pub admin_token: Option<String>,
    /// Retry policy of the recalculations this api queues
    /// (`RECALC_MAX_RETRIES`, `RECALC_RETRY_BASE_SECS`, `RECALC_RETRY_CAP_SECS`).
    pub recalc_retry: queue::RetryPolicy,
    /// Where market events go (`MARKET_EVENTS_CHANNEL`, `MARKET_EVENTS_STREAM_MAXLEN`).
    pub events: shared::event_bus::EventSettings,
    /// `JAEGER_UI_URL`: the Jaeger UI (e.g. `http://localhost:16686`) that
    /// the dashboard links each job's trace to; no links when unset.
    pub jaeger_ui_url: Option<String>,
    /// `API_NEAR_CACHE_MAX_ENTRIES`: prices this api keeps in its own
    /// memory, kept consistent by Redis's invalidations (see
    /// `shared::cache::near`); 0 (the default) turns the near cache off.
    pub near_cache_max_entries: usize,
    /// `API_WORKER_THREADS`: the tokio runtime's worker threads; 0 (the
    /// default) means one per CPU core. Fewer helps where the api shares
    /// its cores with other busy processes (see docs/benchmarks.md,
    /// "One core each").
    pub worker_threads: usize,
}

fn jaeger_ui_url() -> Result<Option<String>, ConfigError> {
    let Some(url) = shared::config::env_opt("JAEGER_UI_URL") else {
        return Ok(None);
    };
    let ok = (url.starts_with("http://") || url.starts_with("https://"))
        && !url.contains(|c: char| c.is_whitespace() || c.is_control() || "\"'<>`".contains(c));
    if ok {
        Ok(Some(url.trim_end_matches('/').to_string()))
    } else {
        Err(ConfigError::new(
            "JAEGER_UI_URL",
            url,
            "must be an http:// or https:// URL without spaces or quotes",
        ))
    }
}

/// Shortest accepted `ADMIN_TOKEN`: anything shorter is guessable.
pub(crate) const MIN_ADMIN_TOKEN_LEN: usize = 16;

fn admin_token() -> Result<Option<String>, ConfigError> {
    match shared::config::env_opt("ADMIN_TOKEN") {
        Some(t) if t.len() < MIN_ADMIN_TOKEN_LEN => Err(ConfigError::new(
            "ADMIN_TOKEN",
            "<hidden>",
            format!("must be at least {MIN_ADMIN_TOKEN_LEN} characters"),
        )),
        other => Ok(other),
    }
}

impl Settings {
    /// Reads every setting; the error names the first bad variable.
    pub fn from_env() -> Result<Self, ConfigError> {
        let redis = RedisSettings::from_env()?;
        Ok(Self {
            addr: env_or("API_ADDR", SocketAddr::from(([127, 0, 0, 1], 8000)))?,
            near_cache_max_entries: shared::config::env_in_range(
                "API_NEAR_CACHE_MAX_ENTRIES",
                0usize,
                0,
                100_000_000,
            )?,
            redis,
            database: DatabaseSettings::from_env()?,
            cache: CacheSettings::from_env()?,
            telemetry: TelemetrySettings::from_env(SERVICE_NAME)?,
            queue: QueueSettings::from_env()?,
            routes: Routes::from_env()?,
            admin_token: admin_token()?,
            recalc_retry: shared::jobs::recalc_retry_from_env()?,
            events: shared::event_bus::EventSettings::from_env()?,
            jaeger_ui_url: jaeger_ui_url()?,
            worker_threads: shared::config::env_in_range("API_WORKER_THREADS", 0, 0, 1024)?,
        })
    }
}
