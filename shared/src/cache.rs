//! The price cache: what a cached entry looks like and how it is read back.
//!
//! A cached entry holds the product's price *before* any per-customer
//! adjustment, so one entry is right for every customer; the prime discount
//! is applied after the read. Entries are versioned JSON. On read an entry is
//! re-validated: JSON that is corrupt, of an old format, or about another
//! product counts as a miss ([`Lookup::Invalid`]); the caller recomputes and
//! overwrites it, and it is never passed on to a client.

use tracing::Instrument as _;

use crate::telemetry::redis_span;
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::keys::Keys;
use crate::pricing::CURRENCY;
use crate::redis_pool::RedisPool;

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

    /// Decodes and re-validates an entry read from the key of `product_id`.
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
    fn from_raw(product_id: &str, raw: Option<Vec<u8>>) -> Self {
        match raw {
            None => Lookup::Miss,
            Some(bytes) => match CachedPrice::decode(product_id, &bytes) {
                Ok(entry) => Lookup::Hit(entry),
                Err(e) => Lookup::Invalid(e),
            },
        }
    }
}

/// Reads and writes cached prices through the pool.
#[derive(Clone)]
pub struct PriceCache {
    pool: RedisPool,
    keys: Keys,
    ttl: Duration,
}

impl PriceCache {
    /// A cache over `pool`, with keys from `keys` and entries living `ttl`.
    pub fn new(pool: RedisPool, keys: Keys, ttl: Duration) -> Self {
        Self { pool, keys, ttl }
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

    /// One GET.
    pub async fn get(&self, product_id: &str) -> redis::RedisResult<Lookup> {
        let (mut conn, tracker) = self.pool.get();
        let raw: Option<Vec<u8>> = tracker.track(
            conn.get(self.keys.price(product_id))
                .instrument(redis_span("GET", "GET"))
                .await,
        )?;
        Ok(Lookup::from_raw(product_id, raw))
    }

    /// One MGET for many products; the result is in the order of `product_ids`.
    pub async fn get_many(&self, product_ids: &[String]) -> redis::RedisResult<Vec<Lookup>> {
        if product_ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = product_ids.iter().map(|id| self.keys.price(id)).collect();
        let (mut conn, tracker) = self.pool.get();
        let raws: Vec<Option<Vec<u8>>> = tracker.track(
            redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut conn)
                .instrument(redis_span("MGET", "MGET"))
                .await,
        )?;
        Ok(product_ids
            .iter()
            .zip(raws)
            .map(|(id, raw)| Lookup::from_raw(id, raw))
            .collect())
    }

    /// One SET with the cache TTL.
    pub async fn put(&self, entry: &CachedPrice) -> redis::RedisResult<()> {
        let (mut conn, tracker) = self.pool.get();
        let ttl = self.ttl.as_secs().max(1);
        tracker.track(
            conn.set_ex::<_, _, ()>(self.keys.price(&entry.product_id), entry.encode(), ttl)
                .instrument(redis_span("SETEX", "SETEX"))
                .await,
        )
    }

    /// Many SETs with the cache TTL, in one pipeline round trip.
    pub async fn put_many(&self, entries: &[CachedPrice]) -> redis::RedisResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let ttl = self.ttl.as_secs().max(1);
        let mut pipe = redis::pipe();
        for entry in entries {
            pipe.set_ex(self.keys.price(&entry.product_id), entry.encode(), ttl)
                .ignore();
        }
        let (mut conn, tracker) = self.pool.get();
        tracker.track(
            pipe.query_async::<()>(&mut conn)
                .instrument(redis_span("BATCH SETEX", "BATCH SETEX"))
                .await,
        )
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
