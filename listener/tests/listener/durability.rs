//! No event is lost: events wait in the stream while no listener runs, and
//! survive Redis restarting (with AOF), under a running listener or not.

use std::time::Duration;

use shared::events::MarketEvent;
use shared::store::CatalogStore;
use testkit::{RedisServer, seeded_store};

use crate::event;
use crate::helpers::*;

#[tokio::test]
async fn events_published_while_no_listener_runs_are_processed_when_it_starts() {
    let redis = RedisServer::start().await;
    let (store, _dir, url) = seeded_store(10).await;
    let bus = bus(&redis);
    // No listener has ever run: no consumer group exists yet.
    for i in 1..=3 {
        let e = event(serde_json::json!({
            "kind": "demand_changed", "data": {"demand": {format!("P-{i}"): 1.5}}
        }));
        assert_eq!(bus.publish(&e).await.unwrap().receivers, 0);
    }

    let l = start_listener(settings(&redis, &url)).await;

    eventually(LONG, "jobs for the three products", || async {
        let m = product_mentions(&redis).await;
        (1..=3).all(|i| m.get(&format!("P-{i}")) == Some(&1))
    })
    .await;
    for i in 1..=3 {
        let s = store.market_signals(&format!("P-{i}")).await.unwrap();
        assert_eq!(s.demand_index, Some(1.5));
    }
    l.stop().await;

    // Stopped again: the next event waits for the next start.
    let e = event(serde_json::json!({"kind": "stock_changed", "data": {"stock": {"P-9": 0}}}));
    bus.publish(&e).await.unwrap();
    let l = start_listener(settings(&redis, &url)).await;
    eventually(LONG, "the job for P-9", || async {
        product_mentions(&redis).await.get("P-9") == Some(&1)
    })
    .await;
    assert_eq!(store.product("P-9").await.unwrap().unwrap().stock, 0);
    l.stop().await;
}

#[tokio::test]
async fn a_redis_restart_with_aof_loses_no_events() {
    let mut redis = RedisServer::start_persistent().await;
    let (store, _dir, url) = seeded_store(100).await;
    let demand = |i: u32| {
        event(
            serde_json::json!({"kind": "demand_changed", "data": {"demand": {format!("P-{i}"): 2.0}}}),
        )
    };
    let bus = bus(&redis);

    // Events 1-25 while a listener runs; 26-50 while none does, so they
    // wait, unprocessed, in the stream (and the AOF) through the restart.
    let l = start_listener(settings(&redis, &url)).await;
    for i in 1..=25 {
        bus.publish(&demand(i)).await.unwrap();
    }
    l.stop().await;
    for i in 26..=50 {
        bus.publish(&demand(i)).await.unwrap();
    }
    redis.restart().await;

    // A new listener picks them up; events 51-75 go through the stream and
    // 76-90 by raw PUBLISH once it is subscribed.
    let l = start_listener(settings(&redis, &url)).await;
    wait_for_subscriber(&redis, "market_events").await;
    for i in 51..=75 {
        publish_when_redis_answers(&bus, &demand(i)).await;
    }
    for i in 76..=90 {
        redis_cli_publish(&redis, "market_events", &demand(i).encode(false));
    }
    eventually(LONG, "products 1-90 queued", || async {
        product_mentions(&redis).await.len() == 90
    })
    .await;

    // Redis restarts under the running listener: it reconnects, subscribes
    // again and resumes the stream.
    redis.restart().await;
    for i in 91..=95 {
        publish_when_redis_answers(&bus, &demand(i)).await;
    }
    wait_for_subscriber(&redis, "market_events").await;
    for i in 96..=100 {
        redis_cli_publish(&redis, "market_events", &demand(i).encode(false));
    }

    eventually(LONG, "all 100 products queued", || async {
        product_mentions(&redis).await.len() == 100
    })
    .await;
    for i in [1, 26, 50, 51, 76, 91, 100] {
        let s = store.market_signals(&format!("P-{i}")).await.unwrap();
        assert_eq!(s.demand_index, Some(2.0), "P-{i}");
    }
    l.stop().await;
}

/// Publishes once the pool has reconnected after a restart (bounded).
async fn publish_when_redis_answers(bus: &shared::event_bus::EventBus, e: &MarketEvent) {
    let mut tries = 0;
    while bus.publish(e).await.is_err() {
        tries += 1;
        assert!(tries < 1_200, "redis never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
