//! The job contracts of the pricing service, shared by producers (api,
//! listener) and the worker.

use serde::{Deserialize, Serialize};

use crate::queue::{Backoff, JobSpec, RetryPolicy};

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

/// The unique key that coalesces full recalculations: while one waits,
/// further triggers join it.
pub const RECALC_ALL_UNIQUE_KEY: &str = "recalculate_all_prices";

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
