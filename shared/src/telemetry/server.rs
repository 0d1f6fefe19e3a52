//! The server span of an HTTP request, kept in the request's task instead
//! of the `tracing` registry.
//!
//! A `tracing` span costs a registry slot that every callback looks up
//! (its filter's and our layer's), and an enter and an exit on every poll
//! of the request: with every trace sampled, about 5% of the api's CPU on a
//! cache hit went to the registry alone. The server span lives as long as
//! the request and is polled most, so [`ServerSpan`] keeps its record with
//! the request's future instead ([`InSpan`]), which makes it the thread's
//! current server span while that future is polled. What happens inside
//! sees it as if it were the current span:
//!
//! - a span created in the request with no `tracing` parent (the Redis
//!   call, the producer span of a published event) becomes its child;
//! - an `INFO`-or-above event with no span of its own becomes one of its
//!   span events (an `ERROR` marks it failed);
//! - [`super::current_trace_context`] hands its context on (into a queued
//!   job, a stream entry).
//!
//! Work the request spawns onto another task does not see it (as with a
//! `tracing` span, unless that work was instrumented with the current
//! span): its spans start a trace of their own. A request dropped before it
//! answers (the client went away) exports no server span. Log lines are not
//! prefixed with it, since it is not a `tracing` span.

use std::borrow::Cow;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use opentelemetry::trace::TraceContextExt as _;

use super::intern::ServerRoute;
use super::layer::{Pipeline, new_span_id, new_trace_id};
use super::record::{AttrValue, SpanEvent, SpanKind, SpanRecord, Traceparent, now_unix_nano};
use super::scope::Scoped;

thread_local! {
    /// The server span of the request being polled on this thread, if any:
    /// put here by [`InSpan`] for each poll of its request
    /// ([`super::scope`]). Boxed, so that swapping it in and out moves a
    /// pointer, not a few hundred bytes.
    static SERVER: Cell<Option<Box<SpanRecord>>> = const { Cell::new(None) };
}

/// A server span's attribute keys, in OpenTelemetry's HTTP conventions.
const METHOD: &str = "http.request.method";
const ROUTE: &str = "http.route";
const PATH: &str = "url.path";
const SCHEME: &str = "url.scheme";
pub(crate) const STATUS_CODE: &str = "http.response.status_code";

/// The attributes of a server span for a request to a route without
/// parameters (its path is the route), as [`super::intern`] encodes them
/// once per route.
pub(crate) fn route_attributes(
    method: &'static str,
    route: &'static str,
) -> [(&'static str, &'static str); 4] {
    [
        (METHOD, method),
        (ROUTE, route),
        (PATH, route),
        (SCHEME, "http"),
    ]
}

/// An HTTP server span (`otel.kind=server`), in OpenTelemetry's HTTP
/// conventions, recorded outside the `tracing` registry; see the module docs.
pub struct ServerSpan {
    record: Box<SpanRecord>,
    /// The process's pipeline, borrowed for good: an `Arc` clone and drop
    /// would be two atomic writes per traced request.
    pipeline: &'static Pipeline,
}

impl ServerSpan {
    /// The span of a request for `path` by `method`, matched to `route`
    /// (`None`: no route matched; the span is then named by the method
    /// alone, without `http.route`). A valid `traceparent` (and
    /// `tracestate`) from the client makes it the client span's child.
    /// `None` when no span is recorded in this process (export off).
    pub fn start(
        method: &str,
        route: Option<&ServerRoute>,
        path: &str,
        traceparent: Option<&str>,
        tracestate: Option<&str>,
    ) -> Option<Self> {
        let pipeline: &'static Pipeline = super::PIPELINE.get()?;
        let strings = super::intern::ServerStrings::of(method, route, path);
        let name = strings.name;
        let parent = traceparent
            .map(|_| {
                super::propagation::extract(traceparent, tracestate)
                    .span()
                    .span_context()
                    .clone()
            })
            .filter(opentelemetry::trace::SpanContext::is_valid);
        let (ids, trace_state, sampled) = match parent {
            Some(parent) => {
                let trace = u128::from_be_bytes(parent.trace_id().to_bytes());
                let sampled = pipeline.sample(Some(&parent), trace, &name);
                let parent_id = u64::from_be_bytes(parent.span_id().to_bytes());
                (
                    (trace, new_span_id(), parent_id),
                    parent.trace_state().header(),
                    sampled,
                )
            }
            None => {
                let trace = new_trace_id();
                let sampled = pipeline.sample(None, trace, &name);
                ((trace, new_span_id(), 0), String::new(), sampled)
            }
        };
        let mut record = SpanRecord::boxed(
            ids,
            trace_state,
            sampled,
            name,
            SpanKind::Server,
            now_unix_nano(),
        );
        match strings.encoded {
            Some(encoded) => record.encoded_attributes[0] = encoded,
            None => {
                let r = &mut record.attributes;
                r.push((Cow::Borrowed(METHOD), AttrValue::Str(strings.method)));
                if let Some(route) = strings.route {
                    r.push((Cow::Borrowed(ROUTE), AttrValue::Str(route)));
                }
                r.push((Cow::Borrowed(PATH), AttrValue::Str(strings.path)));
                r.push((Cow::Borrowed(SCHEME), AttrValue::Str(Cow::Borrowed("http"))));
            }
        }
        Some(Self { record, pipeline })
    }

    /// Runs `fut` (the request) inside this span; [`InSpan::take_span`]
    /// gives the span back once it is done. `fut` is polled where [`InSpan`] is, never moved again: a handler's
    /// future is large, and the `async` wrappers and the box this replaced
    /// copied it once for every level (about 200 instructions of a traced
    /// cache hit, callgrind).
    pub fn run<F: Future>(self, fut: F) -> InSpan<F> {
        InSpan {
            pipeline: Some(self.pipeline),
            scoped: Scoped::new(&SERVER, self.record, fut),
        }
    }

    /// Ends the span with the response's `status` (a 5xx marks it failed),
    /// hands it to the exporter if sampled, and returns its `traceparent`
    /// for the response.
    pub fn finish(mut self, status: u16) -> Traceparent {
        let r = &mut self.record;
        set_status(r, status);
        let traceparent = r.traceparent_value();
        if r.sampled {
            r.end_unix_nano = now_unix_nano();
            self.pipeline.finish(&self.record);
        }
        SpanRecord::recycle(self.record);
        traceparent
    }
}

/// Records the response's `status` on a server span: its attribute
/// (encoded once per status where it can be), and a 5xx marks it failed.
fn set_status(r: &mut SpanRecord, status: u16) {
    match super::intern::status_attribute(status) {
        Some(encoded) => r.encoded_attributes[1] = encoded,
        None => r.attributes.push((
            Cow::Borrowed(STATUS_CODE),
            AttrValue::Int(i64::from(status)),
        )),
    }
    if status >= 500 {
        r.status_code = 2;
    }
}

pin_project_lite::pin_project! {
    /// [`ServerSpan::run`]'s future: the request's, with its span in
    /// [`SERVER`] for each poll; [`InSpan::take_span`] gives the span back
    /// once the request has answered.
    pub struct InSpan<F> {
        // Taken with the span.
        pipeline: Option<&'static Pipeline>,
        #[pin]
        scoped: Scoped<Box<SpanRecord>, F>,
    }
}

impl<F> InSpan<F> {
    /// The span, once the request has answered (its future is ready), to
    /// [`ServerSpan::finish`]; `None` if taken already.
    pub fn take_span(self: Pin<&mut Self>) -> Option<ServerSpan> {
        let this = self.project();
        let record = this.scoped.take_value()?;
        let pipeline = this.pipeline.take()?;
        Some(ServerSpan { record, pipeline })
    }
}

impl<F: Future> Future for InSpan<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().scoped.poll(cx)
    }
}

/// The server span of the request running now, as a parent: its trace id,
/// span id, sampling decision and `tracestate`.
pub(crate) fn current_parent() -> Option<(u128, u64, bool, String)> {
    with_current(|r| (r.trace_id, r.span_id, r.sampled, r.trace_state.clone()))
}

/// Runs `f` on the server span of the request running now, if there is one.
pub(crate) fn with_current<R>(f: impl FnOnce(&mut SpanRecord) -> R) -> Option<R> {
    super::scope::with(&SERVER, |record| f(record))
}

/// What a span made directly under the request's server span (not through
/// the `tracing` registry) is: see [`super::redis_call`].
pub(crate) enum Child {
    /// No server span runs here (or a `tracing` span is current): make a
    /// `tracing` span as usual.
    Elsewhere,
    /// The server span runs and its trace is not sampled: no span at all.
    Unsampled,
    /// Its started record, to [`finish_child`] once the work is done.
    Sampled(Box<SpanRecord>),
}

/// Starts a client span `name` directly under the request's server span,
/// if that is the current span, with these `attributes` (encoded as
/// `Span.attributes` fields, once: [`super::RedisOp`]).
pub(crate) fn child(name: &'static str, attributes: &'static [u8]) -> Child {
    let Some(pipeline) = super::PIPELINE.get() else {
        return Child::Elsewhere;
    };
    let Some((trace, parent_id, parent_sampled, state)) = current_parent() else {
        return Child::Elsewhere;
    };
    // A `tracing` span inside the request is the nearer parent.
    if super::layer::in_recorded_span() {
        return Child::Elsewhere;
    }
    if !pipeline.sample_child((trace, parent_id, parent_sampled, &state), name) {
        return Child::Unsampled;
    }
    let mut record = SpanRecord::boxed(
        (trace, new_span_id(), parent_id),
        state,
        true,
        Cow::Borrowed(name),
        SpanKind::Client,
        now_unix_nano(),
    );
    record.encoded_attributes[0] = attributes;
    Child::Sampled(record)
}

/// Ends a span from [`child`] (failed with `error`, if any) and hands it to
/// the exporter.
pub(crate) fn finish_child(mut record: Box<SpanRecord>, error: Option<String>) {
    record.end_unix_nano = now_unix_nano();
    if let Some(message) = error {
        record.status_code = 2;
        record.status_message = message;
    }
    if let Some(pipeline) = super::PIPELINE.get() {
        pipeline.finish(&record);
    }
    SpanRecord::recycle(record);
}

/// Adds `event` to the server span of the request running now (if sampled).
pub(crate) fn add_event(event: SpanEvent, error: bool) {
    with_current(|r| {
        if r.sampled {
            if error {
                r.status_code = 2;
                r.status_message.clone_from(&event.name);
            }
            r.events.push(event);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: u128 = 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736;
    const CLIENT_SPAN: u64 = 0x00f0_67aa_0ba9_02b7;

    /// Runs `fut` in `span` to its end; gives the span back.
    async fn run_in<T>(span: ServerSpan, fut: impl Future<Output = T>) -> (T, ServerSpan) {
        let mut request = std::pin::pin!(span.run(fut));
        let out = request.as_mut().await;
        (out, request.take_span().expect("taken once, when done"))
    }

    /// The server span of a price request whose client's span (of trace
    /// [`TRACE`]) was `sampled` or not.
    fn price_request(sampled: bool) -> ServerSpan {
        crate::telemetry::init_for_tests();
        let flags = if sampled { "01" } else { "00" };
        ServerSpan::start(
            "POST",
            Some(ServerRoute::of("/api/v1/price")),
            "/api/v1/price",
            Some(&format!("00-{TRACE:032x}-{CLIENT_SPAN:016x}-{flags}")),
            None,
        )
        .expect("the test pipeline records spans")
    }

    #[tokio::test]
    async fn what_runs_in_a_request_sees_its_server_span_as_the_current_span() {
        let span = price_request(true);
        let ((child, context), span) = run_in(span, async {
            let child = tracing::debug_span!("child");
            let child =
                super::super::layer::with_record(&child, |r| (r.trace_id, r.parent_span_id));
            tracing::error!("the store failed");
            (child, crate::telemetry::current_trace_context())
        })
        .await;
        let r = &span.record;
        assert_eq!(
            (r.trace_id, r.parent_span_id),
            (TRACE, CLIENT_SPAN),
            "the client's span is its parent"
        );
        assert_eq!(r.name, "POST /api/v1/price");
        assert_eq!(
            child,
            Some((TRACE, r.span_id)),
            "a span inside is its child"
        );
        assert_eq!(context.map(|c| c.0), Some(r.traceparent()));
        assert_eq!(r.status_code, 2, "an ERROR event marks it failed");
        assert_eq!(r.events.len(), 1);
        assert_eq!(r.events[0].name, "the store failed");
        assert!(r.sampled);
        let traceparent = span.finish(200);
        assert!(
            traceparent
                .as_str()
                .starts_with(&format!("00-{TRACE:032x}-"))
        );
        assert!(traceparent.as_str().ends_with("-01"));
    }

    #[tokio::test]
    async fn a_redis_call_in_a_request_is_a_client_span_made_without_the_registry() {
        static HGET: crate::telemetry::RedisOp = crate::telemetry::RedisOp::new("HGET", "HGET");
        let span = price_request(true);
        let ((direct, nested, answer), span) = run_in(span, async {
            let direct = child(HGET.summary, HGET.encoded());
            // Inside a `tracing` span, that span is the parent.
            let nested = {
                let inner = tracing::debug_span!("publish");
                let _entered = inner.enter();
                matches!(child("XADD", b""), Child::Elsewhere)
            };
            // Once that span is left, the server span is the parent again.
            let after = matches!(child("HGET", b""), Child::Sampled(_));
            let answer: Result<u8, String> =
                crate::telemetry::redis_call(&HGET, async { Ok(7) }).await;
            (direct, nested && after, answer)
        })
        .await;
        let Child::Sampled(record) = direct else {
            panic!("a sampled request's Redis call is recorded");
        };
        assert_eq!(
            (record.trace_id, record.parent_span_id),
            (TRACE, span.record.span_id),
            "the server span is its parent"
        );
        assert_eq!(record.name, "HGET");
        assert_eq!(record.kind, SpanKind::Client);
        assert!(record.sampled);
        assert!(
            std::ptr::eq(record.encoded_attributes[0], HGET.encoded()),
            "its attributes, encoded once for every such call"
        );
        assert!(
            nested,
            "a `tracing` span inside the request is the nearer parent, while it is entered"
        );
        assert_eq!(answer, Ok(7), "the call's own answer comes back");
    }

    #[test]
    fn the_status_goes_on_the_span_encoded_or_as_it_is() {
        crate::telemetry::init_for_tests();
        let mut r = price_request(true).record;
        set_status(&mut r, 404);
        assert_eq!(
            r.encoded_attributes[1],
            super::super::intern::status_attribute(404).unwrap()
        );
        assert_eq!(r.status_code, 0, "a 4xx is the client's error");
        let mut r = price_request(true).record;
        set_status(&mut r, 503);
        assert_eq!(r.status_code, 2, "a 5xx marks the span failed");
        let mut r = price_request(true).record;
        set_status(&mut r, 999);
        assert!(r.encoded_attributes[1].is_empty());
        assert_eq!(
            r.attributes.as_slice(),
            [(Cow::Borrowed(STATUS_CODE), AttrValue::Int(999))],
            "a status past 599 is kept as it is"
        );
    }

    #[tokio::test]
    async fn an_unsampled_request_records_no_redis_span() {
        let span = price_request(false);
        let (unsampled, _) = run_in(span, async {
            matches!(child("HGET", b""), Child::Unsampled)
        })
        .await;
        assert!(unsampled, "a parent-based sampler follows the request");
        assert!(
            matches!(child("HGET", b""), Child::Elsewhere),
            "outside a request"
        );
    }

    #[tokio::test]
    async fn outside_a_request_nothing_sees_a_server_span() {
        crate::telemetry::init_for_tests();
        assert!(current_parent().is_none());
        add_event(
            SpanEvent {
                time_unix_nano: 0,
                name: "x".into(),
                attributes: Vec::new(),
            },
            true,
        );
    }
}
