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
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::Response;
use shared::telemetry::{HeadDecision, ServerRoute, ServerSpan, UntracedContext};

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
    pub(crate) fn start(req: &Request, route: Option<&ServerRoute>) -> Self {
        if !shared::telemetry::records_spans() {
            return Self::Off;
        }
        let header = |name: HeaderName| header(req.headers(), &name).and_then(|v| v.to_str().ok());
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

/// Header values up to which [`header`] compares names rather than
/// hashing one.
const SCAN_MAX: usize = 8;

/// The first value of header `name`. A request with a few headers is
/// scanned: a custom name (the trace context's are) is hashed byte by byte
/// for a lookup, while a standard one differs from it at its first word.
/// That was about 120 instructions per request, traced or not, with the
/// three headers of a typical API call (callgrind).
fn header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    // Values, not names: the scan visits each.
    if headers.len() > SCAN_MAX {
        return headers.get(name);
    }
    headers
        .iter()
        .find_map(|(n, value)| (n == name).then_some(value))
}

/// Ends `span` with `response`'s status and has the response carry its
/// `traceparent`.
pub(crate) fn answered(response: &mut Response, span: ServerSpan) {
    let traceparent = span.finish(response.status().as_u16());
    if let Ok(value) = HeaderValue::from_bytes(traceparent.as_bytes()) {
        response.headers_mut().insert(TRACEPARENT, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A map of `n` headers (a standard one, then custom fillers), then
    /// the `extra` ones.
    fn headers(n: usize, extra: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert("host", HeaderValue::from_static("127.0.0.1"));
        for i in 1..n {
            map.insert(
                HeaderName::try_from(format!("x-filler-{i}")).unwrap(),
                HeaderValue::from_static("x"),
            );
        }
        for (name, value) in extra {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn a_header_is_found_as_a_lookup_finds_it_with_few_headers_or_many() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        for n in [1, 3, SCAN_MAX - 1, SCAN_MAX, SCAN_MAX + 1, 30] {
            let map = headers(
                n,
                &[
                    ("traceparent", tp),
                    ("tracestate", "a=1"),
                    ("tracestate", "b=2"),
                ],
            );
            assert_eq!(
                header(&map, &TRACEPARENT),
                map.get(TRACEPARENT),
                "{n} headers"
            );
            assert_eq!(header(&map, &TRACEPARENT).unwrap(), tp);
            assert_eq!(
                header(&map, &TRACESTATE).unwrap(),
                "a=1",
                "the first of several values, as `get` gives ({n} headers)"
            );
            let map = headers(
                n,
                &[("traceparentx", tp), ("content-type", "application/json")],
            );
            assert_eq!(
                header(&map, &TRACEPARENT),
                None,
                "{n} headers, none named so"
            );
        }
        assert_eq!(header(&HeaderMap::new(), &TRACEPARENT), None);
    }
}
