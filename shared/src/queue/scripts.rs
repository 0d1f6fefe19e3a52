//! The queue's Lua scripts: every state change is one atomic script.
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
const PRELUDE: &str = r#"
local __t = redis.call('TIME')
local now = tonumber(__t[1]) * 1000 + math.floor(tonumber(__t[2]) / 1000)
local function load(live, id)
  local s = redis.call('HGET', live, id)
  if not s then return nil end
  local f = {}
  for v in string.gmatch(s .. '\t', '([^\t]*)\t') do f[#f + 1] = v end
  return {state = f[1], attempts = tonumber(f[2]) or 0, enqueued = f[3] or '',
          started = f[4] or '', finished = f[5] or '', worker = f[6] or '',
          token = f[7] or '', lost = tonumber(f[8]) or 0, run_at = f[9] or '',
          name = f[10] or ''}
end
local function save(live, id, r)
  redis.call('HSET', live, id, table.concat({r.state, r.attempts, r.enqueued, r.started,
    r.finished, r.worker, r.token, r.lost, r.run_at, r.name}, '\t'))
end
-- A job going back to the queue takes its unique key again, unless another
-- pending or scheduled job holds it now: returns that job's id, else nil.
local function reclaim_unique(unique, uniq_of, live, id)
  local uniq = redis.call('HGET', uniq_of, id)
  if not uniq then return nil end
  local holder = redis.call('HGET', unique, uniq)
  if holder and holder ~= id then
    local h = load(live, holder)
    if h and (h.state == 'pending' or h.state == 'scheduled' or h.state == 'retrying') then
      return holder
    end
  end
  redis.call('HSET', unique, uniq, id)
  return nil
end
"#;

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
pub(crate) static PUSH: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local id, uniq = ARGV[1], ARGV[5]
local schedule = ARGV[7]
if schedule ~= '' then
  local last = redis.call('HGET', KEYS[8], schedule)
  if last and tonumber(string.match(last, '^%-?%d+')) >= tonumber(ARGV[8]) then
    return {2, ''}
  end
  redis.call('HSET', KEYS[8], schedule, ARGV[8] .. ' ' .. id .. ' ' .. ARGV[9])
end
if uniq ~= '' then
  local existing = redis.call('HGET', KEYS[5], uniq)
  if existing then
    local r = load(KEYS[6], existing)
    if r and (r.state == 'pending' or r.state == 'scheduled' or r.state == 'retrying') then
      -- A tick that joins a waiting job is run by that job.
      if schedule ~= '' then
        redis.call('HSET', KEYS[8], schedule, ARGV[8] .. ' ' .. existing .. ' ' .. ARGV[9])
      end
      return {0, existing}
    end
  end
  redis.call('HSET', KEYS[5], uniq, id)
  redis.call('HSET', KEYS[7], id, uniq)
end
local delay = tonumber(ARGV[4])
local r = {state = 'pending', attempts = 0, enqueued = now, started = '', finished = '',
           worker = '', token = '', lost = 0, run_at = '', name = ARGV[6]}
if delay > 0 then
  r.state = 'scheduled'
  r.run_at = now + delay
end
save(KEYS[6], id, r)
redis.call('HSET', KEYS[3], id, ARGV[2])
redis.call('HSET', KEYS[4], id, ARGV[3])
if delay > 0 then
  redis.call('ZADD', KEYS[2], now + delay, id)
else
  redis.call('LPUSH', KEYS[1], id)
end
return {1, id}
"#,
    )
});

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
pub(crate) static FETCH: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('EXISTS', KEYS[8]) == 1 then return {'paused', 0} end
local limits = {}
for i = 0, tonumber(ARGV[4]) - 1 do
  limits[ARGV[5 + 3 * i]] = {tonumber(ARGV[6 + 3 * i]), tonumber(ARGV[7 + 3 * i]), 0}
end
local out = {'ok', 0}
local want = tonumber(ARGV[1])
local deadline = now + tonumber(ARGV[3])
local deferred = 0
local admitted = 0
-- Tombstones and deferred jobs do not count against n: pop again, a
-- bounded number of rounds, so one call's work stays bounded too.
for _ = 1, 16 do
  if admitted >= want then break end
  local ids = redis.call('RPOP', KEYS[1], want - admitted)
  if not ids then break end
  for _, id in ipairs(ids) do
    local r = load(KEYS[6], id)
    if r and r.state == 'pending' then
      local lim = limits[r.name]
      local admit = true
      if lim then
        local interval, tolerance = lim[1], lim[1] * (lim[2] - 1)
        local tat = tonumber(redis.call('HGET', KEYS[9], r.name) or '0')
        if tat < now then tat = now end
        if tat - now > tolerance then
          admit = false
          r.state = 'scheduled'
          -- Whole ms for the record; the zset takes the same score.
          r.run_at = math.ceil(tat - tolerance + lim[3] * interval)
          lim[3] = lim[3] + 1
          save(KEYS[6], id, r)
          redis.call('ZADD', KEYS[10], r.run_at, id)
          deferred = deferred + 1
        else
          -- Fractional ms (a double holds µs exactly at today's epoch ms);
          -- %.6f keeps them, where tostring's 14 digits would not.
          redis.call('HSET', KEYS[9], r.name, string.format('%.6f', tat + interval))
        end
      end
      if admit then
        r.state = 'running'
        r.attempts = r.attempts + 1
        r.started = now
        r.worker = ARGV[2]
        -- Unique per lease: a resurrected job restarts its attempt count.
        r.token = ARGV[2] .. ':' .. r.attempts .. ':' .. now
        r.run_at = ''
        local uniq = redis.call('HGET', KEYS[7], id)
        if uniq and redis.call('HGET', KEYS[5], uniq) == id then
          redis.call('HDEL', KEYS[5], uniq)
        end
        save(KEYS[6], id, r)
        redis.call('ZADD', KEYS[2], deadline, id)
        out[#out + 1] = id
        out[#out + 1] = redis.call('HGET', KEYS[3], id) or ''
        out[#out + 1] = redis.call('HGET', KEYS[6], id)
        out[#out + 1] = redis.call('HGET', KEYS[4], id) or ''
        admitted = admitted + 1
      end
    end
  end
end
out[2] = deferred
-- Attempts started, for the dashboard's jobs-started rate.
if admitted > 0 then redis.call('HINCRBY', KEYS[11], 'started', admitted) end
return out
"#,
    )
});

/// KEYS: active, live, finished, args, results, stats, errors, revoked.
/// ARGV: retention_ms, then (id, token, state ('succeeded'|'skipped'|'cancelled'), result) for each job.
/// Records successes; per job returns 1, or 0 when its lease was lost (its
/// result is then discarded).
pub(crate) static COMPLETE_MANY: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local out = {}
local expire = now + tonumber(ARGV[1])
for i = 2, #ARGV, 4 do
  local id, token, state = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local r = load(KEYS[2], id)
  if not r or r.state ~= 'running' or r.token ~= token then
    out[#out + 1] = 0
  else
    redis.call('ZREM', KEYS[1], id)
    r.state = state
    r.finished = now
    r.token = ''
    save(KEYS[2], id, r)
    redis.call('HSET', KEYS[5], id, ARGV[i + 3])
    redis.call('HDEL', KEYS[4], id)
    redis.call('HDEL', KEYS[7], id)
    redis.call('HDEL', KEYS[8], id)
    redis.call('ZADD', KEYS[3], expire, id)
    redis.call('HINCRBY', KEYS[6], state, 1)
    out[#out + 1] = 1
  end
end
return out
"#,
    )
});

/// KEYS: live, results. ARGV: id, token, progress (JSON).
/// Shows a running attempt's progress as the job's result. Returns 1, or 0
/// when that attempt no longer holds the job (lease lost, or finished).
pub(crate) static PROGRESS: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local r = load(KEYS[1], ARGV[1])
if not r or r.state ~= 'running' or r.token ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
"#,
    )
});

/// KEYS: active, delayed, live, stats, errors, unique, uniq_of.
/// ARGV: id, token, error, delay_ms.
/// Schedules a retry; the job holds its unique key again while it waits.
/// Returns 1, or 0 when the lease was lost.
pub(crate) static RETRY: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local id = ARGV[1]
local r = load(KEYS[3], id)
if not r or r.state ~= 'running' or r.token ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], id)
r.state = 'retrying'
r.run_at = now + tonumber(ARGV[4])
r.token = ''
save(KEYS[3], id, r)
redis.call('HSET', KEYS[5], id, ARGV[3])
redis.call('ZADD', KEYS[2], r.run_at, id)
reclaim_unique(KEYS[6], KEYS[7], KEYS[3], id)
redis.call('HINCRBY', KEYS[4], 'retried', 1)
return 1
"#,
    )
});

/// KEYS: active, dead, live, finished, stats, errors.
/// ARGV: id, token, error, retention_ms.
/// Moves a job to the dead set. Returns 1, or 0 when the lease was lost.
pub(crate) static BURY: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local id = ARGV[1]
local r = load(KEYS[3], id)
if not r or r.state ~= 'running' or r.token ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], id)
r.state = 'failed'
r.finished = now
r.token = ''
save(KEYS[3], id, r)
redis.call('HSET', KEYS[6], id, ARGV[3])
redis.call('ZADD', KEYS[2], now, id)
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[4]), id)
redis.call('HINCRBY', KEYS[5], 'failed', 1)
return 1
"#,
    )
});

/// KEYS: active, live, revoked. ARGV: lease_ms, id1, token1, id2, token2, …
/// Extends the leases still held; returns {ids whose lease was lost, ids
/// held and revoked} (a revoke whose message the worker missed).
pub(crate) static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local lost, revoked = {}, {}
for i = 2, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local r = load(KEYS[2], id)
  if r and r.state == 'running' and r.token == token then
    redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), id)
    if redis.call('HEXISTS', KEYS[3], id) == 1 then revoked[#revoked + 1] = id end
  else
    lost[#lost + 1] = id
  end
end
return {lost, revoked}
"#,
    )
});

/// KEYS: active, wait, live, unique, uniq_of. ARGV: id, token.
/// Puts a job this worker holds back at the head of the queue (graceful
/// shutdown). The interrupted attempt is not counted, and the job takes its
/// unique key back unless another pending job holds it now.
pub(crate) static REQUEUE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local id = ARGV[1]
local r = load(KEYS[3], id)
if not r or r.state ~= 'running' or r.token ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], id)
r.state = 'pending'
r.attempts = math.max(r.attempts - 1, 0)
r.token = ''
r.started = ''
save(KEYS[3], id, r)
reclaim_unique(KEYS[4], KEYS[5], KEYS[3], id)
redis.call('RPUSH', KEYS[2], id)
return 1
"#,
    )
});

/// KEYS: active, delayed, live, unique, uniq_of, results, finished, stats.
/// ARGV: id, token, delay_ms, note, retention_ms.
/// Defers a running job: it goes back to `scheduled`, due after delay_ms,
/// without spending an attempt, and holds its unique key again so later
/// pushes join it. `note` (JSON) shows as its result meanwhile. When another
/// pending job took the unique key while this one ran, that job covers this
/// one, which then ends as skipped ("coalesced"). Returns {1, ''} when
/// deferred, {2, id_of_the_covering_job} when coalesced, {0, ''} when the
/// lease was lost.
pub(crate) static DEFER: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local id = ARGV[1]
local r = load(KEYS[3], id)
if not r or r.state ~= 'running' or r.token ~= ARGV[2] then return {0, ''} end
redis.call('ZREM', KEYS[1], id)
r.token = ''
local other = reclaim_unique(KEYS[4], KEYS[5], KEYS[3], id)
if other then
  r.state = 'skipped'
  r.finished = now
  save(KEYS[3], id, r)
  redis.call('HSET', KEYS[6], id,
    '{"status":"skipped","reason":"coalesced","joined":"' .. other .. '"}')
  redis.call('HDEL', KEYS[5], id)
  redis.call('ZADD', KEYS[7], now + tonumber(ARGV[5]), id)
  redis.call('HINCRBY', KEYS[8], 'skipped', 1)
  return {2, other}
end
r.state = 'scheduled'
r.attempts = math.max(r.attempts - 1, 0)
r.started = ''
r.run_at = now + tonumber(ARGV[3])
save(KEYS[3], id, r)
redis.call('HSET', KEYS[6], id, ARGV[4])
redis.call('ZADD', KEYS[2], r.run_at, id)
return {1, ''}
"#,
    )
});

/// KEYS: delayed, wait, live. ARGV: n.
/// Moves up to n due jobs (scheduled or retrying) to the head of the queue.
/// Returns {moved, ms until the next job is due, or -1 when none is scheduled}.
pub(crate) static PROMOTE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local r = load(KEYS[3], id)
  if r then
    r.state = 'pending'
    save(KEYS[3], id, r)
    redis.call('RPUSH', KEYS[2], id)
  end
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local due = -1
if nxt[2] then due = math.max(tonumber(nxt[2]) - now, 0) end
return {#ids, due}
"#,
    )
});

/// KEYS: active, wait, live, dead, finished, stats, errors, unique, uniq_of,
/// revoked, results. ARGV: n, max_lost, dead_retention_ms, result_retention_ms.
/// Takes back up to n jobs whose lease expired (their worker died) and
/// queues them again at the head, or buries them after max_lost losses; a
/// job revoked while its worker was gone ends `cancelled` instead.
/// Returns the number of jobs taken back.
pub(crate) static REAP: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local r = load(KEYS[3], id)
  if r then
    r.lost = r.lost + 1
    r.token = ''
    if redis.call('HDEL', KEYS[10], id) == 1 then
      r.state = 'cancelled'
      r.finished = now
      redis.call('HSET', KEYS[11], id, '{"status":"cancelled","reason":"revoked while its worker was gone"}')
      redis.call('ZADD', KEYS[5], now + tonumber(ARGV[4]), id)
      redis.call('HINCRBY', KEYS[6], 'cancelled', 1)
    elseif r.lost >= tonumber(ARGV[2]) then
      r.state = 'failed'
      r.finished = now
      redis.call('HSET', KEYS[7], id, 'lease expired ' .. r.lost .. ' times: the worker running it was lost each time')
      redis.call('ZADD', KEYS[4], now, id)
      redis.call('ZADD', KEYS[5], now + tonumber(ARGV[3]), id)
      redis.call('HINCRBY', KEYS[6], 'failed', 1)
    else
      -- A lost worker's attempt is not the job's failure: it does not use
      -- up the retry budget (losses are bounded by max_lost instead).
      r.state = 'pending'
      r.attempts = math.max(r.attempts - 1, 0)
      redis.call('RPUSH', KEYS[2], id)
    end
    save(KEYS[3], id, r)
    if r.state == 'pending' then reclaim_unique(KEYS[8], KEYS[9], KEYS[3], id) end
  end
end
return #ids
"#,
    )
});

/// KEYS: delayed, live, unique, finished, args, uniq_of. ARGV: id, retention_ms.
/// Cancels a pending, scheduled or retrying job. Returns 'cancelled',
/// 'not_found', or the state that prevents it ('running', 'succeeded', …).
pub(crate) static CANCEL: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local id = ARGV[1]
local r = load(KEYS[2], id)
if not r then return 'not_found' end
if r.state ~= 'pending' and r.state ~= 'scheduled' and r.state ~= 'retrying' then return r.state end
-- A pending id stays in the wait list as a tombstone that FETCH drops, so
-- cancelling never scans the backlog.
redis.call('ZREM', KEYS[1], id)
local uniq = redis.call('HGET', KEYS[6], id)
if uniq and redis.call('HGET', KEYS[3], uniq) == id then
  redis.call('HDEL', KEYS[3], uniq)
end
r.state = 'cancelled'
r.finished = now
r.run_at = ''
save(KEYS[2], id, r)
redis.call('HDEL', KEYS[5], id)
redis.call('HDEL', KEYS[6], id)
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[2]), id)
return 'cancelled'
"#,
    )
});

/// KEYS: dead, wait, live, finished, args. ARGV: id.
/// Re-enqueues a dead job with a fresh attempt budget. Returns 'queued',
/// 'not_found', 'no_args', or the state that prevents it.
pub(crate) static RESURRECT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local id = ARGV[1]
local r = load(KEYS[3], id)
if not r then return 'not_found' end
if r.state ~= 'failed' then return r.state end
if redis.call('HEXISTS', KEYS[5], id) == 0 then return 'no_args' end
redis.call('ZREM', KEYS[1], id)
redis.call('ZREM', KEYS[4], id)
r.state = 'pending'
r.attempts = 0
r.lost = 0
r.finished = ''
r.started = ''
save(KEYS[3], id, r)
redis.call('LPUSH', KEYS[2], id)
return 'queued'
"#,
    )
});

/// KEYS: finished, jobs, args, results, dead, live, errors, uniq_of, revoked. ARGV: n.
/// Deletes up to n records whose retention ran out. Returns how many.
pub(crate) static CLEANUP: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[5], id)
  for k = 2, 9 do
    if k ~= 5 then redis.call('HDEL', KEYS[k], id) end
  end
end
return #ids
"#,
    )
});

/// KEYS: live, revoked. ARGV: id.
/// Asks for a running job to be cancelled: marks it revoked (its worker
/// is told, and its heartbeat and the reaper look). Returns 'revoking', or
/// the state that makes a revoke moot ('pending', 'succeeded', …; pending
/// and scheduled jobs are cancelled instead), or 'not_found'.
pub(crate) static REVOKE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local r = load(KEYS[1], ARGV[1])
if not r then return 'not_found' end
if r.state ~= 'running' then return r.state end
redis.call('HSET', KEYS[2], ARGV[1], now)
return 'revoking'
"#,
    )
});
