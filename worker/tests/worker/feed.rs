//! Recalculation against a local stub of the market-data feed, over HTTP
//! and over HTTPS (a certificate from a private CA made for the test).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use queue::{Backoff, JobState, NewJob, QueueSettings, RetryPolicy};
use shared::domain::MarketSignals;
use shared::jobs::{RecalculateAllPrices, RecalculatePrices};
use shared::pricing::compute_price_cents;
use shared::store::CatalogStore;
use testkit::{RedisServer, seeded_store};
use worker::jobs::feed::FeedSettings;

use crate::helpers::{NS, cached, catalog_settings, queue, start_full, wait_for, wait_until};

const LONG: Duration = Duration::from_secs(60);
const FED_PRICE: f64 = 1.0;
const PUSHER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PUSHER_SPAN: &str = "b7ad6b7169203331";

/// How the stub fails its first requests.
#[derive(Clone, Copy)]
enum Failure {
    /// Answers this status.
    Status(StatusCode),
    /// Answers 200 with a body that is not the feed's shape.
    Malformed,
    /// Answers only after the worker's total timeout.
    Slow,
}

/// The worker's total feed timeout in these tests; [`Failure::Slow`] waits longer.
const FEED_TIMEOUT: Duration = Duration::from_millis(300);

#[derive(Clone)]
struct Stub {
    hits: Arc<AtomicUsize>,
    traceparents: Arc<std::sync::Mutex<Vec<Option<String>>>>,
    fail_first: usize,
    failure: Failure,
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
        match stub.failure {
            Failure::Status(status) => return (status, "unavailable").into_response(),
            Failure::Malformed => {
                return axum::Json(serde_json::json!({"prices": "soon"})).into_response();
            }
            Failure::Slow => tokio::time::sleep(FEED_TIMEOUT * 10).await,
        }
    }
    let prices: Vec<serde_json::Value> = q["ids"]
        .split(',')
        .map(|id| serde_json::json!({"product_id": id, "competitor": "feedco", "price": FED_PRICE}))
        .collect();
    axum::Json(serde_json::json!({ "prices": prices })).into_response()
}

fn stub_app(fail_first: usize, failure: Failure) -> (axum::Router, Stub) {
    let stub = Stub {
        hits: Arc::new(AtomicUsize::new(0)),
        traceparents: Arc::default(),
        fail_first,
        failure,
    };
    let app = axum::Router::new()
        .route("/competitor-prices", axum::routing::get(competitor_prices))
        .with_state(stub.clone());
    (app, stub)
}

async fn start_stub(fail_first: usize, failure: Failure) -> (String, Stub) {
    let (app, stub) = stub_app(fail_first, failure);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, stub)
}

/// The stub over HTTPS, with a certificate for 127.0.0.1 issued by a CA
/// made for this test; returns its URL, the stub and the CA's certificate
/// (PEM), which no system trusts.
async fn start_tls_stub() -> (String, Stub, String) {
    let ca = testkit::TestCa::new();
    let leaf = ca.issue(&["127.0.0.1"]);
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.cert_der.into()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf.key_der.into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (app, stub) = stub_app(0, Failure::Malformed);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(
                    hyper_util::rt::TokioIo::new(tls),
                    hyper_util::service::TowerToHyperService::new(app),
                )
                .await;
            });
        }
    });
    (url, stub, ca.cert_pem())
}

fn all() -> NewJob {
    NewJob::of(&RecalculateAllPrices {}).unwrap()
}

async fn cached_price(redis: &RedisServer, id: &str) -> Option<i64> {
    cached(redis, id).await.map(|c| c.price_cents)
}

/// The cached price of `id` is the one its stored signals give with the
/// feed's competitor price in place of the stored one.
async fn assert_fed(redis: &RedisServer, store: &dyn CatalogStore, id: &str) {
    let product = store.product(id).await.unwrap().unwrap();
    let mut signals = store.market_signals(id).await.unwrap();
    assert_ne!(signals, MarketSignals::default());
    let stored = compute_price_cents(&product, &signals);
    signals.lowest_competitor_price = Some(FED_PRICE);
    let fed = compute_price_cents(&product, &signals);
    assert_ne!(stored, fed, "{id}: the feed's price must make a difference");
    assert_eq!(cached_price(redis, id).await, Some(fed), "{id}");
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

/// Where the worker finds the feed.
enum FeedAt {
    /// The stub, failing its first requests as told.
    Stub(usize, Failure),
    /// The stub over HTTPS, answering every request; the worker trusts its
    /// CA (`MARKET_DATA_CA_FILE`) or only the system's roots.
    Tls { trust_its_ca: bool },
    /// A loopback port nothing listens on.
    Closed,
}

async fn run_recalc(
    feed: FeedAt,
    job: NewJob,
    max_attempts: u32,
) -> (
    RedisServer,
    Arc<dyn CatalogStore>,
    queue::JobRecord,
    usize,
    tempfile::TempDir,
    Vec<Option<String>>,
) {
    let redis = RedisServer::start().await;
    let (store, dir, url) = seeded_store(20).await;
    let mut extra_roots = Vec::new();
    let (feed_url, stub) = match feed {
        FeedAt::Stub(fail_first, failure) => {
            let (url, stub) = start_stub(fail_first, failure).await;
            (url, Some(stub))
        }
        FeedAt::Tls { trust_its_ca } => {
            let (url, stub, ca_pem) = start_tls_stub().await;
            if trust_its_ca {
                extra_roots = worker::certificates_in(&ca_pem).unwrap();
            }
            (url, Some(stub))
        }
        FeedAt::Closed => (format!("http://127.0.0.1:{}", testkit::free_port()), None),
    };
    let mut s = catalog_settings(&redis, url);
    s.feed = Some(FeedSettings {
        url: feed_url,
        extra_roots,
        connect_timeout: Duration::from_secs(3),
        timeout: FEED_TIMEOUT,
    });
    let w = start_full(s).await;
    let q = queue(&redis, QueueSettings::default());
    let mut job = job.retry(quick_retries(max_attempts));
    // As if pushed from inside a traced request.
    job.traceparent = Some(format!("00-{PUSHER_TRACE}-{PUSHER_SPAN}-01"));
    let id = q.push(job).await.unwrap().id;
    let rec = wait_for(&q, &id, &[JobState::Succeeded, JobState::Failed], LONG).await;
    w.stop().await;
    let n = stub.as_ref().map_or(0, |s| s.hits.load(Ordering::SeqCst));
    let traceparents = stub.map_or_else(Vec::new, |s| s.traceparents.lock().unwrap().clone());
    (redis, store, rec, n, dir, traceparents)
}

#[tokio::test]
async fn transient_feed_failures_are_retried_and_the_fed_prices_are_used() {
    let (redis, store, rec, hits, _dir, traceparents) = run_recalc(
        FeedAt::Stub(2, Failure::Status(StatusCode::SERVICE_UNAVAILABLE)),
        all(),
        4,
    )
    .await;

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
    assert_fed(&redis, store.as_ref(), "P-1").await;
}

#[tokio::test]
async fn a_feed_that_keeps_failing_uses_exactly_the_configured_attempts() {
    let (_redis, _store, rec, hits, _dir, _) = run_recalc(
        FeedAt::Stub(usize::MAX, Failure::Status(StatusCode::BAD_GATEWAY)),
        all(),
        3,
    )
    .await;
    assert_eq!(rec.state, JobState::Failed);
    assert_eq!((rec.attempts, hits), (3, 3));
    assert!(rec.error.unwrap().contains("502"));
}

#[tokio::test]
async fn a_4xx_from_the_feed_is_permanent() {
    let (_redis, _store, rec, hits, _dir, _) = run_recalc(
        FeedAt::Stub(usize::MAX, Failure::Status(StatusCode::NOT_FOUND)),
        all(),
        5,
    )
    .await;
    assert_eq!(rec.state, JobState::Failed);
    assert_eq!((rec.attempts, hits), (1, 1));
    assert!(rec.error.unwrap().starts_with("permanent:"));
}

#[tokio::test]
async fn a_malformed_feed_body_is_permanent() {
    let (redis, _store, rec, hits, _dir, _) =
        run_recalc(FeedAt::Stub(usize::MAX, Failure::Malformed), all(), 5).await;
    assert_eq!(rec.state, JobState::Failed);
    assert_eq!((rec.attempts, hits), (1, 1));
    let error = rec.error.unwrap();
    assert!(error.starts_with("permanent:"), "{error}");
    assert!(error.contains("malformed"), "{error}");
    assert!(cached_price(&redis, "P-1").await.is_none());
}

#[tokio::test]
async fn an_https_feed_behind_a_private_ca_is_used_once_its_ca_is_trusted() {
    let (redis, store, rec, hits, _dir, traceparents) =
        run_recalc(FeedAt::Tls { trust_its_ca: true }, all(), 3).await;
    assert_eq!(rec.state, JobState::Succeeded, "{:?}", rec.error);
    assert_eq!((rec.attempts, hits), (1, 1));
    assert!(
        traceparents[0].is_some(),
        "the trace context crosses TLS too"
    );
    assert_fed(&redis, store.as_ref(), "P-1").await;
}

#[tokio::test]
async fn an_https_feed_whose_certificate_is_not_trusted_fails_permanently() {
    // The system's roots do not include the test's CA: the handshake fails
    // before any request reaches the stub, and retrying would only repeat it.
    let (redis, _store, rec, hits, _dir, _) = run_recalc(
        FeedAt::Tls {
            trust_its_ca: false,
        },
        all(),
        5,
    )
    .await;
    assert_eq!(rec.state, JobState::Failed);
    assert_eq!((rec.attempts, hits), (1, 0), "{:?}", rec.error);
    let error = rec.error.unwrap();
    assert!(error.starts_with("permanent:"), "{error}");
    assert!(error.contains("certificate"), "{error}");
    assert!(cached_price(&redis, "P-1").await.is_none());
}

#[tokio::test]
async fn a_feed_timeout_is_retried_and_then_the_fed_prices_are_used() {
    let (redis, store, rec, hits, _dir, _) =
        run_recalc(FeedAt::Stub(1, Failure::Slow), all(), 3).await;
    assert_eq!(rec.state, JobState::Succeeded);
    assert_eq!((rec.attempts, hits), (2, 2), "one timeout, then success");
    assert_fed(&redis, store.as_ref(), "P-1").await;
}

#[tokio::test]
async fn a_refused_connection_is_retried_for_exactly_the_configured_attempts() {
    let (_redis, _store, rec, _, _dir, _) = run_recalc(FeedAt::Closed, all(), 3).await;
    assert_eq!(rec.state, JobState::Failed);
    assert_eq!(rec.attempts, 3);
    let error = rec.error.unwrap();
    assert!(error.contains("unreachable"), "{error}");
}

#[tokio::test]
async fn a_targeted_recalculation_uses_the_feed_too_and_retries_it() {
    let job = NewJob::of(&RecalculatePrices {
        product_ids: vec!["P-2".into(), "P-5".into()],
    })
    .unwrap();
    let (redis, store, rec, hits, _dir, _) = run_recalc(
        FeedAt::Stub(1, Failure::Status(StatusCode::SERVICE_UNAVAILABLE)),
        job,
        3,
    )
    .await;
    assert_eq!(rec.state, JobState::Succeeded);
    assert_eq!((rec.attempts, hits), (2, 2));
    assert_fed(&redis, store.as_ref(), "P-2").await;
    assert_fed(&redis, store.as_ref(), "P-5").await;
    assert!(cached_price(&redis, "P-1").await.is_none());
}

/// A feed that holds back every request naming `gate_id` until `open` is
/// notified, and answers the rest with [`FED_PRICE`].
#[derive(Clone)]
struct GatedFeed {
    gate_id: String,
    open: Arc<tokio::sync::Notify>,
    held: Arc<tokio::sync::Notify>,
}

async fn gated_prices(
    State(feed): State<GatedFeed>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> axum::response::Response {
    let ids: Vec<&str> = q["ids"].split(',').collect();
    if ids.contains(&feed.gate_id.as_str()) {
        feed.held.notify_one();
        feed.open.notified().await;
    }
    let prices: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| serde_json::json!({"product_id": id, "competitor": "feedco", "price": FED_PRICE}))
        .collect();
    axum::Json(serde_json::json!({ "prices": prices })).into_response()
}

/// Starts a feed that holds back the page holding `gate_id`, and worker
/// settings that read the catalog at `url` through it.
async fn gated_worker_settings(
    redis: &RedisServer,
    url: String,
    gate_id: String,
) -> (GatedFeed, worker::Settings) {
    let feed = GatedFeed {
        gate_id,
        open: Arc::default(),
        held: Arc::default(),
    };
    let app = axum::Router::new()
        .route("/competitor-prices", axum::routing::get(gated_prices))
        .with_state(feed.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let feed_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut s = catalog_settings(redis, url);
    s.feed = Some(FeedSettings {
        url: feed_url,
        extra_roots: Vec::new(),
        connect_timeout: Duration::from_secs(3),
        timeout: Duration::from_secs(600),
    });
    (feed, s)
}

#[tokio::test]
async fn a_running_recalculation_shows_its_progress() {
    // Arrange: a page more than there are writers, and some. The job
    // settles its oldest write (and reports progress) once every writer is
    // busy, so when the feed holds back the page after those, exactly the
    // first page is known written.
    use worker::jobs::recalc::{PAGE, WRITERS};
    let n = (WRITERS + 1) * PAGE + 2_000;
    let redis = RedisServer::start().await;
    let (_store, _dir, url) = seeded_store(n as u64).await;
    let mut ids: Vec<String> = (1..=n).map(|i| format!("P-{i}")).collect();
    ids.sort(); // the order the catalog is read in
    let (feed, s) = gated_worker_settings(&redis, url, ids[WRITERS * PAGE].clone()).await;
    let w = start_full(s).await;
    let q = queue(&redis, QueueSettings::default());

    // Act
    let id = q.push(all()).await.unwrap().id;
    feed.held.notified().await;

    // Assert: while it runs, the status shows the pages written so far.
    let progress = serde_json::json!({"processed": PAGE, "total": n});
    let st = wait_until(&q, &id, LONG, "no progress shown", |st| {
        st.result.as_ref() == Some(&progress)
    })
    .await;
    assert_eq!(st.record.state, JobState::Running);
    feed.open.notify_one();
    wait_for(&q, &id, &[JobState::Succeeded], LONG).await;
    let result = q.status(&id).await.unwrap().unwrap().result.unwrap();
    assert_eq!(result["updated_count"], n);
    w.stop().await;
}

/// A recalculation held at its second page by the feed, which never lets it
/// go: only a handler that listens to its cancellation token can end.
async fn held_recalculation(
    tune: impl FnOnce(&mut worker::Settings),
) -> (
    RedisServer,
    crate::helpers::RunningWorker,
    queue::Queue,
    String,
    tempfile::TempDir,
) {
    use worker::jobs::recalc::PAGE;
    let n = 2 * PAGE;
    let redis = RedisServer::start().await;
    let (_store, dir, url) = seeded_store(n as u64).await;
    let mut ids: Vec<String> = (1..=n).map(|i| format!("P-{i}")).collect();
    ids.sort();
    let (feed, mut s) = gated_worker_settings(&redis, url, ids[PAGE].clone()).await;
    tune(&mut s);
    let w = start_full(s).await;
    let q = queue(&redis, QueueSettings::default());
    let id = q.push(all().retry(quick_retries(1))).await.unwrap().id;
    feed.held.notified().await;
    (redis, w, q, id, dir)
}

#[tokio::test]
async fn a_full_recalculation_stops_at_its_soft_time_limit_without_the_hard_one() {
    // Arrange: soft limit 1 s, hard limit 10 minutes, the feed stalled.
    let (_redis, w, q, id, _dir) = held_recalculation(|s| {
        s.time_limits.insert(
            "recalculate_all_prices".into(),
            queue::TimeLimit {
                soft: Duration::from_secs(1),
                hard: Duration::from_secs(600),
            },
        );
    })
    .await;

    // Act / Assert: the attempt ends at the soft limit, failed (one attempt
    // allowed) with the reason; the hard limit was never needed.
    let rec = wait_for(&q, &id, &[JobState::Failed, JobState::Succeeded], LONG).await;
    assert_eq!(rec.state, JobState::Failed);
    let error = rec.error.unwrap_or_default();
    assert!(error.contains("stopped: asked to stop"), "{error}");
    assert!(error.ends_with("of 10000 products"), "{error}");
    w.stop().await;
}

#[tokio::test]
async fn a_revoked_full_recalculation_stops_long_before_the_grace() {
    // Arrange: a ten-minute grace, so only a cooperative stop ends it in time.
    let (_redis, w, q, id, _dir) = held_recalculation(|s| {
        s.revoke_grace = Duration::from_secs(600);
    })
    .await;
    let control = shared::keys::Keys::new(NS).control_channel();

    // Act
    let outcome = q.revoke(&id, &control).await.unwrap();

    // Assert
    assert_eq!(outcome, queue::RevokeOutcome::Revoking);
    let rec = wait_for(&q, &id, &[JobState::Cancelled], LONG).await;
    assert_eq!(rec.attempts, 1);
    w.stop().await;
}
