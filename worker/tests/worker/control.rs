//! Time limits and revoke, end to end: the handler's cancellation token,
//! the hard limit that drops a handler which ignores it, and a revoke of a
//! running job through the control channel.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use queue::{
    Backoff, JobOutcome, JobSpec, JobState, QueueSettings, RetryPolicy, RevokeOutcome, TimeLimit,
};
use serde::{Deserialize, Serialize};
use testkit::RedisServer;
use worker::{JobContext, Registry};

use crate::helpers::{push, queue, scrape, settings, start, wait_for};

const LONG: Duration = Duration::from_secs(60);

/// Never returns by itself; counts the times its token fired.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stubborn {}

impl JobSpec for Stubborn {
    const NAME: &'static str = "stubborn";
    const RETRY: RetryPolicy = RetryPolicy {
        max_attempts: 2,
        backoff: Backoff {
            base_ms: 50,
            factor: 1.0,
            cap_ms: 50,
            jitter: 0.0,
        },
    };
}

/// Runs until its token fires, then returns at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Polite {}

impl JobSpec for Polite {
    const NAME: &'static str = "polite";
    const RETRY: RetryPolicy = Stubborn::RETRY;
}

#[derive(Clone, Default)]
struct Seen {
    started: Arc<AtomicU32>,
    signalled: Arc<AtomicU32>,
}

fn registry(seen: &Seen) -> Registry {
    let mut registry = worker::jobs::registry();
    let s = seen.clone();
    registry.register(move |_: Stubborn, ctx: JobContext| {
        let s = s.clone();
        async move {
            s.started.fetch_add(1, Ordering::SeqCst);
            ctx.cancel.cancelled().await;
            s.signalled.fetch_add(1, Ordering::SeqCst);
            // Ignores the signal: only dropping it stops this handler.
            std::future::pending::<()>().await;
            Ok(JobOutcome::succeeded(serde_json::Value::Null))
        }
    });
    let s = seen.clone();
    registry.register(move |_: Polite, ctx: JobContext| {
        let s = s.clone();
        async move {
            s.started.fetch_add(1, Ordering::SeqCst);
            ctx.cancel.cancelled().await;
            s.signalled.fetch_add(1, Ordering::SeqCst);
            Ok(JobOutcome::succeeded(serde_json::json!("stopped cleanly")))
        }
    });
    registry
}

fn limit(soft_ms: u64, hard_ms: u64) -> TimeLimit {
    TimeLimit {
        soft: Duration::from_millis(soft_ms),
        hard: Duration::from_millis(hard_ms),
    }
}

#[tokio::test]
async fn a_handler_that_ignores_its_soft_limit_is_dropped_at_the_hard_one_and_retried() {
    // Arrange: soft 200 ms, hard 600 ms, two attempts.
    let redis = RedisServer::start().await;
    let q = queue(&redis, QueueSettings::default());
    let mut s = settings(&redis, QueueSettings::default());
    s.time_limits.insert("stubborn".into(), limit(200, 600));
    let seen = Seen::default();
    let w = start(s, registry(&seen)).await;

    // Act
    let id = push(&q, &Stubborn {}).await;
    let record = wait_for(&q, &id, &[JobState::Failed], LONG).await;

    // Assert: the token fired in both attempts, each attempt failed as
    // time_limit_exceeded, and the retry policy ran its course.
    assert_eq!(record.attempts, 2);
    assert!(
        record
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("time_limit_exceeded: stubborn ran past its hard limit"),
        "{record:?}"
    );
    assert_eq!(seen.started.load(Ordering::SeqCst), 2);
    assert_eq!(seen.signalled.load(Ordering::SeqCst), 2);
    let metrics = scrape(&w).await;
    assert!(
        metrics.contains(r#"jobs_time_limited_total{job_type="stubborn",limit="hard"} 2"#),
        "{metrics}"
    );
    w.stop().await;
}

#[tokio::test]
async fn a_handler_that_honours_its_soft_limit_ends_with_its_own_result() {
    let redis = RedisServer::start().await;
    let q = queue(&redis, QueueSettings::default());
    let mut s = settings(&redis, QueueSettings::default());
    s.time_limits.insert("polite".into(), limit(200, 30_000));
    let seen = Seen::default();
    let w = start(s, registry(&seen)).await;

    let id = push(&q, &Polite {}).await;
    let record = wait_for(&q, &id, &[JobState::Succeeded, JobState::Failed], LONG).await;

    assert_eq!((record.state, record.attempts), (JobState::Succeeded, 1));
    let status = q.status(&id).await.unwrap().unwrap();
    assert_eq!(status.result, Some(serde_json::json!("stopped cleanly")));
    assert_eq!(seen.signalled.load(Ordering::SeqCst), 1);
    w.stop().await;
}

#[tokio::test]
async fn a_revoked_job_ends_cancelled_whether_its_handler_listens_or_not() {
    // Arrange: a one-second grace; one handler stops when asked, one never does.
    let redis = RedisServer::start().await;
    let q = queue(&redis, QueueSettings::default());
    let mut s = settings(&redis, QueueSettings::default());
    s.revoke_grace = Duration::from_secs(1);
    let control = shared::keys::Keys::new(crate::helpers::NS).control_channel();
    let seen = Seen::default();
    let w = start(s, registry(&seen)).await;
    let polite = push(&q, &Polite {}).await;
    let stubborn = push(&q, &Stubborn {}).await;
    wait_for(&q, &polite, &[JobState::Running], LONG).await;
    wait_for(&q, &stubborn, &[JobState::Running], LONG).await;
    testkit::eventually(LONG, "both handlers started", || async {
        seen.started.load(Ordering::SeqCst) == 2
    })
    .await;

    // Act
    let a = q.revoke(&polite, &control).await.unwrap();
    let b = q.revoke(&stubborn, &control).await.unwrap();

    // Assert: both cancelled, neither retried, and the worker is free again.
    assert_eq!((a, b), (RevokeOutcome::Revoking, RevokeOutcome::Revoking));
    for id in [&polite, &stubborn] {
        let r = wait_for(
            &q,
            id,
            &[JobState::Cancelled, JobState::Failed, JobState::Succeeded],
            LONG,
        )
        .await;
        assert_eq!((r.state, r.attempts), (JobState::Cancelled, 1), "{id}");
    }
    assert_eq!(seen.signalled.load(Ordering::SeqCst), 2);
    let after = push(&q, &queue::Noop {}).await;
    wait_for(&q, &after, &[JobState::Succeeded], LONG).await;
    let d = q.depths().await.unwrap();
    assert_eq!(d.running, 0);
    let metrics = scrape(&w).await;
    for job in ["polite", "stubborn"] {
        let series = format!("jobs_finished_total{{job_type=\"{job}\",outcome=\"cancelled\"}} 1");
        assert!(metrics.contains(&series), "{series} missing:\n{metrics}");
    }
    w.stop().await;
}
