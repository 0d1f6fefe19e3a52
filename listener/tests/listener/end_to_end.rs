//! Through the whole stack: an api, a listener and a worker over one Redis
//! and one catalog, checked where a client sees it, in the prices the api
//! answers. Kept together because they need the api and worker running,
//! which the other listener tests do not.

use std::time::Duration;

use shared::pricing::compute_price_cents;
use shared::store::CatalogStore;
use testkit::{RedisServer, seeded_store};

use crate::helpers::*;

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
