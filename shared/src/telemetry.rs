//! Logging and trace export, set up the same way in every binary.
//!
//! [`init`] installs a `tracing` subscriber with an env filter (`RUST_LOG`,
//! default `info`), a fmt layer (JSON lines when `LOG_FORMAT=json`) and, only
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, an OpenTelemetry layer that
//! batches spans to that collector over OTLP/gRPC. Without the endpoint no
//! exporter exists at all, so tracing export costs nothing.
//!
//! The returned [`TelemetryGuard`] flushes and shuts the exporter down when
//! dropped, so the last spans of a stopping service are not lost.
//! [`init_for_tests`] is the quiet variant for test binaries: it prints only
//! when `TEST_LOG` is set.

use std::sync::Once;

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, fmt};

use crate::config::{LogFormat, TelemetrySettings};

/// Keeps the span exporter alive; dropping it flushes pending spans.
#[must_use = "dropping the guard shuts the span exporter down"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans are being exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("telemetry: flushing spans on shutdown failed: {e}");
        }
    }
}

fn build_provider(endpoint: &str, service_name: &str) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .context("building the OTLP span exporter")?;
    let resource = Resource::builder()
        .with_service_name(service_name.to_string())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_resource(resource)
        .with_batch_exporter(exporter)
        .build())
}

/// Installs the global subscriber for a service. Call once, early in `main`.
pub fn init(settings: &TelemetrySettings) -> anyhow::Result<TelemetryGuard> {
    let filter = EnvFilter::try_new(&settings.log_filter).context("RUST_LOG")?;
    let provider = settings
        .otlp_endpoint
        .as_deref()
        .map(|ep| build_provider(ep, &settings.service_name))
        .transpose()?;
    let otel_layer = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer().with_tracer(p.tracer(settings.service_name.clone()))
    });
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    if let Some(p) = &provider {
        opentelemetry::global::set_tracer_provider(p.clone());
    }
    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    match settings.log_format {
        LogFormat::Json => registry
            .with(fmt::layer().json().flatten_event(true))
            .try_init(),
        LogFormat::Pretty => registry.with(fmt::layer()).try_init(),
    }
    .context("installing the tracing subscriber")?;
    Ok(TelemetryGuard { provider })
}

/// Installs a subscriber for tests, once per test binary. Spans get real
/// OpenTelemetry ids (a provider without an exporter), so trace context is
/// propagated as in a service that exports. Log output goes to the test
/// harness's captured stdout, and only when `TEST_LOG` is set.
pub fn init_for_tests() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        use tracing_subscriber::Layer as _;
        let provider = SdkTracerProvider::builder().build();
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let otel = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("tests"))
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
        let logs = std::env::var_os("TEST_LOG").is_some().then(|| {
            let filter =
                EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("debug"));
            fmt::layer().with_test_writer().with_filter(filter)
        });
        let _ = tracing_subscriber::registry()
            .with(otel)
            .with(logs)
            .try_init();
    });
}

/// The W3C trace context (`traceparent`, `tracestate`) of the current span,
/// for carrying it across Redis or HTTP. `None` when the span is not traced
/// (no OpenTelemetry layer installed, e.g. export off).
pub fn current_trace_context() -> Option<(String, Option<String>)> {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let cx = tracing::Span::current().context();
    let mut carrier = std::collections::HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
    let parent = carrier.remove("traceparent")?;
    Some((
        parent,
        carrier.remove("tracestate").filter(|s| !s.is_empty()),
    ))
}

/// Makes `span` a child of the remote span described by `traceparent` (and
/// `tracestate`). A missing or malformed `traceparent` leaves it a root.
pub fn set_remote_parent(
    span: &tracing::Span,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let Some(traceparent) = traceparent else {
        return;
    };
    let mut carrier = std::collections::HashMap::new();
    carrier.insert("traceparent".to_string(), traceparent.to_string());
    if let Some(state) = tracestate {
        carrier.insert("tracestate".to_string(), state.to_string());
    }
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}
