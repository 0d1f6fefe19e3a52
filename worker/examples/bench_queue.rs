//! Queue benchmark: pushes and drains no-op jobs against `REDIS_URL` and
//! prints jobs/s for each mode. Run through `scripts/bench-queue`, which
//! starts a private redis-server; the figures are for reading, never asserted.
//!
//! Modes: push one at a time (one producer, each push awaited), push one at
//! a time from 32 concurrent producers, push in bulk (pipelines of 1,000),
//! and drain a backlog of N jobs with one worker process: from one queue,
//! from three named queues (strict order, then weighted 5:1:1), and from one
//! queue under a rate limit far above the drain rate; the last three are
//! also printed as ratios against the one-queue drain of the same run.

use std::time::{Duration, Instant};

use queue::{Consume, DEFAULT_QUEUE, NewJob, Noop, Queue, QueueSettings, Rate};
use shared::config::{DatabaseSettings, RedisSettings};
use shared::redis_pool::RedisPool;
use testkit::env_or;

fn queue(url: &str, ns: &str) -> Queue {
    let pool = RedisPool::new(&RedisSettings::for_url(url, ns)).expect("REDIS_URL");
    Queue::new(pool, ns, queue::DEFAULT_QUEUE, QueueSettings::default())
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
    let url: String = env_or("REDIS_URL", "redis://127.0.0.1:6379".into());
    let n: usize = env_or("N", 100_000);
    let singles: usize = env_or("N_SINGLE", n.min(20_000));
    let concurrency: usize = env_or("CONCURRENCY", 128);

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

    // 3. Bulk pushes, then 4. drain that backlog with one worker; then the
    // same drain over three named queues, and under a rate limit far above
    // the drain rate, as ratios against the one-queue drain. The drains run
    // in ROUNDS rounds, each in a rotated order, from an emptied namespace,
    // and each mode's median is compared: the machine's drift between
    // drains would otherwise pass for a difference between modes.
    let ns = "bench-drain";
    let q = queue(&url, ns);
    let cpu = redis_cpu_usec(&q).await;
    let t = Instant::now();
    push_bulk(&q, n).await;
    report(&q, "push in bulk (pipelines of 1,000)", n, t.elapsed(), cpu).await;
    forget(&url, ns).await?;

    let rounds = env_or::<usize>("ROUNDS", 3).max(1);
    let modes = DrainMode::all();
    let mut runs: Vec<Vec<Drained>> = modes.iter().map(|_| Vec::new()).collect();
    let mut deferred_total = 0;
    for round in 0..rounds {
        for k in 0..modes.len() {
            let i = (k + round) % modes.len();
            let mode = &modes[i];
            for (j, name) in mode.queues.iter().enumerate() {
                let part = n / mode.queues.len() + usize::from(j < n % mode.queues.len());
                push_bulk(&named(&url, ns, name, mode.limits), part).await;
            }
            let mut run = drain(&url, ns, mode, n, concurrency).await?;
            // The counter is the process's running total: keep this drain's part.
            (run.deferred, deferred_total) = (run.deferred - deferred_total, run.deferred);
            report_drain(mode.label, round + 1, n, &run, concurrency);
            forget(&url, ns).await?;
            runs[i].push(run);
        }
    }
    let median = |r: &mut Vec<Drained>| {
        r.sort_by_key(|d| d.elapsed);
        r[r.len() / 2].elapsed.as_secs_f64()
    };
    let medians: Vec<f64> = runs.iter_mut().map(median).collect();
    println!(
        "drain rate against one queue, medians of {rounds} rotated rounds (1.00 = as fast; the aim is at least 0.90):"
    );
    for (i, mode) in modes.iter().enumerate() {
        let deferred: u64 = runs[i].iter().map(|r| r.deferred).sum();
        println!(
            "  {:<44} {:>9.0} jobs/s {:>5.2}  ({deferred} rate-limit deferrals)",
            mode.label,
            n as f64 / medians[i],
            medians[0] / medians[i],
        );
    }
    Ok(())
}

/// One way of draining the backlog.
struct DrainMode {
    label: &'static str,
    /// The queues the backlog is split over, consumed in this order.
    queues: &'static [&'static str],
    limits: Limits,
    /// Consumed by weight (5 for the first queue, 1 for the others).
    weighted: bool,
}

impl DrainMode {
    /// The baseline (one queue, no limit) first.
    fn all() -> [Self; 4] {
        const THREE: &[&str] = &["events", "bulk", DEFAULT_QUEUE];
        [
            Self {
                label: "one queue",
                queues: &[DEFAULT_QUEUE],
                limits: Limits::None,
                weighted: false,
            },
            Self {
                label: "three named queues, strict order",
                queues: THREE,
                limits: Limits::None,
                weighted: false,
            },
            Self {
                label: "three named queues, by weight 5:1:1",
                queues: THREE,
                limits: Limits::None,
                weighted: true,
            },
            Self {
                label: "one queue, RATE_LIMIT_NOOP=1000000/s",
                queues: &[DEFAULT_QUEUE],
                limits: Limits::FarAbove,
                weighted: false,
            },
        ]
    }
}

/// Deletes every key of namespace `ns`, so the next drain starts from an
/// empty Redis (finished records would otherwise pile up between drains).
async fn forget(url: &str, ns: &str) -> anyhow::Result<()> {
    let pool = RedisPool::new(&RedisSettings::for_url(url, ns))?;
    let (mut conn, _) = pool.get();
    for name in ["events", "bulk", DEFAULT_QUEUE] {
        let keys = queue::QueueKeys::new(ns, name);
        let _: () = redis::cmd("UNLINK")
            .arg(&keys.all()[..])
            .query_async(&mut conn)
            .await?;
    }
    Ok(())
}

/// The rate limits a drain runs under.
#[derive(Clone, Copy)]
enum Limits {
    None,
    /// `noop` limited to 1,000,000 starts a second, far above any drain here.
    FarAbove,
}

impl Limits {
    fn settings(self) -> QueueSettings {
        let mut s = QueueSettings::default();
        if let Self::FarAbove = self {
            s.rate_limits
                .insert("noop".into(), Rate::parse("1000000/s").expect("rate"));
        }
        s
    }
}

fn named(url: &str, ns: &str, name: &str, limits: Limits) -> Queue {
    let pool = RedisPool::new(&RedisSettings::for_url(url, ns)).expect("REDIS_URL");
    Queue::new(pool, ns, name, limits.settings())
}

/// The process's `rate_limit_deferrals_total` over every queue, read from
/// the worker's `/metrics` (the counter is per process: only the
/// rate-limited drain moves it).
async fn rate_deferrals(metrics: &str) -> u64 {
    let text = match reqwest::get(metrics).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => return 0,
    };
    text.lines()
        .filter(|l| l.starts_with("rate_limit_deferrals_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// What one drain measured.
struct Drained {
    elapsed: Duration,
    cpu_usec: f64,
    /// Rate-limit deferrals (the process's running total, from `drain`).
    deferred: u64,
}

fn report_drain(mode: &str, round: usize, n: usize, d: &Drained, concurrency: usize) {
    println!(
        "{:<44} {n:>9} jobs {:>8.2} s {:>10.0} jobs/s {:>8.1} us of Redis CPU per job",
        format!("drain, {mode} (round {round}, 1 worker, concurrency {concurrency})"),
        d.elapsed.as_secs_f64(),
        n as f64 / d.elapsed.as_secs_f64(),
        d.cpu_usec / n as f64
    );
}

/// Drains the `n` jobs already queued on `queues` with one worker that
/// consumes them (strictly in this order, or weighted 5:1:1…).
async fn drain(
    url: &str,
    ns: &str,
    mode: &DrainMode,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Drained> {
    let (queues, limits) = (mode.queues, mode.limits);
    let consume = if mode.weighted {
        Consume::Weighted(
            queues
                .iter()
                .enumerate()
                .map(|(i, q)| (q.to_string(), if i == 0 { 5 } else { 1 }))
                .collect(),
        )
    } else {
        Consume::Strict(queues.iter().map(|q| q.to_string()).collect())
    };
    let settings = worker::Settings {
        redis: RedisSettings::for_url(url, ns),
        database: DatabaseSettings::for_url("sqlite::memory:", 1),
        telemetry: testkit::telemetry("bench", "warn"),
        queue: limits.settings(),
        routes: queue::Routes::default(),
        consume,
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
    let handles: Vec<Queue> = queues.iter().map(|q| named(url, ns, q, limits)).collect();
    let w = worker::Worker::build(settings, worker::jobs::registry()).await?;
    let metrics = format!("http://{}/metrics", w.metrics_addr());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let cpu = redis_cpu_usec(&handles[0]).await;
    let t = Instant::now();
    let handle = tokio::spawn(w.run_until_stopped(async {
        let _ = rx.await;
    }));
    loop {
        let (mut done, mut failed) = (0, 0);
        for q in &handles {
            let d = q.depths().await?;
            done += d.succeeded_total as usize;
            failed += d.failed_total + d.dead as u64;
        }
        if failed > 0 {
            anyhow::bail!("{failed} jobs failed while draining");
        }
        if done >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = t.elapsed();
    let cpu_usec = redis_cpu_usec(&handles[0]).await - cpu;
    let deferred = rate_deferrals(&metrics).await;
    let _ = tx.send(());
    handle.await??;
    Ok(Drained {
        elapsed,
        cpu_usec,
        deferred,
    })
}
