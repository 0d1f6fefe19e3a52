//! The job contracts: what a job is on the wire ([`JobSpec`], [`NewJob`],
//! its [`RetryPolicy`] and [`Backoff`]) and the pricing service's own job
//! types, shared by producers (api, listener) and the worker. No I/O: the
//! `queue` crate moves these through Redis.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, env_in_range};

/// Exponential backoff with jitter between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Backoff {
    /// Delay before the second attempt, in ms.
    pub base_ms: u64,
    /// Growth per further attempt.
    pub factor: f64,
    /// Longest delay, in ms.
    pub cap_ms: u64,
    /// Fraction of the delay that is random (0 = exact, 0.2 = up to 20% shorter).
    pub jitter: f64,
}

impl Backoff {
    /// The delay without jitter after the `attempt`-th failure (1-based):
    /// `min(cap, base × factor^(attempt − 1))`.
    pub fn nominal(&self, attempt: u32) -> Duration {
        let exp = self
            .factor
            .max(1.0)
            .powi(attempt.saturating_sub(1).min(64) as i32);
        let ms = (self.base_ms as f64 * exp).min(self.cap_ms as f64);
        Duration::from_millis(ms.max(0.0) as u64)
    }

    /// The delay to wait after the `attempt`-th failure, jitter applied:
    /// uniformly in `[nominal × (1 − jitter), nominal]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let nominal = self.nominal(attempt).as_millis() as f64;
        let jitter = self.jitter.clamp(0.0, 1.0);
        Duration::from_millis((nominal * (1.0 - jitter * fastrand::f64())) as u64)
    }
}

/// What a job type declares about retries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Most attempts in all (1 = never retried).
    pub max_attempts: u32,
    /// Delays between attempts.
    pub backoff: Backoff,
}

/// A job type: its name on the wire, its arguments and its retry policy.
pub trait JobSpec: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The job's name, stored with it and used to find its handler.
    const NAME: &'static str;
    /// How failures are retried.
    const RETRY: RetryPolicy;
}

/// A job ready to push.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Job type.
    pub name: String,
    /// Arguments, as JSON.
    pub args: serde_json::Value,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Run no earlier than this (None = now).
    pub run_at: Option<DateTime<Utc>>,
    /// While a pending job holds this key, pushing another returns its id.
    pub unique_key: Option<String>,
    /// W3C trace context to carry to the worker.
    pub traceparent: Option<String>,
    /// W3C trace state to carry to the worker.
    pub tracestate: Option<String>,
    /// For a scheduled run: the tick it is. The push claims the tick: a
    /// second push of it (or of an earlier one), by any worker, queues nothing.
    pub tick: Option<Tick>,
}

/// A schedule's tick, as a push claims it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tick {
    /// The schedule's name.
    pub schedule: String,
    /// The tick's time (ms since the epoch, UTC).
    pub at: i64,
    /// Who pushes it (a worker id), for the schedule's last-run record.
    pub by: String,
}

impl NewJob {
    /// A job of type `J` with its declared retry policy.
    pub fn of<J: JobSpec>(job: &J) -> Result<Self, serde_json::Error> {
        Ok(Self {
            name: J::NAME.to_string(),
            args: serde_json::to_value(job)?,
            retry: J::RETRY,
            run_at: None,
            unique_key: None,
            traceparent: None,
            tracestate: None,
            tick: None,
        })
    }

    /// Runs the job at `at`.
    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.run_at = Some(at);
        self
    }

    /// Runs the job after `countdown`.
    pub fn countdown(mut self, countdown: Duration) -> Self {
        self.run_at = Some(Utc::now() + countdown);
        self
    }

    /// Deduplicates the job by `key` while it is pending.
    pub fn unique(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    /// Overrides the retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
}

/// Retries of the recalculation jobs, as the design asks: up to 5 retries
/// (6 attempts), the first after 30 s, doubling, capped at 10 minutes.
pub const RECALC_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 6,
    backoff: Backoff {
        base_ms: 30_000,
        factor: 2.0,
        cap_ms: 600_000,
        jitter: 0.2,
    },
};

/// Reads the recalculation retry policy from the environment, starting
/// from [`RECALC_RETRY`]: `RECALC_MAX_RETRIES` (retries after the first
/// attempt, 0–100, default 5), `RECALC_RETRY_BASE_SECS` (first delay,
/// default 30), `RECALC_RETRY_CAP_SECS` (longest delay, default 600).
/// Producers push recalculations with it, so the policy travels with each job.
pub fn recalc_retry_from_env() -> Result<RetryPolicy, ConfigError> {
    let retries = env_in_range("RECALC_MAX_RETRIES", 5u32, 0, 100)?;
    let base = env_in_range("RECALC_RETRY_BASE_SECS", 30u64, 1, 86_400)?;
    let cap = env_in_range("RECALC_RETRY_CAP_SECS", 600u64, 1, 86_400)?;
    if cap < base {
        return Err(ConfigError::new(
            "RECALC_RETRY_CAP_SECS",
            cap.to_string(),
            format!("must not be below RECALC_RETRY_BASE_SECS ({base})"),
        ));
    }
    Ok(RetryPolicy {
        max_attempts: retries + 1,
        backoff: Backoff {
            base_ms: base * 1_000,
            cap_ms: cap * 1_000,
            ..RECALC_RETRY.backoff
        },
    })
}

/// The unique key that coalesces full recalculations: while one waits,
/// further triggers join it.
pub const RECALC_ALL_UNIQUE_KEY: &str = "recalculate_all_prices";

/// The job a trigger of a full recalculation pushes: coalesced under
/// [`RECALC_ALL_UNIQUE_KEY`], retried with `retry`.
pub fn recalculate_all_job(retry: RetryPolicy) -> NewJob {
    NewJob {
        name: RecalculateAllPrices::NAME.to_string(),
        args: serde_json::json!({}),
        retry,
        run_at: None,
        unique_key: Some(RECALC_ALL_UNIQUE_KEY.to_string()),
        traceparent: None,
        tracestate: None,
        tick: None,
    }
}

/// Recalculate and cache the price of every product.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecalculateAllPrices {}

impl JobSpec for RecalculateAllPrices {
    const NAME: &'static str = "recalculate_all_prices";
    const RETRY: RetryPolicy = RECALC_RETRY;
}

/// Recalculate and cache the prices of some products.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecalculatePrices {
    /// The products to reprice.
    pub product_ids: Vec<String>,
}

impl JobSpec for RecalculatePrices {
    const NAME: &'static str = "recalculate_prices";
    const RETRY: RetryPolicy = RECALC_RETRY;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap() {
        let b = Backoff {
            base_ms: 100,
            factor: 2.0,
            cap_ms: 1_000,
            jitter: 0.0,
        };
        let delays: Vec<u64> = (1..=6).map(|a| b.delay(a).as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1_000, 1_000]);
    }

    #[test]
    fn jitter_only_shortens_within_its_fraction() {
        let b = Backoff {
            base_ms: 1_000,
            factor: 3.0,
            cap_ms: 60_000,
            jitter: 0.25,
        };
        for attempt in 1..5 {
            let nominal = b.nominal(attempt).as_millis() as u64;
            for _ in 0..200 {
                let d = b.delay(attempt).as_millis() as u64;
                assert!(d <= nominal && d >= nominal * 3 / 4, "{d} vs {nominal}");
            }
        }
    }
}
