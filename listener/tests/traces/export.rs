//! How spans leave the services: flushed at shutdown over OTLP/HTTP, named
//! and switched off by the standard `OTEL_*` variables, sampled at the
//! head, and never in the way of requests when the collector is down.

use std::collections::BTreeSet;

use testkit::otlp_receiver::OtlpReceiver;
use testkit::{RedisServer, free_port, seeded_store};

use crate::services::*;
use crate::spans::*;
use crate::{CLIENT_TRACE, LONG, NS};

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
    let resp = publish_event(
        &services_up.api,
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
    let spans = wait_for_event_trace(&rx, CLIENT_TRACE).await;
    assert_connected(&spans);
    assert_event_trace_links(&spans);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_bsp_max_export_batch_size_sends_a_full_batch_of_that_size_at_once() {
    // Arrange: a batch delay far longer than the test, and batches of two
    // spans; one worker thread, so that a request's spans fill one buffer.
    let redis = RedisServer::start().await;
    let (_store, _dir, db) = seeded_store(5).await;
    let rx = OtlpReceiver::start().await;
    let up = Services::start_with(
        &redis,
        &db,
        &rx.endpoint(),
        &["api"],
        &[
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2"),
            ("API_WORKER_THREADS", "1"),
        ],
    )
    .await;

    // Act: price reads, each a server span and its Redis spans.
    for id in ["P-1", "P-2", "P-3"] {
        let body = format!(r#"{{"product_id":"{id}"}}"#);
        assert_eq!(post(&up.api, "/api/v1/price", &body).await.status(), 200);
    }

    // Assert: spans arrive while the api runs: each full batch of two was
    // sent at once (with the default 512 they would wait for the delay or
    // the flush at shutdown, as the test above shows).
    let spans = rx
        .wait_until(LONG, |all| all.iter().any(|s| s.kind == 2))
        .await
        .unwrap();
    assert!(spans.len() >= 2, "{} spans", spans.len());
    up.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_service_name_renames_a_service_resource_attributes_are_sent_and_otel_sdk_disabled_exports_nothing()
 {
    let redis = RedisServer::start().await;
    let (_store, _dir, db) = seeded_store(5).await;
    let rx = OtlpReceiver::start().await;

    // OTEL_SERVICE_NAME wins over the default name.
    let renamed = Services::start_with(
        &redis,
        &db,
        &rx.endpoint(),
        &["api"],
        &[
            ("OTEL_SERVICE_NAME", "pricing-api-blue"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=not-this-one, deployment.environment.name=staging%2Cblue,service.version=build-7",
            ),
        ],
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
    // OTEL_RESOURCE_ATTRIBUTES: decoded, sent on every span, overriding the
    // version; OTEL_SERVICE_NAME wins over its service.name.
    for span in &spans {
        let resource = |key: &str| {
            span.resource
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(resource("service.name"), Some("pricing-api-blue"));
        assert_eq!(
            resource("deployment.environment.name"),
            Some("staging,blue")
        );
        assert_eq!(resource("service.version"), Some("build-7"));
        assert_eq!(resource("telemetry.sdk.language"), Some("rust"));
    }
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
    let resp = publish_event(&services_up.api, "").await;
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
    let dropped = publish_with(
        &services_up.api,
        r#"{"kind":"demand_changed","data":{"demand":{"P-5":1.1}}}"#,
        &[],
    )
    .await;
    assert_eq!(dropped.status(), 202);
    assert!(
        dropped.headers().get("traceparent").is_none(),
        "a dropped request's answer names no trace: there is none to look up"
    );
    // What it published carries its trace, flagged not sampled.
    let events = published_events(&redis).await;
    let [event] = &events[..] else {
        panic!("one event published: {events:?}");
    };
    let tp = event["traceparent"].as_str().unwrap_or_default();
    assert!(tp.ends_with("-00"), "flagged not sampled: {event}");
    let dropped_trace = tp.split('-').nth(1).unwrap().to_string();
    wait("the unsampled event's job finished", || async {
        queue.depths().await.unwrap().succeeded_total == 1
    })
    .await;
    // One from a client that did not sample its trace: the event goes on in
    // that trace, from a span of the api's own, not sampled, with the
    // client's tracestate.
    let unsampled_client = "0af7651916cd43dd8448eb211c80319c";
    let resp = publish_with(
        &services_up.api,
        r#"{"kind":"demand_changed","data":{"demand":{"P-7":1.1}}}"#,
        &[
            (
                "traceparent",
                &format!("00-{unsampled_client}-b7ad6b7169203331-00"),
            ),
            ("tracestate", "vendor=x"),
        ],
    )
    .await;
    assert_eq!(resp.status(), 202);
    let event = &published_events(&redis).await[1];
    let tp = event["traceparent"].as_str().unwrap_or_default();
    let parts: Vec<&str> = tp.split('-').collect();
    assert!(
        matches!(parts[..], ["00", trace, span, "00"]
            if trace == unsampled_client && span != "b7ad6b7169203331"),
        "the client's trace, from a span of the api's own, not sampled: {event}"
    );
    assert_eq!(event["tracestate"], "vendor=x", "{event}");
    wait("the unsampled client's job finished", || async {
        queue.depths().await.unwrap().succeeded_total == 2
    })
    .await;
    // Then one from a client that samples its trace.
    let resp = publish_event(
        &services_up.api,
        r#"{"kind":"demand_changed","data":{"demand":{"P-6":1.2}}}"#,
    )
    .await;
    assert_eq!(resp.status(), 202);
    let kept = wait_for_event_trace(&rx, CLIENT_TRACE).await;
    services_up.stop().await;

    // Assert: the sampled trace is whole; of the dropped one, no service
    // exported anything, even when flushing at shutdown.
    assert_connected(&kept);
    assert_event_trace_links(&kept);
    let traces: BTreeSet<String> = rx.spans().into_iter().map(|s| s.trace_id).collect();
    assert!(!traces.contains(&dropped_trace), "{traces:?}");
    assert_eq!(traces, BTreeSet::from([CLIENT_TRACE.to_string()]));
}

/// Publishes the event `body` with these headers besides its content type.
async fn publish_with(
    api: &str,
    body: &'static str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("{api}/api/v1/publish-market-event"))
        .header("content-type", "application/json");
    for &(name, value) in headers {
        request = request.header(name, value);
    }
    request.body(body).send().await.unwrap()
}

/// The events published to the event stream so far, oldest first.
async fn published_events(redis: &RedisServer) -> Vec<serde_json::Value> {
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(shared::keys::Keys::new(NS).event_stream())
        .arg("-")
        .arg("+")
        .query_async(&mut redis.connection().await)
        .await
        .unwrap();
    entries
        .iter()
        .map(|(_, fields)| serde_json::from_str(&fields[0].1).unwrap())
        .collect()
}
