//! The listener's Prometheus series, served on `/metrics`:
//!
//! - `listener_events_received_total{kind, path}`: events processed, by kind
//!   and by the path they came in on (`stream`: appended by the api or a
//!   publisher; `pubsub`: published on the channel only).
//! - `listener_events_rejected_total{reason}`: messages refused
//!   (`malformed_json`, `unknown_kind`, `invalid_field`, `too_many_products`,
//!   `too_large`, `unknown_product`), each also logged and dead-lettered.
//! - `listener_jobs_enqueued_total{job_type}`: jobs queued (`job_type`, not
//!   `job`, which Prometheus reserves for the scrape job).
//! - `listener_events_coalesced_total`: events that did not need a job of
//!   their own (covered by a job queued for their batch).
//! - `listener_events_duplicate_total`: events skipped as already processed.
//! - `listener_publish_to_enqueue_seconds`: histogram of the time from the
//!   event's append to the stream (Redis clock) to its job being queued.

/// Describes the series (call once at startup).
pub(crate) fn describe() {
    metrics::describe_counter!(
        "listener_events_received_total",
        "Market events processed, by kind and by path (stream or pubsub)"
    );
    metrics::describe_counter!(
        "listener_events_rejected_total",
        "Market event messages refused, by reason"
    );
    metrics::describe_counter!("listener_jobs_enqueued_total", "Jobs queued, by job type");
    metrics::describe_counter!(
        "listener_events_coalesced_total",
        "Events covered by a job queued for their batch"
    );
    metrics::describe_counter!(
        "listener_events_duplicate_total",
        "Events skipped because they were already processed"
    );
    metrics::describe_histogram!(
        "listener_publish_to_enqueue_seconds",
        metrics::Unit::Seconds,
        "Time from an event's append to the stream to its job being queued"
    );
}

/// Every rejection reason, so each series exists (at 0) from the start and
/// dashboards and alerts see a rate of 0 rather than no data.
pub(crate) const REJECT_REASONS: &[&str] = &[
    "malformed_json",
    "unknown_kind",
    "invalid_field",
    "too_many_products",
    "too_large",
    "unknown_product",
];

/// Registers the counters that would otherwise appear only on their first event.
pub(crate) fn register_zeroes() {
    for reason in REJECT_REASONS {
        metrics::counter!("listener_events_rejected_total", "reason" => *reason).increment(0);
    }
    metrics::counter!("listener_events_coalesced_total").increment(0);
    metrics::counter!("listener_events_duplicate_total").increment(0);
}

/// Counts a processed event.
pub(crate) fn received(kind: &'static str, path: &'static str) {
    metrics::counter!("listener_events_received_total", "kind" => kind, "path" => path)
        .increment(1);
}

/// Counts a refused message.
pub(crate) fn rejected(reason: &'static str) {
    metrics::counter!("listener_events_rejected_total", "reason" => reason).increment(1);
}

/// Counts a queued job.
pub(crate) fn enqueued(job: &str) {
    metrics::counter!("listener_jobs_enqueued_total", "job_type" => job.to_string()).increment(1);
}

/// Counts events covered by another event's job.
pub(crate) fn coalesced(n: u64) {
    metrics::counter!("listener_events_coalesced_total").increment(n);
}

/// Counts events skipped as already processed.
pub(crate) fn duplicates(n: u64) {
    metrics::counter!("listener_events_duplicate_total").increment(n);
}

/// Records one event's publish-to-enqueue time.
pub(crate) fn lag(seconds: f64) {
    metrics::histogram!("listener_publish_to_enqueue_seconds").record(seconds);
}
