//! The queue's Redis operations against a real redis-server and a real
//! Redis Cluster (`redis_suite!`: each test runs on both), covering every
//! queue script.

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

use std::time::Duration;

use queue::{
    Backoff, CancelOutcome, DeferOutcome, JobState, NewJob, Noop, Queue, QueueSettings,
    ResurrectOutcome, RetryPolicy, Sleep,
};
use serde_json::json;
use testkit::{RedisKind, TestRedis};

mod browse;
mod control;
mod failover;
mod helpers;

use helpers::push_all;

async fn queue_with(redis: &TestRedis, settings: QueueSettings) -> Queue {
    Queue::new(redis.pool("t"), "t", "default", settings)
}

fn noop() -> NewJob {
    NewJob::of(&Noop {}).unwrap()
}

testkit::redis_suite!(
    a_job_is_fetched_once_and_its_result_recorded,
    only_the_attempt_holding_the_lease_reports_progress,
    an_unknown_id_is_not_found_never_pending,
    a_unique_key_returns_the_pending_job_with_default_settings,
    a_deferred_job_keeps_its_unique_key_and_its_attempts,
    a_deferred_job_is_coalesced_into_a_newer_waiting_one,
    a_requeued_or_retrying_job_holds_its_unique_key,
    delayed_jobs_wait_until_due,
    cancel_stops_pending_and_scheduled_jobs_and_refuses_running_ones,
    an_expired_lease_puts_the_job_back_and_a_heartbeat_keeps_it,
    retries_wait_in_the_delayed_set_and_the_dead_set_can_requeue,
    finished_records_expire_and_memory_returns_to_its_baseline,
    a_batch_of_outcomes_refuses_only_the_stale_lease,
    an_unreadable_record_is_buried_and_the_rest_of_the_batch_runs,
);

async fn a_job_is_fetched_once_and_its_result_recorded(kind: RedisKind) {
    let redis = TestRedis::start(kind).await;
    let q = queue_with(&redis, QueueSettings::default()).await;

    let pushed = q.push(noop()).await.unwrap();
    let status = q.status(&pushed.id).await.unwrap().unwrap();
    assert_eq!(status.record.state, JobState::Pending);
    assert!(status.record.enqueued_at.is_some());

    let leased = q.fetch("w1", 10).await.unwrap();
    assert_eq!(leased.len(), 1);
    assert!(q.fetch("w2", 10).await.unwrap().is_empty(), "fetched twice");
    let running = q.status(&pushed.id).await.unwrap().unwrap().record;
    assert_eq!(
        (running.state, running.attempts, running.worker.as_deref()),
        (JobState::Running, 1, Some("w1"))
    );
    assert_eq!(q.depths().await.unwrap().running, 1);

    assert!(
        q.complete(&leased[0], JobState::Succeeded, &json!({"ok": true}))
            .await
            .unwrap()
    );
    let done = q.status(&pushed.id).await.unwrap().unwrap();
    assert_eq!(done.record.state, JobState::Succeeded);
    assert_eq!(done.result, Some(json!({"ok": true})));
    assert!(done.record.finished_at.is_some());
    let depths = q.depths().await.unwrap();
    assert_eq!(
        (depths.pending, depths.running, depths.succeeded_total),
        (0, 0, 1)
    );
}

async fn only_the_attempt_holding_the_lease_reports_progress(kind: RedisKind) {
    let redis = TestRedis::start(kind).await;
    let q = queue_with(&redis, QueueSettings::default()).await;
    let pushed = q.push(noop()).await.unwrap();
    let leased = q.fetch("w1", 1).await.unwrap().remove(0);

    let half = json!({"processed": 1, "total": 2});
    assert!(
        q.report_progress(&pushed.id, leased.token(), &half)
            .await
            .unwrap()
    );
    assert_eq!(
        q.status(&pushed.id).await.unwrap().unwrap().result,
        Some(half.clone())
    );

    // A stale attempt (another token), and any attempt once the job is done,
    // change nothing.
    let stale = json!({"processed": 0, "total": 2});
    assert!(
        !q.report_progress(&pushed.id, "not-the-lease", &stale)
            .await
            .unwrap()
    );
    assert_eq!(
        q.status(&pushed.id).await.unwrap().unwrap().result,
        Some(half)
    );
    let done = json!({"ok": true});
    assert!(
        q.complete(&leased, JobState::Succeeded, &done)
            .await
            .unwrap()
    );
    assert!(
        !q.report_progress(&pushed.id, leased.token(), &stale)
            .await
            .unwrap()
    );
    assert_eq!(
        q.status(&pushed.id).await.unwrap().unwrap().result,
        Some(done)
    );
}

async fn an_unknown_id_is_not_found_never_pending(kind: RedisKind) {
    let redis = TestRedis::start(kind).await;
    let q = queue_with(&redis, QueueSettings::default()).await;
    assert!(
        q.status("01JUNKNOWN0000000000000000")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(q.cancel("nope").await.unwrap(), CancelOutcome::NotFound);
}

async fn a_unique_key_returns_the_pending_job_with_default_settings(kind: RedisKind) {
    let redis = TestRedis::start(kind).await;
    let q = queue_with(&redis, QueueSettings::default()).await;

    let first = q.push(noop().unique("recalc-all")).await.unwrap();
    let second = q.push(noop().unique("recalc-all")).await.unwrap();
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(first.id, second.id);
    assert_eq!(q.depths().await.unwrap().pending, 1);

    // Once the first one runs, the key is free again.
    let leased = q.fetch("w", 10).await.unwrap();
    assert_eq!(leased.len(), 1);
    let third = q.push(noop().unique("recalc-all")).await.unwrap();
    assert!(!third.duplicate);
    assert_ne!(third.id, first.id);
}

async fn a_deferred_job_keeps_its_unique_key_and_its_attempts(kind: RedisKind) {
    let redis = TestRedis::start(kind).await;
    let q = queue_with(&redis, QueueSettings::default()).await;
    let first = q.push(noop().unique("recalc-all")).await.unwrap();
    let leased = q.fetch("w", 10).await.unwrap();
    assert_eq!(leased[0].record.attempts, 1);

    // Deferred: scheduled again, no attempt spent, the note in its status.
    let note = json!({"status": "waiting"});
    let got = q
        .defer(&leased[0], Duration::from_millis(200), &note)
        .await
        .unwrap();
    assert_eq!(got, DeferOutcome::Deferred);
    let status = q.status(&first.id).await.unwrap().unwrap();
    assert_eq!(
        (status.record.state, status.record.attempts),
        (JobState::Scheduled, 0)
    );
    assert_eq!(status.result, Some(note));
    assert_eq!(q.depths().await.unwrap().running, 0);

    // It holds its unique key again: a new trigger joins it.
    let joined = q.push(noop().unique("recalc-all")).await.unwrap();
    assert!(joined.duplicate);
    assert_eq!(joined.id, first.id);

    // And it runs again once due, as attempt 1.
    while q.promote_due().await.unwrap().0 == 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = q.fetch("w", 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].id.as_str(), again[0].record.attempts),
        (first.id.as_str(), 1)
    );
    // Its old lease is void.
    assert_eq!(
        q.defer(&leased[0], Duration::ZERO, &json!({}))
            .await
            .unwrap(),
        DeferOutcome::LeaseLost
    );
}

async fn a_deferred_job_is_coalesced_into_a_newer_waiting_one(kind: RedisKind) {
    let redis = TestRedis::start(kind).await;
    let q = queue_with(&redis, QueueSettings::default()).await;
    let first = q.push(noop().unique("recalc-all")).await.unwrap();
    let leased = q.fetch("w", 10).await.unwrap();
    // While the first runs, a trigger queues a second one under the key.
    let second = q.push(noop().unique("recalc-all")).await.unwrap();
    assert!(!second.duplicate);

    // Deferring the first finds the second waiting: the first is covered.
    let got = q
        .defer(&leased[0], Duration::from_secs(1), &json!({}))
        .await
        .unwrap();
    assert_eq!(got, DeferOutcome::Coalesced(second.id.clone()));
    let status = q.status(&first.id).await.unwrap().unwrap();
    assert_eq!(status.record.state, JobState::Skipped);
    assert_eq!(
        status.result,
        Some(json!({"status": "skipped", "reason": "coalesced", "joined": second.id}))
    );
    // The second still holds the key; exactly one job waits.
    let third = q.push(noop().unique("recalc-all")).await.unwrap();
    assert_eq!(third.id, second.id);
    let depths = q.depths().await.unwrap();
    assert_eq!((depths.pending, depths.delayed, depths.running), (1, 0, 0));
}

async fn a_requeued_or_retrying_job_holds_its_unique_key(kind: RedisKind) {
    let redis = TestRedis::start(kind).await;
    let q = queue_with(&redis, QueueSettings::default()).await;
    let first = q.push(noop().unique("recalc-all")).await.unwrap();
    let leased = q.fetch("w", 10).await.unwrap();
    // Graceful shutdown puts it back: it is pending again and holds its key.
    assert!(q.requeue(&leased[0].id, leased[0].token()).await.unwrap());
    let again = q.push(noop().unique("recalc-all")).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.id, first.id);

    // So does a job waiting for its retry.
    let leased = q.fetch("w", 10).await.unwrap();
    assert!(
        q.retry_later(&leased[0], "boom", Duration::from_secs(60))
            .await
            .unwrap()
    );
    let again = q.push(noop().unique("recalc-all")).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.id, first.id);
}

async fn delayed_jobs_wait_until_due(kind: RedisKind) {
    let redis = TestRedis::start(kind).await;
    let q = queue_with(&redis, QueueSettings::default()).await;
    let later = q
        .push(noop().countdown(Duration::from_secs(3600)))
        .await
        .unwrap();
    let soon = q
        .push(noop().run_at(chrono::Utc::now() + chrono::Duration::milliseconds(300)))
        .await
        .unwrap();
    assert_eq!(
        q.status(&later.id).await.unwrap().unwrap().record.state,
        JobState::Scheduled
    );
    assert!(q.fetch("w", 10).await.unwrap().is_empty());
    let (moved, next) = q.promote_due().await.unwrap();
    assert_eq!(moved, 0);
    assert!(next.unwrap() <= Duration::from_millis(300));

    // Wait for the promoter's answer, not for a guessed time.
    tokio::time::sleep(next.unwrap()).await;
    let (moved, next) = q.promote_due().await.unwrap();
    assert_eq!(moved, 1);
    assert!(next.unwrap() > Duration::from_secs(3000));
    let leased = q.fetch("w", 10).await.unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].id, soon.id);
}

async fn cancel_stops_pending_and_scheduled_jobs_and_refuses_running_ones(kind: RedisKind) {
    let redis = TestRedis::start(kind).await;
    let q = queue_with(&redis, QueueSettings::default()).await;
    let pending = q.push(noop()).await.unwrap();
    let scheduled = q
        .push(noop().countdown(Duration::from_secs(60)))
        .await
        .unwrap();
    let running = q.push(noop()).await.unwrap();

    assert_eq!(
        q.cancel(&pending.id).await.unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(
        q.cancel(&scheduled.id).await.unwrap(),
        CancelOutcome::Cancelled
    );
    let leased = q.fetch("w", 10).await.unwrap();
    assert_eq!(leased.len(), 1, "the cancelled job was fetched");
    assert_eq!(leased[0].id, running.id);
    assert_eq!(
        q.cancel(&running.id).await.unwrap(),
        CancelOutcome::TooLate(JobState::Running)
    );
    assert_eq!(
        q.status(&pending.id).await.unwrap().unwrap().record.state,
        JobState::Cancelled
    );
    assert_eq!(q.depths().await.unwrap().delayed, 0);
}

async fn an_expired_lease_puts_the_job_back_and_a_heartbeat_keeps_it(kind: RedisKind) {
    let redis = TestRedis::start(kind).await;
    let settings = QueueSettings {
        lease: Duration::from_secs(1),
        ..QueueSettings::default()
    };
    let q = queue_with(&redis, settings).await;
    let kept = q.push(noop()).await.unwrap();
    let lost = q.push(noop()).await.unwrap();
    let leased = q.fetch("w1", 10).await.unwrap();
    assert_eq!(leased.len(), 2);
    let held: Vec<(String, String)> = leased
        .iter()
        .filter(|l| l.id == kept.id)
        .map(|l| (l.id.clone(), l.token().to_string()))
        .collect();

    // Heartbeat one of the two for two lease periods.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(q.extend(&held).await.unwrap().lost.is_empty());
        q.reap_expired().await.unwrap();
    }

    assert_eq!(
        q.status(&kept.id).await.unwrap().unwrap().record.state,
        JobState::Running
    );
    let back = q.status(&lost.id).await.unwrap().unwrap().record;
    assert_eq!((back.state, back.leases_lost), (JobState::Pending, 1));
    assert_eq!(
        back.attempts, 0,
        "a lost worker's attempt used up the retry budget"
    );
    let again = q.fetch("w2", 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, lost.id);
    // The first holder's lease is gone: its late completion is refused.
    let stale = leased.iter().find(|l| l.id == lost.id).unwrap();
    assert!(
        !q.complete(stale, JobState::Succeeded, &json!(null))
            .await
            .unwrap()
    );
    assert!(
        q.complete(&again[0], JobState::Succeeded, &json!(null))
            .await
            .unwrap()
    );
    let lost = q
        .extend(&[(stale.id.clone(), stale.token().to_string())])
        .await
        .unwrap()
        .lost;
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0], stale.id);
}

async fn retries_wait_in_the_delayed_set_and_the_dead_set_can_requeue(kind: RedisKind) {
    let redis = TestRedis::start(kind).await;
    let q = queue_with(&redis, QueueSettings::default()).await;
    let policy = RetryPolicy {
        max_attempts: 2,
        backoff: Backoff {
            base_ms: 60_000,
            factor: 2.0,
            cap_ms: 60_000,
            jitter: 0.0,
        },
    };
    let job = q
        .push(NewJob::of(&Sleep { millis: 1 }).unwrap().retry(policy))
        .await
        .unwrap();
    let leased = q.fetch("w", 1).await.unwrap().remove(0);
    assert!(
        q.retry_later(&leased, "boom", Duration::from_secs(60))
            .await
            .unwrap()
    );
    let rec = q.status(&job.id).await.unwrap().unwrap().record;
    assert_eq!(
        (rec.state, rec.error.as_deref()),
        (JobState::Retrying, Some("boom"))
    );
    let depths = q.depths().await.unwrap();
    assert_eq!(
        (depths.delayed, depths.running, depths.retried_total),
        (1, 0, 1)
    );

    // Force it due: cancel would refuse nothing here, so use a fresh job for burying.
    let doomed = q.push(noop()).await.unwrap();
    let l = q.fetch("w", 1).await.unwrap().remove(0);
    assert_eq!(l.id, doomed.id);
    assert!(q.bury(&l, "permanent: bad input").await.unwrap());
    let dead = q.dead(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, doomed.id);
    assert_eq!(
        dead[0].record.error.as_deref(),
        Some("permanent: bad input")
    );
    assert_eq!(dead[0].record.attempts, 1);
    assert!(dead[0].record.finished_at.is_some());

    assert_eq!(
        q.resurrect(&doomed.id).await.unwrap(),
        ResurrectOutcome::Queued
    );
    assert_eq!(
        q.resurrect(&doomed.id).await.unwrap(),
        ResurrectOutcome::NotDead(JobState::Pending)
    );
    assert!(q.dead(10).await.unwrap().is_empty());
    let again = q.fetch("w", 1).await.unwrap();
    assert_eq!(again[0].id, doomed.id);
    assert_eq!(
        again[0].record.attempts, 1,
        "a resurrected job starts a fresh budget"
    );
}

async fn finished_records_expire_and_memory_returns_to_its_baseline(kind: RedisKind) {
    let redis = TestRedis::start(kind).await;
    let settings = QueueSettings {
        result_retention: Duration::from_millis(200),
        dead_retention: Duration::from_millis(200),
        ..QueueSettings::default()
    };
    let q = queue_with(&redis, settings).await;
    let (mut conn, _) = redis.pool("t").get();

    for round in 0..3 {
        let jobs: Vec<NewJob> = (0..500).map(|_| noop()).collect();
        q.push_bulk(&jobs).await.unwrap();
        loop {
            let batch = q.fetch("w", 100).await.unwrap();
            if batch.is_empty() {
                break;
            }
            for (i, l) in batch.iter().enumerate() {
                if i % 10 == 0 {
                    q.bury(l, "x").await.unwrap();
                } else {
                    q.complete(l, JobState::Succeeded, &json!(1)).await.unwrap();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        while q.cleanup().await.unwrap() > 0 {}
        let lens: (u64, u64, u64, u64, u64) = redis::pipe()
            .hlen("{t:default}:jobs")
            .hlen("{t:default}:args")
            .hlen("{t:default}:results")
            .zcard("{t:default}:finished")
            .zcard("{t:default}:dead")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(lens, (0, 0, 0, 0, 0), "round {round}: records left behind");
    }
}

async fn a_batch_of_outcomes_refuses_only_the_stale_lease(kind: RedisKind) {
    let redis = TestRedis::start(kind).await;
    let q = queue_with(&redis, QueueSettings::default()).await;
    let jobs: Vec<NewJob> = (0..3).map(|_| noop()).collect();
    q.push_bulk(&jobs).await.unwrap();
    let mut leased = q.fetch("w", 3).await.unwrap();
    assert_eq!(leased.len(), 3);
    leased[1].record.token = Some("someone-else:1".into());

    let done: Vec<_> = leased
        .iter()
        .map(|l| (l.clone(), JobState::Succeeded, json!({"n": 1})))
        .collect();
    let flags = q.complete_many(&done).await.unwrap();

    assert_eq!(flags, [true, false, true]);
    assert_eq!(
        q.status(&leased[0].id).await.unwrap().unwrap().record.state,
        JobState::Succeeded
    );
    assert_eq!(
        q.status(&leased[1].id).await.unwrap().unwrap().record.state,
        JobState::Running
    );
    assert_eq!(q.depths().await.unwrap().succeeded_total, 2);
}

async fn an_unreadable_record_is_buried_and_the_rest_of_the_batch_runs(kind: RedisKind) {
    let redis = TestRedis::start(kind).await;
    let q = queue_with(&redis, QueueSettings::default()).await;
    let jobs: Vec<NewJob> = (0..3).map(|_| noop()).collect();
    let ids = push_all(&q, &jobs).await;
    let (mut conn, _) = redis.pool("t").get();
    let _: () = redis::cmd("HSET")
        .arg("{t:default}:jobs")
        .arg(&ids[1])
        .arg("{not json")
        .query_async(&mut conn)
        .await
        .unwrap();

    let leased = q.fetch("w", 3).await.unwrap();

    let got: Vec<&str> = leased.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(got, [ids[0].as_str(), ids[2].as_str()]);
    let d = q.depths().await.unwrap();
    assert_eq!((d.dead, d.running), (1, 2));
    assert!(
        q.fetch("bad\tworker", 1).await.is_err(),
        "a tab in the worker id was accepted"
    );
}
