//! Market-event benchmark: a listener in this process over a fresh catalog
//! and the Redis at `REDIS_URL`. Run through `scripts/bench-events`.
//!
//! 1. Latency: `LATENCY_N` events published one at a time (each processed
//!    alone), publish-to-enqueue p50 and p99 from the listener's histogram,
//!    and publish-to-job-start (a job's `started_at` minus its event's
//!    append time, both Redis clock) with a fetcher standing in for a worker.
//! 2. Throughput: `N` events through the stream (as the api publishes them)
//!    and `N` raw PUBLISHes, as fast as 32 concurrent publishers go; events/s
//!    until the listener has processed them all.

use std::time::{Duration, Instant};

use shared::config::{DatabaseSettings, LogFormat, RedisSettings, TelemetrySettings};
use shared::events::{EventBus, EventSettings};
use shared::keys::Keys;
use shared::queue::{Leased, Queue, QueueSettings};
use shared::redis_pool::RedisPool;

const NS: &str = "bench-events";

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let latency_n: usize = std::env::var("LATENCY_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let dir = tempfile::tempdir()?;
    let db = format!("sqlite://{}/catalog.db", dir.path().display());
    let store = shared::store::sqlite::SqliteStore::connect(&db, 4).await?;
    shared::store::seed::seed(&store, 1_000).await?;

    let settings = listener::config::Settings {
        redis: RedisSettings::for_url(&url, NS),
        database: DatabaseSettings {
            url: db,
            max_connections: 4,
        },
        telemetry: TelemetrySettings {
            service_name: "bench".into(),
            otlp_endpoint: None,
            otlp_protocol: Default::default(),
            sampler: Default::default(),
            log_format: LogFormat::Pretty,
            log_filter: "warn".into(),
        },
        metrics_addr: "127.0.0.1:0".parse()?,
        events: EventSettings {
            stream_maxlen: 1_000_000,
            ..EventSettings::default()
        },
        queue: QueueSettings::default(),
        recalc_retry: shared::jobs::RECALC_RETRY,
        coalesce_window: Duration::from_millis(200),
        claim_idle: Duration::from_secs(30),
        dead_letter_max: 10_000,
    };
    let l = listener::Listener::build(settings.clone()).await?;
    let metrics = l.metrics_addr();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(l.run_until_stopped(async {
        let _ = rx.await;
    }));
    let pool = RedisPool::new(&RedisSettings::for_url(&url, NS))?;
    let bus = EventBus::new(pool.clone(), &Keys::new(NS), settings.events.clone());
    let queue = Queue::new(pool.clone(), NS, "default", QueueSettings::default());
    let mut conn = redis::Client::open(url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    loop {
        let n: Vec<(String, u64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("market_events")
            .query_async(&mut conn)
            .await?;
        if n[0].1 > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // 1. Latency, one event at a time, a fetcher standing in for a worker.
    let mut job_start = Vec::with_capacity(latency_n);
    for i in 0..latency_n {
        let event = shared::events::parse(
            format!(
                r#"{{"kind":"demand_changed","data":{{"demand":{{"P-{}":1.1}}}}}}"#,
                1 + i % 1000
            )
            .as_bytes(),
        )?;
        let appended = bus.publish(&event).await?.appended_ms;
        // Lease the job as an idle worker would (polling every 200 µs).
        let leased: Vec<Leased> = loop {
            let got = queue.fetch("bench", 10).await?;
            if !got.is_empty() {
                break got;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        for job in &leased {
            if let Some(started) = job.record.started_at {
                job_start.push((started - appended) as f64);
            }
            queue
                .complete(
                    job,
                    shared::queue::JobState::Succeeded,
                    &serde_json::json!({}),
                )
                .await?;
        }
        // Past the coalescing window, so the next event is processed alone.
        tokio::time::sleep(settings.coalesce_window + Duration::from_millis(5)).await;
    }
    let body = reqwest::get(format!("http://{metrics}/metrics"))
        .await?
        .text()
        .await?;
    let (p50, p99) = histogram_quantiles(&body, "listener_publish_to_enqueue_seconds");
    println!(
        "latency over {latency_n} lone events: publish-to-enqueue p50 <= {:.2} ms, p99 <= {:.2} ms (histogram bucket bounds)",
        p50 * 1e3,
        p99 * 1e3
    );
    job_start.sort_by(f64::total_cmp);
    println!(
        "publish-to-job-start (the job leased by a worker polling every 200 µs; Redis clock, 1 ms resolution): p50 {:.0} ms, p99 {:.0} ms",
        quantile(&job_start, 0.5),
        quantile(&job_start, 0.99)
    );

    // 2. Throughput.
    for (label, raw) in [("stream (api path)", false), ("raw PUBLISH", true)] {
        let before = received(
            &reqwest::get(format!("http://{metrics}/metrics"))
                .await?
                .text()
                .await?,
        );
        let t = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..32 {
            let (bus, pool) = (bus.clone(), pool.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = w;
                while i < n {
                    let event = shared::events::parse(
                        format!(
                            r#"{{"kind":"stock_changed","data":{{"stock":{{"P-{}":{}}}}}}}"#,
                            1 + i % 1000,
                            i
                        )
                        .as_bytes(),
                    )
                    .map_err(|e| anyhow::anyhow!(e))?;
                    if raw {
                        let (mut c, _t) = pool.get();
                        let _: u64 = redis::cmd("PUBLISH")
                            .arg("market_events")
                            .arg(event.encode(false))
                            .query_async(&mut c)
                            .await?;
                    } else {
                        bus.publish(&event).await?;
                    }
                    i += 32;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let published = t.elapsed();
        loop {
            let now = received(
                &reqwest::get(format!("http://{metrics}/metrics"))
                    .await?
                    .text()
                    .await?,
            );
            if now - before >= n as f64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let done = t.elapsed();
        println!(
            "{label}: {n} events published in {:.2} s ({:.0}/s), all processed after {:.2} s ({:.0} events/s end to end)",
            published.as_secs_f64(),
            n as f64 / published.as_secs_f64(),
            done.as_secs_f64(),
            n as f64 / done.as_secs_f64()
        );
    }
    let _ = tx.send(());
    handle.await??;
    Ok(())
}

fn received(body: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with("listener_events_received_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// p50 and p99 upper bounds from a Prometheus histogram's cumulative buckets.
fn histogram_quantiles(body: &str, name: &str) -> (f64, f64) {
    let mut buckets: Vec<(f64, f64)> = body
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    let at = |q: f64| {
        buckets
            .iter()
            .find(|(_, c)| *c >= q * total)
            .map_or(f64::NAN, |b| b.0)
    };
    (at(0.5), at(0.99))
}
