//! Context propagation: each request is one connected trace from the api
//! through Redis and the listener to the worker, and a batch of events
//! links every event's trace to the batch that processed it.

use std::collections::BTreeSet;

use testkit::otlp_receiver::OtlpReceiver;
use testkit::{RedisServer, seeded_store};

use crate::CLIENT_TRACE;
use crate::services::*;
use crate::spans::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_event_is_one_trace_across_api_listener_and_worker() {
    let (_redis, _dir, rx, services_up) = start_traced().await;

    let resp = publish_event(
        &services_up.api,
        r#"{"kind":"demand_changed","data":{"demand":{"P-2":1.7}}}"#,
    )
    .await;
    assert_eq!(resp.status(), 202);
    let traceparent = resp.headers()["traceparent"].to_str().unwrap().to_string();
    assert!(
        traceparent.starts_with(&format!("00-{CLIENT_TRACE}-")),
        "the api continued the client's trace: {traceparent}"
    );

    let spans = wait_for_event_trace(&rx, CLIENT_TRACE).await;
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
    let (_redis, _dir, rx, services_up) = start_traced().await;

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
async fn a_path_no_route_matches_names_its_server_span_by_the_method_alone() {
    let (_redis, _dir, rx, services_up) = start_traced().await;

    let resp = post(&services_up.api, "/no/such/path", "{}").await;
    assert_eq!(resp.status(), 404);

    let spans = wait_for_trace(
        &rx,
        CLIENT_TRACE,
        &[("the api's server span", &|s| {
            s.service == "pricing-api" && s.kind == 2
        })],
    )
    .await;
    services_up.stop().await;

    let server = find(&spans, |s| s.service == "pricing-api" && s.kind == 2);
    assert_eq!(server.name, "POST", "{server:?}");
    assert_eq!(server.attr("http.route"), None, "{server:?}");
    assert_eq!(server.attr("url.path"), Some("/no/such/path"), "{server:?}");
    assert_eq!(server.attr("http.response.status_code"), Some("404"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_request_records_its_redis_round_trips_as_children_of_its_server_span() {
    let (_redis, _dir, rx, services_up) = start_traced().await;

    // A miss (HGET, then the computed price cached with HSET).
    let resp = post(&services_up.api, "/api/v1/price", r#"{"product_id":"P-3"}"#).await;
    assert_eq!(resp.status(), 200);

    let spans = wait_for_trace(
        &rx,
        CLIENT_TRACE,
        &[
            ("the api's server span", &|s| {
                s.service == "pricing-api" && s.kind == 2
            }),
            ("the HGET", &|s| s.kind == 3 && s.name == "HGET"),
            ("the HSET", &|s| s.kind == 3 && s.name == "HSET"),
        ],
    )
    .await;
    services_up.stop().await;

    let server = find(&spans, |s| s.service == "pricing-api" && s.kind == 2);
    assert_eq!(server.name, "POST /api/v1/price", "{server:?}");
    for name in ["HGET", "HSET"] {
        let span = find(&spans, |s| s.kind == 3 && s.name == name);
        assert_eq!(span.parent_span_id, server.span_id, "{span:?}");
        assert_eq!(span.service, "pricing-api");
        assert_eq!(span.attr("db.system"), Some("redis"), "{span:?}");
        assert_eq!(span.attr("db.operation.name"), Some(name), "{span:?}");
        assert_eq!(span.attr("db.query.summary"), Some(name), "{span:?}");
        assert_eq!(span.status_code, 0, "{span:?}");
    }
    assert_redis_spans_hold_no_values(&spans, "P-3");
}
