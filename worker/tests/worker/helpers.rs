//! Workers started in-process (or as real processes) over a test Redis.

use std::time::Duration;

use queue::{JobRecord, JobState, Queue, QueueSettings};
use shared::config::{DatabaseSettings, LogFormat, RedisSettings, TelemetrySettings};
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
        telemetry: TelemetrySettings {
            service_name: "pricing-worker-test".into(),
            otlp_endpoint: None,
            otlp_protocol: Default::default(),
            sampler: Default::default(),
            log_format: LogFormat::Pretty,
            log_filter: "info".into(),
        },
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

pub fn queue(redis: &RedisServer, settings: QueueSettings) -> Queue {
    let pool = RedisPool::new(&RedisSettings::for_url(redis.url(), NS)).unwrap();
    Queue::new(pool, NS, queue::DEFAULT_QUEUE, settings)
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

/// Waits (polling Redis, bounded) until the job reaches one of `states`.
pub async fn wait_for(queue: &Queue, id: &str, states: &[JobState], within: Duration) -> JobRecord {
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
            && states.contains(&s.record.state)
        {
            return s.record.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} never reached {states:?}; last seen {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The worker's `/metrics` text.
pub async fn scrape(w: &RunningWorker) -> String {
    reqwest::get(format!("http://{}/metrics", w.metrics))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
