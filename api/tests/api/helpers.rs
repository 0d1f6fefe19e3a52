//! `spawn_app()`: a real api on 127.0.0.1:0 over its own Redis and catalog.

use std::sync::Arc;
use std::time::Duration;

use api::AppState;
use api::Application;
use api::Settings;
use serde_json::Value;
use shared::config::{CacheSettings, DatabaseSettings, RedisSettings};
use shared::store::CatalogStore;
use shared::store::sqlite::SqliteStore;
use tempfile::TempDir;
use testkit::{RedisServer, seeded_store};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Products seeded into every test catalog.
pub const SEEDED: u64 = 50;

/// Cache lifetime used by the tests.
pub const TTL_SECS: u64 = 60;

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub redis: RedisServer,
    pub store: Arc<SqliteStore>,
    pub state: AppState,
    pub namespace: String,
    stop: Option<oneshot::Sender<()>>,
    served: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: TempDir,
}

pub fn settings(redis_url: &str, database_url: &str, namespace: &str) -> Settings {
    let mut redis = RedisSettings::for_url(redis_url, namespace);
    redis.timeout = Duration::from_millis(300);
    Settings {
        addr: "127.0.0.1:0".parse().expect("addr"),
        redis,
        database: DatabaseSettings::for_url(database_url, 4),
        cache: CacheSettings {
            ttl: Duration::from_secs(TTL_SECS),
        },
        telemetry: testkit::telemetry("pricing-api-test", "info"),
        queue: queue::QueueSettings::default(),
        routes: queue::Routes::default(),
        admin_token: None,
        recalc_retry: shared::jobs::RECALC_RETRY,
        events: shared::event_bus::EventSettings::default(),
        jaeger_ui_url: None,
        near_cache_max_entries: 0,
        worker_threads: 0,
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Like [`spawn_app`], with the settings adjusted first.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    shared::telemetry::init_for_tests();
    let redis = RedisServer::start().await;
    let (store, dir, url) = seeded_store(SEEDED).await;
    let namespace = format!("test-{}", redis.port());
    let mut settings = settings(&redis.url(), &url, &namespace);
    tweak(&mut settings);
    let app = Application::build_with_store(&settings, store.clone() as Arc<dyn CatalogStore>)
        .await
        .expect("build app");
    let base = format!("http://127.0.0.1:{}", app.port());
    let state = app.state().clone();
    let (tx, rx) = oneshot::channel();
    let served = tokio::spawn(app.run_until_stopped(async {
        let _ = rx.await;
    }));
    TestApp {
        base,
        client: reqwest::Client::new(),
        redis,
        store,
        state,
        namespace,
        stop: Some(tx),
        served: Some(served),
        _dir: dir,
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}

impl TestApp {
    /// Resolves the server's shutdown future: it stops accepting and lets
    /// open connections finish their requests.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Waits for the server to have stopped, and returns what it returned.
    pub async fn stopped(&mut self) -> anyhow::Result<()> {
        let served = self.served.take().expect("the server was awaited once");
        served.await.expect("the server task panicked")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends `method path`, with this `Authorization` header value if one is
    /// given; the request is built at once, so the future borrows nothing.
    pub fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        authorization: Option<&str>,
    ) -> impl Future<Output = reqwest::Response> + use<> {
        let mut req = self.client.request(method, self.url(path));
        if let Some(value) = authorization {
            req = req.header("authorization", value);
        }
        async move { req.send().await.expect("request") }
    }

    /// POSTs a JSON value; returns status and parsed body.
    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        json_of(self.client.post(self.url(path)).json(body)).await
    }

    /// POSTs raw bytes with a content type; returns status and parsed body.
    pub async fn post_raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
        let req = self.client.post(self.url(path));
        json_of(req.header("content-type", content_type).body(body)).await
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        json_of(self.client.get(self.url(path))).await
    }

    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let resp = self.send(reqwest::Method::GET, path, None).await;
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("text body"))
    }

    pub async fn price(&self, product_id: &str, prime: bool) -> (u16, Value) {
        self.post_json(
            "/api/v1/price",
            &serde_json::json!({"product_id": product_id, "is_prime_member": prime}),
        )
        .await
    }

    /// The hash that holds a product's cached price (its field: the id).
    pub fn price_key(&self, product_id: &str) -> String {
        shared::keys::Keys::new(&self.namespace).price(product_id)
    }

    /// The raw cached value of a product, read straight from Redis.
    pub async fn cached_raw(&self, product_id: &str) -> Option<String> {
        let mut conn = self.redis.connection().await;
        redis::cmd("HGET")
            .arg(self.price_key(product_id))
            .arg(product_id)
            .query_async(&mut conn)
            .await
            .expect("HGET")
    }

    /// Overwrites a product's raw cached value.
    pub async fn set_cached_raw(&self, product_id: &str, raw: &str) {
        let mut conn = self.redis.connection().await;
        let _: () = redis::cmd("HSET")
            .arg(self.price_key(product_id))
            .arg(product_id)
            .arg(raw)
            .query_async(&mut conn)
            .await
            .expect("HSET");
    }
}

/// Sends `req`; returns status and parsed body.
async fn json_of(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON body"))
}

/// The api's router driven in-process with `oneshot`, with no server and no
/// Redis: the Redis address is a closed loopback port, so a request that
/// reached Redis would fail (503) instead of passing. For the tests of
/// validation, errors and routing, which must answer before Redis.
pub struct Offline {
    router: axum::Router,
    _dir: TempDir,
}

/// An [`Offline`] api over a fresh seeded SQLite catalog.
pub async fn offline_app() -> Offline {
    offline_app_with(|_| {}).await
}

/// Like [`offline_app`], with the settings adjusted first.
pub async fn offline_app_with(tweak: impl FnOnce(&mut Settings)) -> Offline {
    shared::telemetry::init_for_tests();
    let (store, dir, url) = seeded_store(SEEDED).await;
    // Port 1 on loopback: nothing listens there, so a connection is refused at once.
    let mut settings = settings("redis://127.0.0.1:1", &url, "offline");
    tweak(&mut settings);
    let state = AppState::build(&settings, store as Arc<dyn CatalogStore>)
        .await
        .expect("app state");
    Offline {
        router: api::app(state),
        _dir: dir,
    }
}

impl Offline {
    /// Sends one request; returns the response with its body read.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (u16, axum::http::HeaderMap, Vec<u8>) {
        self.send_body(method, path, headers, axum::body::Body::from(body))
            .await
    }

    /// Like [`Self::send`], with any body (a stream, of unknown length).
    pub async fn send_body(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: axum::body::Body,
    ) -> (u16, axum::http::HeaderMap, Vec<u8>) {
        use tower::ServiceExt as _;
        let mut req = axum::http::Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(body).expect("request");
        let resp = self.router.clone().oneshot(req).await.expect("infallible");
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.expect("body");
        (parts.status.as_u16(), parts.headers, bytes.to_vec())
    }

    /// A request whose answer is JSON; returns status and parsed body.
    pub async fn json(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let (status, _, bytes) = self
            .send(method, path, &[("content-type", content_type)], body)
            .await;
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {bytes:?}"));
        (status, body)
    }

    /// POSTs a JSON value; returns status and parsed body.
    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        self.json(
            "POST",
            path,
            "application/json",
            body.to_string().into_bytes(),
        )
        .await
    }

    /// POSTs raw bytes with a content type; returns status and parsed body.
    pub async fn post_raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
        self.json("POST", path, content_type, body).await
    }

    /// GETs a JSON answer.
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        self.json("GET", path, "application/json", Vec::new()).await
    }

    /// GETs a text answer.
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let (status, _, bytes) = self.send("GET", path, &[], Vec::new()).await;
        (status, String::from_utf8(bytes).expect("UTF-8"))
    }
}
