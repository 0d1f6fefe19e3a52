//! Workers started in-process (or as real processes) over a test Redis.

use std::time::Duration;

use queue::{JobRecord, JobSpec, JobState, JobStatus, NewJob, Queue, QueueSettings};
use shared::cache::CachedPrice;
use shared::config::{DatabaseSettings, RedisSettings};
use shared::redis_pool::RedisPool;
use testkit::RedisServer;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use worker::Registry;
use worker::Settings;
use worker::Worker;

pub const NS: &str = "wt";

pub fn settings(redis: &RedisServer, queue: QueueSettings) -> Settings {
    Settings {
        redis: RedisSettings::for_url(redis.url(), NS),
        database: DatabaseSettings::for_url("sqlite::memory:", 1),
        telemetry: testkit::telemetry("pricing-worker-test", "info"),
        queue,
        routes: queue::Routes::default(),
        consume: queue::Consume::default(),
        cache: shared::config::CacheSettings {
            ttl: Duration::from_secs(3600),
        },
        feed: None,
        recalc_lock_ttl: Duration::from_secs(60),
        concurrency: 4,
        prefetch: 4,
        shutdown_timeout: Duration::from_secs(5),
        job_timeout: Duration::from_secs(600),
        time_limits: Default::default(),
        revoke_grace: std::time::Duration::from_secs(10),
        schedules: Default::default(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
    }
}

/// Worker settings over `redis` that read the catalog at `database_url`.
pub fn catalog_settings(redis: &RedisServer, database_url: String) -> Settings {
    let mut s = settings(redis, QueueSettings::default());
    s.database.url = database_url;
    s
}

/// A pool of the test's own connections to `redis`, in the tests' namespace.
pub fn pool(redis: &RedisServer) -> RedisPool {
    RedisPool::new(&RedisSettings::for_url(redis.url(), NS)).unwrap()
}

pub fn queue(redis: &RedisServer, settings: QueueSettings) -> Queue {
    Queue::new(pool(redis), NS, queue::DEFAULT_QUEUE, settings)
}

/// Pushes one job of type `J` as it declares itself; returns its id.
pub async fn push<J: JobSpec>(queue: &Queue, job: &J) -> String {
    queue.push(NewJob::of(job).unwrap()).await.unwrap().id
}

/// Pushes `jobs` in one pipeline; returns their ids, in order.
pub async fn push_all(queue: &Queue, jobs: &[NewJob]) -> Vec<String> {
    let pushed = queue.push_bulk(jobs).await.unwrap();
    pushed.into_iter().map(|p| p.id).collect()
}

pub struct RunningWorker {
    pub id: String,
    pub metrics: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl RunningWorker {
    /// Sends the shutdown signal and waits for the worker to finish draining.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
    }
}

impl Drop for RunningWorker {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

pub async fn start(settings: Settings, registry: Registry) -> RunningWorker {
    shared::telemetry::init_for_tests();
    let worker = Worker::build(settings, registry).await.unwrap();
    let (tx, rx) = oneshot::channel();
    let id = worker.id().to_string();
    let metrics = worker.metrics_addr();
    let handle = tokio::spawn(worker.run_until_stopped(async {
        let _ = rx.await;
    }));
    RunningWorker {
        id,
        metrics,
        stop: Some(tx),
        handle: Some(handle),
    }
}

/// A worker with the default settings over `redis`, running `registry`.
pub async fn start_on(redis: &RedisServer, registry: Registry) -> RunningWorker {
    start(settings(redis, QueueSettings::default()), registry).await
}

/// A test Redis, its default queue, and a worker with the default
/// settings over it running `registry`.
pub async fn started(registry: Registry) -> (RedisServer, Queue, RunningWorker) {
    let redis = RedisServer::start().await;
    let q = queue(&redis, QueueSettings::default());
    let w = start_on(&redis, registry).await;
    (redis, q, w)
}

/// A worker running every job of the service ([`worker::full_registry`]).
pub async fn start_full(settings: Settings) -> RunningWorker {
    let registry = worker::full_registry(&settings).await.unwrap();
    start(settings, registry).await
}

/// Waits (polling Redis, bounded) until the job reaches one of `states`.
pub async fn wait_for(queue: &Queue, id: &str, states: &[JobState], within: Duration) -> JobRecord {
    let what = format!("job {id} never reached {states:?}");
    wait_until(queue, id, within, &what, |s| {
        states.contains(&s.record.state)
    })
    .await
    .record
}

/// Waits (polling Redis, bounded by `within`) until the job's status
/// satisfies `done`, and returns that status; panics with `what` and the
/// last status seen.
pub async fn wait_until(
    queue: &Queue,
    id: &str,
    within: Duration,
    what: &str,
    mut done: impl FnMut(&JobStatus) -> bool,
) -> JobStatus {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        // The test's own connection may need a moment after a Redis restart.
        let Ok(status) = queue.status(id).await else {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis never came back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if let Some(s) = &status
            && done(s)
        {
            return s.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}; last seen {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The cached price of product `id`, read straight from Redis.
pub async fn cached(redis: &RedisServer, id: &str) -> Option<CachedPrice> {
    let mut conn = redis.connection().await;
    let raw: Option<String> = redis::cmd("HGET")
        .arg(shared::keys::Keys::new(NS).price(id))
        .arg(id)
        .query_async(&mut conn)
        .await
        .unwrap();
    raw.map(|r| CachedPrice::decode(id, r.as_bytes()).expect("a valid cache entry"))
}

/// The worker's `/metrics` text.
pub async fn scrape(w: &RunningWorker) -> String {
    testkit::scrape(&format!("http://{}/metrics", w.metrics)).await
}

/// Waits (polling, bounded by `within`) until the worker's `/metrics` shows `series`.
pub async fn wait_for_series(w: &RunningWorker, series: &str, within: Duration, what: &str) {
    testkit::eventually(within, what, || async { scrape(w).await.contains(series) }).await;
}

/// Runs the worker binary with `envs` (metrics on a free port) and asserts
/// that it refused to start with one non-blank line on stderr (`label` names
/// the case); returns that line and the whole of stderr.
pub fn refused_in_one_line(envs: &[(&str, &str)], label: &str) -> (String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_worker"))
        .env("WORKER_METRICS_ADDR", "127.0.0.1:0")
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{label} started");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{label}: {stderr}");
    (lines[0].to_string(), stderr)
}
