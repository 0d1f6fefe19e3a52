//! The cache-aside read path.

use serde_json::{Value, json};
use shared::domain::MarketSignals;
use shared::pricing::compute_price_cents;
use shared::store::CatalogStore;

use crate::helpers::{TTL_SECS, spawn_app};

fn cents(v: &Value) -> i64 {
    (v.as_f64().expect("a number") * 100.0).round() as i64
}

#[tokio::test]
async fn a_miss_is_computed_from_the_store_then_served_from_the_cache() {
    // Arrange
    let app = spawn_app().await;
    let product = app.store.product("P-7").await.unwrap().expect("seeded");
    let signals = app.store.market_signals("P-7").await.unwrap();
    let expected = compute_price_cents(&product, &signals);

    // Act
    let (s1, first) = app.price("P-7", false).await;
    let (s2, second) = app.price("P-7", false).await;

    // Assert
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(first["source"], "database");
    assert_eq!(second["source"], "cache");
    assert_eq!(cents(&first["final_price"]), expected);
    assert_eq!(first["final_price"], second["final_price"]);
    assert_eq!(first["base_price"], second["base_price"]);
    assert_eq!(first["calculated_at"], second["calculated_at"]);
    assert_eq!(first["currency"], "USD");
    assert_eq!(first["discount_rate"], 0.0);
}

#[tokio::test]
async fn the_cache_holds_the_price_before_the_prime_discount() {
    // Arrange: a prime member is the first to ask, so the miss path runs for them.
    let app = spawn_app().await;

    // Act
    let (_, prime) = app.price("P-3", true).await;
    let (_, regular) = app.price("P-3", false).await;
    let (_, prime_again) = app.price("P-3", true).await;

    // Assert: the regular customer, served from the cache, pays the full price.
    assert_eq!(prime["source"], "database");
    assert_eq!(regular["source"], "cache");
    assert_eq!(prime_again["source"], "cache");
    let full = cents(&regular["final_price"]);
    assert_eq!(cents(&regular["base_price"]), full);
    assert_eq!(cents(&prime["base_price"]), full);
    assert_eq!(prime["discount_rate"], 0.05);
    assert_eq!(
        cents(&prime["final_price"]),
        (full as f64 * 0.95).round() as i64
    );
    assert_eq!(prime["final_price"], prime_again["final_price"]);
    let cached: Value =
        serde_json::from_str(&app.cached_raw("P-3").await.expect("cached")).unwrap();
    assert_eq!(cached["price_cents"].as_i64(), Some(full));
}

#[tokio::test]
async fn a_corrupt_or_old_format_entry_is_recomputed_and_overwritten() {
    let app = spawn_app().await;
    let (_, good) = app.price("P-5", false).await;
    let legacy = r#"{"product_id":"P-5","final_price":0.01,"base_price":0.01,"discount_rate":0.0,"source":"cache"}"#;

    for corrupt in [
        "{not json",
        legacy,
        r#"{"v":1,"product_id":"P-6","price_cents":1,"currency":"USD","calculated_at":"2026-01-01T00:00:00Z"}"#,
    ] {
        // Arrange
        app.set_cached_raw("P-5", corrupt).await;

        // Act
        let (status, body) = app.price("P-5", false).await;

        // Assert: recomputed, never passed on, and the entry is rewritten.
        assert_eq!(status, 200, "{corrupt}");
        assert_eq!(body["source"], "database", "{corrupt}");
        assert_eq!(body["final_price"], good["final_price"], "{corrupt}");
        let raw = app.cached_raw("P-5").await.expect("rewritten");
        assert_ne!(raw, corrupt);
        let (_, again) = app.price("P-5", false).await;
        assert_eq!(again["source"], "cache");
    }
}

#[tokio::test]
async fn cached_prices_expire_after_the_cache_ttl() {
    let app = spawn_app().await;
    app.price("P-2", false).await;
    // The hash holding the entry expires once no one writes to it...
    let mut conn = app.redis.connection().await;
    let ttl: i64 = redis::cmd("TTL")
        .arg(app.price_key("P-2"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= TTL_SECS as i64, "ttl {ttl}");

    // ...and an entry computed a TTL ago reads as a miss even while its
    // hash lives on: recomputed, and cached again.
    let computed = chrono::Utc::now() - chrono::Duration::seconds(TTL_SECS as i64 + 1);
    let expired = shared::cache::CachedPrice::new("P-2", 1, computed).encode();
    app.set_cached_raw("P-2", &expired).await;
    let (status, body) = app.price("P-2", false).await;
    assert_eq!(status, 200);
    assert_eq!(body["source"], "database");
    assert_ne!(
        app.cached_raw("P-2").await.as_deref(),
        Some(expired.as_str())
    );
    let (_, again) = app.price("P-2", false).await;
    assert_eq!(again["source"], "cache");
}

#[tokio::test]
async fn an_unknown_product_is_a_404_with_a_json_body() {
    let app = spawn_app().await;
    let (status, body) = app.price("P-999999", false).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "not_found");
    assert!(body["detail"].as_str().unwrap().contains("P-999999"));
    let (status, body) = app.get_json("/api/v1/price/NOPE").await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn get_by_path_matches_post_and_applies_the_discount() {
    let app = spawn_app().await;
    let (_, post) = app.price("P-9", false).await;
    let (status, get) = app.get_json("/api/v1/price/P-9?is_prime_member=true").await;
    assert_eq!(status, 200);
    assert_eq!(get["source"], "cache");
    assert_eq!(get["base_price"], post["final_price"]);
    assert_eq!(get["discount_rate"], 0.05);
}

#[tokio::test]
async fn a_market_signal_changes_the_price_after_the_cache_entry_goes() {
    // The price is a function of the store's signals: a cheaper competitor,
    // once the stale entry is gone, gives a price no higher than before.
    let app = spawn_app().await;
    let (_, before) = app.price("P-11", false).await;
    let product = app.store.product("P-11").await.unwrap().unwrap();
    app.store
        .record_competitor_prices(&[shared::store::CompetitorPrice {
            product_id: "P-11".into(),
            competitor: "discounter".into(),
            price: product.unit_cost * 0.5,
            observed_at: chrono::Utc::now(),
        }])
        .await
        .unwrap();
    let mut conn = app.redis.connection().await;
    let _: () = redis::cmd("HDEL")
        .arg(app.price_key("P-11"))
        .arg("P-11")
        .query_async(&mut conn)
        .await
        .unwrap();
    let (_, after) = app.price("P-11", false).await;
    let signals = app.store.market_signals("P-11").await.unwrap();
    assert_eq!(
        signals.lowest_competitor_price,
        Some(product.unit_cost * 0.5)
    );
    assert_eq!(
        cents(&after["final_price"]),
        compute_price_cents(&product, &signals)
    );
    assert!(cents(&after["final_price"]) <= cents(&before["final_price"]));
    assert_ne!(signals, MarketSignals::default());
}

#[tokio::test]
async fn the_batch_answers_in_order_and_warms_the_cache() {
    let app = spawn_app().await;
    app.price("P-1", false).await; // one hit in the batch

    let (status, body) = app
        .post_json(
            "/api/v1/prices/batch",
            &json!({"product_ids": ["P-1", "P-2", "P-404404", "P-3", "P-2"]}),
        )
        .await;

    assert_eq!(status, 200);
    let prices = body["prices"].as_array().unwrap();
    let ids: Vec<&str> = prices
        .iter()
        .map(|p| p["product_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["P-1", "P-2", "P-3"]);
    assert_eq!(prices[0]["source"], "cache");
    assert_eq!(prices[1]["source"], "database");
    assert_eq!(body["not_found"], json!(["P-404404"]));
    for (i, id) in ["P-1", "P-2", "P-3"].iter().enumerate() {
        let (_, single) = app.price(id, false).await;
        assert_eq!(single["source"], "cache", "{id}");
        assert_eq!(single["final_price"], prices[i]["final_price"], "{id}");
    }
}

#[tokio::test]
async fn reads_survive_redis_going_away_and_use_it_again_when_it_returns() {
    // Arrange
    let mut app = spawn_app().await;
    let (_, warm) = app.price("P-4", false).await;

    // Act: Redis dies mid-test.
    app.redis.stop();
    let (status, body) = app.price("P-4", false).await;
    let (batch_status, batch) = app
        .post_json(
            "/api/v1/prices/batch",
            &json!({"product_ids": ["P-4", "P-8"]}),
        )
        .await;
    let (ready_status, ready) = app.get_json("/ready").await;

    // Assert: answered from the store, never a 500.
    assert_eq!(status, 200);
    assert_eq!(body["source"], "database");
    assert_eq!(body["final_price"], warm["final_price"]);
    assert_eq!(batch_status, 200);
    assert_eq!(batch["prices"].as_array().unwrap().len(), 2);
    assert_eq!(ready_status, 503);
    assert_eq!(ready["redis"]["ok"], false);
    assert_eq!(ready["store"]["ok"], true);

    // Redis comes back (empty): the pool reconnects on its own.
    app.redis.restart().await;
    let mut cached = false;
    for _ in 0..50 {
        let (_, b) = app.price("P-4", false).await;
        if b["source"] == "cache" {
            cached = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(cached, "the api never used Redis again after it restarted");
    let (ready_status, _) = app.get_json("/ready").await;
    assert_eq!(ready_status, 200);
}

#[tokio::test]
async fn with_redis_and_the_store_both_down_the_answer_is_a_json_503() {
    let mut app = spawn_app().await;
    app.redis.stop();
    app.state.store.close().await;

    let (status, body) = app.price("P-4", false).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"], "service_unavailable");
    let (status, ready) = app.get_json("/ready").await;
    assert_eq!(status, 503);
    assert_eq!(ready["store"]["ok"], false);
}
