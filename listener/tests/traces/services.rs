//! The services under test as real processes (the api, worker and listener
//! binaries) exporting over OTLP, and requests to the api from a client
//! whose trace the services must continue.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use testkit::otlp_receiver::OtlpReceiver;
use testkit::{RedisServer, free_port, seeded_store};

use crate::{CLIENT_SPAN, CLIENT_TRACE, LONG, NS};

pub fn bin(name: &str) -> PathBuf {
    testkit::sibling_bin(env!("CARGO_BIN_EXE_listener"), name)
}

pub struct Services {
    children: Vec<Child>,
    pub api: String,
    _logs: tempfile::TempDir,
    pub api_log: PathBuf,
}

impl Services {
    /// The api, worker and listener, exporting to `otlp` over gRPC.
    pub async fn start(redis: &RedisServer, db: &str, otlp: &str) -> Self {
        Self::start_with(redis, db, otlp, &["api", "worker", "listener"], &[]).await
    }

    /// The services `names`, with `extra` environment on top of the defaults.
    pub async fn start_with(
        redis: &RedisServer,
        db: &str,
        otlp: &str,
        names: &[&str],
        extra: &[(&str, &str)],
    ) -> Self {
        let api_port = free_port();
        let logs = tempfile::tempdir().unwrap();
        let api_log = logs.path().join("api.log");
        let mut envs: Vec<(String, String)> = [
            ("REDIS_URL", redis.url()),
            ("REDIS_NAMESPACE", NS.to_string()),
            ("DATABASE_URL", db.to_string()),
            ("API_ADDR", format!("127.0.0.1:{api_port}")),
            ("WORKER_METRICS_ADDR", "127.0.0.1:0".to_string()),
            ("LISTENER_METRICS_ADDR", "127.0.0.1:0".to_string()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.to_string()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
            ("RUST_LOG", "warn".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (k, v) in extra {
            envs.retain(|(key, _)| key != k);
            envs.push((k.to_string(), v.to_string()));
        }
        let children = names
            .iter()
            .map(|name| {
                let stdout = if *name == "api" {
                    Stdio::from(std::fs::File::create(&api_log).unwrap())
                } else {
                    Stdio::null()
                };
                Command::new(bin(name))
                    .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    .stdout(stdout)
                    .stderr(Stdio::inherit())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let api = format!("http://127.0.0.1:{api_port}");
        let services = Self {
            children,
            api,
            _logs: logs,
            api_log,
        };
        if names.contains(&"api") {
            let client = reqwest::Client::new();
            let health = format!("{}/health", services.api);
            wait(&format!("the api answering on {health}"), || async {
                client.get(&health).send().await.is_ok()
            })
            .await;
        }
        if names.contains(&"listener") {
            wait("the listener subscribed", || async {
                redis.subscribers("market_events").await > 0
            })
            .await;
        }
        services
    }

    /// SIGTERM to each (by PID), then waits for all to exit (off the
    /// runtime's threads, which the receiver needs while the services flush
    /// their last spans). Returns what the api printed.
    pub async fn stop(mut self) -> String {
        let mut children = std::mem::take(&mut self.children);
        let log = self.api_log.clone();
        tokio::task::spawn_blocking(move || {
            for child in &mut children {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
            }
            for child in &mut children {
                let status = child.wait().unwrap();
                assert!(status.success(), "a service exited with {status}");
            }
            std::fs::read_to_string(&log).unwrap_or_default()
        })
        .await
        .unwrap()
    }
}

impl Drop for Services {
    /// A test that failed before `stop` must not leave its services running.
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The api, worker and listener over a Redis and a catalog of 20 products
/// of their own (keep its folder alive), exporting over gRPC to a receiver.
pub async fn start_traced() -> (RedisServer, tempfile::TempDir, OtlpReceiver, Services) {
    let redis = RedisServer::start().await;
    let (_store, dir, db) = seeded_store(20).await;
    let rx = OtlpReceiver::start().await;
    let services = Services::start(&redis, &db, &rx.endpoint()).await;
    (redis, dir, rx, services)
}

/// The queue of the events' jobs, to see them finish.
pub fn queue(redis: &RedisServer) -> queue::Queue {
    let settings = shared::config::RedisSettings::for_url(redis.url(), NS);
    queue::Queue::new(
        shared::redis_pool::RedisPool::new(&settings).unwrap(),
        NS,
        queue::EVENTS_QUEUE,
        queue::QueueSettings::default(),
    )
}

/// Polls `check` until it holds (bounded by [`LONG`], a hang guard).
pub async fn wait<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    testkit::eventually(LONG, what, check).await
}

/// POSTs the market event `body` as the client; returns the api's answer.
pub async fn publish_event(api: &str, body: &str) -> reqwest::Response {
    post(api, "/api/v1/publish-market-event", body).await
}

pub async fn post(api: &str, path: &str, body: &str) -> reqwest::Response {
    post_in(api, path, body, CLIENT_TRACE).await
}

/// A POST from a client whose span is `CLIENT_SPAN` of trace `trace`.
pub async fn post_in(api: &str, path: &str, body: &str, trace: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{api}{path}"))
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{trace}-{CLIENT_SPAN}-01"))
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}
