//! The api over the shared catalog on a real PostgreSQL, and what it does
//! when that server goes away under load and comes back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use api::Application;
use serde_json::{Value, json};
use shared::store;
use testkit::{PostgresServer, RedisServer};

use crate::helpers::settings;

/// A guard against a hang, never a timing check.
const LONG: Duration = Duration::from_secs(60);

/// Products seeded; the first [`CACHED`] are read once first, so they are hits.
const PRODUCTS: u64 = 60;
const CACHED: u64 = 10;

/// Polls `check` until it holds (bounded by [`LONG`], a hang guard).
async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    testkit::eventually(LONG, what, check).await
}

async fn price(client: &reqwest::Client, base: &str, id: &str) -> (u16, Value) {
    let resp = client
        .post(format!("{base}/api/v1/price"))
        .json(&json!({"product_id": id}))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn ready(client: &reqwest::Client, base: &str) -> (u16, Value) {
    let resp = client.get(format!("{base}/ready")).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// What the load saw while PostgreSQL was down.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    hits_ok: AtomicU64,
    misses_503: AtomicU64,
    other: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_keep_answering_while_postgres_is_down_and_misses_recover_on_their_own() {
    // Arrange: an api over PostgreSQL, opened from DATABASE_URL as in
    // production, with some prices cached.
    shared::telemetry::init_for_tests();
    let redis = RedisServer::start().await;
    let mut pg = PostgresServer::start().await;
    let mut settings = settings(&redis.url(), &pg.url(), "pg-outage");
    settings.database.connect_timeout = Duration::from_millis(300);
    let seeding = store::open(&settings.database).await.unwrap();
    store::seed::seed(seeding.as_ref(), PRODUCTS).await.unwrap();
    seeding.close().await;
    let app = Application::build(&settings).await.unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    for i in 1..=CACHED {
        let (status, body) = price(&client, &base, &format!("P-{i}")).await;
        assert_eq!((status, body["source"].as_str()), (200, Some("database")));
    }
    let (status, _) = ready(&client, &base).await;
    assert_eq!(status, 200);

    // Act: load on hits and misses, and PostgreSQL killed under it.
    let down = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let running = Arc::new(AtomicBool::new(true));
    let load: Vec<_> = (0..4)
        .map(|w| {
            let (client, base) = (client.clone(), base.clone());
            let (down, tally, running) = (down.clone(), tally.clone(), running.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while running.load(Ordering::Relaxed) {
                    n += 1;
                    // Uncached products only once the server is down: a miss
                    // answered before would be cached, and a hit after.
                    let is_down = down.load(Ordering::Relaxed);
                    let i = if n.is_multiple_of(2) || !is_down {
                        n % CACHED + 1
                    } else {
                        CACHED + 1 + (n * 4 + w) % (PRODUCTS - CACHED)
                    };
                    let (status, body) = price(&client, &base, &format!("P-{i}")).await;
                    tally.requests.fetch_add(1, Ordering::Relaxed);
                    // Never a 500, whether the server is up or down.
                    assert!(status == 200 || status == 503, "{status} {body}");
                    if !is_down {
                        continue;
                    }
                    match (i <= CACHED, status) {
                        (true, 200) if body["source"] == "cache" => &tally.hits_ok,
                        (false, 503) if body["error"] == "service_unavailable" => &tally.misses_503,
                        _ => &tally.other,
                    }
                    .fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    eventually("the load running", || async {
        tally.requests.load(Ordering::Relaxed) >= 20
    })
    .await;
    pg.stop();
    down.store(true, Ordering::Relaxed);
    eventually(
        "the load to see hits and misses with the store down",
        || async {
            tally.hits_ok.load(Ordering::Relaxed) >= 50
                && tally.misses_503.load(Ordering::Relaxed) >= 5
        },
    )
    .await;
    let (status, body) = ready(&client, &base).await;

    // Assert: hits answered from the cache, misses a 503 with the JSON
    // body, and /ready names the store as the failing check.
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["store"]["ok"], false, "{body}");
    assert_eq!(body["redis"]["ok"], true, "{body}");
    assert!(
        body["store"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    );
    // A miss's answer while the server is down: every field of the error body.
    let (status, body) = price(&client, &base, &format!("P-{PRODUCTS}")).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"], "service_unavailable");
    assert!(body["detail"].is_string());
    // Requests that were in flight as the server died may have ended either
    // way; once it was down, a hit never failed and a miss never succeeded.
    down.store(false, Ordering::Relaxed);
    assert_eq!(tally.other.load(Ordering::Relaxed), 0);

    // Act: the server comes back; nothing is restarted on the api's side.
    pg.restart().await;

    // Assert: misses and /ready recover on their own, with the right price.
    eventually("a miss answered from the store again", || async {
        price(&client, &base, &format!("P-{}", CACHED + 1)).await.0 == 200
    })
    .await;
    eventually("/ready ready again", || async {
        ready(&client, &base).await.0 == 200
    })
    .await;
    let (status, body) = price(&client, &base, &format!("P-{PRODUCTS}")).await;
    assert_eq!(status, 200, "{body}");
    let expected = shared::store::seed::synthetic(PRODUCTS);
    let cents = shared::pricing::compute_price_cents(&expected.product, &expected.signals());
    assert_eq!(
        (body["base_price"].as_f64().unwrap() * 100.0).round() as i64,
        cents
    );
    running.store(false, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
