//! The listener's settings, read once from the environment.

use std::net::SocketAddr;

use shared::config::{ConfigError, DatabaseSettings, RedisSettings, TelemetrySettings, env_or};

/// Service name on exported spans unless `OTEL_SERVICE_NAME` says otherwise.
pub const SERVICE_NAME: &str = "pricing-listener";

/// Everything the listener needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Redis connection settings.
    pub redis: RedisSettings,
    /// Catalog store settings.
    pub database: DatabaseSettings,
    /// Logging and trace export.
    pub telemetry: TelemetrySettings,
    /// `LISTENER_METRICS_ADDR`: where `/metrics` and `/health` are served.
    /// Defaults to `127.0.0.1:9102`; port 0 picks a free port.
    pub metrics_addr: SocketAddr,
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
        })
    }
}
