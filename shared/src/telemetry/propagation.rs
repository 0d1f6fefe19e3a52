//! W3C trace context across processes: reading a `traceparent` into a
//! parent context, writing the current one out (into a queued job, a stream
//! entry, an HTTP request), the head-sampling decision for an incoming
//! request, and links to traces a batch serves.

use std::cell::Cell;

use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::Sampler;

use super::scope::Scoped;
use crate::config::TraceSampler;

/// The W3C propagator, used directly: the global one sits behind a lock
/// that every request would take twice.
pub(crate) static PROPAGATOR: std::sync::LazyLock<TraceContextPropagator> =
    std::sync::LazyLock::new(TraceContextPropagator::new);

/// A `traceparent` / `tracestate` pair, as the propagator reads and writes it.
#[derive(Default)]
pub(crate) struct W3c {
    pub(crate) traceparent: Option<String>,
    pub(crate) tracestate: Option<String>,
}

impl opentelemetry::propagation::Injector for W3c {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "traceparent" => self.traceparent = Some(value),
            "tracestate" => self.tracestate = Some(value).filter(|s| !s.is_empty()),
            _ => {}
        }
    }
}

impl opentelemetry::propagation::Extractor for W3c {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.traceparent.as_deref(),
            "tracestate" => self.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

pub(crate) fn extract(
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) -> opentelemetry::Context {
    use opentelemetry::propagation::TextMapPropagator as _;
    PROPAGATOR.extract(&W3c {
        traceparent: traceparent.map(str::to_string),
        tracestate: tracestate.map(str::to_string),
    })
}

/// The W3C trace context (`traceparent`, `tracestate`) of the current span,
/// for carrying it across Redis or HTTP. `None` when the span is not traced
/// (no OpenTelemetry layer installed, e.g. export off).
pub fn current_trace_context() -> Option<(String, Option<String>)> {
    // A request dropped by head sampling passes its "not sampled" decision
    // on, so the listener and the worker drop its trace too.
    if let Some(w3c) = super::scope::with(&UNTRACED, |sc| {
        let state = sc.trace_state().header();
        traceparent_of(sc).map(|traceparent| (traceparent, Some(state).filter(|s| !s.is_empty())))
    }) {
        return w3c;
    }
    trace_context_of(&tracing::Span::current())
        // No `tracing` span: the request's server span, if one runs.
        .or_else(|| super::server::with_current(|r| r.w3c()))
}

/// The W3C `traceparent` (and `tracestate`) of `span` itself, read without
/// entering it; `None` for a span the layer does not record.
pub fn trace_context_of(span: &tracing::Span) -> Option<(String, Option<String>)> {
    super::layer::with_record(span, |r| r.w3c())
}

/// Makes `span` a child of the remote span described by `traceparent` (and
/// `tracestate`), taking its trace id and, under a parent-based sampler, its
/// sampling decision. A missing or malformed `traceparent` leaves it a root.
/// Call it before the span has children.
pub fn set_remote_parent(
    span: &tracing::Span,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) {
    use opentelemetry::trace::TraceContextExt as _;
    if traceparent.is_none() || span.is_disabled() {
        return;
    }
    let cx = extract(traceparent, tracestate);
    let parent = cx.span().span_context().clone();
    if !parent.is_valid() {
        return;
    }
    let Some(pipeline) = super::PIPELINE.get() else {
        return;
    };
    let trace_id = u128::from_be_bytes(parent.trace_id().to_bytes());
    super::layer::with_record(span, |r| {
        r.sampled = pipeline.sample(Some(&parent), trace_id, &r.name);
        r.trace_id = trace_id;
        r.parent_span_id = u64::from_be_bytes(parent.span_id().to_bytes());
        r.trace_state = parent.trace_state().header();
    });
}

/// The configured sampler of a head-sampled service ([`super::init_head_sampled`]).
pub(crate) static HEAD_SAMPLER: std::sync::OnceLock<HeadSampler> = std::sync::OnceLock::new();

/// A head-sampled service's sampler, and how it decides for a root (a
/// request without a parent), which is decided here without asking it:
/// asking built ids, a context and a sampling result for each request and
/// dropped them (the decision was 391 of the 941 instructions an unsampled
/// request added, callgrind).
pub(crate) struct HeadSampler {
    pub(crate) sampler: Sampler,
    pub(crate) roots: Roots,
}

/// How a sampler decides for a root span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Roots {
    /// Every one is traced (`always_on`, `parentbased_always_on`).
    All,
    /// None is (`always_off`, `parentbased_always_off`).
    None,
    /// Those whose trace id's low 64 bits, shifted right by one, are below
    /// this bound: the SDK's `TraceIdRatioBased` rule, so that a trace id
    /// gets the same decision here as from the SDK's sampler.
    Ratio(u64),
}

impl Roots {
    /// How `sampler` decides for roots.
    pub(crate) fn of(sampler: TraceSampler) -> Self {
        match sampler {
            TraceSampler::AlwaysOn | TraceSampler::ParentBasedAlwaysOn => Self::All,
            TraceSampler::AlwaysOff | TraceSampler::ParentBasedAlwaysOff => Self::None,
            TraceSampler::TraceIdRatio(r) | TraceSampler::ParentBasedTraceIdRatio(r) => {
                if r >= 1.0 {
                    Self::All
                } else {
                    // As the SDK computes it (`sample_based_on_probability`).
                    Self::Ratio((r.max(0.0) * (1u64 << 63) as f64) as u64)
                }
            }
        }
    }

    /// Whether a root of trace `trace_id` is traced.
    pub(crate) fn keep(self, trace_id: u128) -> bool {
        match self {
            Self::All => true,
            Self::None => false,
            // Its low 64 bits.
            Self::Ratio(bound) => (trace_id as u64) >> 1 < bound,
        }
    }
}

thread_local! {
    /// Set while a request that head sampling dropped is polled
    /// ([`run_untraced`]): its span context, not sampled, which
    /// [`current_trace_context`] passes on.
    static UNTRACED: Cell<Option<opentelemetry::trace::SpanContext>> = const { Cell::new(None) };
}

pub(crate) fn untraced() -> bool {
    super::scope::with(&UNTRACED, |_| ()).is_some()
}

/// The span context of the request head sampling dropped that runs now, if any.
pub(crate) fn untraced_context() -> Option<opentelemetry::trace::SpanContext> {
    super::scope::with(&UNTRACED, |context| context.clone())
}

/// What head sampling decided for an incoming request.
#[derive(Debug, Clone, PartialEq)]
pub enum HeadDecision {
    /// Trace it: create its spans as usual (also when head sampling is off).
    Traced,
    /// Do not: run it through [`run_untraced`] with this span context
    /// (its trace id, a span id of its own, not sampled).
    Untraced(opentelemetry::trace::SpanContext),
}

/// Decides with the configured sampler whether a request whose client sent
/// `traceparent` (and `tracestate`), or none, is traced. Always
/// [`HeadDecision::Traced`] unless the service was set up with
/// [`super::init_head_sampled`] and exports spans.
pub fn head_decision(traceparent: Option<&str>, tracestate: Option<&str>) -> HeadDecision {
    use opentelemetry::trace::{SpanContext, SpanKind, TraceContextExt as _, TraceFlags};
    use opentelemetry_sdk::trace::{
        IdGenerator as _, RandomIdGenerator, SamplingDecision, ShouldSample as _,
    };
    let Some(head) = HEAD_SAMPLER.get() else {
        return HeadDecision::Traced;
    };
    if traceparent.is_none() {
        return root_decision(head.roots);
    }
    let sampler = &head.sampler;
    let ids = RandomIdGenerator::default();
    let parent = extract(traceparent, tracestate);
    let parent_sc = parent.span().span_context().clone();
    let trace_id = if parent_sc.is_valid() {
        parent_sc.trace_id()
    } else {
        ids.new_trace_id()
    };
    let result =
        sampler.should_sample(Some(&parent), trace_id, "http", &SpanKind::Server, &[], &[]);
    match result.decision {
        SamplingDecision::RecordAndSample | SamplingDecision::RecordOnly => HeadDecision::Traced,
        SamplingDecision::Drop => HeadDecision::Untraced(SpanContext::new(
            trace_id,
            ids.new_span_id(),
            TraceFlags::default(),
            false,
            parent_sc.trace_state().clone(),
        )),
    }
}

/// [`head_decision`] for a request without a `traceparent`, made without
/// asking the sampler ([`Roots`]).
fn root_decision(roots: Roots) -> HeadDecision {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    if roots == Roots::All {
        return HeadDecision::Traced;
    }
    let trace_id = super::layer::new_trace_id();
    if roots.keep(trace_id) {
        return HeadDecision::Traced;
    }
    HeadDecision::Untraced(SpanContext::new(
        TraceId::from(trace_id),
        SpanId::from(super::layer::new_span_id()),
        TraceFlags::default(),
        false,
        TraceState::default(),
    ))
}

/// The W3C `traceparent` of `context` (`00-{trace id}-{span id}-{flags}`),
/// or `None` for an invalid one.
pub fn traceparent_of(context: &opentelemetry::trace::SpanContext) -> Option<String> {
    context.is_valid().then(|| {
        super::record::traceparent(
            u128::from_be_bytes(context.trace_id().to_bytes()),
            u64::from_be_bytes(context.span_id().to_bytes()),
            context.trace_flags().to_u8(),
        )
    })
}

/// Runs `fut` as a request head sampling dropped: the span helpers create
/// no span inside it, and [`current_trace_context`] gives `context`. The
/// future itself, not wrapped in another: a caller can hold it unboxed.
/// It gives `context` back with `fut`'s output.
pub fn run_untraced<F: std::future::Future>(
    context: opentelemetry::trace::SpanContext,
    fut: F,
) -> Scoped<opentelemetry::trace::SpanContext, F> {
    Scoped::new(&UNTRACED, context, fut)
}

/// Links `span` to the remote span `traceparent`, for a span that works for
/// several traces at once (a batch of events) but has only one parent.
pub fn add_remote_link(span: &tracing::Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    use opentelemetry::trace::TraceContextExt as _;
    if traceparent.is_none() || span.is_disabled() {
        return;
    }
    let cx = extract(traceparent, tracestate);
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        super::layer::with_record(span, |r| {
            if r.sampled {
                r.links.push(super::record::Link {
                    trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
                    span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
                    trace_state: sc.trace_state().header(),
                });
            }
        });
    }
}
