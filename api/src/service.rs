//! The cache-aside read path.
//!
//! [`price`] answers from Redis on a hit. On a miss it reads the product row
//! and its market signals concurrently, computes the price with the shared
//! rules, caches it and answers. The cache holds the price before the
//! customer's discount, which is applied last, per request.
//!
//! Redis is an accelerator, never a requirement: when it fails, the price is
//! computed from the store and a (rate-limited) warning is logged. Only when
//! the store fails too does a request get a 503.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use shared::cache::{CachedPrice, Lookup};
use shared::pricing::{self, compute_price_cents};

use crate::error::ApiError;
use crate::metrics;
use crate::model::{BatchResponse, PriceDetail, PriceSource};
use crate::state::AppState;

/// Store reads in flight at once while a batch fills its misses.
const BATCH_FILL_CONCURRENCY: usize = 16;

/// One price for one customer.
pub(crate) async fn price(
    state: &AppState,
    product_id: &str,
    prime: bool,
) -> Result<PriceDetail, ApiError> {
    let redis_up = match state.cache.get(product_id).await {
        Ok(Lookup::Hit(entry)) => {
            metrics::cache_hit();
            return Ok(detail(entry, PriceSource::Cache, prime));
        }
        Ok(Lookup::Miss) => {
            metrics::cache_miss("absent");
            true
        }
        Ok(Lookup::Invalid(reason)) => {
            metrics::cache_miss("invalid");
            tracing::warn!(product_id, %reason, "discarding invalid cache entry");
            true
        }
        Err(e) => {
            metrics::cache_miss("redis_error");
            warn_redis_down(&e);
            false
        }
    };
    let entry = compute(state, product_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("product {product_id} not found")))?;
    if redis_up && let Err(e) = state.cache.put(&entry).await {
        warn_redis_down(&e);
    }
    Ok(detail(entry, PriceSource::Database, prime))
}

/// Prices for many products: one MGET, misses filled concurrently from the
/// store, and every fill written back in one pipeline.
pub(crate) async fn batch(
    state: &AppState,
    ids: Vec<String>,
    prime: bool,
) -> Result<BatchResponse, ApiError> {
    let (lookups, redis_up) = match state.cache.get_many(&ids).await {
        Ok(lookups) => (lookups, true),
        Err(e) => {
            warn_redis_down(&e);
            (vec![Lookup::Miss; ids.len()], false)
        }
    };
    let mut slots: Vec<Option<(CachedPrice, PriceSource)>> = Vec::with_capacity(ids.len());
    let mut misses = Vec::new();
    for (i, lookup) in lookups.into_iter().enumerate() {
        match lookup {
            Lookup::Hit(entry) => {
                metrics::cache_hit();
                slots.push(Some((entry, PriceSource::Cache)));
            }
            other => {
                metrics::cache_miss(match other {
                    Lookup::Invalid(_) => "invalid",
                    _ if !redis_up => "redis_error",
                    _ => "absent",
                });
                slots.push(None);
                misses.push(i);
            }
        }
    }

    let filled: Vec<(usize, Option<CachedPrice>)> = futures::stream::iter(misses)
        .map(|i| {
            let id = &ids[i];
            async move { compute(state, id).await.map(|entry| (i, entry)) }
        })
        .buffer_unordered(BATCH_FILL_CONCURRENCY)
        .try_collect()
        .await?;

    let mut fresh = Vec::with_capacity(filled.len());
    for (i, entry) in filled {
        if let Some(entry) = entry {
            fresh.push(entry.clone());
            slots[i] = Some((entry, PriceSource::Database));
        }
    }
    if redis_up && let Err(e) = state.cache.put_many(&fresh).await {
        warn_redis_down(&e);
    }

    let mut prices = Vec::with_capacity(ids.len());
    let mut not_found = Vec::new();
    for (id, slot) in ids.into_iter().zip(slots) {
        match slot {
            Some((entry, source)) => prices.push(detail(entry, source, prime)),
            None => not_found.push(id),
        }
    }
    Ok(BatchResponse { prices, not_found })
}

/// Reads a product and its signals concurrently and prices it; `None` when
/// the product does not exist.
async fn compute(state: &AppState, product_id: &str) -> Result<Option<CachedPrice>, ApiError> {
    let (product, signals) = tokio::try_join!(
        state.store.product(product_id),
        state.store.market_signals(product_id)
    )?;
    Ok(
        product
            .map(|p| CachedPrice::new(product_id, compute_price_cents(&p, &signals), Utc::now())),
    )
}

/// The answer for `entry`, which it takes: its strings move into the
/// answer rather than being copied.
fn detail(entry: CachedPrice, source: PriceSource, prime: bool) -> PriceDetail {
    PriceDetail {
        product_id: entry.product_id,
        final_price: pricing::cents_to_amount(pricing::customer_price_cents(
            entry.price_cents,
            prime,
        )),
        base_price: pricing::cents_to_amount(entry.price_cents),
        discount_rate: pricing::discount_rate(prime),
        source,
        currency: entry.currency,
        calculated_at: entry.calculated_at,
    }
}

/// Logs a Redis failure at most once a second, so that an outage under load
/// does not flood the logs; `/metrics` counts every one.
fn warn_redis_down(error: &redis::RedisError) {
    static LAST_WARNED_SECS: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if LAST_WARNED_SECS.swap(now, Ordering::Relaxed) != now {
        tracing::warn!(error = %error, "redis unavailable; answering from the catalog store");
    }
}
