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
//!   either (see `Watches`). A
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

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use apalis::prelude::*;
use apalis_core::backend::BackendConfig;
use apalis_core::backend::finalize::Ephemeral;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use queue::{Consume, DeferOutcome, JobError, JobOutcome, Leased, Queue, Queues};
use shared::redis_pool::Conn;
use shared::redis_pool::{INITIAL_RECONNECT_DELAY, MAX_RECONNECT_DELAY};

/// How long one blocking wait for new work lasts before it is renewed.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(2);

/// How long an outcome is retried while Redis is unreachable before the
/// worker gives up on it; the job's lease then runs out and it runs again.
const ACK_GIVE_UP_AFTER: Duration = Duration::from_secs(60);

/// Most outcomes recorded in one script call.
const COMPLETION_BATCH: usize = 256;

/// One success waiting to be recorded, and where to report whether it was.
type Reply = tokio::sync::oneshot::Sender<Result<bool, String>>;

/// Records successes in batches: whatever outcomes are waiting when the
/// previous batch returns go into the next script call, so under load one
/// round trip records many jobs, and alone a job is recorded at once.
#[derive(Clone)]
pub struct Completer {
    tx: tokio::sync::mpsc::UnboundedSender<(Leased, JobOutcome, Reply)>,
}

impl Completer {
    /// Starts the batching task; it ends when the last handle is dropped.
    pub fn spawn(queue: Queue) -> Self {
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
    pub async fn complete(&self, job: Leased, outcome: JobOutcome) -> Result<bool, String> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx
            .send((job, outcome, reply))
            .map_err(|_| "the completion task has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the completion task has stopped".to_string())?
    }
}

/// The jobs this process holds leases on, by id.
#[derive(Clone, Default)]
pub struct InFlight(Arc<Mutex<HashMap<String, Leased>>>);

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Leased>> {
        // A poisoned map is still a valid map: keep going.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers newly leased jobs.
    pub fn add(&self, jobs: &[Leased]) {
        let mut map = self.lock();
        for job in jobs {
            map.insert(job.id.clone(), job.clone());
        }
    }

    /// A copy of a held job, if this process still holds the lease `token`.
    /// Keyed by token as well as id: after a lost lease the same job may be
    /// leased again by this very process, and an old attempt must never act
    /// on the new attempt's lease.
    pub fn get(&self, id: &str, token: &str) -> Option<Leased> {
        self.lock().get(id).filter(|j| j.token() == token).cloned()
    }

    /// Removes a job if it is held under `token`.
    pub fn take(&self, id: &str, token: &str) -> Option<Leased> {
        let mut map = self.lock();
        if map.get(id).is_some_and(|j| j.token() == token) {
            map.remove(id)
        } else {
            None
        }
    }

    /// `(id, token)` of every held lease, for the heartbeat.
    pub fn leases(&self) -> Vec<(String, String)> {
        self.lock()
            .values()
            .map(|j| (j.id.clone(), j.token().to_string()))
            .collect()
    }

    /// The held leases grouped by queue: `queue → [(id, token)]`.
    pub fn leases_by_queue(&self) -> HashMap<String, Vec<(String, String)>> {
        let mut out: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for j in self.lock().values() {
            out.entry(j.queue.to_string())
                .or_default()
                .push((j.id.clone(), j.token().to_string()));
        }
        out
    }

    /// Empties the map, returning what was held.
    pub fn drain(&self) -> Vec<Leased> {
        self.lock().drain().map(|(_, j)| j).collect()
    }

    /// How many leases are held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no lease is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What apalis hands to the job function.
#[derive(Debug, Clone)]
pub struct QueuedJob {
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
pub struct RedisBackend {
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

/// A [`Completer`] per queue: successes are batched per queue, where their
/// script runs.
#[derive(Clone)]
pub struct Completers(Arc<HashMap<String, Completer>>);

impl Completers {
    /// One batching task per queue of `queues`.
    pub fn spawn(queues: &Queues) -> Self {
        Self(Arc::new(
            queues
                .iter()
                .map(|(name, q)| (name.to_string(), Completer::spawn(q.clone())))
                .collect(),
        ))
    }

    fn of(&self, queue: &str) -> Option<&Completer> {
        self.0.get(queue)
    }
}

impl RedisBackend {
    /// A backend leasing from the queues `consume` names, as `worker_id`,
    /// `prefetch` jobs at a time.
    pub fn new(
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

/// How long to wait before looking again when a queue has jobs but no fetch
/// could start one (all over their rate limit): without it the worker would
/// spin on a list that is never empty.
const IDLE_RECHECK: Duration = Duration::from_millis(100);

/// A queue's state for the fetch: look at it, or leave it to its watcher.
const READY: u8 = 0;
/// Its last fetch found it empty: its watcher blocks on it until a job comes.
const DRAINED: u8 = 1;
/// It is paused: its watcher makes it ready again after [`BLOCK_TIMEOUT`].
const PAUSED: u8 = 2;

/// One consumed queue's fetch state, shared with its watcher task.
#[derive(Default)]
struct QueueWatch {
    state: std::sync::atomic::AtomicU8,
    arm: tokio::sync::Notify,
}

impl QueueWatch {
    fn is_ready(&self) -> bool {
        self.state.load(std::sync::atomic::Ordering::Acquire) == READY
    }

    /// Hands the queue to its watcher until it has work again.
    fn park(&self, state: u8) {
        self.state
            .store(state, std::sync::atomic::Ordering::Release);
        self.arm.notify_one();
    }
}

/// Which consumed queues a fetch looks at. A queue found empty (or paused)
/// is left out of later fetches until its watcher, blocked on it with
/// `BLMOVE wait wait RIGHT RIGHT` on a connection of its own, sees a job
/// (or [`BLOCK_TIMEOUT`] passes): so a fetch over several queues costs a
/// round trip per queue that has jobs, not one per queue consumed, and a job
/// pushed to an idle higher-priority queue is still in the very next fetch.
/// With every queue empty, the fetch waits for any watcher to wake it.
struct Watches {
    queues: HashMap<String, Arc<QueueWatch>>,
    woke: Arc<tokio::sync::Notify>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Watches {
    fn spawn(queues: &Queues, consume: &Consume) -> redis::RedisResult<Self> {
        let woke = Arc::new(tokio::sync::Notify::new());
        let (mut watched, mut tasks) = (HashMap::new(), Vec::new());
        for name in consume.queues() {
            let Some(queue) = queues.get(name).cloned() else {
                continue;
            };
            // Blocking commands get connections of their own: on a shared
            // multiplexed one they would hold up every command behind them.
            let conn = queue
                .pool()
                .blocking(BLOCK_TIMEOUT + Duration::from_secs(3))?;
            let w = Arc::new(QueueWatch::default());
            tasks.push(tokio::spawn(watch(queue, conn, w.clone(), woke.clone())));
            watched.insert(name.to_string(), w);
        }
        Ok(Self {
            queues: watched,
            woke,
            tasks,
        })
    }

    fn get(&self, queue: &str) -> Option<&QueueWatch> {
        self.queues.get(queue).map(|w| &**w)
    }

    fn any_ready(&self) -> bool {
        self.queues.values().any(|w| w.is_ready())
    }
}

impl Drop for Watches {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A queue's watcher: each time the fetch parks the queue, waits until it
/// may have work (a job in its list, or the pause's recheck time), marks it
/// ready and wakes the fetch.
async fn watch(queue: Queue, mut conn: Conn, w: Arc<QueueWatch>, woke: Arc<tokio::sync::Notify>) {
    let mut delay = INITIAL_RECONNECT_DELAY;
    loop {
        w.arm.notified().await;
        match w.state.load(std::sync::atomic::Ordering::Acquire) {
            DRAINED => match queue.wait_for_work(&mut conn, BLOCK_TIMEOUT).await {
                Ok(_) => delay = INITIAL_RECONNECT_DELAY,
                Err(e) => {
                    tracing::warn!(queue = queue.name(), error = %e, retry_in = ?delay, "waiting for jobs failed");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RECONNECT_DELAY);
                }
            },
            PAUSED => tokio::time::sleep(BLOCK_TIMEOUT).await,
            _ => {}
        }
        w.state.store(READY, std::sync::atomic::Ordering::Release);
        woke.notify_one();
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

/// Records each handler outcome in Redis.
#[derive(Clone)]
pub struct QueueAck {
    queues: Queues,
    completers: Completers,
    inflight: InFlight,
}

/// What to record for one outcome.
#[derive(Debug)]
enum Verdict {
    Done(JobOutcome),
    Defer(Duration, serde_json::Value),
    Retry(String, Duration),
    Bury(String),
}

fn verdict(res: &Result<JobOutcome, BoxDynError>, job: &Leased) -> Verdict {
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

fn verdict_label(v: &Verdict) -> &'static str {
    match v {
        Verdict::Done(o) if o.state == queue::JobState::Skipped => "skipped",
        Verdict::Done(o) if o.state == queue::JobState::Cancelled => "cancelled",
        Verdict::Done(_) => "succeeded",
        Verdict::Defer(..) => "deferred",
        Verdict::Retry(..) => "retried",
        Verdict::Bury(_) => "failed",
    }
}
