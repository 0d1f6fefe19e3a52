//! Periodic schedules across several workers: each tick queued exactly
//! once, and none lost when the worker that queued the last one dies.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use queue::schedule::{Missed, Schedule, ScheduleSettings};
use queue::{DEFAULT_QUEUE, Queue, QueueSettings};
use testkit::RedisServer;

use crate::helpers::{queue, scrape, settings, start, wait_for_series};

const LONG: Duration = Duration::from_secs(60);

fn every_second(name: &str) -> ScheduleSettings {
    ScheduleSettings {
        schedules: vec![Schedule::parse(name, "noop", "@every 1s", serde_json::json!({})).unwrap()],
        missed: Missed::Skip,
    }
}

/// The tick of every job queued for `schedule`, in order, read from the
/// queue's job records (every job ever pushed has one).
async fn ticks_of(q: &Queue, schedule: &str) -> Vec<i64> {
    let (mut conn, _) = q.pool().get();
    let ids: Vec<String> = redis::cmd("HKEYS")
        .arg(format!("{{{}:{DEFAULT_QUEUE}}}:jobs", crate::helpers::NS))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut ticks = Vec::new();
    for id in ids {
        let record = q.status(&id).await.unwrap().unwrap().record;
        if record.schedule.as_deref() == Some(schedule) {
            ticks.push(record.tick.expect("a scheduled job records its tick"));
        }
    }
    ticks.sort_unstable();
    ticks
}

/// Every tick from the first to the last, each once: none doubled, none lost.
fn assert_each_tick_once(ticks: &[i64]) {
    assert!(!ticks.is_empty(), "no tick was queued");
    let expected: Vec<i64> = (0..ticks.len() as i64)
        .map(|i| ticks[0] + i * 1_000)
        .collect();
    assert_eq!(
        ticks, expected,
        "ticks must be consecutive seconds, each once"
    );
}

#[tokio::test]
async fn three_workers_queue_each_tick_of_a_one_second_schedule_exactly_once() {
    // Arrange: three workers, each running the scheduler.
    let redis = RedisServer::start().await;
    let q = queue(&redis, QueueSettings::default());
    let mut s = settings(&redis, QueueSettings::default());
    s.schedules = every_second("beat3");
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(start(s.clone(), worker::jobs::registry()).await);
    }

    // Act: let at least five ticks pass.
    testkit::eventually(LONG, "five ticks queued", || {
        let q = q.clone();
        async move { ticks_of(&q, "beat3").await.len() >= 5 }
    })
    .await;
    let metrics = scrape(&workers[0]).await;
    for w in workers {
        w.stop().await;
    }

    // Assert: N ticks, N jobs; the last run is the last tick.
    let ticks = ticks_of(&q, "beat3").await;
    assert_each_tick_once(&ticks);
    let last = q.last_runs().await.unwrap().remove("beat3").unwrap();
    assert_eq!(last.tick.timestamp_millis(), *ticks.last().unwrap());
    for outcome in ["enqueued", "taken"] {
        let series = format!("schedule_ticks_total{{schedule=\"beat3\",outcome=\"{outcome}\"}}");
        assert!(metrics.contains(&series), "{series} missing:\n{metrics}");
    }
}

/// Worker processes, SIGKILLed when dropped so a failing test leaves none.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A worker process that runs a one-second `beat` schedule.
fn spawn_worker(redis: &RedisServer, dir: &std::path::Path, n: usize) -> Child {
    Command::new(env!("CARGO_BIN_EXE_worker"))
        .env("REDIS_URL", redis.url())
        .env("REDIS_NAMESPACE", crate::helpers::NS)
        .env(
            "DATABASE_URL",
            format!("sqlite://{}/catalog-{n}.db", dir.display()),
        )
        .env("WORKER_METRICS_ADDR", "127.0.0.1:0")
        .env("SCHEDULE_BEAT", "@every 1s")
        .env("SCHEDULE_BEAT_JOB", "noop")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the worker binary")
}

#[tokio::test]
async fn when_the_worker_that_queued_the_last_tick_is_killed_the_next_tick_still_comes() {
    // Arrange: three worker processes; wait for a queued tick.
    let redis = RedisServer::start().await;
    let q = queue(&redis, QueueSettings::default());
    let dir = tempfile::tempdir().unwrap();
    let mut children = Children(
        (0..3)
            .map(|n| spawn_worker(&redis, dir.path(), n))
            .collect(),
    );
    let q2 = q.clone();
    testkit::eventually(LONG, "a first tick queued", || {
        let q = q2.clone();
        async move { q.last_runs().await.unwrap().contains_key("beat") }
    })
    .await;

    // Act: SIGKILL the worker that queued the last tick (its id holds its pid).
    let last = q.last_runs().await.unwrap().remove("beat").unwrap();
    let pid_of = |id: &str| -> u32 { id.rsplit('-').nth(1).unwrap().parse().unwrap() };
    let victim = pid_of(&last.enqueued_by);
    let at = children.0.iter().position(|c| c.id() == victim).unwrap();
    let mut killed = children.0.remove(at);
    killed.kill().unwrap();
    killed.wait().unwrap();
    // It may have queued one more tick before the signal landed.
    let after_kill = q.last_runs().await.unwrap().remove("beat").unwrap().tick;

    // Assert: a later tick is queued by a survivor, and no tick was lost.
    let q2 = q.clone();
    testkit::eventually(LONG, "a tick after the kill", || {
        let q = q2.clone();
        async move { q.last_runs().await.unwrap()["beat"].tick > after_kill }
    })
    .await;
    let next = q.last_runs().await.unwrap().remove("beat").unwrap();
    assert_ne!(pid_of(&next.enqueued_by), victim);
    drop(children);
    let ticks = ticks_of(&q, "beat").await;
    assert_each_tick_once(&ticks);
    for t in [last.tick, next.tick] {
        assert!(ticks.contains(&t.timestamp_millis()), "{t} not queued");
    }
}

/// A schedule whose latest tick is long past (the 300-day interval's
/// epoch-aligned tick), as a worker sees it after every worker was down.
fn long_missed(name: &str, missed: Missed) -> ScheduleSettings {
    ScheduleSettings {
        schedules: vec![
            Schedule::parse(name, "noop", "@every 300d", serde_json::json!({})).unwrap(),
        ],
        missed,
    }
}

#[tokio::test]
async fn a_missed_tick_is_run_once_under_once_and_skipped_under_skip() {
    let redis = RedisServer::start().await;
    let q = queue(&redis, QueueSettings::default());
    let base = settings(&redis, QueueSettings::default());

    // once: the latest missed tick is queued, by one worker of two.
    let mut s = base.clone();
    s.schedules = long_missed("missed_once", Missed::Once);
    let a = start(s.clone(), worker::jobs::registry()).await;
    let b = start(s, worker::jobs::registry()).await;
    let taken = "schedule_ticks_total{schedule=\"missed_once\",outcome=\"taken\"} 1";
    wait_for_series(&a, taken, LONG, "the second worker saw the tick taken").await;
    let ticks = ticks_of(&q, "missed_once").await;
    let expected = long_missed("x", Missed::Once).schedules[0]
        .latest_due(chrono::Utc::now().timestamp_millis())
        .unwrap();
    assert_eq!(ticks, [expected], "the latest missed tick, once");
    a.stop().await;
    b.stop().await;

    // skip: nothing is queued; the tick is counted as skipped.
    let mut s = base;
    s.schedules = long_missed("missed_skip", Missed::Skip);
    let c = start(s, worker::jobs::registry()).await;
    let skipped = "schedule_ticks_total{schedule=\"missed_skip\",outcome=\"skipped\"} 1";
    wait_for_series(&c, skipped, LONG, "the tick counted as skipped").await;
    assert!(ticks_of(&q, "missed_skip").await.is_empty());
    assert!(!q.last_runs().await.unwrap().contains_key("missed_skip"));
    c.stop().await;
}
