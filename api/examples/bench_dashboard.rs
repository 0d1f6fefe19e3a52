//! The dashboard's endpoints under a 100,000-job backlog: fills the queue
//! at `REDIS_URL` (namespace `REDIS_NAMESPACE`, default `pricing`), then
//! times every request the pages make against the api at `API_URL`,
//! one at a time, and prints p50, p99 and max per endpoint.
//!
//! The times are taken at the client over loopback, so they include the
//! HTTP round trip: an upper bound of the server's time. Run it through
//! `scripts/bench-dashboard`, which starts redis-server and a release api.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use queue::{JobState, NewJob, Noop, Queue, QueueSettings};
use shared::config::RedisSettings;
use shared::redis_pool::RedisPool;
use testkit::env_or;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = env_or("N", 100_000);
    let rounds: usize = env_or("REQUESTS", 200);
    let api = std::env::var("API_URL").context("API_URL")?;
    let redis = RedisSettings::from_env()?;
    let pool = RedisPool::new(&redis)?;
    let q = Queue::new(pool, &redis.namespace, "default", QueueSettings::default());

    // The other sets first (a fetch takes the oldest jobs): 1,000 dead,
    // 1,000 succeeded, 5,000 cancelled, 1,000 scheduled; then the backlog.
    let batch = |k: usize| {
        (0..k)
            .map(|_| NewJob::of(&Noop {}).expect("noop encodes"))
            .collect::<Vec<_>>()
    };
    q.push_bulk(&batch(2_000)).await?;
    let leased = q.fetch("bench-dashboard", 2_000).await?;
    for l in &leased[..1_000] {
        q.bury(l, "permanent: a benchmark failure").await?;
    }
    let done: Vec<_> = leased[1_000..]
        .iter()
        .map(|l| {
            (
                l.clone(),
                JobState::Succeeded,
                serde_json::json!({"ok": true}),
            )
        })
        .collect();
    q.complete_many(&done).await?;
    for p in q.push_bulk(&batch(5_000)).await? {
        q.cancel(&p.id).await?;
    }
    let later: Vec<NewJob> = batch(1_000)
        .into_iter()
        .map(|j| j.countdown(Duration::from_secs(3_600)))
        .collect();
    q.push_bulk(&later).await?;
    let mut some_id = String::new();
    for chunk in 0..n.div_ceil(10_000) {
        let k = 10_000.min(n - chunk * 10_000);
        let pushed = q.push_bulk(&batch(k)).await?;
        some_id = pushed[pushed.len() / 2].id.clone();
    }
    let d = q.depths().await?;
    println!(
        "backlog: {} pending, {} delayed, {} dead; {} rounds per endpoint, one request at a time",
        d.pending, d.delayed, d.dead, rounds
    );

    let deep = d.pending.saturating_sub(50);
    let paths = [
        "/dashboard".to_string(),
        "/dashboard/assets/app.js".into(),
        "/api/v1/dashboard/overview".into(),
        "/api/v1/queues".into(),
        "/api/v1/queues/default/jobs?state=pending".into(),
        format!("/api/v1/queues/default/jobs?state=pending&cursor={deep}"),
        "/api/v1/queues/default/jobs?state=scheduled".into(),
        "/api/v1/queues/default/jobs?state=failed".into(),
        "/api/v1/queues/default/jobs?state=succeeded".into(),
        "/api/v1/queues/default/jobs?state=retrying".into(),
        format!("/api/v1/tasks/{some_id}"),
        "/api/v1/workers".into(),
        "/api/v1/schedules".into(),
    ];
    let client = reqwest::Client::new();
    println!(
        "{:<58} {:>8} {:>8} {:>8}",
        "GET", "p50 ms", "p99 ms", "max ms"
    );
    for path in &paths {
        let url = format!("{api}{path}");
        let mut times = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let t = Instant::now();
            let resp = client.get(&url).send().await?;
            let status = resp.status();
            resp.bytes().await?;
            times.push(t.elapsed());
            anyhow::ensure!(status.is_success(), "{path}: {status}");
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let at = |p: f64| ms(times[((times.len() - 1) as f64 * p).round() as usize]);
        println!(
            "{:<58} {:>8.2} {:>8.2} {:>8.2}",
            path,
            at(0.50),
            at(0.99),
            ms(times[times.len() - 1])
        );
    }
    Ok(())
}
