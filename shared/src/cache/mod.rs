//! The price cache: what a cached entry looks like and how it is read back.
//!
//! A cached entry holds the product's price *before* any per-customer
//! adjustment, so one entry is right for every customer; the prime discount
//! is applied after the read. Entries are versioned JSON. On read an entry is
//! re-validated: JSON that is corrupt, of an old format, or about another
//! product counts as a miss ([`Lookup::Invalid`]); the caller recomputes and
//! overwrites it, and it is never passed on to a client.
//!
//! **Layout.** Entries live in [`crate::keys::PRICE_BUCKETS`]
//! hashes, `{ns}:prices:{bucket}`, one field per product (see
//! [`Keys::price`]), not in a key each. A full recalculation writes a whole
//! page of prices as one `HSET` per bucket, which costs Redis a half (into
//! an empty cache) to a third (over cached prices) of the CPU that a
//! `SET … PX` per product costs it; a million keys with a TTL each are more
//! than Redis alone can write in five seconds on a 2-core machine.
//!
//! **TTL.** Redis 7.0 has no per-field expiry, so the TTL is kept two ways:
//! each entry is fresh for the cache TTL after its `calculated_at`, and an
//! older one reads as a miss (the logical TTL, exact); and every write
//! gives its bucket the TTL (`PEXPIRE`), so a bucket that no one writes to
//! any more is freed whole (the physical TTL, never shorter than an
//! entry's). A stale field therefore stays in memory until its product is
//! priced again or its bucket goes quiet; it is never served.
//!
//! **Near cache.** An api may keep prices in its own memory too ([`near`]),
//! attached with [`PriceCache::with_near`]; Redis's invalidations keep it
//! consistent.

pub mod near;

use tracing::Instrument as _;

use crate::telemetry::{RedisOp, redis_call, redis_span};
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::keys::{Keys, PRICE_BUCKETS, price_bucket_of};
use crate::pricing::CURRENCY;
use crate::redis_pool::RedisPool;
use near::{NearCache, Ticket};
use std::sync::Arc;

/// The cache's Redis calls on the read and write paths, as their client
/// spans describe them.
static HGET: RedisOp = RedisOp::new("HGET", "HGET");
static BATCH_HGET: RedisOp = RedisOp::new("BATCH HGET", "BATCH HGET");
static HSET: RedisOp = RedisOp::new("HSET", "HSET");

/// Version of the cached JSON format. Bump it when [`CachedPrice`] changes
/// shape: entries of other versions then count as misses and are rewritten.
pub const CACHE_FORMAT_VERSION: u32 = 1;

/// One cached price.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CachedPrice {
    /// Format version, always [`CACHE_FORMAT_VERSION`] when written.
    pub v: u32,
    /// The product this price belongs to; checked against the key on read.
    pub product_id: String,
    /// The price before any per-customer adjustment, in cents.
    pub price_cents: i64,
    /// Currency of `price_cents`.
    pub currency: String,
    /// When the price was computed.
    pub calculated_at: DateTime<Utc>,
}

impl CachedPrice {
    /// A new entry in the current format.
    pub fn new(product_id: &str, price_cents: i64, calculated_at: DateTime<Utc>) -> Self {
        Self {
            v: CACHE_FORMAT_VERSION,
            product_id: product_id.to_string(),
            price_cents,
            currency: CURRENCY.to_string(),
            calculated_at,
        }
    }

    /// Encodes the entry for Redis.
    pub fn encode(&self) -> String {
        // Serialising a struct of plain fields cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// An encoder of many entries computed at the same moment: it renders
    /// the shared parts once, so a full recalculation does not format the
    /// same timestamp a million times. Its output equals [`Self::encode`]'s.
    pub fn encoder(calculated_at: DateTime<Utc>) -> EntryEncoder {
        let at = serde_json::to_string(&calculated_at).unwrap_or_default();
        EntryEncoder {
            tail: format!(
                r#","currency":{},"calculated_at":{at}}}"#,
                serde_json::to_string(CURRENCY).unwrap_or_default()
            ),
        }
    }

    /// Whether the entry is still within `ttl` of its computation at `now`
    /// (an entry from a clock slightly ahead counts as fresh).
    pub fn is_fresh(&self, now: DateTime<Utc>, ttl: Duration) -> bool {
        chrono::Duration::from_std(ttl)
            .ok()
            .and_then(|ttl| self.calculated_at.checked_add_signed(ttl))
            .is_none_or(|expires| now < expires)
    }

    /// Decodes and re-validates an entry read from the field of `product_id`.
    pub fn decode(product_id: &str, raw: &[u8]) -> Result<Self, InvalidEntry> {
        let entry: CachedPrice =
            serde_json::from_slice(raw).map_err(|e| InvalidEntry(e.to_string()))?;
        if entry.v != CACHE_FORMAT_VERSION {
            return Err(InvalidEntry(format!("format version {}", entry.v)));
        }
        if entry.product_id != product_id {
            return Err(InvalidEntry("entry belongs to another product".into()));
        }
        if entry.price_cents <= 0 {
            return Err(InvalidEntry("price is not positive".into()));
        }
        if entry.currency != CURRENCY {
            return Err(InvalidEntry(format!("currency {}", entry.currency)));
        }
        Ok(entry)
    }
}

/// Encodes entries that share their computation time; see
/// [`CachedPrice::encoder`].
#[derive(Debug, Clone)]
pub struct EntryEncoder {
    /// Everything after the price: currency, timestamp, closing brace.
    tail: String,
}

impl EntryEncoder {
    /// The entry of `product_id` at `price_cents`, as [`CachedPrice::encode`]
    /// would write it.
    pub fn encode(&self, product_id: &str, price_cents: i64) -> String {
        let mut out = String::with_capacity(48 + product_id.len() + self.tail.len());
        out.push_str(r#"{"v":"#);
        out.push_str(itoa::Buffer::new().format(CACHE_FORMAT_VERSION));
        out.push_str(r#","product_id":"#);
        if product_id
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            out.push('"');
            out.push_str(product_id);
            out.push('"');
        } else {
            out.push_str(&serde_json::to_string(product_id).unwrap_or_default());
        }
        out.push_str(r#","price_cents":"#);
        out.push_str(itoa::Buffer::new().format(price_cents));
        out.push_str(&self.tail);
        out
    }
}

/// Why a cached entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cache entry: {0}")]
pub struct InvalidEntry(pub String);

/// The outcome of looking one product up in the cache.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// A valid entry.
    Hit(CachedPrice),
    /// No entry.
    Miss,
    /// An entry that failed re-validation; treat it as a miss and overwrite it.
    Invalid(InvalidEntry),
}

impl Lookup {
    /// The lookup of a raw field: an entry computed `ttl` or more before
    /// `now` has expired and reads as a miss (the logical TTL).
    fn from_raw(product_id: &str, raw: Option<Vec<u8>>, now: DateTime<Utc>, ttl: Duration) -> Self {
        match raw {
            None => Lookup::Miss,
            Some(bytes) => match CachedPrice::decode(product_id, &bytes) {
                Ok(entry) if entry.is_fresh(now, ttl) => Lookup::Hit(entry),
                Ok(_) => Lookup::Miss,
                Err(e) => Lookup::Invalid(e),
            },
        }
    }
}

/// Encoded entries grouped by the hash that holds them, ready for one
/// write: a field (the product id) and its value per entry.
#[derive(Debug, Default)]
pub struct PriceBatch {
    hashes: Vec<HashFields>,
    len: usize,
}

/// One hash and the fields to set on it.
pub type HashFields = (String, Vec<(String, String)>);

impl PriceBatch {
    /// Groups `(product_id, encoded entry)` pairs by their bucket.
    pub fn new(keys: &Keys, entries: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut buckets: Vec<Vec<(String, String)>> = vec![Vec::new(); PRICE_BUCKETS as usize];
        let mut len = 0;
        for (id, value) in entries {
            buckets[price_bucket_of(&id) as usize].push((id, value));
            len += 1;
        }
        let hashes = buckets
            .into_iter()
            .enumerate()
            .filter(|(_, fields)| !fields.is_empty())
            .map(|(bucket, fields)| (keys.price_bucket(bucket as u32), fields))
            .collect();
        Self { hashes, len }
    }

    /// The hashes to write and their fields.
    pub fn hashes(&self) -> &[HashFields] {
        &self.hashes
    }

    /// How many entries the batch holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the batch holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Reads and writes cached prices through the pool, and through a near
/// cache in front of it when one is attached ([`Self::with_near`]).
#[derive(Clone)]
pub struct PriceCache {
    pool: RedisPool,
    keys: Keys,
    ttl: Duration,
    near: Option<Arc<NearCache>>,
    /// Whether [`Self::put_many`] writes on the pool's bulk connections.
    bulk_writes: bool,
}

impl PriceCache {
    /// A cache over `pool`, with keys from `keys` and entries living `ttl`.
    pub fn new(pool: RedisPool, keys: Keys, ttl: Duration) -> Self {
        Self {
            pool,
            keys,
            ttl,
            near: None,
            bulk_writes: false,
        }
    }

    /// [`Self::put_many`] writes on [`RedisPool::get_bulk`]'s connections,
    /// bounded per attempt, instead of within the read path's
    /// `REDIS_TIMEOUT_MS`: for a worker, whose write of thousands of prices
    /// must get through a cluster failover rather than fail its attempt.
    pub fn with_bulk_writes(mut self) -> Self {
        self.bulk_writes = true;
        self
    }

    /// Reads go to `near` first, and what Redis answers is kept there.
    pub fn with_near(mut self, near: Arc<NearCache>) -> Self {
        self.near = Some(near);
        self
    }

    /// The near cache, when one is attached.
    pub fn near(&self) -> Option<&Arc<NearCache>> {
        self.near.as_ref()
    }

    /// The pool underneath, for readiness checks and metrics.
    pub fn pool(&self) -> &RedisPool {
        &self.pool
    }

    /// How long cached prices live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The key builder in use.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The cache TTL in milliseconds, for `PEXPIRE`.
    fn ttl_ms(&self) -> u64 {
        (self.ttl.as_millis() as u64).max(1)
    }

    /// The near cache's entry, else one `HGET` (kept in the near cache).
    pub async fn get(&self, product_id: &str) -> redis::RedisResult<Lookup> {
        let ticket = match &self.near {
            Some(near) => {
                if let Some(entry) = near.get(product_id, Utc::now()) {
                    return Ok(Lookup::Hit(entry));
                }
                near.ticket(product_id)
            }
            None => None,
        };
        let (mut conn, tracker) = self.pool.get();
        let raw: Option<Vec<u8>> = tracker
            .track(redis_call(&HGET, conn.hget(self.keys.price(product_id), product_id)).await)?;
        let lookup = Lookup::from_raw(product_id, raw, Utc::now(), self.ttl);
        self.keep(ticket, &lookup);
        Ok(lookup)
    }

    /// Keeps a hit read from Redis under `ticket` in the near cache.
    fn keep(&self, ticket: Option<Ticket>, lookup: &Lookup) {
        if let (Some(near), Some(ticket), Lookup::Hit(entry)) = (&self.near, ticket, lookup) {
            near.insert(ticket, entry.clone(), self.ttl);
        }
    }

    /// The near cache's entries, and one `HGET` per other product in one
    /// pipeline round trip (on a cluster, one per hash slot, at once); the
    /// result is in the order of `product_ids`.
    pub async fn get_many(&self, product_ids: &[String]) -> redis::RedisResult<Vec<Lookup>> {
        let now = Utc::now();
        let mut out: Vec<Option<Lookup>> = match &self.near {
            Some(near) => product_ids
                .iter()
                .map(|id| near.get(id, now).map(Lookup::Hit))
                .collect(),
            None => vec![None; product_ids.len()],
        };
        let wanted: Vec<usize> = (0..product_ids.len())
            .filter(|&i| out[i].is_none())
            .collect();
        if !wanted.is_empty() {
            let tickets: Vec<Option<Ticket>> = wanted
                .iter()
                .map(|&i| self.near.as_ref().and_then(|n| n.ticket(&product_ids[i])))
                .collect();
            let cmds = wanted
                .iter()
                .map(|&i| {
                    let id = &product_ids[i];
                    let key = self.keys.price(id);
                    let mut cmd = redis::cmd("HGET");
                    cmd.arg(&key).arg(id);
                    (key, cmd)
                })
                .collect();
            let (mut conn, tracker) = self.pool.get();
            let raws = tracker
                .track(redis_call(&BATCH_HGET, self.pool.query_keyed(&mut conn, cmds)).await)?;
            let now = Utc::now();
            for ((&i, raw), ticket) in wanted.iter().zip(raws).zip(tickets) {
                let raw: Option<Vec<u8>> = redis::from_redis_value(raw)?;
                let lookup = Lookup::from_raw(&product_ids[i], raw, now, self.ttl);
                self.keep(ticket, &lookup);
                out[i] = Some(lookup);
            }
        }
        Ok(out.into_iter().map(|l| l.unwrap_or(Lookup::Miss)).collect())
    }

    /// One `HSET` and the bucket's `PEXPIRE`, in one round trip.
    pub async fn put(&self, entry: &CachedPrice) -> redis::RedisResult<()> {
        let key = self.keys.price(&entry.product_id);
        let mut pipe = redis::pipe();
        pipe.hset(&key, &entry.product_id, entry.encode())
            .ignore()
            .pexpire(&key, self.ttl_ms() as i64)
            .ignore();
        let (mut conn, tracker) = self.pool.get();
        tracker.track(redis_call(&HSET, pipe.query_async::<()>(&mut conn)).await)
    }

    /// Many entries in one round trip (on a cluster, one per hash slot, at
    /// once): one `HSET` and one `PEXPIRE` per bucket they fall in.
    pub async fn put_many(&self, entries: &[CachedPrice]) -> redis::RedisResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let batch = PriceBatch::new(
            &self.keys,
            entries.iter().map(|e| (e.product_id.clone(), e.encode())),
        );
        let mut cmds = Vec::with_capacity(batch.hashes().len() * 2);
        for (key, fields) in batch.hashes() {
            let mut hset = redis::cmd("HSET");
            hset.arg(key);
            for (field, value) in fields {
                hset.arg(field).arg(value);
            }
            let mut pexpire = redis::cmd("PEXPIRE");
            pexpire.arg(key).arg(self.ttl_ms());
            cmds.push((key.clone(), hset));
            cmds.push((key.clone(), pexpire));
        }
        let (mut conn, tracker) = if self.bulk_writes {
            self.pool.get_bulk()
        } else {
            self.pool.get()
        };
        let span = redis_span("BATCH HSET", "BATCH HSET");
        span.record("db.operation.batch.size", cmds.len());
        tracker
            .track(
                self.pool
                    .query_keyed(&mut conn, cmds)
                    .instrument(span)
                    .await,
            )
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let entry = CachedPrice::new("P-1", 1250, DateTime::UNIX_EPOCH);
        assert_eq!(
            CachedPrice::decode("P-1", entry.encode().as_bytes()),
            Ok(entry)
        );
    }

    proptest::proptest! {
        /// The batch encoder writes exactly what serde writes, for any
        /// product id (escaping included), price and time.
        #[test]
        fn the_batch_encoder_matches_serde(
            id in ".{0,40}",
            cents in proptest::num::i64::ANY,
            secs in 0i64..4_102_444_800,
            nanos in 0u32..1_000_000_000,
        ) {
            let at = DateTime::from_timestamp(secs, nanos).unwrap_or(DateTime::UNIX_EPOCH);
            let fast = CachedPrice::encoder(at).encode(&id, cents);
            proptest::prop_assert_eq!(fast, CachedPrice::new(&id, cents, at).encode());
        }
    }

    #[test]
    fn an_entry_expires_its_ttl_after_it_was_computed() {
        let at = DateTime::from_timestamp(1_000_000, 0).unwrap();
        let entry = CachedPrice::new("P-1", 1250, at);
        let ttl = Duration::from_secs(60);
        let raw = || Some(entry.encode().into_bytes());
        let later = |secs| at + chrono::Duration::seconds(secs);
        assert!(entry.is_fresh(later(59), ttl));
        assert!(!entry.is_fresh(later(60), ttl));
        // A writer's clock slightly ahead of the reader's: still fresh.
        assert!(entry.is_fresh(later(-5), ttl));
        assert_eq!(
            Lookup::from_raw("P-1", raw(), later(59), ttl),
            Lookup::Hit(entry.clone())
        );
        assert_eq!(Lookup::from_raw("P-1", raw(), later(61), ttl), Lookup::Miss);
        assert_eq!(Lookup::from_raw("P-1", None, later(0), ttl), Lookup::Miss);
    }

    #[test]
    fn a_batch_groups_entries_by_their_bucket() {
        let keys = Keys::new("t");
        let ids: Vec<String> = (0..1000).map(|i| format!("P-{i}")).collect();
        let batch = PriceBatch::new(&keys, ids.iter().map(|id| (id.clone(), format!("v{id}"))));
        assert_eq!(batch.len(), 1000);
        let mut seen = 0;
        for (key, fields) in batch.hashes() {
            for (id, value) in fields {
                assert_eq!(&keys.price(id), key);
                assert_eq!(value, &format!("v{id}"));
                seen += 1;
            }
        }
        assert_eq!(seen, 1000);
        let distinct: std::collections::HashSet<_> = batch.hashes().iter().map(|h| &h.0).collect();
        assert_eq!(distinct.len(), batch.hashes().len(), "one entry per hash");
        assert!(PriceBatch::new(&keys, std::iter::empty()).is_empty());
    }

    #[test]
    fn invalid_entries_are_refused() {
        let good = CachedPrice::new("P-1", 1250, DateTime::UNIX_EPOCH);
        assert!(CachedPrice::decode("P-1", b"{not json").is_err());
        assert!(CachedPrice::decode("P-2", good.encode().as_bytes()).is_err());
        let old = good.encode().replace("\"v\":1", "\"v\":0");
        assert!(CachedPrice::decode("P-1", old.as_bytes()).is_err());
        let extra = good.encode().replace("{", "{\"legacy\":true,");
        assert!(CachedPrice::decode("P-1", extra.as_bytes()).is_err());
        let negative = good.encode().replace("1250", "-5");
        assert!(CachedPrice::decode("P-1", negative.as_bytes()).is_err());
        // The original service cached a whole PriceDetail; that shape is refused.
        let legacy = br#"{"product_id":"P-1","final_price":12.5,"base_price":12.5,"discount_rate":0.0,"source":"database"}"#;
        assert!(CachedPrice::decode("P-1", legacy).is_err());
    }
}
