//! Coalescing: a burst of events becomes few jobs, and none of the
//! burst's data is dropped on the way.

use std::time::Duration;

use shared::store::CatalogStore;
use testkit::{RedisServer, seeded_store};

use crate::event;
use crate::helpers::*;

#[tokio::test]
async fn a_burst_is_coalesced_and_keeps_every_events_data() {
    let redis = RedisServer::start().await;
    let (store, _dir, url) = seeded_store(10).await;
    let mut s = settings(&redis, &url);
    s.coalesce_window = Duration::from_secs(2);
    let l = start_listener(s).await;
    let bus = bus(&redis);

    // 100 events about 5 products, published as fast as possible.
    for i in 0..100 {
        let id = format!("P-{}", 1 + i % 5);
        let e = event(
            serde_json::json!({"kind": "demand_changed", "data": {"demand": {id: f64::from(i) / 10.0}}}),
        );
        bus.publish(&e).await.unwrap();
    }

    eventually(LONG, "all events processed", || async {
        let mut conn = redis.connection().await;
        let info: redis::Value = redis::cmd("XPENDING")
            .arg(shared::keys::Keys::new(NS).event_stream())
            .arg("listeners")
            .query_async(&mut conn)
            .await
            .unwrap();
        let read: u64 = redis::cmd("XLEN")
            .arg(shared::keys::Keys::new(NS).event_stream())
            .query_async(&mut conn)
            .await
            .unwrap();
        let pending = match info {
            redis::Value::Array(v) => redis::from_redis_value_ref::<u64>(&v[0]).unwrap_or(1),
            _ => 1,
        };
        read == 100 && pending == 0 && product_mentions(&redis).await.len() == 5
    })
    .await;
    let jobs = queued_jobs(&redis).await;
    // The first event's job at once, then the rest of the burst together.
    assert!(
        jobs.len() <= 2,
        "{} jobs for a burst of 100 events: {jobs:?}",
        jobs.len()
    );
    // The last value per product won, none was dropped.
    for p in 1..=5u32 {
        let last = (0..100u32).filter(|i| 1 + i % 5 == p).max().unwrap();
        let s = store.market_signals(&format!("P-{p}")).await.unwrap();
        assert_eq!(s.demand_index, Some(f64::from(last) / 10.0), "P-{p}");
    }
    l.stop().await;
}
