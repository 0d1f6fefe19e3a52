//! Several listeners in one consumer group: each event is queued once, a
//! stopped listener's unacknowledged entries (and claims) are taken over,
//! an event another live consumer holds is skipped, and the consumers of
//! stopped listeners are pruned from the group.

use std::time::Duration;

use shared::store::CatalogStore;
use testkit::{RedisServer, seeded_store, temp_store};

use crate::event;
use crate::helpers::*;

#[tokio::test]
async fn two_listeners_queue_each_event_once() {
    let redis = RedisServer::start().await;
    let (store, _dir, url) = seeded_store(301).await;
    let mut s = settings(&redis, &url);
    // No coalescing, so every event gets its own job and duplicates would show.
    s.coalesce_window = Duration::ZERO;
    let a = start_listener(s.clone()).await;
    let b = start_listener(s).await;
    eventually(LONG, "two subscribers", || async {
        redis.subscribers("market_events").await == 2
    })
    .await;

    // 200 events through the stream (as the api publishes them, also on the
    // channel) and 100 published on the channel only.
    let bus = bus(&redis);
    for i in 1..=200 {
        let e = event(
            serde_json::json!({"kind": "stock_changed", "data": {"stock": {format!("P-{i}"): i}}}),
        );
        assert_eq!(bus.publish(&e).await.unwrap().receivers, 2);
    }
    let mut conn = redis.connection().await;
    for i in 201..=300 {
        let e = event(
            serde_json::json!({"kind": "stock_changed", "data": {"stock": {format!("P-{i}"): i}}}),
        );
        let n = testkit::publish(&mut conn, "market_events", e.encode(false)).await;
        assert_eq!(n, 2);
    }

    // The same bytes three times on the channel only (no event id): three
    // events, each appended once, by one of the two listeners.
    for _ in 0..3 {
        let raw = r#"{"kind":"demand_changed","data":{"demand":{"P-301":1.25}}}"#;
        let n = testkit::publish(&mut conn, "market_events", raw).await;
        assert_eq!(n, 2);
    }

    // Everything is in the stream and acknowledged: no entry is left to
    // make a duplicate later.
    eventually(LONG, "every event appended once and processed", || async {
        stream_len(&redis).await == 303
            && stream_pending(&redis).await == 0
            && product_mentions(&redis).await.len() == 301
    })
    .await;
    let mut mentions = product_mentions(&redis).await;
    // The identical events may share a batch, and so a job.
    assert!(mentions.remove("P-301").is_some());
    let dup: Vec<_> = mentions.iter().filter(|(_, n)| **n != 1).collect();
    assert!(dup.is_empty(), "products queued more than once: {dup:?}");
    assert_eq!(store.product("P-250").await.unwrap().unwrap().stock, 250);
    assert_eq!(
        store.market_signals("P-301").await.unwrap().demand_index,
        Some(1.25)
    );
    assert_eq!(stream_len(&redis).await, 303, "a message appended twice");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn entries_a_stopped_listener_left_unacknowledged_are_taken_over() {
    // Arrange: a listener read three events (and claimed them) and died
    // before acknowledging them.
    let redis = RedisServer::start().await;
    let (store, _dir, url) = seeded_store(5).await;
    let bus = bus(&redis);
    let mut conn = redis.connection().await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(shared::keys::Keys::new(NS).event_stream())
        .arg("listeners")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 1..=3 {
        let e = event(serde_json::json!({
            "kind": "demand_changed", "data": {"demand": {format!("P-{i}"): 0.7}}
        }));
        bus.publish(&e).await.unwrap();
        ids.push(e.event_id);
    }
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("listeners")
        .arg("dead-listener")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg(shared::keys::Keys::new(NS).event_stream())
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    for id in &ids {
        let _: () = redis::cmd("SET")
            .arg(shared::keys::Keys::new(NS).event_done(id))
            .arg("dead-listener")
            .arg("PX")
            .arg(600_000)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    assert_eq!(stream_pending(&redis).await, 3);

    // Act: a new listener, which takes over entries idle for 300 ms.
    let mut s = settings(&redis, &url);
    s.claim_idle = Duration::from_millis(300);
    let l = start_listener(s).await;

    // Assert: processed despite the dead listener's claims, and acknowledged.
    eventually(LONG, "the three events processed", || async {
        let m = product_mentions(&redis).await;
        (1..=3).all(|i| m.get(&format!("P-{i}")) == Some(&1)) && stream_pending(&redis).await == 0
    })
    .await;
    assert_eq!(
        store.market_signals("P-2").await.unwrap().demand_index,
        Some(0.7)
    );
    l.stop().await;
}

#[tokio::test]
async fn an_event_claimed_by_another_live_consumer_is_skipped_unless_taken_over() {
    let redis = RedisServer::start().await;
    let (store, _dir, _url) = seeded_store(5).await;
    let bridge = listener::bridge::Bridge::new(
        pool(&redis),
        shared::keys::Keys::new(NS),
        testkit::as_dyn(store.clone()),
        queues(&redis),
        shared::jobs::RECALC_RETRY,
        100_000,
        100,
        "me".into(),
        Duration::from_secs(30),
    );
    let mut conn = redis.connection().await;
    let e = event(serde_json::json!({"kind": "stock_changed", "data": {"stock": {"P-4": 9}}}));
    // Another consumer holds a copy of the same event (a client retried its
    // publish) and is processing it right now.
    let _: () = redis::cmd("SET")
        .arg(shared::keys::Keys::new(NS).event_done(&e.event_id))
        .arg("other")
        .arg("PX")
        .arg(600_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    let entry = |reclaimed| listener::bridge::Entry {
        id: "1-1".into(),
        payload: e.encode(false).into_bytes(),
        path: "stream",
        reclaimed,
    };

    let out = bridge.flush(&mut vec![entry(false)]).await.unwrap();
    assert_eq!((out.processed, out.duplicates, out.jobs), (0, 1, 0));
    assert!(queued_jobs(&redis).await.is_empty());

    // Taken over from that consumer (it died): processed, then done.
    let out = bridge.flush(&mut vec![entry(true)]).await.unwrap();
    assert_eq!((out.processed, out.jobs), (1, 1));
    assert_eq!(store.product("P-4").await.unwrap().unwrap().stock, 9);
    // Done now: a further copy is a duplicate, whoever holds it.
    let out = bridge.flush(&mut vec![entry(true)]).await.unwrap();
    assert_eq!((out.processed, out.duplicates), (0, 1));
    assert_eq!(queued_jobs(&redis).await.len(), 1);
}

#[tokio::test]
async fn consumers_of_stopped_listeners_are_pruned_from_the_group() {
    let redis = RedisServer::start().await;
    let (store, _dir, _url) = temp_store().await;
    let bridge = listener::bridge::Bridge::new(
        pool(&redis),
        shared::keys::Keys::new(NS),
        testkit::as_dyn(store),
        queues(&redis),
        shared::jobs::RECALC_RETRY,
        100_000,
        100,
        "live".into(),
        Duration::from_secs(30),
    );
    let mut conn = pool(&redis).dedicated().await.unwrap();
    bridge.ensure_group(&mut conn).await.unwrap();
    // A stopped listener that holds nothing, one that still holds an entry.
    bus(&redis)
        .publish(&event(serde_json::json!({"kind": "recalculate_all"})))
        .await
        .unwrap();
    for (name, count) in [("gone-empty", 0), ("gone-holding", 1)] {
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP").arg("listeners").arg(name);
        if count > 0 {
            read.arg("COUNT").arg(count);
        } else {
            // Reads nothing new, but joins the group.
            read.arg("COUNT").arg(1);
        }
        let stream_id = if count > 0 { ">" } else { "0" };
        let _: redis::Value = read
            .arg("STREAMS")
            .arg(shared::keys::Keys::new(NS).event_stream())
            .arg(stream_id)
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    let removed = bridge
        .prune_consumers(&mut conn, Duration::ZERO)
        .await
        .unwrap();

    assert_eq!(removed, 1);
    let left: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(shared::keys::Keys::new(NS).event_stream())
        .arg("listeners")
        .query_async(&mut conn)
        .await
        .unwrap();
    let names: Vec<String> = left
        .iter()
        .map(|c| redis::from_redis_value_ref::<String>(&c["name"]).unwrap())
        .collect();
    assert_eq!(names, vec!["gone-holding".to_string()]);
}
