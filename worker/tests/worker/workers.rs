//! The live worker registry: what `GET /api/v1/workers` lists.

use std::time::Duration;

use queue::workers::{WorkerRegistry, WorkerReport};
use queue::{JobState, QueueSettings, Sleep};
use testkit::RedisServer;

use crate::helpers::{NS, pool, push, queue, settings, start, wait_for};

const LONG: Duration = Duration::from_secs(60);

fn fast_beats() -> QueueSettings {
    QueueSettings {
        heartbeat: Duration::from_millis(200),
        lease: Duration::from_secs(2),
        ..QueueSettings::default()
    }
}

fn registry(redis: &RedisServer) -> WorkerRegistry {
    WorkerRegistry::new(pool(redis), NS)
}

/// The ids of the workers listed now.
async fn listed_ids(reg: &WorkerRegistry) -> Vec<String> {
    reg.list()
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.report.id)
        .collect()
}

#[tokio::test]
async fn each_live_worker_reports_itself_and_the_jobs_it_runs() {
    // Arrange: two workers, one running a long job.
    let redis = RedisServer::start().await;
    let q = queue(&redis, fast_beats());
    let reg = registry(&redis);
    let mut s = settings(&redis, fast_beats());
    s.concurrency = 3;
    let a = start(s.clone(), worker::jobs::registry()).await;
    let id = push(&q, &Sleep { millis: 30_000 }).await;
    wait_for(&q, &id, &[JobState::Running], LONG).await;
    let b = start(s, worker::jobs::registry()).await;

    // Act: wait for a heartbeat that shows the job.
    let reg2 = reg.clone();
    testkit::eventually(LONG, "both workers listed, one with the job", || {
        let reg = reg2.clone();
        async move {
            let seen = reg.list().await.unwrap();
            seen.len() == 2 && seen.iter().any(|w| w.report.busy == 1)
        }
    })
    .await;
    let seen = reg.list().await.unwrap();

    // Assert
    let mut ids: Vec<&str> = vec![a.id.as_str(), b.id.as_str()];
    ids.sort_unstable();
    assert_eq!(
        seen.iter()
            .map(|w| w.report.id.as_str())
            .collect::<Vec<_>>(),
        ids
    );
    let busy = seen.iter().find(|w| w.report.busy == 1).unwrap();
    assert_eq!(busy.report.id, a.id, "the first worker took the job");
    assert_eq!(busy.report.jobs.len(), 1);
    let held = &busy.report.jobs[0];
    assert_eq!(
        (
            held.id.as_str(),
            held.job_type.as_str(),
            held.queue.as_str()
        ),
        (id.as_str(), "sleep", "default")
    );
    let record = q.status(&id).await.unwrap().unwrap().record;
    assert_eq!(
        held.started_at,
        record.started_at.and_then(queue::ms_to_datetime)
    );
    for w in &seen {
        assert_eq!(w.report.pid, std::process::id());
        assert_eq!(w.report.concurrency, 3);
        assert_eq!(w.report.queues, ["events", "bulk", "default"]);
        assert_eq!(w.report.version, env!("CARGO_PKG_VERSION"));
        assert!(w.last_heartbeat.is_some() && w.report.started_at <= chrono::Utc::now());
    }

    // A graceful stop leaves the list at once (the job goes back to the queue).
    a.stop().await;
    assert_eq!(listed_ids(&reg).await, std::slice::from_ref(&b.id));
    b.stop().await;
    assert!(reg.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_worker_that_stops_heartbeating_leaves_the_list_after_its_lease() {
    // Arrange: a report from a worker that then dies, with a 300-ms lease.
    let redis = RedisServer::start().await;
    let reg = registry(&redis);
    let report = WorkerReport {
        id: "gone-1".into(),
        host: "elsewhere".into(),
        pid: 1,
        version: "0.0.0".into(),
        started_at: chrono::Utc::now(),
        queues: vec!["default".into()],
        concurrency: 1,
        busy: 0,
        jobs: Vec::new(),
        schedules: Vec::new(),
    };
    reg.beat(&report, Duration::from_millis(300)).await.unwrap();
    assert_eq!(reg.list().await.unwrap().len(), 1);

    // Act: a live worker keeps beating meanwhile.
    let w = start(settings(&redis, fast_beats()), worker::jobs::registry()).await;
    testkit::eventually(LONG, "the dead worker dropped out", || async {
        listed_ids(&reg).await == [w.id.clone()]
    })
    .await;

    // Assert: a later heartbeat deleted the dead one's fields, too.
    let (conn, _) = pool(&redis).get();
    let info = shared::keys::Keys::new(NS).workers()[0].clone();
    testkit::eventually(LONG, "its report was deleted", || {
        let (info, mut conn) = (info.clone(), conn.clone());
        async move {
            let n: i64 = redis::cmd("HLEN")
                .arg(&info)
                .query_async(&mut conn)
                .await
                .unwrap();
            n == 1
        }
    })
    .await;
    w.stop().await;
}
