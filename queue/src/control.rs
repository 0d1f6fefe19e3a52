//! Inspection and control for the api and operators: a job's status,
//! cancel, revoke, the dead set and its resurrection, depths, pause and
//! resume, and the schedules' last runs.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::record::*;
use crate::scripts;
use crate::*;

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

impl Queue {
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
        self.records(ids, None).await
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

    /// Asks for a running job to be cancelled (see `REVOKE` in
    /// `scripts`): marks it revoked, and tells every worker on
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
}
