//! The distributed lock and fenced writes, against a real redis-server and
//! a real Redis Cluster (`redis_suite!`: each test runs on both).

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use shared::lock::{DistributedLock, FENCE_FIELD, FencedWriter};
use testkit::{RedisKind, TestRedis};

testkit::redis_suite!(
    fifty_concurrent_triggers_never_hold_the_lock_together,
    a_crashed_holders_lock_expires,
    the_watchdog_keeps_a_long_holders_lock,
    a_dropped_guard_releases_its_lock_without_waiting_for_the_ttl,
    the_holder_reports_its_owner_and_when_it_took_the_lock,
    only_the_holder_can_release,
    a_holder_that_lost_its_lock_cannot_overwrite_newer_writes,
    a_stale_writer_racing_a_newer_one_never_overwrites_it,
);

/// Polls (bounded) until the lock can be taken.
async fn acquire_eventually(lock: &DistributedLock) -> shared::lock::LockGuard {
    for _ in 0..200 {
        if let Some(g) = lock.try_acquire().await.unwrap() {
            return g;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the lock never became free");
}

async fn fifty_concurrent_triggers_never_hold_the_lock_together(kind: RedisKind) {
    let redis = TestRedis::start(kind).await;
    let lock = DistributedLock::new(redis.pool("lk"), "lk:recalc", Duration::from_secs(5));
    let holders = Arc::new(AtomicUsize::new(0));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let fences = Arc::new(std::sync::Mutex::new(Vec::new()));

    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (lock, holders, max_seen, fences) = (
                lock.clone(),
                holders.clone(),
                max_seen.clone(),
                fences.clone(),
            );
            tokio::spawn(async move {
                for _ in 0..20 {
                    if let Some(guard) = lock.try_acquire().await.unwrap() {
                        let now = holders.fetch_add(1, Ordering::SeqCst) + 1;
                        max_seen.fetch_max(now, Ordering::SeqCst);
                        fences.lock().unwrap().push(guard.fence());
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        holders.fetch_sub(1, Ordering::SeqCst);
                        assert!(guard.release().await.unwrap());
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }

    assert_eq!(max_seen.load(Ordering::SeqCst), 1, "two holders at once");
    let mut fences = fences.lock().unwrap().clone();
    assert!(!fences.is_empty());
    let n = fences.len();
    fences.sort_unstable();
    fences.dedup();
    assert_eq!(fences.len(), n, "a fence was handed out twice");
}

async fn a_crashed_holders_lock_expires(kind: RedisKind) {
    let redis = TestRedis::start(kind).await;
    let lock = DistributedLock::new(redis.pool("lk"), "lk:crash", Duration::from_millis(300));
    let first = lock.try_acquire().await.unwrap().unwrap();
    assert!(lock.try_acquire().await.unwrap().is_none());

    first.abandon(); // the holder dies: no release, no more extensions

    let second = acquire_eventually(&lock).await;
    assert!(second.fence() > 1);
    assert!(second.release().await.unwrap());
}

async fn the_watchdog_keeps_a_long_holders_lock(kind: RedisKind) {
    let redis = TestRedis::start(kind).await;
    let lock = DistributedLock::new(redis.pool("lk"), "lk:long", Duration::from_secs(1));
    let guard = lock.try_acquire().await.unwrap().unwrap();

    // Three and a half TTLs later, nobody else has been able to take it.
    for _ in 0..14 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(lock.try_acquire().await.unwrap().is_none());
    }
    assert!(!guard.is_lost());
    assert!(guard.release().await.unwrap());
    assert!(lock.try_acquire().await.unwrap().is_some());
}

async fn a_dropped_guard_releases_its_lock_without_waiting_for_the_ttl(kind: RedisKind) {
    let redis = TestRedis::start(kind).await;
    let lock = DistributedLock::new(redis.pool("lk"), "lk:dropped", Duration::from_secs(3600));
    let guard = lock.try_acquire().await.unwrap().unwrap();

    drop(guard); // a cancelled job: no explicit release

    // Taken again long before the hour-long TTL could run out.
    let again = acquire_eventually(&lock).await;
    assert!(again.release().await.unwrap());
}

async fn the_holder_reports_its_owner_and_when_it_took_the_lock(kind: RedisKind) {
    let redis = TestRedis::start(kind).await;
    let lock = DistributedLock::new(redis.pool("lk"), "lk:holder", Duration::from_secs(5));
    assert_eq!(lock.holder().await.unwrap(), None);
    let (mut conn, _) = redis.pool("lk").get();
    let before: (i64, i64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();

    let guard = lock.try_acquire_for("job-42").await.unwrap().unwrap();

    let holder = lock.holder().await.unwrap().unwrap();
    assert_eq!(holder.owner, "job-42");
    assert!(holder.since_ms >= before.0 * 1000, "{holder:?}");
    assert!(guard.release().await.unwrap());
    assert_eq!(lock.holder().await.unwrap(), None);
}

async fn only_the_holder_can_release(kind: RedisKind) {
    let redis = TestRedis::start(kind).await;
    let lock = DistributedLock::new(redis.pool("lk"), "lk:owner", Duration::from_secs(5));
    let guard = lock.try_acquire().await.unwrap().unwrap();

    assert!(!lock.release_token("someone-else").await.unwrap());
    assert!(
        lock.try_acquire().await.unwrap().is_none(),
        "a non-owner released it"
    );
    assert!(guard.release().await.unwrap());
}

async fn a_holder_that_lost_its_lock_cannot_overwrite_newer_writes(kind: RedisKind) {
    let redis = TestRedis::start(kind).await;
    let p = redis.pool("lk");
    let lock = DistributedLock::new(p.clone(), "lk:fenced", Duration::from_millis(200));
    let stale = lock.try_acquire().await.unwrap().unwrap();
    let stale_fence = stale.fence();
    let stale_token = stale.token().to_string();
    stale.abandon(); // paused past its TTL

    let fresh = acquire_eventually(&lock).await;
    assert!(fresh.fence() > stale_fence);
    let ttl = Duration::from_secs(60);
    let one = |value: &str| {
        vec![(
            "lk:prices:0".to_string(),
            vec![("P-1".to_string(), value.to_string())],
        )]
    };
    let new = one("new");
    assert_eq!(
        FencedWriter::connect(&p, "lk:fenced:written", fresh.fence(), ttl)
            .await
            .unwrap()
            .write(&new)
            .await
            .unwrap(),
        Some(1)
    );

    // The stale holder wakes up and tries to write and release.
    let old = one("old");
    assert_eq!(
        FencedWriter::connect(&p, "lk:fenced:written", stale_fence, ttl)
            .await
            .unwrap()
            .write(&old)
            .await
            .unwrap(),
        None
    );
    assert!(!lock.release_token(&stale_token).await.unwrap());

    let (mut conn, _) = p.get();
    let value: String = redis::cmd("HGET")
        .arg("lk:prices:0")
        .arg("P-1")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(value, "new");
    // The write gave the hash the TTL.
    let pttl: i64 = redis::cmd("PTTL")
        .arg("lk:prices:0")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pttl > 0 && pttl <= 60_000, "pttl {pttl}");
    assert!(fresh.release().await.unwrap());
}

async fn a_stale_writer_racing_a_newer_one_never_overwrites_it(kind: RedisKind) {
    let redis = TestRedis::start(kind).await;
    let p = redis.pool("lk");
    let ttl = Duration::from_secs(60);
    // Page i: 200 fields over two hashes.
    let page = |tag: &str, i: usize| -> Vec<(String, Vec<(String, String)>)> {
        (0..2)
            .map(|h| {
                let fields = (0..100)
                    .map(|k| (format!("{}", i * 100 + k), tag.to_string()))
                    .collect();
                (format!("lk:race:{h}"), fields)
            })
            .collect()
    };
    // The stale holder (fence 1) keeps writing every page, over and over,
    // until it is refused; the newer one (fence 2) writes each page once.
    let stale = {
        let p = p.clone();
        tokio::spawn(async move {
            let mut w = FencedWriter::connect(&p, "lk:race:written", 1, ttl)
                .await
                .unwrap();
            let mut round = 0usize;
            loop {
                for i in 0..20 {
                    if w.write(&page("old", i)).await.unwrap().is_none() {
                        return round;
                    }
                }
                round += 1;
            }
        })
    };
    let mut fresh = FencedWriter::connect(&p, "lk:race:written", 2, ttl)
        .await
        .unwrap();
    for i in 0..20 {
        assert_eq!(fresh.write(&page("new", i)).await.unwrap(), Some(200));
    }
    stale.await.unwrap();

    // Whatever the interleaving, every field holds the newer holder's value.
    let (mut conn, _) = p.get();
    for h in 0..2 {
        let mut fields: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(format!("lk:race:{h}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        // On a cluster the hash remembers the newest fence that wrote it.
        let fence = fields.remove(FENCE_FIELD);
        if kind == RedisKind::Cluster {
            assert_eq!(fence.as_deref(), Some("2"));
        }
        assert_eq!(fields.len(), 2_000);
        assert!(fields.values().all(|v| v == "new"), "a stale write won");
    }
}
