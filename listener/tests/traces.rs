//! One trace per request across api → Redis → listener → worker, proven
//! with the real binaries exporting over OTLP (gRPC, and HTTP) to an
//! in-process receiver. Its own test binary: it runs the three services as
//! processes.
//!
//! The api and worker binaries are the ones `cargo test --workspace` builds
//! next to the listener's (`target/<profile>/api`, `…/worker`).

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use testkit::otlp_receiver::{OtlpReceiver, ReceivedSpan};
use testkit::{RedisServer, free_port, seeded_store};

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
/// A guard against a hang, never a timing check.
const LONG: Duration = Duration::from_secs(60);
const NS: &str = "tr";

fn bin(name: &str) -> PathBuf {
    testkit::sibling_bin(env!("CARGO_BIN_EXE_listener"), name)
}

struct Services {
    children: Vec<Child>,
    api: String,
    _logs: tempfile::TempDir,
    api_log: PathBuf,
}

impl Services {
    /// The api, worker and listener, exporting to `otlp` over gRPC.
    async fn start(redis: &RedisServer, db: &str, otlp: &str) -> Self {
        Self::start_with(redis, db, otlp, &["api", "worker", "listener"], &[]).await
    }

    /// The services `names`, with `extra` environment on top of the defaults.
    async fn start_with(
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
    async fn stop(mut self) -> String {
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

/// The queue of the events' jobs, to see them finish.
fn queue(redis: &RedisServer) -> queue::Queue {
    let settings = shared::config::RedisSettings::for_url(redis.url(), NS);
    queue::Queue::new(
        shared::redis_pool::RedisPool::new(&settings).unwrap(),
        NS,
        queue::EVENTS_QUEUE,
        queue::QueueSettings::default(),
    )
}

/// Polls `check` until it holds (bounded by [`LONG`], a hang guard).
async fn wait<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    testkit::eventually(LONG, what, check).await
}

/// A description and a predicate a span of the trace must satisfy.
type Wanted<'a> = (&'a str, &'a dyn Fn(&ReceivedSpan) -> bool);

/// [`Wanted`], owning its predicate.
type WantedOwned = (&'static str, Box<dyn Fn(&ReceivedSpan) -> bool>);

fn missing<'a>(spans: &[ReceivedSpan], wanted: &[Wanted<'a>]) -> Vec<&'a str> {
    wanted
        .iter()
        .filter(|(_, f)| !spans.iter().any(f))
        .map(|(what, _)| *what)
        .collect()
}

fn describe(spans: &[ReceivedSpan]) -> Vec<String> {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} {} kind={} id={} parent={}",
                s.service, s.name, s.kind, s.span_id, s.parent_span_id
            )
        })
        .collect()
}

/// Waits (on the receiver's exports) until the trace holds spans matching
/// every predicate.
async fn wait_for_trace(
    rx: &OtlpReceiver,
    trace: &str,
    wanted: &[Wanted<'_>],
) -> Vec<ReceivedSpan> {
    let of_trace = |all: &[ReceivedSpan]| -> Vec<ReceivedSpan> {
        all.iter()
            .filter(|s| s.trace_id == trace)
            .cloned()
            .collect()
    };
    match rx
        .wait_until(LONG, |all| missing(&of_trace(all), wanted).is_empty())
        .await
    {
        Ok(all) => of_trace(&all),
        Err(all) => {
            let spans = of_trace(&all);
            panic!(
                "trace {trace} lacks {:?}; has {:#?}",
                missing(&spans, wanted),
                describe(&spans)
            )
        }
    }
}

/// Every span's parent is in the trace, except the api's server span, whose
/// parent is the client's span: one connected tree. Every span names its
/// service and the services' version.
fn assert_connected(spans: &[ReceivedSpan]) {
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let roots: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| !ids.contains(s.parent_span_id.as_str()))
        .collect();
    assert_eq!(roots.len(), 1, "more than one root: {:#?}", describe(spans));
    assert_eq!(roots[0].parent_span_id, CLIENT_SPAN);
    assert_eq!(roots[0].service, "pricing-api");
    assert_eq!(roots[0].kind, 2, "the root is the api's server span");
    for s in spans {
        assert_eq!(
            s.resource_attr("service.version"),
            Some(env!("CARGO_PKG_VERSION")),
            "{s:?}"
        );
    }
}

fn services(spans: &[ReceivedSpan]) -> BTreeSet<&str> {
    spans.iter().map(|s| s.service.as_str()).collect()
}

fn find(spans: &[ReceivedSpan], f: impl Fn(&ReceivedSpan) -> bool) -> &ReceivedSpan {
    spans
        .iter()
        .find(|s| f(s))
        .unwrap_or_else(|| panic!("no such span in {:#?}", describe(spans)))
}

/// Redis spans name the command, never keys or values.
fn assert_redis_spans_hold_no_values(spans: &[ReceivedSpan], value: &str) {
    for s in spans
        .iter()
        .filter(|s| s.attr("db.system") == Some("redis"))
    {
        assert_eq!(s.kind, 3, "a Redis span is a client span: {s:?}");
        assert!(s.attr("db.operation.name").is_some(), "{s:?}");
        assert!(
            !s.attributes.iter().any(|(_, v)| v.contains(value)),
            "{s:?}"
        );
    }
}

async fn post(api: &str, path: &str, body: &str) -> reqwest::Response {
    post_in(api, path, body, CLIENT_TRACE).await
}

/// A POST from a client whose span is `CLIENT_SPAN` of trace `trace`.
async fn post_in(api: &str, path: &str, body: &str, trace: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{api}{path}"))
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{trace}-{CLIENT_SPAN}-01"))
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

/// What the event trace must hold, from the api's request to the worker's
/// Redis writes.
fn event_trace_wanted() -> Vec<WantedOwned> {
    vec![
        (
            "the api's server span",
            Box::new(|s: &ReceivedSpan| {
                s.service == "pricing-api"
                    && s.kind == 2
                    && s.name == "POST /api/v1/publish-market-event"
                    && s.attr("http.request.method") == Some("POST")
                    && s.attr("http.route") == Some("/api/v1/publish-market-event")
                    && s.attr("url.path") == Some("/api/v1/publish-market-event")
                    && s.attr("http.response.status_code") == Some("202")
            }),
        ),
        (
            "the api's producer span",
            Box::new(|s: &ReceivedSpan| {
                s.service == "pricing-api"
                    && s.kind == 4
                    && s.name == "publish market_events"
                    && s.attr("messaging.system") == Some("redis")
                    && s.attr("messaging.destination.name") == Some("market_events")
                    && s.attr("messaging.operation") == Some("publish")
            }),
        ),
        (
            "the api's Redis XADD and PUBLISH",
            Box::new(|s: &ReceivedSpan| {
                s.service == "pricing-api"
                    && s.kind == 3
                    && s.attr("db.system") == Some("redis")
                    && s.name == "XADD PUBLISH"
            }),
        ),
        (
            "the listener's consumer span",
            Box::new(|s: &ReceivedSpan| {
                s.service == "pricing-listener"
                    && s.kind == 5
                    && s.attr("messaging.operation") == Some("process")
            }),
        ),
        (
            "the listener's queue push",
            Box::new(|s: &ReceivedSpan| {
                s.service == "pricing-listener" && s.kind == 4 && s.name == "publish events"
            }),
        ),
        (
            "the worker's queue fetch",
            Box::new(|s: &ReceivedSpan| {
                s.service == "pricing-worker"
                    && s.kind == 3
                    && s.name == "queue fetch"
                    && s.attr("db.system") == Some("redis")
            }),
        ),
        (
            "the worker's job span",
            Box::new(|s: &ReceivedSpan| {
                s.service == "pricing-worker" && s.name == "recalculate_prices process"
            }),
        ),
        (
            "the worker's cache writes",
            Box::new(|s: &ReceivedSpan| {
                s.service == "pricing-worker"
                    && s.attr("db.system") == Some("redis")
                    && s.name == "BATCH HSET"
            }),
        ),
    ]
}

/// The parent links of the event trace: request → publish → listener →
/// queue push → (fetch, job) → writes.
fn assert_event_trace_links(spans: &[ReceivedSpan]) {
    let server = find(spans, |s| s.service == "pricing-api" && s.kind == 2);
    let publish = find(spans, |s| s.service == "pricing-api" && s.kind == 4);
    let listener = find(spans, |s| s.service == "pricing-listener" && s.kind == 5);
    let push = find(spans, |s| s.service == "pricing-listener" && s.kind == 4);
    let fetch = find(spans, |s| s.name == "queue fetch");
    let job = find(spans, |s| s.name == "recalculate_prices process");
    assert_eq!(publish.parent_span_id, server.span_id);
    assert_eq!(
        listener.parent_span_id, publish.span_id,
        "listener ← publish"
    );
    assert_eq!(push.parent_span_id, listener.span_id);
    assert_eq!(
        job.parent_span_id, push.span_id,
        "job ← the push that queued it"
    );
    assert_eq!(fetch.parent_span_id, push.span_id);
    // The job span shows queue wait apart from its run time.
    assert!(job.attr("job.queue_wait_ms").is_some(), "{job:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_event_is_one_trace_across_api_listener_and_worker() {
    let redis = RedisServer::start().await;
    let (_store, _dir, db) = seeded_store(20).await;
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

    let wanted = event_trace_wanted();
    let wanted: Vec<Wanted<'_>> = wanted.iter().map(|(w, f)| (*w, f.as_ref())).collect();
    let spans = wait_for_trace(&rx, CLIENT_TRACE, &wanted).await;
    services_up.stop().await;

    assert_eq!(
        services(&spans),
        BTreeSet::from(["pricing-api", "pricing-listener", "pricing-worker"])
    );
    assert_connected(&spans);
    assert_event_trace_links(&spans);
    assert_redis_spans_hold_no_values(&spans, "P-2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recalculate_all_trigger_is_one_trace_from_api_to_worker() {
    let redis = RedisServer::start().await;
    let (_store, _dir, db) = seeded_store(20).await;
    let rx = OtlpReceiver::start().await;
    let services_up = Services::start(&redis, &db, &rx.endpoint()).await;

    let resp = post(&services_up.api, "/api/v1/tasks/recalculate-all", "").await;
    assert_eq!(resp.status(), 202);
    // The page's commands: an HSET and a PEXPIRE per cache hash it fills.
    let hashes: std::collections::HashSet<u32> = (1..=20)
        .map(|i| shared::keys::price_bucket_of(&format!("P-{i}")))
        .collect();
    let commands = (2 * hashes.len()).to_string();

    let spans = wait_for_trace(
        &rx,
        CLIENT_TRACE,
        &[
            ("the api's server span", &|s| {
                s.service == "pricing-api" && s.name == "POST /api/v1/tasks/recalculate-all"
            }),
            ("the api's queue push", &|s| {
                s.service == "pricing-api" && s.kind == 4 && s.name == "publish bulk"
            }),
            ("the api's Redis push", &|s| {
                s.service == "pricing-api"
                    && s.name == "queue push"
                    && s.attr("db.operation.name") == Some("EVALSHA")
            }),
            ("the worker's queue fetch", &|s| {
                s.service == "pricing-worker" && s.name == "queue fetch"
            }),
            ("the worker's job span", &|s| {
                s.service == "pricing-worker" && s.name == "recalculate_all_prices process"
            }),
            ("the lock acquire", &|s| {
                s.service == "pricing-worker"
                    && s.name == "lock acquire"
                    && s.attr("db.operation.name") == Some("EVALSHA")
            }),
            ("a fenced page write", &|s| {
                s.service == "pricing-worker"
                    && s.name == "fenced write"
                    && s.attr("db.operation.batch.size") == Some(commands.as_str())
            }),
            ("the lock release", &|s| {
                s.service == "pricing-worker" && s.name == "lock release"
            }),
        ],
    )
    .await;
    services_up.stop().await;

    assert_eq!(
        services(&spans),
        BTreeSet::from(["pricing-api", "pricing-worker"])
    );
    assert_connected(&spans);
    let push = find(&spans, |s| s.service == "pricing-api" && s.kind == 4);
    let job = find(&spans, |s| s.name == "recalculate_all_prices process");
    assert_eq!(job.parent_span_id, push.span_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_otlp_http_the_spans_a_stopping_service_holds_are_flushed() {
    // Arrange: export over OTLP/HTTP, with a batch delay far longer than the
    // test, so spans reach the receiver only through the flush at shutdown.
    let redis = RedisServer::start().await;
    let (_store, _dir, db) = seeded_store(20).await;
    let rx = OtlpReceiver::start_http().await;
    let services_up = Services::start_with(
        &redis,
        &db,
        &rx.endpoint(),
        &["api", "worker", "listener"],
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ],
    )
    .await;
    let queue = queue(&redis);

    // Act: an event all the way to a finished job, then stop everything.
    let resp = post(
        &services_up.api,
        "/api/v1/publish-market-event",
        r#"{"kind":"demand_changed","data":{"demand":{"P-2":1.7}}}"#,
    )
    .await;
    assert_eq!(resp.status(), 202);
    wait("the event's job finished", || async {
        queue.depths().await.unwrap().succeeded_total == 1
    })
    .await;
    assert!(rx.spans().is_empty(), "exported before the flush");
    services_up.stop().await;

    // Assert: the whole trace arrived, over HTTP, at shutdown.
    let wanted = event_trace_wanted();
    let wanted: Vec<Wanted<'_>> = wanted.iter().map(|(w, f)| (*w, f.as_ref())).collect();
    let spans = wait_for_trace(&rx, CLIENT_TRACE, &wanted).await;
    assert_connected(&spans);
    assert_event_trace_links(&spans);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_service_name_renames_a_service_and_otel_sdk_disabled_exports_nothing() {
    let redis = RedisServer::start().await;
    let (_store, _dir, db) = seeded_store(5).await;
    let rx = OtlpReceiver::start().await;

    // OTEL_SERVICE_NAME wins over the default name.
    let renamed = Services::start_with(
        &redis,
        &db,
        &rx.endpoint(),
        &["api"],
        &[("OTEL_SERVICE_NAME", "pricing-api-blue")],
    )
    .await;
    let resp = post(&renamed.api, "/api/v1/price", r#"{"product_id":"P-1"}"#).await;
    assert_eq!(resp.status(), 200);
    renamed.stop().await;
    let spans = rx
        .wait_until(LONG, |all| {
            all.iter()
                .any(|s| s.kind == 2 && s.trace_id == CLIENT_TRACE)
        })
        .await
        .unwrap();
    assert_eq!(
        spans
            .iter()
            .map(|s| s.service.as_str())
            .collect::<BTreeSet<_>>(),
        BTreeSet::from(["pricing-api-blue"])
    );
    let received = spans.len();

    // OTEL_SDK_DISABLED (any case) turns export off, endpoint or not: after
    // the service has stopped (and would have flushed), nothing more came.
    let disabled = Services::start_with(
        &redis,
        &db,
        &rx.endpoint(),
        &["api"],
        &[("OTEL_SDK_DISABLED", "TRUE")],
    )
    .await;
    let resp = post(&disabled.api, "/api/v1/price", r#"{"product_id":"P-2"}"#).await;
    assert_eq!(resp.status(), 200);
    assert!(
        !resp.headers().contains_key("traceparent"),
        "no span, so no traceparent"
    );
    disabled.stop().await;
    assert_eq!(rx.spans().len(), received);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_succeed_while_the_collector_is_down_with_one_warning() {
    let redis = RedisServer::start().await;
    let (_store, _dir, db) = seeded_store(20).await;
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
    // The api has tried, and failed, to export its first batch.
    let log = services_up.api_log.clone();
    wait("the api's export warning", || async {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("cannot export spans"))
    })
    .await;
    let output = services_up.stop().await;

    let warnings = output.matches("cannot export spans").count();
    assert_eq!(
        warnings, 1,
        "one rate-limited warning, not one per batch:\n{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_processed_in_one_batch_link_every_trace_to_the_batch() {
    // Arrange: two events, from two client traces, wait in the stream while
    // no listener runs, so one batch takes both.
    const OTHER_TRACE: &str = "5cf92f3577b34da6a3ce929d0e0e4737";
    let redis = RedisServer::start().await;
    let (_store, _dir, db) = seeded_store(20).await;
    let rx = OtlpReceiver::start().await;
    let api = Services::start_with(&redis, &db, &rx.endpoint(), &["api", "worker"], &[]).await;
    for (trace, id) in [(CLIENT_TRACE, "P-3"), (OTHER_TRACE, "P-4")] {
        let body = format!(r#"{{"kind":"stock_changed","data":{{"stock":{{"{id}":7}}}}}}"#);
        let resp = post_in(&api.api, "/api/v1/publish-market-event", &body, trace).await;
        assert_eq!(resp.status(), 202);
    }

    // Act
    let listener = Services::start_with(&redis, &db, &rx.endpoint(), &["listener"], &[]).await;

    // Assert: the batch span is in the first event's trace and links to the
    // second's publish span; the second's trace has a receive span of its
    // own that links back to the batch.
    let first = wait_for_trace(
        &rx,
        CLIENT_TRACE,
        &[("the batch span", &|s| {
            s.service == "pricing-listener"
                && s.kind == 5
                && s.attr("messaging.operation") == Some("process")
        })],
    )
    .await;
    let second = wait_for_trace(
        &rx,
        OTHER_TRACE,
        &[
            ("the second event's publish", &|s| {
                s.service == "pricing-api" && s.kind == 4
            }),
            ("the second event's receive", &|s| {
                s.service == "pricing-listener" && s.attr("messaging.operation") == Some("receive")
            }),
        ],
    )
    .await;
    listener.stop().await;
    api.stop().await;

    let batch = find(&first, |s| s.kind == 5 && s.service == "pricing-listener");
    assert_eq!(batch.attr("messaging.batch.message_count"), Some("2"));
    let publish2 = find(&second, |s| s.kind == 4 && s.service == "pricing-api");
    assert!(
        batch
            .links
            .contains(&(OTHER_TRACE.to_string(), publish2.span_id.clone())),
        "{batch:?}"
    );
    let receive = find(&second, |s| {
        s.attr("messaging.operation") == Some("receive")
    });
    assert_eq!(receive.parent_span_id, publish2.span_id);
    assert!(
        receive
            .links
            .contains(&(CLIENT_TRACE.to_string(), batch.span_id.clone())),
        "{receive:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_sampling_drops_a_whole_trace_and_keeps_a_sampled_clients() {
    // Arrange: keep no root traces; a client's sampled decision still wins.
    let redis = RedisServer::start().await;
    let (_store, _dir, db) = seeded_store(20).await;
    let rx = OtlpReceiver::start().await;
    let services_up = Services::start_with(
        &redis,
        &db,
        &rx.endpoint(),
        &["api", "worker", "listener"],
        &[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0"),
        ],
    )
    .await;
    let queue = queue(&redis);

    // Act: an event without a traceparent, all the way to its job.
    let dropped = reqwest::Client::new()
        .post(format!("{}/api/v1/publish-market-event", services_up.api))
        .header("content-type", "application/json")
        .body(r#"{"kind":"demand_changed","data":{"demand":{"P-5":1.1}}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(dropped.status(), 202);
    let tp = dropped.headers()["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(tp.ends_with("-00"), "flagged not sampled: {tp}");
    let dropped_trace = tp.split('-').nth(1).unwrap().to_string();
    wait("the unsampled event's job finished", || async {
        queue.depths().await.unwrap().succeeded_total == 1
    })
    .await;
    // Then one from a client that samples its trace.
    let resp = post(
        &services_up.api,
        "/api/v1/publish-market-event",
        r#"{"kind":"demand_changed","data":{"demand":{"P-6":1.2}}}"#,
    )
    .await;
    assert_eq!(resp.status(), 202);
    let wanted = event_trace_wanted();
    let wanted: Vec<Wanted<'_>> = wanted.iter().map(|(w, f)| (*w, f.as_ref())).collect();
    let kept = wait_for_trace(&rx, CLIENT_TRACE, &wanted).await;
    services_up.stop().await;

    // Assert: the sampled trace is whole; of the dropped one, no service
    // exported anything, even when flushing at shutdown.
    assert_connected(&kept);
    assert_event_trace_links(&kept);
    let traces: BTreeSet<String> = rx.spans().into_iter().map(|s| s.trace_id).collect();
    assert!(!traces.contains(&dropped_trace), "{traces:?}");
    assert_eq!(traces, BTreeSet::from([CLIENT_TRACE.to_string()]));
}
