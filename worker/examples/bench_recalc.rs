//! Recalculation benchmark: seeds N products into a fresh catalog, runs
//! `recalculate_all_prices` through the queue and a worker twice (into an
//! empty cache, then over the cached prices), and prints the seeding time,
//! products/s, the time to a warm cache and the process's peak RSS during
//! each run. With `DATABASE_URL` set it runs on that store (seeding P-1 …
//! P-N into it); without, on both stores in one run, a SQLite file and a
//! PostgreSQL server started here on a free loopback port, and prints them
//! side by side. Run through `scripts/bench-recalc`.

use std::time::{Duration, Instant};

use queue::{JobState, NewJob, Queue, QueueSettings};
use shared::config::{CacheSettings, DatabaseSettings, RedisSettings};
use shared::jobs::RecalculateAllPrices;
use shared::redis_pool::RedisPool;
use shared::store::CatalogStore;
use testkit::env_or;

/// The allocator the worker binary uses, so the figures are the worker's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What one store's run measured.
struct Figures {
    store: String,
    seed_s: f64,
    /// `(ms inside the job, peak RSS in MiB)`, cold then warm.
    runs: Vec<(u64, u64)>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url: String = env_or("REDIS_URL", "redis://127.0.0.1:6379".into());
    let n: u64 = env_or("N", 100_000);
    let mut figures = Vec::new();
    if let Ok(db) = std::env::var("DATABASE_URL") {
        figures.push(bench(&url, &db, "DATABASE_URL", n).await?);
    } else {
        let dir = tempfile::tempdir()?;
        let sqlite = format!("sqlite://{}/catalog.db", dir.path().display());
        figures.push(bench(&url, &sqlite, "SQLite", n).await?);
        drop(dir);
        let pg = testkit::PostgresServer::start().await;
        figures.push(bench(&url, &pg.url(), "PostgreSQL", n).await?);
    }
    println!("\nside by side, {n} products:");
    println!("| store | seed | cold run | warm run | peak RSS (cold / warm) |");
    println!("|---|---|---|---|---|");
    for f in &figures {
        let run = |i: usize| f.runs.get(i).copied().unwrap_or_default();
        println!(
            "| {} | {:.1} s | {:.2} s | {:.2} s | {} / {} MiB |",
            f.store,
            f.seed_s,
            run(0).0 as f64 / 1000.0,
            run(1).0 as f64 / 1000.0,
            run(0).1,
            run(1).1,
        );
    }
    Ok(())
}

/// Seeds the store at `db`, then runs the recalculation cold and warm.
async fn bench(url: &str, db: &str, label: &str, n: u64) -> anyhow::Result<Figures> {
    println!("==> {label}: {}", shared::config::redact_url_password(db));
    let database = DatabaseSettings::for_url(db, 4);
    let store = shared::store::open(&database).await?;
    let t = Instant::now();
    shared::store::seed::seed(store.as_ref(), n).await?;
    let seed_s = t.elapsed().as_secs_f64();
    println!("seeded {n} products in {seed_s:.1} s");

    if std::env::var("PHASES").is_ok_and(|v| v == "1") {
        phases(&store, db, url).await?;
    }

    let ns = format!("bench-recalc-{}", label.to_ascii_lowercase());
    let settings = worker::Settings {
        redis: RedisSettings::for_url(url, &ns),
        database,
        telemetry: testkit::telemetry("bench", "warn"),
        queue: QueueSettings::default(),
        routes: queue::Routes::default(),
        consume: queue::Consume::default(),
        cache: CacheSettings {
            ttl: Duration::from_secs(3600),
        },
        feed: None,
        recalc_lock_ttl: Duration::from_secs(60),
        concurrency: 4,
        prefetch: 4,
        shutdown_timeout: Duration::from_secs(10),
        job_timeout: Duration::from_secs(3600),
        time_limits: Default::default(),
        revoke_grace: std::time::Duration::from_secs(10),
        schedules: Default::default(),
        metrics_addr: "127.0.0.1:0".parse()?,
    };
    let registry = worker::full_registry(&settings).await?;
    let w = worker::Worker::build(settings, registry).await?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(w.run_until_stopped(async {
        let _ = rx.await;
    }));
    let q = Queue::new(
        RedisPool::new(&RedisSettings::for_url(url, &ns))?,
        &ns,
        queue::DEFAULT_QUEUE,
        QueueSettings::default(),
    );

    // First into an empty cache (Redis grows its keyspace as it goes), then
    // again over the cached prices, as every later recalculation runs.
    let mut runs = Vec::new();
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
        let peak = rss_kib("VmHWM") / 1024;
        anyhow::ensure!(
            result["updated_count"].as_u64() == Some(n),
            "the job priced {} products of {n}",
            result["updated_count"]
        );
        println!(
            "recalculate_all_prices, {run}: {} products in {} ms inside the job ({:.0} products/s); warm cache {:.2} s after the push; worker RSS {} MiB before, peak {} MiB",
            result["updated_count"],
            job_ms,
            n as f64 / (job_ms.max(1) as f64 / 1000.0),
            warm.as_secs_f64(),
            rss_before / 1024,
            peak,
        );
        runs.push((job_ms, peak));
    }
    let _ = tx.send(());
    handle.await??;
    store.close().await;
    Ok(Figures {
        store: label.to_string(),
        seed_s,
        runs,
    })
}

/// Times each stage of a recalculation on its own, one after the other:
/// reading the catalog's pages ([`CatalogStore::scan`], and for SQLite also
/// through sqlx instead of the bulk reader), pricing and encoding, and the
/// fenced writes (one writer, so without the overlap the job has).
async fn phases(
    store: &std::sync::Arc<dyn CatalogStore>,
    db: &str,
    url: &str,
) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    let page = worker::jobs::recalc::PAGE;
    if db.starts_with("sqlite:") {
        let sqlite = shared::store::sqlite::SqliteStore::connect(db, 1).await?;
        let (t, mut after, mut n) = (Instant::now(), None::<String>, 0usize);
        loop {
            let rows = sqlite
                .priced_page_through_sqlx(after.as_deref(), page)
                .await?;
            let Some((last, _)) = rows.last() else { break };
            after = Some(last.id.clone());
            n += rows.len();
        }
        println!(
            "phases: read pages through sqlx's SQLite driver instead of the bulk reader: {n} products in {:.2} s",
            t.elapsed().as_secs_f64()
        );
    }
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
    let mut pages = store.clone().scan(page);
    let mut n = 0usize;
    loop {
        let t = Instant::now();
        let Some(rows) = pages.next().await else {
            read += t.elapsed();
            break;
        };
        let rows = rows?;
        read += t.elapsed();
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
