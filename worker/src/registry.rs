//! Which handler runs which job type.
//!
//! Jobs travel as `(name, JSON arguments)`. The [`Registry`] maps each name
//! to a handler that decodes the arguments into the job's type and runs it.
//! Arguments that do not decode, and names nobody registered, are permanent
//! failures: they go to the dead set with the reason, never into a retry loop.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use queue::{JobError, JobOutcome, JobSpec, NewJob, Queue, Queues};

/// What a handler knows about the job it runs.
#[derive(Clone)]
pub struct JobContext {
    /// The job's id.
    pub id: String,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// The attempts the job may use.
    pub max_attempts: u32,
    /// When it was pushed (ms since the epoch, Redis clock; 0 when unknown).
    pub enqueued_at: i64,
    /// The worker running it.
    pub worker_id: String,
    /// This attempt's lease token: progress reports carry it, so an attempt
    /// that lost its lease cannot overwrite a newer attempt's status.
    pub token: String,
    /// The job's queue, for progress reports.
    pub queue: Queue,
    /// Every queue, for handlers that push follow-up jobs (each to its route).
    pub queues: Queues,
    /// Fires when the handler should stop: its soft time limit passed, or
    /// the job was revoked. A handler that stops then ends cleanly; one
    /// that does not is dropped at the hard limit or the revoke's grace.
    pub cancel: tokio_util::sync::CancellationToken,
}

type Handler = Arc<
    dyn Fn(serde_json::Value, JobContext) -> BoxFuture<'static, Result<JobOutcome, JobError>>
        + Send
        + Sync,
>;

/// Decodes a job type's arguments, to check them before a job is queued.
type Checker = Arc<dyn Fn(&serde_json::Value) -> Result<(), String> + Send + Sync>;

/// Job name → handler.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<&'static str, Handler>,
    specs: HashMap<&'static str, (queue::RetryPolicy, Checker)>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for jobs of type `J`.
    pub fn register<J, F, Fut>(&mut self, handler: F) -> &mut Self
    where
        J: JobSpec,
        F: Fn(J, JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<JobOutcome, JobError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let check: Checker = Arc::new(|args: &serde_json::Value| {
            J::deserialize(args)
                .map(drop)
                .map_err(|e| format!("invalid arguments for {}: {e}", J::NAME))
        });
        self.specs.insert(J::NAME, (J::RETRY, check));
        self.handlers.insert(
            J::NAME,
            Arc::new(move |args: serde_json::Value, ctx: JobContext| {
                let handler = handler.clone();
                async move {
                    let job: J = serde_json::from_value(args).map_err(|e| {
                        JobError::Permanent(format!("invalid arguments for {}: {e}", J::NAME))
                    })?;
                    handler(job, ctx).await
                }
                .boxed()
            }),
        );
        self
    }

    /// A job of type `name` with `args` and that type's retry policy, for
    /// the scheduler: an unknown type or arguments that do not decode are
    /// an error, before anything is queued.
    pub fn new_job(&self, name: &str, args: &serde_json::Value) -> Result<NewJob, String> {
        let (retry, check) = self
            .specs
            .get(name)
            .ok_or_else(|| format!("no handler for job type {name:?}"))?;
        check(args)?;
        Ok(NewJob {
            name: name.to_string(),
            args: args.clone(),
            retry: *retry,
            run_at: None,
            unique_key: None,
            traceparent: None,
            tracestate: None,
            tick: None,
        })
    }

    /// Whether a handler exists for `name`.
    pub fn knows(&self, name: &str) -> bool {
        self.handlers.contains_key(name)
    }

    /// Runs the handler of `name`.
    pub async fn dispatch(
        &self,
        name: &str,
        args: serde_json::Value,
        ctx: JobContext,
    ) -> Result<JobOutcome, JobError> {
        match self.handlers.get(name) {
            Some(handler) => handler(args, ctx).await,
            None => Err(JobError::Permanent(format!(
                "no handler for job type {name:?}"
            ))),
        }
    }
}
