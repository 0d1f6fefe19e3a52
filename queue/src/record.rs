//! A job as stored and as reported: the fixed description (JSON in `jobs`)
//! and the tab-separated `live` fields (see `scripts`), decoded into a
//! [`JobRecord`]; a [`JobStatus`] adds the result and arguments.

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::error::corrupt;
use crate::*;

/// A job as the status API reports it, assembled from its stored parts.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    /// Job type, e.g. `recalculate_all_prices`.
    pub name: String,
    /// Current state.
    pub state: JobState,
    /// Times a worker started it.
    pub attempts: u32,
    /// Most attempts before a retryable failure becomes final.
    pub max_attempts: u32,
    /// When it was pushed (ms since the epoch, Redis clock).
    pub enqueued_at: Option<i64>,
    /// When it is due, for scheduled jobs and waiting retries (ms).
    pub run_at: Option<i64>,
    /// When the latest attempt started (ms).
    pub started_at: Option<i64>,
    /// When it reached a final state (ms).
    pub finished_at: Option<i64>,
    /// The worker that ran the latest attempt.
    pub worker: Option<String>,
    /// Lease token of the running attempt; only its holder may finish it.
    pub token: Option<String>,
    /// The latest error.
    pub error: Option<String>,
    /// The unique key it was pushed with.
    pub unique_key: Option<String>,
    /// Times its worker was lost while running it.
    pub leases_lost: u32,
    /// Retry backoff of this job.
    pub backoff: Backoff,
    /// W3C trace context of the span that pushed it.
    pub traceparent: Option<String>,
    /// W3C trace state that goes with `traceparent`.
    pub tracestate: Option<String>,
    /// The schedule that queued it, if one did.
    pub schedule: Option<String>,
    /// The schedule's tick it runs for (ms since the epoch).
    pub tick: Option<i64>,
}

/// Converts a Redis-clock millisecond timestamp to a `DateTime`.
pub fn ms_to_datetime(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

/// A job's record together with its result, for the status API.
#[derive(Debug, Clone)]
pub struct JobStatus {
    /// The id.
    pub id: String,
    /// The record.
    pub record: JobRecord,
    /// The result, for finished jobs (JSON).
    pub result: Option<serde_json::Value>,
    /// The arguments (JSON), while the job may still run: they are dropped
    /// when it succeeds, is skipped or is cancelled; dead jobs keep them.
    pub args: Option<serde_json::Value>,
}

/// The part of a job that never changes, stored as JSON in `jobs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Description {
    pub(crate) name: String,
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) unique_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tracestate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) schedule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tick: Option<i64>,
}

/// Builds a record from its stored parts: the JSON description, the
/// tab-separated live fields (see [`scripts`]) and the latest error.
pub(crate) fn decode_record(
    id: &str,
    description: &str,
    live: &str,
    error: Option<String>,
) -> Result<JobRecord, QueueError> {
    let d: Description = serde_json::from_str(description).map_err(|e| corrupt(id, e))?;
    let f: Vec<&str> = live.split('\t').collect();
    if f.len() != 9 && f.len() != 10 {
        return Err(corrupt(id, format!("{} live fields, expected 10", f.len())));
    }
    let num = |s: &str| s.parse::<f64>().ok().map(|v| v as i64);
    let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Ok(JobRecord {
        name: d.name,
        state: parse_state(f[0]),
        attempts: num(f[1]).unwrap_or(0).max(0) as u32,
        max_attempts: d.max_attempts,
        enqueued_at: num(f[2]),
        started_at: num(f[3]),
        finished_at: num(f[4]),
        worker: text(f[5]),
        token: text(f[6]),
        leases_lost: num(f[7]).unwrap_or(0).max(0) as u32,
        run_at: num(f[8]),
        error,
        unique_key: d.unique_key,
        backoff: d.backoff,
        traceparent: d.traceparent,
        tracestate: d.tracestate,
        schedule: d.schedule,
        tick: d.tick,
    })
}

/// A record standing in for one that cannot be read, so that it can be buried.
pub(crate) fn corrupt_stub(token: String) -> JobRecord {
    JobRecord {
        name: String::new(),
        state: JobState::Running,
        attempts: 1,
        max_attempts: 1,
        enqueued_at: None,
        run_at: None,
        started_at: None,
        finished_at: None,
        worker: None,
        token: Some(token),
        error: None,
        unique_key: None,
        leases_lost: 0,
        backoff: Backoff {
            base_ms: 0,
            factor: 1.0,
            cap_ms: 0,
            jitter: 0.0,
        },
        traceparent: None,
        tracestate: None,
        schedule: None,
        tick: None,
    }
}

pub(crate) fn parse_state(s: &str) -> JobState {
    serde_json::from_value(serde_json::Value::String(s.to_string())).unwrap_or(JobState::Failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_built_from_their_stored_parts() {
        let d = r#"{"name":"noop","max_attempts":3,"backoff":{"base_ms":1,"factor":2,"cap_ms":3,"jitter":0}}"#;
        let live = "running\t2\t1763780000000\t1763780000500\t\tw1\tw1:2\t1\t";
        let r = decode_record("x", d, live, None).expect("decodes");
        assert_eq!(
            (r.state, r.attempts, r.leases_lost),
            (JobState::Running, 2, 1)
        );
        assert_eq!(
            (r.enqueued_at, r.started_at, r.finished_at),
            (Some(1_763_780_000_000), Some(1_763_780_000_500), None)
        );
        assert_eq!(
            (r.worker.as_deref(), r.token.as_deref()),
            (Some("w1"), Some("w1:2"))
        );
        assert!(decode_record("x", d, "running\t2", None).is_err());
    }
}
