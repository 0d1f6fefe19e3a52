//! Refused messages: every rejection is counted, the dead-letter list stays
//! capped, and dead letters kept at the key older listeners used are moved
//! to the list.

use testkit::{RedisServer, temp_store};

use crate::helpers::*;

#[tokio::test]
async fn the_dead_letter_list_is_capped_and_every_rejection_is_counted() {
    let redis = RedisServer::start().await;
    let (_store, _dir, url) = temp_store().await;
    let mut s = settings(&redis, &url);
    s.dead_letter_max = 5;
    let l = start_listener(s).await;
    wait_for_subscriber(&redis, "market_events").await;

    // The counter is per process, which other tests share: count the rise.
    let metrics_url = format!("http://{}/metrics", l.metrics);
    let malformed = || async {
        testkit::metric(
            &testkit::scrape(&metrics_url).await,
            "listener_events_rejected_total",
            "reason=\"malformed_json\"",
        ) as u64
    };
    let before = malformed().await;

    for i in 0..8 {
        redis_cli_publish(&redis, "market_events", &format!("{{not json {i}"));
    }

    eventually(LONG, "eight rejections counted", || async {
        malformed().await == before + 8
    })
    .await;
    let mut conn = redis.connection().await;
    let kept: Vec<String> = redis::cmd("LRANGE")
        .arg(shared::keys::Keys::new(NS).event_dead_letters())
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(kept.len(), 5);
    // Newest first.
    let newest: serde_json::Value = serde_json::from_str(&kept[0]).unwrap();
    assert_eq!(newest["payload"], "{not json 7");
    assert_eq!(newest["reason"], "malformed_json");
    l.stop().await;
}

#[tokio::test]
async fn dead_letters_at_the_old_key_move_out_of_the_events_queues_dead_set() {
    // Arrange: dead letters where listeners before named queues kept them.
    let redis = RedisServer::start().await;
    let keys = shared::keys::Keys::new(NS);
    let mut conn = redis.connection().await;
    let _: () = redis::cmd("RPUSH")
        .arg(keys.legacy_event_dead_letters())
        .arg("old-2")
        .arg("old-1")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("LPUSH")
        .arg(keys.event_dead_letters())
        .arg("new-1")
        .query_async(&mut conn)
        .await
        .unwrap();

    // Act: what a listener does at startup, twice (a second start moves nothing).
    let p = pool(&redis);
    let moved = listener::move_legacy_dead_letters(&p, &keys, 10)
        .await
        .unwrap();
    let again = listener::move_legacy_dead_letters(&p, &keys, 10)
        .await
        .unwrap();

    // Assert: newest first, the old key gone, and the events queue's dead
    // set (the old key) usable: its depths read without WRONGTYPE.
    assert_eq!((moved, again), (2, 0));
    let kept: Vec<String> = redis::cmd("LRANGE")
        .arg(keys.event_dead_letters())
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(kept, ["new-1", "old-2", "old-1"]);
    let q = queue::Queue::new(p, NS, queue::EVENTS_QUEUE, queue::QueueSettings::default());
    assert_eq!(q.depths().await.unwrap().dead, 0);
}
