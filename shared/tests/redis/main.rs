//! The Redis plumbing itself: TLS against a real `redis-server --tls-port`
//! and a Redis Cluster that speaks TLS only, with a CA made in the test;
//! and a real Redis Cluster (three primaries, three replicas): hash slots,
//! the price cache across slots, pub/sub across nodes, the near cache
//! tracking every node (`WAIT` and a primary killed under load are tested
//! with the queue, in `queue/tests/queue/failover.rs`).

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

use std::time::Duration;

use chrono::Utc;
use shared::cache::near::NearCache;
use shared::cache::{CachedPrice, Lookup, PriceCache};
use testkit::{RedisCluster, eventually};

mod cluster;
mod tls;

/// A guard against a hang, never a timing check.
const LONG: Duration = Duration::from_secs(60);

/// Product ids, one whose price hash each primary of `cluster` holds
/// under `namespace`.
async fn one_per_primary(cluster: &RedisCluster, namespace: &str) -> Vec<String> {
    let found = cluster.product_per_primary(namespace, 200).await;
    assert_eq!(found.len(), 3, "{found:?}");
    found.into_iter().map(|(id, _)| id).collect()
}

/// Reads `entry`'s product through `cache` until `near` keeps it: a read
/// whose ticket predates an invalidation (a write's own, say) is, rightly,
/// not kept, and nothing is kept while tracking is down.
async fn read_until_kept(cache: &PriceCache, near: &NearCache, entry: &CachedPrice) {
    let id = entry.product_id.as_str();
    eventually(LONG, "the price is kept in the near cache", || async {
        assert_eq!(cache.get(id).await.unwrap(), Lookup::Hit(entry.clone()));
        near.get(id, Utc::now()).as_ref() == Some(entry)
    })
    .await;
}

/// Waits until `near` no longer serves `id`: a write's invalidation, or a
/// flush, has arrived.
async fn wait_dropped(near: &NearCache, id: &str) {
    eventually(LONG, "the near cache drops the entry", || async {
        near.get(id, Utc::now()).is_none()
    })
    .await;
}
