//! What a worker sees of a job: its [`JobState`], how a handler ends
//! ([`JobOutcome`], [`JobError`]), and the two built-in job types, [`Noop`]
//! and [`Sleep`]. The wire contract itself ([`NewJob`], [`JobSpec`]) lives in
//! `shared::jobs`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::*;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for a worker.
    Pending,
    /// Waiting for its `run_at` time.
    Scheduled,
    /// A worker holds its lease and runs it.
    Running,
    /// Failed with a retryable error; waits for its next attempt.
    Retrying,
    /// Finished successfully.
    Succeeded,
    /// Failed for good (permanent error, or attempts exhausted); in the dead set.
    Failed,
    /// Finished without doing its work on purpose (e.g. another run held the lock).
    Skipped,
    /// Cancelled: before it started, or revoked while it ran.
    Cancelled,
}

/// A no-op job, for health checks and benchmarks.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Noop {}

impl JobSpec for Noop {
    const NAME: &'static str = "noop";
    const RETRY: RetryPolicy = RetryPolicy {
        max_attempts: 1,
        backoff: Backoff {
            base_ms: 1_000,
            factor: 2.0,
            cap_ms: 60_000,
            jitter: 0.2,
        },
    };
}

/// A job that sleeps, for operating drills and tests of leases and shutdown.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sleep {
    /// How long to sleep.
    pub millis: u64,
}

impl JobSpec for Sleep {
    const NAME: &'static str = "sleep";
    const RETRY: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        backoff: Backoff {
            base_ms: 1_000,
            factor: 2.0,
            cap_ms: 60_000,
            jitter: 0.2,
        },
    };
}

/// How a job handler failed: the worker retries a [`JobError::Retryable`]
/// failure with the job's backoff until its attempts run out, and buries a
/// [`JobError::Permanent`] one at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// A transient failure (timeout, connection refused, 5xx): try again later.
    #[error("{0}")]
    Retryable(String),
    /// Retrying cannot help (bad input, 4xx, unknown job type).
    #[error("{0}")]
    Permanent(String),
}

impl JobError {
    /// A retryable error from anything displayable.
    pub fn retryable(e: impl std::fmt::Display) -> Self {
        JobError::Retryable(e.to_string())
    }

    /// A permanent error from anything displayable.
    pub fn permanent(e: impl std::fmt::Display) -> Self {
        JobError::Permanent(e.to_string())
    }
}

/// What a successful handler reports.
#[derive(Debug, Clone, PartialEq)]
pub struct JobOutcome {
    /// `Succeeded`; `Skipped` when the job deliberately did nothing;
    /// `Scheduled` when it asks to run again later (see [`JobOutcome::deferred`]).
    pub state: JobState,
    /// The result kept with the job's status (while deferred: a note on why).
    pub result: serde_json::Value,
    /// For a deferred job: how long until it runs again.
    pub defer_for: Option<Duration>,
}

impl JobOutcome {
    /// Success with a result.
    pub fn succeeded(result: serde_json::Value) -> Self {
        Self {
            state: JobState::Succeeded,
            result,
            defer_for: None,
        }
    }

    /// A deliberate skip with a result explaining it.
    pub fn skipped(result: serde_json::Value) -> Self {
        Self {
            state: JobState::Skipped,
            result,
            defer_for: None,
        }
    }

    /// Cancelled on request (a revoke) while it ran.
    pub fn cancelled(reason: &str) -> Self {
        Self {
            state: JobState::Cancelled,
            result: serde_json::json!({"status": "cancelled", "reason": reason}),
            defer_for: None,
        }
    }

    /// Not now: run the job again after `delay`, without spending an attempt
    /// (it was not a failure) and holding its unique key again, so pushes of
    /// the same key keep joining it. `note` shows as its result meanwhile.
    /// See [`Queue::defer`].
    pub fn deferred(delay: Duration, note: serde_json::Value) -> Self {
        Self {
            state: JobState::Scheduled,
            result: note,
            defer_for: Some(delay),
        }
    }
}
