//! The scheduler loop every worker runs (see [`queue::schedule`]).
//!
//! Each pass reads the Redis clock, and for every schedule whose latest
//! tick this process has not handled yet, pushes that tick's job: the push
//! claims the tick in Redis, so of all the workers that see it, one queues
//! it. The loop sleeps until the next tick of any schedule (at most a
//! second), so a tick whose enqueuer died is queued by another worker
//! within a second of its time. A scheduled full recalculation carries the
//! api's unique key, so it joins one already waiting instead of queueing a
//! second.

use std::collections::HashMap;
use std::time::Duration;

use queue::JobSpec;
use queue::schedule::{Missed, Schedule};
use queue::{Queues, Tick};
use shared::jobs::{RECALC_ALL_UNIQUE_KEY, RecalculateAllPrices};
use shared::redis_pool::RedisPool;
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::registry::Registry;

/// The longest sleep between two passes.
const MAX_PASS: Duration = Duration::from_secs(1);

/// What one pass did with one schedule's tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TickOutcome {
    /// This worker queued it.
    Enqueued,
    /// Another worker had queued it.
    Taken,
    /// It was later than the grace and `SCHEDULE_MISSED=skip`.
    Skipped,
}

impl TickOutcome {
    fn label(self) -> &'static str {
        match self {
            Self::Enqueued => "enqueued",
            Self::Taken => "taken",
            Self::Skipped => "skipped",
        }
    }
}

/// The scheduler of one worker.
pub(crate) struct Scheduler {
    schedules: Vec<Schedule>,
    missed: Missed,
    queues: Queues,
    registry: Registry,
    worker_id: String,
    /// The latest tick handled per schedule.
    handled: HashMap<String, i64>,
}

/// The Redis server's clock, in ms.
async fn redis_now(pool: &RedisPool) -> redis::RedisResult<i64> {
    let (mut conn, tracker) = pool.get();
    let (secs, micros): (i64, i64) =
        tracker.track(redis::cmd("TIME").query_async(&mut conn).await)?;
    Ok(secs * 1_000 + micros / 1_000)
}

impl Scheduler {
    /// A scheduler of `schedules`; every one must name a job type of
    /// `registry` with arguments it accepts (checked at startup).
    pub(crate) fn new(
        schedules: Vec<Schedule>,
        missed: Missed,
        queues: Queues,
        registry: Registry,
        worker_id: String,
    ) -> Self {
        Self {
            schedules,
            missed,
            queues,
            registry,
            worker_id,
            handled: HashMap::new(),
        }
    }

    /// One pass at Redis time `now`: handles every schedule's latest tick
    /// not handled yet, and returns the earliest next tick.
    pub(crate) async fn pass(&mut self, now: i64) -> Option<i64> {
        let mut next: Option<i64> = None;
        for i in 0..self.schedules.len() {
            let s = &self.schedules[i];
            if let Some(n) = s.next_after(now) {
                next = Some(next.map_or(n, |m| m.min(n)));
            }
            let Some(tick) = s.latest_due(now) else {
                continue;
            };
            if self.handled.get(&s.name).is_some_and(|h| *h >= tick) {
                continue;
            }
            match self.handle(i, tick, now).await {
                Ok(outcome) => {
                    crate::metrics::record_schedule_tick(&self.schedules[i].name, outcome.label());
                    self.handled.insert(self.schedules[i].name.clone(), tick);
                }
                Err(e) => {
                    // Not marked handled: the next pass tries again.
                    tracing::warn!(schedule = %self.schedules[i].name, tick, error = %e, "could not queue a schedule's tick");
                }
            }
        }
        next
    }

    async fn handle(&self, i: usize, tick: i64, now: i64) -> Result<TickOutcome, String> {
        let s = &self.schedules[i];
        if !Schedule::wants(tick, now, self.missed) {
            tracing::info!(schedule = %s.name, tick, late_ms = now - tick, "missed tick skipped (SCHEDULE_MISSED=skip)");
            return Ok(TickOutcome::Skipped);
        }
        let mut job = self.registry.new_job(&s.job_type, &s.args)?;
        // A scheduled full recalculation joins one already waiting, as a
        // trigger from the api does (one runs, at most one waits).
        if s.job_type == <RecalculateAllPrices as JobSpec>::NAME {
            job.unique_key = Some(RECALC_ALL_UNIQUE_KEY.to_string());
        }
        job.tick = Some(Tick {
            schedule: s.name.clone(),
            at: tick,
            by: self.worker_id.clone(),
        });
        let span =
            tracing::info_span!("schedule tick", schedule = %s.name, job = %s.job_type, tick);
        let pushed = self
            .queues
            .push(job)
            .instrument(span)
            .await
            .map_err(|e| e.to_string())?;
        if pushed.tick_taken {
            Ok(TickOutcome::Taken)
        } else if pushed.duplicate {
            tracing::info!(schedule = %s.name, tick, task_id = %pushed.id, "schedule tick joined the job already waiting");
            Ok(TickOutcome::Enqueued)
        } else {
            tracing::info!(schedule = %s.name, tick, task_id = %pushed.id, "schedule tick queued");
            Ok(TickOutcome::Enqueued)
        }
    }

    /// Runs passes until `stop` changes.
    pub(crate) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        if self.schedules.is_empty() {
            return;
        }
        loop {
            let pause = match redis_now(self.queues.pool()).await {
                Ok(now) => match self.pass(now).await {
                    Some(next) => Duration::from_millis((next - now).clamp(1, 1_000) as u64),
                    None => MAX_PASS,
                },
                Err(e) => {
                    tracing::warn!(error = %e, "scheduler: cannot read the Redis clock");
                    MAX_PASS
                }
            };
            tokio::select! {
                _ = stop.changed() => return,
                () = tokio::time::sleep(pause.min(MAX_PASS)) => {}
            }
        }
    }
}
