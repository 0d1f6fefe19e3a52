//! A Redis distributed lock with a watchdog and a fencing counter.
//!
//! - **Acquire** is one script: `SET key token NX PX ttl` with a random
//!   token and, only when that succeeds, `INCR` of the lock's fence counter.
//!   The fence is strictly greater than that of every earlier holder. The
//!   same script records when, and for which owner (a job id), the lock was
//!   taken, which [`DistributedLock::holder`] reports.
//! - **Hold**: a watchdog task extends the lock at about a third of its TTL
//!   with a compare-and-expire script, so a long job keeps its lock; if an
//!   extension finds the lock gone (or someone else's), the guard is marked
//!   lost and the holder can stop.
//! - **Release** is compare-and-delete: only the holder's token deletes it,
//!   so a holder whose lock expired cannot release the next holder's lock.
//!   A guard dropped without a release (a cancelled or timed-out job)
//!   releases in the background; only a dead process leaves the lock to
//!   expire.
//! - **Fenced writes**: [`FencedWriter`] writes hash fields only if the writer's
//!   fence is not older than the newest fence that has written through it, so
//!   a worker that lost its lock (paused, partitioned) cannot overwrite what a
//!   newer holder wrote.
//!
//! There is no blocking acquire on purpose: a caller that finds the lock
//! held decides what to do (skip, or try again later).

use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::Script;
use tokio::task::JoinHandle;

use crate::cache::HashFields;
use crate::redis_pool::RedisPool;
use crate::telemetry::redis_span;
use tracing::Instrument as _;

/// KEYS: lock, fence, since, owner. ARGV: token, ttl_ms, owner. Returns the
/// new fence, or nil when held. Records the acquisition time (Redis clock,
/// ms) in `since` and who acquired it in `owner`.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local t = redis.call('TIME')
  redis.call('SET', KEYS[3], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  redis.call('SET', KEYS[4], ARGV[3])
  return redis.call('INCR', KEYS[2])
end
return false
"#,
    )
});

/// KEYS: lock, since, owner. Returns `{since_ms, owner}` of the current
/// holder (Redis clock), or nil when the lock is free.
static HOLDER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {tonumber(redis.call('GET', KEYS[2]) or '0'), redis.call('GET', KEYS[3]) or ''}
end
return false
"#,
    )
});

/// KEYS: lock. ARGV: token, ttl_ms. Returns 1 when extended, 0 when not ours.
static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#,
    )
});

/// KEYS: lock. ARGV: token. Returns 1 when deleted, 0 when not ours.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#,
    )
});

/// A named lock.
#[derive(Clone)]
pub struct DistributedLock {
    pool: RedisPool,
    key: String,
    fence_key: String,
    since_key: String,
    owner_key: String,
    ttl: Duration,
}

/// Who holds a lock, as [`DistributedLock::holder`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// When the holder acquired the lock (ms since the epoch, Redis clock).
    pub since_ms: i64,
    /// The owner the holder named when it acquired the lock (empty if none).
    pub owner: String,
}

/// Proof of holding a lock; extended by a watchdog until released or dropped.
pub struct LockGuard {
    lock: DistributedLock,
    token: String,
    fence: u64,
    lost: Arc<AtomicBool>,
    watchdog: JoinHandle<()>,
}

impl DistributedLock {
    /// The lock `key` (its fence counter is `key:fence`, the time of the
    /// latest acquisition `key:since`, its owner `key:owner`), expiring `ttl`
    /// after its holder's last extension. A key without a hash tag is put
    /// in one (`{key}`), so that on a Redis Cluster its companions live in
    /// its slot, where the scripts that touch them together run.
    pub fn new(pool: RedisPool, key: impl Into<String>, ttl: Duration) -> Self {
        let key = key.into();
        let key = if key.contains('{') {
            key
        } else {
            format!("{{{key}}}")
        };
        Self {
            fence_key: format!("{key}:fence"),
            since_key: format!("{key}:since"),
            owner_key: format!("{key}:owner"),
            pool,
            key,
            ttl: ttl.max(Duration::from_millis(30)),
        }
    }

    /// The lock's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Takes the lock if it is free; `None` when someone holds it. Never waits.
    pub async fn try_acquire(&self) -> redis::RedisResult<Option<LockGuard>> {
        self.try_acquire_for("").await
    }

    /// [`Self::try_acquire`], naming the owner (a job id, say) that
    /// [`Self::holder`] reports while the lock is held: a job whose earlier
    /// attempt died holding the lock can tell that attempt from another job.
    pub async fn try_acquire_for(&self, owner: &str) -> redis::RedisResult<Option<LockGuard>> {
        let token = ulid::Ulid::new().to_string();
        let (mut conn, tracker) = self.pool.get_durable();
        let fence: Option<u64> = tracker.track(
            ACQUIRE
                .key(&self.key)
                .key(&self.fence_key)
                .key(&self.since_key)
                .key(&self.owner_key)
                .arg(&token)
                .arg(self.ttl.as_millis() as u64)
                .arg(owner)
                .invoke_async(&mut conn)
                .instrument(redis_span("lock acquire", "EVALSHA"))
                .await,
        )?;
        let Some(fence) = fence else {
            return Ok(None);
        };
        // A lock (and its fence) lost at a failover would let a second
        // holder in with the same fence: wait for replicas (REDIS_WAIT_REPLICAS).
        self.pool.wait_for_replicas(&mut conn, &self.key).await;
        let lost = Arc::new(AtomicBool::new(false));
        let watchdog = tokio::spawn(watchdog(self.clone(), token.clone(), lost.clone()));
        Ok(Some(LockGuard {
            lock: self.clone(),
            token,
            fence,
            lost,
            watchdog,
        }))
    }

    /// The current holder: when it took the lock and the owner it named, or
    /// `None` when nobody holds it. Lets a caller that found the lock held
    /// tell a holder that started before it from one that started after, and
    /// an earlier attempt of its own from someone else.
    pub async fn holder(&self) -> redis::RedisResult<Option<Holder>> {
        let (mut conn, tracker) = self.pool.get();
        let held: Option<(i64, String)> = tracker.track(
            HOLDER
                .key(&self.key)
                .key(&self.since_key)
                .key(&self.owner_key)
                .invoke_async(&mut conn)
                .await,
        )?;
        Ok(held.map(|(since_ms, owner)| Holder { since_ms, owner }))
    }

    async fn extend(&self, token: &str) -> redis::RedisResult<bool> {
        let (mut conn, tracker) = self.pool.get();
        let ok: i64 = tracker.track(
            EXTEND
                .key(&self.key)
                .arg(token)
                .arg(self.ttl.as_millis() as u64)
                .invoke_async(&mut conn)
                .await,
        )?;
        Ok(ok == 1)
    }

    /// Deletes the lock if `token` holds it; `false` otherwise.
    pub async fn release_token(&self, token: &str) -> redis::RedisResult<bool> {
        let (mut conn, tracker) = self.pool.get();
        let ok: i64 = tracker.track(
            RELEASE
                .key(&self.key)
                .arg(token)
                .invoke_async(&mut conn)
                .instrument(redis_span("lock release", "EVALSHA"))
                .await,
        )?;
        Ok(ok == 1)
    }
}

/// Extends the lock every third of its TTL until it is lost or the task is aborted.
async fn watchdog(lock: DistributedLock, token: String, lost: Arc<AtomicBool>) {
    let every = lock.ttl / 3;
    let mut last_extended = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(every).await;
        match lock.extend(&token).await {
            Ok(true) => last_extended = tokio::time::Instant::now(),
            Ok(false) => {
                tracing::warn!(lock = %lock.key, "lock lost: it expired or was taken over");
                lost.store(true, Ordering::SeqCst);
                return;
            }
            // Unreachable Redis: the lock may expire while we cannot tell.
            // Once it might have, declare it lost rather than believe we hold it.
            Err(e) if last_extended.elapsed() >= lock.ttl - every => {
                tracing::warn!(lock = %lock.key, error = %e, "cannot extend the lock before it may expire; treating it as lost");
                lost.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) => tracing::warn!(lock = %lock.key, error = %e, "extending the lock failed"),
        }
    }
}

impl LockGuard {
    /// The fencing number of this acquisition: greater than every earlier one.
    pub fn fence(&self) -> u64 {
        self.fence
    }

    /// This holder's token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Whether the watchdog found the lock gone; the holder should stop.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Stops the watchdog and releases the lock. `false` if it was no longer ours.
    pub async fn release(mut self) -> redis::RedisResult<bool> {
        self.watchdog.abort();
        let token = std::mem::take(&mut self.token);
        self.lock.release_token(&token).await
    }

    /// Stops extending the lock without releasing it, so it expires after
    /// its TTL, as when the holder's process dies.
    pub fn abandon(mut self) {
        self.watchdog.abort();
        self.token.clear();
    }
}

impl Drop for LockGuard {
    /// A guard dropped without [`LockGuard::release`] (its job cancelled,
    /// timed out or panicking) stops the watchdog and releases the lock in
    /// the background, so the next holder need not wait for the TTL. Outside
    /// a runtime the lock expires after its TTL.
    fn drop(&mut self) {
        self.watchdog.abort();
        if self.token.is_empty() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (lock, token) = (self.lock.clone(), std::mem::take(&mut self.token));
            rt.spawn(async move {
                if let Err(e) = lock.release_token(&token).await {
                    tracing::warn!(lock = %lock.key, error = %e, "releasing a dropped lock failed; it will expire");
                }
            });
        }
    }
}

/// KEYS: one hash. ARGV: fence, ttl_ms, then field, value pairs. Sets the
/// fields unless the hash was written by a newer fence (its [`FENCE_FIELD`]),
/// records this fence and gives the hash its TTL: 1. Refused: 0, nothing set.
/// One key, so on Redis Cluster every hash is written where it lives.
const FENCED_HSET: &str = r#"
local fence = tonumber(ARGV[1])
local seen = tonumber(redis.call('HGET', KEYS[1], '#fence') or '0')
if seen > fence then return 0 end
for i = 3, #ARGV, 1000 do
  redis.call('HSET', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
if seen < fence then redis.call('HSET', KEYS[1], '#fence', ARGV[1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#;

/// The field of a fenced hash that holds the newest fence that wrote it.
/// `#` is outside the product-id alphabet, so no entry can be named so.
pub const FENCE_FIELD: &str = "#fence";

/// Writes hash fields only where the writer's fence is not older than the
/// newest fence that has written them, so a holder that lost its lock
/// (paused, partitioned) cannot overwrite what a newer holder wrote. Two
/// ways, by where the hashes live:
///
/// - **One server**: each [`FencedWriter::write`] is one optimistic
///   transaction on a connection of its own: `WATCH` the high-water key
///   and read it; refuse if a newer fence has written; else `MULTI`, raise
///   the high-water mark, one `HSET` per hash with its fields and a
///   `PEXPIRE` with the TTL, `EXEC`. If any other writer touched the
///   high-water key in between, `EXEC` does nothing and the check runs
///   again. A page is written whole or not at all.
/// - **Redis Cluster**, where the 256 price hashes live in many slots and
///   one transaction cannot span them: each hash keeps the newest fence
///   that wrote it in a field of its own ([`FENCE_FIELD`]), checked and
///   raised by a one-key script (`FENCED_HSET`) with the write itself, on
///   the node that holds it; a page is one pipeline per slot, all at once.
///   A stale writer is refused by every hash a newer holder has written; a
///   hash the newer holder has not reached yet takes the stale values
///   until the newer holder writes it.
///
/// Why two: over 1,000,000 products the script costs Redis about 1.6 times
/// what the transaction does (`PHASES=1 scripts/bench-recalc`: fenced
/// writes 2.2 s against 1.3–1.4 s), and one server is the common case.
pub struct FencedWriter {
    pool: RedisPool,
    conn: crate::redis_pool::Conn,
    fence: u64,
    ttl_ms: u64,
    how: Fencing,
}

/// How a [`FencedWriter`] checks fences.
enum Fencing {
    /// One server: a transaction watching this high-water key.
    Watch(String),
    /// A cluster: the per-hash script, by its SHA1, loaded on every node.
    Script(String),
}

/// [`FENCED_HSET`] as a script object, for its hash and `SCRIPT LOAD`.
static FENCED_HSET_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(FENCED_HSET));

/// Loads [`FENCED_HSET`] on every node (a restarted or promoted node may
/// not have it): `SCRIPT LOAD` goes to every node of a cluster.
async fn load_fenced_hset(conn: &mut crate::redis_pool::Conn) -> redis::RedisResult<String> {
    redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(FENCED_HSET)
        .query_async(conn)
        .await
}

impl FencedWriter {
    /// A writer for `fence`, on a connection of its own (`WATCH` is per
    /// connection, and bulk writes get a longer response timeout than the
    /// pool's). On one server the fences meet in `high_water_key`.
    pub async fn connect(
        pool: &RedisPool,
        high_water_key: impl Into<String>,
        fence: u64,
        ttl: Duration,
    ) -> redis::RedisResult<Self> {
        let mut conn = pool.dedicated().await?;
        let how = if pool.is_cluster() {
            let sha = load_fenced_hset(&mut conn).await?;
            debug_assert_eq!(sha, FENCED_HSET_SCRIPT.get_hash());
            Fencing::Script(sha)
        } else {
            Fencing::Watch(high_water_key.into())
        };
        Ok(Self {
            conn,
            pool: pool.clone(),
            fence,
            ttl_ms: ttl.as_millis().max(1) as u64,
            how,
        })
    }

    /// Sets the fields of each hash in `hashes` and gives each hash the TTL.
    /// Returns the number of fields written, or `None` when a newer fence
    /// had written one of the hashes (that hash is left as it was).
    pub async fn write(&mut self, hashes: &[HashFields]) -> redis::RedisResult<Option<usize>> {
        let span = match self.how {
            Fencing::Watch(_) => {
                let span = redis_span("fenced write", "BATCH HSET");
                span.record("db.operation.batch.size", hashes.len() * 2);
                span
            }
            Fencing::Script(_) => {
                let span = redis_span("fenced write", "BATCH EVALSHA");
                span.record("db.operation.batch.size", hashes.len());
                span
            }
        };
        let written = match &self.how {
            Fencing::Watch(key) => {
                let key = key.clone();
                self.write_watched(&key, hashes).instrument(span).await?
            }
            Fencing::Script(_) => self.write_scripted(hashes).instrument(span).await?,
        };
        Ok(written.then(|| hashes.iter().map(|(_, fields)| fields.len()).sum()))
    }

    /// The transaction on one server; `false` when a newer fence has written.
    async fn write_watched(
        &mut self,
        fence_key: &str,
        hashes: &[HashFields],
    ) -> redis::RedisResult<bool> {
        loop {
            let (seen,): (Option<u64>,) = redis::pipe()
                .cmd("WATCH")
                .arg(fence_key)
                .ignore()
                .cmd("GET")
                .arg(fence_key)
                .query_async(&mut self.conn)
                .await?;
            let seen = seen.unwrap_or(0);
            if self.fence < seen {
                redis::cmd("UNWATCH")
                    .query_async::<()>(&mut self.conn)
                    .await?;
                return Ok(false);
            }
            let mut tx = redis::pipe();
            tx.atomic();
            if self.fence > seen {
                tx.cmd("SET").arg(fence_key).arg(self.fence).ignore();
            }
            for (key, fields) in hashes {
                tx.hset_multiple(key, fields)
                    .ignore()
                    .pexpire(key, self.ttl_ms as i64)
                    .ignore();
            }
            // Nil: the high-water key changed after WATCH; look again.
            let done: Option<redis::Value> = tx.query_async(&mut self.conn).await?;
            if done.is_some() {
                return Ok(true);
            }
        }
    }

    /// The per-hash scripts on a cluster; `false` when a newer fence had
    /// written one of the hashes.
    async fn write_scripted(&mut self, hashes: &[HashFields]) -> redis::RedisResult<bool> {
        let answers = match self.send(hashes).await {
            // A node that restarted, or a replica promoted since the load,
            // lacks the script: load it again and write the page again
            // (setting the same fields twice is harmless).
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                load_fenced_hset(&mut self.conn).await?;
                self.send(hashes).await?
            }
            other => other?,
        };
        Ok(!answers.iter().any(|v| matches!(v, redis::Value::Int(0))))
    }

    /// One `EVALSHA` of [`FENCED_HSET`] per hash, pipelined.
    async fn send(&mut self, hashes: &[HashFields]) -> redis::RedisResult<Vec<redis::Value>> {
        let Fencing::Script(sha) = &self.how else {
            return Ok(Vec::new());
        };
        let cmds = hashes
            .iter()
            .map(|(key, fields)| {
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(sha)
                    .arg(1)
                    .arg(key)
                    .arg(self.fence)
                    .arg(self.ttl_ms);
                for (field, value) in fields {
                    cmd.arg(field).arg(value);
                }
                (key.clone(), cmd)
            })
            .collect();
        self.pool.query_keyed(&mut self.conn, cmds).await
    }
}
