//! One trace per request across api → Redis → listener → worker, proven
//! with the real binaries exporting over OTLP/gRPC to an in-process receiver.
//! Its own test binary: it runs the three services as processes.
//!
//! The api and worker binaries are the ones `cargo test --workspace` builds
//! next to the listener's (`target/<profile>/api`, `…/worker`).

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shared::otlp_receiver::{OtlpReceiver, ReceivedSpan};
use shared::testing::{RedisServer, free_port, temp_store};

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn bin(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_listener")).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` (cargo test --workspace builds it)",
        path.display()
    );
    path
}

struct Services {
    children: Vec<Child>,
    api: String,
}

impl Services {
    async fn start(redis: &RedisServer, db: &str, otlp: &str) -> Self {
        let api_port = free_port();
        let envs = [
            ("REDIS_URL", redis.url()),
            ("REDIS_NAMESPACE", "tr".to_string()),
            ("DATABASE_URL", db.to_string()),
            ("API_ADDR", format!("127.0.0.1:{api_port}")),
            ("WORKER_METRICS_ADDR", "127.0.0.1:0".to_string()),
            ("LISTENER_METRICS_ADDR", "127.0.0.1:0".to_string()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.to_string()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
            ("RUST_LOG", "warn".to_string()),
        ];
        let children = ["api", "worker", "listener"]
            .into_iter()
            .map(|name| {
                Command::new(bin(name))
                    .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let api = format!("http://127.0.0.1:{api_port}");
        let client = reqwest::Client::new();
        for _ in 0..400 {
            if client.get(format!("{api}/health")).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        // The listener is subscribed and its consumer group exists.
        let mut conn = redis.connection().await;
        for _ in 0..400 {
            let n: Vec<(String, u64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg("market_events")
                .query_async(&mut conn)
                .await
                .unwrap();
            if n[0].1 > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Self { children, api }
    }

    fn stop(mut self) {
        for child in &mut self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
    }
}

/// A description and a predicate a span of the trace must satisfy.
type Wanted<'a> = (&'a str, &'a dyn Fn(&ReceivedSpan) -> bool);

/// Waits until the trace holds spans matching every predicate.
async fn wait_for_trace(
    rx: &OtlpReceiver,
    trace: &str,
    wanted: &[Wanted<'_>],
) -> Vec<ReceivedSpan> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let spans = rx.trace(trace);
        let missing: Vec<&str> = wanted
            .iter()
            .filter(|(_, f)| !spans.iter().any(f))
            .map(|(what, _)| *what)
            .collect();
        if missing.is_empty() {
            return spans;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "trace {trace} lacks {missing:?}; has {:#?}",
            spans
                .iter()
                .map(|s| format!("{} {} ({})", s.service, s.name, s.parent_span_id))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every span's parent is in the trace, except the api's server span, whose
/// parent is the client's span: one connected tree.
fn assert_connected(spans: &[ReceivedSpan]) {
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let roots: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| !ids.contains(s.parent_span_id.as_str()))
        .collect();
    assert_eq!(roots.len(), 1, "more than one root: {roots:#?}");
    assert_eq!(roots[0].parent_span_id, CLIENT_SPAN);
    assert_eq!(roots[0].service, "pricing-api");
    assert_eq!(roots[0].kind, 2, "the root is the api's server span");
}

fn services(spans: &[ReceivedSpan]) -> BTreeSet<&str> {
    spans.iter().map(|s| s.service.as_str()).collect()
}

async fn post(api: &str, path: &str, body: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{api}{path}"))
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_published_event_is_one_trace_across_api_listener_and_worker() {
    let redis = RedisServer::start().await;
    let (store, _dir, db) = temp_store().await;
    shared::store::seed::seed(store.as_ref(), 20).await.unwrap();
    let rx = OtlpReceiver::start().await;
    let services_up = Services::start(&redis, &db, &rx.endpoint()).await;

    let resp = post(
        &services_up.api,
        "/api/v1/publish-market-event",
        r#"{"kind":"demand_changed","data":{"demand":{"P-2":1.7}}}"#,
    )
    .await;
    assert_eq!(resp.status(), 202);
    let traceparent = resp.headers()["traceparent"].to_str().unwrap().to_string();
    assert!(
        traceparent.starts_with(&format!("00-{CLIENT_TRACE}-")),
        "the api continued the client's trace: {traceparent}"
    );

    let spans = wait_for_trace(
        &rx,
        CLIENT_TRACE,
        &[
            ("the api's server span", &|s| {
                s.service == "pricing-api"
                    && s.kind == 2
                    && s.name == "POST /api/v1/publish-market-event"
                    && s.attr("http.route") == Some("/api/v1/publish-market-event")
                    && s.attr("http.response.status_code") == Some("202")
            }),
            ("the api's Redis publish", &|s| {
                s.service == "pricing-api" && s.kind == 3 && s.attr("db.system") == Some("redis")
            }),
            ("the listener's span", &|s| {
                s.service == "pricing-listener" && s.attr("messaging.operation") == Some("process")
            }),
            ("the worker's job span", &|s| {
                s.service == "pricing-worker" && s.name == "recalculate_prices process"
            }),
            ("a worker Redis span", &|s| {
                s.service == "pricing-worker" && s.attr("db.system") == Some("redis")
            }),
        ],
    )
    .await;
    services_up.stop();

    assert_eq!(
        services(&spans),
        BTreeSet::from(["pricing-api", "pricing-listener", "pricing-worker"])
    );
    assert_connected(&spans);
    // The job span shows queue wait apart from its run time.
    let job = spans
        .iter()
        .find(|s| s.name == "recalculate_prices process")
        .unwrap();
    assert!(job.attr("job.queue_wait_ms").is_some(), "{job:?}");
    // Redis spans name the command, never keys or values.
    for s in spans
        .iter()
        .filter(|s| s.attr("db.system") == Some("redis"))
    {
        assert!(s.attr("db.operation.name").is_some(), "{s:?}");
        assert!(
            !s.attributes.iter().any(|(_, v)| v.contains("P-2")),
            "{s:?}"
        );
    }
}

#[tokio::test]
async fn a_recalculate_all_trigger_is_one_trace_from_api_to_worker() {
    let redis = RedisServer::start().await;
    let (store, _dir, db) = temp_store().await;
    shared::store::seed::seed(store.as_ref(), 20).await.unwrap();
    let rx = OtlpReceiver::start().await;
    let services_up = Services::start(&redis, &db, &rx.endpoint()).await;

    let resp = post(&services_up.api, "/api/v1/tasks/recalculate-all", "").await;
    assert_eq!(resp.status(), 202);

    let spans = wait_for_trace(
        &rx,
        CLIENT_TRACE,
        &[
            ("the api's server span", &|s| {
                s.service == "pricing-api" && s.name == "POST /api/v1/tasks/recalculate-all"
            }),
            ("the api's queue push", &|s| {
                s.service == "pricing-api" && s.attr("db.system") == Some("redis")
            }),
            ("the worker's job span", &|s| {
                s.service == "pricing-worker" && s.name == "recalculate_all_prices process"
            }),
            ("the lock acquire", &|s| {
                s.service == "pricing-worker"
                    && s.attr("db.operation.name") == Some("EVALSHA lock acquire")
            }),
        ],
    )
    .await;
    services_up.stop();

    assert_eq!(
        services(&spans),
        BTreeSet::from(["pricing-api", "pricing-worker"])
    );
    assert_connected(&spans);
}

#[tokio::test]
async fn requests_succeed_while_the_collector_is_down() {
    let redis = RedisServer::start().await;
    let (store, _dir, db) = temp_store().await;
    shared::store::seed::seed(store.as_ref(), 20).await.unwrap();
    // Nothing listens on this port.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let services_up = Services::start(&redis, &db, &closed).await;

    let client = reqwest::Client::new();
    for i in 0..50 {
        let resp = client
            .post(format!("{}/api/v1/price", services_up.api))
            .json(&serde_json::json!({"product_id": format!("P-{}", 1 + i % 20)}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let resp = post(&services_up.api, "/api/v1/publish-market-event", "").await;
    assert_eq!(resp.status(), 202);
    services_up.stop();
}
