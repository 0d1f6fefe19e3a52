//! Browsing a queue for the dashboard: pages of jobs by state with their
//! cursors, and throughput from the counters' samples.

use std::time::Duration;

use queue::{JobState, NewJob, Noop, Queue, QueueSettings, Sleep};
use testkit::{RedisKind, TestRedis};

use crate::helpers::push_all;

testkit::redis_suite!(
    each_state_lists_from_its_set_in_order_and_pages_follow_the_cursor,
    a_filtered_listing_examines_a_bounded_window_and_says_where_to_go_on,
    throughput_counts_starts_finishes_and_failures_between_samples,
);

fn queue(redis: &TestRedis) -> Queue {
    Queue::new(redis.pool("bq"), "bq", "default", QueueSettings::default())
}

async fn ids(q: &Queue, state: JobState, cursor: u64, limit: usize) -> (Vec<String>, Option<u64>) {
    let page = q.list(state, cursor, limit).await.unwrap();
    assert!(page.jobs.iter().all(|j| j.record.state == state));
    (
        page.jobs.into_iter().map(|j| j.id).collect(),
        page.next_cursor,
    )
}

async fn each_state_lists_from_its_set_in_order_and_pages_follow_the_cursor(kind: RedisKind) {
    let redis = TestRedis::start(kind).await;
    let q = queue(&redis);
    let mut pushed = Vec::new();
    for _ in 0..8 {
        pushed.push(q.push(NewJob::of(&Noop {}).unwrap()).await.unwrap().id);
    }
    // The two oldest run; one succeeds, one fails for good.
    let leased = q.fetch("w", 2).await.unwrap();
    assert_eq!(
        leased.iter().map(|l| &l.id).collect::<Vec<_>>(),
        [&pushed[0], &pushed[1]]
    );
    q.complete(&leased[0], JobState::Succeeded, &serde_json::json!(1))
        .await
        .unwrap();
    q.bury(&leased[1], "permanent: <script>boom</script>")
        .await
        .unwrap();
    // A third is cancelled: its id stays in the wait list as a tombstone.
    q.cancel(&pushed[2]).await.unwrap();
    let later = q
        .push(
            NewJob::of(&Noop {})
                .unwrap()
                .countdown(Duration::from_secs(600)),
        )
        .await
        .unwrap()
        .id;

    // Pending: next to run first, the tombstone skipped, two per page.
    let (p1, c1) = ids(&q, JobState::Pending, 0, 2).await;
    assert_eq!(p1, &pushed[3..5]);
    let (p2, c2) = ids(&q, JobState::Pending, c1.unwrap(), 2).await;
    assert_eq!(p2, &pushed[5..7]);
    let (p3, c3) = ids(&q, JobState::Pending, c2.unwrap(), 2).await;
    assert_eq!(p3, &pushed[7..8]);
    assert_eq!(c3, None, "the end of the list");

    assert_eq!(
        ids(&q, JobState::Succeeded, 0, 10).await,
        (vec![pushed[0].clone()], None)
    );
    assert_eq!(
        ids(&q, JobState::Cancelled, 0, 10).await,
        (vec![pushed[2].clone()], None)
    );
    assert_eq!(
        ids(&q, JobState::Scheduled, 0, 10).await,
        (vec![later], None)
    );
    assert_eq!(ids(&q, JobState::Running, 0, 10).await, (vec![], None));
    let dead = q.list(JobState::Failed, 0, 10).await.unwrap();
    assert_eq!(dead.jobs.len(), 1);
    assert_eq!(dead.jobs[0].id, pushed[1]);
    assert_eq!(
        dead.jobs[0].record.error.as_deref(),
        Some("permanent: <script>boom</script>")
    );
    assert_eq!(dead.set_size, 1);
    // The status of one job carries its arguments while it may still run.
    let st = q.status(&pushed[1]).await.unwrap().unwrap();
    assert_eq!(st.args, Some(serde_json::json!({})));
}

async fn a_filtered_listing_examines_a_bounded_window_and_says_where_to_go_on(kind: RedisKind) {
    let redis = TestRedis::start(kind).await;
    let q = queue(&redis);
    let jobs: Vec<NewJob> = (0..1_500)
        .map(|_| NewJob::of(&Sleep { millis: 1 }).unwrap())
        .collect();
    let pushed = push_all(&q, &jobs).await;
    // The 1,200 next to run are cancelled: tombstones ahead of 300 pending.
    for id in &pushed[..1_200] {
        q.cancel(id).await.unwrap();
    }
    let first = q.list(JobState::Pending, 0, 50).await.unwrap();
    assert_eq!(first.set_size, 1_500);
    assert_eq!(first.examined, queue::browse::SCAN_BUDGET);
    assert!(first.jobs.is_empty(), "nothing pending in the first window");
    assert_eq!(first.next_cursor, Some(1_000));

    let mut seen = Vec::new();
    let mut cursor = first.next_cursor;
    while let Some(c) = cursor {
        let page = q.list(JobState::Pending, c, 50).await.unwrap();
        assert!(page.examined <= queue::browse::SCAN_BUDGET);
        assert!(page.jobs.len() <= 50);
        seen.extend(page.jobs.into_iter().map(|j| j.id));
        cursor = page.next_cursor;
    }
    assert_eq!(seen, &pushed[1_200..], "every pending job once, in order");
}

async fn throughput_counts_starts_finishes_and_failures_between_samples(kind: RedisKind) {
    let redis = TestRedis::start(kind).await;
    let q = queue(&redis);
    let window = Duration::from_secs(60);
    for _ in 0..5 {
        q.push(NewJob::of(&Noop {}).unwrap()).await.unwrap();
    }
    let first = q.throughput(window).await.unwrap();
    assert_eq!(first.window_secs, None, "one sample gives no rate");
    assert!(first.oldest_pending_secs.is_some());

    let leased = q.fetch("w", 4).await.unwrap();
    for l in &leased[..3] {
        q.complete(l, JobState::Succeeded, &serde_json::json!(1))
            .await
            .unwrap();
    }
    q.bury(&leased[3], "permanent: no").await.unwrap();
    // Samples are taken at most once a second.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let t = q.throughput(window).await.unwrap();
    let secs = t.window_secs.expect("two samples");
    assert!(secs >= 1.0);
    let per = |n: f64| Some(n / secs);
    assert_eq!(t.started_per_sec, per(4.0));
    assert_eq!(t.finished_per_sec, per(4.0));
    assert_eq!(t.failed_per_sec, per(1.0));
    assert_eq!(t.failure_rate, Some(0.25));
    assert_eq!(q.depths().await.unwrap().started_total, 4);
    assert!(t.oldest_pending_secs.is_some(), "one still waits");
}
