//! The api's near cache (`API_NEAR_CACHE_MAX_ENTRIES`) against a real
//! redis-server, with two api processes (and a worker process for the
//! recalculation), as on two machines:
//!
//! - a price written by another Redis client reaches both apis, and once an
//!   api has answered the new price it never answers the old one again;
//!   the delay from the write to each api's last stale answer is printed
//!   (p50/p99/max; `cargo test -p listener --test near_cache -- --nocapture`),
//!   never asserted;
//! - a full recalculation's writes invalidate both apis' entries;
//! - a Redis restart flushes both near caches, which serve nothing while
//!   Redis is away and start empty when it is back;
//! - on a Redis Cluster (three primaries, three replicas) a write on any
//!   primary reaches both apis; a primary's death flushes both near caches,
//!   which track the new shape once a replica has taken over, and the dead
//!   node's return as a replica, which closes no connection, flushes them
//!   too.
//!
//! The first api runs on one tokio worker thread (`API_WORKER_THREADS=1`,
//! as `scripts/bench-read` runs it; two on a one-core machine), the second
//! on one per core.
//!
//! The cache TTL is an hour, so without invalidations the near caches
//! would keep answering the old prices for the whole test.

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Value, json};
use shared::cache::CachedPrice;
use shared::keys::Keys;
use shared::store::sqlite::SqliteStore;
use shared::store::{CatalogStore, MarketUpdates, Observed};
use tempfile::TempDir;
use testkit::{Processes, RedisCluster, RedisServer, eventually, free_port, seeded_store};

/// A guard against a hang, never a timing check.
const LONG: Duration = Duration::from_secs(60);
const NS: &str = "near";
const PRODUCTS: u64 = 40;

fn bin(name: &str) -> PathBuf {
    testkit::sibling_bin(env!("CARGO_BIN_EXE_listener"), name)
}

/// Two apis with a near cache over one Redis and one SQLite catalog.
struct Fleet {
    store: Arc<SqliteStore>,
    db: String,
    apis: Vec<String>,
    procs: Processes,
    http: reqwest::Client,
    _dir: TempDir,
}

/// The settings naming one redis-server.
fn on_server(redis: &RedisServer) -> Vec<(&'static str, String)> {
    vec![("REDIS_URL", redis.url())]
}

/// The settings naming a Redis Cluster by its seeds.
fn on_cluster(cluster: &RedisCluster) -> Vec<(&'static str, String)> {
    vec![
        ("REDIS_URL", cluster.seeds().join(",")),
        ("REDIS_CLUSTER", "true".to_string()),
    ]
}

/// The services' settings on `redis` (see [`on_server`], [`on_cluster`]).
fn common(redis: &[(&'static str, String)], db: &str) -> Vec<(&'static str, String)> {
    let mut envs = redis.to_vec();
    envs.extend([
        ("REDIS_NAMESPACE", NS.to_string()),
        ("DATABASE_URL", db.to_string()),
        ("CACHE_TTL_SECS", "3600".to_string()),
        ("WORKER_METRICS_ADDR", "127.0.0.1:0".to_string()),
    ]);
    envs
}

impl Fleet {
    async fn start(redis: &[(&'static str, String)]) -> Self {
        let (store, dir, db) = seeded_store(PRODUCTS).await;
        let mut fleet = Fleet {
            store,
            db,
            apis: Vec::new(),
            procs: Processes::default(),
            http: reqwest::Client::new(),
            _dir: dir,
        };
        for api in 0..2 {
            let port = free_port();
            let mut envs = common(redis, &fleet.db);
            envs.push(("API_ADDR", format!("127.0.0.1:{port}")));
            envs.push(("API_NEAR_CACHE_MAX_ENTRIES", "1000".to_string()));
            // The first api runs on its own worker count, the second on one
            // per core.
            if api == 0 {
                envs.push(("API_WORKER_THREADS", first_api_workers().to_string()));
            }
            fleet.procs.spawn(&bin("api"), "api", &envs);
            fleet.apis.push(format!("http://127.0.0.1:{port}"));
        }
        for api in 0..2 {
            fleet.wait_ready(api).await;
            fleet.wait_tracking(api).await;
        }
        fleet
    }

    /// Waits until the api answers `/ready` (Redis and the store reachable).
    async fn wait_ready(&self, api: usize) {
        let ready = format!("{}/ready", self.apis[api]);
        eventually(LONG, "the api is ready", || async {
            let answer = self.http.get(&ready).send().await;
            answer.is_ok_and(|r| r.status().is_success())
        })
        .await;
    }

    /// The base price (cents) and the source of one answer.
    async fn price(&self, api: usize, id: &str) -> (i64, String) {
        let body: Value = self
            .http
            .post(format!("{}/api/v1/price", self.apis[api]))
            .json(&json!({"product_id": id}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let cents = (body["base_price"].as_f64().unwrap() * 100.0).round() as i64;
        (cents, body["source"].as_str().unwrap().to_string())
    }

    /// A series of one api's `/metrics` (0 when absent).
    async fn metric(&self, api: usize, name: &str) -> f64 {
        let text = testkit::scrape(&format!("{}/metrics", self.apis[api])).await;
        testkit::metric(&text, name, "")
    }

    /// Both apis' `near_cache_flushes_total`.
    async fn flushes(&self) -> [f64; 2] {
        [
            self.metric(0, "near_cache_flushes_total").await,
            self.metric(1, "near_cache_flushes_total").await,
        ]
    }

    /// Waits until both apis have flushed since [`Self::flushes`] said `before`.
    async fn wait_flushed(&self, before: [f64; 2]) {
        for (api, before) in before.into_iter().enumerate() {
            eventually(LONG, "the near cache is flushed", || async {
                self.metric(api, "near_cache_flushes_total").await > before
            })
            .await;
        }
    }

    async fn wait_tracking(&self, api: usize) {
        eventually(LONG, "the near cache tracks invalidations", || async {
            self.metric(api, "near_cache_tracking").await == 1.0
        })
        .await;
    }

    /// Reads `id` through both apis until each answers it from its near cache.
    async fn warm(&self, id: &str) {
        for api in 0..2 {
            let before = self.metric(api, "near_cache_hits_total").await;
            eventually(LONG, "a near-cache hit", || async {
                self.price(api, id).await;
                self.metric(api, "near_cache_hits_total").await > before
            })
            .await;
        }
    }
}

/// Writes a price for `id` straight into Redis, as another client would.
async fn hset(conn: &mut impl redis::aio::ConnectionLike, id: &str, cents: i64) {
    let _: () = redis::cmd("HSET")
        .arg(Keys::new(NS).price(id))
        .arg(id)
        .arg(CachedPrice::new(id, cents, Utc::now()).encode())
        .query_async(conn)
        .await
        .unwrap();
}

/// The price Redis holds for `id`, in cents.
async fn in_redis(redis: &RedisServer, id: &str) -> i64 {
    let mut conn = redis.connection().await;
    let raw: Vec<u8> = redis::cmd("HGET")
        .arg(Keys::new(NS).price(id))
        .arg(id)
        .query_async(&mut conn)
        .await
        .unwrap();
    CachedPrice::decode(id, &raw).unwrap().price_cents
}

/// Reads `id` through both apis, alternately, until both answer `want`;
/// fails if an api that answered `want` answers anything else later.
/// Returns, per api, how long after `since` its last other answer came.
async fn converge(fleet: &Fleet, id: &str, want: i64, since: Instant) -> [Duration; 2] {
    let mut seen_new = [false; 2];
    let mut last_stale = [Duration::ZERO; 2];
    let deadline = Instant::now() + LONG;
    // A few reads past convergence: none may go back.
    let mut extra = 20;
    while extra > 0 {
        assert!(
            Instant::now() < deadline,
            "{id}: the apis never answered {want}"
        );
        for api in 0..2 {
            let (cents, _) = fleet.price(api, id).await;
            if cents == want {
                seen_new[api] = true;
            } else {
                assert!(
                    !seen_new[api],
                    "api {api} answered {cents} for {id} after it had answered {want}"
                );
                last_stale[api] = since.elapsed();
            }
        }
        if seen_new == [true, true] {
            extra -= 1;
        }
    }
    last_stale
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Prints the delays from each write to an api's last stale answer
/// (`-- --nocapture`): measured, never asserted.
fn report(what: &str, mut delays: Vec<Duration>) {
    delays.sort();
    println!(
        "{what}: write → last stale answer, {} api-rounds: p50 {:?}, p99 {:?}, max {:?}",
        delays.len(),
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays[delays.len() - 1]
    );
}

#[tokio::test]
async fn a_write_by_another_client_reaches_both_apis_and_the_old_price_never_comes_back() {
    let redis = RedisServer::start().await;
    let fleet = Fleet::start(&on_server(&redis)).await;
    let mut conn = redis.connection().await;
    fleet.warm("P-1").await;
    let hits_before = fleet.metric(0, "near_cache_hits_total").await
        + fleet.metric(1, "near_cache_hits_total").await;

    let mut delays = Vec::new();
    for round in 0..40 {
        let want = 100_000 + round;
        let since = Instant::now();
        hset(&mut conn, "P-1", want).await;
        delays.extend(converge(&fleet, "P-1", want, since).await);
    }

    // The new prices were served from the near caches, not only from Redis.
    let hits_after = fleet.metric(0, "near_cache_hits_total").await
        + fleet.metric(1, "near_cache_hits_total").await;
    assert!(
        hits_after > hits_before + 100.0,
        "{hits_before} → {hits_after}"
    );
    for api in 0..2 {
        assert!(fleet.metric(api, "near_cache_invalidations_total").await >= 40.0);
    }
    report("on one server", delays);
    fleet.procs.stop();
}

/// `API_WORKER_THREADS` of the first api: one worker (as `scripts/bench-read`
/// runs the api), or two on a one-core machine, where one could not be told
/// from the default.
fn first_api_workers() -> usize {
    if cores() == 1 { 2 } else { 1 }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[tokio::test]
async fn api_worker_threads_sets_the_runtime_workers() {
    let redis = RedisServer::start().await;
    let fleet = Fleet::start(&on_server(&redis)).await;
    let cores = cores();
    assert_eq!(
        fleet.metric(0, "runtime_worker_threads").await,
        first_api_workers() as f64
    );
    assert_eq!(
        fleet.metric(1, "runtime_worker_threads").await,
        cores as f64,
        "unset, API_WORKER_THREADS means one worker per core"
    );
    fleet.procs.stop();
}

#[tokio::test]
async fn a_full_recalculation_invalidates_what_both_apis_hold() {
    let redis = RedisServer::start().await;
    let mut fleet = Fleet::start(&on_server(&redis)).await;
    let mut envs = common(&on_server(&redis), &fleet.db);
    envs.push(("WORKER_CONCURRENCY", "2".to_string()));
    fleet.procs.spawn(&bin("worker"), "worker", &envs);
    let ids: Vec<String> = (1..=10).map(|i| format!("P-{i}")).collect();
    let mut old = Vec::new();
    for id in &ids {
        fleet.warm(id).await;
        old.push(fleet.price(0, id).await.0);
    }

    // The costs rise, then a full recalculation reprices every product.
    let updates = MarketUpdates {
        unit_cost: ids
            .iter()
            .map(|id| Observed {
                product_id: id.clone(),
                value: 5_000.0,
                observed_at: Utc::now(),
            })
            .collect(),
        ..Default::default()
    };
    fleet.store.apply_market_updates(&updates).await.unwrap();
    let task: Value = fleet
        .http
        .post(format!("{}/api/v1/tasks/recalculate-all", fleet.apis[0]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let status_url = format!("{}{}", fleet.apis[1], task["status_url"].as_str().unwrap());
    eventually(LONG, "the recalculation succeeds", || async {
        let s: Value = fleet
            .http
            .get(&status_url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        s["status"] == "succeeded"
    })
    .await;

    let since = Instant::now();
    let mut changed = 0;
    for (id, old) in ids.iter().zip(old) {
        let new = in_redis(&redis, id).await;
        changed += usize::from(new != old);
        converge(&fleet, id, new, since).await;
    }
    assert!(changed > 0, "the recalculation changed no price");
    fleet.procs.stop();
}

#[tokio::test]
async fn a_redis_restart_flushes_both_near_caches() {
    // Persistent: the prices are still in Redis after the restart, so only
    // the near caches' flush decides where the first answer comes from.
    let mut redis = RedisServer::start_persistent().await;
    let fleet = Fleet::start(&on_server(&redis)).await;
    fleet.warm("P-1").await;
    let flushes = fleet.flushes().await;

    redis.stop();
    fleet.wait_flushed(flushes).await;
    for api in 0..2 {
        assert_eq!(fleet.metric(api, "near_cache_tracking").await, 0.0);
        // Bypassed: with Redis away the answer comes from the catalog.
        assert_eq!(fleet.price(api, "P-1").await.1, "database");
    }

    redis.restart().await;
    for api in 0..2 {
        fleet.wait_ready(api).await;
        fleet.wait_tracking(api).await;
        let hits = fleet.metric(api, "near_cache_hits_total").await;
        let (_, source) = fleet.price(api, "P-1").await;
        assert_eq!(source, "cache", "Redis still holds the price");
        assert_eq!(
            fleet.metric(api, "near_cache_hits_total").await,
            hits,
            "the first answer after the restart came from a near cache that was not flushed"
        );
    }
    fleet.procs.stop();
}

/// How many clients of the node on `port` track keys in broadcast mode
/// (`CLIENT LIST` flags `B`); 0 when it does not answer.
async fn broadcast_trackers(port: u16) -> usize {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return 0;
    };
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    list.lines()
        .filter(|client| {
            client
                .split(' ')
                .any(|f| f.strip_prefix("flags=").is_some_and(|f| f.contains('B')))
        })
        .count()
}

/// Waits until each api tracks every node, replicas included: two
/// broadcast-tracking clients on each.
async fn wait_every_node_tracked(cluster: &RedisCluster) {
    eventually(LONG, "both apis track every node", || async {
        for port in cluster.ports() {
            if broadcast_trackers(port).await != 2 {
                return false;
            }
        }
        true
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_every_node_invalidates_and_a_change_of_shape_flushes() {
    let mut cluster = RedisCluster::start().await;
    let fleet = Fleet::start(&on_cluster(&cluster)).await;
    let mut conn = cluster.connection().await;
    let ids = cluster.product_per_primary(NS, PRODUCTS).await;
    assert_eq!(ids.len(), 3, "{ids:?}");
    // Replicas too: a replica pushes the invalidations of the writes it
    // applies, so one promoted by a failover is tracked before its first.
    wait_every_node_tracked(&cluster).await;

    // A write on any primary reaches both apis.
    let mut delays = Vec::new();
    for round in 0..14 {
        for (i, (id, _)) in ids.iter().enumerate() {
            fleet.warm(id).await;
            let want = 200_000 + round * 10 + i as i64;
            let since = Instant::now();
            hset(&mut conn, id, want).await;
            delays.extend(converge(&fleet, id, want, since).await);
        }
    }
    report("on a cluster", delays);

    // A primary dies: both near caches are flushed, and once a replica has
    // taken over they track the new shape, the promoted replica included.
    let (dead_id, dead_port) = ids[0].clone();
    let flushes = fleet.flushes().await;
    cluster.kill(dead_port);
    fleet.wait_flushed(flushes).await;
    cluster.wait_healthy().await;
    for api in 0..2 {
        fleet.wait_tracking(api).await;
    }
    let mut conn = cluster.connection().await;
    let want = 300_000;
    let since = Instant::now();
    fleet.warm(&dead_id).await;
    hset(&mut conn, &dead_id, want).await;
    converge(&fleet, &dead_id, want, since).await;

    // The dead node comes back as a replica: no connection is lost, but
    // the shape changed, so both flush and track it too.
    let (other, _) = &ids[1];
    fleet.warm(other).await;
    let flushes = fleet.flushes().await;
    cluster.restart(dead_port).await;
    cluster.wait_healthy().await;
    fleet.wait_flushed(flushes).await;
    for api in 0..2 {
        fleet.wait_tracking(api).await;
        let hits = fleet.metric(api, "near_cache_hits_total").await;
        assert_eq!(fleet.price(api, other).await.1, "cache");
        assert_eq!(
            fleet.metric(api, "near_cache_hits_total").await,
            hits,
            "api {api}: an entry read before the shape changed was served"
        );
    }
    wait_every_node_tracked(&cluster).await;
    let want = 400_000;
    let since = Instant::now();
    fleet.warm(other).await;
    hset(&mut conn, other, want).await;
    converge(&fleet, other, want, since).await;
    fleet.procs.stop();
}
