//! The recalculation jobs over a real catalog and a real Redis.

use std::time::Duration;

use shared::cache::CachedPrice;
use shared::jobs::{RecalculateAllPrices, RecalculatePrices};
use shared::lock::DistributedLock;
use shared::pricing::compute_price_cents;
use shared::queue::{JobState, NewJob, QueueSettings};
use shared::store::CatalogStore;
use shared::testing::{RedisServer, temp_store};

use crate::helpers::{NS, queue, settings, start, wait_for};

const LONG: Duration = Duration::from_secs(60);

async fn cached(redis: &RedisServer, id: &str) -> Option<CachedPrice> {
    let mut conn = redis.connection().await;
    let raw: Option<String> = redis::cmd("GET")
        .arg(format!("{NS}:price:{id}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    raw.map(|r| CachedPrice::decode(id, r.as_bytes()).expect("a valid cache entry"))
}

#[tokio::test]
async fn a_full_recalculation_caches_every_price() {
    // Arrange: a catalog of 12,000 products (more than two pages).
    let redis = RedisServer::start().await;
    let (store, _dir, url) = temp_store().await;
    shared::store::seed::seed(store.as_ref(), 12_000)
        .await
        .unwrap();
    let mut s = settings(&redis, QueueSettings::default());
    s.database.url = url;
    let registry = worker::full_registry(&s).await.unwrap();
    let w = start(s, registry).await;
    let q = queue(&redis, QueueSettings::default());

    // Act
    let id = q
        .push(NewJob::of(&RecalculateAllPrices {}).unwrap())
        .await
        .unwrap()
        .id;
    wait_for(&q, &id, &[JobState::Succeeded], LONG).await;

    // Assert: the result, and every product's next read is a hit with its price.
    let status = q.status(&id).await.unwrap().unwrap();
    let result = status.result.unwrap();
    assert_eq!(result["status"], "succeeded");
    assert_eq!(result["updated_count"], 12_000);
    assert!(result["duration_ms"].is_u64());
    for i in [1u64, 5_000, 5_001, 12_000] {
        let pid = format!("P-{i}");
        let product = store.product(&pid).await.unwrap().unwrap();
        let signals = store.market_signals(&pid).await.unwrap();
        let entry = cached(&redis, &pid)
            .await
            .unwrap_or_else(|| panic!("{pid} not cached"));
        assert_eq!(
            entry.price_cents,
            compute_price_cents(&product, &signals),
            "{pid}"
        );
    }
    let mut conn = redis.connection().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{NS}:price:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 12_000);
    w.stop().await;
}

#[tokio::test]
async fn a_recalculation_is_skipped_while_another_holds_the_lock() {
    let redis = RedisServer::start().await;
    let (store, _dir, url) = temp_store().await;
    shared::store::seed::seed(store.as_ref(), 10).await.unwrap();
    let mut s = settings(&redis, QueueSettings::default());
    s.database.url = url;
    let registry = worker::full_registry(&s).await.unwrap();
    let w = start(s, registry).await;
    let q = queue(&redis, QueueSettings::default());
    let pool = q.pool().clone();
    let lock = DistributedLock::new(
        pool,
        shared::keys::Keys::new(NS).recalc_lock(),
        Duration::from_secs(30),
    );
    let held = lock.try_acquire().await.unwrap().unwrap();

    let id = q
        .push(NewJob::of(&RecalculateAllPrices {}).unwrap())
        .await
        .unwrap()
        .id;
    wait_for(&q, &id, &[JobState::Skipped], LONG).await;

    let result = q.status(&id).await.unwrap().unwrap().result.unwrap();
    assert_eq!(
        result,
        serde_json::json!({"status": "skipped", "reason": "locked"})
    );
    assert!(
        cached(&redis, "P-1").await.is_none(),
        "a skipped run wrote prices"
    );
    held.release().await.unwrap();
    w.stop().await;
}

#[tokio::test]
async fn a_targeted_recalculation_caches_the_named_products() {
    let redis = RedisServer::start().await;
    let (store, _dir, url) = temp_store().await;
    shared::store::seed::seed(store.as_ref(), 50).await.unwrap();
    let mut s = settings(&redis, QueueSettings::default());
    s.database.url = url;
    let registry = worker::full_registry(&s).await.unwrap();
    let w = start(s, registry).await;
    let q = queue(&redis, QueueSettings::default());

    let job = RecalculatePrices {
        product_ids: vec!["P-3".into(), "P-7".into(), "P-404".into()],
    };
    let id = q.push(NewJob::of(&job).unwrap()).await.unwrap().id;
    wait_for(&q, &id, &[JobState::Succeeded], LONG).await;

    let result = q.status(&id).await.unwrap().unwrap().result.unwrap();
    assert_eq!(result["updated_count"], 2);
    assert!(cached(&redis, "P-3").await.is_some());
    assert!(cached(&redis, "P-7").await.is_some());
    assert!(cached(&redis, "P-4").await.is_none());
    w.stop().await;
}
