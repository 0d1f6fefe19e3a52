//! The apalis backend over [`queue::Queue`].
//!
//! apalis runs the workers (concurrency, timeouts, panics caught and buried, graceful
//! shutdown through its `Monitor`); this module feeds it and records what
//! happened:
//!
//! - [`RedisBackend::poll_next`] leases a batch with one script call per
//!   queue that has jobs and hands the jobs out one by one. A queue found
//!   empty is watched by a blocking wait on a dedicated connection (`BLMOVE
//!   wait wait RIGHT RIGHT`) instead of being polled, so pickup is immediate,
//!   an idle worker costs nothing, and empty queues cost a busy one nothing
//!   either (see `watch`). A
//!   Redis error never reaches apalis (it would stop the worker): the fetch
//!   retries with backoff until Redis answers again.
//! - [`QueueAck`], the backend's middleware, sees every handler outcome and
//!   records it: success, a retry scheduled in Redis with the job's backoff
//!   (no worker slot sleeps), or the dead set for permanent failures and
//!   exhausted attempts.
//!
//! Every job this process holds a lease on is in [`InFlight`] from fetch
//! until its outcome is recorded; the heartbeat extends those leases, and
//! on shutdown whatever is left is put back in the queue.

mod ack;
mod watch;

pub(crate) use ack::{Completers, QueueAck};
use watch::*;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use apalis::prelude::*;
use apalis_core::backend::BackendConfig;
use apalis_core::backend::finalize::Ephemeral;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use queue::{Consume, Leased, Queues};
use shared::redis_pool::{INITIAL_RECONNECT_DELAY, MAX_RECONNECT_DELAY};

/// How long one blocking wait for new work lasts before it is renewed.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(2);

/// The jobs this process holds leases on, by id.
#[derive(Clone, Default)]
pub(crate) struct InFlight(Arc<Mutex<HashMap<String, Leased>>>);

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Leased>> {
        // A poisoned map is still a valid map: keep going.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers newly leased jobs.
    pub(crate) fn add(&self, jobs: &[Leased]) {
        let mut map = self.lock();
        for job in jobs {
            map.insert(job.id.clone(), job.clone());
        }
    }

    /// A copy of a held job, if this process still holds the lease `token`.
    /// Keyed by token as well as id: after a lost lease the same job may be
    /// leased again by this very process, and an old attempt must never act
    /// on the new attempt's lease.
    pub(crate) fn get(&self, id: &str, token: &str) -> Option<Leased> {
        self.lock().get(id).filter(|j| j.token() == token).cloned()
    }

    /// Removes a job if it is held under `token`.
    pub(crate) fn take(&self, id: &str, token: &str) -> Option<Leased> {
        let mut map = self.lock();
        if map.get(id).is_some_and(|j| j.token() == token) {
            map.remove(id)
        } else {
            None
        }
    }

    /// `(id, token)` of every held lease, for the heartbeat.
    pub(crate) fn leases(&self) -> Vec<(String, String)> {
        self.lock()
            .values()
            .map(|j| (j.id.clone(), j.token().to_string()))
            .collect()
    }

    /// The held leases grouped by queue: `queue → [(id, token)]`.
    pub(crate) fn leases_by_queue(&self) -> HashMap<String, Vec<(String, String)>> {
        let mut out: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for j in self.lock().values() {
            out.entry(j.queue.to_string())
                .or_default()
                .push((j.id.clone(), j.token().to_string()));
        }
        out
    }

    /// Empties the map, returning what was held.
    pub(crate) fn drain(&self) -> Vec<Leased> {
        self.lock().drain().map(|(_, j)| j).collect()
    }

    /// How many leases are held.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// What apalis hands to the job function.
#[derive(Debug, Clone)]
pub(crate) struct QueuedJob {
    /// Job id.
    pub id: String,
    /// The queue it was leased from.
    pub queue: String,
    /// Job type.
    pub name: String,
    /// Arguments.
    pub args: serde_json::Value,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// The attempts the job may use.
    pub max_attempts: u32,
    /// When it was pushed (ms, Redis clock; 0 when unknown).
    pub enqueued_at: i64,
    /// When this attempt was leased (ms, Redis clock; 0 when unknown).
    pub started_at: i64,
    /// This attempt's lease token.
    pub token: String,
    /// Trace context of the span that pushed it.
    pub traceparent: Option<String>,
    /// Trace state that goes with `traceparent`.
    pub tracestate: Option<String>,
}

/// The apalis backend: leases jobs from the queues this worker consumes.
pub(crate) struct RedisBackend {
    queues: Queues,
    consume: Consume,
    completers: Completers,
    worker_id: String,
    prefetch: usize,
    inflight: InFlight,
    /// Which consumed queues a fetch looks at.
    watches: Arc<Watches>,
    buffer: VecDeque<Leased>,
    fetch: Option<BoxFuture<'static, Vec<Leased>>>,
}

impl RedisBackend {
    /// A backend leasing from the queues `consume` names, as `worker_id`,
    /// `prefetch` jobs at a time.
    pub(crate) fn new(
        queues: Queues,
        consume: Consume,
        worker_id: String,
        prefetch: usize,
        inflight: InFlight,
    ) -> redis::RedisResult<Self> {
        let watches = Arc::new(Watches::spawn(&queues, &consume)?);
        Ok(Self {
            completers: Completers::spawn(&queues),
            queues,
            consume,
            worker_id,
            prefetch: prefetch.max(1),
            inflight,
            watches,
            buffer: VecDeque::new(),
            fetch: None,
        })
    }
}

/// Leases at least one job from the queues, in the order `consume` gives
/// for each fetch, waiting (and riding out Redis outages) as long as it takes.
async fn lease_some(
    queues: Queues,
    consume: Consume,
    watches: Arc<Watches>,
    worker_id: String,
    n: usize,
    inflight: InFlight,
) -> Vec<Leased> {
    let mut delay = INITIAL_RECONNECT_DELAY;
    loop {
        let mut jobs = Vec::new();
        let mut failed = false;
        for name in consume.fetch_order() {
            let (Some(queue), Some(watch)) = (queues.get(name), watches.get(name)) else {
                continue;
            };
            if !watch.is_ready() {
                continue;
            }
            let want = n - jobs.len();
            match queue.fetch_batch(&worker_id, want).await {
                Ok(got) => {
                    if got.deferred > 0 {
                        crate::metrics::record_rate_limited(name, got.deferred);
                    }
                    if got.paused {
                        watch.park(PAUSED);
                    } else if got.jobs.len() < want && got.deferred == 0 {
                        // The list ran out: nothing more there until a push.
                        watch.park(DRAINED);
                    }
                    jobs.extend(got.jobs);
                }
                Err(e) => {
                    failed = true;
                    tracing::warn!(queue = name, error = %e, retry_in = ?delay, "fetching jobs failed");
                }
            }
            if jobs.len() >= n {
                break;
            }
        }
        if !jobs.is_empty() {
            inflight.add(&jobs);
            return jobs;
        }
        if failed {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_RECONNECT_DELAY);
            continue;
        }
        delay = INITIAL_RECONNECT_DELAY;
        if watches.any_ready() {
            // Jobs are there but none could start (over a rate limit).
            tokio::time::sleep(IDLE_RECHECK).await;
            continue;
        }
        // Every queue is empty or paused: a watcher wakes us when one is not.
        watches.woke.notified().await;
    }
}

/// Metadata key carrying the lease token from the backend to the acknowledgement.
const TOKEN_KEY: &str = "lease_token";

fn to_task(job: Leased) -> Task<QueuedJob> {
    let attempt = job.record.attempts;
    let max_attempts = job.record.max_attempts;
    let mut meta = MetadataStore::new();
    // A plain string always inserts.
    let token = job.token().to_string();
    let _ = meta.insert(TOKEN_KEY, token.clone());
    TaskBuilder::new(QueuedJob {
        id: job.id.clone(),
        queue: job.queue.to_string(),
        name: job.record.name.clone(),
        args: job.args,
        attempt,
        max_attempts,
        enqueued_at: job.record.enqueued_at.unwrap_or(0),
        started_at: job.record.started_at.unwrap_or(0),
        token,
        traceparent: job.record.traceparent.clone(),
        tracestate: job.record.tracestate.clone(),
    })
    .task_id(TaskId::from_string(job.id))
    // apalis counts the run it is about to start itself.
    .attempt(attempt.saturating_sub(1) as usize)
    .max_attempts(max_attempts as usize)
    .with_metadata(meta)
    .build()
}

impl Backend for RedisBackend {
    type Task = Task<QueuedJob>;
    type Error = std::io::Error;

    fn poll_ready(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        loop {
            if let Some(job) = self.buffer.pop_front() {
                // The heartbeat may have found its lease lost while it waited
                // here; another worker owns it now, so it must not run here.
                if self.inflight.get(&job.id, job.token()).is_none() {
                    continue;
                }
                return Poll::Ready(Some(Ok(to_task(job))));
            }
            let fut = self.fetch.get_or_insert_with(|| {
                lease_some(
                    self.queues.clone(),
                    self.consume.clone(),
                    self.watches.clone(),
                    self.worker_id.clone(),
                    self.prefetch,
                    self.inflight.clone(),
                )
                .boxed()
            });
            let jobs = ready!(fut.poll_unpin(cx));
            self.fetch = None;
            self.buffer.extend(jobs);
        }
    }

    fn poll_close(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        // Leased but never started: the worker's shutdown requeues them from InFlight.
        self.buffer.clear();
        Poll::Ready(Ok(()))
    }
}

impl BackendConfig for RedisBackend {
    type Args = QueuedJob;
    type Id = String;
    type Kind = Ephemeral;
    type Config = ();
    type Layer = AcknowledgeLayer<QueueAck>;

    fn config(&self) -> &() {
        &()
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Self::Layer {
        AcknowledgeLayer::new(QueueAck {
            queues: self.queues.clone(),
            completers: self.completers.clone(),
            inflight: self.inflight.clone(),
        })
    }
}
