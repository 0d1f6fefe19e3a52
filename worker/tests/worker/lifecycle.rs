//! Identity, graceful shutdown, delayed jobs and the metrics endpoint.

use std::time::Duration;

use queue::{JobState, NewJob, Noop, QueueSettings, Sleep};
use testkit::{RedisServer, run_until_ready_then_sigterm};

use crate::helpers::{
    push, queue, refused_in_one_line, scrape, settings, start, started, wait_for,
};

const LONG: Duration = Duration::from_secs(60);

#[tokio::test]
async fn every_worker_has_its_own_identity_and_a_restart_is_immediate() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let envs = vec![
        ("REDIS_URL", redis.url()),
        (
            "DATABASE_URL",
            format!("sqlite://{}/catalog.db", dir.path().display()),
        ),
        ("WORKER_METRICS_ADDR", "127.0.0.1:0".to_string()),
    ];
    let (first_ok, first) = tokio::task::spawn_blocking({
        let envs = envs.clone();
        move || run_until_ready_then_sigterm(env!("CARGO_BIN_EXE_worker"), &envs, "worker ready")
    })
    .await
    .unwrap();
    // Started again at once: ready, with a different identity, no refusal.
    let (second_ok, second) = tokio::task::spawn_blocking(move || {
        run_until_ready_then_sigterm(env!("CARGO_BIN_EXE_worker"), &envs, "worker ready")
    })
    .await
    .unwrap();
    assert!(first_ok && second_ok, "{first}\n{second}");
    let id = |out: &str| {
        out.lines()
            .find(|l| l.contains("worker ready"))
            .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .and_then(|v| v["worker_id"].as_str().map(String::from))
            .unwrap()
    };
    assert_ne!(id(&first), id(&second));
    assert!(second.contains("worker stopped"), "{second}");
}

#[tokio::test]
async fn shutdown_finishes_short_jobs_and_puts_long_ones_back() {
    let redis = RedisServer::start().await;
    let q = queue(&redis, QueueSettings::default());
    let mut s = settings(&redis, QueueSettings::default());
    s.concurrency = 2;
    s.prefetch = 2;
    s.shutdown_timeout = Duration::from_secs(1);
    let w = start(s, worker::jobs::registry()).await;
    let short = push(&q, &Sleep { millis: 300 }).await;
    let long = push(&q, &Sleep { millis: 30_000 }).await;
    wait_for(&q, &short, &[JobState::Running], LONG).await;
    wait_for(&q, &long, &[JobState::Running], LONG).await;

    w.stop().await;

    assert_eq!(
        q.status(&short).await.unwrap().unwrap().record.state,
        JobState::Succeeded
    );
    let back = q.status(&long).await.unwrap().unwrap().record;
    assert_eq!((back.state, back.attempts), (JobState::Pending, 0));
    let d = q.depths().await.unwrap();
    assert_eq!((d.pending, d.running), (1, 0));
}

#[tokio::test]
async fn delayed_jobs_run_once_due() {
    let (_redis, q, w) = started(worker::jobs::registry()).await;
    let pushed_at = chrono::Utc::now();
    let id = q
        .push(
            NewJob::of(&Noop {})
                .unwrap()
                .countdown(Duration::from_millis(700)),
        )
        .await
        .unwrap()
        .id;
    assert_eq!(
        q.status(&id).await.unwrap().unwrap().record.state,
        JobState::Scheduled
    );
    let rec = wait_for(&q, &id, &[JobState::Succeeded], LONG).await;
    let started = queue::ms_to_datetime(rec.started_at.unwrap()).unwrap();
    assert!(
        started - pushed_at >= chrono::Duration::milliseconds(690),
        "{started} vs {pushed_at}"
    );
    w.stop().await;
}

#[tokio::test]
async fn the_worker_serves_metrics_and_health() {
    let (_redis, q, w) = started(worker::jobs::registry()).await;
    let id = push(&q, &Noop {}).await;
    wait_for(&q, &id, &[JobState::Succeeded], LONG).await;

    let health: serde_json::Value = reqwest::get(format!("http://{}/health", w.metrics))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["worker_id"], w.id.as_str());
    let text = scrape(&w).await;
    for series in [
        r#"jobs_started_total{job_type="noop"}"#,
        r#"jobs_finished_total{job_type="noop",outcome="succeeded"}"#,
        r#"job_duration_seconds_bucket{job_type="noop",le="0.001"}"#,
        r#"queue_depth{queue="default",state="pending"}"#,
        "worker_busy_slots",
    ] {
        assert!(text.contains(series), "{series} missing from:\n{text}");
    }
    w.stop().await;
}

#[test]
fn a_bad_feed_setting_stops_startup_and_names_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    let cases = [
        ("MARKET_DATA_URL", "ftp://feed.example".to_string(), None),
        ("MARKET_DATA_URL", "https://".to_string(), None),
        (
            "MARKET_DATA_CA_FILE",
            dir.path().join("missing.pem").display().to_string(),
            Some("https://feed.example"),
        ),
        (
            "MARKET_DATA_CA_FILE",
            not_pem.display().to_string(),
            Some("https://feed.example"),
        ),
    ];
    for (var, value, url) in cases {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_worker"));
        cmd.env_remove("MARKET_DATA_URL")
            .env_remove("MARKET_DATA_CA_FILE")
            .env("WORKER_METRICS_ADDR", "127.0.0.1:0")
            .env(var, &value);
        if let Some(url) = url {
            cmd.env("MARKET_DATA_URL", url);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}={value} started");
        assert!(stderr.contains(var), "{var}={value}: {stderr}");
    }
}

#[test]
fn a_bad_queue_rate_or_time_limit_stops_startup_in_one_line_naming_it() {
    for (var, value) in [
        ("WORKER_QUEUES", "events,nope"),
        ("WORKER_QUEUES", "events:0"),
        ("QUEUE_ROUTES", "noop"),
        ("RATE_LIMIT_NOOP", "10/parsec"),
        ("RATE_LIMIT_NOOP", "ten/s"),
        ("TIME_LIMIT_SLEEP", "soon"),
        ("TIME_LIMIT_SLEEP", "60,30"),
    ] {
        let (line, stderr) = refused_in_one_line(&[(var, value)], &format!("{var}={value}"));
        assert!(
            line.contains(var) && line.contains(value),
            "{var}={value}: {stderr}"
        );
    }
}

#[test]
fn a_bad_schedule_stops_startup_in_one_line_naming_the_variable() {
    /// The variables set, the variable the line must name, the value it must show.
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: &[Case<'_>] = &[
        (
            &[("SCHEDULE_NOOP", "61 * * * * *")],
            "SCHEDULE_NOOP",
            "61 * * * * *",
        ),
        (
            &[("SCHEDULE_NOOP", "@every 1parsec")],
            "SCHEDULE_NOOP",
            "@every 1parsec",
        ),
        (&[("SCHEDULE_NOPE", "@every 1s")], "SCHEDULE_NOPE", "nope"),
        (
            &[
                ("SCHEDULE_HOURLY", "@every 1h"),
                ("SCHEDULE_HOURLY_JOB", "nope"),
            ],
            "SCHEDULE_HOURLY_JOB",
            "nope",
        ),
        (
            &[("SCHEDULE_RECALCULATE_PRICES", "@every 1m")],
            "SCHEDULE_RECALCULATE_PRICES_ARGS",
            "{}",
        ),
        (
            &[
                ("SCHEDULE_NOOP", "@every 1s"),
                ("SCHEDULE_NOOP_ARGS", "[1,"),
            ],
            "SCHEDULE_NOOP_ARGS",
            "[1,",
        ),
        (
            &[("SCHEDULE_MISSED", "sometimes")],
            "SCHEDULE_MISSED",
            "sometimes",
        ),
    ];
    for (vars, var, value) in cases {
        let (line, stderr) = refused_in_one_line(vars, &format!("{vars:?}"));
        assert!(
            line.contains(var) && line.contains(value),
            "{vars:?} should name {var}={value}: {stderr}"
        );
    }
}
