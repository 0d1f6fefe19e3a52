//! Redis key builders.
//!
//! Every key the services use is built here, under one namespace prefix
//! (`REDIS_NAMESPACE`, default `pricing`). Two deployments, or two test runs,
//! can therefore share one Redis without seeing each other's data, and no
//! service can spell a key differently from another.
//!
//! **Redis Cluster.** Keys that one script or one pipeline touches together
//! share a hash tag (the part in `{…}`), so they live in one slot: a queue's
//! keys (`{ns:queue}:…`, see `queue`), the event keys (`{ns:events}:…`),
//! the recalculation lock with its fence, time and owner
//! (`{ns:lock:recalculate_all_prices}…`). The 256 price hashes have no tag,
//! so they spread over the cluster's slots; every write to one is a
//! single-key command or script. [`hash_slot`] computes a key's slot.

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

/// The Redis Cluster hash slot (`0..16384`) of `key`: CRC16 (XMODEM) of the
/// key, or of the part between the first `{` and the next `}` when that is
/// not empty (a hash tag), modulo 16384, as every cluster node computes it.
/// Keys that must meet in one script or transaction share a hash tag.
pub fn hash_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let close = key[open + 1..].iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &key[open + 1..open + 1 + close])
    });
    let mut crc: u16 = 0;
    for &byte in tagged.unwrap_or(key) {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16_384
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

    /// On one server, the newest lock fence that has written prices:
    /// writes with an older fence are refused (see
    /// [`crate::lock::FencedWriter`]; a cluster keeps the fence in each
    /// price hash instead).
    pub fn price_fence(&self) -> String {
        format!("{}:price-fence", self.namespace)
    }

    /// The lock that lets one full recalculation run at a time, in a hash
    /// tag of its own: its fence counter, time and owner are this key plus
    /// a suffix (see [`crate::lock::DistributedLock`]), in the same slot.
    pub fn recalc_lock(&self) -> String {
        format!("{{{}:lock:recalculate_all_prices}}", self.namespace)
    }

    /// The stream every api-published (and listener-ingested) market event
    /// is appended to; the listeners' consumer group reads it.
    pub fn event_stream(&self) -> String {
        format!("{{{}:events}}:stream", self.namespace)
    }

    /// Set once an event's jobs are queued, so a redelivered or duplicate
    /// event is not processed twice.
    pub fn event_done(&self, event_id: &str) -> String {
        format!("{{{}:events}}:done:{event_id}", self.namespace)
    }

    /// Claimed by the listener replica that ingests a channel-only message.
    pub fn event_ingest_claim(&self, key: &str) -> String {
        format!("{{{}:events}}:claim:{key}", self.namespace)
    }

    /// The capped list of rejected event messages, newest first. Not
    /// `…:dead`: the `events` job queue shares this hash tag and keeps its
    /// dead set there (see [`Self::legacy_event_dead_letters`]).
    pub fn event_dead_letters(&self) -> String {
        format!("{{{}:events}}:dead_letters", self.namespace)
    }

    /// Where listeners before the named queues kept their dead letters, the
    /// key the `events` queue's dead set now uses; the listener moves a list
    /// found there to [`Self::event_dead_letters`] at startup.
    pub fn legacy_event_dead_letters(&self) -> String {
        format!("{{{}:events}}:dead", self.namespace)
    }

    /// The pub/sub channel of worker control messages (`revoke <queue> <id>`).
    pub fn control_channel(&self) -> String {
        format!("{}:control", self.namespace)
    }

    /// The live worker registry, in one slot for the scripts that write it:
    /// worker id → its report (JSON), → its last heartbeat (ms, Redis
    /// clock), and the ids by the time their registration expires.
    pub fn workers(&self) -> [String; 3] {
        let tag = format!("{{{}:workers}}", self.namespace);
        [
            format!("{tag}:info"),
            format!("{tag}:beats"),
            format!("{tag}:expires"),
        ]
    }

    /// The prefix every price-cache hash starts with (`{ns}:prices:`), for
    /// `CLIENT TRACKING … PREFIX`.
    pub fn price_prefix(&self) -> &str {
        &self.price_prefix
    }

    /// The bucket of a price-cache hash's key, or `None` for any other key.
    pub fn price_bucket_of_key(&self, key: &str) -> Option<u32> {
        let digits = key.strip_prefix(self.price_prefix.as_str())?;
        if digits.is_empty() || digits.len() > 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().filter(|b| *b < PRICE_BUCKETS)
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
    fn keys_used_together_share_a_slot() {
        let keys = Keys::new("pricing");
        let events = hash_slot(keys.event_stream().as_bytes());
        for key in [
            keys.event_done("01J"),
            keys.event_ingest_claim("id:01J"),
            keys.event_dead_letters(),
        ] {
            assert_eq!(hash_slot(key.as_bytes()), events, "{key}");
        }
        let lock = keys.recalc_lock();
        for suffix in [":fence", ":since", ":owner"] {
            assert_eq!(
                hash_slot(format!("{lock}{suffix}").as_bytes()),
                hash_slot(lock.as_bytes())
            );
        }
        // The price hashes spread over many slots.
        let slots: std::collections::HashSet<u16> = (0..PRICE_BUCKETS)
            .map(|b| hash_slot(keys.price_bucket(b).as_bytes()))
            .collect();
        assert!(slots.len() > 200, "{}", slots.len());
    }

    #[test]
    fn hash_slots_follow_the_cluster_spec() {
        // The examples of the Redis Cluster specification and redis-cli's
        // CLUSTER KEYSLOT.
        assert_eq!(hash_slot(b"123456789"), 0x31c3);
        assert_eq!(hash_slot(b"foo"), 12_182);
        assert_eq!(hash_slot(b"{user1000}.following"), hash_slot(b"user1000"));
        assert_eq!(
            hash_slot(b"{user1000}.followers"),
            hash_slot(b"{user1000}.following")
        );
        // An empty tag is no tag: the whole key counts.
        assert_ne!(hash_slot(b"foo{}{bar}"), hash_slot(b"bar"));
        assert_eq!(hash_slot(b"foo{{bar}}zap"), hash_slot(b"{bar"));
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
