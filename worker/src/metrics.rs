//! The worker's Prometheus series (served by [`crate::ops`]).
//!
//! - `jobs_started_total{job_type}`, and `jobs_finished_total{job_type, outcome}` with
//!   outcome `succeeded`, `failed`, `retried`, `skipped`, `deferred` or `cancelled`.
//! - `job_duration_seconds{job_type}`: handler run time, a histogram.
//! - `worker_busy_slots`: handlers running now; `worker_leases_held`: jobs leased by this process.
//! - `rate_limit_deferrals_total{queue}`: jobs put back for being over their type's rate limit.
//! - `jobs_time_limited_total{job_type, limit}`: soft and hard time limits reached;
//!   `jobs_revoked_total{job_type}`: running jobs cancelled by a revoke.
//! - `queue_depth{queue, state}`: `pending`, `delayed`, `running`, `dead`
//!   of every queue, sampled at scrape.
//!
//! The job's name is the label `job_type`, not `job`: Prometheus gives every
//! scraped series its own `job` label (the scrape job) and would rename ours
//! to `exported_job`.

/// Counts a handler start.
pub(crate) fn record_start(job: &str) {
    metrics::counter!("jobs_started_total", "job_type" => job.to_string()).increment(1);
}

/// Counts an outcome.
pub(crate) fn record_outcome(job: &str, outcome: &'static str) {
    metrics::counter!("jobs_finished_total", "job_type" => job.to_string(), "outcome" => outcome)
        .increment(1);
}

/// Counts jobs a fetch put back for being over their type's rate limit.
pub(crate) fn record_rate_limited(queue: &str, n: u64) {
    metrics::counter!("rate_limit_deferrals_total", "queue" => queue.to_string()).increment(n);
}

/// Counts a time limit reached (`soft` or `hard`).
pub(crate) fn record_time_limited(job: &str, limit: &'static str) {
    metrics::counter!("jobs_time_limited_total", "job_type" => job.to_string(), "limit" => limit)
        .increment(1);
}

/// Counts what a scheduler pass did with a schedule's tick: `enqueued`
/// (by this worker), `taken` (another worker had) or `skipped` (missed).
pub(crate) fn record_schedule_tick(schedule: &str, outcome: &'static str) {
    metrics::counter!("schedule_ticks_total", "schedule" => schedule.to_string(), "outcome" => outcome)
        .increment(1);
}

/// Counts a job cancelled by a revoke.
pub(crate) fn record_revoked(job: &str) {
    metrics::counter!("jobs_revoked_total", "job_type" => job.to_string()).increment(1);
}

/// Records a handler's run time.
pub(crate) fn record_duration(job: &str, seconds: f64) {
    metrics::histogram!("job_duration_seconds", "job_type" => job.to_string()).record(seconds);
}

/// Tracks the busy-slots gauge for the lifetime of the guard.
pub(crate) struct BusySlot;

impl BusySlot {
    /// Marks a slot busy.
    pub(crate) fn take() -> Self {
        metrics::gauge!("worker_busy_slots").increment(1.0);
        BusySlot
    }
}

impl Drop for BusySlot {
    fn drop(&mut self) {
        metrics::gauge!("worker_busy_slots").decrement(1.0);
    }
}

/// Describes the worker's series to the process-wide recorder.
pub(crate) fn describe() {
    metrics::describe_counter!("jobs_started_total", "Job attempts started, by job type");
    metrics::describe_counter!(
        "jobs_finished_total",
        "Job attempts finished, by job type and outcome"
    );
    metrics::describe_histogram!(
        "job_duration_seconds",
        metrics::Unit::Seconds,
        "Handler run time"
    );
    metrics::describe_gauge!("worker_busy_slots", "Handlers running now");
    metrics::describe_counter!(
        "jobs_time_limited_total",
        "Soft and hard time limits reached, by job type"
    );
    metrics::describe_counter!("jobs_revoked_total", "Running jobs cancelled by a revoke");
    metrics::describe_counter!(
        "rate_limit_deferrals_total",
        "Jobs a fetch put back as scheduled, over their type's global rate limit"
    );
    metrics::describe_gauge!("worker_leases_held", "Jobs leased by this process");
    metrics::describe_gauge!(
        "queue_depth",
        "Jobs in each queue by state, sampled at scrape"
    );
}
