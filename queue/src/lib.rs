//! The job queue: settings and every Redis operation on it, for the
//! producers (api, listener), the worker and the dashboard.
//!
//! The api and the listener push jobs and read their status with [`Queue`];
//! the worker fetches, acknowledges, retries and buries them through the same
//! type, so producer and consumer can never disagree about a key or a field.
//!
//! # Design
//! One queue is a handful of Redis keys under one hash tag
//! (`{<namespace>:<queue>}`), changed only by the Lua scripts in
//! `src/lua/` (loaded by `scripts`), each of which moves a bounded batch:
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
//! | `history` | zset | samples of `stats` by time, the last two minutes, taken by the workers and the dashboard (see [`browse`]) |
//!
//! A fetch moves jobs from `wait` to `active` under a lease (default 30 s)
//! in the same script that marks them running, so a job leaves the queue
//! only when its handler's outcome is recorded. A worker's heartbeat extends
//! the leases of the jobs it holds; a lease that runs out means its worker
//! is gone, and any worker's reaper puts the job back at the head of `wait`.
//! Retries wait in `delayed`, not in a worker slot. Every timestamp is the
//! Redis server's clock (`TIME`), so clock skew between machines cannot
//! shorten a lease.
//!
//! # Layout
//! - `settings`: [`QueueSettings`] (the `JOB_*` variables), [`DEFAULT_QUEUE`].
//! - `job`: [`JobState`], [`JobOutcome`], [`JobError`], and the built-in [`Noop`] and [`Sleep`];
//!   the wire contract ([`NewJob`], [`JobSpec`], [`RetryPolicy`], [`Backoff`]) is `shared::jobs`'s,
//!   re-exported here.
//! - `record`: [`JobRecord`] and [`JobStatus`], decoded from a job's stored parts.
//! - `keys`: [`QueueKeys`], one queue's keys under one hash tag.
//! - `producer`: [`Queue::push`], [`Queue::push_bulk`].
//! - `consumer`: fetch, wait, complete, retry, defer, bury, heartbeat, requeue.
//! - `control`: status, cancel, revoke, dead set, resurrect, depths, pause, resume.
//! - `maintenance`: promote due jobs, reap expired leases, delete expired records.
//! - `scripts`: the Lua scripts (in `src/lua/*.lua`), each one atomic state change.
//! - `error`: [`QueueError`].
//! - [`browse`]: pages of jobs by state and throughput, for the dashboard.
//! - [`limits`]: rate limits (GCRA, enforced by the fetch) and time limits per job type.
//! - `routing`: [`Routes`] (job type → queue), [`Consume`] (which queues a worker takes, in
//!   what order), [`Queues`] (a handle on each).
//! - [`schedule`]: periodic schedules (cron or `@every`), claimed once per tick in Redis.
//! - [`workers`]: the live worker registry (each worker's report, by heartbeat).

pub mod browse;
mod consumer;
mod control;
mod error;
mod job;
mod keys;
pub mod limits;
mod maintenance;
mod producer;
mod record;
mod routing;
pub mod schedule;
mod scripts;
mod settings;
pub mod workers;

pub use browse::{JobPage, Listing, Throughput};
pub use consumer::{DeferOutcome, Extended, Fetched, Leased};
pub use control::{CancelOutcome, Depths, LastRun, ResurrectOutcome, RevokeOutcome};
pub use error::QueueError;
pub use job::{JobError, JobOutcome, JobState, Noop, Sleep};
pub use keys::QueueKeys;
pub use limits::{Rate, TimeLimit};
pub use producer::Pushed;
pub use record::{JobRecord, JobStatus, ms_to_datetime};
pub use routing::{
    BUILT_IN_QUEUES, BULK_QUEUE, Consume, EVENTS_QUEUE, Queues, Routes, is_queue_name,
};
pub use settings::{DEFAULT_QUEUE, MAINTENANCE_BATCH, QueueSettings};
pub use shared::jobs::{Backoff, JobSpec, NewJob, RetryPolicy, Tick};

use shared::redis_pool::RedisPool;

/// A handle on one queue.
#[derive(Clone)]
pub struct Queue {
    pool: RedisPool,
    keys: QueueKeys,
    settings: QueueSettings,
    /// The queue's name, the `messaging.destination.name` of its spans.
    name: std::sync::Arc<str>,
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
}
