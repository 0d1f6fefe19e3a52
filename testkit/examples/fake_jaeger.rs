//! A stand-in for Jaeger, for checking `jaeger/check-trace.sh` where there
//! is no Jaeger binary (CI, this machine): it takes spans over OTLP/gRPC on
//! `127.0.0.1:$OTLP_PORT`, as Jaeger's collector does, and answers the two
//! query-API calls the script makes on `127.0.0.1:$QUERY_PORT`, in the JSON
//! shape of Jaeger's `/api/traces` (`data[].traceID`, `spans[]` with
//! `spanID`, `operationName`, `references[]` (`CHILD_OF`), `startTime` and
//! `duration` in µs, `processID`, and `processes{}.serviceName`):
//!
//! - `GET /api/traces/{trace id}`: that trace, or 404 with Jaeger's
//!   "trace not found" error body;
//! - `GET /api/traces?service=S&limit=N`: the newest N traces with a span of
//!   service S.
//!
//! `scripts/smoke-stack` points the three services at it and runs the
//! script. It stops on SIGTERM.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use testkit::otlp_receiver::{OtlpReceiver, ReceivedSpan};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let otlp_port: u16 = std::env::var("OTLP_PORT")?.parse()?;
    let query_port: u16 = std::env::var("QUERY_PORT")?.parse()?;
    let receiver = std::sync::Arc::new(OtlpReceiver::start_on(otlp_port).await?);
    let app = axum::Router::new()
        .route("/api/traces/{trace_id}", axum::routing::get(one_trace))
        .route("/api/traces", axum::routing::get(find_traces))
        .with_state(receiver);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", query_port)).await?;
    println!(
        "fake jaeger: OTLP/gRPC on 127.0.0.1:{otlp_port}, query API on 127.0.0.1:{query_port}"
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            term.recv().await;
        })
        .await?;
    Ok(())
}

type Receiver = std::sync::Arc<OtlpReceiver>;

async fn one_trace(State(rx): State<Receiver>, Path(trace_id): Path<String>) -> Response {
    let spans = rx.trace(&trace_id.to_ascii_lowercase());
    if spans.is_empty() {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({
                "data": null, "total": 0, "limit": 0, "offset": 0,
                "errors": [{"code": 404, "msg": "trace not found"}],
            })),
        )
            .into_response();
    }
    Json(json!({ "data": [trace_json(&trace_id, &spans)], "errors": null })).into_response()
}

#[derive(serde::Deserialize)]
struct Find {
    service: String,
    limit: Option<usize>,
}

async fn find_traces(State(rx): State<Receiver>, Query(q): Query<Find>) -> Json<Value> {
    let mut traces: BTreeMap<String, Vec<ReceivedSpan>> = BTreeMap::new();
    for span in rx.spans() {
        traces.entry(span.trace_id.clone()).or_default().push(span);
    }
    let mut found: Vec<(u64, Value)> = traces
        .iter()
        .filter(|(_, spans)| spans.iter().any(|s| s.service == q.service))
        .map(|(id, spans)| {
            let start = spans.iter().map(|s| s.start_unix_nano).min().unwrap_or(0);
            (start, trace_json(id, spans))
        })
        .collect();
    found.sort_by_key(|t| std::cmp::Reverse(t.0));
    found.truncate(q.limit.unwrap_or(20));
    Json(json!({ "data": found.into_iter().map(|(_, t)| t).collect::<Vec<_>>(), "errors": null }))
}

/// One trace in Jaeger's JSON: one process per service.
fn trace_json(trace_id: &str, spans: &[ReceivedSpan]) -> Value {
    let mut processes: BTreeMap<&str, String> = BTreeMap::new();
    for s in spans {
        let next = format!("p{}", processes.len() + 1);
        processes.entry(s.service.as_str()).or_insert(next);
    }
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let references = if s.parent_span_id.is_empty() {
                vec![]
            } else {
                vec![json!({"refType": "CHILD_OF", "traceID": s.trace_id, "spanID": s.parent_span_id})]
            };
            json!({
                "traceID": s.trace_id,
                "spanID": s.span_id,
                "operationName": s.name,
                "references": references,
                "startTime": s.start_unix_nano / 1_000,
                "duration": s.end_unix_nano.saturating_sub(s.start_unix_nano) / 1_000,
                "tags": s.attributes.iter().map(|(k, v)| json!({"key": k, "type": "string", "value": v})).collect::<Vec<_>>(),
                "processID": processes[s.service.as_str()],
            })
        })
        .collect();
    json!({
        "traceID": trace_id,
        "spans": spans,
        "processes": processes
            .iter()
            .map(|(service, id)| (id.clone(), json!({"serviceName": service, "tags": []})))
            .collect::<serde_json::Map<_, _>>(),
        "warnings": null,
    })
}
