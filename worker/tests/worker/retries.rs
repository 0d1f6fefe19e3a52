//! Retries as configured, exactly; permanent failures; the dead set.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use queue::{
    Backoff, JobError, JobOutcome, JobSpec, JobState, NewJob, Noop, QueueSettings,
    ResurrectOutcome, RetryPolicy,
};
use serde::{Deserialize, Serialize};
use testkit::RedisServer;
use worker::Registry;

use crate::helpers::{push, queue, settings, start, started, wait_for};

const LONG: Duration = Duration::from_secs(60);

/// Fails with a retryable error every time.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Flaky {}

impl JobSpec for Flaky {
    const NAME: &'static str = "flaky";
    const RETRY: RetryPolicy = RetryPolicy {
        max_attempts: 4,
        backoff: Backoff {
            base_ms: 300,
            factor: 2.0,
            cap_ms: 1_000,
            jitter: 0.0,
        },
    };
}

/// Fails with a permanent error.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Doomed {}

impl JobSpec for Doomed {
    const NAME: &'static str = "doomed";
    const RETRY: RetryPolicy = Flaky::RETRY;
}

type Starts = Arc<Mutex<Vec<(String, Instant)>>>;

fn registry(starts: Starts) -> Registry {
    let mut registry = worker::jobs::registry();
    let s = starts.clone();
    registry.register(move |_: Flaky, ctx: worker::JobContext| {
        let s = s.clone();
        async move {
            s.lock().unwrap().push((ctx.id.clone(), Instant::now()));
            Err::<JobOutcome, _>(JobError::retryable(format!(
                "upstream timed out (attempt {})",
                ctx.attempt
            )))
        }
    });
    registry.register(move |_: Doomed, ctx: worker::JobContext| {
        let s = starts.clone();
        async move {
            s.lock().unwrap().push((ctx.id.clone(), Instant::now()));
            Err::<JobOutcome, _>(JobError::permanent("product does not exist"))
        }
    });
    registry
}

#[tokio::test]
async fn a_retryable_failure_runs_exactly_max_attempts_times_at_the_backoff_delays() {
    let starts = Starts::default();
    let (redis, q, w) = started(registry(starts.clone())).await;

    let id = push(&q, &Flaky {}).await;
    // While a retry waits, its due time (Redis clock) is never further away
    // than its backoff: a delay longer than configured (the original waited
    // 180 s instead of 30 s) shows here, however slow the machine is.
    let nominal_ms = |attempts: u32| [300i64, 600, 1_000][attempts as usize - 1];
    let mut conn = redis.connection().await;
    let mut seen_waiting = 0;
    let deadline = tokio::time::Instant::now() + LONG;
    let rec = loop {
        let rec = q.status(&id).await.unwrap().unwrap().record;
        if rec.state == JobState::Failed {
            break rec;
        }
        if rec.state == JobState::Retrying {
            let (secs, micros): (i64, i64) =
                redis::cmd("TIME").query_async(&mut conn).await.unwrap();
            let now_ms = secs * 1_000 + micros / 1_000;
            let due_in = rec.run_at.unwrap() - now_ms;
            assert!(
                due_in <= nominal_ms(rec.attempts),
                "retry {} due in {due_in} ms",
                rec.attempts
            );
            seen_waiting += 1;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never failed: {rec:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(seen_waiting > 0, "never saw a retry waiting");

    // Exactly max_attempts runs, then the dead set with the last error.
    let runs: Vec<Instant> = starts
        .lock()
        .unwrap()
        .iter()
        .filter(|(j, _)| *j == id)
        .map(|(_, t)| *t)
        .collect();
    assert_eq!(runs.len(), 4);
    assert_eq!(rec.attempts, 4);
    assert!(
        rec.error
            .as_deref()
            .unwrap()
            .contains("gave up after 4 attempts: upstream timed out (attempt 4)")
    );
    let dead = q.dead(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, id);
    assert_eq!(q.depths().await.unwrap().retried_total, 3);

    // And no retry came before its backoff (300, 600, then capped 1000 ms).
    for (i, nominal) in [300u64, 600, 1_000].into_iter().enumerate() {
        let gap = runs[i + 1] - runs[i];
        assert!(
            gap >= Duration::from_millis(nominal),
            "retry {} came after {gap:?}",
            i + 1
        );
    }
    w.stop().await;
}

#[tokio::test]
async fn a_waiting_retry_does_not_hold_a_worker_slot() {
    let redis = RedisServer::start().await;
    let q = queue(&redis, QueueSettings::default());
    let mut s = settings(&redis, QueueSettings::default());
    s.concurrency = 1;
    s.prefetch = 1;
    let w = start(s, registry(Starts::default())).await;
    let slow_retry = RetryPolicy {
        max_attempts: 2,
        backoff: Backoff {
            base_ms: 60_000,
            factor: 1.0,
            cap_ms: 60_000,
            jitter: 0.0,
        },
    };
    let flaky = q
        .push(NewJob::of(&Flaky {}).unwrap().retry(slow_retry))
        .await
        .unwrap()
        .id;
    wait_for(&q, &flaky, &[JobState::Retrying], LONG).await;

    // With the only slot free, other work proceeds during the minute-long wait.
    let noop = push(&q, &Noop {}).await;
    wait_for(&q, &noop, &[JobState::Succeeded], LONG).await;
    assert_eq!(
        q.status(&flaky).await.unwrap().unwrap().record.state,
        JobState::Retrying
    );
    w.stop().await;
}

#[tokio::test]
async fn a_permanent_error_is_not_retried_and_the_dead_job_can_be_requeued() {
    let starts = Starts::default();
    let (_redis, q, w) = started(registry(starts.clone())).await;

    let id = push(&q, &Doomed {}).await;
    let rec = wait_for(&q, &id, &[JobState::Failed], LONG).await;
    assert_eq!(rec.attempts, 1);
    assert_eq!(starts.lock().unwrap().len(), 1);
    assert_eq!(
        rec.error.as_deref(),
        Some("permanent: product does not exist")
    );

    assert_eq!(q.resurrect(&id).await.unwrap(), ResurrectOutcome::Queued);
    wait_for(&q, &id, &[JobState::Failed], LONG).await;
    assert_eq!(
        starts.lock().unwrap().len(),
        2,
        "the re-enqueued job did not run again"
    );
    w.stop().await;
}

#[tokio::test]
async fn unknown_job_types_and_bad_arguments_are_dead_lettered_and_the_worker_goes_on() {
    let (_redis, q, w) = started(worker::jobs::registry()).await;

    let mut unknown = NewJob::of(&Noop {}).unwrap();
    unknown.name = "no_such_job".into();
    let mut bad_args = NewJob::of(&queue::Sleep { millis: 1 }).unwrap();
    bad_args.args = serde_json::json!({"millis": "soon"});
    let a = q.push(unknown).await.unwrap().id;
    let b = q.push(bad_args).await.unwrap().id;
    let c = push(&q, &Noop {}).await;

    let ra = wait_for(&q, &a, &[JobState::Failed], LONG).await;
    let rb = wait_for(&q, &b, &[JobState::Failed], LONG).await;
    wait_for(&q, &c, &[JobState::Succeeded], LONG).await;
    assert!(
        ra.error
            .unwrap()
            .contains("no handler for job type \"no_such_job\"")
    );
    assert!(rb.error.unwrap().contains("invalid arguments for sleep"));
    assert_eq!((ra.attempts, rb.attempts), (1, 1));
    w.stop().await;
}

/// Panics.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Panics {}

impl JobSpec for Panics {
    const NAME: &'static str = "panics";
    const RETRY: RetryPolicy = Flaky::RETRY;
}

#[tokio::test]
async fn a_panicking_handler_buries_its_job_and_the_worker_goes_on() {
    let mut registry = worker::jobs::registry();
    registry.register(|_: Panics, _ctx: worker::JobContext| async move {
        let v: Vec<u8> = Vec::new();
        // An out-of-bounds index: a bug in a handler.
        Ok::<_, JobError>(JobOutcome::succeeded(serde_json::json!(v[3])))
    });
    let (_redis, q, w) = started(registry).await;

    let bad = push(&q, &Panics {}).await;
    let good = push(&q, &Noop {}).await;

    let rec = wait_for(&q, &bad, &[JobState::Failed], LONG).await;
    assert!(rec.error.unwrap().starts_with("permanent:"));
    assert_eq!(rec.attempts, 1);
    wait_for(&q, &good, &[JobState::Succeeded], LONG).await;
    let d = q.depths().await.unwrap();
    assert_eq!(d.running, 0, "a job was left running after the panic");
    w.stop().await;
}
