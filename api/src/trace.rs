//! The server span of every request, in OpenTelemetry's HTTP conventions.
//!
//! [`RequestSpan`] opens a server span ([`shared::telemetry::ServerSpan`],
//! kept in the request's task rather than the `tracing` registry, which
//! made every traced request pay a lookup per poll) named `{method} {route}`
//! (`otel.kind=server`, `http.request.method`, `http.route`, `url.path`,
//! `url.scheme`, and `http.response.status_code` once answered; a 5xx marks
//! it as an error). A path no route matches is named by its method alone,
//! without `http.route`. A W3C `traceparent` (and
//! `tracestate`) sent by the client makes it a child of the client's span,
//! and the response carries the server span's own `traceparent`, so a caller
//! can find its trace. Everything below (the Redis spans, the published
//! event, the queued job) continues this trace. With span export off the
//! span is never created; with it on, the configured sampler decides first
//! ([`shared::telemetry::head_decision`]), and a request it drops runs with
//! no span at all and answers without a `traceparent`: there is no trace
//! to look up, and the header was a measurable share of what 10% sampling
//! cost a cache hit (about 70 bytes more for the api to write and for the
//! client to parse). What it publishes or queues still carries its
//! `traceparent`, flagged not sampled, so the listener and the worker drop
//! its trace too.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use shared::telemetry::{HeadDecision, ServerSpan, UntracedContext};

/// The W3C trace context headers, as constants: a header name given as a
/// string is parsed on every lookup.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// How a request runs: in its server span, without any span because head
/// sampling dropped it (and without a `traceparent` on its response; what
/// it passes on is flagged not sampled), or plainly with span export off.
pub(crate) enum RequestSpan {
    /// Span export is off: no span to keep.
    Off,
    /// Head sampling dropped it: this is its (unsampled) context.
    Untraced(UntracedContext),
    /// Its server span.
    Traced(ServerSpan),
}

impl RequestSpan {
    /// Decides, and opens the server span when the request is traced;
    /// `route` is its template (`None`: no route matched).
    pub(crate) fn start(req: &Request, route: Option<&str>) -> Self {
        if !shared::telemetry::records_spans() {
            return Self::Off;
        }
        let header = |name: HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok());
        let traceparent = header(TRACEPARENT);
        // Without a traceparent a tracestate means nothing (W3C Trace
        // Context: it must then be ignored), and most requests bring neither.
        let tracestate = traceparent.and_then(|_| header(TRACESTATE));
        if let HeadDecision::Untraced(context) =
            shared::telemetry::head_decision(traceparent, tracestate)
        {
            return Self::Untraced(context);
        }
        match ServerSpan::start(
            req.method().as_str(),
            route,
            req.uri().path(),
            traceparent,
            tracestate,
        ) {
            Some(span) => Self::Traced(span),
            None => Self::Off,
        }
    }
}

/// Ends `span` with `response`'s status and has the response carry its
/// `traceparent`.
pub(crate) fn answered(response: &mut Response, span: ServerSpan) {
    let traceparent = span.finish(response.status().as_u16());
    if let Ok(value) = HeaderValue::from_bytes(traceparent.as_bytes()) {
        response.headers_mut().insert(TRACEPARENT, value);
    }
}
