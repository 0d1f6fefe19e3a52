//! The load and the checks of `scripts/multihost`, run on the driver host
//! of its network namespaces.
//!
//! `multihost_driver load` reads prices through every api (`API_URLS`),
//! publishes market events through them (one demand value per event, with
//! its own `occurred_at`, so which one is the latest is known), and
//! triggers a full recalculation every two seconds, until `STOP_FILE`
//! exists; it labels every outcome with the phase that `PHASE_FILE` names
//! at the time (the script writes it: `normal`, `app1-killed`, …) and
//! writes what it did to `RECORD`.
//!
//! `multihost_driver check` waits until the queue is drained, then checks
//! and prints: the reads that failed per api and phase (the last api's
//! host is never disrupted, so none of its reads may fail), that every
//! accepted event was processed and its product holds the latest accepted
//! value, that every job and every triggered recalculation reached a final
//! state with none dead, that no two full recalculations overlapped, and
//! that every cached price equals the price computed from the catalog.
//! Exits 1 when a check fails.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use queue::{Depths, JobState, QueueSettings, Queues, Routes};
use serde_json::{Value, json};
use shared::cache::CachedPrice;
use shared::config::{DatabaseSettings, RedisSettings};
use shared::keys::{Keys, PRICE_BUCKETS};
use shared::redis_pool::RedisPool;

/// Everything the load did, for the check.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Record {
    /// `phase -> api index -> [ok, failed]` price reads.
    reads: BTreeMap<String, BTreeMap<usize, [u64; 2]>>,
    /// Accepted events: `(k, product, event_id)`.
    events: Vec<(u64, String, String)>,
    /// Events the apis refused (503) or that failed in transit, per phase.
    events_refused: BTreeMap<String, u64>,
    /// Triggered full recalculations (task ids).
    recalcs: Vec<String>,
}

struct Env {
    apis: Vec<String>,
    redis: RedisSettings,
    database: DatabaseSettings,
    ns: String,
    products: u64,
}

fn env() -> anyhow::Result<Env> {
    let var = |k: &str| std::env::var(k).with_context(|| format!("{k} is required"));
    let ns = std::env::var("REDIS_NAMESPACE").unwrap_or_else(|_| "pricing".into());
    let cluster = std::env::var("REDIS_CLUSTER").is_ok_and(|v| v == "true");
    let url = var("REDIS_URL")?;
    let redis = if cluster {
        RedisSettings::for_cluster(&url.split(',').map(String::from).collect::<Vec<_>>(), &ns)
    } else {
        RedisSettings::for_url(url, &ns)
    };
    Ok(Env {
        apis: var("API_URLS")?.split(',').map(String::from).collect(),
        redis,
        database: DatabaseSettings::for_url(var("DATABASE_URL")?, 4),
        products: var("PRODUCTS")?.parse()?,
        ns,
    })
}

/// The demand value event `k` carries: a binary fraction, exact in JSON.
fn demand_of(k: u64) -> f64 {
    1.0 + (k % 4096) as f64 / 256.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let env = env()?;
    let record_path = std::env::var("RECORD").context("RECORD is required")?;
    match mode.as_str() {
        "load" => {
            let record = load(&env).await?;
            std::fs::write(&record_path, serde_json::to_vec(&record)?)?;
            Ok(())
        }
        "check" => {
            let record: Record = serde_json::from_slice(&std::fs::read(&record_path)?)?;
            if check(&env, &record).await? {
                println!("multihost: every check passed");
                Ok(())
            } else {
                println!("multihost: a check FAILED");
                std::process::exit(1)
            }
        }
        _ => anyhow::bail!("usage: multihost_driver load|check"),
    }
}

fn phase() -> String {
    std::env::var("PHASE_FILE")
        .ok()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .map(|p| p.trim().to_string())
        .unwrap_or_else(|| "normal".into())
}

fn stopped() -> bool {
    std::env::var("STOP_FILE").is_ok_and(|f| std::path::Path::new(&f).exists())
}

async fn load(env: &Env) -> anyhow::Result<Record> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    // Warm the cache through the first api, so that later reads are hits
    // and only the jobs write prices.
    for i in 1..=env.products {
        let body = json!({"product_id": format!("P-{i}")});
        let mut tries = 0;
        loop {
            let ok = client
                .post(format!("{}/api/v1/price", env.apis[0]))
                .json(&body)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                break;
            }
            tries += 1;
            anyhow::ensure!(tries < 300, "the first api never answered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    println!("driver: warmed {} prices", env.products);
    let record = Arc::new(Mutex::new(Record::default()));
    let counter = Arc::new(AtomicU64::new(0));
    let start = chrono::Utc::now();
    let mut tasks = Vec::new();
    // Two readers and one publisher per api, so that an api that hangs
    // (its host cut off) does not slow the load on the others.
    for r in 0..2 * env.apis.len() as u64 {
        let (client, apis, record, products) = (
            client.clone(),
            env.apis.clone(),
            record.clone(),
            env.products,
        );
        tasks.push(tokio::spawn(async move {
            let mut n = r;
            let api = r as usize % apis.len();
            while !stopped() {
                n += 1;
                let body = json!({"product_id": format!("P-{}", n * 7919 % products + 1)});
                let ok = client
                    .post(format!("{}/api/v1/price", apis[api]))
                    .json(&body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                {
                    let mut rec = record.lock().unwrap_or_else(|p| p.into_inner());
                    rec.reads
                        .entry(phase())
                        .or_default()
                        .entry(api)
                        .or_default()[usize::from(!ok)] += 1;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    for api in 0..env.apis.len() {
        let (client, apis, record, counter, products) = (
            client.clone(),
            env.apis.clone(),
            record.clone(),
            counter.clone(),
            env.products,
        );
        tasks.push(tokio::spawn(async move {
            while !stopped() {
                let k = counter.fetch_add(1, Ordering::Relaxed);
                let product = format!("P-{}", k % products + 1);
                let at = start + chrono::Duration::milliseconds(k as i64);
                let event = json!({
                    "kind": "demand_changed",
                    "data": {"demand": {product.as_str(): demand_of(k)}},
                    "occurred_at": at.to_rfc3339(),
                });
                let answer = client
                    .post(format!("{}/api/v1/publish-market-event", apis[api]))
                    .json(&event)
                    .send()
                    .await;
                let accepted = match answer {
                    Ok(r) if r.status().as_u16() == 202 => r
                        .json::<Value>()
                        .await
                        .ok()
                        .and_then(|v| v["event_id"].as_str().map(String::from)),
                    _ => None,
                };
                {
                    let mut rec = record.lock().unwrap_or_else(|p| p.into_inner());
                    match accepted {
                        Some(id) => rec.events.push((k, product, id)),
                        None => *rec.events_refused.entry(phase()).or_default() += 1,
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    {
        let (client, apis, record) = (client.clone(), env.apis.clone(), record.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !stopped() {
                n += 1;
                let answer = client
                    .post(format!(
                        "{}/api/v1/tasks/recalculate-all",
                        apis[n % apis.len()]
                    ))
                    .send()
                    .await;
                if let Ok(r) = answer
                    && r.status().as_u16() == 202
                    && let Some(id) = r
                        .json::<Value>()
                        .await
                        .ok()
                        .and_then(|v| v["task_id"].as_str().map(String::from))
                {
                    let mut rec = record.lock().unwrap_or_else(|p| p.into_inner());
                    if !rec.recalcs.contains(&id) {
                        rec.recalcs.push(id);
                    }
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let record = std::mem::take(&mut *record.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(record)
}

async fn check(env: &Env, record: &Record) -> anyhow::Result<bool> {
    let mut ok = true;
    let mut fail = |what: String| {
        println!("FAILED: {what}");
        ok = false;
    };
    let pool = RedisPool::new(&env.redis)?;
    let queues = Queues::new(
        pool.clone(),
        &env.ns,
        Routes::default(),
        QueueSettings::default(),
    );
    // Every queue's depths, summed.
    let depths = || async {
        let mut sum = Depths::default();
        for (_, q) in queues.iter() {
            let d = q.depths().await?;
            sum.pending += d.pending;
            sum.delayed += d.delayed;
            sum.running += d.running;
            sum.dead += d.dead;
            sum.succeeded_total += d.succeeded_total;
            sum.skipped_total += d.skipped_total;
            sum.retried_total += d.retried_total;
        }
        anyhow::Ok(sum)
    };
    let keys = Keys::new(&env.ns);
    let store = shared::store::open(&env.database).await?;

    // Reads: the undisrupted api (the last) never failed.
    let survivor = env.apis.len() - 1;
    for (phase, per_api) in &record.reads {
        let line: Vec<String> = per_api
            .iter()
            .map(|(api, [good, bad])| format!("api{} {good} ok {bad} failed", api + 1))
            .collect();
        println!("reads, {phase}: {}", line.join(", "));
        if let Some([_, bad]) = per_api.get(&survivor)
            && *bad > 0
        {
            fail(format!(
                "{bad} reads through the surviving api{} failed in {phase}",
                survivor + 1
            ));
        }
    }

    // Every job (event-driven and triggered) final, none dead.
    let mut drained = false;
    for _ in 0..240 {
        let d = depths().await?;
        if d.pending == 0 && d.delayed == 0 && d.running == 0 {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let d = depths().await?;
    println!(
        "jobs: {} succeeded, {} skipped, {} retried, {} dead, {} pending, {} delayed, {} running",
        d.succeeded_total,
        d.skipped_total,
        d.retried_total,
        d.dead,
        d.pending,
        d.delayed,
        d.running
    );
    if !drained {
        fail("the queue never drained".into());
    }
    if d.dead > 0 {
        fail(format!("{} jobs dead", d.dead));
    }

    // Events: every accepted one processed, every product at its latest.
    let (mut conn, _) = pool.get();
    let mut processed = 0usize;
    for (_, _, id) in &record.events {
        let done: Option<String> = redis::cmd("GET")
            .arg(keys.event_done(id))
            .query_async(&mut conn)
            .await?;
        processed += usize::from(done.as_deref() == Some("done"));
    }
    let refused: u64 = record.events_refused.values().sum();
    println!(
        "events: {} published and accepted, {processed} processed; {refused} refused or lost in transit ({:?})",
        record.events.len(),
        record.events_refused
    );
    if processed != record.events.len() {
        fail(format!(
            "{} accepted events never processed",
            record.events.len() - processed
        ));
    }
    let mut latest: HashMap<&str, u64> = HashMap::new();
    for (k, product, _) in &record.events {
        let e = latest.entry(product.as_str()).or_insert(*k);
        *e = (*e).max(*k);
    }
    let mut stale = 0;
    for (product, k) in &latest {
        let s = store.market_signals(product).await?;
        if s.demand_index != Some(demand_of(*k)) {
            stale += 1;
        }
    }
    println!(
        "signals: {} products, {stale} not at their latest accepted event",
        latest.len()
    );
    if stale > 0 {
        fail(format!(
            "{stale} products do not hold their latest event's value"
        ));
    }

    // Triggered recalculations: final, and never two at once.
    let mut runs = Vec::new();
    let mut unfinished = 0;
    for id in &record.recalcs {
        match queues.find(id).await?.map(|(_, s)| s) {
            Some(s) if s.record.state == JobState::Succeeded => {
                if let (Some(a), Some(b)) = (s.record.started_at, s.record.finished_at) {
                    runs.push((a, b));
                }
            }
            Some(s) if s.record.state == JobState::Skipped => {}
            other => {
                unfinished += 1;
                println!(
                    "recalculation {id} not final: {:?}",
                    other.map(|s| s.record.state)
                );
            }
        }
    }
    runs.sort_unstable();
    let overlaps = runs.windows(2).filter(|w| w[1].0 < w[0].1).count();
    println!(
        "full recalculations: {} triggered, {} ran, {unfinished} not final, {overlaps} overlaps",
        record.recalcs.len(),
        runs.len()
    );
    if unfinished > 0 {
        fail(format!("{unfinished} recalculations never finished"));
    }
    if overlaps > 0 {
        fail(format!("{overlaps} full recalculations overlapped"));
    }

    // Every cached price is the catalog's.
    let mut cached: Vec<(String, i64)> = Vec::new();
    for b in 0..PRICE_BUCKETS {
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(keys.price_bucket(b))
            .query_async(&mut conn)
            .await?;
        for (id, raw) in fields {
            if id == shared::lock::FENCE_FIELD {
                continue;
            }
            match CachedPrice::decode(&id, raw.as_bytes()) {
                Ok(entry) => cached.push((id, entry.price_cents)),
                Err(_) => fail(format!("cached entry of {id} does not decode")),
            }
        }
    }
    let ids: Vec<String> = cached.iter().map(|(id, _)| id.clone()).collect();
    let expected: HashMap<String, i64> = store
        .priced_by_ids(&ids)
        .await?
        .iter()
        .map(|(p, s)| (p.id.clone(), shared::pricing::compute_price_cents(p, s)))
        .collect();
    let wrong = cached
        .iter()
        .filter(|(id, cents)| expected.get(id) != Some(cents))
        .count();
    println!(
        "cache: {} prices cached, {wrong} differ from the catalog",
        cached.len()
    );
    if wrong > 0 {
        fail(format!("{wrong} cached prices differ from the catalog"));
    }
    Ok(ok)
}
