//! Recalculation benchmark: seeds N products into a fresh SQLite catalog,
//! runs `recalculate_all_prices` through the queue and a worker twice (into
//! an empty cache, then over the cached prices), and prints products/s, the
//! time to a warm cache and the process's peak RSS during each run. Run
//! through `scripts/bench-recalc`.

use std::time::{Duration, Instant};

use shared::config::{
    CacheSettings, DatabaseSettings, LogFormat, RedisSettings, TelemetrySettings,
};
use shared::jobs::RecalculateAllPrices;
use shared::queue::{JobState, NewJob, Queue, QueueSettings};
use shared::redis_pool::RedisPool;

/// The allocator the worker binary uses, so the figures are the worker's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let n: u64 = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir()?;
    let db = format!("sqlite://{}/catalog.db", dir.path().display());

    let store = shared::store::sqlite::SqliteStore::connect(&db, 4).await?;
    let t = Instant::now();
    shared::store::seed::seed(&store, n).await?;
    println!("seeded {n} products in {:.1} s", t.elapsed().as_secs_f64());

    if std::env::var("PHASES").is_ok_and(|v| v == "1") {
        phases(&store, &url).await?;
    }

    let ns = "bench-recalc";
    let settings = worker::config::Settings {
        redis: RedisSettings::for_url(&url, ns),
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
        queue: QueueSettings::default(),
        cache: CacheSettings {
            ttl: Duration::from_secs(3600),
        },
        feed: None,
        recalc_lock_ttl: Duration::from_secs(60),
        concurrency: 4,
        prefetch: 4,
        shutdown_timeout: Duration::from_secs(10),
        job_timeout: Duration::from_secs(3600),
        metrics_addr: "127.0.0.1:0".parse()?,
    };
    let registry = worker::full_registry(&settings).await?;
    let w = worker::Worker::build(settings, registry).await?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(w.run_until_stopped(async {
        let _ = rx.await;
    }));
    let q = Queue::new(
        RedisPool::new(&RedisSettings::for_url(&url, ns))?,
        ns,
        shared::queue::DEFAULT_QUEUE,
        QueueSettings::default(),
    );

    // First into an empty cache (Redis grows its keyspace as it goes), then
    // again over the cached prices, as every later recalculation runs.
    for run in ["cold (empty cache)", "warm (prices cached)"] {
        reset_peak_rss();
        let rss_before = rss_kib("VmRSS");
        let t = Instant::now();
        let id = q.push(NewJob::of(&RecalculateAllPrices {})?).await?.id;
        let result = loop {
            if let Some(s) = q.status(&id).await?
                && matches!(
                    s.record.state,
                    JobState::Succeeded | JobState::Failed | JobState::Skipped
                )
            {
                anyhow::ensure!(
                    s.record.state == JobState::Succeeded,
                    "recalculation ended {:?}: {:?}",
                    s.record.state,
                    s.record.error
                );
                break s.result.unwrap_or_default();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let warm = t.elapsed();
        let job_ms = result["duration_ms"].as_u64().unwrap_or(0);
        println!(
            "recalculate_all_prices, {run}: {} products in {} ms inside the job ({:.0} products/s); warm cache {:.2} s after the push; worker RSS {} MiB before, peak {} MiB",
            result["updated_count"],
            job_ms,
            n as f64 / (job_ms.max(1) as f64 / 1000.0),
            warm.as_secs_f64(),
            rss_before / 1024,
            rss_kib("VmHWM") / 1024,
        );
    }
    let _ = tx.send(());
    handle.await??;
    Ok(())
}

/// Times each stage of a recalculation on its own, one after the other:
/// reading the catalog's pages, pricing and encoding, and the fenced writes
/// (one writer, so without the overlap the job has).
async fn phases(store: &shared::store::sqlite::SqliteStore, url: &str) -> anyhow::Result<()> {
    use shared::store::CatalogStore;
    let page = worker::jobs::recalc::PAGE;
    let (mut read, mut encode, mut write) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let pool = RedisPool::new(&RedisSettings::for_url(url, "bench-phases"))?;
    let cache = shared::cache::PriceCache::new(
        pool.clone(),
        shared::keys::Keys::new("bench-phases"),
        Duration::from_secs(60),
    );
    let mut writer = shared::lock::FencedWriter::connect(
        &pool,
        "bench-phases:fence",
        1,
        Duration::from_secs(60),
    )
    .await?;
    let (mut after, mut n) = (None::<String>, 0usize);
    loop {
        let t = Instant::now();
        let rows = store.priced_page(after.as_deref(), page).await?;
        read += t.elapsed();
        let Some((last, _)) = rows.last() else { break };
        after = Some(last.id.clone());
        n += rows.len();
        let t = Instant::now();
        let encoder = shared::cache::CachedPrice::encoder(chrono::Utc::now());
        let entries = shared::cache::PriceBatch::new(
            cache.keys(),
            rows.iter().map(|(p, s)| {
                (
                    p.id.clone(),
                    encoder.encode(&p.id, shared::pricing::compute_price_cents(p, s)),
                )
            }),
        );
        encode += t.elapsed();
        let t = Instant::now();
        writer.write(entries.hashes()).await?;
        write += t.elapsed();
    }
    println!(
        "phases over {n} products: read pages {:.2} s, price+encode {:.2} s, fenced writes {:.2} s",
        read.as_secs_f64(),
        encode.as_secs_f64(),
        write.as_secs_f64()
    );
    Ok(())
}

/// A field of `/proc/self/status` in KiB (0 where unavailable).
fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix(field)?
                    .trim_start_matches(':')
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

/// Resets the peak RSS (`VmHWM`) to the current RSS (Linux `clear_refs` 5),
/// so the peak measured afterwards is the recalculation's, not the seeding's.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
