//! Publishers that only PUBLISH on the channel (the original service,
//! `redis-cli`): their messages reach the stream, and each one published
//! becomes one event, even when the same bytes are published again.

use shared::store::CatalogStore;
use testkit::{RedisServer, seeded_store, temp_store};

use crate::helpers::*;

#[tokio::test]
async fn a_raw_redis_cli_publish_of_the_legacy_string_triggers_a_full_recalculation() {
    let redis = RedisServer::start().await;
    let (_store, _dir, url) = temp_store().await;
    let l = start_listener(settings(&redis, &url)).await;
    wait_for_subscriber(&redis, "market_events").await;

    assert_eq!(
        redis_cli_publish(&redis, "market_events", "Recalculate_Triggered_v1"),
        1
    );

    eventually(LONG, "a recalculate_all_prices job", || async {
        queued_jobs(&redis)
            .await
            .iter()
            .any(|(name, _)| name == "recalculate_all_prices")
    })
    .await;
    let q = queues(&redis);
    assert_eq!(
        q.for_job("recalculate_all_prices")
            .depths()
            .await
            .unwrap()
            .pending,
        1
    );
    l.stop().await;
}

#[tokio::test]
async fn the_same_raw_message_published_again_is_a_new_event() {
    // Stock 5, then 3, then 5 again, by a publisher that gives no event ids:
    // the third message has the same bytes as the first, and must not be
    // taken for a copy of it.
    let redis = RedisServer::start().await;
    let (store, _dir, url) = seeded_store(3).await;
    let l = start_listener(settings(&redis, &url)).await;
    wait_for_subscriber(&redis, "market_events").await;

    for stock in [5, 3, 5] {
        let message = format!(r#"{{"kind":"stock_changed","data":{{"stock":{{"P-2":{stock}}}}}}}"#);
        assert_eq!(redis_cli_publish(&redis, "market_events", &message), 1);
    }
    for _ in 0..2 {
        assert_eq!(
            redis_cli_publish(&redis, "market_events", "Recalculate_Triggered_v1"),
            1
        );
    }

    eventually(LONG, "all five messages appended and processed", || async {
        stream_len(&redis).await == 5 && stream_pending(&redis).await == 0
    })
    .await;
    assert_eq!(store.product("P-2").await.unwrap().unwrap().stock, 5);
    l.stop().await;
}
