//! The api's settings, read once from the environment.

use std::net::SocketAddr;

use shared::config::{
    CacheSettings, ConfigError, DatabaseSettings, RedisSettings, TelemetrySettings, env_or,
};
use shared::queue::QueueSettings;

/// Service name on exported spans unless `OTEL_SERVICE_NAME` says otherwise.
pub const SERVICE_NAME: &str = "pricing-api";

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
}

impl Settings {
    /// Reads every setting; the error names the first bad variable.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            addr: env_or("API_ADDR", SocketAddr::from(([127, 0, 0, 1], 8000)))?,
            redis: RedisSettings::from_env()?,
            database: DatabaseSettings::from_env()?,
            cache: CacheSettings::from_env()?,
            telemetry: TelemetrySettings::from_env(SERVICE_NAME)?,
            queue: QueueSettings::from_env()?,
        })
    }
}
