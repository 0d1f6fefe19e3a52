//! Tracing a batch: the consumer span its jobs are queued under.
//!
//! A batch gathers events from many traces; the OpenTelemetry messaging
//! conventions for batch processing say how to keep each of those traces
//! connected to the batch that handled it. That bookkeeping is apart from
//! what the batch does, so it lives here.

use shared::events::MarketEvent;

use super::Bridge;

/// Most other events a batch span links to (and gives a `receive` span).
pub const MAX_BATCH_LINKS: usize = 128;

impl Bridge {
    /// The consumer span of a batch, in the messaging conventions for batch
    /// processing: a child of the first event's publish span (so a lone
    /// event, the common case, is one connected trace down to the worker),
    /// linked to the publish span of every other event. Each of those others
    /// also gets a short `receive` span in its own trace, linked back to the
    /// batch span, so its trace shows that a listener took it.
    pub(crate) fn batch_span<'a>(
        &self,
        events: impl Iterator<Item = &'a MarketEvent>,
    ) -> tracing::Span {
        let events: Vec<&MarketEvent> = events.collect();
        let span = tracing::debug_span!(
            "market_events process",
            otel.name = %format_args!("process {}", self.stream),
            otel.kind = "consumer",
            messaging.system = "redis",
            messaging.destination.name = %self.stream,
            messaging.operation = "process",
            "messaging.operation.type" = "process",
            messaging.batch.message_count = events.len(),
            messaging.message.id = %events[0].event_id,
        );
        if span.is_disabled() {
            return span;
        }
        shared::telemetry::set_remote_parent(
            &span,
            events[0].traceparent.as_deref(),
            events[0].tracestate.as_deref(),
        );
        let batch = span.in_scope(shared::telemetry::current_trace_context);
        for event in events.iter().skip(1).take(MAX_BATCH_LINKS) {
            shared::telemetry::add_remote_link(
                &span,
                event.traceparent.as_deref(),
                event.tracestate.as_deref(),
            );
            let receive = tracing::debug_span!(
                "market_event receive",
                otel.name = %format_args!("receive {}", self.stream),
                otel.kind = "consumer",
                messaging.system = "redis",
                messaging.destination.name = %self.stream,
                messaging.operation = "receive",
                "messaging.operation.type" = "receive",
                messaging.message.id = %event.event_id,
            );
            shared::telemetry::set_remote_parent(
                &receive,
                event.traceparent.as_deref(),
                event.tracestate.as_deref(),
            );
            if let Some((parent, state)) = &batch {
                shared::telemetry::add_remote_link(&receive, Some(parent), state.as_deref());
            }
        }
        span
    }
}
