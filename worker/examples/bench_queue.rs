//! Queue benchmark: pushes and drains no-op jobs against `REDIS_URL` and
//! prints jobs/s for each mode. Run through `scripts/bench-queue`, which
//! starts a private redis-server; the figures are for reading, never asserted.
//!
//! Modes: push one at a time (one producer, each push awaited), push one at
//! a time from 32 concurrent producers, push in bulk (pipelines of 1,000),
//! and drain a backlog of N jobs with one worker process.

use std::time::{Duration, Instant};

use shared::config::{DatabaseSettings, LogFormat, RedisSettings, TelemetrySettings};
use shared::queue::{NewJob, Noop, Queue, QueueSettings};
use shared::redis_pool::RedisPool;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn queue(url: &str, ns: &str) -> Queue {
    let pool = RedisPool::new(&RedisSettings::for_url(url, ns)).expect("REDIS_URL");
    Queue::new(
        pool,
        ns,
        shared::queue::DEFAULT_QUEUE,
        QueueSettings::default(),
    )
}

/// CPU time the Redis server has used so far (user + system), in µs.
async fn redis_cpu_usec(q: &Queue) -> f64 {
    let (mut conn, _) = q.pool().get();
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    info.lines()
        .filter(|l| l.starts_with("used_cpu_user:") || l.starts_with("used_cpu_sys:"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .sum::<f64>()
        * 1e6
}

async fn report(q: &Queue, mode: &str, n: usize, elapsed: Duration, cpu_before: f64) {
    let usec = redis_cpu_usec(q).await - cpu_before;
    println!(
        "{mode:<44} {n:>9} jobs {:>8.2} s {:>10.0} jobs/s {:>8.1} us of Redis CPU per job",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        usec / n as f64
    );
}

async fn push_bulk(q: &Queue, n: usize) {
    let mut left = n;
    while left > 0 {
        let batch = left.min(1_000);
        let jobs: Vec<NewJob> = (0..batch)
            .map(|_| NewJob::of(&Noop {}).expect("encode"))
            .collect();
        q.push_bulk(&jobs).await.expect("push_bulk");
        left -= batch;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let n = env_usize("N", 100_000);
    let singles = env_usize("N_SINGLE", n.min(20_000));
    let concurrency = env_usize("CONCURRENCY", 128);

    // 1. One producer, one push at a time.
    let q = queue(&url, "bench-single");
    let cpu = redis_cpu_usec(&q).await;
    let t = Instant::now();
    for _ in 0..singles {
        q.push(NewJob::of(&Noop {})?).await?;
    }
    report(
        &q,
        "push one at a time (1 producer)",
        singles,
        t.elapsed(),
        cpu,
    )
    .await;

    // 2. 32 producers, one push at a time each.
    let q = queue(&url, "bench-concurrent");
    let cpu = redis_cpu_usec(&q).await;
    let t = Instant::now();
    let per = singles / 32;
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let q = q.clone();
            tokio::spawn(async move {
                for _ in 0..per {
                    q.push(NewJob::of(&Noop {}).expect("encode"))
                        .await
                        .expect("push");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await?;
    }
    report(
        &q,
        "push one at a time (32 producers)",
        per * 32,
        t.elapsed(),
        cpu,
    )
    .await;

    // 3. Bulk pushes, then 4. drain that backlog with one worker.
    let ns = "bench-drain";
    let q = queue(&url, ns);
    let cpu = redis_cpu_usec(&q).await;
    let t = Instant::now();
    push_bulk(&q, n).await;
    report(&q, "push in bulk (pipelines of 1,000)", n, t.elapsed(), cpu).await;

    let settings = worker::config::Settings {
        redis: RedisSettings::for_url(&url, ns),
        database: DatabaseSettings::for_url("sqlite::memory:", 1),
        telemetry: TelemetrySettings {
            service_name: "bench".into(),
            otlp_endpoint: None,
            otlp_protocol: Default::default(),
            sampler: Default::default(),
            log_format: LogFormat::Pretty,
            log_filter: "warn".into(),
        },
        queue: QueueSettings::default(),
        routes: shared::queue::Routes::default(),
        consume: shared::queue::Consume::default(),
        cache: shared::config::CacheSettings {
            ttl: Duration::from_secs(3600),
        },
        feed: None,
        recalc_lock_ttl: Duration::from_secs(60),
        concurrency,
        prefetch: concurrency,
        shutdown_timeout: Duration::from_secs(10),
        job_timeout: Duration::from_secs(60),
        time_limits: Default::default(),
        revoke_grace: std::time::Duration::from_secs(10),
        schedules: Default::default(),
        metrics_addr: "127.0.0.1:0".parse()?,
    };
    let w = worker::Worker::build(settings, worker::jobs::registry()).await?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let cpu = redis_cpu_usec(&q).await;
    let t = Instant::now();
    let handle = tokio::spawn(w.run_until_stopped(async {
        let _ = rx.await;
    }));
    loop {
        let d = q.depths().await?;
        if d.succeeded_total as usize >= n {
            if d.failed_total > 0 || d.dead > 0 {
                anyhow::bail!("{} jobs failed while draining", d.failed_total);
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report(
        &q,
        &format!("drain a backlog (1 worker, concurrency {concurrency})"),
        n,
        t.elapsed(),
        cpu,
    )
    .await;
    let _ = tx.send(());
    handle.await??;
    Ok(())
}
