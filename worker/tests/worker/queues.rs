//! Named queues: routing, strict priority, every queue drained.

use std::time::Duration;

use queue::{Consume, JobState, NewJob, Noop, QueueSettings, Queues, Routes, Sleep};
use testkit::{RedisServer, eventually};
use worker::Settings;

use crate::helpers::{NS, pool, settings, start, wait_for};

/// A guard against a hang, never a timing check.
const LONG: Duration = Duration::from_secs(60);

fn routes() -> Routes {
    let mut r = Routes::default();
    r.apply("sleep=bulk,noop=events").unwrap();
    r
}

fn queues(redis: &RedisServer) -> Queues {
    Queues::new(pool(redis), NS, routes(), QueueSettings::default())
}

/// Worker settings that route by [`routes`] and consume every queue.
fn routed_settings(redis: &RedisServer, queue: QueueSettings) -> Settings {
    let mut s = settings(redis, queue);
    (s.routes, s.consume) = (routes(), Consume::default());
    s
}

#[tokio::test]
async fn a_targeted_job_on_events_runs_before_the_bulk_backlog() {
    // Arrange: one slot, busy with a bulk job, three more bulk jobs waiting.
    let redis = RedisServer::start().await;
    let q = queues(&redis);
    let mut s = routed_settings(&redis, QueueSettings::default());
    (s.concurrency, s.prefetch) = (1, 1);
    let bulk: Vec<String> = {
        let mut ids = Vec::new();
        for _ in 0..4 {
            let job = NewJob::of(&Sleep { millis: 400 }).unwrap();
            ids.push(q.push(job).await.unwrap().id);
        }
        ids
    };
    assert_eq!(q.get("bulk").unwrap().depths().await.unwrap().pending, 4);
    let w = start(s, worker::jobs::registry()).await;
    let bulk_q = q.get("bulk").unwrap().clone();
    wait_for(&bulk_q, &bulk[0], &[JobState::Running], LONG).await;

    // Act: a targeted job arrives on `events` while the bulk job runs.
    let urgent = q.push(NewJob::of(&Noop {}).unwrap()).await.unwrap().id;
    let events_q = q.get("events").unwrap().clone();
    let done = wait_for(&events_q, &urgent, &[JobState::Succeeded], LONG).await;

    // Assert: it was leased before any of the bulk jobs that were waiting
    // before it was pushed (`started_at` is the lease's time).
    for id in &bulk[1..] {
        let later = wait_for(&bulk_q, id, &[JobState::Succeeded], LONG).await;
        assert!(
            later.started_at > done.started_at,
            "bulk job {id} started before the events job"
        );
    }
    w.stop().await;
}

#[tokio::test]
async fn a_worker_drains_only_the_queues_it_consumes() {
    let redis = RedisServer::start().await;
    let q = queues(&redis);
    let mut s = settings(&redis, QueueSettings::default());
    let known = routes().queues();
    (s.routes, s.consume) = (
        routes(),
        Consume::parse("events:3,default:1", &known).unwrap(),
    );
    for _ in 0..20 {
        q.push(NewJob::of(&Noop {}).unwrap()).await.unwrap();
        q.push(NewJob::of(&Sleep { millis: 1 }).unwrap())
            .await
            .unwrap();
    }
    let w = start(s, worker::jobs::registry()).await;
    let events = q.get("events").unwrap();
    testkit::eventually(LONG, "the events queue drained", || async {
        events.depths().await.unwrap().succeeded_total == 20
    })
    .await;
    // No worker consumes `bulk`: its jobs wait, untouched.
    let bulk = q.get("bulk").unwrap().depths().await.unwrap();
    assert_eq!((bulk.pending, bulk.succeeded_total), (20, 0));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_of_32_slots_never_start_a_limited_type_faster_than_its_rate() {
    // Arrange: 300 jobs of a type limited to 100 starts a second.
    let redis = RedisServer::start().await;
    let q = queues(&redis);
    let mut queue_settings = QueueSettings::default();
    queue_settings
        .rate_limits
        .insert("sleep".into(), queue::Rate::parse("100/s").unwrap());
    let jobs: Vec<NewJob> = (0..300)
        .map(|_| NewJob::of(&Sleep { millis: 1 }).unwrap())
        .collect();
    let ids: Vec<String> = q
        .push_bulk(&jobs)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();

    // Act: four workers of 32 slots, all at once.
    let mut workers = Vec::new();
    for _ in 0..4 {
        let mut s = routed_settings(&redis, queue_settings.clone());
        (s.concurrency, s.prefetch) = (32, 32);
        workers.push(start(s, worker::jobs::registry()).await);
    }
    let bulk = q.get("bulk").unwrap().clone();
    let mut starts = Vec::new();
    for id in &ids {
        let r = wait_for(&bulk, id, &[JobState::Succeeded], LONG).await;
        assert_eq!(r.attempts, 1, "a deferral spent an attempt");
        starts.push(r.started_at.unwrap());
    }
    for w in workers {
        w.stop().await;
    }

    // Assert: on the Redis clock, every start came at least one interval
    // (10 ms) after the previous one, so no window saw more than its share.
    starts.sort_unstable();
    let gaps: Vec<i64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|g| *g >= 10),
        "a gap under 10 ms: {:?}",
        gaps.iter().min()
    );
    let busiest = starts
        .iter()
        .map(|t| {
            starts
                .iter()
                .filter(|s| **s >= *t && **s < t + 1_000)
                .count()
        })
        .max()
        .unwrap();
    assert!(busiest <= 100, "{busiest} starts in one second");
    let deferred = q.get("bulk").unwrap().depths().await.unwrap();
    assert_eq!(deferred.succeeded_total, 300);
}

#[tokio::test]
async fn maintenance_samples_the_counters_so_rates_exist_before_a_dashboard_looks() {
    let redis = RedisServer::start().await;
    let q = queues(&redis);
    let s = routed_settings(&redis, QueueSettings::default());
    let events = q.get("events").unwrap().clone();
    let history = format!("{{{NS}:events}}:history");
    let samples = || async {
        let mut conn = redis.connection().await;
        redis::cmd("ZCARD")
            .arg(&history)
            .query_async::<u64>(&mut conn)
            .await
            .unwrap()
    };
    let w = start(s, worker::jobs::registry()).await;
    // Nothing but the worker reads the queue: its maintenance takes the samples.
    eventually(LONG, "a sample of the events queue", || async {
        samples().await > 0
    })
    .await;
    for _ in 0..5 {
        q.push(NewJob::of(&Noop {}).unwrap()).await.unwrap();
    }
    eventually(LONG, "the events queue drained", || async {
        events.depths().await.unwrap().succeeded_total == 5
    })
    .await;
    let done = samples().await;
    eventually(LONG, "a sample after the jobs ran", || async {
        samples().await > done
    })
    .await;

    let t = events.throughput(queue::browse::RATE_WINDOW).await.unwrap();
    let secs = t.window_secs.expect("a window between two samples");
    let finished = t.finished_per_sec.unwrap() * secs;
    assert!(
        (finished - 5.0).abs() < 1e-6,
        "{finished} finished in the window"
    );
    assert!((t.started_per_sec.unwrap() * secs - 5.0).abs() < 1e-6);
    w.stop().await;
}
