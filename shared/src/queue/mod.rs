//! The job queue: contracts, settings and the Redis operations behind them.
//!
//! The api and the listener push jobs and read their status with [`Queue`];
//! the worker fetches, acknowledges, retries and buries them through the same
//! type, so producer and consumer can never disagree about a key or a field.
//!
//! # Design
//! One queue is a handful of Redis keys under one hash tag
//! (`{<namespace>:<queue>}`), changed only by the Lua scripts in
//! [`scripts`], each of which moves a bounded batch:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `wait` | list | ids ready to run, oldest at the right |
//! | `delayed` | zset | scheduled jobs and waiting retries, by due time |
//! | `active` | zset | running jobs, by lease deadline |
//! | `dead` | zset | failed jobs, by failure time |
//! | `jobs` | hash | id → the job's fixed description (JSON: name, retry policy, trace context) |
//! | `live` | hash | id → the fields that change (state, attempts, times, worker, lease token), tab-separated |
//! | `args`, `results`, `errors` | hash | id → arguments / result (opaque JSON) / latest error |
//! | `unique`, `uniq_of` | hash | unique key → id of the waiting (pending, scheduled or retrying) job holding it, and back |
//! | `finished` | zset | finished ids, by the time their record expires |
//! | `stats` | hash | counters: started, succeeded, failed, retried, skipped, cancelled |
//! | `paused` | string | present while the queue is paused |
//! | `rate` | hash | job type → its rate limit's theoretical arrival time (GCRA) |
//! | `revoked` | hash | id → when a running job was revoked, until it ends |
//! | `sched` | hash | schedule → its last claimed tick, the job queued for it, who queued it |
//! | `history` | zset | samples of `stats` by time, the last two minutes, while a dashboard looks (see [`browse`]) |
//!
//! A fetch moves jobs from `wait` to `active` under a lease (default 30 s)
//! in the same script that marks them running, so a job leaves the queue
//! only when its handler's outcome is recorded. A worker's heartbeat extends
//! the leases of the jobs it holds; a lease that runs out means its worker
//! is gone, and any worker's reaper puts the job back at the head of `wait`.
//! Retries wait in `delayed`, not in a worker slot. Every timestamp is the
//! Redis server's clock (`TIME`), so clock skew between machines cannot
//! shorten a lease.

pub mod browse;
pub mod limits;
pub mod routing;
pub mod schedule;
pub mod scripts;

pub use browse::{JobPage, Listing, Throughput};
pub use limits::{Rate, TimeLimit};

pub use routing::{BULK_QUEUE, Consume, EVENTS_QUEUE, Queues, Routes};

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, env_in_range};
use crate::redis_pool::RedisPool;
use crate::telemetry::redis_span;
use tracing::Instrument as _;

/// The queue every job type uses unless it says otherwise.
pub const DEFAULT_QUEUE: &str = "default";

/// Most records one maintenance script handles per call.
pub const MAINTENANCE_BATCH: usize = 500;

/// Queue timing and retention, shared by producers and workers.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// `JOB_LEASE_SECS`: how long a fetched job stays reserved without a
    /// heartbeat. A killed worker's jobs run again after it. Defaults to 30.
    pub lease: Duration,
    /// `JOB_HEARTBEAT_SECS`: how often a worker extends its leases; must be
    /// well under the lease. Defaults to a third of the lease.
    pub heartbeat: Duration,
    /// `JOB_RESULT_RETENTION_SECS`: how long finished records and results
    /// stay readable. Defaults to 86,400 (24 h).
    pub result_retention: Duration,
    /// `JOB_DEAD_RETENTION_SECS`: how long failed jobs stay in the dead set.
    /// Defaults to 604,800 (7 days).
    pub dead_retention: Duration,
    /// `JOB_MAX_LEASE_LOSSES`: after this many lost leases (workers dying
    /// while running it) a job is buried instead of run again. Defaults to 5.
    pub max_lease_losses: u32,
    /// `RATE_LIMIT_<JOB_TYPE>`: global start rates per job type (see
    /// [`limits`]); the fetch enforces them.
    pub rate_limits: std::collections::BTreeMap<String, Rate>,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(10),
            result_retention: Duration::from_secs(86_400),
            dead_retention: Duration::from_secs(7 * 86_400),
            max_lease_losses: 5,
            rate_limits: Default::default(),
        }
    }
}

impl QueueSettings {
    /// Reads the `JOB_*` variables.
    pub fn from_env() -> Result<Self, ConfigError> {
        let lease = env_in_range("JOB_LEASE_SECS", 30u64, 1, 86_400)?;
        let heartbeat = env_in_range("JOB_HEARTBEAT_SECS", (lease / 3).max(1), 1, 86_400)?;
        if heartbeat >= lease {
            return Err(ConfigError::new(
                "JOB_HEARTBEAT_SECS",
                heartbeat.to_string(),
                format!("must be shorter than JOB_LEASE_SECS ({lease})"),
            ));
        }
        Ok(Self {
            lease: Duration::from_secs(lease),
            heartbeat: Duration::from_secs(heartbeat),
            result_retention: Duration::from_secs(env_in_range(
                "JOB_RESULT_RETENTION_SECS",
                86_400u64,
                1,
                365 * 86_400,
            )?),
            dead_retention: Duration::from_secs(env_in_range(
                "JOB_DEAD_RETENTION_SECS",
                7 * 86_400u64,
                1,
                365 * 86_400,
            )?),
            max_lease_losses: env_in_range("JOB_MAX_LEASE_LOSSES", 5u32, 1, 1_000)?,
            rate_limits: limits::rate_limits_from_env()?,
        })
    }
}

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

/// Exponential backoff with jitter between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Backoff {
    /// Delay before the second attempt, in ms.
    pub base_ms: u64,
    /// Growth per further attempt.
    pub factor: f64,
    /// Longest delay, in ms.
    pub cap_ms: u64,
    /// Fraction of the delay that is random (0 = exact, 0.2 = up to 20% shorter).
    pub jitter: f64,
}

impl Backoff {
    /// The delay without jitter after the `attempt`-th failure (1-based):
    /// `min(cap, base × factor^(attempt − 1))`.
    pub fn nominal(&self, attempt: u32) -> Duration {
        let exp = self
            .factor
            .max(1.0)
            .powi(attempt.saturating_sub(1).min(64) as i32);
        let ms = (self.base_ms as f64 * exp).min(self.cap_ms as f64);
        Duration::from_millis(ms.max(0.0) as u64)
    }

    /// The delay to wait after the `attempt`-th failure, jitter applied:
    /// uniformly in `[nominal × (1 − jitter), nominal]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let nominal = self.nominal(attempt).as_millis() as f64;
        let jitter = self.jitter.clamp(0.0, 1.0);
        Duration::from_millis((nominal * (1.0 - jitter * fastrand::f64())) as u64)
    }
}

/// What a job type declares about retries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Most attempts in all (1 = never retried).
    pub max_attempts: u32,
    /// Delays between attempts.
    pub backoff: Backoff,
}

/// A job type: its name on the wire, its arguments and its retry policy.
pub trait JobSpec: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The job's name, stored with it and used to find its handler.
    const NAME: &'static str;
    /// How failures are retried.
    const RETRY: RetryPolicy;
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

/// A job ready to push.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Job type.
    pub name: String,
    /// Arguments, as JSON.
    pub args: serde_json::Value,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Run no earlier than this (None = now).
    pub run_at: Option<DateTime<Utc>>,
    /// While a pending job holds this key, pushing another returns its id.
    pub unique_key: Option<String>,
    /// W3C trace context to carry to the worker.
    pub traceparent: Option<String>,
    /// W3C trace state to carry to the worker.
    pub tracestate: Option<String>,
    /// For a scheduled run: the tick it is. The push claims the tick: a
    /// second push of it (or of an earlier one), by any worker, queues nothing.
    pub tick: Option<Tick>,
}

/// A schedule's tick, as a push claims it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tick {
    /// The schedule's name.
    pub schedule: String,
    /// The tick's time (ms since the epoch, UTC).
    pub at: i64,
    /// Who pushes it (a worker id), for the schedule's last-run record.
    pub by: String,
}

/// A schedule's last claimed tick, as its queue records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LastRun {
    /// The tick's time.
    pub tick: DateTime<Utc>,
    /// The job queued for it.
    pub task_id: String,
    /// The worker that queued it.
    pub enqueued_by: String,
}

impl NewJob {
    /// A job of type `J` with its declared retry policy.
    pub fn of<J: JobSpec>(job: &J) -> Result<Self, QueueError> {
        Ok(Self {
            name: J::NAME.to_string(),
            args: serde_json::to_value(job).map_err(|e| QueueError::Encode(e.to_string()))?,
            retry: J::RETRY,
            run_at: None,
            unique_key: None,
            traceparent: None,
            tracestate: None,
            tick: None,
        })
    }

    /// Runs the job at `at`.
    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.run_at = Some(at);
        self
    }

    /// Runs the job after `countdown`.
    pub fn countdown(mut self, countdown: Duration) -> Self {
        self.run_at = Some(Utc::now() + countdown);
        self
    }

    /// Deduplicates the job by `key` while it is pending.
    pub fn unique(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    /// Overrides the retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
}

/// The answer to a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The id of the job that will run.
    pub id: String,
    /// `true` when a pending job with the same unique key was found and its
    /// id returned instead of queueing a duplicate.
    pub duplicate: bool,
    /// `true` when the job was a schedule's tick that another push (another
    /// worker) had claimed already: nothing was queued, and `id` is empty.
    pub tick_taken: bool,
}

/// A job a worker holds a lease on.
#[derive(Debug, Clone)]
pub struct Leased {
    /// Job id.
    pub id: String,
    /// The queue it was leased from (where its outcome is recorded).
    pub queue: std::sync::Arc<str>,
    /// Its record at fetch time (state `running`).
    pub record: JobRecord,
    /// Its arguments.
    pub args: serde_json::Value,
}

impl Leased {
    /// The lease token; only its holder can complete, retry or bury the job.
    pub fn token(&self) -> &str {
        self.record.token.as_deref().unwrap_or("")
    }
}

/// What one fetch got.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    /// The leased jobs.
    pub jobs: Vec<Leased>,
    /// The queue is paused: nothing was leased.
    pub paused: bool,
    /// Jobs put back as scheduled, over their type's rate limit.
    pub deferred: u64,
}

/// Queue depths by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Depths {
    /// Ids in the wait list (cancelled ones are dropped when reached).
    pub pending: u64,
    /// Scheduled jobs and waiting retries.
    pub delayed: u64,
    /// Jobs under a lease.
    pub running: u64,
    /// Jobs in the dead set.
    pub dead: u64,
    /// Attempts started since the queue was created (counted from this release on).
    pub started_total: u64,
    /// Jobs that succeeded since the queue was created.
    pub succeeded_total: u64,
    /// Jobs that failed for good since the queue was created.
    pub failed_total: u64,
    /// Retries scheduled since the queue was created.
    pub retried_total: u64,
    /// Jobs skipped since the queue was created.
    pub skipped_total: u64,
    /// Running jobs revoked and cancelled since the queue was created.
    pub cancelled_total: u64,
    /// Whether the queue is paused (fetches hand out nothing).
    pub paused: bool,
}

/// The outcome of a cancel request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was pending or scheduled and will not run.
    Cancelled,
    /// No such job.
    NotFound,
    /// It is past cancelling: running or finished.
    TooLate(JobState),
}

/// The outcome of deferring a running job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeferOutcome {
    /// Scheduled again; it holds its unique key.
    Deferred,
    /// Another pending job with the same unique key covers it: it ended as
    /// `skipped` (`{"reason": "coalesced", "joined": <id>}`).
    Coalesced(String),
    /// Its lease was lost; another worker owns it.
    LeaseLost,
}

/// What a heartbeat learned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extended {
    /// Jobs whose lease was lost: another worker owns them now.
    pub lost: Vec<String>,
    /// Jobs still held whose cancellation was asked for.
    pub revoked: Vec<String>,
}

/// The outcome of revoking a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeOutcome {
    /// It is running; the worker holding it is asked to cancel it.
    Revoking,
    /// No such job.
    NotFound,
    /// It is not running (pending and scheduled jobs are cancelled instead).
    NotRunning(JobState),
}

/// The outcome of re-enqueueing a dead job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResurrectOutcome {
    /// Queued again with a fresh attempt budget.
    Queued,
    /// No such job.
    NotFound,
    /// It is not in the dead set.
    NotDead(JobState),
}

/// A queue operation failure.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Redis failed or is unreachable.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A record in Redis could not be decoded.
    #[error("corrupt job record {id}: {reason}")]
    Corrupt {
        /// The job.
        id: String,
        /// Why.
        reason: String,
    },
    /// Job arguments could not be encoded.
    #[error("cannot encode job arguments: {0}")]
    Encode(String),
}

/// The keys of one queue, all under one hash tag.
#[derive(Debug, Clone)]
pub struct QueueKeys {
    wait: String,
    delayed: String,
    active: String,
    dead: String,
    jobs: String,
    args: String,
    results: String,
    unique: String,
    finished: String,
    stats: String,
    live: String,
    errors: String,
    uniq_of: String,
    paused: String,
    rate: String,
    sched: String,
    revoked: String,
    history: String,
}

impl QueueKeys {
    /// Keys of `queue` in `namespace`: `{namespace:queue}:wait`, ….
    pub fn new(namespace: &str, queue: &str) -> Self {
        let tag = format!("{{{namespace}:{queue}}}");
        let k = |s: &str| format!("{tag}:{s}");
        Self {
            wait: k("wait"),
            delayed: k("delayed"),
            active: k("active"),
            dead: k("dead"),
            jobs: k("jobs"),
            args: k("args"),
            results: k("results"),
            unique: k("unique"),
            finished: k("finished"),
            stats: k("stats"),
            live: k("live"),
            errors: k("errors"),
            uniq_of: k("uniq_of"),
            paused: k("paused"),
            rate: k("rate"),
            sched: k("sched"),
            revoked: k("revoked"),
            history: k("history"),
        }
    }

    /// Every key, for tests that check the hash tag and for cleanup.
    pub fn all(&self) -> [&str; 18] {
        [
            &self.history,
            &self.paused,
            &self.rate,
            &self.sched,
            &self.revoked,
            &self.live,
            &self.errors,
            &self.uniq_of,
            &self.wait,
            &self.delayed,
            &self.active,
            &self.dead,
            &self.jobs,
            &self.args,
            &self.results,
            &self.unique,
            &self.finished,
            &self.stats,
        ]
    }
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

/// A handle on one queue.
#[derive(Clone)]
pub struct Queue {
    pool: RedisPool,
    keys: QueueKeys,
    settings: QueueSettings,
    /// The queue's name, the `messaging.destination.name` of its spans.
    name: std::sync::Arc<str>,
}

/// The part of a job that never changes, stored as JSON in `jobs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Description {
    name: String,
    max_attempts: u32,
    backoff: Backoff,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unique_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tracestate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    schedule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tick: Option<i64>,
}

fn corrupt(id: &str, reason: impl std::fmt::Display) -> QueueError {
    QueueError::Corrupt {
        id: id.to_string(),
        reason: reason.to_string(),
    }
}

/// Builds a record from its stored parts: the JSON description, the
/// tab-separated live fields (see [`scripts`]) and the latest error.
fn decode_record(
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

impl Queue {
    /// A handle on `queue` of `namespace`.
    pub fn new(pool: RedisPool, namespace: &str, queue: &str, settings: QueueSettings) -> Self {
        Self {
            pool,
            keys: QueueKeys::new(namespace, queue),
            settings,
            name: queue.into(),
        }
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue's keys.
    pub fn keys(&self) -> &QueueKeys {
        &self.keys
    }

    /// The queue's settings.
    pub fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    /// The pool underneath.
    pub fn pool(&self) -> &RedisPool {
        &self.pool
    }

    fn new_id() -> String {
        ulid::Ulid::new().to_string()
    }

    fn push_invocation<'a>(
        &'a self,
        inv: &mut redis::ScriptInvocation<'a>,
        id: &str,
        job: &NewJob,
        context: Option<&(String, Option<String>)>,
    ) -> Result<(), QueueError> {
        // A job without its own trace context carries the pushing span's.
        let (traceparent, tracestate) = match (&job.traceparent, context) {
            (Some(parent), _) => (Some(parent.clone()), job.tracestate.clone()),
            (None, Some((parent, state))) => (Some(parent.clone()), state.clone()),
            (None, None) => (None, None),
        };
        let description = Description {
            name: job.name.clone(),
            max_attempts: job.retry.max_attempts.max(1),
            backoff: job.retry.backoff,
            unique_key: job.unique_key.clone(),
            traceparent,
            tracestate,
            schedule: job.tick.as_ref().map(|t| t.schedule.clone()),
            tick: job.tick.as_ref().map(|t| t.at),
        };
        let description =
            serde_json::to_string(&description).map_err(|e| QueueError::Encode(e.to_string()))?;
        let args =
            serde_json::to_string(&job.args).map_err(|e| QueueError::Encode(e.to_string()))?;
        let delay_ms = job
            .run_at
            .map(|at| (at - Utc::now()).num_milliseconds().max(0))
            .unwrap_or(0);
        inv.key(&self.keys.wait)
            .key(&self.keys.delayed)
            .key(&self.keys.jobs)
            .key(&self.keys.args)
            .key(&self.keys.unique)
            .key(&self.keys.live)
            .key(&self.keys.uniq_of)
            .key(&self.keys.sched)
            .arg(id)
            .arg(description)
            .arg(args)
            .arg(delay_ms)
            .arg(job.unique_key.as_deref().unwrap_or(""))
            .arg(&job.name)
            .arg(job.tick.as_ref().map_or("", |t| t.schedule.as_str()))
            .arg(job.tick.as_ref().map_or(0, |t| t.at))
            .arg(job.tick.as_ref().map_or("", |t| t.by.as_str()));
        Ok(())
    }

    /// Pushes one job, inside a producer span (`publish {queue}`) whose
    /// context the job carries unless it brings its own.
    pub async fn push(&self, job: NewJob) -> Result<Pushed, QueueError> {
        let span = crate::telemetry::producer_span(&self.name);
        async {
            let id = Self::new_id();
            tracing::Span::current().record("messaging.message.id", id.as_str());
            let mut inv = scripts::PUSH.prepare_invoke();
            let context = crate::telemetry::current_trace_context();
            self.push_invocation(&mut inv, &id, &job, context.as_ref())?;
            let (mut conn, tracker) = self.pool.get_durable();
            let (queued, id): (i64, String) = tracker.track(
                inv.invoke_async(&mut conn)
                    .instrument(redis_span("queue push", "EVALSHA"))
                    .await,
            )?;
            // A queued job must survive a failover (REDIS_WAIT_REPLICAS).
            self.pool
                .wait_for_replicas(&mut conn, &self.keys.wait)
                .await;
            Ok(Pushed {
                id,
                duplicate: queued == 0,
                tick_taken: queued == 2,
            })
        }
        .instrument(span)
        .await
    }

    /// Pushes many jobs in one pipelined round trip, inside one producer span.
    pub async fn push_bulk(&self, jobs: &[NewJob]) -> Result<Vec<Pushed>, QueueError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let span = crate::telemetry::producer_span(&self.name);
        span.record("messaging.batch.message_count", jobs.len());
        self.push_bulk_traced(jobs).instrument(span).await
    }

    async fn push_bulk_traced(&self, jobs: &[NewJob]) -> Result<Vec<Pushed>, QueueError> {
        let ids: Vec<String> = jobs.iter().map(|_| Self::new_id()).collect();
        let mut invocations = Vec::with_capacity(jobs.len());
        let context = crate::telemetry::current_trace_context();
        for (id, job) in ids.iter().zip(jobs) {
            let mut inv = scripts::PUSH.prepare_invoke();
            self.push_invocation(&mut inv, id, job, context.as_ref())?;
            invocations.push(inv);
        }
        let mut pipe = redis::pipe();
        pipe.load_script(&scripts::PUSH).ignore();
        for inv in &invocations {
            pipe.invoke_script(inv);
        }
        let (mut conn, tracker) = self.pool.get_durable();
        let out: Vec<(i64, String)> = tracker.track(
            pipe.query_async(&mut conn)
                .instrument(redis_span("queue push", "BATCH EVALSHA"))
                .await,
        )?;
        self.pool
            .wait_for_replicas(&mut conn, &self.keys.wait)
            .await;
        Ok(out
            .into_iter()
            .map(|(queued, id)| Pushed {
                id,
                duplicate: queued == 0,
                tick_taken: queued == 2,
            })
            .collect())
    }

    /// A job's record and result; `None` for an unknown (or expired) id.
    pub async fn status(&self, id: &str) -> Result<Option<JobStatus>, QueueError> {
        let (mut conn, tracker) = self.pool.get();
        type Parts = (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let (description, live, error, result, args): Parts = tracker.track(
            redis::pipe()
                .hget(&self.keys.jobs, id)
                .hget(&self.keys.live, id)
                .hget(&self.keys.errors, id)
                .hget(&self.keys.results, id)
                .hget(&self.keys.args, id)
                .query_async(&mut conn)
                .await,
        )?;
        let (Some(description), Some(live)) = (description, live) else {
            return Ok(None);
        };
        Ok(Some(JobStatus {
            id: id.to_string(),
            record: decode_record(id, &description, &live, error)?,
            result: result.and_then(|r| serde_json::from_str(&r).ok()),
            args: args.and_then(|a| serde_json::from_str(&a).ok()),
        }))
    }

    /// Cancels a pending or scheduled job.
    pub async fn cancel(&self, id: &str) -> Result<CancelOutcome, QueueError> {
        let (mut conn, tracker) = self.pool.get();
        let out: String = tracker.track(
            scripts::CANCEL
                .key(&self.keys.delayed)
                .key(&self.keys.live)
                .key(&self.keys.unique)
                .key(&self.keys.finished)
                .key(&self.keys.args)
                .key(&self.keys.uniq_of)
                .arg(id)
                .arg(self.settings.result_retention.as_millis() as u64)
                .invoke_async(&mut conn)
                .await,
        )?;
        Ok(match out.as_str() {
            "cancelled" => CancelOutcome::Cancelled,
            "not_found" => CancelOutcome::NotFound,
            state => CancelOutcome::TooLate(parse_state(state)),
        })
    }

    /// The dead set, newest first, at most `limit` entries.
    pub async fn dead(&self, limit: usize) -> Result<Vec<JobStatus>, QueueError> {
        let (mut conn, tracker) = self.pool.get();
        let ids: Vec<String> = tracker.track(
            redis::cmd("ZREVRANGE")
                .arg(&self.keys.dead)
                .arg(0)
                .arg(limit.saturating_sub(1) as i64)
                .query_async(&mut conn)
                .await,
        )?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        type Columns = (
            Vec<Option<String>>,
            Vec<Option<String>>,
            Vec<Option<String>>,
        );
        let (descriptions, lives, errors): Columns = tracker.track(
            redis::pipe()
                .cmd("HMGET")
                .arg(&self.keys.jobs)
                .arg(&ids)
                .cmd("HMGET")
                .arg(&self.keys.live)
                .arg(&ids)
                .cmd("HMGET")
                .arg(&self.keys.errors)
                .arg(&ids)
                .query_async(&mut conn)
                .await,
        )?;
        let mut out = Vec::with_capacity(ids.len());
        for (((id, d), l), e) in ids.into_iter().zip(descriptions).zip(lives).zip(errors) {
            if let (Some(d), Some(l)) = (d, l) {
                match decode_record(&id, &d, &l, e) {
                    Ok(record) => out.push(JobStatus {
                        record,
                        id,
                        result: None,
                        args: None,
                    }),
                    Err(err) => {
                        tracing::warn!(job_id = %id, error = %err, "skipping an unreadable dead job")
                    }
                }
            }
        }
        Ok(out)
    }

    /// Re-enqueues a dead job with a fresh attempt budget.
    pub async fn resurrect(&self, id: &str) -> Result<ResurrectOutcome, QueueError> {
        let (mut conn, tracker) = self.pool.get();
        let out: String = tracker.track(
            scripts::RESURRECT
                .key(&self.keys.dead)
                .key(&self.keys.wait)
                .key(&self.keys.live)
                .key(&self.keys.finished)
                .key(&self.keys.args)
                .arg(id)
                .invoke_async(&mut conn)
                .await,
        )?;
        Ok(match out.as_str() {
            "queued" => ResurrectOutcome::Queued,
            "not_found" | "no_args" => ResurrectOutcome::NotFound,
            state => ResurrectOutcome::NotDead(parse_state(state)),
        })
    }

    /// Depths by state and the lifetime counters.
    pub async fn depths(&self) -> Result<Depths, QueueError> {
        let (mut conn, tracker) = self.pool.get();
        type Parts = (u64, u64, u64, u64, HashMap<String, u64>, bool);
        let (pending, delayed, running, dead, stats, paused): Parts = tracker.track(
            redis::pipe()
                .llen(&self.keys.wait)
                .zcard(&self.keys.delayed)
                .zcard(&self.keys.active)
                .zcard(&self.keys.dead)
                .hgetall(&self.keys.stats)
                .exists(&self.keys.paused)
                .query_async(&mut conn)
                .await,
        )?;
        let stat = |k: &str| stats.get(k).copied().unwrap_or(0);
        Ok(Depths {
            pending,
            delayed,
            running,
            dead,
            started_total: stat("started"),
            succeeded_total: stat("succeeded"),
            failed_total: stat("failed"),
            retried_total: stat("retried"),
            skipped_total: stat("skipped"),
            cancelled_total: stat("cancelled"),
            paused,
        })
    }

    /// The last claimed tick of every schedule that queues into this queue.
    pub async fn last_runs(&self) -> Result<BTreeMap<String, LastRun>, QueueError> {
        let (mut conn, tracker) = self.pool.get();
        let all: BTreeMap<String, String> = tracker.track(
            redis::cmd("HGETALL")
                .arg(&self.keys.sched)
                .query_async(&mut conn)
                .await,
        )?;
        Ok(all
            .into_iter()
            .filter_map(|(name, v)| {
                let mut f = v.splitn(3, ' ');
                let tick = f.next()?.parse().ok().and_then(ms_to_datetime)?;
                let run = LastRun {
                    tick,
                    task_id: f.next()?.to_string(),
                    enqueued_by: f.next().unwrap_or_default().to_string(),
                };
                Some((name, run))
            })
            .collect())
    }

    /// Pauses the queue: fetches hand out nothing until [`Self::resume`];
    /// running jobs finish, and pushes are still accepted.
    pub async fn pause(&self) -> Result<(), QueueError> {
        let (mut conn, tracker) = self.pool.get();
        tracker.track(
            redis::cmd("SET")
                .arg(&self.keys.paused)
                .arg(1)
                .query_async::<()>(&mut conn)
                .await,
        )?;
        Ok(())
    }

    /// Resumes a paused queue.
    pub async fn resume(&self) -> Result<(), QueueError> {
        let (mut conn, tracker) = self.pool.get();
        tracker.track(
            redis::cmd("DEL")
                .arg(&self.keys.paused)
                .query_async::<()>(&mut conn)
                .await,
        )?;
        Ok(())
    }

    // ----- worker side -------------------------------------------------------

    /// Leases up to `n` pending jobs to `worker` (never blocks). The worker
    /// id must not contain tabs or newlines (it is stored in a tab-separated field).
    pub async fn fetch(&self, worker: &str, n: usize) -> Result<Vec<Leased>, QueueError> {
        Ok(self.fetch_batch(worker, n).await?.jobs)
    }

    /// [`Self::fetch`], telling also whether the queue is paused and how many
    /// jobs went back as scheduled for being over their type's rate limit.
    pub async fn fetch_batch(&self, worker: &str, n: usize) -> Result<Fetched, QueueError> {
        if worker.is_empty() || worker.contains(['\t', '\n', '\r']) {
            return Err(QueueError::Encode(format!("invalid worker id {worker:?}")));
        }
        let started = std::time::SystemTime::now();
        let mut inv = scripts::FETCH.prepare_invoke();
        inv.key(&self.keys.wait)
            .key(&self.keys.active)
            .key(&self.keys.jobs)
            .key(&self.keys.args)
            .key(&self.keys.unique)
            .key(&self.keys.live)
            .key(&self.keys.uniq_of)
            .key(&self.keys.paused)
            .key(&self.keys.rate)
            .key(&self.keys.delayed)
            .key(&self.keys.stats)
            .arg(n.max(1))
            .arg(worker)
            .arg(self.settings.lease.as_millis() as u64)
            .arg(self.settings.rate_limits.len());
        for (job, rate) in &self.settings.rate_limits {
            inv.arg(job)
                .arg(rate.interval_ms())
                .arg(rate.effective_burst());
        }
        let (mut conn, tracker) = self.pool.get();
        let mut flat: Vec<String> = tracker.track(inv.invoke_async(&mut conn).await)?;
        let paused = flat.first().is_some_and(|s| s == "paused");
        let deferred = flat.get(1).and_then(|d| d.parse().ok()).unwrap_or(0);
        let flat = if flat.len() >= 2 {
            flat.split_off(2)
        } else {
            Vec::new()
        };
        let mut out = Vec::with_capacity(flat.len() / 4);
        for chunk in flat.chunks_exact(4) {
            let id = chunk[0].clone();
            match decode_record(&id, &chunk[1], &chunk[2], None) {
                Ok(record) => {
                    let args = serde_json::from_str(&chunk[3]).unwrap_or(serde_json::Value::Null);
                    out.push(Leased {
                        id,
                        queue: self.name.clone(),
                        record,
                        args,
                    });
                }
                // One bad record must not strand the rest of the batch: bury
                // it (with its lease token, read straight from `live`) and go on.
                Err(e) => {
                    tracing::error!(job_id = %id, error = %e, "burying a job whose record cannot be read");
                    let token = chunk[2].split('\t').nth(6).unwrap_or_default().to_string();
                    let stub = Leased {
                        id: id.clone(),
                        queue: self.name.clone(),
                        record: corrupt_stub(token),
                        args: serde_json::Value::Null,
                    };
                    self.bury(&stub, &format!("permanent: {e}")).await?;
                }
            }
        }
        self.trace_fetch(&out, started);
        Ok(Fetched {
            jobs: out,
            paused,
            deferred,
        })
    }

    /// Gives each fetched job's trace a client span for the fetch that
    /// leased it: a fetch serves many traces, and which ones is known only
    /// once it has returned, so the span is recorded afterwards with the
    /// fetch's own start and end times.
    fn trace_fetch(&self, fetched: &[Leased], started: std::time::SystemTime) {
        use opentelemetry::KeyValue;
        let ended = std::time::SystemTime::now();
        for job in fetched {
            if job.record.traceparent.is_none() {
                continue;
            }
            crate::telemetry::record_remote_client_span(
                "queue fetch",
                started,
                ended,
                job.record.traceparent.as_deref(),
                job.record.tracestate.as_deref(),
                vec![
                    KeyValue::new("db.system", "redis"),
                    KeyValue::new("db.operation.name", "EVALSHA"),
                    KeyValue::new("db.query.summary", "queue fetch"),
                    KeyValue::new("messaging.system", "redis"),
                    KeyValue::new("messaging.destination.name", self.name.to_string()),
                    KeyValue::new("messaging.operation", "receive"),
                    KeyValue::new("messaging.message.id", job.id.clone()),
                    KeyValue::new("messaging.batch.message_count", fetched.len() as i64),
                ],
            );
        }
    }

    /// Blocks (on a dedicated connection) until the wait list is non-empty
    /// or `timeout` passes, without taking anything from it:
    /// `BLMOVE wait wait RIGHT RIGHT` pops the oldest id and puts it back
    /// where it was.
    pub async fn wait_for_work(
        &self,
        blocking: &mut crate::redis_pool::Conn,
        timeout: Duration,
    ) -> Result<bool, QueueError> {
        let got: Option<String> = redis::cmd("BLMOVE")
            .arg(&self.keys.wait)
            .arg(&self.keys.wait)
            .arg("RIGHT")
            .arg("RIGHT")
            .arg(timeout.as_secs_f64())
            .query_async(blocking)
            .await?;
        Ok(got.is_some())
    }

    /// Records success (or a deliberate skip). Returns `false` when the lease
    /// was lost meanwhile and another worker owns the job.
    pub async fn complete(
        &self,
        job: &Leased,
        state: JobState,
        result: &serde_json::Value,
    ) -> Result<bool, QueueError> {
        let done = [(job.clone(), state, result.clone())];
        Ok(self
            .complete_many(&done)
            .await?
            .first()
            .copied()
            .unwrap_or(false))
    }

    /// Records many successes in one script call (the worker batches the
    /// outcomes that arrive together). Returns, per job, whether its lease
    /// was still held.
    pub async fn complete_many(
        &self,
        done: &[(Leased, JobState, serde_json::Value)],
    ) -> Result<Vec<bool>, QueueError> {
        if done.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = scripts::COMPLETE_MANY.prepare_invoke();
        inv.key(&self.keys.active)
            .key(&self.keys.live)
            .key(&self.keys.finished)
            .key(&self.keys.args)
            .key(&self.keys.results)
            .key(&self.keys.stats)
            .key(&self.keys.errors)
            .key(&self.keys.revoked)
            .arg(self.settings.result_retention.as_millis() as u64);
        for (job, state, result) in done {
            let state = match state {
                JobState::Skipped => "skipped",
                JobState::Cancelled => "cancelled",
                _ => "succeeded",
            };
            inv.arg(&job.id)
                .arg(job.token())
                .arg(state)
                .arg(result.to_string());
        }
        let (mut conn, tracker) = self.pool.get();
        let out: Vec<i64> = tracker.track(inv.invoke_async(&mut conn).await)?;
        Ok(out.into_iter().map(|v| v == 1).collect())
    }

    /// Shows progress in a running job's status (its `result` until it
    /// finishes), if the attempt with lease `token` still runs it. `false`
    /// when it does not: the lease was lost, or the job has finished.
    pub async fn report_progress(
        &self,
        id: &str,
        token: &str,
        progress: &serde_json::Value,
    ) -> Result<bool, QueueError> {
        let (mut conn, tracker) = self.pool.get();
        let ok: i64 = tracker.track(
            scripts::PROGRESS
                .key(&self.keys.live)
                .key(&self.keys.results)
                .arg(id)
                .arg(token)
                .arg(progress.to_string())
                .invoke_async(&mut conn)
                .await,
        )?;
        Ok(ok == 1)
    }

    /// Schedules another attempt after `delay`.
    pub async fn retry_later(
        &self,
        job: &Leased,
        error: &str,
        delay: Duration,
    ) -> Result<bool, QueueError> {
        let (mut conn, tracker) = self.pool.get();
        let ok: i64 = tracker.track(
            scripts::RETRY
                .key(&self.keys.active)
                .key(&self.keys.delayed)
                .key(&self.keys.live)
                .key(&self.keys.stats)
                .key(&self.keys.errors)
                .key(&self.keys.unique)
                .key(&self.keys.uniq_of)
                .arg(&job.id)
                .arg(job.token())
                .arg(error)
                .arg(delay.as_millis() as u64)
                .invoke_async(&mut conn)
                .await,
        )?;
        Ok(ok == 1)
    }

    /// Defers a job this worker holds: see [`JobOutcome::deferred`] and
    /// [`DeferOutcome`].
    pub async fn defer(
        &self,
        job: &Leased,
        delay: Duration,
        note: &serde_json::Value,
    ) -> Result<DeferOutcome, QueueError> {
        let (mut conn, tracker) = self.pool.get();
        let (code, other): (i64, String) = tracker.track(
            scripts::DEFER
                .key(&self.keys.active)
                .key(&self.keys.delayed)
                .key(&self.keys.live)
                .key(&self.keys.unique)
                .key(&self.keys.uniq_of)
                .key(&self.keys.results)
                .key(&self.keys.finished)
                .key(&self.keys.stats)
                .arg(&job.id)
                .arg(job.token())
                .arg(delay.as_millis() as u64)
                .arg(note.to_string())
                .arg(self.settings.result_retention.as_millis() as u64)
                .invoke_async(&mut conn)
                .await,
        )?;
        Ok(match code {
            1 => DeferOutcome::Deferred,
            2 => DeferOutcome::Coalesced(other),
            _ => DeferOutcome::LeaseLost,
        })
    }

    /// Moves the job to the dead set.
    pub async fn bury(&self, job: &Leased, error: &str) -> Result<bool, QueueError> {
        let (mut conn, tracker) = self.pool.get();
        let ok: i64 = tracker.track(
            scripts::BURY
                .key(&self.keys.active)
                .key(&self.keys.dead)
                .key(&self.keys.live)
                .key(&self.keys.finished)
                .key(&self.keys.stats)
                .key(&self.keys.errors)
                .arg(&job.id)
                .arg(job.token())
                .arg(error)
                .arg(self.settings.dead_retention.as_millis() as u64)
                .invoke_async(&mut conn)
                .await,
        )?;
        Ok(ok == 1)
    }

    /// Extends the leases of `held` (id, token) pairs; returns the ids whose
    /// lease was lost.
    pub async fn extend(&self, held: &[(String, String)]) -> Result<Extended, QueueError> {
        if held.is_empty() {
            return Ok(Extended::default());
        }
        let mut inv = scripts::EXTEND.prepare_invoke();
        inv.key(&self.keys.active)
            .key(&self.keys.live)
            .key(&self.keys.revoked)
            .arg(self.settings.lease.as_millis() as u64);
        for (id, token) in held {
            inv.arg(id).arg(token);
        }
        let (mut conn, tracker) = self.pool.get();
        let (lost, revoked): (Vec<String>, Vec<String>) =
            tracker.track(inv.invoke_async(&mut conn).await)?;
        Ok(Extended { lost, revoked })
    }

    /// Asks for a running job to be cancelled (see `REVOKE` in
    /// [`scripts`]): marks it revoked, and tells every worker on
    /// `control_channel` (`revoke <queue> <id>`); the one holding its lease
    /// cancels it. A worker that misses the message finds the mark at its
    /// next heartbeat; a dead worker's job ends cancelled when its lease is
    /// reaped.
    pub async fn revoke(
        &self,
        id: &str,
        control_channel: &str,
    ) -> Result<RevokeOutcome, QueueError> {
        let (mut conn, tracker) = self.pool.get_durable();
        let answer: String = tracker.track(
            scripts::REVOKE
                .key(&self.keys.live)
                .key(&self.keys.revoked)
                .arg(id)
                .invoke_async(&mut conn)
                .await,
        )?;
        Ok(match answer.as_str() {
            "revoking" => {
                self.pool
                    .wait_for_replicas(&mut conn, &self.keys.revoked)
                    .await;
                let message = format!("revoke {} {id}", self.name);
                let _: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                    .arg(control_channel)
                    .arg(message)
                    .query_async(&mut conn)
                    .await;
                RevokeOutcome::Revoking
            }
            "not_found" => RevokeOutcome::NotFound,
            other => RevokeOutcome::NotRunning(parse_state(other)),
        })
    }
    /// Puts a job this worker holds back at the head of the queue.
    pub async fn requeue(&self, id: &str, token: &str) -> Result<bool, QueueError> {
        let (mut conn, tracker) = self.pool.get();
        let ok: i64 = tracker.track(
            scripts::REQUEUE
                .key(&self.keys.active)
                .key(&self.keys.wait)
                .key(&self.keys.live)
                .key(&self.keys.unique)
                .key(&self.keys.uniq_of)
                .arg(id)
                .arg(token)
                .invoke_async(&mut conn)
                .await,
        )?;
        Ok(ok == 1)
    }

    /// Moves due scheduled jobs and retries to the queue. Returns how many
    /// moved and how long until the next one is due.
    pub async fn promote_due(&self) -> Result<(usize, Option<Duration>), QueueError> {
        let (mut conn, tracker) = self.pool.get();
        let (moved, next): (usize, i64) = tracker.track(
            scripts::PROMOTE
                .key(&self.keys.delayed)
                .key(&self.keys.wait)
                .key(&self.keys.live)
                .arg(MAINTENANCE_BATCH)
                .invoke_async(&mut conn)
                .await,
        )?;
        Ok((
            moved,
            (next >= 0).then(|| Duration::from_millis(next as u64)),
        ))
    }

    /// Takes back jobs whose lease expired. Returns how many.
    pub async fn reap_expired(&self) -> Result<usize, QueueError> {
        let (mut conn, tracker) = self.pool.get();
        Ok(tracker.track(
            scripts::REAP
                .key(&self.keys.active)
                .key(&self.keys.wait)
                .key(&self.keys.live)
                .key(&self.keys.dead)
                .key(&self.keys.finished)
                .key(&self.keys.stats)
                .key(&self.keys.errors)
                .key(&self.keys.unique)
                .key(&self.keys.uniq_of)
                .key(&self.keys.revoked)
                .key(&self.keys.results)
                .arg(MAINTENANCE_BATCH)
                .arg(self.settings.max_lease_losses)
                .arg(self.settings.dead_retention.as_millis() as u64)
                .arg(self.settings.result_retention.as_millis() as u64)
                .invoke_async(&mut conn)
                .await,
        )?)
    }

    /// Deletes records whose retention ran out. Returns how many.
    pub async fn cleanup(&self) -> Result<usize, QueueError> {
        let (mut conn, tracker) = self.pool.get();
        Ok(tracker.track(
            scripts::CLEANUP
                .key(&self.keys.finished)
                .key(&self.keys.jobs)
                .key(&self.keys.args)
                .key(&self.keys.results)
                .key(&self.keys.dead)
                .key(&self.keys.live)
                .key(&self.keys.errors)
                .key(&self.keys.uniq_of)
                .key(&self.keys.revoked)
                .arg(MAINTENANCE_BATCH)
                .invoke_async(&mut conn)
                .await,
        )?)
    }
}

/// A record standing in for one that cannot be read, so that it can be buried.
fn corrupt_stub(token: String) -> JobRecord {
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

fn parse_state(s: &str) -> JobState {
    serde_json::from_value(serde_json::Value::String(s.to_string())).unwrap_or(JobState::Failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap() {
        let b = Backoff {
            base_ms: 100,
            factor: 2.0,
            cap_ms: 1_000,
            jitter: 0.0,
        };
        let delays: Vec<u64> = (1..=6).map(|a| b.delay(a).as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1_000, 1_000]);
    }

    #[test]
    fn jitter_only_shortens_within_its_fraction() {
        let b = Backoff {
            base_ms: 1_000,
            factor: 3.0,
            cap_ms: 60_000,
            jitter: 0.25,
        };
        for attempt in 1..5 {
            let nominal = b.nominal(attempt).as_millis() as u64;
            for _ in 0..200 {
                let d = b.delay(attempt).as_millis() as u64;
                assert!(d <= nominal && d >= nominal * 3 / 4, "{d} vs {nominal}");
            }
        }
    }

    #[test]
    fn every_key_of_a_queue_shares_one_hash_tag() {
        let keys = QueueKeys::new("pricing", "default");
        for key in keys.all() {
            assert!(key.starts_with("{pricing:default}:"), "{key}");
        }
    }

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
