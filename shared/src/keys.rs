//! Redis key builders.
//!
//! Every key the services use is built here, under one namespace prefix
//! (`REDIS_NAMESPACE`, default `pricing`). Two deployments, or two test runs,
//! can therefore share one Redis without seeing each other's data, and no
//! service can spell a key differently from another.

/// How many hashes the price cache is spread over; see [`Keys::price`].
///
/// Part of the cache's key format, like [`price_bucket_of`]: a service that
/// spread prices differently would read other hashes than the ones written,
/// so it is a constant, not a setting. Changing it moves every entry (the
/// cache starts cold).
pub const PRICE_BUCKETS: u32 = 256;

/// The bucket (`0..PRICE_BUCKETS`) whose hash holds a product's cached
/// price: 32-bit FNV-1a of the id's bytes, modulo [`PRICE_BUCKETS`]. Stable
/// across processes, machines and releases (it is part of the key format).
pub fn price_bucket_of(product_id: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in product_id.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % PRICE_BUCKETS
}

/// Builds the namespaced Redis keys of one deployment.
#[derive(Debug, Clone)]
pub struct Keys {
    namespace: String,
    price_prefix: String,
}

impl Keys {
    /// Key builder for `namespace` (e.g. `pricing`).
    pub fn new(namespace: impl Into<String>) -> Self {
        let namespace = namespace.into();
        let price_prefix = format!("{namespace}:prices:");
        Self {
            namespace,
            price_prefix,
        }
    }

    /// The namespace every key starts with.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The hash that holds the cached price of one product, in the field
    /// named by the product id: `{ns}:prices:{bucket}`, the bucket from
    /// [`price_bucket_of`]. Prices live in [`PRICE_BUCKETS`] hashes rather
    /// than a key each because Redis sets many fields of one hash for a
    /// fraction of what as many keys with a TTL each cost it (see
    /// [`crate::cache`]).
    pub fn price(&self, product_id: &str) -> String {
        self.price_bucket(price_bucket_of(product_id))
    }

    /// The hash of one bucket (`0..PRICE_BUCKETS`) of the price cache.
    pub fn price_bucket(&self, bucket: u32) -> String {
        let mut key = String::with_capacity(self.price_prefix.len() + 3);
        key.push_str(&self.price_prefix);
        key.push_str(itoa::Buffer::new().format(bucket));
        key
    }

    /// The newest lock fence that has written prices: writes with an older
    /// fence are refused (see [`crate::lock::FencedWriter`]).
    pub fn price_fence(&self) -> String {
        format!("{}:price-fence", self.namespace)
    }

    /// The lock that lets one full recalculation run at a time.
    pub fn recalc_lock(&self) -> String {
        format!("{}:lock:recalculate_all_prices", self.namespace)
    }

    /// The stream every api-published (and listener-ingested) market event
    /// is appended to; the listeners' consumer group reads it.
    pub fn event_stream(&self) -> String {
        format!("{}:events:stream", self.namespace)
    }

    /// Set once an event's jobs are queued, so a redelivered or duplicate
    /// event is not processed twice.
    pub fn event_done(&self, event_id: &str) -> String {
        format!("{}:events:done:{event_id}", self.namespace)
    }

    /// Claimed by the listener replica that ingests a channel-only message.
    pub fn event_ingest_claim(&self, key: &str) -> String {
        format!("{}:events:claim:{key}", self.namespace)
    }

    /// The capped list of rejected event messages, newest first.
    pub fn event_dead_letters(&self) -> String {
        format!("{}:events:dead", self.namespace)
    }

    /// A pattern matching every price-cache hash of this namespace, for SCAN.
    pub fn price_pattern(&self) -> String {
        format!("{}*", self.price_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_live_under_the_namespace() {
        let keys = Keys::new("pricing");
        assert_eq!(keys.price_bucket(7), "pricing:prices:7");
        assert_eq!(keys.price_pattern(), "pricing:prices:*");
        assert_eq!(Keys::new("t1").price_bucket(255), "t1:prices:255");
    }

    #[test]
    fn the_bucket_of_a_product_never_changes() {
        // Part of the key format: these are what every release must compute
        // (FNV-1a 32 of "P-1" is 0x829ebc95, of "" the offset basis).
        assert_eq!(price_bucket_of("P-1"), 0x829e_bc95 % PRICE_BUCKETS);
        assert_eq!(price_bucket_of(""), 0x811c_9dc5 % PRICE_BUCKETS);
        let keys = Keys::new("pricing");
        assert_eq!(
            keys.price("P-1"),
            format!("pricing:prices:{}", 0x829e_bc95_u32 % PRICE_BUCKETS)
        );
    }

    #[test]
    fn products_spread_over_every_bucket() {
        let mut counts = vec![0u32; PRICE_BUCKETS as usize];
        for i in 0..100_000 {
            counts[price_bucket_of(&format!("P{i:07}")) as usize] += 1;
        }
        let (min, max) = (counts.iter().min(), counts.iter().max());
        // 390.6 a bucket on average; a fair hash stays well within 2x.
        assert!(min > Some(&200) && max < Some(&600), "{min:?} {max:?}");
    }
}
