//! At-least-once delivery: completion, crashes, heartbeats, Redis restarts, backlogs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use queue::{
    Backoff, JobError, JobOutcome, JobSpec, JobState, NewJob, Noop, QueueSettings, RetryPolicy,
    Sleep,
};
use serde::{Deserialize, Serialize};
use testkit::RedisServer;
use worker::Registry;

use crate::helpers::{push, push_all, queue, settings, start, start_on, started, wait_for};

const LONG: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Count {
    millis: u64,
}

impl JobSpec for Count {
    const NAME: &'static str = "count";
    const RETRY: RetryPolicy = RetryPolicy {
        max_attempts: 1,
        backoff: Backoff {
            base_ms: 100,
            factor: 2.0,
            cap_ms: 1_000,
            jitter: 0.0,
        },
    };
}

fn counting_registry(runs: Arc<AtomicUsize>) -> Registry {
    let mut registry = worker::jobs::registry();
    registry.register(move |job: Count, _ctx| {
        let runs = runs.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(job.millis)).await;
            Ok::<_, JobError>(JobOutcome::succeeded(
                serde_json::json!({"slept": job.millis}),
            ))
        }
    });
    registry
}

#[tokio::test]
async fn jobs_run_once_and_report_their_result_and_worker() {
    let (_redis, q, w) = started(worker::jobs::registry()).await;

    let jobs: Vec<NewJob> = (0..50)
        .map(|i| NewJob::of(&Sleep { millis: i % 3 }).unwrap())
        .collect();
    let ids = push_all(&q, &jobs).await;

    for id in &ids {
        let rec = wait_for(&q, id, &[JobState::Succeeded], LONG).await;
        assert_eq!(rec.attempts, 1);
        assert_eq!(rec.worker.as_deref(), Some(w.id.as_str()));
        assert!(rec.started_at.unwrap() >= rec.enqueued_at.unwrap());
        assert!(rec.finished_at.unwrap() >= rec.started_at.unwrap());
    }
    let status = q.status(&ids[1]).await.unwrap().unwrap();
    assert_eq!(status.result.unwrap()["slept_ms"], 1);
    let depths = q.depths().await.unwrap();
    assert_eq!(
        (depths.pending, depths.running, depths.succeeded_total),
        (0, 0, 50)
    );
    w.stop().await;
}

#[tokio::test]
async fn a_job_leaves_the_queue_only_after_its_handler_finishes() {
    let (_redis, q, w) = started(worker::jobs::registry()).await;
    let id = push(&q, &Sleep { millis: 1_500 }).await;

    let running = wait_for(&q, &id, &[JobState::Running], LONG).await;
    // While it runs, it is still held in Redis under a lease, not gone.
    assert_eq!(running.worker.as_deref(), Some(w.id.as_str()));
    assert_eq!(q.depths().await.unwrap().running, 1);
    wait_for(&q, &id, &[JobState::Succeeded], LONG).await;
    assert_eq!(q.depths().await.unwrap().running, 0);
    w.stop().await;
}

#[tokio::test]
async fn a_killed_workers_job_runs_on_another_worker_after_its_lease() {
    // Arrange: a real worker process with a 2 s lease runs a 4 s job.
    let redis = RedisServer::start().await;
    let short_lease = QueueSettings {
        lease: Duration::from_secs(2),
        heartbeat: Duration::from_millis(500),
        ..QueueSettings::default()
    };
    let q = queue(&redis, short_lease.clone());
    let id = push(&q, &Sleep { millis: 4_000 }).await;
    let mut victim = std::process::Command::new(env!("CARGO_BIN_EXE_worker"))
        .env("REDIS_URL", redis.url())
        .env("REDIS_NAMESPACE", crate::helpers::NS)
        .env("JOB_LEASE_SECS", "2")
        .env("JOB_HEARTBEAT_SECS", "1")
        .env("WORKER_METRICS_ADDR", "127.0.0.1:0")
        .env("DATABASE_URL", "sqlite::memory:")
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let first = wait_for(&q, &id, &[JobState::Running], LONG).await;

    // Act: SIGKILL mid-job, then another worker comes up.
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &victim.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    victim.wait().unwrap();
    let survivor = start(settings(&redis, short_lease), worker::jobs::registry()).await;

    // Assert: it runs again, on the survivor, to success.
    let done = wait_for(&q, &id, &[JobState::Succeeded], LONG).await;
    assert_ne!(first.worker, done.worker);
    assert_eq!(done.worker.as_deref(), Some(survivor.id.as_str()));
    assert_eq!(done.leases_lost, 1);
    survivor.stop().await;
}

#[tokio::test]
async fn a_heartbeat_keeps_a_long_job_from_running_twice() {
    // A job that runs for four lease periods, with two workers competing.
    let redis = RedisServer::start().await;
    let lease = QueueSettings {
        lease: Duration::from_millis(1_500),
        heartbeat: Duration::from_millis(300),
        ..QueueSettings::default()
    };
    let q = queue(&redis, lease.clone());
    let runs = Arc::new(AtomicUsize::new(0));
    let a = start(
        settings(&redis, lease.clone()),
        counting_registry(runs.clone()),
    )
    .await;
    let b = start(settings(&redis, lease), counting_registry(runs.clone())).await;

    let id = push(&q, &Count { millis: 6_000 }).await;
    let done = wait_for(&q, &id, &[JobState::Succeeded], LONG).await;

    assert_eq!(runs.load(Ordering::SeqCst), 1, "the job ran more than once");
    assert_eq!((done.attempts, done.leases_lost), (1, 0));
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn workers_resume_after_a_redis_restart_and_lose_nothing_with_aof() {
    let mut redis = RedisServer::start_persistent().await;
    let q = queue(&redis, QueueSettings::default());
    let w = start_on(&redis, worker::jobs::registry()).await;
    let jobs = |n| {
        (0..n)
            .map(|_| NewJob::of(&Sleep { millis: 5 }).unwrap())
            .collect::<Vec<_>>()
    };
    let mut ids = push_all(&q, &jobs(200)).await;

    // Redis dies while jobs flow, and comes back with its AOF.
    tokio::time::sleep(Duration::from_millis(100)).await;
    redis.stop();
    let ready = format!("http://{}/ready", w.metrics);
    let client = reqwest::Client::new();
    let during = client.get(&ready).send().await.unwrap();
    assert_eq!(during.status(), 503, "readiness hid the outage");
    tokio::time::sleep(Duration::from_millis(400)).await;
    redis.restart().await;
    while q.pool().ping_all().await.is_err() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ids.extend(push_all(&q, &jobs(50)).await);

    for id in &ids {
        wait_for(&q, id, &[JobState::Succeeded], LONG).await;
    }
    let depths = q.depths().await.unwrap();
    assert_eq!(
        (depths.pending, depths.running, depths.delayed, depths.dead),
        (0, 0, 0, 0)
    );
    w.stop().await;
}

#[tokio::test]
async fn a_backlog_far_past_eight_thousand_drains_without_error() {
    // apalis-redis 1.0.0 dies above ~8,000 due jobs; every script here moves
    // a bounded batch. (The million-job run is scripts/bench-queue.)
    let redis = RedisServer::start().await;
    let q = queue(&redis, QueueSettings::default());
    let n = 30_000;
    let chunk: Vec<NewJob> = (0..1_000).map(|_| NewJob::of(&Noop {}).unwrap()).collect();
    for _ in 0..(n / 1_000) {
        push_all(&q, &chunk).await;
    }
    let mut s = settings(&redis, QueueSettings::default());
    s.concurrency = 64;
    s.prefetch = 64;
    let w = start(s, worker::jobs::registry()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let d = q.depths().await.unwrap();
        if d.succeeded_total == n {
            assert_eq!((d.pending, d.running, d.dead, d.failed_total), (0, 0, 0, 0));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "backlog stuck at {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.stop().await;
}
