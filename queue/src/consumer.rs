//! The worker side: leasing jobs, waiting for work, recording outcomes
//! (success, retry, defer, bury), heartbeats and requeue on shutdown.
//! Every outcome call carries the lease token: an attempt whose lease was
//! lost can no longer finish its job.

use std::time::Duration;

use crate::record::*;
use crate::scripts;
use crate::*;

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

impl Queue {
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
            shared::telemetry::record_remote_client_span(
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
        blocking: &mut shared::redis_pool::Conn,
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
}
