//! Queue timing and retention, read from the `JOB_*` variables, and the
//! names every producer and worker agree on.

use std::time::Duration;

use shared::config::{ConfigError, env_in_range, env_secs};

use crate::*;

/// The queue every job type uses unless it says otherwise.
pub const DEFAULT_QUEUE: &str = "default";

/// Most records one maintenance script handles per call.
pub const MAINTENANCE_BATCH: usize = 500;

/// Queue timing and retention, shared by producers and workers.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// `JOB_LEASE_SECS`: how long a fetched job stays reserved without a
    /// heartbeat. A killed worker's jobs run again after it. Defaults to 30.
    pub lease: Duration,
    /// `JOB_HEARTBEAT_SECS`: how often a worker extends its leases; must be
    /// well under the lease. Defaults to a third of the lease.
    pub heartbeat: Duration,
    /// `JOB_RESULT_RETENTION_SECS`: how long finished records and results
    /// stay readable. Defaults to 86,400 (24 h).
    pub result_retention: Duration,
    /// `JOB_DEAD_RETENTION_SECS`: how long failed jobs stay in the dead set.
    /// Defaults to 604,800 (7 days).
    pub dead_retention: Duration,
    /// `JOB_MAX_LEASE_LOSSES`: after this many lost leases (workers dying
    /// while running it) a job is buried instead of run again. Defaults to 5.
    pub max_lease_losses: u32,
    /// `RATE_LIMIT_<JOB_TYPE>`: global start rates per job type (see
    /// [`crate::limits`]); the fetch enforces them.
    pub rate_limits: std::collections::BTreeMap<String, Rate>,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(10),
            result_retention: Duration::from_secs(86_400),
            dead_retention: Duration::from_secs(7 * 86_400),
            max_lease_losses: 5,
            rate_limits: Default::default(),
        }
    }
}

impl QueueSettings {
    /// Reads the `JOB_*` variables.
    pub fn from_env() -> Result<Self, ConfigError> {
        let lease = env_in_range("JOB_LEASE_SECS", 30u64, 1, 86_400)?;
        let heartbeat = env_in_range("JOB_HEARTBEAT_SECS", (lease / 3).max(1), 1, 86_400)?;
        if heartbeat >= lease {
            return Err(ConfigError::new(
                "JOB_HEARTBEAT_SECS",
                heartbeat.to_string(),
                format!("must be shorter than JOB_LEASE_SECS ({lease})"),
            ));
        }
        Ok(Self {
            lease: Duration::from_secs(lease),
            heartbeat: Duration::from_secs(heartbeat),
            result_retention: env_secs("JOB_RESULT_RETENTION_SECS", 86_400, 1, 365 * 86_400)?,
            dead_retention: env_secs("JOB_DEAD_RETENTION_SECS", 7 * 86_400, 1, 365 * 86_400)?,
            max_lease_losses: env_in_range("JOB_MAX_LEASE_LOSSES", 5u32, 1, 1_000)?,
            rate_limits: crate::limits::rate_limits_from_env()?,
        })
    }
}
