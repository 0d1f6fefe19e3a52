//! Shared test setup: a listener (and, when needed, an api and a worker)
//! over a real redis-server and a real SQLite catalog.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use queue::{QueueSettings, Queues, Routes};
use shared::config::{DatabaseSettings, RedisSettings, TelemetrySettings};
use shared::event_bus::{EventBus, EventSettings};
use shared::keys::Keys;
use shared::redis_pool::RedisPool;
use testkit::RedisServer;

pub const NS: &str = "lt";
pub const LONG: Duration = Duration::from_secs(60);

pub fn telemetry() -> TelemetrySettings {
    testkit::telemetry("pricing-listener-test", "info")
}

pub fn settings(redis: &RedisServer, db_url: &str) -> listener::Settings {
    listener::Settings {
        redis: RedisSettings::for_url(redis.url(), NS),
        database: DatabaseSettings::for_url(db_url, 2),
        telemetry: telemetry(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        events: EventSettings::default(),
        queue: QueueSettings::default(),
        routes: queue::Routes::default(),
        recalc_retry: shared::jobs::RECALC_RETRY,
        coalesce_window: Duration::from_millis(200),
        claim_idle: Duration::from_secs(30),
        dead_letter_max: 20_000,
    }
}

pub struct Running {
    pub metrics: SocketAddr,
    pub consumer: String,
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.handle.await.unwrap().unwrap();
    }
}

/// A shutdown future that resolves when its sender is used or dropped.
type Shutdown = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Spawns `run(shutdown)`; the sender stops it.
fn spawn_stoppable<F>(
    run: impl FnOnce(Shutdown) -> F,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<F::Output>,
)
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(run(Box::pin(async {
        let _ = rx.await;
    })));
    (tx, handle)
}

pub async fn start_listener(settings: listener::Settings) -> Running {
    shared::telemetry::init_for_tests();
    let l = listener::Listener::build(settings).await.unwrap();
    let metrics = l.metrics_addr();
    let consumer = l.consumer().to_string();
    let (tx, handle) = spawn_stoppable(|stop| l.run_until_stopped(stop));
    Running {
        metrics,
        consumer,
        stop: tx,
        handle,
    }
}

/// The api and a worker, running in this process over one Redis and one
/// catalog, for tests that follow a request through to its job.
pub struct ApiAndWorker {
    /// The api's port on 127.0.0.1.
    pub port: u16,
    api_stop: tokio::sync::oneshot::Sender<()>,
    api: tokio::task::JoinHandle<anyhow::Result<()>>,
    worker_stop: tokio::sync::oneshot::Sender<()>,
    worker: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl ApiAndWorker {
    pub async fn stop(self) {
        let _ = self.api_stop.send(());
        let _ = self.worker_stop.send(());
        self.api.await.unwrap().unwrap();
        self.worker.await.unwrap().unwrap();
    }
}

pub async fn start_api_and_worker(redis: &RedisServer, db_url: &str) -> ApiAndWorker {
    start_api_and_worker_with(redis, db_url, |_| {}, |_| {}).await
}

/// [`start_api_and_worker`] with the api's and the worker's settings adjusted first.
pub async fn start_api_and_worker_with(
    redis: &RedisServer,
    db_url: &str,
    tweak_api: impl FnOnce(&mut api::Settings),
    tweak_worker: impl FnOnce(&mut worker::Settings),
) -> ApiAndWorker {
    shared::telemetry::init_for_tests();
    let database = DatabaseSettings::for_url(db_url, 2);
    let cache = shared::config::CacheSettings {
        ttl: Duration::from_secs(600),
    };
    let mut api_settings = api::Settings {
        addr: "127.0.0.1:0".parse().unwrap(),
        redis: RedisSettings::for_url(redis.url(), NS),
        database: database.clone(),
        cache,
        telemetry: telemetry(),
        queue: QueueSettings::default(),
        routes: queue::Routes::default(),
        admin_token: None,
        recalc_retry: shared::jobs::RECALC_RETRY,
        events: EventSettings::default(),
        jaeger_ui_url: None,
        near_cache_max_entries: 0,
        worker_threads: 0,
    };
    api_settings.telemetry.service_name = "pricing-api-test".into();
    tweak_api(&mut api_settings);
    let app = api::Application::build(&api_settings).await.unwrap();
    let port = app.port();
    let (api_stop, api) = spawn_stoppable(|stop| app.run_until_stopped(stop));
    let mut worker_settings = worker::Settings {
        redis: RedisSettings::for_url(redis.url(), NS),
        database,
        telemetry: telemetry(),
        queue: QueueSettings::default(),
        routes: queue::Routes::default(),
        consume: queue::Consume::default(),
        cache,
        feed: None,
        recalc_lock_ttl: Duration::from_secs(30),
        concurrency: 4,
        prefetch: 4,
        shutdown_timeout: Duration::from_secs(5),
        job_timeout: Duration::from_secs(60),
        time_limits: Default::default(),
        revoke_grace: std::time::Duration::from_secs(10),
        schedules: Default::default(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
    };
    tweak_worker(&mut worker_settings);
    let registry = worker::full_registry(&worker_settings).await.unwrap();
    let w = worker::Worker::build(worker_settings, registry)
        .await
        .unwrap();
    let (worker_stop, worker) = spawn_stoppable(|stop| w.run_until_stopped(stop));
    ApiAndWorker {
        port,
        api_stop,
        api,
        worker_stop,
        worker,
    }
}

/// Sends `request` and returns its JSON body.
pub async fn json_of(request: reqwest::RequestBuilder) -> serde_json::Value {
    request.send().await.unwrap().json().await.unwrap()
}

pub fn pool(redis: &RedisServer) -> RedisPool {
    RedisPool::new(&RedisSettings::for_url(redis.url(), NS)).unwrap()
}

/// Every queue of the test namespace (jobs go to the queue their type routes to).
pub fn queues(redis: &RedisServer) -> Queues {
    Queues::new(pool(redis), NS, Routes::default(), QueueSettings::default())
}

pub fn bus(redis: &RedisServer) -> EventBus {
    EventBus::new(pool(redis), &Keys::new(NS), EventSettings::default())
}

/// Every queued job's name and arguments, read straight from the queue's
/// `args` and `jobs` hashes (no worker runs in these tests unless started).
pub async fn queued_jobs(redis: &RedisServer) -> Vec<(String, serde_json::Value)> {
    let mut conn = redis.connection().await;
    let mut out = Vec::new();
    for queue in Routes::default().queues() {
        let args: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(format!("{{{NS}:{queue}}}:args"))
            .query_async(&mut conn)
            .await
            .unwrap();
        let jobs: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(format!("{{{NS}:{queue}}}:jobs"))
            .query_async(&mut conn)
            .await
            .unwrap();
        out.extend(args.into_iter().map(|(id, a)| {
            let desc: serde_json::Value = serde_json::from_str(&jobs[&id]).unwrap();
            (
                desc["name"].as_str().unwrap().to_string(),
                serde_json::from_str(&a).unwrap(),
            )
        }));
    }
    out
}

/// How many times each product is named by a queued `recalculate_prices`.
pub async fn product_mentions(redis: &RedisServer) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for (name, args) in queued_jobs(redis).await {
        if name == "recalculate_prices" {
            for id in args["product_ids"].as_array().unwrap() {
                *out.entry(id.as_str().unwrap().to_string()).or_insert(0) += 1;
            }
        }
    }
    out
}

pub use testkit::eventually;

/// Publishes on the channel with the real `redis-cli`, as the original
/// service's publishers do; returns the receiver count it printed.
pub fn redis_cli_publish(redis: &RedisServer, channel: &str, message: &str) -> u64 {
    let out = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &redis.port().to_string()])
        .args(["PUBLISH", channel, message])
        .output()
        .expect("redis-cli");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// Waits until someone subscribes to the channel.
pub async fn wait_for_subscriber(redis: &RedisServer, channel: &str) {
    eventually(LONG, "a subscriber", || async {
        redis.subscribers(channel).await > 0
    })
    .await;
}

/// Entries in the event stream.
pub async fn stream_len(redis: &RedisServer) -> u64 {
    let mut conn = redis.connection().await;
    redis::cmd("XLEN")
        .arg(shared::keys::Keys::new(NS).event_stream())
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// Entries read by the group but not yet acknowledged (0 without a group).
pub async fn stream_pending(redis: &RedisServer) -> u64 {
    let mut conn = redis.connection().await;
    let info: redis::RedisResult<redis::Value> = redis::cmd("XPENDING")
        .arg(shared::keys::Keys::new(NS).event_stream())
        .arg("listeners")
        .query_async(&mut conn)
        .await;
    match info {
        Ok(redis::Value::Array(v)) => redis::from_redis_value_ref::<u64>(&v[0]).unwrap_or(0),
        _ => 0,
    }
}
