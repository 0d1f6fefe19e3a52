//! The server span of every request, in OpenTelemetry's HTTP conventions.
//!
//! [`trace_http`] opens a `DEBUG` span named `{method} {route}`
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
//! no span at all.

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use shared::telemetry::HeadDecision;
use tracing::Instrument as _;

/// Middleware: runs the request inside its server span, or, when head
/// sampling drops it, without any span (its response still carries a
/// `traceparent`, flagged not sampled, which it also passes on).
pub(crate) async fn trace_http(req: Request, next: Next) -> Response {
    let decision = {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        shared::telemetry::head_decision(header("traceparent"), header("tracestate"))
    };
    if let HeadDecision::Untraced(context) = decision {
        let parent = shared::telemetry::traceparent_of(&context);
        let mut response = shared::telemetry::run_untraced(context, next.run(req)).await;
        if let Some(value) = parent.and_then(|p| HeaderValue::try_from(p).ok()) {
            response.headers_mut().insert("traceparent", value);
        }
        return response;
    }
    // Everything known before the handler runs is given at creation: each
    // field recorded later costs the layer another lookup of the span.
    let method = req.method().as_str();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    // An unmatched path has no route: the span is named by the method
    // alone and carries no `http.route`, as the conventions ask.
    let span = tracing::debug_span!(
        "http",
        otel.name = %format_args!(
            "{method}{}{}",
            if route.is_some() { " " } else { "" },
            route.unwrap_or("")
        ),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        http.route = route,
        http.response.status_code = tracing::field::Empty,
        url.path = req.uri().path(),
        url.scheme = "http",
    );
    if !span.is_disabled() {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        shared::telemetry::set_remote_parent(&span, header("traceparent"), header("tracestate"));
    }
    let mut response = next.run(req).instrument(span.clone()).await;
    if !span.is_disabled() {
        let status = response.status();
        span.record("http.response.status_code", status.as_u16());
        if status.is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
        if let Some((parent, _)) = shared::telemetry::trace_context_of(&span)
            && let Ok(value) = HeaderValue::from_str(&parent)
        {
            response.headers_mut().insert("traceparent", value);
        }
    }
    response
}
