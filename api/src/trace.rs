//! The server span of every request, in OpenTelemetry's HTTP conventions.
//!
//! [`trace_http`] opens a `DEBUG` span named `{method} {route}`
//! (`otel.kind=server`, `http.request.method`, `http.route`, and
//! `http.response.status_code` once answered). A W3C `traceparent` (and
//! `tracestate`) sent by the client makes it a child of the client's span,
//! and the response carries the server span's own `traceparent`, so a caller
//! can find its trace. Everything below (the Redis spans, the published
//! event, the queued job) continues this trace. With span export off the
//! span is never created.

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument as _;

/// Middleware: runs the request inside its server span.
pub async fn trace_http(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().clone();
    let span = tracing::debug_span!(
        "http",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    if !span.is_disabled() {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        shared::telemetry::set_remote_parent(&span, header("traceparent"), header("tracestate"));
    }
    let mut response = next.run(req).instrument(span.clone()).await;
    if !span.is_disabled() {
        span.record("http.response.status_code", response.status().as_u16());
        let context = span.in_scope(shared::telemetry::current_trace_context);
        if let Some((parent, _)) = context
            && let Ok(value) = HeaderValue::from_str(&parent)
        {
            response.headers_mut().insert("traceparent", value);
        }
    }
    response
}
