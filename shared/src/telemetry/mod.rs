//! Logging and trace export, set up the same way in every binary.
//!
//! [`init`] installs a `tracing` subscriber with a fmt layer (JSON lines when
//! `LOG_FORMAT=json`) filtered by `RUST_LOG` (default `info`) and, only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set (and `OTEL_SDK_DISABLED` is not
//! `true`), an OpenTelemetry layer that batches spans to that collector over
//! OTLP/gRPC (or OTLP/HTTP with `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`).
//! The trace spans (HTTP server, Redis client, job, event batch) are `DEBUG`
//! and only the OpenTelemetry layer asks for them, so with export off they
//! are never created: tracing costs nothing. The W3C trace-context
//! propagator is installed either way.
//!
//! A collector that is down never blocks a request: the batch processor
//! exports on its own thread and drops what it cannot send, with one warning
//! a minute. OTLP/HTTP uses the blocking reqwest client, which runs on that
//! thread; the async one needs a Tokio reactor there and panicked on the
//! first export, so nothing was ever sent.
//!
//! Helpers for the spans the services make: [`redis_span`] (a Redis client
//! span in the database conventions), [`producer_span`] (publishing to the
//! event channel or the job queue), [`current_trace_context`] and
//! [`set_remote_parent`] (W3C `traceparent` across Redis and HTTP), and
//! [`record_remote_client_span`] for an operation timed before its trace was
//! known (the worker's queue fetch).
//!
//! The returned [`TelemetryGuard`] flushes and shuts the exporter down when
//! dropped, so the last spans of a stopping service are not lost.
//! [`init_for_tests`] is the quiet variant for test binaries: it prints only
//! when `TEST_LOG` is set.

use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, fmt};

use crate::config::{LogFormat, OtlpProtocol, TelemetrySettings, TraceSampler};
use opentelemetry_sdk::trace::Sampler;

mod propagation;
pub use propagation::*;

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

/// Targets whose spans and events go to the OpenTelemetry layer: our own
/// crates only. Spans from these at `DEBUG` and above are exported (the
/// trace spans are `DEBUG`, so with export off they are never created);
/// events only at `INFO` and above. The exporter's own stack (tonic, hyper,
/// h2, opentelemetry) is never traced, which would loop.
const TRACED_CRATES: &[&str] = &["api", "worker", "listener", "shared"];

/// The OpenTelemetry layer's filter: [`traced`], which depends only on a
/// callsite's metadata, so each callsite is decided once. (A `filter_fn`
/// would be asked again on every span and event of every crate, hyper's
/// and h2's many `trace!` events included, costing every request.)
struct Traced;

impl<S> tracing_subscriber::layer::Filter<S> for Traced {
    fn enabled(
        &self,
        meta: &tracing::Metadata<'_>,
        _: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        traced(meta)
    }

    fn callsite_enabled(
        &self,
        meta: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if traced(meta) {
            tracing::subscriber::Interest::always()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::DEBUG)
    }
}

fn traced(meta: &tracing::Metadata<'_>) -> bool {
    let ours = TRACED_CRATES.iter().any(|c| {
        meta.target() == *c
            || meta
                .target()
                .strip_prefix(c)
                .is_some_and(|rest| rest.starts_with("::"))
    });
    ours && (meta.is_span() && *meta.level() <= tracing::Level::DEBUG
        || *meta.level() <= tracing::Level::INFO)
}

/// Passes spans to the real exporter; when the collector is down, spans are
/// dropped with one warning a minute instead of one per batch, and an export
/// never blocks a request (the batch processor runs it on its own).
#[derive(Debug)]
struct QuietExporter<E> {
    inner: E,
    last_warning: std::sync::Mutex<Option<std::time::Instant>>,
}

/// At most one "collector unreachable" warning per this period.
pub const EXPORT_WARNING_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl<E: opentelemetry_sdk::trace::SpanExporter> opentelemetry_sdk::trace::SpanExporter
    for QuietExporter<E>
{
    async fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        let n = batch.len();
        let res = self.inner.export(batch).await;
        if let Err(e) = &res {
            let mut last = self
                .last_warning
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if last.is_none_or(|t| t.elapsed() >= EXPORT_WARNING_EVERY) {
                *last = Some(std::time::Instant::now());
                tracing::warn!(target: "telemetry", error = %e, dropped = n, "cannot export spans; dropping them (this warning repeats at most once a minute)");
            }
        }
        // Reported as done: the batch is dropped either way, and the SDK
        // would otherwise log every failure itself.
        Ok(())
    }

    fn shutdown_with_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The SDK's sampler for a [`TraceSampler`] setting.
fn sdk_sampler(s: TraceSampler) -> Sampler {
    match s {
        TraceSampler::AlwaysOn => Sampler::AlwaysOn,
        TraceSampler::AlwaysOff => Sampler::AlwaysOff,
        TraceSampler::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
        TraceSampler::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        TraceSampler::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        TraceSampler::ParentBasedTraceIdRatio(r) => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r)))
        }
    }
}

fn build_provider(
    endpoint: &str,
    protocol: OtlpProtocol,
    service_name: &str,
    sampler: Sampler,
) -> anyhow::Result<SdkTracerProvider> {
    let resource = Resource::builder()
        .with_service_name(service_name.to_string())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let builder = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_sampler(sampler);
    let builder = match protocol {
        OtlpProtocol::Grpc => builder.with_batch_exporter(QuietExporter {
            inner: opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(EXPORT_TIMEOUT)
                .build()
                .context("building the OTLP/gRPC span exporter")?,
            last_warning: Default::default(),
        }),
        OtlpProtocol::HttpProtobuf => builder.with_batch_exporter(QuietExporter {
            inner: opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
                .with_timeout(EXPORT_TIMEOUT)
                .build()
                .context("building the OTLP/HTTP span exporter")?,
            last_warning: Default::default(),
        }),
    };
    Ok(builder.build())
}

/// Longest one export may take before its batch is dropped.
pub const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Whether a tracer provider with an exporter is installed (by [`init`]):
/// spans built directly on the OpenTelemetry API are skipped otherwise.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Installs the global subscriber for a service. Call once, early in `main`.
pub fn init(settings: &TelemetrySettings) -> anyhow::Result<TelemetryGuard> {
    install(settings, false)
}

/// [`init`] for a service that decides, as each request arrives, whether
/// its trace is kept ([`head_decision`]), with the configured sampler. A
/// request it drops then creates no span at all: with the `tracing` layer,
/// building a span costs the same whether the sampler keeps it or not, and
/// most requests are dropped at the usual ratios. The provider itself then
/// samples every root, since roots reach it only when already chosen.
pub fn init_head_sampled(settings: &TelemetrySettings) -> anyhow::Result<TelemetryGuard> {
    install(settings, true)
}

fn install(settings: &TelemetrySettings, head_sampled: bool) -> anyhow::Result<TelemetryGuard> {
    use tracing_subscriber::Layer as _;
    let filter = EnvFilter::try_new(&settings.log_filter)
        .context("RUST_LOG")?
        // The SDK's own messages (one per failed export) are replaced by
        // QuietExporter's rate-limited warning.
        .add_directive("opentelemetry_sdk=off".parse()?)
        .add_directive("opentelemetry_otlp=off".parse()?);
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let configured = sdk_sampler(settings.sampler);
    let provider_sampler = if head_sampled {
        Sampler::ParentBased(Box::new(Sampler::AlwaysOn))
    } else {
        configured.clone()
    };
    let provider = settings
        .otlp_endpoint
        .as_deref()
        .map(|ep| {
            build_provider(
                ep,
                settings.otlp_protocol,
                &settings.service_name,
                provider_sampler,
            )
        })
        .transpose()?;
    if head_sampled && provider.is_some() {
        let _ = HEAD_SAMPLER.set(configured);
    }
    let otel_layer = provider.as_ref().map(|p| {
        opentelemetry::global::set_tracer_provider(p.clone());
        EXPORTING.store(true, Ordering::Relaxed);
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(settings.service_name.clone()))
            // Per-span extras that cost CPU on every poll (busy/idle time)
            // or allocations (code location, thread, target) and that a
            // trace of this service does not need.
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false)
            .with_target(false)
            // Attaching the OpenTelemetry context on every enter (every poll
            // of an instrumented future) serves other OpenTelemetry
            // instrumentation, which these services do not use: trace
            // context is read from the `tracing` span itself.
            .with_context_activation(false)
            .with_filter(Traced)
    });
    let registry = tracing_subscriber::registry().with(otel_layer);
    match settings.log_format {
        LogFormat::Json => registry
            .with(fmt::layer().json().flatten_event(true).with_filter(filter))
            .try_init(),
        LogFormat::Pretty => registry.with(fmt::layer().with_filter(filter)).try_init(),
    }
    .context("installing the tracing subscriber")?;
    Ok(TelemetryGuard { provider })
}

/// A client span for one Redis round trip on a hot path, in the database
/// conventions: named by its `summary` (`GET`, `queue push`), with
/// `db.system=redis` and `db.operation.name` the command sent (`GET`,
/// `EVALSHA`, or `BATCH …` for a pipeline), never keys or values. `DEBUG`,
/// so it costs nothing unless spans are exported.
pub fn redis_span(summary: &'static str, operation: &'static str) -> tracing::Span {
    if untraced() {
        return tracing::Span::none();
    }
    tracing::debug_span!(
        "redis",
        otel.name = summary,
        otel.kind = "client",
        db.system = "redis",
        db.operation.name = operation,
        db.query.summary = summary,
        db.operation.batch.size = tracing::field::Empty,
    )
}

/// A producer span for publishing to `destination` (the event channel and
/// stream, or a job queue), in the messaging conventions. What it publishes
/// should carry [`current_trace_context`] taken inside it, so the consumer's
/// span is its child. `DEBUG`, like the others.
pub fn producer_span(destination: &str) -> tracing::Span {
    if untraced() {
        return tracing::Span::none();
    }
    tracing::debug_span!(
        "publish",
        otel.name = %format_args!("publish {destination}"),
        otel.kind = "producer",
        messaging.system = "redis",
        messaging.destination.name = destination,
        messaging.operation = "publish",
        "messaging.operation.type" = "send",
        messaging.message.id = tracing::field::Empty,
        messaging.batch.message_count = tracing::field::Empty,
    )
}

/// Records a finished client span that started at `start` and ended at
/// `end`, as a child of the remote span `traceparent`. For an operation
/// whose trace is known only from its result: the worker's fetch learns
/// which traces its jobs belong to when the fetch returns. Nothing happens
/// unless spans are exported or `traceparent` is invalid.
pub fn record_remote_client_span(
    name: &'static str,
    start: std::time::SystemTime,
    end: std::time::SystemTime,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
    attributes: Vec<opentelemetry::KeyValue>,
) {
    use opentelemetry::trace::{Span as _, SpanKind, TraceContextExt as _, Tracer as _};
    if !EXPORTING.load(Ordering::Relaxed) {
        return;
    }
    let parent = extract(traceparent, tracestate);
    if !parent.span().span_context().is_valid() {
        return;
    }
    let tracer = opentelemetry::global::tracer("shared");
    let mut span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Client)
        .with_start_time(start)
        .with_attributes(attributes)
        .start_with_context(&tracer, &parent);
    span.end_with_timestamp(end);
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
            .with_filter(Traced);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_head_sampler_every_request_is_traced() {
        // No test in this binary installs one (that needs init_head_sampled
        // with an endpoint, once per process).
        assert_eq!(head_decision(None, None), HeadDecision::Traced);
    }

    #[test]
    fn the_sdk_sampler_follows_the_setting() {
        use opentelemetry::trace::{SpanKind, TraceId};
        use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample as _};
        let decide = |s: TraceSampler, parent: Option<&str>| {
            sdk_sampler(s)
                .should_sample(
                    Some(&extract(parent, None)),
                    TraceId::from(7u128),
                    "http",
                    &SpanKind::Server,
                    &[],
                    &[],
                )
                .decision
        };
        let sampled = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let dropped = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        let none = TraceSampler::ParentBasedTraceIdRatio(0.0);
        assert_eq!(decide(none, None), SamplingDecision::Drop);
        assert_eq!(decide(none, sampled), SamplingDecision::RecordAndSample);
        let all = TraceSampler::ParentBasedTraceIdRatio(1.0);
        assert_eq!(decide(all, None), SamplingDecision::RecordAndSample);
        assert_eq!(decide(all, dropped), SamplingDecision::Drop);
        assert_eq!(
            decide(TraceSampler::AlwaysOn, dropped),
            SamplingDecision::RecordAndSample
        );
    }

    #[test]
    fn a_traceparent_survives_extract_and_inject() {
        use opentelemetry::propagation::TextMapPropagator as _;
        use opentelemetry::trace::TraceContextExt as _;
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = extract(Some(tp), Some("vendor=x"));
        assert!(cx.span().span_context().is_valid());
        assert!(cx.span().span_context().is_remote());
        let mut out = W3c::default();
        PROPAGATOR.inject_context(&cx, &mut out);
        assert_eq!(out.traceparent.as_deref(), Some(tp));
        assert_eq!(out.tracestate.as_deref(), Some("vendor=x"));
        // The direct formatting agrees with the propagator's.
        assert_eq!(
            traceparent_of(cx.span().span_context()).as_deref(),
            Some(tp)
        );
        let unsampled = opentelemetry::trace::SpanContext::new(
            cx.span().span_context().trace_id(),
            cx.span().span_context().span_id(),
            opentelemetry::trace::TraceFlags::default(),
            false,
            Default::default(),
        );
        assert_eq!(
            traceparent_of(&unsampled).as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
        );
        for bad in [
            "",
            "00-zz-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            assert!(
                !extract(Some(bad), None).span().span_context().is_valid(),
                "{bad}"
            );
        }
    }
}
