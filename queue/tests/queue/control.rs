//! Pausing a queue, and global rate limits, in the fetch script.

use std::time::Duration;

use queue::{JobState, NewJob, Noop, Queue, QueueSettings, Rate, RevokeOutcome, Sleep};
use testkit::{RedisKind, TestRedis};

testkit::redis_suite!(
    a_paused_queue_hands_out_nothing_and_still_takes_pushes,
    jobs_over_a_rate_limit_wait_for_their_turn_without_spending_an_attempt,
    a_revoke_whose_worker_died_cancels_the_job_when_its_lease_is_reaped,
    a_schedule_tick_is_queued_once_and_never_behind_the_last_one,
);

async fn a_paused_queue_hands_out_nothing_and_still_takes_pushes(kind: RedisKind) {
    let redis = TestRedis::start(kind).await;
    let q = Queue::new(redis.pool("pq"), "pq", "default", QueueSettings::default());
    let running = q.push(NewJob::of(&Noop {}).unwrap()).await.unwrap().id;
    let leased = q.fetch("w", 1).await.unwrap().remove(0);
    assert_eq!(leased.id, running);

    q.pause().await.unwrap();
    let later = q.push(NewJob::of(&Noop {}).unwrap()).await.unwrap().id;
    let got = q.fetch_batch("w", 10).await.unwrap();

    assert!(got.paused && got.jobs.is_empty());
    let d = q.depths().await.unwrap();
    assert!(d.paused);
    assert_eq!((d.pending, d.running), (1, 1));
    // A job running when the queue was paused finishes normally.
    assert!(
        q.complete(&leased, JobState::Succeeded, &serde_json::json!(1))
            .await
            .unwrap()
    );

    q.resume().await.unwrap();
    let got = q.fetch_batch("w", 10).await.unwrap();
    assert!(!got.paused);
    assert_eq!(
        got.jobs.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        [later.as_str()]
    );
    assert!(!q.depths().await.unwrap().paused);
}

async fn jobs_over_a_rate_limit_wait_for_their_turn_without_spending_an_attempt(kind: RedisKind) {
    let redis = TestRedis::start(kind).await;
    let mut settings = QueueSettings::default();
    settings
        .rate_limits
        .insert("sleep".into(), Rate::parse("2/s").unwrap());
    let q = Queue::new(redis.pool("rl"), "rl", "default", settings);
    for _ in 0..5 {
        q.push(NewJob::of(&Sleep { millis: 1 }).unwrap())
            .await
            .unwrap();
    }
    // A type without a limit is not held back.
    q.push(NewJob::of(&Noop {}).unwrap()).await.unwrap();

    let got = q.fetch_batch("w", 10).await.unwrap();

    let names: Vec<&str> = got.jobs.iter().map(|j| j.record.name.as_str()).collect();
    assert_eq!(
        names,
        ["sleep", "noop"],
        "one sleep admitted, the noop unlimited"
    );
    assert_eq!(got.deferred, 4);
    let d = q.depths().await.unwrap();
    assert_eq!((d.pending, d.delayed, d.running), (0, 4, 2));
    // The deferred ones wait as scheduled, one interval (500 ms) apart,
    // with no attempt spent.
    let (mut conn, _) = q.pool().get();
    let due: Vec<(String, i64)> = redis::cmd("ZRANGE")
        .arg("{rl:default}:delayed")
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut conn)
        .await
        .unwrap();
    let first = got.jobs[0].record.started_at.unwrap();
    for (k, (id, at)) in due.iter().enumerate() {
        assert_eq!(*at, first + 500 * (k as i64 + 1), "{due:?}");
        let r = q.status(id).await.unwrap().unwrap().record;
        assert_eq!((r.state, r.attempts), (JobState::Scheduled, 0));
    }
    // When their turn comes they are admitted one by one.
    testkit::eventually(
        Duration::from_secs(30),
        "the first deferred job due",
        || async { q.promote_due().await.unwrap().0 > 0 },
    )
    .await;
    let next = q.fetch_batch("w", 10).await.unwrap();
    assert_eq!(next.jobs.len(), 1);
    assert!(next.jobs[0].record.started_at.unwrap() >= first + 500);
}

async fn a_revoke_whose_worker_died_cancels_the_job_when_its_lease_is_reaped(kind: RedisKind) {
    // Arrange: a job leased by a worker that then dies (it never heartbeats).
    let redis = TestRedis::start(kind).await;
    let settings = QueueSettings {
        lease: Duration::from_millis(300),
        ..QueueSettings::default()
    };
    let q = Queue::new(redis.pool("rv"), "rv", "default", settings);
    let id = q.push(NewJob::of(&Noop {}).unwrap()).await.unwrap().id;
    let pending = q.push(NewJob::of(&Noop {}).unwrap()).await.unwrap().id;
    let leased = q.fetch("dead-worker", 1).await.unwrap().remove(0);
    assert_eq!(leased.id, id);

    // Act: revoke it; only a pending job is not revocable (it is cancelled instead).
    let outcome = q.revoke(&id, "rv:control").await.unwrap();
    let not_running = q.revoke(&pending, "rv:control").await.unwrap();
    let unknown = q.revoke("no-such-job", "rv:control").await.unwrap();
    testkit::eventually(Duration::from_secs(30), "the lease was reaped", || async {
        q.reap_expired().await.unwrap();
        q.status(&id).await.unwrap().unwrap().record.state != JobState::Running
    })
    .await;

    // Assert: cancelled, not retried, and its slot is free for the next job.
    assert_eq!(outcome, RevokeOutcome::Revoking);
    assert_eq!(not_running, RevokeOutcome::NotRunning(JobState::Pending));
    assert_eq!(unknown, RevokeOutcome::NotFound);
    let record = q.status(&id).await.unwrap().unwrap().record;
    assert_eq!(record.state, JobState::Cancelled);
    assert_eq!(record.attempts, 1);
    let next = q.fetch("w", 10).await.unwrap();
    assert_eq!(
        next.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        [pending.as_str()]
    );
    assert_eq!(q.depths().await.unwrap().running, 1);
}

async fn a_schedule_tick_is_queued_once_and_never_behind_the_last_one(kind: RedisKind) {
    let redis = TestRedis::start(kind).await;
    let q = Queue::new(redis.pool("tk"), "tk", "default", QueueSettings::default());
    let tick = |at: i64, by: &str| {
        let mut job = NewJob::of(&Noop {}).unwrap();
        job.tick = Some(queue::Tick {
            schedule: "every_second".into(),
            at,
            by: by.into(),
        });
        job
    };
    let t = 1_800_000_000_000;

    let first = q.push(tick(t, "w1")).await.unwrap();
    let again = q.push(tick(t, "w2")).await.unwrap();
    let older = q.push(tick(t - 1_000, "w3")).await.unwrap();
    let next = q.push(tick(t + 1_000, "w2")).await.unwrap();

    assert!(!first.tick_taken && !next.tick_taken);
    assert!(again.tick_taken && older.tick_taken);
    assert_eq!(q.depths().await.unwrap().pending, 2);
    let runs = q.last_runs().await.unwrap();
    let last = &runs["every_second"];
    assert_eq!(last.tick.timestamp_millis(), t + 1_000);
    assert_eq!(
        (last.task_id.as_str(), last.enqueued_by.as_str()),
        (next.id.as_str(), "w2")
    );
    let record = q.status(&next.id).await.unwrap().unwrap().record;
    assert_eq!(
        (record.schedule.as_deref(), record.tick),
        (Some("every_second"), Some(t + 1_000))
    );

    // A tick with a unique key joins the job waiting under it, and the
    // schedule's last run names that job.
    let waiting = q
        .push(NewJob::of(&Noop {}).unwrap().unique("only-one"))
        .await
        .unwrap();
    let joined = q
        .push(tick(t + 2_000, "w1").unique("only-one"))
        .await
        .unwrap();
    assert!(joined.duplicate && !joined.tick_taken);
    assert_eq!(joined.id, waiting.id);
    let last = &q.last_runs().await.unwrap()["every_second"];
    assert_eq!(
        (last.tick.timestamp_millis(), last.task_id.as_str()),
        (t + 2_000, waiting.id.as_str())
    );
}
