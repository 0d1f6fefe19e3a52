//! The handlers running in this process, and the two ways one is stopped
//! before it returns: a time limit, and a revoke.
//!
//! Every handler gets a cancellation token ([`crate::registry::JobContext::cancel`]).
//! - **Time limits** (`TIME_LIMIT_<JOB_TYPE>`): at the soft limit the token
//!   fires, so a cooperative handler stops cleanly; at the hard limit the
//!   handler is dropped and the attempt fails, retryable, with
//!   `time_limit_exceeded` (the job's retry policy decides what follows).
//! - **Revoke** (`DELETE /api/v1/tasks/{id}` on a running job): the api
//!   marks the job revoked and says so on the control channel; this process,
//!   if it holds the job, fires its token at once and, after
//!   `WORKER_REVOKE_GRACE_SECS`, drops the handler. Either way the job ends
//!   `cancelled`. A revoke that arrives before the handler starts (the job
//!   still prefetched) cancels it when it starts. A missed message is
//!   caught by the next heartbeat, which reports revoked jobs.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use queue::workers::HeldJob;
use queue::{JobError, JobOutcome, TimeLimit};
use tokio_util::sync::CancellationToken;

/// The reason a revoked job's result gives.
pub(crate) const REVOKED: &str = "revoked";

struct Entry {
    /// The job, as the worker registry shows it.
    job: HeldJob,
    /// Fired to ask the handler to stop.
    cancel: CancellationToken,
    /// Fired to drop it.
    kill: CancellationToken,
    /// Whether a revoke (not a time limit) fired the tokens.
    revoked: Arc<AtomicBool>,
}

#[derive(Default)]
struct Inner {
    running: HashMap<String, Entry>,
    /// Revoked before their handler started.
    early: HashSet<String>,
}

/// The running handlers, by job id.
#[derive(Clone, Default)]
pub(crate) struct Running(Arc<Mutex<Inner>>);

/// One handler's tokens while it runs; dropping it forgets the job.
pub(crate) struct Guard {
    running: Running,
    id: String,
    /// The handler's cancellation token.
    pub cancel: CancellationToken,
    kill: CancellationToken,
    revoked: Arc<AtomicBool>,
}

impl Running {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a handler about to start; a job revoked while it waited
    /// starts cancelled.
    pub(crate) fn start(&self, job: HeldJob) -> Guard {
        let id = job.id.clone();
        let id = id.as_str();
        let (cancel, kill) = (CancellationToken::new(), CancellationToken::new());
        let revoked = Arc::new(AtomicBool::new(false));
        let mut inner = self.lock();
        if inner.early.remove(id) {
            revoked.store(true, Ordering::SeqCst);
            cancel.cancel();
            kill.cancel();
        }
        inner.running.insert(
            id.to_string(),
            Entry {
                job,
                cancel: cancel.clone(),
                kill: kill.clone(),
                revoked: revoked.clone(),
            },
        );
        Guard {
            running: self.clone(),
            id: id.to_string(),
            cancel,
            kill,
            revoked,
        }
    }

    /// Revokes job `id` if this process runs it (or holds it, `held`):
    /// fires its token now and drops its handler after `grace`. Returns
    /// whether the job was found.
    pub(crate) fn revoke(&self, id: &str, held: bool, grace: Duration) -> bool {
        let mut inner = self.lock();
        match inner.running.get(id) {
            Some(e) => {
                if !e.revoked.swap(true, Ordering::SeqCst) {
                    tracing::info!(job_id = %id, grace = ?grace, "revoked: cancelling");
                    e.cancel.cancel();
                    let kill = e.kill.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(grace).await;
                        kill.cancel();
                    });
                }
                true
            }
            None if held => {
                inner.early.insert(id.to_string());
                true
            }
            None => false,
        }
    }

    /// The jobs whose handlers run now, by start time.
    pub(crate) fn held(&self) -> Vec<HeldJob> {
        let mut jobs: Vec<HeldJob> = self
            .lock()
            .running
            .values()
            .map(|e| e.job.clone())
            .collect();
        jobs.sort_by(|a, b| (a.started_at, &a.id).cmp(&(b.started_at, &b.id)));
        jobs
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut inner = self.running.lock();
        inner.running.remove(&self.id);
        inner.early.remove(&self.id);
    }
}

impl Guard {
    /// Runs `handler` under the job's time limit and its revoke: returns its
    /// outcome, a `time_limit_exceeded` failure past the hard limit, or
    /// `cancelled` when it was revoked (whatever the handler returned).
    pub(crate) async fn run<F>(
        &self,
        job_type: &str,
        limit: Option<TimeLimit>,
        handler: F,
    ) -> Result<JobOutcome, JobError>
    where
        F: Future<Output = Result<JobOutcome, JobError>>,
    {
        tokio::pin!(handler);
        let far = Duration::from_secs(100 * 365 * 86_400);
        let soft = tokio::time::sleep(limit.map_or(far, |l| l.soft));
        let hard = tokio::time::sleep(limit.map_or(far, |l| l.hard));
        tokio::pin!(soft, hard);
        let mut soft_fired = false;
        let outcome = loop {
            tokio::select! {
                res = &mut handler => break res,
                () = &mut soft, if !soft_fired => {
                    soft_fired = true;
                    crate::metrics::record_time_limited(job_type, "soft");
                    tracing::warn!(job_id = %self.id, job = job_type, "soft time limit reached: asking the handler to stop");
                    self.cancel.cancel();
                }
                () = &mut hard => {
                    crate::metrics::record_time_limited(job_type, "hard");
                    let hard = limit.map_or(far, |l| l.hard);
                    tracing::warn!(job_id = %self.id, job = job_type, "hard time limit reached: dropping the handler");
                    break Err(JobError::Retryable(format!(
                        "time_limit_exceeded: {job_type} ran past its hard limit of {:.1} s",
                        hard.as_secs_f64()
                    )));
                }
                () = self.kill.cancelled() => {
                    tracing::warn!(job_id = %self.id, job = job_type, "revoked: the handler did not stop in time; dropped");
                    break Ok(JobOutcome::cancelled(REVOKED));
                }
            }
        };
        if self.revoked.load(Ordering::SeqCst) {
            crate::metrics::record_revoked(job_type);
            return Ok(JobOutcome::cancelled(REVOKED));
        }
        outcome
    }
}
