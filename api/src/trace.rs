//! The server span of every request, in OpenTelemetry's HTTP conventions.
//!
//! [`trace_http`] opens a server span ([`shared::telemetry::ServerSpan`],
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

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use shared::telemetry::HeadDecision;

/// Middleware: runs the request inside its server span, or, when head
/// sampling drops it, without any span (and without a `traceparent` on its
/// response; what it passes on is flagged not sampled).
pub(crate) async fn trace_http(req: Request, next: Next) -> Response {
    let decision = {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        shared::telemetry::head_decision(header("traceparent"), header("tracestate"))
    };
    if let HeadDecision::Untraced(context) = decision {
        // Boxed, as below: kept inline, these branches' futures would make
        // every request's middleware future larger, and it is copied
        // whole when it is created.
        return Box::pin(shared::telemetry::run_untraced(context, next.run(req))).await;
    }
    let span = {
        // In a block: a borrow of the request must not live across an await.
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        shared::telemetry::ServerSpan::start(
            req.method().as_str(),
            req.extensions()
                .get::<MatchedPath>()
                .map(MatchedPath::as_str),
            req.uri().path(),
            header("traceparent"),
            header("tracestate"),
        )
    };
    // With span export off there is no span to keep.
    let Some(span) = span else {
        return next.run(req).await;
    };
    let (mut response, span) = Box::pin(span.run(next.run(req))).await;
    let traceparent = span.finish(response.status().as_u16());
    if let Ok(value) = HeaderValue::try_from(traceparent) {
        response.headers_mut().insert("traceparent", value);
    }
    response
}
