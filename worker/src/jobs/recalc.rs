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
//!   page, not the catalog) and writes each page in one fenced transaction
//!   (one `HSET` per cache bucket), so a recalculation that lost its lock
//!   cannot overwrite newer prices;
//! - reports `{"processed", "total"}` in its status while it runs, and
//!   finishes with `{"status": "succeeded", "updated_count", "duration_ms"}`;
//! - stops at once when its cancellation token fires (a soft time limit or
//!   a revoke), even while it waits for the store or the feed: the pages
//!   written stay written, and the attempt ends with a retryable
//!   `stopped: …` error (a revoke turns that into `cancelled`).
//!
//! The targeted recalculation prices the named products the same way and
//! writes them at once; when a full recalculation that started before it was
//! queued still runs (and may overwrite them with prices from older
//! signals), it runs again after that one.
//!
//! With `MARKET_DATA_URL` set, competitor prices come from the market-data
//! feed ([`crate::jobs::feed`]); otherwise from those stored from market
//! events. Store, Redis and transient feed failures are retryable (the job's
//! backoff applies); a 4xx or malformed feed answer is permanent.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use queue::{JobError, JobOutcome};
use serde_json::json;
use shared::cache::{CachedPrice, PriceBatch, PriceCache};
use shared::domain::{MarketSignals, Product};
use shared::jobs::{RecalculateAllPrices, RecalculatePrices};
use shared::lock::{DistributedLock, FencedWriter};
use shared::pricing::compute_price_cents;
use shared::store::CatalogStore;
use tracing::Instrument as _;

use crate::jobs::feed::Feed;
use crate::registry::{JobContext, Registry};

/// Products read, priced and written per step.
pub const PAGE: usize = 5_000;

/// Pages the catalog reader may run ahead of the cache writers.
pub const READ_AHEAD: usize = 2;

/// Page writes in flight at once, each on a Redis connection of its own.
pub const WRITERS: usize = 3;

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
    registry.register(move |job: RecalculatePrices, ctx: JobContext| {
        let deps = deps.clone();
        async move { recalculate_some(&deps, &ctx, job.product_ids).await }
    });
}

/// The encoded entries of a priced page (one timestamp for the page),
/// grouped by the hash they go to.
fn entries(cache: &PriceCache, priced: &[(Product, MarketSignals)]) -> PriceBatch {
    let encoder = CachedPrice::encoder(Utc::now());
    PriceBatch::new(
        cache.keys(),
        priced.iter().map(|(p, s)| {
            (
                p.id.clone(),
                encoder.encode(&p.id, compute_price_cents(p, s)),
            )
        }),
    )
}

async fn recalculate_all(deps: &RecalcDeps, ctx: &JobContext) -> Result<JobOutcome, JobError> {
    let acquired = deps
        .lock
        .try_acquire_for(&ctx.id)
        .await
        .map_err(JobError::retryable)?;
    let Some(guard) = acquired else {
        let holder = deps.lock.holder().await.map_err(JobError::retryable)?;
        return Ok(match holder {
            // An earlier attempt of this very job (its worker died, or the
            // attempt timed out): its lock expires soon, then this one runs.
            Some(h) if h.owner == ctx.id => wait_for_lock(),
            Some(h) if h.since_ms >= ctx.enqueued_at => {
                JobOutcome::skipped(json!({"status": "skipped", "reason": "locked"}))
            }
            // Held by a run that started before this trigger (or released
            // just now): run after it.
            _ => wait_for_lock(),
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

/// Runs the job again after [`DEFER_DELAY`], without spending an attempt.
fn wait_for_lock() -> JobOutcome {
    JobOutcome::deferred(
        DEFER_DELAY,
        json!({"status": "waiting", "reason": "another recalculation is running"}),
    )
}

/// Aborts a spawned task when dropped, so an early return stops it.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type Page = Vec<(Product, MarketSignals)>;

/// Reads the catalog page by page ([`CatalogStore::scan`]) into `tx`,
/// [`READ_AHEAD`] pages ahead of the writer; an empty page marks the end.
async fn read_pages(
    store: Arc<dyn CatalogStore>,
    tx: tokio::sync::mpsc::Sender<Result<Page, JobError>>,
) {
    use futures::StreamExt as _;
    let mut pages = store.scan(PAGE);
    loop {
        let (page, last) = match pages.next().await {
            Some(Ok(page)) => (Ok(page), false),
            Some(Err(e)) => (Err(JobError::retryable(e)), true),
            None => (Ok(Vec::new()), true),
        };
        if tx.send(page).await.is_err() || last {
            return;
        }
    }
}

/// Writes priced pages with the holder's fence, [`WRITERS`] transactions
/// in flight on connections of their own.
struct Writers {
    idle: Vec<FencedWriter>,
}

impl Writers {
    async fn connect(deps: &RecalcDeps, fence: u64) -> Result<Self, JobError> {
        let mut idle = Vec::with_capacity(WRITERS);
        for _ in 0..WRITERS {
            idle.push(
                FencedWriter::connect(
                    deps.cache.pool(),
                    deps.cache.keys().price_fence(),
                    fence,
                    deps.cache.ttl(),
                )
                .await
                .map_err(JobError::retryable)?,
            );
        }
        Ok(Self { idle })
    }
}

/// A finished write and its writer.
type WriteDone = (FencedWriter, Result<Option<usize>, JobError>);

/// One write: `Some(n)` written, `None` when a newer holder has written
/// (our lock expired under us). Gives its writer back.
async fn write_page(mut writer: FencedWriter, entries: PriceBatch) -> WriteDone {
    let res = writer
        .write(entries.hashes())
        .await
        .map_err(JobError::retryable);
    (writer, res)
}

/// The scan runs as overlapping stages, so neither SQLite nor Redis waits
/// for the other: a reader task fetches pages [`READ_AHEAD`] ahead, this
/// loop prices and encodes a page (and asks the feed), and up to
/// [`WRITERS`] earlier pages are being written meanwhile. Memory holds at
/// most `READ_AHEAD + WRITERS + 2` pages, whatever the catalog's size.
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
    let mut idle = Writers::connect(deps, guard.fence()).await?.idle;
    let (tx, mut rx) = tokio::sync::mpsc::channel(READ_AHEAD);
    let _reader = AbortOnDrop(tokio::spawn(read_pages(deps.store.clone(), tx)));
    let mut in_flight: VecDeque<(usize, AbortOnDrop<WriteDone>)> = VecDeque::new();
    let (mut processed, mut read_all) = (0usize, false);
    loop {
        if guard.is_lost() {
            return Err(JobError::retryable("lost the recalculation lock"));
        }
        let writer = match idle.pop() {
            Some(writer) if !read_all => writer,
            other => {
                // Every writer is busy, or the catalog is read: settle the oldest write.
                idle.extend(other);
                let Some((n, mut write)) = in_flight.pop_front() else {
                    break;
                };
                let (writer, written) = (&mut write.0)
                    .await
                    .map_err(|e| JobError::retryable(format!("cache write task: {e}")))?;
                idle.push(writer);
                if written?.is_none() {
                    return Ok(JobOutcome::skipped(
                        json!({"status": "skipped", "reason": "superseded"}),
                    ));
                }
                processed += n;
                let progress = json!({"processed": processed, "total": total});
                match ctx
                    .queue
                    .report_progress(&ctx.id, &ctx.token, &progress)
                    .await
                {
                    Ok(true) => {}
                    // Another attempt owns the job now; this one's writes are
                    // fenced, but there is no point going on.
                    Ok(false) => return Err(JobError::retryable("lost the job's lease")),
                    Err(e) => tracing::warn!(error = %e, "cannot report progress"),
                }
                continue;
            }
        };
        let next = tokio::select! {
            biased;
            () = ctx.cancel.cancelled() => return Err(stopped(processed, total)),
            next = rx.recv() => next,
        };
        let mut page = match next {
            Some(page) => page?,
            None => return Err(JobError::retryable("the catalog reader stopped")),
        };
        if page.is_empty() {
            read_all = true;
            idle.push(writer);
            continue;
        }
        tokio::select! {
            biased;
            () = ctx.cancel.cancelled() => return Err(stopped(processed, total)),
            fed = apply_feed(deps.feed.as_ref(), &mut page) => fed?,
        }
        // Spawned in the job's span, so the write's Redis span is in its trace.
        let write = write_page(writer, entries(&deps.cache, &page)).in_current_span();
        in_flight.push_back((page.len(), AbortOnDrop(tokio::spawn(write))));
    }
    Ok(JobOutcome::succeeded(json!({
        "status": "succeeded",
        "updated_count": processed,
        "duration_ms": started.elapsed().as_millis() as u64,
    })))
}

/// The error of a recalculation that stopped because it was asked to.
fn stopped(processed: usize, total: impl std::fmt::Display) -> JobError {
    JobError::retryable(format!(
        "stopped: asked to stop (soft time limit or revoke) after {processed} of {total} products"
    ))
}

/// Prices the named products and writes them at once, through the feed
/// when one is set, like the full recalculation. If a full recalculation
/// that started before this job was queued is still running, it may have
/// read the products' older signals and may still overwrite these prices,
/// so the job runs again once that recalculation has finished (deferred,
/// no attempt spent).
async fn recalculate_some(
    deps: &RecalcDeps,
    ctx: &JobContext,
    ids: Vec<String>,
) -> Result<JobOutcome, JobError> {
    let started = Instant::now();
    let mut updated = 0;
    let total = ids.len();
    for chunk in ids.chunks(PAGE) {
        if ctx.cancel.is_cancelled() {
            return Err(stopped(updated, total));
        }
        let mut priced = deps
            .store
            .priced_by_ids(chunk)
            .await
            .map_err(JobError::retryable)?;
        tokio::select! {
            biased;
            () = ctx.cancel.cancelled() => return Err(stopped(updated, total)),
            fed = apply_feed(deps.feed.as_ref(), &mut priced) => fed?,
        }
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
    let holder = deps.lock.holder().await.map_err(JobError::retryable)?;
    if holder.is_some_and(|h| h.since_ms < ctx.enqueued_at) {
        return Ok(JobOutcome::deferred(
            DEFER_DELAY,
            json!({
                "status": "waiting",
                "reason": "a full recalculation that may overwrite these prices is running",
                "updated_count": updated,
            }),
        ));
    }
    Ok(JobOutcome::succeeded(json!({
        "status": "succeeded",
        "updated_count": updated,
        "duration_ms": started.elapsed().as_millis() as u64,
    })))
}
