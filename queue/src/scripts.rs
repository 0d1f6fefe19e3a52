//! The queue's Lua scripts: every state change is one atomic script. The
//! Lua lives in `src/lua/*.lua` (compiled in with `include_str!`), each
//! file after `prelude.lua`; the contract of each (its KEYS, ARGV and
//! reply) is documented on its static here.
//!
//! All keys of one queue share a hash tag and every key a script touches
//! arrives in `KEYS`, so the queue works on Redis Cluster. Per-job data are
//! fields of a few hashes rather than a key per job for the same reason;
//! their retention is enforced by the `finished` sorted set and [`CLEANUP`].
//! Every script that walks a collection takes a bounded batch (`LIMIT 0 n`,
//! `RPOP key n`), so no script's cost grows with the backlog.
//!
//! A job is stored in parts, so that the hot scripts never run a JSON
//! encoder (cjson's encoder cost about 10 µs of Redis CPU per call, more
//! than everything else a state change does):
//!
//! - `jobs[id]`: the job's fixed description (name, retry policy, unique
//!   key, trace context) as JSON, written once by the producer, read by Rust.
//! - `live[id]`: the fields that change, tab-separated: state, attempts,
//!   enqueued_at, started_at, finished_at, worker, lease token, leases lost,
//!   run_at (times in ms of the Redis clock; empty when unset), and the job
//!   type (which never changes, but the fetch's rate limits need it without
//!   decoding JSON; records written before it have 9 fields).
//! - `errors[id]`, `args[id]`, `results[id]`, `uniq_of[id]` (the unique key).

use std::sync::LazyLock;

use redis::Script;

/// Prepended to every script: `now` is the Redis server's clock in ms, so
/// leases and delays never depend on the clocks of the machines involved;
/// `load` and `save` read and write a job's `live` fields.
const PRELUDE: &str = include_str!("lua/prelude.lua");

pub(crate) fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

/// KEYS: wait, delayed, jobs, args, unique, live, uniq_of, sched.
/// ARGV: id, description, args, delay_ms (0 = now), unique_key ('' = none),
/// job type, schedule ('' = none), tick (ms), pushed by.
/// Returns {1, id} when queued, {0, existing_id} when a pending job with the
/// same unique key already exists, {2, ''} when the schedule's tick (or a
/// later one) was already claimed: by another worker, so every tick is
/// queued once, and never one older than the last.
/// `sched[schedule]` holds the last claimed tick: "tick id pushed_by".
pub(crate) static PUSH: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/push.lua")));

/// KEYS: wait, active, jobs, args, unique, live, uniq_of, paused, rate, delayed, stats.
/// ARGV: n, worker, lease_ms, then the rate limits: their count, and per
/// limit the job type, its emission interval (ms, fractional) and its burst.
/// Moves up to n pending jobs to running under a lease. Returns
/// {status, deferred, id, description, live, args, ...}: status `paused`
/// (and nothing else) when the queue is paused, else `ok`; `deferred`
/// counts the jobs put back as scheduled because their type was over its
/// rate limit. Cancelled tombstones are dropped; neither they nor deferred
/// jobs count against n (up to 16 pops per call).
///
/// A rate limit is GCRA: a type's theoretical arrival time `tat` (in
/// `rate[type]`) admits a start at `now` when `tat - now <= interval *
/// (burst - 1)`, and moves on by one interval per start. A job over the
/// limit waits in `delayed` until its turn (`tat - tolerance`, one interval
/// apart for each job deferred in this call), spends no attempt and keeps
/// its unique key; when it comes back it is checked again.
pub(crate) static FETCH: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/fetch.lua")));

/// KEYS: active, live, finished, args, results, stats, errors, revoked.
/// ARGV: retention_ms, then (id, token, state ('succeeded'|'skipped'|'cancelled'), result) for each job.
/// Records successes; per job returns 1, or 0 when its lease was lost (its
/// result is then discarded).
pub(crate) static COMPLETE_MANY: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("lua/complete_many.lua")));

/// KEYS: live, results. ARGV: id, token, progress (JSON).
/// Shows a running attempt's progress as the job's result. Returns 1, or 0
/// when that attempt no longer holds the job (lease lost, or finished).
pub(crate) static PROGRESS: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("lua/progress.lua")));

/// KEYS: active, delayed, live, stats, errors, unique, uniq_of.
/// ARGV: id, token, error, delay_ms.
/// Schedules a retry; the job holds its unique key again while it waits.
/// Returns 1, or 0 when the lease was lost.
pub(crate) static RETRY: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/retry.lua")));

/// KEYS: active, dead, live, finished, stats, errors.
/// ARGV: id, token, error, retention_ms.
/// Moves a job to the dead set. Returns 1, or 0 when the lease was lost.
pub(crate) static BURY: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/bury.lua")));

/// KEYS: active, live, revoked. ARGV: lease_ms, id1, token1, id2, token2, …
/// Extends the leases still held; returns {ids whose lease was lost, ids
/// held and revoked} (a revoke whose message the worker missed).
pub(crate) static EXTEND: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("lua/extend.lua")));

/// KEYS: active, wait, live, unique, uniq_of. ARGV: id, token.
/// Puts a job this worker holds back at the head of the queue (graceful
/// shutdown). The interrupted attempt is not counted, and the job takes its
/// unique key back unless another pending job holds it now.
pub(crate) static REQUEUE: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("lua/requeue.lua")));

/// KEYS: active, delayed, live, unique, uniq_of, results, finished, stats.
/// ARGV: id, token, delay_ms, note, retention_ms.
/// Defers a running job: it goes back to `scheduled`, due after delay_ms,
/// without spending an attempt, and holds its unique key again so later
/// pushes join it. `note` (JSON) shows as its result meanwhile. When another
/// pending job took the unique key while this one ran, that job covers this
/// one, which then ends as skipped ("coalesced"). Returns {1, ''} when
/// deferred, {2, id_of_the_covering_job} when coalesced, {0, ''} when the
/// lease was lost.
pub(crate) static DEFER: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/defer.lua")));

/// KEYS: delayed, wait, live. ARGV: n.
/// Moves up to n due jobs (scheduled or retrying) to the head of the queue.
/// Returns {moved, ms until the next job is due, or -1 when none is scheduled}.
pub(crate) static PROMOTE: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("lua/promote.lua")));

/// KEYS: active, wait, live, dead, finished, stats, errors, unique, uniq_of,
/// revoked, results. ARGV: n, max_lost, dead_retention_ms, result_retention_ms.
/// Takes back up to n jobs whose lease expired (their worker died) and
/// queues them again at the head, or buries them after max_lost losses; a
/// job revoked while its worker was gone ends `cancelled` instead.
/// Returns the number of jobs taken back.
pub(crate) static REAP: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/reap.lua")));

/// KEYS: delayed, live, unique, finished, args, uniq_of. ARGV: id, retention_ms.
/// Cancels a pending, scheduled or retrying job. Returns 'cancelled',
/// 'not_found', or the state that prevents it ('running', 'succeeded', …).
pub(crate) static CANCEL: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("lua/cancel.lua")));

/// KEYS: dead, wait, live, finished, args. ARGV: id.
/// Re-enqueues a dead job with a fresh attempt budget. Returns 'queued',
/// 'not_found', 'no_args', or the state that prevents it.
pub(crate) static RESURRECT: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("lua/resurrect.lua")));

/// KEYS: finished, jobs, args, results, dead, live, errors, uniq_of, revoked. ARGV: n.
/// Deletes up to n records whose retention ran out. Returns how many.
pub(crate) static CLEANUP: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("lua/cleanup.lua")));

/// KEYS: live, revoked. ARGV: id.
/// Asks for a running job to be cancelled: marks it revoked (its worker
/// is told, and its heartbeat and the reaper look). Returns 'revoking', or
/// the state that makes a revoke moot ('pending', 'succeeded', …; pending
/// and scheduled jobs are cancelled instead), or 'not_found'.
pub(crate) static REVOKE: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("lua/revoke.lua")));
