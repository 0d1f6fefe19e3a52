//! The recalculation jobs over a real catalog and a real Redis.

use std::time::Duration;

use queue::{JobState, QueueSettings};
use shared::cache::CachedPrice;
use shared::jobs::{RecalculateAllPrices, RecalculatePrices, recalculate_all_job};
use shared::lock::DistributedLock;
use shared::pricing::compute_price_cents;
use shared::store::CatalogStore;
use testkit::{RedisServer, seeded_store};

use crate::helpers::{NS, cached, catalog_settings, push, queue, start_full, wait_for, wait_until};

const LONG: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_full_recalculation_caches_every_price() {
    // Arrange: a catalog of 12,000 products (more than two pages).
    let redis = RedisServer::start().await;
    let (store, _dir, url) = seeded_store(12_000).await;
    let w = start_full(catalog_settings(&redis, url)).await;
    let q = queue(&redis, QueueSettings::default());

    // Act
    let id = push(&q, &RecalculateAllPrices {}).await;
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
    // Exactly one entry per product, spread over the cache's hashes, each
    // with the cache TTL.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(shared::keys::Keys::new(NS).price_pattern())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), shared::keys::PRICE_BUCKETS as usize);
    let mut entries = 0;
    for key in &keys {
        let len: usize = redis::cmd("HLEN")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let pttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(pttl > 0, "{key} has no TTL");
        entries += len;
    }
    assert_eq!(entries, 12_000);
    w.stop().await;
}

fn recalc_lock(q: &queue::Queue) -> DistributedLock {
    recalc_lock_for(q, Duration::from_secs(30))
}

/// The recalculation lock, taken for `ttl`.
fn recalc_lock_for(q: &queue::Queue, ttl: Duration) -> DistributedLock {
    DistributedLock::new(
        q.pool().clone(),
        shared::keys::Keys::new(NS).recalc_lock(),
        ttl,
    )
}

#[tokio::test]
async fn a_recalculation_is_skipped_when_one_that_started_after_it_holds_the_lock() {
    let redis = RedisServer::start().await;
    let (_store, _dir, url) = seeded_store(10).await;
    let q = queue(&redis, QueueSettings::default());
    // Triggered first; then another recalculation takes the lock (it reads
    // data at least as new as this trigger saw) before a worker picks it up.
    let id = push(&q, &RecalculateAllPrices {}).await;
    let held = recalc_lock(&q).try_acquire().await.unwrap().unwrap();
    let w = start_full(catalog_settings(&redis, url)).await;

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
async fn a_trigger_while_a_recalculation_runs_waits_for_it_and_further_triggers_join() {
    let redis = RedisServer::start().await;
    let (_store, _dir, url) = seeded_store(10).await;
    let retry = shared::jobs::RECALC_RETRY;
    let w = start_full(catalog_settings(&redis, url)).await;
    let q = queue(&redis, QueueSettings::default());
    // A recalculation is running (it may have read data older than the trigger).
    let running = recalc_lock(&q).try_acquire().await.unwrap().unwrap();

    let first = q.push(recalculate_all_job(retry)).await.unwrap();
    // The worker picks it up, finds the lock held by an older run, and defers.
    let waiting =
        serde_json::json!({"status": "waiting", "reason": "another recalculation is running"});
    let st = wait_until(&q, &first.id, LONG, "never deferred", |st| {
        st.result.as_ref() == Some(&waiting)
    })
    .await;
    assert!(matches!(
        st.record.state,
        JobState::Scheduled | JobState::Pending | JobState::Running
    ));
    assert!(st.record.attempts <= 1, "a deferral spent an attempt");
    // Fifty concurrent further triggers all join the waiting one.
    let pushes: Vec<_> = (0..50)
        .map(|_| {
            let q = q.clone();
            tokio::spawn(async move { q.push(recalculate_all_job(retry)).await.unwrap() })
        })
        .collect();
    for push in pushes {
        let again = push.await.unwrap();
        assert!(again.duplicate);
        assert_eq!(again.id, first.id);
    }
    assert!(cached(&redis, "P-1").await.is_none(), "ran while locked");

    // The running one finishes: the waiting one runs, once, and caches prices.
    running.release().await.unwrap();
    let record = wait_for(&q, &first.id, &[JobState::Succeeded], LONG).await;
    assert_eq!(record.attempts, 1);
    let result = q.status(&first.id).await.unwrap().unwrap().result.unwrap();
    assert_eq!(result["updated_count"], 10);
    assert!(cached(&redis, "P-1").await.is_some());
    let depths = q.depths().await.unwrap();
    assert_eq!((depths.succeeded_total, depths.skipped_total), (1, 0));
    w.stop().await;
}

#[tokio::test]
async fn a_targeted_recalculation_caches_the_named_products() {
    let redis = RedisServer::start().await;
    let (_store, _dir, url) = seeded_store(50).await;
    let w = start_full(catalog_settings(&redis, url)).await;
    let q = queue(&redis, QueueSettings::default());

    let job = RecalculatePrices {
        product_ids: vec!["P-3".into(), "P-7".into(), "P-404".into()],
    };
    let id = push(&q, &job).await;
    wait_for(&q, &id, &[JobState::Succeeded], LONG).await;

    let result = q.status(&id).await.unwrap().unwrap().result.unwrap();
    assert_eq!(result["updated_count"], 2);
    assert!(cached(&redis, "P-3").await.is_some());
    assert!(cached(&redis, "P-7").await.is_some());
    assert!(cached(&redis, "P-4").await.is_none());
    w.stop().await;
}

#[tokio::test]
async fn a_recalculation_whose_earlier_attempt_died_holding_the_lock_runs_once_it_expires() {
    // Arrange: the job's own first attempt took the lock and its worker died
    // (no release, no more extensions) after the job was queued.
    let redis = RedisServer::start().await;
    let (_store, _dir, url) = seeded_store(10).await;
    let q = queue(&redis, QueueSettings::default());
    let id = push(&q, &RecalculateAllPrices {}).await;
    let short = recalc_lock_for(&q, Duration::from_secs(2));
    short.try_acquire_for(&id).await.unwrap().unwrap().abandon();

    // Act
    let w = start_full(catalog_settings(&redis, url)).await;

    // Assert: not skipped (the lock is its own dead attempt's), but run after
    // the lock expired, without spending an attempt on the wait.
    let record = wait_for(&q, &id, &[JobState::Succeeded, JobState::Skipped], LONG).await;
    assert_eq!(record.state, JobState::Succeeded);
    assert_eq!(record.attempts, 1);
    assert!(cached(&redis, "P-1").await.is_some());
    w.stop().await;
}

#[tokio::test]
async fn a_targeted_recalculation_during_an_older_full_run_writes_at_once_and_again_after_it() {
    let redis = RedisServer::start().await;
    let (_store, _dir, url) = seeded_store(10).await;
    let w = start_full(catalog_settings(&redis, url)).await;
    let q = queue(&redis, QueueSettings::default());
    // A full recalculation is running; it read the catalog before the event.
    let running = recalc_lock(&q).try_acquire().await.unwrap().unwrap();

    let job = RecalculatePrices {
        product_ids: vec!["P-3".into()],
    };
    let id = push(&q, &job).await;

    // The price is written at once, and the job waits to write it again.
    let st = wait_until(&q, &id, LONG, "never waited", |st| {
        st.result.as_ref().is_some_and(|r| r["status"] == "waiting")
    })
    .await;
    assert_eq!(st.result.unwrap()["updated_count"], 1);
    assert_ne!(st.record.state, JobState::Succeeded);
    let first = cached(&redis, "P-3").await.expect("written at once");

    // The older run finishes (after writing its stale page); the job runs
    // again and its price is the one left in the cache.
    let mut conn = redis.connection().await;
    let stale = CachedPrice::new("P-3", 1, chrono::Utc::now()).encode();
    let _: () = redis::cmd("HSET")
        .arg(shared::keys::Keys::new(NS).price("P-3"))
        .arg("P-3")
        .arg(stale)
        .query_async(&mut conn)
        .await
        .unwrap();
    running.release().await.unwrap();
    let record = wait_for(&q, &id, &[JobState::Succeeded], LONG).await;
    assert_eq!(record.attempts, 1, "the wait spent no attempt");
    let last = cached(&redis, "P-3").await.unwrap();
    assert_eq!(last.price_cents, first.price_cents);
    assert_ne!(last.price_cents, 1);
    w.stop().await;
}
