//! The server span of an HTTP request, kept in the request's task instead
//! of the `tracing` registry.
//!
//! A `tracing` span costs a registry slot that every callback looks up
//! (its filter's and our layer's), and an enter and an exit on every poll
//! of the request: with every trace sampled, about 5% of the api's CPU on a
//! cache hit went to the registry alone. The server span lives as long as
//! the request and is polled most, so [`ServerSpan`] keeps its record in a
//! task-local of the request instead. What happens inside sees it as if it
//! were the current span:
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
use std::cell::RefCell;
use std::sync::Arc;

use opentelemetry::trace::TraceContextExt as _;

use super::layer::{Pipeline, new_span_id, new_trace_id};
use super::record::{AttrValue, SpanEvent, SpanKind, SpanRecord, now_unix_nano};

tokio::task_local! {
    /// The server span of the request this task serves, while it runs.
    static SERVER: RefCell<Option<SpanRecord>>;
}

/// An HTTP server span (`otel.kind=server`), in OpenTelemetry's HTTP
/// conventions, recorded outside the `tracing` registry; see the module docs.
pub struct ServerSpan {
    record: SpanRecord,
    pipeline: Arc<Pipeline>,
}

impl ServerSpan {
    /// The span of a request for `path` by `method`, matched to `route`
    /// (`None`: no route matched; the span is then named by the method
    /// alone, without `http.route`). A valid `traceparent` (and
    /// `tracestate`) from the client makes it the client span's child.
    /// `None` when no span is recorded in this process (export off).
    pub fn start(
        method: &str,
        route: Option<&str>,
        path: &str,
        traceparent: Option<&str>,
        tracestate: Option<&str>,
    ) -> Option<Self> {
        let pipeline = super::PIPELINE.get()?.clone();
        let name: Cow<'static, str> = match route {
            Some(route) => Cow::Owned(format!("{method} {route}")),
            None => Cow::Owned(method.to_string()),
        };
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
        let mut record = SpanRecord::new(
            ids,
            trace_state,
            sampled,
            name,
            SpanKind::Server,
            now_unix_nano(),
        );
        let text = |s: &str| AttrValue::Str(Cow::Owned(s.to_string()));
        record.attributes.reserve(5);
        record
            .attributes
            .push((Cow::Borrowed("http.request.method"), text(method)));
        if let Some(route) = route {
            record
                .attributes
                .push((Cow::Borrowed("http.route"), text(route)));
        }
        record
            .attributes
            .push((Cow::Borrowed("url.path"), text(path)));
        record.attributes.push((
            Cow::Borrowed("url.scheme"),
            AttrValue::Str(Cow::Borrowed("http")),
        ));
        Some(Self { record, pipeline })
    }

    /// Runs `fut` (the request) inside this span; gives the span back.
    pub async fn run<F: Future>(self, fut: F) -> (F::Output, Self) {
        let Self { record, pipeline } = self;
        SERVER
            .scope(RefCell::new(Some(record)), async move {
                let out = fut.await;
                let record = SERVER
                    .with(|cell| cell.borrow_mut().take())
                    .expect("the server span is in its task until the request ends");
                (out, Self { record, pipeline })
            })
            .await
    }

    /// Ends the span with the response's `status` (a 5xx marks it failed),
    /// hands it to the exporter if sampled, and returns its `traceparent`
    /// for the response.
    pub fn finish(mut self, status: u16) -> String {
        let r = &mut self.record;
        r.attributes.push((
            Cow::Borrowed("http.response.status_code"),
            AttrValue::Int(i64::from(status)),
        ));
        if status >= 500 {
            r.status_code = 2;
        }
        let traceparent = r.traceparent();
        if r.sampled {
            r.end_unix_nano = now_unix_nano();
            self.pipeline.finish(self.record);
        }
        traceparent
    }
}

/// The server span of the request running now, as a parent: its trace id,
/// span id, sampling decision and `tracestate`.
pub(crate) fn current_parent() -> Option<(u128, u64, bool, String)> {
    with_current(|r| (r.trace_id, r.span_id, r.sampled, r.trace_state.clone()))
}

/// Runs `f` on the server span of the request running now, if there is one.
pub(crate) fn with_current<R>(f: impl FnOnce(&mut SpanRecord) -> R) -> Option<R> {
    SERVER
        .try_with(|cell| cell.try_borrow_mut().ok()?.as_mut().map(f))
        .ok()
        .flatten()
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

    #[tokio::test]
    async fn what_runs_in_a_request_sees_its_server_span_as_the_current_span() {
        crate::telemetry::init_for_tests();
        let span = ServerSpan::start(
            "POST",
            Some("/api/v1/price"),
            "/api/v1/price",
            Some(&format!("00-{TRACE:032x}-{CLIENT_SPAN:016x}-01")),
            None,
        )
        .expect("the test pipeline records spans");
        let ((child, context), span) = span
            .run(async {
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
        assert!(traceparent.starts_with(&format!("00-{TRACE:032x}-")));
        assert!(traceparent.ends_with("-01"));
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
