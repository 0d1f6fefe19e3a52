//! Logging and trace export, set up the same way in every binary.
//!
//! [`init`] installs a `tracing` subscriber with a fmt layer (JSON lines when
//! `LOG_FORMAT=json`) filtered by `RUST_LOG` (default `info`) and, only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set (and `OTEL_SDK_DISABLED` is not
//! `true`), this crate's OpenTelemetry layer (`layer`), which batches
//! spans to that collector over OTLP/gRPC (or OTLP/HTTP with
//! `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`) from a thread of its own
//! (`export`), encoding them itself (`encode`). The trace spans (HTTP
//! server, Redis client, job, event batch) are `DEBUG` and only the
//! OpenTelemetry layer asks for them, so with export off they are never
//! created: tracing costs nothing. The W3C trace-context propagator is
//! installed either way.
//!
//! A collector that is down never blocks a request: the exporter drops what
//! it cannot send, with one warning a minute.
//!
//! Helpers for the spans the services make: [`ServerSpan`] (an HTTP
//! server span kept in the request's task, outside the registry),
//! [`redis_span`] (a Redis client
//! span in the database conventions), [`producer_span`] (publishing to the
//! event channel or the job queue), [`current_trace_context`] and
//! [`set_remote_parent`] (W3C `traceparent` across Redis and HTTP), and
//! [`record_remote_client_span`] for an operation timed before its trace was
//! known (the worker's queue fetch).
//!
//! The returned [`TelemetryGuard`] sends what is queued and stops the
//! exporter when dropped, so the last spans of a stopping service are not
//! lost. [`init_for_tests`] is the quiet variant for test binaries: it
//! prints only when `TEST_LOG` is set.
//!
//! Layout: `record` (a span's data), `layer` (the `tracing` layer and the
//! sampler), `encode` (OTLP protobuf), `buffer` (each thread's encoded
//! spans, waiting), `export` (the export thread, gRPC and HTTP),
//! `propagation` (W3C trace context and head sampling), `server` (the HTTP
//! server span outside the registry), `intern` (its route, method and name
//! strings, interned), `scope` (a value a request's future sees in a
//! thread-local while it is polled: its server span, or the context of a
//! request head sampling dropped).

use std::borrow::Cow;
use std::sync::{Arc, Once, OnceLock};

use anyhow::Context as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::Sampler;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, fmt};

use crate::config::{LogFormat, TelemetrySettings, TraceSampler};

mod buffer;
mod encode;
mod export;
mod intern;
mod layer;
mod propagation;
mod record;
mod scope;
mod server;

pub use export::{EXPORT_TIMEOUT, EXPORT_WARNING_EVERY};
pub use intern::ServerRoute;
pub use propagation::*;
pub use record::Traceparent;
pub use scope::Scoped;
pub use server::{InSpan, ServerSpan};

use layer::{OtlpLayer, Pipeline};
use record::{AttrValue, SpanKind, SpanRecord};

/// Keeps the span exporter alive; dropping it sends what is queued.
#[must_use = "dropping the guard shuts the span exporter down"]
pub struct TelemetryGuard {
    exporter: Option<Arc<export::Exporter>>,
}

impl TelemetryGuard {
    /// Whether spans are being exported.
    pub fn exporting(&self) -> bool {
        self.exporter.is_some()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(exporter) = self.exporter.take() {
            exporter.shutdown();
        }
    }
}

/// The installed pipeline (sampler and exporter), for the helpers that make
/// spans without the `tracing` layer ([`record_remote_client_span`]).
static PIPELINE: OnceLock<Arc<Pipeline>> = OnceLock::new();

/// Whether this process records spans (export on, or the test pipeline):
/// with it off, a request needs no trace context read at all.
pub fn records_spans() -> bool {
    PIPELINE.get().is_some()
}

/// Locks `m`, taking it over from a thread that panicked while holding it:
/// what the telemetry mutexes guard stays usable (a span buffer, a
/// throttle's last time, the interned set), and telemetry must never
/// take a service down.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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

/// Whether a child span under `s` simply follows its parent's decision.
fn is_parent_based(s: TraceSampler) -> bool {
    matches!(
        s,
        TraceSampler::ParentBasedAlwaysOn
            | TraceSampler::ParentBasedAlwaysOff
            | TraceSampler::ParentBasedTraceIdRatio(_)
    )
}

/// Installs the global subscriber for a service. Call once, early in `main`.
pub fn init(settings: &TelemetrySettings) -> anyhow::Result<TelemetryGuard> {
    install(settings, false)
}

/// [`init`] for a service that decides, as each request arrives, whether
/// its trace is kept ([`head_decision`]), with the configured sampler. A
/// request it drops then creates no span at all (the helpers return
/// `Span::none()`). The layer itself then keeps every root, since roots
/// reach it only when already chosen.
pub fn init_head_sampled(settings: &TelemetrySettings) -> anyhow::Result<TelemetryGuard> {
    install(settings, true)
}

fn install(settings: &TelemetrySettings, head_sampled: bool) -> anyhow::Result<TelemetryGuard> {
    use tracing_subscriber::Layer as _;
    let filter = EnvFilter::try_new(&settings.log_filter).context("RUST_LOG")?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let configured = sdk_sampler(settings.sampler);
    let exporter = settings
        .otlp_endpoint
        .as_deref()
        .map(|endpoint| export::Exporter::start(export_settings(settings, endpoint)))
        .transpose()?;
    let otel_layer = exporter.as_ref().map(|exporter| {
        if head_sampled {
            let _ = HEAD_SAMPLER.set(propagation::HeadSampler {
                sampler: configured.clone(),
                roots: propagation::Roots::of(settings.sampler),
            });
        }
        let (sampler, parent_based, every_root) = if head_sampled {
            (
                Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
                true,
                true,
            )
        } else {
            (
                configured,
                is_parent_based(settings.sampler),
                // Then it need not be asked about a root.
                propagation::Roots::of(settings.sampler) == propagation::Roots::All,
            )
        };
        let pipeline = Arc::new(Pipeline {
            sampler,
            parent_based,
            every_root,
            exporter: Some(exporter.clone()),
        });
        let _ = PIPELINE.set(pipeline.clone());
        OtlpLayer { pipeline }.with_filter(Traced)
    });
    let registry = tracing_subscriber::registry().with(otel_layer);
    match settings.log_format {
        LogFormat::Json => registry
            .with(fmt::layer().json().flatten_event(true).with_filter(filter))
            .try_init(),
        LogFormat::Pretty => registry.with(fmt::layer().with_filter(filter)).try_init(),
    }
    .context("installing the tracing subscriber")?;
    Ok(TelemetryGuard { exporter })
}

/// Where the spans of a service with these settings go, and the resource
/// they are sent with: [`resource_attributes`].
fn export_settings(settings: &TelemetrySettings, endpoint: &str) -> export::ExportSettings {
    export::ExportSettings {
        endpoint: endpoint.to_string(),
        protocol: settings.otlp_protocol,
        delay: settings.batch_delay,
        max_queue: settings.max_queue,
        max_batch: settings.max_export_batch,
        resource: encode::Resource {
            attributes: resource_attributes(settings),
            scope: settings.service_name.clone(),
        },
    }
}

/// The resource: `service.name`, then `OTEL_RESOURCE_ATTRIBUTES` in its
/// order, then `service.version` and `telemetry.sdk.language` unless
/// those set them.
fn resource_attributes(settings: &TelemetrySettings) -> Vec<(Cow<'static, str>, AttrValue)> {
    let text = |s: &str| AttrValue::Str(s.to_string().into());
    let mut attributes = vec![(Cow::Borrowed("service.name"), text(&settings.service_name))];
    attributes.extend(
        settings
            .resource_attributes
            .iter()
            .filter(|(k, _)| k != "service.name")
            .map(|(k, v)| (Cow::Owned(k.clone()), text(v))),
    );
    for (key, value) in [
        ("service.version", env!("CARGO_PKG_VERSION")),
        ("telemetry.sdk.language", "rust"),
    ] {
        if !attributes.iter().any(|(k, _)| k == key) {
            attributes.push((Cow::Borrowed(key), text(value)));
        }
    }
    attributes
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

/// A Redis command on a hot path, as [`redis_call`]'s client span names
/// and describes it (see [`redis_span`]). Declared once, as a `static`, so
/// that the span's attributes are encoded on its first traced call and
/// borrowed after: finding them by their strings' addresses instead cost
/// about 180 instructions of every traced cache hit (callgrind).
#[derive(Debug)]
pub struct RedisOp {
    summary: &'static str,
    operation: &'static str,
    encoded: std::sync::OnceLock<Box<[u8]>>,
}

impl RedisOp {
    /// `summary` (`HGET`, `BATCH HGET`) names the span; `operation` is the
    /// command sent.
    pub const fn new(summary: &'static str, operation: &'static str) -> Self {
        Self {
            summary,
            operation,
            encoded: std::sync::OnceLock::new(),
        }
    }

    /// Its span's attributes, as `Span.attributes` fields.
    fn encoded(&'static self) -> &'static [u8] {
        self.encoded.get_or_init(|| {
            encode::span_attributes(&[
                ("db.system", "redis"),
                ("db.operation.name", self.operation),
                ("db.query.summary", self.summary),
            ])
            .into_boxed_slice()
        })
    }
}

/// Runs `fut`, one Redis round trip on a hot path, inside a client span
/// like [`redis_span`]'s for `op` that also records a failed round trip as
/// failed. Directly under a request's server span (no `tracing` span
/// current), the span is recorded without the `tracing` registry, as the
/// server span is: a cache hit then makes no `tracing` span at all.
pub async fn redis_call<T, E: std::fmt::Display>(
    op: &'static RedisOp,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    use tracing::Instrument as _;
    if untraced() {
        return fut.await;
    }
    match server::child(op.summary, op.encoded()) {
        server::Child::Unsampled => fut.await,
        server::Child::Sampled(record) => {
            let out = fut.await;
            let error = out.as_ref().err().map(ToString::to_string);
            server::finish_child(record, error);
            out
        }
        server::Child::Elsewhere => fut.instrument(redis_span(op.summary, op.operation)).await,
    }
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
/// unless spans are exported, `traceparent` is valid and the sampler keeps it.
pub fn record_remote_client_span(
    name: &'static str,
    start: std::time::SystemTime,
    end: std::time::SystemTime,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
    attributes: Vec<opentelemetry::KeyValue>,
) {
    use opentelemetry::trace::TraceContextExt as _;
    let Some(pipeline) = PIPELINE.get().filter(|p| p.exporter.is_some()) else {
        return;
    };
    let parent = extract(traceparent, tracestate);
    let parent = parent.span().span_context().clone();
    if !parent.is_valid() {
        return;
    }
    let trace_id = u128::from_be_bytes(parent.trace_id().to_bytes());
    if !pipeline.sample(Some(&parent), trace_id, name) {
        return;
    }
    let mut record = SpanRecord::new(
        (
            trace_id,
            layer::new_span_id(),
            u64::from_be_bytes(parent.span_id().to_bytes()),
        ),
        parent.trace_state().header(),
        true,
        name.into(),
        SpanKind::Client,
        record::unix_nano(start),
    );
    record.end_unix_nano = record::unix_nano(end);
    record.attributes = attributes
        .into_iter()
        .map(|kv| (kv.key.as_str().to_string().into(), kv.value.into()))
        .collect();
    pipeline.finish(&record);
}

/// Installs a subscriber for tests, once per test binary. Spans get real
/// ids and sampling (the pipeline without an exporter), so trace context is
/// propagated as in a service that exports. Log output goes to the test
/// harness's captured stdout, and only when `TEST_LOG` is set.
pub fn init_for_tests() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        use tracing_subscriber::Layer as _;
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let pipeline = Arc::new(Pipeline {
            sampler: Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            parent_based: true,
            every_root: true,
            exporter: None,
        });
        let _ = PIPELINE.set(pipeline.clone());
        let otel = OtlpLayer { pipeline }.with_filter(Traced);
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
    fn a_root_is_decided_as_the_sdk_sampler_decides_it() {
        use TraceSampler::*;
        use opentelemetry::trace::{SpanKind, TraceId};
        use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample as _};
        use propagation::Roots;
        let root = opentelemetry::Context::new();
        for s in [
            AlwaysOn,
            AlwaysOff,
            ParentBasedAlwaysOn,
            ParentBasedAlwaysOff,
            TraceIdRatio(0.0),
            TraceIdRatio(0.1),
            ParentBasedTraceIdRatio(0.1),
            ParentBasedTraceIdRatio(0.5),
            ParentBasedTraceIdRatio(0.999),
            ParentBasedTraceIdRatio(1.0),
        ] {
            let (sdk, ours) = (sdk_sampler(s), Roots::of(s));
            let mut kept = 0;
            for _ in 0..2_000 {
                let id = layer::new_trace_id();
                let theirs = sdk
                    .should_sample(
                        Some(&root),
                        TraceId::from(id),
                        "http",
                        &SpanKind::Server,
                        &[],
                        &[],
                    )
                    .decision
                    == SamplingDecision::RecordAndSample;
                assert_eq!(ours.keep(id), theirs, "{s:?}, trace {id:032x}");
                kept += usize::from(theirs);
            }
            if let ParentBasedTraceIdRatio(0.5) = s {
                assert!((800..1_200).contains(&kept), "about half: {kept}");
            }
        }
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
    fn only_a_sampler_that_keeps_every_root_skips_asking() {
        use TraceSampler::*;
        use propagation::Roots;
        let keeps_every_root = |s| Roots::of(s) == Roots::All;
        assert!(keeps_every_root(AlwaysOn) && keeps_every_root(ParentBasedAlwaysOn));
        for s in [
            AlwaysOff,
            ParentBasedAlwaysOff,
            TraceIdRatio(0.0),
            ParentBasedTraceIdRatio(0.5),
        ] {
            assert!(!keeps_every_root(s), "{s:?}");
        }
        // Without the shortcut, the sampler decides a root.
        let pipeline = |every_root| Pipeline {
            sampler: sdk_sampler(ParentBasedTraceIdRatio(0.0)),
            parent_based: true,
            every_root,
            exporter: None,
        };
        assert!(!pipeline(false).sample(None, 7, "job"));
        assert!(pipeline(true).sample(None, 7, "job"));
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
        let sc = cx.span().span_context().clone();
        let (trace, span) = (
            u128::from_be_bytes(sc.trace_id().to_bytes()),
            u64::from_be_bytes(sc.span_id().to_bytes()),
        );
        assert_eq!(record::traceparent(trace, span, 1), tp);
        assert_eq!(
            UntracedContext::new(trace, span, "").traceparent(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
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
