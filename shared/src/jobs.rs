//! The job contracts of the pricing service, shared by producers (api,
//! listener) and the worker.

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, env_in_range};
use crate::queue::{Backoff, JobSpec, NewJob, RetryPolicy};

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
