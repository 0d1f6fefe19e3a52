//! The listener's settings, read once from the environment.

use shared::config::{ConfigError, DatabaseSettings, RedisSettings, TelemetrySettings};

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
}

impl Settings {
    /// Reads every setting; the error names the first bad variable.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            redis: RedisSettings::from_env()?,
            database: DatabaseSettings::from_env()?,
            telemetry: TelemetrySettings::from_env(SERVICE_NAME)?,
        })
    }
}
