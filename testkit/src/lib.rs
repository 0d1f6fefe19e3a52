//! Test support for the whole workspace: real servers on loopback, torn
//! down by PID. A dev-dependency only; no service links it.
//!
//! # Layout
//! - this file: [`RedisServer`] starts the real `redis-server` binary
//!   (Debian's package, or `REDIS_SERVER_BIN`) on a free 127.0.0.1 port with
//!   its own temporary data folder, waits until it answers PING, and kills it
//!   when dropped; it can be stopped and restarted on the same port, which is
//!   how tests take Redis away from a running service. Also [`temp_store`]
//!   and [`seeded_store`] (a fresh SQLite catalog), [`eventually`] (a bounded
//!   poll), [`free_port`], [`sibling_bin`],
//!   [`run_until_ready_then_sigterm`], [`publish`] (a raw `PUBLISH`),
//!   [`telemetry`] (settings that export nothing) and [`env_or`] (a
//!   benchmark's knob from the environment).
//! - [`Processes`]: service binaries started for a test and stopped by PID.
//! - `cluster`: [`RedisCluster`] (three primaries, three replicas),
//!   [`TestRedis`] and the [`redis_suite!`] macro that runs one test on both.
//! - `postgres`: [`PostgresServer`], a real PostgreSQL started with `initdb`
//!   and `postgres` as an unprivileged user.
//! - `tls`: [`TestCa`], a CA made in the test for servers with TLS.
//! - [`otlp_receiver`]: an in-process OTLP trace receiver (gRPC or HTTP).
//! - [`otlp_count`]: the benchmarks' OTLP/gRPC sink, which counts the spans
//!   of each export on the wire without decoding it.
//!
//! Nothing here needs Docker.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;

mod cluster;
pub mod otlp_count;
pub mod otlp_receiver;
mod postgres;
mod tls;
pub use cluster::{RedisCluster, RedisKind, TestRedis};
pub use postgres::{PostgresOptions, PostgresServer};
pub use tls::TestCa;

use shared::config::{LogFormat, TelemetrySettings};
use shared::store::CatalogStore;
use shared::store::sqlite::SqliteStore;

/// How long a started redis-server may take to answer PING.
const STARTUP_DEADLINE: Duration = Duration::from_secs(20);

/// Options for a test Redis.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// Persist with an append-only file (`appendfsync always`), so that a
    /// restart keeps every acknowledged write.
    pub aof: bool,
    /// Serve TLS only (`--tls-port`, no plain port), with this certificate
    /// and key, PEM; clients are not asked for certificates. The URL is then
    /// `rediss://`, and [`RedisServer::connection`] trusts `ca_pem`.
    pub tls: Option<RedisTls>,
}

/// The TLS files of a test Redis, PEM.
#[derive(Debug, Clone)]
pub struct RedisTls {
    /// The server's certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
    /// The CA that issued it, which the harness's own connections trust.
    pub ca_pem: String,
}

/// A real redis-server on a free loopback port.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    options: RedisOptions,
}

impl RedisServer {
    /// Starts a server without persistence.
    pub async fn start() -> Self {
        Self::start_with(RedisOptions::default()).await
    }

    /// Starts a server that keeps every acknowledged write through a
    /// restart (append-only file, `appendfsync always`).
    pub async fn start_persistent() -> Self {
        Self::start_with(RedisOptions {
            aof: true,
            ..RedisOptions::default()
        })
        .await
    }

    /// Starts a server with `options`.
    pub async fn start_with(options: RedisOptions) -> Self {
        let dir = tempfile::tempdir().expect("temporary folder for redis");
        for _ in 0..20 {
            let port = free_port();
            if let Some(child) = spawn_and_wait(port, dir.path(), &options).await {
                return Self {
                    child: Some(child),
                    port,
                    dir,
                    options,
                };
            }
        }
        panic!("could not start redis-server on a free port after 20 attempts");
    }

    /// The server's URL, e.g. `redis://127.0.0.1:40123` (`rediss://` with TLS).
    pub fn url(&self) -> String {
        url_of(self.port, &self.options)
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL, by PID), as a crash or an outage would.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts the server again on the same port and data folder.
    pub async fn restart(&mut self) {
        self.kill();
        self.child = spawn_and_wait(self.port, self.dir.path(), &self.options).await;
        assert!(
            self.child.is_some(),
            "redis-server did not come back on port {}",
            self.port
        );
    }

    /// How many clients are subscribed to `channel` (`PUBSUB NUMSUB`).
    pub async fn subscribers(&self, channel: &str) -> u64 {
        let n: Vec<(String, u64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(&mut self.connection().await)
            .await
            .expect("PUBSUB NUMSUB");
        n.first().map_or(0, |(_, n)| *n)
    }

    /// A fresh async connection, for assertions.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        harness_client(self.port, &self.options)
            .get_multiplexed_async_connection()
            .await
            .expect("connect to test redis")
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn url_of(port: u16, options: &RedisOptions) -> String {
    let scheme = if options.tls.is_some() {
        "rediss"
    } else {
        "redis"
    };
    format!("{scheme}://127.0.0.1:{port}")
}

/// A client of the test server for the harness itself, trusting its CA.
pub(crate) fn harness_client(port: u16, options: &RedisOptions) -> redis::Client {
    let url = url_of(port, options);
    match &options.tls {
        None => redis::Client::open(url),
        Some(tls) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(tls.ca_pem.clone().into_bytes()),
            },
        ),
    }
    .expect("test redis url")
}

/// Starts redis-server on `port` and waits until it answers; `None` if it
/// exited (most likely because the port was taken meanwhile) or never answered.
async fn spawn_and_wait(port: u16, dir: &Path, options: &RedisOptions) -> Option<Child> {
    let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
    let mut cmd = Command::new(bin);
    match &options.tls {
        None => {
            cmd.arg("--port").arg(port.to_string());
        }
        Some(tls) => {
            for (name, pem) in [
                ("server.crt", &tls.cert_pem),
                ("server.key", &tls.key_pem),
                ("ca.crt", &tls.ca_pem),
            ] {
                std::fs::write(dir.join(name), pem).expect("write the TLS files");
            }
            cmd.args(["--port", "0", "--tls-port"])
                .arg(port.to_string())
                .arg("--tls-cert-file")
                .arg(dir.join("server.crt"))
                .arg("--tls-key-file")
                .arg(dir.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(dir.join("ca.crt"))
                .args(["--tls-auth-clients", "no"]);
        }
    }
    cmd.args(["--bind", "127.0.0.1", "--save", "", "--daemonize", "no"])
        .args(["--protected-mode", "yes", "--loglevel", "warning"])
        .arg("--dir")
        .arg(dir);
    if options.aof {
        cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
    } else {
        cmd.args(["--appendonly", "no"]);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (apt-get install redis-server)");
    let client = harness_client(port, options);
    let deadline = Instant::now() + STARTUP_DEADLINE;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        if ping(&client).await {
            return Some(child);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

async fn ping(client: &redis::Client) -> bool {
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return false;
    };
    redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .is_ok()
}

/// `PUBLISH channel message` over `conn` (any node of a cluster will do);
/// returns how many subscribers received it.
pub async fn publish(
    conn: &mut impl redis::aio::ConnectionLike,
    channel: &str,
    message: impl redis::ToRedisArgs,
) -> u64 {
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(message)
        .query_async(conn)
        .await
        .expect("PUBLISH")
}

/// Polls `check` every 50 ms until it holds; panics naming `what` after
/// `within`, a bound against a hang, never a timing check.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Another binary of the workspace, next to `own` (a test's
/// `env!("CARGO_BIN_EXE_…")`): `cargo test --workspace` builds them all
/// into one folder.
pub fn sibling_bin(own: &str, name: &str) -> std::path::PathBuf {
    let path = Path::new(own).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` (cargo test --workspace builds it)",
        path.display()
    );
    path
}

/// The Prometheus text a service serves at `url` (its `/metrics`).
pub async fn scrape(url: &str) -> String {
    reqwest::get(url)
        .await
        .and_then(reqwest::Response::error_for_status)
        .expect("GET /metrics")
        .text()
        .await
        .expect("the /metrics body")
}

/// The sum of the samples in Prometheus `text` of the series `name` whose
/// labels contain `labels` (e.g. `reason="malformed_json"`, or `""` for
/// any); 0 when there are none.
pub fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.contains(labels))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            (series.split('{').next() == Some(name)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// A fresh SQLite catalog in its own temporary folder. Keep the folder
/// alive as long as the store is used.
pub async fn temp_store() -> (Arc<SqliteStore>, TempDir, String) {
    let dir = tempfile::tempdir().expect("temporary folder for the store");
    let url = format!("sqlite://{}/catalog.db", dir.path().display());
    let store = SqliteStore::connect(&url, 4)
        .await
        .expect("open temporary SQLite store");
    (Arc::new(store), dir, url)
}

/// [`temp_store`] holding the synthetic catalog P-1 … P-`products`
/// ([`shared::store::seed::seed`]).
pub async fn seeded_store(products: u64) -> (Arc<SqliteStore>, TempDir, String) {
    let (store, dir, url) = temp_store().await;
    shared::store::seed::seed(store.as_ref(), products)
        .await
        .expect("seed the temporary store");
    (store, dir, url)
}

/// Telemetry settings for a service started by a test or a benchmark: spans
/// exported nowhere, pretty logs filtered by `log_filter`.
pub fn telemetry(service_name: &str, log_filter: &str) -> TelemetrySettings {
    TelemetrySettings {
        service_name: service_name.into(),
        otlp_endpoint: None,
        otlp_protocol: Default::default(),
        sampler: Default::default(),
        batch_delay: std::time::Duration::from_secs(5),
        max_queue: 65_536,
        max_export_batch: 512,
        log_format: LogFormat::Pretty,
        log_filter: log_filter.into(),
        resource_attributes: Vec::new(),
    }
}

/// The environment variable `name` parsed as a `T`, or `default` when it is
/// unset or does not parse (a benchmark's knobs).
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Upcasts a concrete store to the trait object handlers use.
pub fn as_dyn(store: Arc<SqliteStore>) -> Arc<dyn CatalogStore> {
    store
}

/// Runs a service binary until it logs `ready_marker`, sends it SIGTERM (by
/// PID) and waits for it to exit. Returns whether it exited successfully and
/// everything it printed. Panics if the marker never appears.
pub fn run_until_ready_then_sigterm(
    bin: &str,
    envs: &[(&str, String)],
    ready_marker: &str,
) -> (bool, String) {
    use std::io::{BufRead, BufReader};

    let mut child = Command::new(bin)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn service binary");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut output = String::new();
    let deadline = Instant::now() + STARTUP_DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                output.push_str(&line);
                output.push('\n');
                if line.contains(ready_marker) {
                    break;
                }
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{bin} never logged {ready_marker:?}; output:\n{output}");
            }
        }
    }
    let pid = child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(killed.is_ok_and(|s| s.success()), "kill -TERM {pid} failed");
    let status = child.wait().expect("wait for service");
    let _ = reader.join();
    output.extend(rx.try_iter().map(|l| l + "\n"));
    (status.success(), output)
}

/// Service processes started from their binaries, stopped by PID: killed
/// when dropped, or stopped with SIGTERM by [`Processes::stop`].
#[derive(Default)]
pub struct Processes(Vec<Child>);

impl Processes {
    /// Starts `bin` as `label` with `envs` (and `RUST_LOG=warn`, or
    /// `TEST_RUST_LOG` when that is set); its log goes to
    /// `TEST_LOG_DIR/<label>-<n>.log` when that is set (to see why a test
    /// failed), else nowhere.
    pub fn spawn(&mut self, bin: &Path, label: &str, envs: &[(&str, String)]) {
        let child = Command::new(bin)
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .env(
                "RUST_LOG",
                std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(match std::env::var("TEST_LOG_DIR") {
                Ok(dir) => Stdio::from(
                    std::fs::File::create(format!("{dir}/{label}-{}.log", self.0.len()))
                        .expect("log file"),
                ),
                Err(_) => Stdio::null(),
            })
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a service binary");
        self.0.push(child);
    }

    /// SIGTERM to each, then waits; every one must exit cleanly.
    pub fn stop(mut self) {
        for child in &self.0 {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        for child in &mut self.0 {
            let status = child.wait().expect("wait for a service");
            assert!(status.success(), "a service exited with {status}");
        }
        self.0.clear();
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
