//! The process-wide Prometheus recorder every service renders `/metrics` from.
//!
//! `metrics` allows one global recorder per process, so it is installed
//! once ([`recorder`]) and shared by every app a process builds (tests build
//! many). Histogram buckets are declared here, per metric name, so that each
//! service's latency histograms can be read down to sub-millisecond p99s.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Buckets for request and job durations, in seconds: fine-grained from
/// 50 µs to 2 ms, then coarser up to 10 minutes.
pub const DURATION_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_15, 0.000_2, 0.000_25, 0.000_3, 0.000_4, 0.000_5, 0.000_6, 0.000_7,
    0.000_8, 0.000_9, 0.001, 0.001_25, 0.001_5, 0.001_75, 0.002, 0.003, 0.005, 0.007_5, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Histograms that get [`DURATION_BUCKETS`] (every other histogram is a summary).
pub const HISTOGRAMS: &[&str] = &[
    "http_request_duration_seconds",
    "job_duration_seconds",
    "listener_publish_to_enqueue_seconds",
];

/// The recorder's handle, installing the recorder on first use. Call it at
/// startup: anything recorded before it is installed is lost.
pub fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new();
            for name in HISTOGRAMS {
                builder = match builder
                    .set_buckets_for_metric(Matcher::Full((*name).to_string()), DURATION_BUCKETS)
                {
                    Ok(b) => b,
                    Err(_) => PrometheusBuilder::new(),
                };
            }
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            handle
        })
        .clone()
}

/// The counter `name` with no labels, registered once in `cell`: for the
/// series counted on every request, where `metrics::counter!` would look
/// the name up in the registry (a hash and a shared lock) each time.
/// Installs the recorder first, so the handle is never a no-op.
pub fn counter(
    cell: &'static OnceLock<metrics::Counter>,
    name: &'static str,
) -> &'static metrics::Counter {
    cell.get_or_init(|| {
        recorder();
        metrics::counter!(name)
    })
}

/// Binds `router` on `addr` (port 0 picks a free port); returns the bound
/// address and the future that serves it. Used by the worker and the
/// listener for their `/metrics` and `/health`.
pub async fn bind(
    addr: std::net::SocketAddr,
    router: axum::Router,
) -> std::io::Result<(
    std::net::SocketAddr,
    impl std::future::Future<Output = std::io::Result<()>> + Send,
)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    Ok((bound, async move { axum::serve(listener, router).await }))
}

/// The Prometheus exposition of this process, with its content type.
pub fn exposition() -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        recorder().render(),
    )
}
