//! The worker's settings, read once from the environment.

use std::net::SocketAddr;
use std::time::Duration;

use queue::schedule::ScheduleSettings;
use queue::{Consume, QueueSettings, Routes, TimeLimit};
use shared::config::{
    CacheSettings, ConfigError, DatabaseSettings, RedisSettings, TelemetrySettings, env_in_range,
    env_millis, env_or, env_secs,
};

/// Service name on exported spans unless `OTEL_SERVICE_NAME` says otherwise.
pub(crate) const SERVICE_NAME: &str = "pricing-worker";

/// Everything the worker needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Redis connection settings.
    pub redis: RedisSettings,
    /// Catalog store settings.
    pub database: DatabaseSettings,
    /// Logging and trace export.
    pub telemetry: TelemetrySettings,
    /// Leases, heartbeat and retention.
    pub queue: QueueSettings,
    /// `QUEUE_ROUTES`: which job type goes to which queue (see
    /// `queue::Routes`).
    pub routes: Routes,
    /// `WORKER_QUEUES`: the queues this worker consumes, in strict priority
    /// order or by weight. Defaults to `events,bulk,default`.
    pub consume: Consume,
    /// Lifetime of the prices the recalculation jobs cache (`CACHE_TTL_SECS`).
    pub cache: CacheSettings,
    /// The market-data feed, when `MARKET_DATA_URL` is set.
    pub feed: Option<crate::jobs::feed::FeedSettings>,
    /// `RECALC_LOCK_TTL_SECS`: lifetime of the recalculation lock without a
    /// watchdog extension (1–3,600). Defaults to 60.
    pub recalc_lock_ttl: Duration,
    /// `WORKER_CONCURRENCY`: jobs run at once by this process (1–10,000). Defaults to 16.
    pub concurrency: usize,
    /// `WORKER_PREFETCH`: jobs leased per fetch (1–1,000). Leased jobs wait
    /// in this process, so keep it near the concurrency. Defaults to the concurrency.
    pub prefetch: usize,
    /// `WORKER_SHUTDOWN_TIMEOUT_SECS`: on SIGTERM, how long in-flight jobs may
    /// run on before they are put back in the queue. Defaults to 30.
    pub shutdown_timeout: Duration,
    /// `WORKER_JOB_TIMEOUT_SECS`: longest a single attempt may run; past it
    /// the attempt fails with a retryable error. Defaults to 3,600.
    pub job_timeout: Duration,
    /// `TIME_LIMIT_<JOB_TYPE>`: soft and hard time limits per job type (see
    /// [`queue::limits`]).
    pub time_limits: std::collections::BTreeMap<String, TimeLimit>,
    /// `WORKER_REVOKE_GRACE_SECS`: how long a revoked job may take to stop
    /// after its cancellation token fires, before it is dropped (0–3,600).
    /// Defaults to 10.
    pub revoke_grace: Duration,
    /// `SCHEDULE_<NAME>`, `SCHEDULE_<NAME>_ARGS`, `SCHEDULE_MISSED`: the
    /// periodic jobs this worker's scheduler queues (see
    /// [`queue::schedule`]).
    pub schedules: ScheduleSettings,
    /// `WORKER_METRICS_ADDR`: where `/metrics` and `/health` are served.
    /// Defaults to `127.0.0.1:9101`; port 0 picks a free port.
    pub metrics_addr: SocketAddr,
}

/// The certificates of a PEM bundle (`MARKET_DATA_CA_FILE`'s content); an
/// error when there is none or one does not parse.
pub fn certificates_in(pem: &str) -> Result<Vec<reqwest::Certificate>, String> {
    let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".to_string());
    }
    Ok(certs)
}

fn feed_from_env() -> Result<Option<crate::jobs::feed::FeedSettings>, ConfigError> {
    let Some(url) = shared::config::env_opt("MARKET_DATA_URL") else {
        return Ok(None);
    };
    let valid = reqwest::Url::parse(&url).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
    });
    if !valid {
        return Err(ConfigError::new(
            "MARKET_DATA_URL",
            url,
            "must be an http:// or https:// URL with a host",
        ));
    }
    let extra_roots = match shared::config::env_opt("MARKET_DATA_CA_FILE") {
        None => Vec::new(),
        Some(path) => {
            let pem = std::fs::read(&path).map_err(|e| {
                ConfigError::new("MARKET_DATA_CA_FILE", &path, format!("cannot read it: {e}"))
            })?;
            certificates_in(&String::from_utf8_lossy(&pem))
                .map_err(|reason| ConfigError::new("MARKET_DATA_CA_FILE", &path, reason))?
        }
    };
    Ok(Some(crate::jobs::feed::FeedSettings {
        url,
        extra_roots,
        connect_timeout: env_millis("MARKET_DATA_CONNECT_TIMEOUT_MS", 3_000, 1, 600_000)?,
        timeout: env_millis("MARKET_DATA_TIMEOUT_MS", 5_000, 1, 600_000)?,
    }))
}

impl Settings {
    /// Reads every setting; the error names the first bad variable.
    pub fn from_env() -> Result<Self, ConfigError> {
        let concurrency = env_in_range("WORKER_CONCURRENCY", 16usize, 1, 10_000)?;
        let routes = Routes::from_env()?;
        let consume = Consume::from_env(&routes.queues())?;
        Ok(Self {
            routes,
            consume,
            redis: RedisSettings::from_env()?,
            database: DatabaseSettings::from_env()?,
            telemetry: TelemetrySettings::from_env(SERVICE_NAME)?,
            queue: QueueSettings::from_env()?,
            cache: CacheSettings::from_env()?,
            feed: feed_from_env()?,
            recalc_lock_ttl: env_secs("RECALC_LOCK_TTL_SECS", 60, 1, 3_600)?,
            concurrency,
            prefetch: env_in_range("WORKER_PREFETCH", concurrency.min(1_000), 1, 1_000)?,
            shutdown_timeout: env_secs("WORKER_SHUTDOWN_TIMEOUT_SECS", 30, 0, 86_400)?,
            job_timeout: env_secs("WORKER_JOB_TIMEOUT_SECS", 3_600, 1, 7 * 86_400)?,
            time_limits: queue::limits::time_limits_from_env()?,
            revoke_grace: env_secs("WORKER_REVOKE_GRACE_SECS", 10, 0, 3_600)?,
            schedules: ScheduleSettings::from_env()?,
            metrics_addr: env_or(
                "WORKER_METRICS_ADDR",
                SocketAddr::from(([127, 0, 0, 1], 9101)),
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_must_hold_pem_certificates() {
        let ca = testkit::TestCa::new();
        let leaf = ca.issue(&["feed.example"]);
        let two = format!("{}\n{}", ca.cert_pem(), leaf.cert_pem);
        assert_eq!(certificates_in(&two).map(|c| c.len()), Ok(2));
        assert_eq!(
            certificates_in("not a certificate").map(|c| c.len()),
            Err("holds no PEM certificate".to_string())
        );
        // The private key alone is no certificate either.
        assert!(certificates_in(&leaf.key_pem).is_err());
    }
}
