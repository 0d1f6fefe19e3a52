//! The queue's Lua scripts: every state change is one atomic script.
//!
//! All keys of one queue share a hash tag and every key a script touches
//! arrives in `KEYS`, so the queue works on Redis Cluster. Job records are
//! fields of one hash (`jobs`) rather than a key per job for the same reason;
//! their retention is enforced by the `finished` sorted set and [`CLEANUP`].
//! Every script that walks a collection takes a bounded batch (`LIMIT 0 n`,
//! `RPOP key n`), so no script's cost grows with the backlog.
//!
//! Records are JSON objects decoded and re-encoded with cjson. Job arguments
//! and results live in other fields as opaque strings, so cjson never
//! rewrites a payload's numbers.

use std::sync::LazyLock;

use redis::Script;

/// Prepended to every script: `now` is the Redis server's clock in ms, so
/// leases and delays never depend on the clocks of the machines involved.
const PRELUDE: &str = "local __t = redis.call('TIME')\nlocal now = tonumber(__t[1]) * 1000 + math.floor(tonumber(__t[2]) / 1000)\n";

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

/// KEYS: wait, delayed, jobs, args, unique.
/// ARGV: id, record, args, delay_ms (0 = now), unique_key ('' = none).
/// Returns {1, id} when queued, {0, existing_id} when a pending job with the
/// same unique key already exists.
pub(crate) static PUSH: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local id, uniq = ARGV[1], ARGV[5]
if uniq ~= '' then
  local existing = redis.call('HGET', KEYS[5], uniq)
  if existing then
    local rec = redis.call('HGET', KEYS[3], existing)
    if rec then
      local state = cjson.decode(rec).state
      if state == 'pending' or state == 'scheduled' then return {0, existing} end
    end
  end
  redis.call('HSET', KEYS[5], uniq, id)
end
local r = cjson.decode(ARGV[2])
local delay = tonumber(ARGV[4])
r.enqueued_at = now
if delay > 0 then
  r.state = 'scheduled'
  r.run_at = now + delay
else
  r.state = 'pending'
end
redis.call('HSET', KEYS[3], id, cjson.encode(r))
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

/// KEYS: wait, active, jobs, args, unique.
/// ARGV: n, worker, lease_ms.
/// Moves up to n pending jobs to running under a lease. Returns a flat list
/// {id, record, args, ...}. Cancelled tombstones are dropped on the way.
pub(crate) static FETCH: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local out = {}
local ids = redis.call('RPOP', KEYS[1], tonumber(ARGV[1]))
if not ids then return out end
local deadline = now + tonumber(ARGV[3])
for _, id in ipairs(ids) do
  local rec = redis.call('HGET', KEYS[3], id)
  if rec then
    local r = cjson.decode(rec)
    if r.state == 'pending' then
      r.state = 'running'
      r.attempts = (r.attempts or 0) + 1
      r.started_at = now
      r.worker = ARGV[2]
      r.token = ARGV[2] .. ':' .. r.attempts
      if r.unique_key and redis.call('HGET', KEYS[5], r.unique_key) == id then
        redis.call('HDEL', KEYS[5], r.unique_key)
      end
      local enc = cjson.encode(r)
      redis.call('HSET', KEYS[3], id, enc)
      redis.call('ZADD', KEYS[2], deadline, id)
      out[#out + 1] = id
      out[#out + 1] = enc
      out[#out + 1] = redis.call('HGET', KEYS[4], id) or ''
    end
  end
end
return out
"#,
    )
});

/// KEYS: active, jobs, finished, args, results, stats.
/// ARGV: id, token, state ('succeeded'|'skipped'), result, retention_ms.
/// Returns 1, or 0 when the lease was lost (the result is then discarded).
pub(crate) static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local id = ARGV[1]
local rec = redis.call('HGET', KEYS[2], id)
if not rec then return 0 end
local r = cjson.decode(rec)
if r.state ~= 'running' or r.token ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], id)
r.state = ARGV[3]
r.finished_at = now
r.token = nil
r.error = nil
redis.call('HSET', KEYS[2], id, cjson.encode(r))
redis.call('HSET', KEYS[5], id, ARGV[4])
redis.call('HDEL', KEYS[4], id)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[5]), id)
redis.call('HINCRBY', KEYS[6], ARGV[3], 1)
return 1
"#,
    )
});

/// KEYS: active, delayed, jobs, stats.
/// ARGV: id, token, error, delay_ms.
/// Schedules a retry. Returns 1, or 0 when the lease was lost.
pub(crate) static RETRY: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local id = ARGV[1]
local rec = redis.call('HGET', KEYS[3], id)
if not rec then return 0 end
local r = cjson.decode(rec)
if r.state ~= 'running' or r.token ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], id)
r.state = 'retrying'
r.error = ARGV[3]
r.run_at = now + tonumber(ARGV[4])
r.token = nil
redis.call('HSET', KEYS[3], id, cjson.encode(r))
redis.call('ZADD', KEYS[2], r.run_at, id)
redis.call('HINCRBY', KEYS[4], 'retried', 1)
return 1
"#,
    )
});

/// KEYS: active, dead, jobs, finished, stats.
/// ARGV: id, token, error, retention_ms.
/// Moves a job to the dead set. Returns 1, or 0 when the lease was lost.
pub(crate) static BURY: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local id = ARGV[1]
local rec = redis.call('HGET', KEYS[3], id)
if not rec then return 0 end
local r = cjson.decode(rec)
if r.state ~= 'running' or r.token ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], id)
r.state = 'failed'
r.error = ARGV[3]
r.finished_at = now
r.token = nil
redis.call('HSET', KEYS[3], id, cjson.encode(r))
redis.call('ZADD', KEYS[2], now, id)
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[4]), id)
redis.call('HINCRBY', KEYS[5], 'failed', 1)
return 1
"#,
    )
});

/// KEYS: active, jobs. ARGV: lease_ms, id1, token1, id2, token2, …
/// Extends the leases still held; returns the ids whose lease was lost.
pub(crate) static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local lost = {}
for i = 2, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local rec = redis.call('HGET', KEYS[2], id)
  local ok = false
  if rec then
    local r = cjson.decode(rec)
    ok = r.state == 'running' and r.token == token
  end
  if ok then
    redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), id)
  else
    lost[#lost + 1] = id
  end
end
return lost
"#,
    )
});

/// KEYS: active, wait, jobs. ARGV: id, token.
/// Puts a job this worker holds back at the head of the queue (graceful
/// shutdown). The interrupted attempt is not counted.
pub(crate) static REQUEUE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local id = ARGV[1]
local rec = redis.call('HGET', KEYS[3], id)
if not rec then return 0 end
local r = cjson.decode(rec)
if r.state ~= 'running' or r.token ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], id)
r.state = 'pending'
r.attempts = math.max((r.attempts or 1) - 1, 0)
r.token = nil
r.started_at = nil
redis.call('HSET', KEYS[3], id, cjson.encode(r))
redis.call('RPUSH', KEYS[2], id)
return 1
"#,
    )
});

/// KEYS: delayed, wait, jobs. ARGV: n.
/// Moves up to n due jobs (scheduled or retrying) to the head of the queue.
/// Returns {moved, ms until the next job is due, or -1 when none is scheduled}.
pub(crate) static PROMOTE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local rec = redis.call('HGET', KEYS[3], id)
  if rec then
    local r = cjson.decode(rec)
    r.state = 'pending'
    redis.call('HSET', KEYS[3], id, cjson.encode(r))
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

/// KEYS: active, wait, jobs, dead, finished, stats.
/// ARGV: n, max_lost, dead_retention_ms.
/// Takes back up to n jobs whose lease expired (their worker died) and
/// queues them again at the head, or buries them after max_lost losses.
/// Returns the number of jobs taken back.
pub(crate) static REAP: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local rec = redis.call('HGET', KEYS[3], id)
  if rec then
    local r = cjson.decode(rec)
    r.leases_lost = (r.leases_lost or 0) + 1
    r.token = nil
    if r.leases_lost >= tonumber(ARGV[2]) then
      r.state = 'failed'
      r.error = 'lease expired ' .. r.leases_lost .. ' times: the worker running it was lost each time'
      r.finished_at = now
      redis.call('ZADD', KEYS[4], now, id)
      redis.call('ZADD', KEYS[5], now + tonumber(ARGV[3]), id)
      redis.call('HINCRBY', KEYS[6], 'failed', 1)
    else
      r.state = 'pending'
      redis.call('RPUSH', KEYS[2], id)
    end
    redis.call('HSET', KEYS[3], id, cjson.encode(r))
  end
end
return #ids
"#,
    )
});

/// KEYS: delayed, jobs, unique, finished, args. ARGV: id, retention_ms.
/// Cancels a pending or scheduled job. Returns 'cancelled', 'not_found', or
/// the state that prevents it ('running', 'succeeded', …).
pub(crate) static CANCEL: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local id = ARGV[1]
local rec = redis.call('HGET', KEYS[2], id)
if not rec then return 'not_found' end
local r = cjson.decode(rec)
if r.state ~= 'pending' and r.state ~= 'scheduled' and r.state ~= 'retrying' then return r.state end
-- A pending id stays in the wait list as a tombstone that FETCH drops, so
-- cancelling never scans the backlog.
redis.call('ZREM', KEYS[1], id)
if r.unique_key and redis.call('HGET', KEYS[3], r.unique_key) == id then
  redis.call('HDEL', KEYS[3], r.unique_key)
end
r.state = 'cancelled'
r.finished_at = now
redis.call('HSET', KEYS[2], id, cjson.encode(r))
redis.call('HDEL', KEYS[5], id)
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[2]), id)
return 'cancelled'
"#,
    )
});

/// KEYS: dead, wait, jobs, finished, args. ARGV: id.
/// Re-enqueues a dead job with a fresh attempt budget. Returns 'queued',
/// 'not_found', 'no_args', or the state that prevents it.
pub(crate) static RESURRECT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local id = ARGV[1]
local rec = redis.call('HGET', KEYS[3], id)
if not rec then return 'not_found' end
local r = cjson.decode(rec)
if r.state ~= 'failed' then return r.state end
if redis.call('HEXISTS', KEYS[5], id) == 0 then return 'no_args' end
redis.call('ZREM', KEYS[1], id)
redis.call('ZREM', KEYS[4], id)
r.state = 'pending'
r.attempts = 0
r.leases_lost = 0
r.finished_at = nil
r.started_at = nil
redis.call('HSET', KEYS[3], id, cjson.encode(r))
redis.call('LPUSH', KEYS[2], id)
return 'queued'
"#,
    )
});

/// KEYS: finished, jobs, args, results, dead. ARGV: n.
/// Deletes up to n records whose retention ran out. Returns how many.
pub(crate) static CLEANUP: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
  redis.call('HDEL', KEYS[4], id)
  redis.call('ZREM', KEYS[5], id)
end
return #ids
"#,
    )
});
