//! Recording what each handler did: [`QueueAck`] sees every outcome and
//! writes it to the queue (success, a retry scheduled in Redis with the
//! job's backoff, a deferral, or the dead set), batching successes through
//! one [`Completer`] per queue; a write that fails is retried until
//! `ACK_GIVE_UP_AFTER`, after which the lease expiry runs the job again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::*;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use queue::{DeferOutcome, JobError, JobOutcome, Leased, Queue, Queues};
use shared::redis_pool::{INITIAL_RECONNECT_DELAY, MAX_RECONNECT_DELAY};

use super::*;

/// How long an outcome is retried while Redis is unreachable before the
/// worker gives up on it; the job's lease then runs out and it runs again.
pub(crate) const ACK_GIVE_UP_AFTER: Duration = Duration::from_secs(60);

/// Most outcomes recorded in one script call.
pub(crate) const COMPLETION_BATCH: usize = 256;

/// One success waiting to be recorded, and where to report whether it was.
pub(crate) type Reply = tokio::sync::oneshot::Sender<Result<bool, String>>;

/// Records successes in batches: whatever outcomes are waiting when the
/// previous batch returns go into the next script call, so under load one
/// round trip records many jobs, and alone a job is recorded at once.
#[derive(Clone)]
pub(crate) struct Completer {
    pub(crate) tx: tokio::sync::mpsc::UnboundedSender<(Leased, JobOutcome, Reply)>,
}

impl Completer {
    /// Starts the batching task; it ends when the last handle is dropped.
    pub(crate) fn spawn(queue: Queue) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Leased, JobOutcome, Reply)>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut items = vec![first];
                while items.len() < COMPLETION_BATCH {
                    match rx.try_recv() {
                        Ok(item) => items.push(item),
                        Err(_) => break,
                    }
                }
                let (done, replies): (Vec<_>, Vec<_>) = items
                    .into_iter()
                    .map(|(job, outcome, reply)| ((job, outcome.state, outcome.result), reply))
                    .unzip();
                match queue.complete_many(&done).await {
                    Ok(flags) => {
                        for (reply, ok) in replies.into_iter().zip(flags) {
                            let _ = reply.send(Ok(ok));
                        }
                    }
                    Err(e) => {
                        for reply in replies {
                            let _ = reply.send(Err(e.to_string()));
                        }
                    }
                }
            }
        });
        Self { tx }
    }

    /// Records one success; `Ok(false)` when the lease was lost meanwhile.
    pub(crate) async fn complete(&self, job: Leased, outcome: JobOutcome) -> Result<bool, String> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx
            .send((job, outcome, reply))
            .map_err(|_| "the completion task has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the completion task has stopped".to_string())?
    }
}

/// A [`Completer`] per queue: successes are batched per queue, where their
/// script runs.
#[derive(Clone)]
pub(crate) struct Completers(Arc<HashMap<String, Completer>>);

impl Completers {
    /// One batching task per queue of `queues`.
    pub(crate) fn spawn(queues: &Queues) -> Self {
        Self(Arc::new(
            queues
                .iter()
                .map(|(name, q)| (name.to_string(), Completer::spawn(q.clone())))
                .collect(),
        ))
    }

    pub(crate) fn of(&self, queue: &str) -> Option<&Completer> {
        self.0.get(queue)
    }
}

/// Records each handler outcome in Redis.
#[derive(Clone)]
pub(crate) struct QueueAck {
    pub(crate) queues: Queues,
    pub(crate) completers: Completers,
    pub(crate) inflight: InFlight,
}

/// What to record for one outcome.
#[derive(Debug)]
pub(crate) enum Verdict {
    Done(JobOutcome),
    Defer(Duration, serde_json::Value),
    Retry(String, Duration),
    Bury(String),
}

pub(crate) fn verdict(res: &Result<JobOutcome, BoxDynError>, job: &Leased) -> Verdict {
    match res {
        Ok(JobOutcome {
            defer_for: Some(after),
            result,
            ..
        }) => Verdict::Defer(*after, result.clone()),
        Ok(outcome) => Verdict::Done(outcome.clone()),
        Err(e) => {
            let permanent = match e.downcast_ref::<JobError>() {
                Some(JobError::Permanent(_)) => true,
                Some(JobError::Retryable(_)) => false,
                None => e.downcast_ref::<AbortError>().is_some(),
            };
            let message = e.to_string();
            let attempts = job.record.attempts;
            if permanent {
                Verdict::Bury(format!("permanent: {message}"))
            } else if attempts >= job.record.max_attempts {
                Verdict::Bury(format!("gave up after {attempts} attempts: {message}"))
            } else {
                Verdict::Retry(message, job.record.backoff.delay(attempts))
            }
        }
    }
}

impl Acknowledge<JobOutcome> for QueueAck {
    type Error = std::io::Error;
    type Future = BoxFuture<'static, Result<(), Self::Error>>;

    fn ack(
        &mut self,
        res: &Result<JobOutcome, BoxDynError>,
        ctx: &ExecutionContext,
    ) -> Self::Future {
        let id = ctx.task_id().map(|t| t.to_string()).unwrap_or_default();
        let token = ctx
            .metadata()
            .get(TOKEN_KEY)
            .unwrap_or_default()
            .to_string();
        let Some(job) = self.inflight.get(&id, &token) else {
            // The heartbeat found its lease lost; another worker owns it now.
            tracing::warn!(job_id = %id, "outcome of a job whose lease was lost; discarded");
            return async { Ok(()) }.boxed();
        };
        let verdict = verdict(res, &job);
        let (Some(queue), Some(completer)) = (
            self.queues.get(&job.queue).cloned(),
            self.completers.of(&job.queue).cloned(),
        ) else {
            tracing::error!(job_id = %job.id, queue = %job.queue, "outcome of a job from a queue this worker does not know; its lease will expire");
            return async { Ok(()) }.boxed();
        };
        let inflight = self.inflight.clone();
        async move {
            crate::metrics::record_outcome(&job.record.name, verdict_label(&verdict));
            let started = tokio::time::Instant::now();
            let mut delay = INITIAL_RECONNECT_DELAY;
            // The job stays in InFlight, so the heartbeat keeps its lease
            // alive while the outcome waits for Redis.
            loop {
                let recorded = match &verdict {
                    Verdict::Done(o) => completer.complete(job.clone(), o.clone()).await,
                    Verdict::Defer(after, note) => match queue.defer(&job, *after, note).await {
                        Ok(DeferOutcome::Coalesced(other)) => {
                            tracing::info!(job_id = %job.id, joined = %other, "deferred job coalesced into a newer one");
                            Ok(true)
                        }
                        Ok(DeferOutcome::Deferred) => Ok(true),
                        Ok(DeferOutcome::LeaseLost) => Ok(false),
                        Err(e) => Err(e.to_string()),
                    },
                    Verdict::Retry(err, after) => queue
                        .retry_later(&job, err, *after)
                        .await
                        .map_err(|e| e.to_string()),
                    Verdict::Bury(err) => queue.bury(&job, err).await.map_err(|e| e.to_string()),
                };
                match recorded {
                    Ok(true) => {
                        tracing::debug!(job_id = %job.id, job = %job.record.name, ?verdict, "outcome recorded");
                        break;
                    }
                    Ok(false) => {
                        tracing::warn!(job_id = %job.id, "lease lost before the outcome was recorded; discarded");
                        break;
                    }
                    Err(e) if started.elapsed() < ACK_GIVE_UP_AFTER => {
                        tracing::warn!(job_id = %job.id, error = %e, retry_in = ?delay, "recording the outcome failed");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(MAX_RECONNECT_DELAY);
                    }
                    Err(e) => {
                        tracing::error!(job_id = %job.id, error = %e, "giving up recording the outcome; the job will run again when its lease expires");
                        break;
                    }
                }
            }
            inflight.take(&job.id, job.token());
            Ok(())
        }
        .boxed()
    }
}

pub(crate) fn verdict_label(v: &Verdict) -> &'static str {
    match v {
        Verdict::Done(o) if o.state == queue::JobState::Skipped => "skipped",
        Verdict::Done(o) if o.state == queue::JobState::Cancelled => "cancelled",
        Verdict::Done(_) => "succeeded",
        Verdict::Defer(..) => "deferred",
        Verdict::Retry(..) => "retried",
        Verdict::Bury(_) => "failed",
    }
}
