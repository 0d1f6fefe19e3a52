//! A real Redis Cluster for tests: three primaries and three replicas on
//! free loopback ports.
//!
//! [`RedisCluster::start`] runs six `redis-server --cluster-enabled yes`
//! (each with its own data folder and cluster-bus port), joins them with
//! `redis-cli --cluster create … --cluster-replicas 1 --cluster-yes`, and
//! waits until every node reports `cluster_state:ok` and every replica's
//! link to its primary is up. Nodes are killed by PID ([`RedisCluster::kill`])
//! to make a replica take over (`cluster-node-timeout` is 1 s, so a
//! failover takes a few seconds), and started again on the same port and
//! data ([`RedisCluster::restart`]), after which the old primary rejoins as
//! a replica. [`RedisCluster::start_tls`] makes every node speak TLS only,
//! clients, replication and cluster bus alike.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{RedisOptions, RedisTls, free_port, harness_client};
use shared::config::RedisSettings;

/// Nodes in the cluster: three primaries, one replica each.
const NODES: usize = 6;

/// `cluster-node-timeout`: how long a node may be unreachable before the
/// others mark it failed and its replica takes over.
const NODE_TIMEOUT: Duration = Duration::from_millis(1_000);

/// How long forming the cluster, or a failover, may take.
const DEADLINE: Duration = Duration::from_secs(60);

struct Node {
    port: u16,
    bus: u16,
    dir: PathBuf,
    child: Option<Child>,
    tls: Option<RedisTls>,
}

/// Generates `mod name { single(), cluster() }` for each test function
/// `name(kind: RedisKind)`, so one test runs against one redis-server and
/// against a Redis Cluster.
#[macro_export]
macro_rules! redis_suite {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn single() {
                    super::$name($crate::RedisKind::Single).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn cluster() {
                    super::$name($crate::RedisKind::Cluster).await
                }
            }
        )*
    };
}

/// One server or a cluster, for the suites that run on both.
pub enum TestRedis {
    /// One redis-server.
    Single(crate::RedisServer),
    /// Three primaries and three replicas.
    Cluster(RedisCluster),
}

/// Which [`TestRedis`] to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisKind {
    /// One redis-server.
    Single,
    /// A Redis Cluster.
    Cluster,
}

impl TestRedis {
    /// Starts one of `kind`.
    pub async fn start(kind: RedisKind) -> Self {
        match kind {
            RedisKind::Single => Self::Single(crate::RedisServer::start().await),
            RedisKind::Cluster => Self::Cluster(RedisCluster::start().await),
        }
    }

    /// Settings for the services, under `namespace`.
    pub fn settings(&self, namespace: &str) -> RedisSettings {
        match self {
            Self::Single(r) => RedisSettings::for_url(r.url(), namespace),
            Self::Cluster(c) => c.settings(namespace),
        }
    }

    /// A pool over it, under `namespace`.
    pub fn pool(&self, namespace: &str) -> shared::redis_pool::RedisPool {
        shared::redis_pool::RedisPool::new(&self.settings(namespace)).expect("test redis pool")
    }
}

/// A running Redis Cluster, killed when dropped.
pub struct RedisCluster {
    nodes: Vec<Node>,
    tls: Option<RedisTls>,
    dir: TempDir,
}

/// One line of `CLUSTER NODES`, as far as the tests need it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// The node's client port.
    pub port: u16,
    /// Whether it is a primary now.
    pub primary: bool,
    /// Whether the others consider it failed.
    pub failed: bool,
    /// The slot ranges it serves (primaries only).
    pub slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    /// Starts six nodes and forms the cluster.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Starts six nodes that speak TLS only (`--tls-port`, `--tls-cluster`,
    /// `--tls-replication`, no plain port; clients are not asked for
    /// certificates) and forms the cluster. The seeds are `rediss://`, and
    /// the harness's own connections trust `tls.ca_pem`.
    pub async fn start_tls(tls: RedisTls) -> Self {
        Self::start_with(Some(tls)).await
    }

    async fn start_with(tls: Option<RedisTls>) -> Self {
        let dir = tempfile::tempdir().expect("temporary folder for the cluster");
        let mut nodes = Vec::with_capacity(NODES);
        while nodes.len() < NODES {
            let (port, bus) = (free_port(), free_port());
            if port == bus
                || nodes.iter().any(|n: &Node| {
                    [n.port, n.bus].contains(&port) || [n.port, n.bus].contains(&bus)
                })
            {
                continue;
            }
            let node_dir = dir.path().join(port.to_string());
            std::fs::create_dir_all(&node_dir).expect("node folder");
            let mut node = Node {
                port,
                bus,
                dir: node_dir,
                child: None,
                tls: tls.clone(),
            };
            if node.spawn_and_wait().await {
                nodes.push(node);
            }
        }
        let cluster = Self { nodes, tls, dir };
        let mut create = Command::new("redis-cli");
        if let Some(tls) = &cluster.tls {
            let ca = cluster.dir.path().join("ca.crt");
            std::fs::write(&ca, &tls.ca_pem).expect("write the CA file");
            create.arg("--tls").arg("--cacert").arg(ca);
        }
        create.arg("--cluster").arg("create");
        for n in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli must be installed (apt-get install redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_healthy().await;
        cluster
    }

    /// Every node's URL: the seed list a client starts from.
    pub fn seeds(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        self.nodes
            .iter()
            .map(|n| format!("{scheme}://127.0.0.1:{}", n.port))
            .collect()
    }

    /// Settings for the services: `REDIS_CLUSTER=true` and every node as a seed.
    pub fn settings(&self, namespace: &str) -> RedisSettings {
        RedisSettings::for_cluster(&self.seeds(), namespace)
    }

    /// The ports of the nodes, primaries and replicas alike.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// A cluster connection for assertions.
    pub async fn connection(&self) -> redis::cluster_async::ClusterConnection {
        let builder = redis::cluster::ClusterClient::builder(self.seeds());
        match &self.tls {
            Some(tls) => builder.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(tls.ca_pem.clone().into_bytes()),
            }),
            None => builder,
        }
        .build()
        .expect("cluster client")
        .get_async_connection()
        .await
        .expect("connect to the test cluster")
    }

    /// `CLUSTER NODES` as a live node sees it.
    pub async fn topology(&self) -> Vec<NodeInfo> {
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            if let Some(text) = n.query::<String>(&["CLUSTER", "NODES"]).await {
                return parse_nodes(&text);
            }
        }
        Vec::new()
    }

    /// The port of the primary that serves `key` now.
    pub async fn primary_of(&self, key: &str) -> u16 {
        let slot = shared::keys::hash_slot(key.as_bytes());
        self.topology()
            .await
            .into_iter()
            .find(|n| {
                n.primary && !n.failed && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
            })
            .map(|n| n.port)
            .expect("a primary serves every slot")
    }

    /// For each primary, the first of the products `P-1`…`P-{products}`
    /// whose cached price (its hash under `namespace`) that primary holds,
    /// with the primary's port: a product to write on each.
    pub async fn product_per_primary(&self, namespace: &str, products: u64) -> Vec<(String, u16)> {
        let keys = shared::keys::Keys::new(namespace);
        let mut found: Vec<(String, u16)> = Vec::new();
        for i in 1..=products {
            let id = format!("P-{i}");
            let port = self.primary_of(&keys.price(&id)).await;
            if found.iter().all(|(_, p)| *p != port) {
                found.push((id, port));
            }
        }
        found
    }

    /// How many clients are subscribed to `channel`, over every live node
    /// (a subscriber sits on one node; a publish reaches every node's).
    pub async fn subscribers(&self, channel: &str) -> u64 {
        let mut total = 0;
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            if let Some(v) = n
                .query::<Vec<(String, u64)>>(&["PUBSUB", "NUMSUB", channel])
                .await
            {
                total += v.first().map_or(0, |(_, n)| *n);
            }
        }
        total
    }

    /// Kills the node on `port` (SIGKILL, by PID), as a dead machine would.
    pub fn kill(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port == port) {
            node.kill();
        }
    }

    /// Freezes every node (SIGSTOP, by PID): connections stay open but
    /// nothing answers, as with a hung host. [`Self::resume`] thaws them.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws the nodes [`Self::pause`] froze (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        for node in &self.nodes {
            if let Some(child) = &node.child {
                let _ = std::process::Command::new("kill")
                    .args([signal, &child.id().to_string()])
                    .status();
            }
        }
    }

    /// Starts the node on `port` again, on its data and cluster config;
    /// it rejoins the cluster (a former primary as a replica).
    pub async fn restart(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster");
        node.kill();
        assert!(node.spawn_and_wait().await, "node {port} did not come back");
    }

    /// Waits until every live node reports `cluster_state:ok`, no live
    /// primary is marked failed and every slot is served by a live
    /// primary, and every live replica's link to its primary is up.
    pub async fn wait_healthy(&self) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if self.is_healthy().await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster never became healthy: {:?}",
                self.topology().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn is_healthy(&self) -> bool {
        let live: Vec<&Node> = self.nodes.iter().filter(|n| n.child.is_some()).collect();
        for node in &live {
            let Some(info) = node.query::<String>(&["CLUSTER", "INFO"]).await else {
                return false;
            };
            if !info.contains("cluster_state:ok") {
                return false;
            }
            let Some(repl) = node.query::<String>(&["INFO", "replication"]).await else {
                return false;
            };
            if repl.contains("role:slave") && !repl.contains("master_link_status:up") {
                return false;
            }
        }
        let topology = self.topology().await;
        let covered: u32 = topology
            .iter()
            .filter(|n| n.primary && !n.failed && live.iter().any(|l| l.port == n.port))
            .flat_map(|n| n.slots.iter())
            .map(|(a, b)| u32::from(*b) - u32::from(*a) + 1)
            .sum();
        covered == 16_384
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
    }
}

impl Node {
    /// Starts redis-server in cluster mode; `false` if it exited (a port
    /// taken meanwhile) or never answered.
    async fn spawn_and_wait(&mut self) -> bool {
        let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
        let mut child = Command::new(bin)
            .arg("--cluster-port")
            .arg(self.bus.to_string())
            .args(self.listen())
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            .arg("--cluster-node-timeout")
            .arg(NODE_TIMEOUT.as_millis().to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if self.query::<String>(&["PING"]).await.is_some() {
                self.child = Some(child);
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The options that make it listen on its port: plain, or TLS only
    /// with its certificate files written to its folder.
    fn listen(&self) -> Vec<std::ffi::OsString> {
        let port = self.port.to_string();
        let Some(tls) = &self.tls else {
            return vec!["--port".into(), port.into()];
        };
        let mut args: Vec<std::ffi::OsString> = ["--port", "0", "--tls-port", &port]
            .into_iter()
            .map(Into::into)
            .collect();
        for (option, name, pem) in [
            ("--tls-cert-file", "server.crt", &tls.cert_pem),
            ("--tls-key-file", "server.key", &tls.key_pem),
            ("--tls-ca-cert-file", "ca.crt", &tls.ca_pem),
        ] {
            let path = self.dir.join(name);
            std::fs::write(&path, pem).expect("write the TLS files");
            args.extend([option.into(), path.into_os_string()]);
        }
        for option in [
            "--tls-auth-clients",
            "no",
            "--tls-cluster",
            "yes",
            "--tls-replication",
            "yes",
        ] {
            args.push(option.into());
        }
        args
    }

    /// Sends one command to this node (not through the cluster); `None` on
    /// any error.
    async fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> Option<T> {
        let options = RedisOptions {
            tls: self.tls.clone(),
            ..RedisOptions::default()
        };
        let client = harness_client(self.port, &options);
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(1_000)));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .ok()?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut conn).await.ok()
    }
}

/// Parses `CLUSTER NODES`.
fn parse_nodes(text: &str) -> Vec<NodeInfo> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let addr = fields.get(1)?;
            let port = addr.split('@').next()?.rsplit(':').next()?.parse().ok()?;
            let flags = fields.get(2)?;
            let slots = fields
                .iter()
                .skip(8)
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|x| (x, x)),
                })
                .collect();
            Some(NodeInfo {
                port,
                primary: flags.contains("master"),
                failed: flags.contains("fail") && !flags.contains("fail?"),
                slots,
            })
        })
        .collect()
}
