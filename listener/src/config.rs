//! The listener's settings, read once from the environment.

use std::net::SocketAddr;
use std::time::Duration;

use queue::{QueueSettings, RetryPolicy, Routes};
use shared::config::{
    ConfigError, DatabaseSettings, RedisSettings, TelemetrySettings, env_in_range, env_millis,
    env_or,
};
use shared::event_bus::EventSettings;

/// Service name on exported spans unless `OTEL_SERVICE_NAME` says otherwise.
pub(crate) const SERVICE_NAME: &str = "pricing-listener";

/// Everything the listener needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Redis connection settings.
    pub redis: RedisSettings,
    /// Catalog store settings.
    pub database: DatabaseSettings,
    /// Logging and trace export.
    pub telemetry: TelemetrySettings,
    /// `LISTENER_METRICS_ADDR`: where `/metrics`, `/health` and `/ready` are served.
    /// Defaults to `127.0.0.1:9102`; port 0 picks a free port.
    pub metrics_addr: SocketAddr,
    /// The channel and the stream (`MARKET_EVENTS_CHANNEL`, `MARKET_EVENTS_STREAM_MAXLEN`).
    pub events: EventSettings,
    /// The queue the jobs go to (`JOB_*`).
    pub queue: QueueSettings,
    /// `QUEUE_ROUTES`: which queue each job type goes to.
    pub routes: Routes,
    /// Retry policy of the recalculations it queues (`RECALC_*`).
    pub recalc_retry: RetryPolicy,
    /// `LISTENER_COALESCE_WINDOW_MS`: events arriving within this window of
    /// the last flush are gathered into one job. Defaults to 200 ms; 0 turns
    /// coalescing across reads off.
    pub coalesce_window: Duration,
    /// `LISTENER_CLAIM_IDLE_MS`: a stream entry delivered to a listener that
    /// has not acknowledged it for this long (it died) is claimed by another.
    /// Defaults to 30,000.
    pub claim_idle: Duration,
    /// `LISTENER_DEAD_LETTER_MAX`: rejected messages kept in the dead-letter
    /// list, newest first. Defaults to 10,000.
    pub dead_letter_max: u64,
}

impl Settings {
    /// Reads every setting; the error names the first bad variable.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            redis: RedisSettings::from_env()?,
            database: DatabaseSettings::from_env()?,
            telemetry: TelemetrySettings::from_env(SERVICE_NAME)?,
            metrics_addr: env_or(
                "LISTENER_METRICS_ADDR",
                SocketAddr::from(([127, 0, 0, 1], 9102)),
            )?,
            events: EventSettings::from_env()?,
            queue: QueueSettings::from_env()?,
            routes: Routes::from_env()?,
            recalc_retry: shared::jobs::recalc_retry_from_env()?,
            coalesce_window: env_millis("LISTENER_COALESCE_WINDOW_MS", 200, 0, 60_000)?,
            claim_idle: env_millis("LISTENER_CLAIM_IDLE_MS", 30_000, 1_000, 86_400_000)?,
            dead_letter_max: env_in_range("LISTENER_DEAD_LETTER_MAX", 10_000u64, 1, 10_000_000)?,
        })
    }
}
