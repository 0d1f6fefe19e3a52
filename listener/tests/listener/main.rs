//! Integration tests of the listener binary against a real redis-server.

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod helpers;

use std::time::Duration;

use shared::events::MarketEvent;
use shared::pricing::compute_price_cents;
use shared::store::CatalogStore;
use shared::testing::{RedisOptions, RedisServer, run_until_ready_then_sigterm, temp_store};

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

fn event(json: serde_json::Value) -> MarketEvent {
    shared::events::parse(json.to_string().as_bytes()).unwrap()
}

#[tokio::test]
async fn an_event_through_the_api_ends_in_a_job_that_reprices_the_product() {
    // Arrange: the api, the listener and a worker over one Redis and one catalog.
    let redis = RedisServer::start().await;
    let (store, _dir, url) = temp_store().await;
    shared::store::seed::seed(store.as_ref(), 20).await.unwrap();
    let l = start_listener(settings(&redis, &url)).await;
    let mut api_settings = api::config::Settings {
        addr: "127.0.0.1:0".parse().unwrap(),
        redis: shared::config::RedisSettings::for_url(redis.url(), NS),
        database: shared::config::DatabaseSettings {
            url: url.clone(),
            max_connections: 2,
        },
        cache: shared::config::CacheSettings {
            ttl: Duration::from_secs(600),
        },
        telemetry: telemetry(),
        queue: shared::queue::QueueSettings::default(),
        admin_token: None,
        recalc_retry: shared::jobs::RECALC_RETRY,
        events: shared::events::EventSettings::default(),
    };
    api_settings.telemetry.service_name = "pricing-api-test".into();
    let app = api::startup::Application::build(&api_settings)
        .await
        .unwrap();
    let port = app.port();
    let (api_stop, api_rx) = tokio::sync::oneshot::channel::<()>();
    let api = tokio::spawn(app.run_until_stopped(async {
        let _ = api_rx.await;
    }));
    let worker_settings = worker::config::Settings {
        redis: shared::config::RedisSettings::for_url(redis.url(), NS),
        database: shared::config::DatabaseSettings {
            url: url.clone(),
            max_connections: 2,
        },
        telemetry: telemetry(),
        queue: shared::queue::QueueSettings::default(),
        cache: shared::config::CacheSettings {
            ttl: Duration::from_secs(600),
        },
        feed: None,
        recalc_lock_ttl: Duration::from_secs(30),
        concurrency: 4,
        prefetch: 4,
        shutdown_timeout: Duration::from_secs(5),
        job_timeout: Duration::from_secs(60),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
    };
    let registry = worker::full_registry(&worker_settings).await.unwrap();
    let w = worker::Worker::build(worker_settings, registry)
        .await
        .unwrap();
    let (worker_stop, worker_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(w.run_until_stopped(async {
        let _ = worker_rx.await;
    }));
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
            let raw: Option<String> = redis::cmd("GET")
                .arg(format!("{NS}:price:P-3"))
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

    let _ = api_stop.send(());
    let _ = worker_stop.send(());
    api.await.unwrap().unwrap();
    worker.await.unwrap().unwrap();
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
    let q = queue(&redis);
    assert_eq!(q.depths().await.unwrap().pending, 1);
    l.stop().await;
}

#[tokio::test]
async fn events_published_while_no_listener_runs_are_processed_when_it_starts() {
    let redis = RedisServer::start().await;
    let (store, _dir, url) = temp_store().await;
    shared::store::seed::seed(store.as_ref(), 10).await.unwrap();
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
    let (store, _dir, url) = temp_store().await;
    shared::store::seed::seed(store.as_ref(), 300)
        .await
        .unwrap();
    let mut s = settings(&redis, &url);
    // No coalescing, so every event gets its own job and duplicates would show.
    s.coalesce_window = Duration::ZERO;
    let a = start_listener(s.clone()).await;
    let b = start_listener(s).await;
    eventually(LONG, "two subscribers", || async {
        let mut conn = redis.connection().await;
        let n: Vec<(String, u64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("market_events")
            .query_async(&mut conn)
            .await
            .unwrap();
        n[0].1 == 2
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

    eventually(LONG, "every product covered", || async {
        product_mentions(&redis).await.len() == 300
    })
    .await;
    // Give a duplicate every chance to show up, then check there is none.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mentions = product_mentions(&redis).await;
    let dup: Vec<_> = mentions.iter().filter(|(_, n)| **n != 1).collect();
    assert!(dup.is_empty(), "products queued more than once: {dup:?}");
    assert_eq!(store.product("P-250").await.unwrap().unwrap().stock, 250);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_redis_restart_with_aof_loses_no_events() {
    let mut redis = RedisServer::start_with(RedisOptions { aof: true }).await;
    let (store, _dir, url) = temp_store().await;
    shared::store::seed::seed(store.as_ref(), 100)
        .await
        .unwrap();
    let l = start_listener(settings(&redis, &url)).await;
    let bus = bus(&redis);
    for i in 1..=50 {
        let e = event(
            serde_json::json!({"kind": "demand_changed", "data": {"demand": {format!("P-{i}"): 2.0}}}),
        );
        bus.publish(&e).await.unwrap();
    }

    redis.restart().await;

    // Publishing resumes once the pool has reconnected.
    for i in 51..=100 {
        let e = event(
            serde_json::json!({"kind": "demand_changed", "data": {"demand": {format!("P-{i}"): 2.0}}}),
        );
        let mut tries = 0;
        while bus.publish(&e).await.is_err() {
            tries += 1;
            assert!(tries < 200, "redis never came back");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eventually(LONG, "all 100 products queued", || async {
        product_mentions(&redis).await.len() == 100
    })
    .await;
    for i in [1, 50, 51, 100] {
        let s = store.market_signals(&format!("P-{i}")).await.unwrap();
        assert_eq!(s.demand_index, Some(2.0), "P-{i}");
    }
    l.stop().await;
}

#[tokio::test]
async fn a_burst_is_coalesced_and_keeps_every_events_data() {
    let redis = RedisServer::start().await;
    let (store, _dir, url) = temp_store().await;
    shared::store::seed::seed(store.as_ref(), 10).await.unwrap();
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
            .arg(format!("{NS}:events:stream"))
            .arg("listeners")
            .query_async(&mut conn)
            .await
            .unwrap();
        let read: u64 = redis::cmd("XLEN")
            .arg(format!("{NS}:events:stream"))
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
