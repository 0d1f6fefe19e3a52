//! W3C trace context across processes: reading a `traceparent` into a
//! parent context, writing the current one out (into a queued job, a stream
//! entry, an HTTP request), the head-sampling decision for an incoming
//! request, and links to traces a batch serves.

use std::cell::Cell;
use std::num::NonZeroU64;

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
    if let Some(w3c) = super::scope::with(&UNTRACED, |context| {
        (
            context.traceparent(),
            context.trace_state().map(str::to_string),
        )
    }) {
        return Some(w3c);
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

/// The span context of a request head sampling dropped
/// ([`HeadDecision::Untraced`]): its trace, a span id of its own, not
/// sampled, and the `tracestate` its client sent, which is what it passes
/// on ([`current_trace_context`]).
///
/// Not opentelemetry's `SpanContext`: [`run_untraced`] moves this into a
/// thread-local and back on every poll of the request, and moving that one
/// (with its `TraceState`, and the drop checks an `Option` of it needs) cost
/// about 240 more instructions per unsampled cache hit (callgrind: 903 over
/// export off, 663 with this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UntracedContext {
    pub(crate) trace_id: u128,
    /// Never 0, so that an `Option` of this needs no flag of its own.
    span_id: NonZeroU64,
    /// `None` when empty, as for every request without a `traceparent`.
    pub(crate) trace_state: Option<Box<str>>,
}

impl UntracedContext {
    /// The context of span `span_id` (0, which no generator gives in
    /// practice, is taken as 1) in trace `trace_id`, with `trace_state`
    /// (a `tracestate` header; empty for none).
    pub(crate) fn new(trace_id: u128, span_id: u64, trace_state: &str) -> Self {
        Self {
            trace_id,
            span_id: NonZeroU64::new(span_id).unwrap_or(NonZeroU64::MIN),
            trace_state: (!trace_state.is_empty()).then(|| trace_state.into()),
        }
    }

    pub(crate) fn span_id(&self) -> u64 {
        self.span_id.get()
    }

    /// Its W3C `traceparent`, flagged not sampled.
    pub fn traceparent(&self) -> String {
        super::record::traceparent(self.trace_id, self.span_id(), 0)
    }

    /// The `tracestate` it carries on, if any.
    pub fn trace_state(&self) -> Option<&str> {
        self.trace_state.as_deref()
    }
}

thread_local! {
    /// Set while a request that head sampling dropped is polled
    /// ([`run_untraced`]): its context, which [`current_trace_context`]
    /// passes on.
    static UNTRACED: Cell<Option<UntracedContext>> = const { Cell::new(None) };
}

pub(crate) fn untraced() -> bool {
    super::scope::with(&UNTRACED, |_| ()).is_some()
}

/// The context of the request head sampling dropped that runs now, if any.
pub(crate) fn untraced_context() -> Option<UntracedContext> {
    super::scope::with(&UNTRACED, |context| context.clone())
}

/// What head sampling decided for an incoming request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadDecision {
    /// Trace it: create its spans as usual (also when head sampling is off).
    Traced,
    /// Do not: run it through [`run_untraced`] with this context.
    Untraced(UntracedContext),
}

/// Decides with the configured sampler whether a request whose client sent
/// `traceparent` (and `tracestate`), or none, is traced. Always
/// [`HeadDecision::Traced`] unless the service was set up with
/// [`super::init_head_sampled`] and exports spans.
pub fn head_decision(traceparent: Option<&str>, tracestate: Option<&str>) -> HeadDecision {
    use opentelemetry::trace::{SpanKind, TraceContextExt as _};
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
        SamplingDecision::Drop => HeadDecision::Untraced(UntracedContext::new(
            u128::from_be_bytes(trace_id.to_bytes()),
            super::layer::new_span_id(),
            &parent_sc.trace_state().header(),
        )),
    }
}

/// [`head_decision`] for a request without a `traceparent`, made without
/// asking the sampler ([`Roots`]).
fn root_decision(roots: Roots) -> HeadDecision {
    if roots == Roots::All {
        return HeadDecision::Traced;
    }
    let trace_id = super::layer::new_trace_id();
    if roots.keep(trace_id) {
        return HeadDecision::Traced;
    }
    HeadDecision::Untraced(UntracedContext::new(
        trace_id,
        super::layer::new_span_id(),
        "",
    ))
}

/// Runs `fut` as a request head sampling dropped: the span helpers create
/// no span inside it, and [`current_trace_context`] gives `context`. The
/// future itself, not wrapped in another: a caller can hold it unboxed.
/// Once done, [`Scoped::take_value`] gives `context` back.
pub fn run_untraced<F: std::future::Future>(
    context: UntracedContext,
    fut: F,
) -> Scoped<UntracedContext, F> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: u128 = 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736;

    #[tokio::test]
    async fn a_dropped_request_passes_its_trace_on_not_sampled_with_its_tracestate() {
        let context = UntracedContext::new(TRACE, 0x00f0_67aa_0ba9_02b7, "vendor=x");
        let mut request = std::pin::pin!(run_untraced(context, async {
            tokio::task::yield_now().await;
            (untraced(), current_trace_context())
        }));
        let inside = request.as_mut().await;
        let context = request.take_value().expect("given back once done");
        assert_eq!(
            inside,
            (
                true,
                Some((
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00".to_string(),
                    Some("vendor=x".to_string())
                ))
            ),
            "across polls"
        );
        assert_eq!(context.trace_state(), Some("vendor=x"), "given back");
        assert!(!untraced(), "only while its request is polled");
    }

    #[test]
    fn an_untraced_context_without_a_tracestate_carries_none_and_a_span_id_is_never_0() {
        let root = UntracedContext::new(TRACE, 0, "");
        assert_eq!(root.trace_state(), None);
        assert_eq!(
            root.traceparent(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000001-00"
        );
        assert_eq!(
            size_of::<Option<UntracedContext>>(),
            size_of::<UntracedContext>(),
            "an absent context takes no flag of its own"
        );
    }
}
