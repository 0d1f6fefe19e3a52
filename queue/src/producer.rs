//! The producer side: pushing jobs, one or a pipeline of many, each inside
//! a `publish` span whose trace context the job carries to its worker.

use chrono::Utc;
use shared::telemetry::redis_span;
use tracing::Instrument as _;

use crate::record::*;
use crate::scripts;
use crate::*;

/// The answer to a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The id of the job that will run.
    pub id: String,
    /// `true` when a pending job with the same unique key was found and its
    /// id returned instead of queueing a duplicate.
    pub duplicate: bool,
    /// `true` when the job was a schedule's tick that another push (another
    /// worker) had claimed already: nothing was queued, and `id` is empty.
    pub tick_taken: bool,
}

impl Queue {
    fn new_id() -> String {
        ulid::Ulid::new().to_string()
    }

    fn push_invocation<'a>(
        &'a self,
        inv: &mut redis::ScriptInvocation<'a>,
        id: &str,
        job: &NewJob,
        context: Option<&(String, Option<String>)>,
    ) -> Result<(), QueueError> {
        // A job without its own trace context carries the pushing span's.
        let (traceparent, tracestate) = match (&job.traceparent, context) {
            (Some(parent), _) => (Some(parent.clone()), job.tracestate.clone()),
            (None, Some((parent, state))) => (Some(parent.clone()), state.clone()),
            (None, None) => (None, None),
        };
        let description = Description {
            name: job.name.clone(),
            max_attempts: job.retry.max_attempts.max(1),
            backoff: job.retry.backoff,
            unique_key: job.unique_key.clone(),
            traceparent,
            tracestate,
            schedule: job.tick.as_ref().map(|t| t.schedule.clone()),
            tick: job.tick.as_ref().map(|t| t.at),
        };
        let description =
            serde_json::to_string(&description).map_err(|e| QueueError::Encode(e.to_string()))?;
        let args =
            serde_json::to_string(&job.args).map_err(|e| QueueError::Encode(e.to_string()))?;
        let delay_ms = job
            .run_at
            .map(|at| (at - Utc::now()).num_milliseconds().max(0))
            .unwrap_or(0);
        inv.key(&self.keys.wait)
            .key(&self.keys.delayed)
            .key(&self.keys.jobs)
            .key(&self.keys.args)
            .key(&self.keys.unique)
            .key(&self.keys.live)
            .key(&self.keys.uniq_of)
            .key(&self.keys.sched)
            .arg(id)
            .arg(description)
            .arg(args)
            .arg(delay_ms)
            .arg(job.unique_key.as_deref().unwrap_or(""))
            .arg(&job.name)
            .arg(job.tick.as_ref().map_or("", |t| t.schedule.as_str()))
            .arg(job.tick.as_ref().map_or(0, |t| t.at))
            .arg(job.tick.as_ref().map_or("", |t| t.by.as_str()));
        Ok(())
    }

    /// Pushes one job, inside a producer span (`publish {queue}`) whose
    /// context the job carries unless it brings its own.
    pub async fn push(&self, job: NewJob) -> Result<Pushed, QueueError> {
        let span = shared::telemetry::producer_span(&self.name);
        async {
            let id = Self::new_id();
            tracing::Span::current().record("messaging.message.id", id.as_str());
            let mut inv = scripts::PUSH.prepare_invoke();
            let context = shared::telemetry::current_trace_context();
            self.push_invocation(&mut inv, &id, &job, context.as_ref())?;
            let (mut conn, tracker) = self.pool.get_durable();
            let (queued, id): (i64, String) = tracker.track(
                inv.invoke_async(&mut conn)
                    .instrument(redis_span("queue push", "EVALSHA"))
                    .await,
            )?;
            // A queued job must survive a failover (REDIS_WAIT_REPLICAS).
            self.pool
                .wait_for_replicas(&mut conn, &self.keys.wait)
                .await;
            Ok(Pushed {
                id,
                duplicate: queued == 0,
                tick_taken: queued == 2,
            })
        }
        .instrument(span)
        .await
    }

    /// Pushes many jobs in one pipelined round trip, inside one producer span.
    pub async fn push_bulk(&self, jobs: &[NewJob]) -> Result<Vec<Pushed>, QueueError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let span = shared::telemetry::producer_span(&self.name);
        span.record("messaging.batch.message_count", jobs.len());
        self.push_bulk_traced(jobs).instrument(span).await
    }

    async fn push_bulk_traced(&self, jobs: &[NewJob]) -> Result<Vec<Pushed>, QueueError> {
        let ids: Vec<String> = jobs.iter().map(|_| Self::new_id()).collect();
        let mut invocations = Vec::with_capacity(jobs.len());
        let context = shared::telemetry::current_trace_context();
        for (id, job) in ids.iter().zip(jobs) {
            let mut inv = scripts::PUSH.prepare_invoke();
            self.push_invocation(&mut inv, id, job, context.as_ref())?;
            invocations.push(inv);
        }
        let mut pipe = redis::pipe();
        pipe.load_script(&scripts::PUSH).ignore();
        for inv in &invocations {
            pipe.invoke_script(inv);
        }
        let (mut conn, tracker) = self.pool.get_durable();
        let out: Vec<(i64, String)> = tracker.track(
            pipe.query_async(&mut conn)
                .instrument(redis_span("queue push", "BATCH EVALSHA"))
                .await,
        )?;
        self.pool
            .wait_for_replicas(&mut conn, &self.keys.wait)
            .await;
        Ok(out
            .into_iter()
            .map(|(queued, id)| Pushed {
                id,
                duplicate: queued == 0,
                tick_taken: queued == 2,
            })
            .collect())
    }
}
