//! Market-event benchmark: a listener in this process over a fresh catalog
//! and the Redis at `REDIS_URL`. Run through `scripts/bench-events`.
//!
//! Three paths: `EventBus::publish` (the api's code, without HTTP), the api
//! itself over HTTP (in this process), and a raw `PUBLISH` on the channel.
//!
//! 1. Latency: on each path, `LATENCY_N` events published one at a time
//!    (each processed alone), publish-to-job-start with a fetcher standing
//!    in for a worker (fetch, else block on the wait list as the worker
//!    does): on the publisher's clock, from just before the publish call to
//!    the leasing fetch's return, and as a cross-check the job's
//!    `started_at` minus Redis's clock just before the publish (1 ms
//!    resolution); then publish-to-enqueue p50 and p99 from the listener's
//!    histogram.
//! 2. Throughput: on each path, `N` events as fast as 32 concurrent
//!    publishers go; events/s until the listener has processed them all.

use std::time::{Duration, Instant};

use queue::{Leased, Queue, QueueSettings};
use shared::config::{DatabaseSettings, RedisSettings};
use shared::event_bus::{EventBus, EventSettings};
use shared::keys::Keys;
use shared::redis_pool::RedisPool;
use testkit::env_or;

const NS: &str = "bench-events";

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url: String = env_or("REDIS_URL", "redis://127.0.0.1:6379".into());
    let n: usize = env_or("N", 50_000);
    let latency_n: usize = env_or("LATENCY_N", 2_000);
    let dir = tempfile::tempdir()?;
    let db = format!("sqlite://{}/catalog.db", dir.path().display());
    let store = shared::store::sqlite::SqliteStore::connect(&db, 4).await?;
    shared::store::seed::seed(&store, 1_000).await?;

    let settings = listener::Settings {
        redis: RedisSettings::for_url(&url, NS),
        database: DatabaseSettings::for_url(db, 4),
        telemetry: testkit::telemetry("bench", "warn"),
        metrics_addr: "127.0.0.1:0".parse()?,
        events: EventSettings {
            stream_maxlen: 1_000_000,
            ..EventSettings::default()
        },
        queue: QueueSettings::default(),
        routes: queue::Routes::default(),
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
    // The worker's own way to wait: a blocking BLMOVE on a connection of
    // its own, woken by the push.
    let mut blocking = pool.blocking(Duration::from_secs(5))?;
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

    // The api in this process too, for the HTTP path.
    let api_settings = api::Settings {
        addr: "127.0.0.1:0".parse()?,
        redis: RedisSettings::for_url(&url, NS),
        database: settings.database.clone(),
        cache: shared::config::CacheSettings {
            ttl: Duration::from_secs(600),
        },
        telemetry: settings.telemetry.clone(),
        queue: QueueSettings::default(),
        routes: queue::Routes::default(),
        admin_token: None,
        recalc_retry: shared::jobs::RECALC_RETRY,
        events: settings.events.clone(),
        jaeger_ui_url: None,
        near_cache_max_entries: 0,
        worker_threads: 0,
    };
    let app = api::Application::build(&api_settings).await?;
    let publish_url = format!(
        "http://127.0.0.1:{}/api/v1/publish-market-event",
        app.port()
    );
    let (api_tx, api_rx) = tokio::sync::oneshot::channel::<()>();
    let api_handle = tokio::spawn(app.run_until_stopped(async {
        let _ = api_rx.await;
    }));
    let http = reqwest::Client::new();

    // 1. Latency, one event at a time on each path, a fetcher standing in for
    //    a worker: from just before the publish to the job's lease, both on
    //    the Redis clock.
    for path in [Path::Stream, Path::Api, Path::RawPublish] {
        let mut job_start = Vec::with_capacity(latency_n);
        let mut leased_after = Vec::with_capacity(latency_n);
        for i in 0..latency_n {
            let payload = format!(
                r#"{{"kind":"demand_changed","data":{{"demand":{{"P-{}":1.1}}}}}}"#,
                1 + i % 1000
            );
            let before = redis_now_ms(&mut conn).await?;
            let sent = Instant::now();
            path.publish(&payload, &bus, &pool, &http, &publish_url)
                .await?;
            // Lease the job as an idle worker does: fetch, and while there is
            // nothing, block until the wait list is not empty.
            let leased: Vec<Leased> = loop {
                let got = queue.fetch("bench", 10).await?;
                if !got.is_empty() {
                    leased_after.push(sent.elapsed().as_secs_f64() * 1e3);
                    break got;
                }
                queue
                    .wait_for_work(&mut blocking, Duration::from_secs(2))
                    .await?;
            };
            for job in &leased {
                if let Some(started) = job.record.started_at {
                    job_start.push((started - before) as f64);
                }
                queue
                    .complete(job, queue::JobState::Succeeded, &serde_json::json!({}))
                    .await?;
            }
            // Past the coalescing window, so the next event is processed alone.
            tokio::time::sleep(settings.coalesce_window + Duration::from_millis(5)).await;
        }
        job_start.sort_by(f64::total_cmp);
        leased_after.sort_by(f64::total_cmp);
        println!(
            "{}: publish-to-job-start over {latency_n} lone events: p50 {:.2} ms, p99 {:.2} ms (the publisher's clock, from just before the publish call to the fetch that leased the job returning); on the Redis clock (1 ms resolution): p50 {:.0} ms, p99 {:.0} ms",
            path.label(),
            quantile(&leased_after, 0.5),
            quantile(&leased_after, 0.99),
            quantile(&job_start, 0.5),
            quantile(&job_start, 0.99)
        );
    }
    let body = reqwest::get(format!("http://{metrics}/metrics"))
        .await?
        .text()
        .await?;
    let (p50, p99) = histogram_quantiles(&body, "listener_publish_to_enqueue_seconds");
    println!(
        "all lone events: publish-to-enqueue p50 <= {:.2} ms, p99 <= {:.2} ms (the listener's histogram, bucket bounds; for raw PUBLISH from the ingest)",
        p50 * 1e3,
        p99 * 1e3
    );

    // 2. Throughput, 32 concurrent publishers on each path.
    for path in [Path::Stream, Path::Api, Path::RawPublish] {
        let before = received(
            &reqwest::get(format!("http://{metrics}/metrics"))
                .await?
                .text()
                .await?,
        );
        let t = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..32 {
            let (bus, pool, http, publish_url) =
                (bus.clone(), pool.clone(), http.clone(), publish_url.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = w;
                while i < n {
                    let payload = format!(
                        r#"{{"kind":"stock_changed","data":{{"stock":{{"P-{}":{}}}}}}}"#,
                        1 + i % 1000,
                        i
                    );
                    path.publish(&payload, &bus, &pool, &http, &publish_url)
                        .await?;
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
            "{}: {n} events published in {:.2} s ({:.0}/s), all processed after {:.2} s ({:.0} events/s end to end)",
            path.label(),
            published.as_secs_f64(),
            n as f64 / published.as_secs_f64(),
            done.as_secs_f64(),
            n as f64 / done.as_secs_f64()
        );
    }
    let _ = api_tx.send(());
    api_handle.await??;
    let _ = tx.send(());
    handle.await??;
    Ok(())
}

/// How a benchmark event is published.
#[derive(Clone, Copy)]
enum Path {
    /// `EventBus::publish` in this process: what the api's handler does.
    Stream,
    /// `POST /api/v1/publish-market-event` over HTTP.
    Api,
    /// A plain `PUBLISH` on the channel, as a channel-only publisher does.
    RawPublish,
}

impl Path {
    fn label(self) -> &'static str {
        match self {
            Path::Stream => "stream (EventBus, the api's code)",
            Path::Api => "api (HTTP POST)",
            Path::RawPublish => "raw PUBLISH",
        }
    }

    async fn publish(
        self,
        payload: &str,
        bus: &EventBus,
        pool: &RedisPool,
        http: &reqwest::Client,
        url: &str,
    ) -> anyhow::Result<()> {
        match self {
            Path::Stream => {
                let event =
                    shared::events::parse(payload.as_bytes()).map_err(|e| anyhow::anyhow!(e))?;
                bus.publish(&event).await?;
            }
            Path::Api => {
                let resp = http
                    .post(url)
                    .header("content-type", "application/json")
                    .body(payload.to_string())
                    .send()
                    .await?;
                anyhow::ensure!(resp.status() == 202, "the api answered {}", resp.status());
            }
            Path::RawPublish => {
                let (mut c, _t) = pool.get();
                let _: u64 = redis::cmd("PUBLISH")
                    .arg("market_events")
                    .arg(payload)
                    .query_async(&mut c)
                    .await?;
            }
        }
        Ok(())
    }
}

/// Redis's clock, in ms: the clock the queue stamps `started_at` with.
async fn redis_now_ms(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<i64> {
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(conn).await?;
    Ok(secs * 1_000 + micros / 1_000)
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
