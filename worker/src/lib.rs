//! The worker: runs queued jobs off the request path, with apalis.
//!
//! One process is one apalis worker of `WORKER_CONCURRENCY` slots, fed by
//! the backend (`backend`) from the shared Redis queue. Beside it run:
//!
//! - the **heartbeat**, which extends the leases of every job this process
//!   holds, so a long job is never handed to another worker while this one
//!   is alive, and reports the worker to the live registry
//!   ([`queue::workers`]: what it runs now; a graceful stop leaves it);
//! - the **maintenance** loop, which any worker may run: it moves due
//!   scheduled jobs and retries into the queue, takes back jobs whose worker
//!   died (expired lease), and deletes records past their retention;
//! - the `/metrics`, `/health` and `/ready` server on `WORKER_METRICS_ADDR` (`ops`).
//!
//! On SIGTERM the worker stops fetching, lets in-flight jobs finish for up to
//! `WORKER_SHUTDOWN_TIMEOUT_SECS`, then puts whatever it still holds back at
//! the head of the queue. Nothing is lost.
//!
//! # Layout
//! The modules are private but [`jobs`]; what tests, benches and `main.rs`
//! use is re-exported here.
//! - `config`: [`Settings`] from the environment.
//! - `backend`: the apalis backend over the queue (fetch, blocking waits on
//!   empty queues) and the outcome recorder.
//! - `background`: the heartbeat, the control channel (revokes) and maintenance.
//! - `registry`: job name → handler ([`Registry`], [`JobContext`]).
//! - `running`: the running handlers; time limits and revokes.
//! - `scheduler`: the periodic jobs, each tick queued once by whichever worker sees it first.
//! - [`jobs`]: the built-in handlers.
//! - `metrics`: the worker's Prometheus series.
//! - `ops`: `/health`, `/ready` and `/metrics` on `WORKER_METRICS_ADDR`.
//! - [`Worker`]: build, run, stop; [`run`] and [`full_registry`] for `main.rs`.

mod backend;
mod background;
mod config;
pub mod jobs;
mod metrics;
mod ops;
mod registry;
mod running;
mod scheduler;

pub use config::{Settings, certificates_in};
pub use registry::{JobContext, Registry};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use apalis::layers::WorkerBuilderExt as _;
use apalis::prelude::*;
use queue::{JobOutcome, Queues};
use shared::redis_pool::{RedisPool, wait_until_ready};
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::backend::{InFlight, QueuedJob, RedisBackend};

/// State the job function needs.
struct Shared {
    registry: Registry,
    queues: Queues,
    worker_id: String,
    running: running::Running,
    time_limits: std::collections::BTreeMap<String, queue::TimeLimit>,
}

/// A built worker, ready to run.
pub struct Worker {
    settings: Settings,
    registry: Registry,
    queues: Queues,
    worker_id: String,
    inflight: InFlight,
    metrics_addr: SocketAddr,
    metrics_server: Option<std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>>,
}

/// Every schedule must queue a job type this worker knows, with arguments
/// that type accepts: checked before anything starts, so a typo stops the
/// worker with one line rather than failing every tick.
fn check_schedules(
    settings: &Settings,
    registry: &Registry,
) -> Result<(), shared::config::ConfigError> {
    for s in &settings.schedules.schedules {
        let var = format!("SCHEDULE_{}", s.name.to_ascii_uppercase());
        // Name the variable that holds the mistake: the job type, or its args.
        let (var, value) = if !registry.knows(&s.job_type) {
            let var = if s.job_type == s.name {
                var
            } else {
                format!("{var}_JOB")
            };
            (var, s.job_type.clone())
        } else {
            (format!("{var}_ARGS"), s.args.to_string())
        };
        if let Err(reason) = registry.new_job(&s.job_type, &s.args) {
            return Err(shared::config::ConfigError::new(
                Box::leak(var.into_boxed_str()),
                &value,
                reason,
            ));
        }
    }
    Ok(())
}

impl Worker {
    /// Connects the queue and binds the metrics server.
    pub async fn build(settings: Settings, registry: Registry) -> anyhow::Result<Self> {
        check_schedules(&settings, &registry)?;
        let pool = RedisPool::open(&settings.redis).await?;
        let queues = Queues::new(
            pool,
            &settings.redis.namespace,
            settings.routes.clone(),
            settings.queue.clone(),
        );
        let worker_id = shared::ops::instance_id("worker");
        let inflight = InFlight::default();
        let router = ops::router(ops::WorkerProbe {
            queues: queues.clone(),
            inflight: inflight.clone(),
            worker_id: worker_id.clone(),
        });
        let (metrics_addr, server) = shared::metrics::bind(settings.metrics_addr, router)
            .await
            .with_context(|| format!("binding WORKER_METRICS_ADDR {}", settings.metrics_addr))?;
        Ok(Self {
            settings,
            registry,
            queues,
            worker_id,
            inflight,
            metrics_addr,
            metrics_server: Some(Box::pin(server)),
        })
    }

    /// Where `/metrics`, `/health` and `/ready` are served.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// This process's worker id.
    pub fn id(&self) -> &str {
        &self.worker_id
    }

    /// Runs until `shutdown` resolves, then drains and stops.
    pub async fn run_until_stopped(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let server = self.metrics_server.take();
        let server = tokio::spawn(async move {
            if let Some(server) = server
                && let Err(e) = server.await
            {
                tracing::error!(error = %e, "metrics server failed");
            }
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut shutdown = Box::pin(shutdown);
        if !wait_until_ready(self.queues.pool(), &mut shutdown).await {
            server.abort();
            return Ok(());
        }
        tracing::info!(
            worker_id = %self.worker_id,
            concurrency = self.settings.concurrency,
            queues = ?self.settings.consume.queues(),
            metrics = %self.metrics_addr,
            "worker ready"
        );

        let running = running::Running::default();
        let reporter = background::Reporter {
            registry: queue::workers::WorkerRegistry::new(
                self.queues.pool().clone(),
                &self.settings.redis.namespace,
            ),
            running: running.clone(),
            report: queue::workers::WorkerReport {
                id: self.worker_id.clone(),
                host: shared::ops::hostname("worker"),
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").into(),
                started_at: chrono::Utc::now(),
                queues: self
                    .settings
                    .consume
                    .queues()
                    .into_iter()
                    .map(String::from)
                    .collect(),
                concurrency: self.settings.concurrency,
                busy: 0,
                jobs: Vec::new(),
                schedules: self
                    .settings
                    .schedules
                    .schedules
                    .iter()
                    .map(|s| {
                        s.definition(
                            self.queues.for_job(&s.job_type).name(),
                            self.settings.schedules.missed,
                        )
                    })
                    .collect(),
            },
            ttl: self.settings.queue.lease,
        };
        reporter.beat().await;
        let heartbeat = tokio::spawn(background::heartbeat(
            self.queues.clone(),
            self.inflight.clone(),
            running.clone(),
            reporter.clone(),
            self.settings.clone(),
            stop_rx.clone(),
        ));
        let control = tokio::spawn(background::control(
            self.queues.clone(),
            self.inflight.clone(),
            running.clone(),
            self.settings.clone(),
            stop_rx.clone(),
        ));
        let scheduler = tokio::spawn(
            scheduler::Scheduler::new(
                self.settings.schedules.schedules.clone(),
                self.settings.schedules.missed,
                self.queues.clone(),
                self.registry.clone(),
                self.worker_id.clone(),
            )
            .run(stop_rx.clone()),
        );
        let maintenance = tokio::spawn(background::maintenance(self.queues.clone(), stop_rx));

        let shared = Arc::new(Shared {
            registry: self.registry.clone(),
            queues: self.queues.clone(),
            worker_id: self.worker_id.clone(),
            running: running.clone(),
            time_limits: self.settings.time_limits.clone(),
        });
        let (queues, inflight, settings, id) = (
            self.queues.clone(),
            self.inflight.clone(),
            self.settings.clone(),
            self.worker_id.clone(),
        );
        let monitor = Monitor::new()
            .register(move |restarts| {
                if restarts > 0 {
                    // The previous worker loop died (and with it whatever it
                    // was running or had prefetched): give those jobs back now
                    // rather than keep their leases alive forever.
                    let (queues, orphans) = (queues.clone(), inflight.drain());
                    tokio::spawn(async move {
                        for job in orphans {
                            let Some(queue) = queues.get(&job.queue) else { continue };
                            if let Err(e) = queue.requeue(&job.id, job.token()).await {
                                tracing::error!(job_id = %job.id, error = %e, "could not requeue after a restart; its lease will expire");
                            }
                        }
                    });
                }
                let backend = RedisBackend::new(
                    queues.clone(),
                    settings.consume.clone(),
                    id.clone(),
                    settings.prefetch,
                    inflight.clone(),
                )
                .expect("the pool's client was built at startup");
                WorkerBuilder::new(format!("{id}#{restarts}"))
                    .backend(backend)
                    .data(shared.clone())
                    .concurrency(settings.concurrency)
                    .timeout(settings.job_timeout)
                    // A panicking handler becomes a permanent failure of its
                    // job, not the death of every job running beside it.
                    .catch_panic()
                    .build(execute)
            })
            .should_restart(|_, error| {
                tracing::error!(%error, "worker loop stopped; restarting it");
                true
            })
            .shutdown_timeout(self.settings.shutdown_timeout);
        let result = monitor
            .run_with_signal(async move {
                shutdown.await;
                tracing::info!("stopping: no new jobs; waiting for the running ones");
                Ok(())
            })
            .await;

        // Whatever is still held (prefetched, or cut off by the timeout) goes back.
        let leftover = self.inflight.drain();
        let mut requeued = 0;
        for job in &leftover {
            let Some(queue) = self.queues.get(&job.queue) else {
                continue;
            };
            match queue.requeue(&job.id, job.token()).await {
                Ok(true) => requeued += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(job_id = %job.id, error = %e, "could not requeue; its lease will expire and it will run again")
                }
            }
        }
        if requeued > 0 {
            tracing::info!(requeued, "put unfinished jobs back in the queue");
        }
        let _ = stop_tx.send(true);
        let _ = tokio::join!(heartbeat, maintenance, scheduler);
        if let Err(e) = reporter.registry.remove(&self.worker_id).await {
            tracing::warn!(error = %e, "could not leave the worker registry; it drops out after its lease");
        }
        control.abort();
        server.abort();
        result.context("running the worker")?;
        tracing::info!("worker stopped");
        Ok(())
    }
}

/// The job function apalis calls: find the handler and run it.
async fn execute(job: QueuedJob, shared: Data<Arc<Shared>>) -> Result<JobOutcome, BoxDynError> {
    let _busy = metrics::BusySlot::take();
    metrics::record_start(&job.name);
    let queue = shared
        .queues
        .get(&job.queue)
        .cloned()
        .unwrap_or_else(|| shared.queues.for_job(&job.name).clone());
    let guard = shared.running.start(queue::workers::HeldJob {
        id: job.id.clone(),
        job_type: job.name.clone(),
        queue: job.queue.clone(),
        started_at: queue::ms_to_datetime(job.started_at),
    });
    let ctx = JobContext {
        cancel: guard.cancel.clone(),
        id: job.id.clone(),
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        enqueued_at: job.enqueued_at,
        worker_id: shared.worker_id.clone(),
        token: job.token.clone(),
        queue,
        queues: shared.queues.clone(),
    };
    let span = tracing::debug_span!(
        "job",
        otel.name = %format_args!("{} process", job.name),
        otel.kind = "consumer",
        messaging.system = "redis",
        messaging.destination.name = %job.queue,
        messaging.operation = "process",
        messaging.message.id = %job.id,
        job.name = %job.name,
        job.id = %job.id,
        job.attempt = job.attempt,
        // Queue wait apart from execution time (Redis clock, ms).
        job.enqueued_at = job.enqueued_at,
        job.started_at = job.started_at,
        job.queue_wait_ms = (job.started_at - job.enqueued_at).max(0),
    );
    shared::telemetry::set_remote_parent(
        &span,
        job.traceparent.as_deref(),
        job.tracestate.as_deref(),
    );
    let started = Instant::now();
    let limit = shared.time_limits.get(&job.name).copied();
    let handler = shared.registry.dispatch(&job.name, job.args, ctx);
    let outcome = guard.run(&job.name, limit, handler).instrument(span).await;
    drop(guard);
    metrics::record_duration(&job.name, started.elapsed().as_secs_f64());
    match outcome {
        Ok(o) => Ok(o),
        Err(e) => {
            tracing::warn!(job_id = %job.id, job = %job.name, attempt = job.attempt, error = %e, "job failed");
            Err(Box::new(e) as BoxDynError)
        }
    }
}

/// Every job this service runs: the built-ins and the recalculations over
/// the catalog store and the price cache.
pub async fn full_registry(settings: &Settings) -> anyhow::Result<Registry> {
    // The error names DATABASE_URL (password hidden) and the cause in one line.
    let store = shared::store::open(&settings.database).await?;
    let pool = RedisPool::open(&settings.redis).await?;
    let keys = shared::keys::Keys::new(&settings.redis.namespace);
    let feed = settings
        .feed
        .as_ref()
        .map(jobs::feed::Feed::new)
        .transpose()
        .context("building the market-data feed client")?;
    let deps = jobs::recalc::RecalcDeps {
        feed,
        store,
        lock: shared::lock::DistributedLock::new(
            pool.clone(),
            keys.recalc_lock(),
            settings.recalc_lock_ttl,
        ),
        cache: shared::cache::PriceCache::new(pool, keys, settings.cache.ttl).with_bulk_writes(),
    };
    let mut registry = jobs::registry();
    jobs::recalc::register(&mut registry, Arc::new(deps));
    Ok(registry)
}

/// Runs the worker with every job until `shutdown` resolves.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let registry = full_registry(&settings).await?;
    let worker = Worker::build(settings, registry).await?;
    worker.run_until_stopped(shutdown).await
}
