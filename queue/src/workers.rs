//! The live worker registry (`celery inspect active`): every worker reports
//! itself on each heartbeat, and `GET /api/v1/workers` lists those whose
//! registration has not expired.
//!
//! A report lives in three fields of one hash slot ([`shared::keys::Keys::workers`]):
//! the report's JSON, the Redis-clock time of its last heartbeat, and its
//! expiry (that time plus the worker's lease) in a sorted set. A worker that
//! stops heartbeating drops out of the list once its lease has passed (and
//! its fields are deleted by the next heartbeat of any worker); a graceful
//! stop removes it at once.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::Script;
use serde::{Deserialize, Serialize};

use shared::keys::Keys;
use shared::redis_pool::RedisPool;

/// Registrations expired longer than this are deleted, a bounded number
/// per heartbeat.
const PRUNE_BATCH: usize = 100;

/// A job a worker holds now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HeldJob {
    /// The task id.
    pub id: String,
    /// Its job type.
    #[serde(rename = "type")]
    pub job_type: String,
    /// Its queue.
    pub queue: String,
    /// When this attempt started (Redis clock).
    pub started_at: Option<DateTime<Utc>>,
}

/// What a worker says about itself on each heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkerReport {
    /// The worker id (host, pid, a random suffix).
    pub id: String,
    /// The host it runs on.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// Its version (the worker crate's).
    pub version: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// The queues it consumes, in its `WORKER_QUEUES` order.
    pub queues: Vec<String>,
    /// Its slots (`WORKER_CONCURRENCY`).
    pub concurrency: usize,
    /// Slots running a handler now.
    pub busy: usize,
    /// The jobs it runs now.
    pub jobs: Vec<HeldJob>,
    /// The schedules its scheduler runs.
    #[serde(default)]
    pub schedules: Vec<crate::schedule::ScheduleDef>,
}

/// A live worker as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkerInfo {
    /// Its report.
    #[serde(flatten)]
    pub report: WorkerReport,
    /// Its last heartbeat (Redis clock).
    pub last_heartbeat: Option<DateTime<Utc>>,
}

/// KEYS: info, beats, expires. ARGV: id, report (JSON), ttl_ms, prune batch.
/// Writes the report and deletes a bounded batch of expired registrations.
static BEAT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/worker_beat.lua")));

/// KEYS: info, beats, expires. Returns {id, report, beat, ...} for every
/// registration that has not expired.
static LIST: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/worker_list.lua")));

/// KEYS: info, beats, expires. ARGV: id.
static REMOVE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/worker_remove.lua")));

/// The registry, over one namespace.
#[derive(Clone)]
pub struct WorkerRegistry {
    pool: RedisPool,
    keys: [String; 3],
}

impl WorkerRegistry {
    /// The registry of namespace `namespace`.
    pub fn new(pool: RedisPool, namespace: &str) -> Self {
        Self {
            pool,
            keys: Keys::new(namespace).workers(),
        }
    }

    fn invocation<'a>(&self, script: &'a Script) -> redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        for k in &self.keys {
            inv.key(k);
        }
        inv
    }

    /// Registers (or refreshes) `report`, valid for `ttl` unless refreshed.
    pub async fn beat(&self, report: &WorkerReport, ttl: Duration) -> redis::RedisResult<()> {
        let json = serde_json::to_string(report).map_err(|e| {
            redis::RedisError::from((
                redis::ErrorKind::Client,
                "encoding a worker report",
                e.to_string(),
            ))
        })?;
        let (mut conn, tracker) = self.pool.get();
        let _: i64 = tracker.track(
            self.invocation(&BEAT)
                .arg(&report.id)
                .arg(json)
                .arg(ttl.as_millis() as u64)
                .arg(PRUNE_BATCH)
                .invoke_async(&mut conn)
                .await,
        )?;
        Ok(())
    }

    /// Removes worker `id` (a graceful stop).
    pub async fn remove(&self, id: &str) -> redis::RedisResult<()> {
        let (mut conn, tracker) = self.pool.get();
        let _: i64 = tracker.track(
            self.invocation(&REMOVE)
                .arg(id)
                .invoke_async(&mut conn)
                .await,
        )?;
        Ok(())
    }

    /// Every live worker, by id. A report that does not decode (written by
    /// another version) is logged and left out.
    pub async fn list(&self) -> redis::RedisResult<Vec<WorkerInfo>> {
        let (mut conn, tracker) = self.pool.get();
        let flat: Vec<String> =
            tracker.track(self.invocation(&LIST).invoke_async(&mut conn).await)?;
        let mut out: Vec<WorkerInfo> = flat
            .chunks_exact(3)
            .filter_map(|c| match serde_json::from_str::<WorkerReport>(&c[1]) {
                Ok(report) => Some(WorkerInfo {
                    report,
                    last_heartbeat: c[2].parse().ok().and_then(crate::ms_to_datetime),
                }),
                Err(e) => {
                    tracing::warn!(worker = %c[0], error = %e, "unreadable worker report; left out");
                    None
                }
            })
            .collect();
        out.sort_by(|a, b| a.report.id.cmp(&b.report.id));
        Ok(out)
    }
}
