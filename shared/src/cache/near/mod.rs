//! A near cache of prices in the api's own memory, kept consistent by Redis
//! itself (server-assisted client-side caching, `CLIENT TRACKING`).
//!
//! Every cache hit used to cost a Redis round trip, so Redis's one core
//! capped the whole fleet of apis. With the near cache a hit is answered
//! from this process's memory; Redis only tells it what changed.
//!
//! **How it stays right.** [`track`] keeps a RESP3 connection (one per node
//! on a cluster) with
//! `CLIENT TRACKING ON BCAST PREFIX {ns}:prices:`: Redis then pushes an
//! `invalidate` message naming the price hash of every write to one, by
//! anyone (a recalculation, an event-driven update, `redis-cli HSET`), and
//! of every expiry or eviction; a flush of the database pushes a null. Each
//! of the [`PRICE_BUCKETS`] hashes has an epoch here, bumped by its
//! invalidation, and the whole cache a generation, bumped by a flush. An
//! entry remembers the epoch and generation it was read under ([`Ticket`],
//! taken *before* the Redis read), and is served only while both are
//! unchanged, so:
//!
//! - a value read before a write but stored after its invalidation arrived
//!   is never served (its ticket is older than the bucket's epoch);
//! - an invalidation costs one atomic increment, however many entries the
//!   bucket holds.
//!
//! **Correctness before speed.** While a tracking connection is down
//! (Redis restarting, a network cut, not yet connected; see [`track`]) the
//! near cache is flushed and bypassed: every read goes to Redis as before. A cut that
//! closes no socket is found by a `PING` every [`PING_EVERY`] (bounded by
//! [`PING_TIMEOUT`]); until then an entry whose invalidation was lost may
//! be served, at most that long. Entries also obey the cache TTL exactly:
//! an entry older than `CACHE_TTL_SECS` since its `calculated_at` is a miss,
//! as in Redis.
//!
//! **Bounded.** At most `API_NEAR_CACHE_MAX_ENTRIES` entries, evicted by
//! S3-FIFO (`quick_cache`), which keeps the hot set under scans.
//!
//! Series: `near_cache_hits_total`, `near_cache_misses_total`,
//! `near_cache_evictions_total`, `near_cache_invalidations_total`,
//! `near_cache_flushes_total`, and the gauges `near_cache_entries` and
//! `near_cache_tracking` (1 while invalidations are being received).
//!
//! On a Redis Cluster every node that serves slots is tracked, and a change
//! of the cluster's shape flushes the cache ([`track`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, UnitWeighter};
use redis::{PushInfo, PushKind, Value};

use crate::cache::CachedPrice;
use crate::keys::{Keys, PRICE_BUCKETS, price_bucket_of};

pub mod track;

/// How often each tracking connection is checked with a `PING` (and a
/// cluster's shape read again): the longest a silent network cut or a
/// change of shape can go unnoticed, together with [`PING_TIMEOUT`].
pub const PING_EVERY: Duration = Duration::from_millis(500);

/// How long a `PING` of the tracking connection may take before the
/// connection counts as lost.
pub const PING_TIMEOUT: Duration = Duration::from_millis(500);

/// One near-cache entry: the price, the epochs it was read under, and
/// when it expires (`None`: a TTL too long to add to a date, never).
struct Slot {
    entry: CachedPrice,
    generation: u64,
    epoch: u64,
    expires: Option<DateTime<Utc>>,
}

/// Counts evictions into `near_cache_evictions_total`.
#[derive(Clone, Default)]
struct CountEvictions;

impl Lifecycle<String, Arc<Slot>> for CountEvictions {
    type RequestState = ();

    fn on_evict(&self, _state: &mut (), _key: String, _val: Arc<Slot>) {
        metrics::counter!("near_cache_evictions_total").increment(1);
    }
}

/// What a read from Redis may store, if nothing changed meanwhile: the
/// generation and the bucket's epoch seen before the read was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    generation: u64,
    bucket: u32,
    epoch: u64,
}

/// The near cache of one process.
pub struct NearCache {
    entries: Cache<String, Arc<Slot>, UnitWeighter, DefaultHashBuilder, CountEvictions>,
    epochs: Box<[AtomicU64]>,
    generation: AtomicU64,
    live: AtomicBool,
    keys: Keys,
}

impl NearCache {
    /// A near cache of at most `capacity` entries for the price hashes of
    /// `keys`. It serves nothing until [`track`] has tracking running.
    pub fn new(capacity: usize, keys: Keys) -> Arc<Self> {
        let capacity = capacity.max(1);
        let entries = Cache::with(
            capacity,
            capacity as u64,
            UnitWeighter,
            DefaultHashBuilder::default(),
            CountEvictions,
        );
        describe();
        Arc::new(Self {
            entries,
            epochs: (0..PRICE_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            generation: AtomicU64::new(0),
            live: AtomicBool::new(false),
            keys,
        })
    }

    /// Whether invalidations are being received, so entries may be served.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Entries held now (some may be stale and never served).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry of `product_id`, if one is held, unchanged since it was
    /// read, and not expired at `now`. Counts a hit or a miss; while
    /// tracking is down it answers `None` and counts nothing.
    pub fn get(&self, product_id: &str, now: DateTime<Utc>) -> Option<CachedPrice> {
        if !self.is_live() {
            return None;
        }
        let found = self.entries.get(product_id).filter(|slot| {
            slot.generation == self.generation.load(Ordering::Acquire)
                && slot.epoch == self.epoch_of(product_id).load(Ordering::Acquire)
                && slot.expires.is_none_or(|expires| now < expires)
        });
        match found {
            Some(slot) => {
                static HITS: OnceLock<metrics::Counter> = OnceLock::new();
                crate::metrics::counter(&HITS, "near_cache_hits_total").increment(1);
                Some(slot.entry.clone())
            }
            None => {
                static MISSES: OnceLock<metrics::Counter> = OnceLock::new();
                crate::metrics::counter(&MISSES, "near_cache_misses_total").increment(1);
                None
            }
        }
    }

    /// A ticket for reading `product_id` from Redis now; `None` while
    /// tracking is down (nothing read then may be kept).
    pub fn ticket(&self, product_id: &str) -> Option<Ticket> {
        if !self.is_live() {
            return None;
        }
        let bucket = price_bucket_of(product_id);
        // The generation first: a flush between the two loads then shows.
        let generation = self.generation.load(Ordering::Acquire);
        let epoch = self.epochs[bucket as usize].load(Ordering::Acquire);
        Some(Ticket {
            generation,
            bucket,
            epoch,
        })
    }

    /// Keeps `entry`, read from Redis under `ticket`. It is served only if
    /// no invalidation of its bucket and no flush came after the ticket,
    /// and until `ttl` after it was computed, as [`CachedPrice::is_fresh`]
    /// says (worked out here, once, rather than on every hit).
    pub fn insert(&self, ticket: Ticket, entry: CachedPrice, ttl: Duration) {
        if ticket.bucket != price_bucket_of(&entry.product_id) {
            return;
        }
        self.entries.insert(
            entry.product_id.clone(),
            Arc::new(Slot {
                expires: chrono::Duration::from_std(ttl)
                    .ok()
                    .and_then(|ttl| entry.calculated_at.checked_add_signed(ttl)),
                entry,
                generation: ticket.generation,
                epoch: ticket.epoch,
            }),
        );
    }

    /// Applies one invalidated key: a price hash's bucket goes stale.
    /// Returns whether the key was one of ours.
    pub fn invalidate_key(&self, key: &[u8]) -> bool {
        let bucket = std::str::from_utf8(key)
            .ok()
            .and_then(|k| self.keys.price_bucket_of_key(k));
        match bucket {
            Some(b) => {
                self.epochs[b as usize].fetch_add(1, Ordering::AcqRel);
                metrics::counter!("near_cache_invalidations_total").increment(1);
                true
            }
            None => false,
        }
    }

    /// Forgets every entry: none read before now is served again.
    pub fn flush(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries.clear();
        metrics::counter!("near_cache_flushes_total").increment(1);
    }

    /// Starts serving (`true`, after a flush) or stops and flushes (`false`).
    fn set_live(&self, live: bool) {
        if live {
            self.flush();
            self.live.store(true, Ordering::Release);
        } else if self.live.swap(false, Ordering::AcqRel) {
            self.flush();
        }
        metrics::gauge!("near_cache_tracking").set(if live { 1.0 } else { 0.0 });
    }

    /// Applies one push message of the tracking connection.
    fn apply(&self, push: &PushInfo) {
        if push.kind != PushKind::Invalidate {
            return;
        }
        match push.data.first() {
            Some(Value::Array(keys)) => {
                for key in keys {
                    if let Value::BulkString(k) = key {
                        self.invalidate_key(k);
                    }
                }
            }
            // A null: the database was flushed.
            _ => self.flush(),
        }
    }

    /// Samples the entries gauge (at scrape time).
    pub fn sample(&self) {
        metrics::gauge!("near_cache_entries").set(self.entries.len() as f64);
    }

    fn epoch_of(&self, product_id: &str) -> &AtomicU64 {
        &self.epochs[price_bucket_of(product_id) as usize]
    }
}

fn describe() {
    metrics::describe_counter!(
        "near_cache_hits_total",
        "Price reads answered from the near cache"
    );
    metrics::describe_counter!(
        "near_cache_misses_total",
        "Price reads the near cache could not answer (absent, invalidated or expired)"
    );
    metrics::describe_counter!(
        "near_cache_evictions_total",
        "Near-cache entries evicted to stay within API_NEAR_CACHE_MAX_ENTRIES"
    );
    metrics::describe_counter!(
        "near_cache_invalidations_total",
        "Price-hash invalidations received from Redis (CLIENT TRACKING)"
    );
    metrics::describe_counter!(
        "near_cache_flushes_total",
        "Near-cache flushes: tracking lost or started, or the database flushed"
    );
    metrics::describe_gauge!("near_cache_entries", "Entries in the near cache");
    metrics::describe_gauge!(
        "near_cache_tracking",
        "1 while the near cache receives invalidations and serves, else 0"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, cents: i64) -> CachedPrice {
        CachedPrice::new(id, cents, Utc::now())
    }

    fn live(capacity: usize) -> Arc<NearCache> {
        let near = NearCache::new(capacity, Keys::new("t"));
        near.set_live(true);
        near
    }

    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn nothing_is_served_or_kept_while_tracking_is_down() {
        let near = NearCache::new(10, Keys::new("t"));
        assert!(near.ticket("P-1").is_none());
        let near = live(10);
        let t = near.ticket("P-1").unwrap();
        near.insert(t, entry("P-1", 100), TTL);
        assert_eq!(near.get("P-1", Utc::now()).unwrap().price_cents, 100);
        near.set_live(false);
        assert!(near.get("P-1", Utc::now()).is_none());
        near.set_live(true);
        assert!(near.get("P-1", Utc::now()).is_none(), "a reconnect flushes");
    }

    #[test]
    fn a_read_that_an_invalidation_overtook_is_never_served() {
        let near = live(10);
        let keys = Keys::new("t");
        // The ticket is taken, the write's invalidation arrives, then the
        // (old) value read before the write is stored.
        let t = near.ticket("P-1").unwrap();
        assert!(near.invalidate_key(keys.price("P-1").as_bytes()));
        near.insert(t, entry("P-1", 100), TTL);
        assert!(near.get("P-1", Utc::now()).is_none());
        // A read after the invalidation is kept and served.
        let t = near.ticket("P-1").unwrap();
        near.insert(t, entry("P-1", 200), TTL);
        assert_eq!(near.get("P-1", Utc::now()).unwrap().price_cents, 200);
        // Another bucket's invalidation leaves it alone; its own drops it.
        let other = (2..)
            .map(|i| format!("P-{i}"))
            .find(|id| price_bucket_of(id) != price_bucket_of("P-1"))
            .unwrap();
        near.invalidate_key(keys.price(&other).as_bytes());
        assert!(near.get("P-1", Utc::now()).is_some());
        near.invalidate_key(keys.price("P-1").as_bytes());
        assert!(near.get("P-1", Utc::now()).is_none());
    }

    #[test]
    fn a_flush_drops_everything_read_before_it() {
        let near = live(10);
        let t = near.ticket("P-1").unwrap();
        near.flush();
        near.insert(t, entry("P-1", 100), TTL);
        assert!(near.get("P-1", Utc::now()).is_none());
        let t = near.ticket("P-1").unwrap();
        near.insert(t, entry("P-1", 100), TTL);
        near.apply(&PushInfo {
            kind: PushKind::Invalidate,
            data: vec![Value::Nil],
        });
        assert!(
            near.get("P-1", Utc::now()).is_none(),
            "FLUSHALL pushes a null"
        );
    }

    #[test]
    fn keys_outside_the_price_hashes_are_ignored() {
        let near = live(10);
        assert!(!near.invalidate_key(b"t:prices:fence"));
        assert!(!near.invalidate_key(b"t:prices:999999"));
        assert!(!near.invalidate_key(b"other:prices:1"));
    }

    #[test]
    fn entries_obey_the_cache_ttl() {
        let near = live(10);
        let t = near.ticket("P-1").unwrap();
        let at = Utc::now();
        near.insert(t, CachedPrice::new("P-1", 100, at), TTL);
        // Fresh until the TTL has passed since it was computed, as in Redis
        // and as `CachedPrice::is_fresh` says.
        let just_before = at + chrono::Duration::seconds(60) - chrono::Duration::nanoseconds(1);
        let at_expiry = at + chrono::Duration::seconds(60);
        assert!(near.get("P-1", just_before).is_some());
        assert!(near.get("P-1", at_expiry).is_none());
        for when in [at, just_before, at_expiry] {
            let entry = CachedPrice::new("P-1", 100, at);
            assert_eq!(
                near.get("P-1", when).is_some(),
                entry.is_fresh(when, TTL),
                "{when}"
            );
        }
        // A TTL too long to add to a date never expires.
        let t = near.ticket("P-2").unwrap();
        near.insert(t, CachedPrice::new("P-2", 100, at), Duration::MAX);
        assert!(
            near.get("P-2", at + chrono::Duration::days(365 * 100))
                .is_some()
        );
    }

    #[test]
    fn the_cache_stays_within_its_bound() {
        let near = live(100);
        for i in 0..1_000 {
            let id = format!("P-{i}");
            let t = near.ticket(&id).unwrap();
            near.insert(t, entry(&id, 100), TTL);
        }
        assert!(near.len() <= 100, "{} entries", near.len());
    }
}
