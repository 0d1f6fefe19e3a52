//! Integration tests of the listener binary against a real redis-server.

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod dashboard;
mod helpers;

use std::time::Duration;

use shared::events::MarketEvent;
use shared::pricing::compute_price_cents;
use shared::store::CatalogStore;
use testkit::{RedisOptions, RedisServer, run_until_ready_then_sigterm, seeded_store, temp_store};

use helpers::*;

#[tokio::test]
async fn starts_connects_and_stops_cleanly_on_sigterm() {
    // Arrange
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let envs = [
        ("REDIS_URL", redis.url()),
        (
            "DATABASE_URL",
            format!("sqlite://{}/catalog.db", dir.path().display()),
        ),
        ("LISTENER_METRICS_ADDR", "127.0.0.1:0".to_string()),
    ];

    // Act
    let (ok, output) = tokio::task::spawn_blocking(move || {
        run_until_ready_then_sigterm(env!("CARGO_BIN_EXE_listener"), &envs, "listener ready")
    })
    .await
    .unwrap();

    // Assert
    assert!(ok, "non-zero exit after SIGTERM:\n{output}");
    assert!(output.contains("received SIGTERM"), "{output}");
    assert!(output.contains("listener stopped"), "{output}");
}

#[tokio::test]
async fn serves_health_and_metrics_on_its_own_address() {
    let redis = RedisServer::start().await;
    let (_store, _dir, url) = temp_store().await;
    let l = start_listener(settings(&redis, &url)).await;
    let health: serde_json::Value = reqwest::get(format!("http://{}/health", l.metrics))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["service"], "pricing-listener");
    let metrics = reqwest::get(format!("http://{}/metrics", l.metrics))
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    l.stop().await;
}

#[tokio::test]
async fn ready_follows_redis_going_away_and_coming_back() {
    // Arrange: a listener over a Redis it will lose.
    let mut redis = RedisServer::start().await;
    let (_store, _dir, url) = temp_store().await;
    let l = start_listener(settings(&redis, &url)).await;
    let client = reqwest::Client::new();
    let ready = |client: reqwest::Client, addr: std::net::SocketAddr| async move {
        let r = client
            .get(format!("http://{addr}/ready"))
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<serde_json::Value>().await.unwrap(),
        )
    };
    eventually(LONG, "ready once subscribed and reading", || async {
        ready(client.clone(), l.metrics).await.0 == 200
    })
    .await;
    let (_, body) = ready(client.clone(), l.metrics).await;
    assert_eq!(body["status"], "ok");
    assert_eq!(body["subscribed"], true);
    assert_eq!(body["stream"]["connected"], true);
    assert_eq!(body["consumer"], l.consumer.as_str());

    // Act: Redis goes away.
    redis.stop();

    // Assert: not ready, while /health still answers (the process lives) and
    // says why.
    eventually(LONG, "not ready without Redis", || async {
        ready(client.clone(), l.metrics).await.0 == 503
    })
    .await;
    let health = json_of(client.get(format!("http://{}/health", l.metrics))).await;
    assert_eq!(health["status"], "degraded");
    // Both sides notice: the subscription and the stream connection.
    eventually(LONG, "both sides report the loss", || async {
        let (_, body) = ready(client.clone(), l.metrics).await;
        body["subscribed"] == false && body["stream"]["connected"] == false
    })
    .await;
    // And ready again once Redis is back: subscribed again, reading again.
    redis.restart().await;
    eventually(LONG, "ready again after Redis restarts", || async {
        ready(client.clone(), l.metrics).await.0 == 200
    })
    .await;
    assert_eq!(redis.subscribers("market_events").await, 1);
    l.stop().await;
}

fn event(json: serde_json::Value) -> MarketEvent {
    shared::events::parse(json.to_string().as_bytes()).unwrap()
}

/// Every price of `ids` as the api answers it: `(source, base_price)` by
/// product, read through `POST /api/v1/prices/batch`.
async fn read_through_api(
    client: &reqwest::Client,
    port: u16,
    ids: &[String],
) -> std::collections::HashMap<String, (String, f64)> {
    let mut out = std::collections::HashMap::new();
    for chunk in ids.chunks(1_000) {
        let body = json_of(
            client
                .post(format!("http://127.0.0.1:{port}/api/v1/prices/batch"))
                .json(&serde_json::json!({ "product_ids": chunk })),
        )
        .await;
        assert_eq!(body["not_found"], serde_json::json!([]), "{body}");
        for p in body["prices"].as_array().unwrap() {
            out.insert(
                p["product_id"].as_str().unwrap().to_string(),
                (
                    p["source"].as_str().unwrap().to_string(),
                    p["base_price"].as_f64().unwrap(),
                ),
            );
        }
    }
    out
}

#[tokio::test]
async fn a_full_recalculation_makes_every_next_read_a_cache_hit_with_the_new_price() {
    // Arrange: more products than one catalog page (5,000), every one of
    // them cached at today's price by a first read.
    const N: usize = 6_000;
    let redis = RedisServer::start().await;
    let (store, _dir, url) = seeded_store(N as u64).await;
    let stack = start_api_and_worker(&redis, &url).await;
    let client = reqwest::Client::new();
    let ids: Vec<String> = (1..=N).map(|i| format!("P-{i}")).collect();
    read_through_api(&client, stack.port, &ids).await;
    let old = read_through_api(&client, stack.port, &ids).await;
    assert!(old.values().all(|(source, _)| source == "cache"));
    // Demand rises for every product, in the catalog only: the cached
    // prices are now stale.
    let observed_at = chrono::Utc::now();
    let demand: Vec<shared::store::DemandSignal> = ids
        .iter()
        .map(|id| shared::store::DemandSignal {
            product_id: id.clone(),
            demand_index: 1.6,
            observed_at,
        })
        .collect();
    store.record_demand(&demand).await.unwrap();

    // Act: an admin triggers the full recalculation through the api, and
    // follows its status until it ends.
    let accepted = json_of(client.post(format!(
        "http://127.0.0.1:{}/api/v1/tasks/recalculate-all",
        stack.port
    )))
    .await;
    let status_url = format!(
        "http://127.0.0.1:{}{}",
        stack.port,
        accepted["status_url"].as_str().unwrap()
    );
    let deadline = tokio::time::Instant::now() + LONG;
    let status = loop {
        let status = json_of(client.get(&status_url)).await;
        if matches!(status["status"].as_str(), Some("succeeded" | "failed")) {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out: the recalculation ends ({status})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status["status"], "succeeded", "{status}");
    assert_eq!(status["result"]["updated_count"], N as u64, "{status}");

    // Assert: each product's next read is a cache hit with the price its
    // new signals give, and the rise in demand did change prices.
    let new = read_through_api(&client, stack.port, &ids).await;
    assert_eq!(new.len(), N);
    let mut changed = 0;
    for id in &ids {
        let product = store.product(id).await.unwrap().unwrap();
        let signals = store.market_signals(id).await.unwrap();
        assert_eq!(signals.demand_index, Some(1.6));
        let expected = compute_price_cents(&product, &signals) as f64 / 100.0;
        let (source, price) = &new[id];
        assert_eq!(source, "cache", "{id}");
        assert_eq!(*price, expected, "{id}");
        if *price != old[id].1 {
            changed += 1;
        }
    }
    assert!(
        changed > N / 2,
        "only {changed} of {N} prices changed with demand"
    );
    stack.stop().await;
}

#[tokio::test]
async fn an_event_through_the_api_ends_in_a_job_that_reprices_the_product() {
    // Arrange: the api, the listener and a worker over one Redis and one catalog.
    let redis = RedisServer::start().await;
    let (store, _dir, url) = seeded_store(20).await;
    let l = start_listener(settings(&redis, &url)).await;
    let stack = start_api_and_worker(&redis, &url).await;
    let port = stack.port;
    wait_for_subscriber(&redis, "market_events").await;
    let client = reqwest::Client::new();
    let read = |id: &'static str| {
        let client = client.clone();
        async move {
            client
                .post(format!("http://127.0.0.1:{port}/api/v1/price"))
                .json(&serde_json::json!({"product_id": id}))
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let before = read("P-3").await["final_price"].as_f64().unwrap();

    // Act: a competitor undercuts P-3.
    let resp = client
        .post(format!(
            "http://127.0.0.1:{port}/api/v1/publish-market-event"
        ))
        .json(&serde_json::json!({
            "kind": "competitor_price_changed",
            "data": {"competitor": "undercut", "prices": {"P-3": 0.5}}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "Event published");
    assert_eq!(body["channel"], "market_events");
    assert_eq!(body["receivers"], 1, "the listener is subscribed");

    // Assert: the stored signal, and the cached price the worker wrote.
    eventually(LONG, "the competitor price stored", || async {
        store
            .market_signals("P-3")
            .await
            .unwrap()
            .lowest_competitor_price
            == Some(0.5)
    })
    .await;
    let product = store.product("P-3").await.unwrap().unwrap();
    let signals = store.market_signals("P-3").await.unwrap();
    let expected = compute_price_cents(&product, &signals);
    let mut conn = redis.connection().await;
    eventually(LONG, "the new price in the cache", || {
        let mut conn = conn.clone();
        async move {
            let raw: Option<String> = redis::cmd("HGET")
                .arg(shared::keys::Keys::new(NS).price("P-3"))
                .arg("P-3")
                .query_async(&mut conn)
                .await
                .unwrap();
            raw.and_then(|r| shared::cache::CachedPrice::decode("P-3", r.as_bytes()).ok())
                .is_some_and(|c| c.price_cents == expected)
        }
    })
    .await;
    let _: () = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    let after = read("P-3").await;
    assert_eq!(after["source"], "cache");
    assert_ne!(after["final_price"].as_f64().unwrap(), before);

    stack.stop().await;
    l.stop().await;
}

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
        let n: u64 = redis::cmd("PUBLISH")
            .arg("market_events")
            .arg(e.encode(false))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, 2);
    }

    // The same bytes three times on the channel only (no event id): three
    // events, each appended once, by one of the two listeners.
    for _ in 0..3 {
        let n: u64 = redis::cmd("PUBLISH")
            .arg("market_events")
            .arg(r#"{"kind":"demand_changed","data":{"demand":{"P-301":1.25}}}"#)
            .query_async(&mut conn)
            .await
            .unwrap();
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
async fn a_redis_restart_with_aof_loses_no_events() {
    let mut redis = RedisServer::start_with(RedisOptions {
        aof: true,
        ..Default::default()
    })
    .await;
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
        let text = reqwest::get(&metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| {
                line.strip_prefix("listener_events_rejected_total{reason=\"malformed_json\"} ")
                    .map(|v| v.trim().parse::<u64>().unwrap())
            })
            .unwrap_or(0)
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
