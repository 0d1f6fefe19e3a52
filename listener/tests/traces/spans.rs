//! What a trace must hold, and the checks on the spans the receiver got:
//! waiting for a trace to be complete, and asserting it is one connected
//! tree with the expected parent links and no values in its Redis spans.

use std::collections::{BTreeSet, HashSet};

use testkit::otlp_receiver::{OtlpReceiver, ReceivedSpan};

use crate::{CLIENT_SPAN, LONG};

/// A description and a predicate a span of the trace must satisfy.
pub type Wanted<'a> = (&'a str, &'a dyn Fn(&ReceivedSpan) -> bool);

/// [`Wanted`], owning its predicate.
pub type WantedOwned = (&'static str, Box<dyn Fn(&ReceivedSpan) -> bool>);

pub fn missing<'a>(spans: &[ReceivedSpan], wanted: &[Wanted<'a>]) -> Vec<&'a str> {
    wanted
        .iter()
        .filter(|(_, f)| !spans.iter().any(f))
        .map(|(what, _)| *what)
        .collect()
}

pub fn describe(spans: &[ReceivedSpan]) -> Vec<String> {
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
pub async fn wait_for_trace(
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

/// Waits until the trace holds every span of [`event_trace_wanted`].
pub async fn wait_for_event_trace(rx: &OtlpReceiver, trace: &str) -> Vec<ReceivedSpan> {
    let wanted = event_trace_wanted();
    let wanted: Vec<Wanted<'_>> = wanted.iter().map(|(w, f)| (*w, f.as_ref())).collect();
    wait_for_trace(rx, trace, &wanted).await
}

/// Every span's parent is in the trace, except the api's server span, whose
/// parent is the client's span: one connected tree. Every span names its
/// service and the services' version.
pub fn assert_connected(spans: &[ReceivedSpan]) {
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

pub fn services(spans: &[ReceivedSpan]) -> BTreeSet<&str> {
    spans.iter().map(|s| s.service.as_str()).collect()
}

pub fn find(spans: &[ReceivedSpan], f: impl Fn(&ReceivedSpan) -> bool) -> &ReceivedSpan {
    spans
        .iter()
        .find(|s| f(s))
        .unwrap_or_else(|| panic!("no such span in {:#?}", describe(spans)))
}

/// Redis spans name the command, never keys or values.
pub fn assert_redis_spans_hold_no_values(spans: &[ReceivedSpan], value: &str) {
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

/// What the event trace must hold, from the api's request to the worker's
/// Redis writes.
pub fn event_trace_wanted() -> Vec<WantedOwned> {
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
                    && s.attr("url.scheme") == Some("http")
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
pub fn assert_event_trace_links(spans: &[ReceivedSpan]) {
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
