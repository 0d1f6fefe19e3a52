//! The loops that run beside a worker's job slots: the heartbeat (leases
//! extended, the live registry kept, revokes noticed), the control channel
//! (revokes pushed by the api), and the maintenance any worker may run
//! (due jobs promoted, expired leases reaped, old records deleted, the
//! counters sampled for the dashboard's rates).

use std::time::{Duration, Instant};

use queue::Queues;
use tokio::sync::watch;

use crate::backend::InFlight;
use crate::config::Settings;
use crate::running;

/// Longest pause of the maintenance loop; it also bounds how late a due
/// delayed job or retry can start.
const MAINTENANCE_TICK: Duration = Duration::from_millis(250);

/// How often expired leases are looked for.
const REAP_EVERY: Duration = Duration::from_secs(1);

/// How often expired records are deleted.
const CLEANUP_EVERY: Duration = Duration::from_secs(10);

/// How often maintenance samples each queue's counters for the dashboard's
/// rates (`Queue::throughput`; any number of workers add one per second at most).
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Writes this worker's entry in the live registry.
#[derive(Clone)]
pub(crate) struct Reporter {
    pub(crate) registry: queue::workers::WorkerRegistry,
    pub(crate) running: running::Running,
    /// The fixed part; busy and jobs are filled in on each beat.
    pub(crate) report: queue::workers::WorkerReport,
    pub(crate) ttl: Duration,
}

impl Reporter {
    pub(crate) async fn beat(&self) {
        let jobs = self.running.held();
        let report = queue::workers::WorkerReport {
            busy: jobs.len(),
            jobs,
            ..self.report.clone()
        };
        if let Err(e) = self.registry.beat(&report, self.ttl).await {
            tracing::warn!(error = %e, "could not report to the worker registry");
        }
    }
}

/// Every `JOB_HEARTBEAT_SECS` until stopped: extends this process's leases,
/// cancels the held jobs the heartbeat finds revoked, and reports this
/// worker to the live registry.
pub(crate) async fn heartbeat(
    queues: Queues,
    inflight: InFlight,
    running: running::Running,
    reporter: Reporter,
    settings: Settings,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(settings.queue.heartbeat) => {}
        }
        reporter.beat().await;
        for (name, held) in inflight.leases_by_queue() {
            let Some(queue) = queues.get(&name) else {
                continue;
            };
            match queue.extend(&held).await {
                Ok(found) => {
                    for id in found.lost {
                        tracing::warn!(job_id = %id, queue = %name, "lease lost; another worker may run this job");
                        // Only the lease that was sent: the job may have been
                        // leased again meanwhile under a new token.
                        if let Some((_, token)) = held.iter().find(|(h, _)| *h == id) {
                            inflight.take(&id, token);
                        }
                    }
                    for id in found.revoked {
                        running.revoke(&id, true, settings.revoke_grace);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, queue = %name, held = held.len(), "heartbeat failed")
                }
            }
        }
    }
}

/// Listens on the control channel (`revoke <queue> <id>`) and cancels the
/// revoked jobs this process holds; subscribes again after any failure.
pub(crate) async fn control(
    queues: Queues,
    inflight: InFlight,
    running: running::Running,
    settings: Settings,
    mut stop: watch::Receiver<bool>,
) {
    use futures::StreamExt as _;
    let channel = shared::keys::Keys::new(&settings.redis.namespace).control_channel();
    let mut delay = shared::redis_pool::INITIAL_RECONNECT_DELAY;
    loop {
        match queues.pool().pubsub().await {
            Ok(mut sub) => match sub.subscribe(&channel).await {
                Ok(()) => {
                    delay = shared::redis_pool::INITIAL_RECONNECT_DELAY;
                    let mut messages = sub.on_message();
                    loop {
                        tokio::select! {
                            _ = stop.changed() => return,
                            msg = messages.next() => {
                                let Some(msg) = msg else { break };
                                let text: String = msg.get_payload().unwrap_or_default();
                                if let Some(id) = text.strip_prefix("revoke ").and_then(|r| r.split_whitespace().nth(1)) {
                                    let held = inflight.leases().iter().any(|(h, _)| h == id);
                                    running.revoke(id, held, settings.revoke_grace);
                                }
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot subscribe to the control channel"),
            },
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "cannot open the control channel")
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(shared::redis_pool::MAX_RECONNECT_DELAY);
    }
}

/// Promotes due jobs, reaps expired leases and cleans up old records until stopped.
pub(crate) async fn maintenance(queues: Queues, mut stop: watch::Receiver<bool>) {
    let mut last_reap = Instant::now() - REAP_EVERY;
    let mut last_cleanup = Instant::now();
    let mut last_sample = Instant::now() - SAMPLE_EVERY;
    loop {
        let mut pause = MAINTENANCE_TICK;
        let reap = last_reap.elapsed() >= REAP_EVERY;
        let cleanup = last_cleanup.elapsed() >= CLEANUP_EVERY;
        let sample = last_sample.elapsed() >= SAMPLE_EVERY;
        for (name, queue) in queues.iter() {
            match queue.promote_due().await {
                Ok((moved, next)) => {
                    if moved >= queue::MAINTENANCE_BATCH {
                        pause = Duration::ZERO;
                    } else if let Some(next) = next {
                        pause = pause.min(next.max(Duration::from_millis(1)));
                    }
                }
                Err(e) => tracing::warn!(queue = name, error = %e, "promoting due jobs failed"),
            }
            if reap {
                match queue.reap_expired().await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(
                        queue = name,
                        jobs = n,
                        "took back jobs whose worker was lost"
                    ),
                    Err(e) => {
                        tracing::warn!(queue = name, error = %e, "reaping expired leases failed")
                    }
                }
            }
            if cleanup && let Err(e) = queue.cleanup().await {
                tracing::warn!(queue = name, error = %e, "deleting expired records failed");
            }
            if sample && let Err(e) = queue.throughput(queue::browse::RATE_WINDOW).await {
                tracing::debug!(queue = name, error = %e, "sampling the queue's counters failed");
            }
        }
        if sample {
            last_sample = Instant::now();
        }
        if reap {
            last_reap = Instant::now();
        }
        if cleanup {
            last_cleanup = Instant::now();
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}
