//! `recalculate_all_prices` and `recalculate_prices {product_ids}`.
//!
//! Both read products with their market signals from the store, price them
//! with [`shared::pricing`] and write the results to the price cache with the
//! cache TTL, so the next reads are hits. The full recalculation:
//!
//! - takes the recalculation lock with a non-blocking try. When another
//!   recalculation holds it, what happens depends on when that one started:
//!   - it started **after** this job was triggered, so it reads data at
//!     least as new as this trigger saw: this job ends as `skipped` with
//!     `{"status": "skipped", "reason": "locked"}`;
//!   - it started **before**, so it may have read older data than this
//!     trigger is about: this job is *deferred* ([`DEFER_DELAY`], no attempt
//!     spent, unique key kept, status `scheduled` with
//!     `{"status": "waiting", "reason": "another recalculation is running"}`)
//!     and runs once the lock is free. Triggers meanwhile join it, so at most
//!     one recalculation runs and at most one waits;
//! - scans the catalog in pages of [`PAGE`] products (memory bounded by the
//!   page, not the catalog) and writes each page in one fenced script call,
//!   so a recalculation that lost its lock cannot overwrite newer prices;
//! - reports `{"processed", "total"}` in its status while it runs, and
//!   finishes with `{"status": "succeeded", "updated_count", "duration_ms"}`.
//!
//! With `MARKET_DATA_URL` set, competitor prices come from the market-data
//! feed ([`crate::jobs::feed`]); otherwise from those stored from market
//! events. Store, Redis and transient feed failures are retryable (the job's
//! backoff applies); a 4xx or malformed feed answer is permanent.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use serde_json::json;
use shared::cache::{CachedPrice, PriceCache};
use shared::domain::{MarketSignals, Product};
use shared::jobs::{RecalculateAllPrices, RecalculatePrices};
use shared::lock::{DistributedLock, fenced_set_many};
use shared::pricing::compute_price_cents;
use shared::queue::{JobError, JobOutcome};
use shared::store::CatalogStore;

use crate::jobs::feed::Feed;
use crate::registry::{JobContext, Registry};

/// Products read, priced and written per step.
pub const PAGE: usize = 5_000;

/// How often a waiting full recalculation looks at the lock again.
pub const DEFER_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// What the recalculation jobs work with.
pub struct RecalcDeps {
    /// The catalog.
    pub store: Arc<dyn CatalogStore>,
    /// The price cache.
    pub cache: PriceCache,
    /// The lock that admits one full recalculation at a time.
    pub lock: DistributedLock,
    /// The market-data feed, when `MARKET_DATA_URL` is set.
    pub feed: Option<Feed>,
}

/// Replaces the stored lowest competitor price with the feed's, where the
/// feed knows one.
async fn apply_feed(
    feed: Option<&Feed>,
    priced: &mut [(Product, MarketSignals)],
) -> Result<(), JobError> {
    let Some(feed) = feed else { return Ok(()) };
    if priced.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = priced.iter().map(|(p, _)| p.id.as_str()).collect();
    let fed = feed.lowest_prices(&ids).await?;
    for (p, s) in priced.iter_mut() {
        if let Some(price) = fed.get(&p.id) {
            s.lowest_competitor_price = Some(*price);
        }
    }
    Ok(())
}

/// Registers both recalculation jobs.
pub fn register(registry: &mut Registry, deps: Arc<RecalcDeps>) {
    let all = deps.clone();
    registry.register(move |_: RecalculateAllPrices, ctx: JobContext| {
        let deps = all.clone();
        async move { recalculate_all(&deps, &ctx).await }
    });
    registry.register(move |job: RecalculatePrices, _ctx: JobContext| {
        let deps = deps.clone();
        async move { recalculate_some(&deps, job.product_ids).await }
    });
}

fn entries(cache: &PriceCache, priced: &[(Product, MarketSignals)]) -> Vec<(String, String)> {
    let now = Utc::now();
    priced
        .iter()
        .map(|(p, s)| {
            (
                cache.keys().price(&p.id),
                CachedPrice::new(&p.id, compute_price_cents(p, s), now).encode(),
            )
        })
        .collect()
}

async fn recalculate_all(deps: &RecalcDeps, ctx: &JobContext) -> Result<JobOutcome, JobError> {
    let Some(guard) = deps.lock.try_acquire().await.map_err(JobError::retryable)? else {
        let since = deps.lock.held_since().await.map_err(JobError::retryable)?;
        return Ok(match since {
            Some(since) if since >= ctx.enqueued_at => {
                JobOutcome::skipped(json!({"status": "skipped", "reason": "locked"}))
            }
            // Held by a run that started before this trigger (or released
            // just now): run after it.
            _ => JobOutcome::deferred(
                DEFER_DELAY,
                json!({"status": "waiting", "reason": "another recalculation is running"}),
            ),
        });
    };
    let outcome = scan_and_cache(deps, ctx, &guard).await;
    // Released on every path: a failed attempt must not leave its retry
    // (or the next trigger) locked out until the lock's TTL runs out.
    if let Err(e) = guard.release().await {
        tracing::warn!(error = %e, "releasing the recalculation lock failed; it will expire");
    }
    outcome
}

async fn scan_and_cache(
    deps: &RecalcDeps,
    ctx: &JobContext,
    guard: &shared::lock::LockGuard,
) -> Result<JobOutcome, JobError> {
    let started = Instant::now();
    let total = deps
        .store
        .count_products()
        .await
        .map_err(JobError::retryable)?;
    let fence_key = deps.cache.keys().price_fence();
    let (mut processed, mut after) = (0usize, None::<String>);
    loop {
        if guard.is_lost() {
            return Err(JobError::retryable("lost the recalculation lock"));
        }
        let mut page = deps
            .store
            .priced_page(after.as_deref(), PAGE)
            .await
            .map_err(JobError::retryable)?;
        apply_feed(deps.feed.as_ref(), &mut page).await?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.id.clone());
        let written = fenced_set_many(
            deps.cache.pool(),
            &fence_key,
            guard.fence(),
            deps.cache.ttl(),
            &entries(&deps.cache, &page),
        )
        .await
        .map_err(JobError::retryable)?;
        if written.is_none() {
            // A newer holder has written: our lock expired under us.
            return Ok(JobOutcome::skipped(
                json!({"status": "skipped", "reason": "superseded"}),
            ));
        }
        processed += page.len();
        if let Err(e) = ctx
            .queue
            .report_progress(&ctx.id, &json!({"processed": processed, "total": total}))
            .await
        {
            tracing::warn!(error = %e, "cannot report progress");
        }
    }
    Ok(JobOutcome::succeeded(json!({
        "status": "succeeded",
        "updated_count": processed,
        "duration_ms": started.elapsed().as_millis() as u64,
    })))
}

async fn recalculate_some(deps: &RecalcDeps, ids: Vec<String>) -> Result<JobOutcome, JobError> {
    let started = Instant::now();
    let mut updated = 0;
    for chunk in ids.chunks(PAGE) {
        let priced = deps
            .store
            .priced_by_ids(chunk)
            .await
            .map_err(JobError::retryable)?;
        let now = Utc::now();
        let fresh: Vec<CachedPrice> = priced
            .iter()
            .map(|(p, s)| CachedPrice::new(&p.id, compute_price_cents(p, s), now))
            .collect();
        deps.cache
            .put_many(&fresh)
            .await
            .map_err(JobError::retryable)?;
        updated += fresh.len();
    }
    Ok(JobOutcome::succeeded(json!({
        "status": "succeeded",
        "updated_count": updated,
        "duration_ms": started.elapsed().as_millis() as u64,
    })))
}
