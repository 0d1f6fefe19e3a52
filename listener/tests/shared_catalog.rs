//! One catalog on PostgreSQL shared by every service process: two apis,
//! two workers and two listeners (as on two machines) over one real
//! PostgreSQL and one Redis agree on every price after market events; the
//! services stop at start, in one line, on a database they cannot use; and
//! a listener records events published while PostgreSQL was down once it
//! is back; and on a Redis Cluster the services keep going through a
//! primary's failover without losing an accepted event or job. The
//! services run as the real binaries, `cargo test --workspace` builds them
//! next to the listener's.

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use shared::config::DatabaseSettings;
use shared::store::{self, CatalogStore};
use testkit::{PostgresServer, Processes, RedisCluster, RedisServer, free_port};

/// A guard against a hang, never a timing check.
const LONG: Duration = Duration::from_secs(90);
const NS: &str = "shared-catalog";
const PRODUCTS: u64 = 300;

fn bin(name: &str) -> PathBuf {
    testkit::sibling_bin(env!("CARGO_BIN_EXE_listener"), name)
}

/// Polls `check` until it holds (bounded by [`LONG`], a hang guard).
async fn wait<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    testkit::eventually(LONG, what, check).await
}

/// The environment every service gets: one Redis, one PostgreSQL.
fn common(redis: &RedisServer, db: &str) -> Vec<(&'static str, String)> {
    common_on(redis.url(), db)
}

/// [`common`] for a Redis at `redis_url` (a cluster's seeds, comma-separated).
fn common_on(redis_url: String, db: &str) -> Vec<(&'static str, String)> {
    vec![
        ("REDIS_URL", redis_url),
        ("REDIS_NAMESPACE", NS.to_string()),
        ("DATABASE_URL", db.to_string()),
        ("WORKER_METRICS_ADDR", "127.0.0.1:0".to_string()),
        ("LISTENER_METRICS_ADDR", "127.0.0.1:0".to_string()),
    ]
}

/// Starts an api on a free port; returns its base URL once it answers.
async fn start_api(procs: &mut Processes, envs: &[(&'static str, String)]) -> String {
    let port = free_port();
    let mut envs = envs.to_vec();
    envs.push(("API_ADDR", format!("127.0.0.1:{port}")));
    procs.spawn(&bin("api"), "api", &envs);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    wait(&format!("the api on {base}"), || async {
        client.get(format!("{base}/health")).send().await.is_ok()
    })
    .await;
    base
}

/// The price (`base_price`, in cents) and source an api answers for `id`.
async fn price(client: &reqwest::Client, base: &str, id: &str) -> (i64, String) {
    let body: Value = client
        .post(format!("{base}/api/v1/price"))
        .json(&json!({"product_id": id}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cents = (body["base_price"].as_f64().expect("a price") * 100.0).round() as i64;
    (
        cents,
        body["source"].as_str().unwrap_or_default().to_string(),
    )
}

/// Every product's price as the shared catalog says it should be.
async fn catalog_prices(store: &dyn CatalogStore) -> BTreeMap<String, i64> {
    let ids: Vec<String> = (1..=PRODUCTS).map(|i| format!("P-{i}")).collect();
    store
        .priced_by_ids(&ids)
        .await
        .unwrap()
        .iter()
        .map(|(p, s)| (p.id.clone(), shared::pricing::compute_price_cents(p, s)))
        .collect()
}

/// Every product's price as an api answers it.
async fn api_prices(client: &reqwest::Client, base: &str) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for i in 1..=PRODUCTS {
        let id = format!("P-{i}");
        out.insert(id.clone(), price(client, base, &id).await.0);
    }
    out
}

async fn publish(client: &reqwest::Client, base: &str, event: Value) {
    let resp = client
        .post(format!("{base}/api/v1/publish-market-event"))
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        202,
        "{}",
        resp.text().await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_apis_two_workers_and_two_listeners_agree_on_every_price_after_market_events() {
    // Arrange: one PostgreSQL and one Redis; the catalog seeded once; every
    // service a process of its own, each pair as on two machines.
    let redis = RedisServer::start().await;
    let pg = PostgresServer::start().await;
    let catalog = store::open(&DatabaseSettings::for_url(pg.url(), 2))
        .await
        .unwrap();
    store::seed::seed(catalog.as_ref(), PRODUCTS).await.unwrap();
    let envs = common(&redis, &pg.url());
    let mut procs = Processes::default();
    let api_a = start_api(&mut procs, &envs).await;
    let api_b = start_api(&mut procs, &envs).await;
    for name in ["worker", "worker", "listener", "listener"] {
        procs.spawn(&bin(name), name, &envs);
    }
    wait("both listeners subscribed", || async {
        redis.subscribers("market_events").await >= 2
    })
    .await;
    let client = reqwest::Client::new();
    let before = api_prices(&client, &api_a).await;
    assert_eq!(before, catalog_prices(catalog.as_ref()).await);
    assert_eq!(
        api_prices(&client, &api_b).await,
        before,
        "B reads A's cached prices"
    );

    // Act: market events through both apis; the listeners record them in
    // the shared catalog and queue jobs that either worker runs.
    let demand: BTreeMap<String, f64> = (1..=40).map(|i| (format!("P-{i}"), 3.0)).collect();
    publish(
        &client,
        &api_b,
        json!({"kind": "demand_changed", "data": {"demand": demand}}),
    )
    .await;
    let undercut: BTreeMap<String, f64> = (41..=60)
        .map(|i| {
            (
                format!("P-{i}"),
                (before[&format!("P-{i}")] as f64 / 100.0 * 0.8).max(0.01),
            )
        })
        .collect();
    publish(
        &client,
        &api_a,
        json!({"kind": "competitor_price_changed",
               "data": {"competitor": "undercut", "prices": undercut}}),
    )
    .await;
    let stock: BTreeMap<String, i64> = (61..=70).map(|i| (format!("P-{i}"), 0)).collect();
    publish(
        &client,
        &api_b,
        json!({"kind": "stock_changed", "data": {"stock": stock}}),
    )
    .await;

    // Assert: the catalog holds the signals, and both apis answer every
    // product at the price computed from it, with no restart and no miss
    // needed: the workers' cache writes carry them.
    wait("the listeners recorded every signal", || async {
        let s = catalog.market_signals("P-40").await.unwrap();
        let p = catalog.product("P-70").await.unwrap().unwrap();
        let c = catalog.market_signals("P-60").await.unwrap();
        s.demand_index == Some(3.0)
            && p.stock == 0
            && c.lowest_competitor_price == Some(undercut["P-60"])
    })
    .await;
    let expected = catalog_prices(catalog.as_ref()).await;
    let changed = (1..=70)
        .filter(|i| expected[&format!("P-{i}")] != before[&format!("P-{i}")])
        .count();
    assert!(
        changed >= 30,
        "the events moved only {changed} of 70 prices"
    );
    wait("api A answers every price as the catalog says", || async {
        api_prices(&client, &api_a).await == expected
    })
    .await;
    assert_eq!(api_prices(&client, &api_b).await, expected);

    // Without the cache, each api prices every product from the shared
    // catalog itself, and they agree.
    let mut conn = redis.connection().await;
    let hashes: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{NS}:prices:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!hashes.is_empty());
    for (name, base) in [("B", &api_b), ("A", &api_a)] {
        let _: () = redis::cmd("DEL")
            .arg(&hashes)
            .query_async(&mut conn)
            .await
            .unwrap();
        let (p, source) = price(&client, base, "P-1").await;
        assert_eq!(
            (p, source.as_str()),
            (expected["P-1"], "database"),
            "{name}"
        );
        assert_eq!(
            api_prices(&client, base).await,
            expected,
            "{name} from the catalog"
        );
    }

    procs.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_url_that_cannot_be_used_stops_every_service_with_one_line() {
    let redis = RedisServer::start().await;
    let pg = PostgresServer::start().await;
    // A port that accepts connections and never answers: the connect timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let closed = free_port();
    let cases = [
        (
            format!("postgres://pricing:hunter2@127.0.0.1:{closed}/pricing"),
            "refused",
        ),
        (
            format!("postgres://pricing:hunter2@127.0.0.1:{silent_port}/pricing"),
            "DATABASE_CONNECT_TIMEOUT_MS",
        ),
        (pg.url_of("no_such_database"), "does not exist"),
    ];
    for (url, reason) in &cases {
        for name in ["api", "worker", "listener"] {
            let mut envs = common(&redis, url);
            envs.push(("DATABASE_CONNECT_TIMEOUT_MS", "500".into()));
            envs.push(("API_ADDR", "127.0.0.1:0".into()));
            let out = tokio::task::spawn_blocking({
                let bin = bin(name);
                move || {
                    Command::new(bin)
                        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
                        .env("RUST_LOG", "warn")
                        .stdin(Stdio::null())
                        .output()
                        .unwrap()
                }
            })
            .await
            .unwrap();
            assert!(!out.status.success(), "{name} started on {url}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
            assert_eq!(lines.len(), 1, "{name} on {url}: {stderr}");
            assert!(
                lines[0].contains("DATABASE_URL=postgres://pricing") && lines[0].contains(reason),
                "{name} on {url}: {stderr}"
            );
            assert!(
                !stderr.contains("hunter2"),
                "{name} printed the password: {stderr}"
            );
        }
    }
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_while_postgres_is_down_are_recorded_once_it_is_back() {
    // Arrange: an api and a listener over PostgreSQL.
    let redis = RedisServer::start().await;
    let mut pg = PostgresServer::start().await;
    let settings = DatabaseSettings::for_url(pg.url(), 2);
    let seeding = store::open(&settings).await.unwrap();
    store::seed::seed(seeding.as_ref(), 10).await.unwrap();
    seeding.close().await;
    let envs = common(&redis, &pg.url());
    let mut procs = Processes::default();
    let api = start_api(&mut procs, &envs).await;
    procs.spawn(&bin("listener"), "listener", &envs);
    wait("the listener subscribed", || async {
        redis.subscribers("market_events").await >= 1
    })
    .await;
    let client = reqwest::Client::new();

    // Act: PostgreSQL goes away; events keep coming; then it comes back.
    pg.stop();
    for i in 1..=5 {
        let demand = json!({format!("P-{i}"): 2.0 + i as f64 / 10.0});
        publish(
            &client,
            &api,
            json!({"kind": "demand_changed", "data": {"demand": demand}}),
        )
        .await;
    }
    pg.restart().await;

    // Assert: every event's signal is in the catalog, with nothing restarted.
    let catalog: Arc<dyn CatalogStore> = store::open(&settings).await.unwrap();
    wait("every event recorded after the outage", || async {
        let mut all = true;
        for i in 1..=5 {
            let s = catalog.market_signals(&format!("P-{i}")).await.unwrap();
            all &= s.demand_index == Some(2.0 + i as f64 / 10.0);
        }
        all
    })
    .await;
    procs.stop();
}

/// `POST`s an event; the status the api answered.
async fn try_publish(client: &reqwest::Client, base: &str, event: Value) -> u16 {
    match client
        .post(format!("{base}/api/v1/publish-market-event"))
        .json(&event)
        .send()
        .await
    {
        Ok(resp) => resp.status().as_u16(),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_the_services_keep_going_through_a_failover_and_lose_no_accepted_event()
{
    // Arrange: a 3+3 cluster, PostgreSQL, and the services speaking Redis
    // Cluster, each durable write waiting for a replica.
    let mut cluster = RedisCluster::start().await;
    let pg = PostgresServer::start().await;
    let catalog = store::open(&DatabaseSettings::for_url(pg.url(), 2))
        .await
        .unwrap();
    store::seed::seed(catalog.as_ref(), PRODUCTS).await.unwrap();
    let mut envs = common_on(cluster.seeds().join(","), &pg.url());
    envs.extend([
        ("REDIS_CLUSTER", "true".to_string()),
        ("REDIS_WAIT_REPLICAS", "1".to_string()),
        ("LISTENER_COALESCE_WINDOW_MS", "20".to_string()),
        // An attempt cut off by the failover is retried after a second, not
        // the default 30 s then 60 s, which alone outlast the hang guard.
        ("RECALC_RETRY_BASE_SECS", "1".to_string()),
    ]);
    let mut procs = Processes::default();
    let api = start_api(&mut procs, &envs).await;
    for name in ["worker", "worker", "listener"] {
        procs.spawn(&bin(name), name, &envs);
    }
    wait("the listener subscribed", || async {
        cluster.subscribers("market_events").await >= 1
    })
    .await;
    let client = reqwest::Client::new();
    let before = api_prices(&client, &api).await;
    assert_eq!(before, catalog_prices(catalog.as_ref()).await);

    // Act: one event per product, each with a demand of its own, published
    // while the primary that holds the event stream is killed.
    let events_primary = cluster
        .primary_of(&shared::keys::Keys::new(NS).event_stream())
        .await;
    // Binary fractions: each survives the JSON round trip exactly.
    let demand = |i: u64| 1.0 + i as f64 / 256.0;
    let (mut accepted, mut refused) = (Vec::new(), 0);
    for i in 1..=PRODUCTS {
        if i == 60 {
            cluster.kill(events_primary);
        }
        let id = format!("P-{i}");
        let event = json!({"kind": "demand_changed", "data": {"demand": {id.as_str(): demand(i)}}});
        match try_publish(&client, &api, event).await {
            202 => accepted.push(i),
            // Not accepted while the stream's slot has no primary: the
            // publisher is told (503) and may send it again.
            503 | 0 => refused += 1,
            other => panic!("publishing answered {other}"),
        }
    }
    cluster.wait_healthy().await;
    // A channel-only event through whichever node, after the failover.
    let mut conn = cluster.connection().await;
    let raw = r#"{"kind":"demand_changed","data":{"demand":{"P-1":9.5}}}"#;
    testkit::publish(&mut conn, "market_events", raw).await;

    // Assert: every accepted event is recorded in the catalog, every job
    // reached a final state, and every price is the catalog's.
    eprintln!(
        "cluster failover under events: {} accepted, {refused} refused (503) while the stream's primary failed over",
        accepted.len()
    );
    assert!(accepted.len() >= 200, "{} accepted", accepted.len());
    wait("every accepted event recorded", || async {
        for i in &accepted {
            let s = catalog.market_signals(&format!("P-{i}")).await.unwrap();
            let want = if *i == 1 { 9.5 } else { demand(*i) };
            if s.demand_index != Some(want) {
                return false;
            }
        }
        true
    })
    .await;
    let pool = shared::redis_pool::RedisPool::new(&cluster.settings(NS)).unwrap();
    let queues = queue::Queues::new(
        pool,
        NS,
        queue::Routes::default(),
        queue::QueueSettings::default(),
    );
    // Every job reaches a final state: none waits, none is scheduled, none
    // is left running. A write caught by the failover may hang on a cluster
    // connection that stopped answering; the connection's probe (about
    // 20 s for a worker's bulk write) or deadline (53.5 s) fails it and the
    // job runs again, so this guard allows for a few such attempts.
    testkit::eventually(
        LONG + Duration::from_secs(60),
        "every job final",
        || async {
            for (_, q) in queues.iter() {
                let d = q.depths().await.unwrap();
                if d.pending + d.delayed + d.running > 0 {
                    return false;
                }
            }
            true
        },
    )
    .await;
    for (name, q) in queues.iter() {
        assert_eq!(q.depths().await.unwrap().dead, 0, "a job of {name} died");
    }
    let expected = catalog_prices(catalog.as_ref()).await;
    wait(
        "the api answers every price as the catalog says",
        || async { api_prices(&client, &api).await == expected },
    )
    .await;
    // The old primary rejoins as a replica; the services never restarted.
    cluster.restart(events_primary).await;
    cluster.wait_healthy().await;
    procs.stop();
}
