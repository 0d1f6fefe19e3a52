//! What the services rely on from a Redis Cluster.

use std::time::Duration;

use chrono::Utc;
use futures::StreamExt as _;
use shared::cache::near::NearCache;
use shared::cache::{CachedPrice, Lookup, PriceCache};
use shared::keys::{Keys, hash_slot};
use shared::redis_pool::RedisPool;
use testkit::{RedisCluster, RedisKind, TestRedis};

testkit::redis_suite!(the_price_cache_reads_and_writes_many_entries_across_hashes);

#[tokio::test]
async fn our_hash_slots_are_the_clusters() {
    let cluster = RedisCluster::start().await;
    let mut conn = cluster.connection().await;
    let keys = Keys::new("pricing");
    let names = [
        keys.event_stream(),
        keys.event_done("01JD0000"),
        keys.recalc_lock(),
        format!("{}:fence", keys.recalc_lock()),
        keys.price_bucket(0),
        keys.price_bucket(255),
        "{pricing:default}:wait".to_string(),
        "foo".to_string(),
        "a{}b".to_string(),
    ];
    for key in names {
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(hash_slot(key.as_bytes()), slot, "{key}");
    }
}

async fn the_price_cache_reads_and_writes_many_entries_across_hashes(kind: RedisKind) {
    let redis = TestRedis::start(kind).await;
    let cache = PriceCache::new(redis.pool("pc"), Keys::new("pc"), Duration::from_secs(60));
    let now = Utc::now();
    let entries: Vec<CachedPrice> = (0..2_000)
        .map(|i| CachedPrice::new(&format!("P-{i}"), 100 + i, now))
        .collect();
    let ids: Vec<String> = entries.iter().map(|e| e.product_id.clone()).collect();

    // Many hashes (on a cluster: many slots on three primaries) at once.
    cache.put_many(&entries).await.unwrap();
    let got = cache.get_many(&ids).await.unwrap();

    assert_eq!(got.len(), entries.len());
    for (lookup, entry) in got.into_iter().zip(&entries) {
        assert_eq!(lookup, Lookup::Hit(entry.clone()));
    }
    let missing = cache
        .get_many(&["nope".to_string(), ids[7].clone()])
        .await
        .unwrap();
    assert_eq!(missing[0], Lookup::Miss);
    assert_eq!(missing[1], Lookup::Hit(entries[7].clone()));
}

#[tokio::test]
async fn a_message_published_through_any_node_reaches_a_subscriber_on_another() {
    let cluster = RedisCluster::start().await;
    let pool = RedisPool::new(&cluster.settings("ps")).unwrap();
    // The subscriber sits on the first seed node; publishes go through the
    // cluster connection to whichever node it picks, and straight to each
    // of the other nodes.
    let mut sub = pool.pubsub().await.unwrap();
    sub.subscribe("market_events").await.unwrap();
    let mut messages = sub.on_message();
    let (mut conn, _) = pool.get();
    testkit::publish(&mut conn, "market_events", "via-cluster").await;
    let mut expected = vec!["via-cluster".to_string()];
    for port in cluster.ports().into_iter().skip(1) {
        let mut node = redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let text = format!("via-{port}");
        testkit::publish(&mut node, "market_events", &text).await;
        expected.push(text);
    }
    let mut got = Vec::new();
    while got.len() < expected.len() {
        let msg = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .expect("a published message never arrived")
            .unwrap();
        got.push(msg.get_payload::<String>().unwrap());
    }
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_the_near_cache_cannot_reach_is_left_out_and_the_cache_serves_on() {
    // Arrange: a near cache tracking every node, holding a price from
    // each primary.
    let cluster = RedisCluster::start().await;
    let pool = RedisPool::new(&cluster.settings("reach")).unwrap();
    let keys = Keys::new("reach");
    let near = NearCache::tracking(100, keys.clone(), &pool).unwrap();
    let cache =
        PriceCache::new(pool, keys.clone(), Duration::from_secs(3600)).with_near(near.clone());
    let ids = super::one_per_primary(&cluster, "reach").await;
    let mut entries = Vec::new();
    for id in &ids {
        let entry = CachedPrice::new(id, 1_000, Utc::now());
        cache.put(&entry).await.unwrap();
        super::read_until_kept(&cache, &near, &entry).await;
        entries.push(entry);
    }

    // Act: one replica stops answering its clients (`CLIENT PAUSE ALL`,
    // for longer than the test) while it goes on replicating and the
    // cluster, which talks over its bus, goes on counting it as healthy.
    let replica = cluster
        .topology()
        .await
        .into_iter()
        .find(|n| !n.primary)
        .unwrap()
        .port;
    let mut conn = redis::Client::open(format!("redis://127.0.0.1:{replica}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(300_000)
        .arg("ALL")
        .query_async(&mut conn)
        .await
        .unwrap();

    // Assert: its unanswered PING flushes the near cache; it then tracks
    // the other five nodes and serves again, and every primary's writes
    // still reach it.
    super::wait_dropped(&near, &ids[0]).await;
    for entry in &entries {
        super::read_until_kept(&cache, &near, entry).await;
    }
    for entry in &entries {
        let newer = CachedPrice::new(&entry.product_id, 2_000, Utc::now());
        cache.put(&newer).await.unwrap();
        super::wait_dropped(&near, &entry.product_id).await;
        super::read_until_kept(&cache, &near, &newer).await;
    }
}
