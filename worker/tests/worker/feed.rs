//! Recalculation against a local stub of the market-data feed, over HTTP.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use shared::domain::MarketSignals;
use shared::jobs::RecalculateAllPrices;
use shared::pricing::compute_price_cents;
use shared::queue::{Backoff, JobState, NewJob, QueueSettings, RetryPolicy};
use shared::store::CatalogStore;
use shared::testing::{RedisServer, temp_store};
use worker::jobs::feed::FeedSettings;

use crate::helpers::{NS, queue, settings, start, wait_for};

const LONG: Duration = Duration::from_secs(60);
const FED_PRICE: f64 = 1.0;
const PUSHER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PUSHER_SPAN: &str = "b7ad6b7169203331";

#[derive(Clone)]
struct Stub {
    hits: Arc<AtomicUsize>,
    traceparents: Arc<std::sync::Mutex<Vec<Option<String>>>>,
    fail_first: usize,
    failure: StatusCode,
}

async fn competitor_prices(
    State(stub): State<Stub>,
    headers: axum::http::HeaderMap,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> axum::response::Response {
    stub.traceparents.lock().unwrap().push(
        headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    );
    let n = stub.hits.fetch_add(1, Ordering::SeqCst);
    if n < stub.fail_first {
        return (stub.failure, "unavailable").into_response();
    }
    let prices: Vec<serde_json::Value> = q["ids"]
        .split(',')
        .map(|id| serde_json::json!({"product_id": id, "competitor": "feedco", "price": FED_PRICE}))
        .collect();
    axum::Json(serde_json::json!({ "prices": prices })).into_response()
}

async fn start_stub(fail_first: usize, failure: StatusCode) -> (String, Stub) {
    let stub = Stub {
        hits: Arc::new(AtomicUsize::new(0)),
        traceparents: Arc::default(),
        fail_first,
        failure,
    };
    let app = axum::Router::new()
        .route("/competitor-prices", axum::routing::get(competitor_prices))
        .with_state(stub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, stub)
}

fn quick_retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        backoff: Backoff {
            base_ms: 100,
            factor: 2.0,
            cap_ms: 1_000,
            jitter: 0.0,
        },
    }
}

async fn run_recalc(
    fail_first: usize,
    failure: StatusCode,
    max_attempts: u32,
) -> (
    RedisServer,
    Arc<dyn CatalogStore>,
    shared::queue::JobRecord,
    usize,
    tempfile::TempDir,
    Vec<Option<String>>,
) {
    let redis = RedisServer::start().await;
    let (store, dir, url) = temp_store().await;
    shared::store::seed::seed(store.as_ref(), 20).await.unwrap();
    let (feed_url, stub) = start_stub(fail_first, failure).await;
    let mut s = settings(&redis, QueueSettings::default());
    s.database.url = url;
    s.feed = Some(FeedSettings {
        url: feed_url,
        connect_timeout: Duration::from_secs(3),
        timeout: Duration::from_secs(5),
    });
    let registry = worker::full_registry(&s).await.unwrap();
    let w = start(s, registry).await;
    let q = queue(&redis, QueueSettings::default());
    let mut job = NewJob::of(&RecalculateAllPrices {})
        .unwrap()
        .retry(quick_retries(max_attempts));
    // As if pushed from inside a traced request.
    job.traceparent = Some(format!("00-{PUSHER_TRACE}-{PUSHER_SPAN}-01"));
    let id = q.push(job).await.unwrap().id;
    let rec = wait_for(&q, &id, &[JobState::Succeeded, JobState::Failed], LONG).await;
    w.stop().await;
    let n = stub.hits.load(Ordering::SeqCst);
    let traceparents = stub.traceparents.lock().unwrap().clone();
    (redis, store, rec, n, dir, traceparents)
}

#[tokio::test]
async fn transient_feed_failures_are_retried_and_the_fed_prices_are_used() {
    let (redis, store, rec, hits, _dir, traceparents) =
        run_recalc(2, StatusCode::SERVICE_UNAVAILABLE, 4).await;

    assert_eq!(rec.state, JobState::Succeeded);
    assert_eq!((rec.attempts, hits), (3, 3), "two failures, then success");
    // Every request carried the W3C context of the job's span: the pusher's
    // trace, a span of its own (the job's), sampled.
    assert_eq!(traceparents.len(), 3);
    for tp in &traceparents {
        let tp = tp.as_deref().expect("a feed request without traceparent");
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{tp}");
        assert_eq!(
            (parts[0], parts[1], parts[3]),
            ("00", PUSHER_TRACE, "01"),
            "{tp}"
        );
        assert_eq!(parts[2].len(), 16);
        assert_ne!(parts[2], PUSHER_SPAN, "the job's span, not the pusher's");
    }
    let product = store.product("P-1").await.unwrap().unwrap();
    let mut signals = store.market_signals("P-1").await.unwrap();
    signals.lowest_competitor_price = Some(FED_PRICE);
    let mut conn = redis.connection().await;
    let raw: String = redis::cmd("GET")
        .arg(format!("{NS}:price:P-1"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let entry = shared::cache::CachedPrice::decode("P-1", raw.as_bytes()).unwrap();
    assert_eq!(entry.price_cents, compute_price_cents(&product, &signals));
    assert_ne!(signals, MarketSignals::default());
}

#[tokio::test]
async fn a_feed_that_keeps_failing_uses_exactly_the_configured_attempts() {
    let (_redis, _store, rec, hits, _dir, _) =
        run_recalc(usize::MAX, StatusCode::BAD_GATEWAY, 3).await;
    assert_eq!(rec.state, JobState::Failed);
    assert_eq!((rec.attempts, hits), (3, 3));
    assert!(rec.error.unwrap().contains("502"));
}

#[tokio::test]
async fn a_4xx_from_the_feed_is_permanent() {
    let (_redis, _store, rec, hits, _dir, _) =
        run_recalc(usize::MAX, StatusCode::NOT_FOUND, 5).await;
    assert_eq!(rec.state, JobState::Failed);
    assert_eq!((rec.attempts, hits), (1, 1));
    assert!(rec.error.unwrap().starts_with("permanent:"));
}
