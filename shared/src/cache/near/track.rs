//! Keeping a [`NearCache`] consistent: the connections that receive Redis's
//! invalidations, on one server or on every node of a Redis Cluster.
//!
//! [`track`] opens RESP3 connections with `CLIENT TRACKING ON BCAST PREFIX
//! {ns}:prices:`, applies every invalidation they push, and checks them with
//! a `PING` every [`PING_EVERY`]. On any loss the near cache is flushed and
//! bypassed, and tracking starts again with exponential backoff.
//!
//! **On a Redis Cluster** tracking is per node: a node pushes invalidations
//! only for the keys it holds. So every node that serves slots is tracked,
//! found with `CLUSTER SLOTS` from a seed: the primaries, which take the
//! writes, and their replicas, which apply the same writes and push the
//! same invalidations, so that a replica promoted by a failover has been
//! tracked before its first write (a replica that cannot be reached is
//! left out: its primary pushes the same keys). Every [`PING_EVERY`] the
//! cluster's shape (each node and whether it is a primary) is read again;
//! any change (a failover, a node added, removed or back) flushes the near
//! cache and tracks the new shape. A failover can lose a primary's last
//! writes, and the flush drops whatever was read from them.

use std::sync::{Arc, Weak};

use redis::aio::MultiplexedConnection;
use redis::{ConnectionAddr, PushInfo, PushKind, Value};

use super::{NearCache, PING_EVERY, PING_TIMEOUT};
use crate::keys::Keys;
use crate::redis_pool::{INITIAL_RECONNECT_DELAY, MAX_RECONNECT_DELAY, RedisPool};

/// Where [`track`] receives invalidations from.
#[derive(Clone)]
pub enum Source {
    /// One Redis server, through this RESP3 client.
    Server(Box<redis::Client>),
    /// A Redis Cluster, found through these RESP3 clients of its seed
    /// nodes (tried in turn); every node that serves slots is tracked.
    Cluster(Vec<redis::Client>),
}

impl Source {
    /// The source `pool` reads from: its one server, or its cluster
    /// through its seed nodes.
    pub fn of(pool: &RedisPool) -> redis::RedisResult<Self> {
        let mut clients = pool.resp3_clients()?;
        if pool.is_cluster() {
            return Ok(Self::Cluster(clients));
        }
        clients
            .pop()
            .map(|c| Self::Server(Box::new(c)))
            .ok_or_else(|| {
                redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "no Redis server"))
            })
    }
}

impl NearCache {
    /// A near cache of at most `capacity` entries for the price hashes of
    /// `keys`, kept by a task that tracks `pool`'s Redis ([`track`]); the
    /// task ends when the cache is dropped. Needs a tokio runtime.
    pub fn tracking(
        capacity: usize,
        keys: Keys,
        pool: &RedisPool,
    ) -> redis::RedisResult<Arc<Self>> {
        let source = Source::of(pool)?;
        let near = Self::new(capacity, keys);
        tokio::spawn(track(Arc::downgrade(&near), source));
        Ok(near)
    }
}

/// Keeps `near` tracking `source`: applies every invalidation, and on any
/// loss flushes and bypasses the cache, then tracks again with exponential
/// backoff. Returns when the near cache is dropped.
pub async fn track(near: Weak<NearCache>, source: Source) {
    let mut delay = INITIAL_RECONNECT_DELAY;
    loop {
        let Some(prefix) = near.upgrade().map(|n| n.keys.price_prefix().to_string()) else {
            return;
        };
        match connect(&source, &prefix).await {
            Ok(tracking) => {
                delay = INITIAL_RECONNECT_DELAY;
                tracing::info!(
                    connections = tracking.conns.len(),
                    "near cache: tracking price invalidations"
                );
                let lost = follow(&near, tracking).await;
                let Some(n) = near.upgrade() else { return };
                n.set_live(false);
                tracing::warn!(reason = %lost, "near cache: tracking lost; flushed, bypassed until it is back");
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "near cache: cannot track invalidations");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RECONNECT_DELAY);
    }
}

type Pushes = tokio::sync::mpsc::UnboundedReceiver<PushInfo>;
type PushSender = tokio::sync::mpsc::UnboundedSender<PushInfo>;

/// Open tracking connections, and on a cluster the shape they track.
struct Tracking {
    conns: Vec<MultiplexedConnection>,
    pushes: Pushes,
    cluster: Option<Tracked>,
}

/// The shape a cluster had when it was tracked, and the host of the node
/// the first connection is to, through which it is read again.
struct Tracked {
    shape: Shape,
    asked: String,
}

/// One node of a cluster as `CLUSTER SLOTS` names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Node {
    host: String,
    port: u16,
    primary: bool,
}

/// Every node that serves slots, sorted: two shapes are equal when the
/// same nodes serve, in the same roles.
type Shape = Vec<Node>;

/// Opens a tracking connection to each node of `source`.
async fn connect(source: &Source, prefix: &str) -> redis::RedisResult<Tracking> {
    let (tx, pushes) = tokio::sync::mpsc::unbounded_channel();
    match source {
        Source::Server(client) => Ok(Tracking {
            conns: vec![open(client, tx, prefix).await?],
            pushes,
            cluster: None,
        }),
        Source::Cluster(seeds) => {
            let (seed, shape) = discover(seeds).await?;
            let mut conns = Vec::with_capacity(shape.len());
            let mut asked = None;
            for node in &shape {
                match open(&client_at(seed, node)?, tx.clone(), prefix).await {
                    Ok(conn) => {
                        asked.get_or_insert_with(|| node.host.clone());
                        conns.push(conn);
                    }
                    // A replica left out costs nothing but the head start
                    // on a failover: its primary pushes the same keys, and
                    // its promotion changes the shape.
                    Err(e) if !node.primary => tracing::warn!(
                        node = %format!("{}:{}", node.host, node.port),
                        error = %e,
                        "near cache: cannot track a replica; left out until the cluster's shape changes"
                    ),
                    Err(e) => return Err(e),
                }
            }
            let asked = asked.ok_or_else(|| {
                redis::RedisError::from((redis::ErrorKind::Io, "no cluster node to track"))
            })?;
            Ok(Tracking {
                conns,
                pushes,
                cluster: Some(Tracked { shape, asked }),
            })
        }
    }
}

/// A RESP3 connection that pushes to `tx`, with broadcast tracking of
/// `prefix` turned on.
async fn open(
    client: &redis::Client,
    tx: PushSender,
    prefix: &str,
) -> redis::RedisResult<MultiplexedConnection> {
    let config = config().set_push_sender(tx);
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    redis::cmd("CLIENT")
        .arg("TRACKING")
        .arg("ON")
        .arg("BCAST")
        .arg("PREFIX")
        .arg(prefix)
        .query_async::<()>(&mut conn)
        .await?;
    Ok(conn)
}

/// The timeouts of every connection the tracker opens: a node that does
/// not answer within them counts as lost.
fn config() -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(PING_TIMEOUT * 4))
        .set_response_timeout(Some(PING_TIMEOUT))
}

/// The cluster's shape, from the first seed that answers, with that seed.
async fn discover(seeds: &[redis::Client]) -> redis::RedisResult<(&redis::Client, Shape)> {
    let mut last = None;
    for seed in seeds {
        let shape = match seed
            .get_multiplexed_async_connection_with_config(&config())
            .await
        {
            Ok(mut conn) => shape_of(&mut conn, host_of(seed)).await,
            Err(e) => Err(e),
        };
        match shape {
            Ok(shape) => return Ok((seed, shape)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "no cluster seed"))
    }))
}

/// The shape `conn`'s node sees; a node that does not know its own address
/// (an empty host) is at `asked`, the host `conn` was opened to.
async fn shape_of(conn: &mut MultiplexedConnection, asked: &str) -> redis::RedisResult<Shape> {
    let slots: Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await?;
    parse_slots(&slots, asked).ok_or_else(|| {
        redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "CLUSTER SLOTS: unexpected reply",
        ))
    })
}

/// The nodes in a `CLUSTER SLOTS` reply: per slot range, the primary then
/// its replicas, each as `[host, port, id, …]`. `None` when the reply is
/// not of that form, names no node, or names a node by `?` (an endpoint the
/// node cannot tell).
fn parse_slots(reply: &Value, asked: &str) -> Option<Shape> {
    let Value::Array(ranges) = reply else {
        return None;
    };
    let mut shape = Shape::new();
    for range in ranges {
        let Value::Array(items) = range else {
            return None;
        };
        for (i, node) in items.iter().enumerate().skip(2) {
            let Value::Array(fields) = node else {
                return None;
            };
            let host = match fields.first()? {
                Value::BulkString(b) => std::str::from_utf8(b).ok()?,
                Value::SimpleString(s) => s.as_str(),
                _ => return None,
            };
            let port = match fields.get(1)? {
                Value::Int(p) => u16::try_from(*p).ok()?,
                _ => return None,
            };
            if host == "?" {
                return None;
            }
            shape.push(Node {
                host: if host.is_empty() { asked } else { host }.to_string(),
                port,
                primary: i == 2,
            });
        }
    }
    shape.sort();
    shape.dedup();
    (!shape.is_empty()).then_some(shape)
}

/// The host a client connects to (empty for a Unix socket).
fn host_of(client: &redis::Client) -> &str {
    match client.get_connection_info().addr() {
        ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } => host,
        _ => "",
    }
}

/// A client of `node` with `seed`'s settings: credentials, database,
/// protocol, and TLS with the same trusted roots.
fn client_at(seed: &redis::Client, node: &Node) -> redis::RedisResult<redis::Client> {
    let info = seed.get_connection_info().clone();
    let addr = match info.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host: node.host.clone(),
            port: node.port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(node.host.clone(), node.port),
    };
    redis::Client::open(info.set_addr(addr))
}

/// Serves from `near` while every connection delivers invalidations (and,
/// on a cluster, the shape is unchanged); returns why it stopped.
async fn follow(near: &Weak<NearCache>, tracking: Tracking) -> String {
    let Tracking {
        mut conns,
        mut pushes,
        cluster,
    } = tracking;
    match near.upgrade() {
        Some(n) => n.set_live(true),
        None => return "dropped".into(),
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            push = pushes.recv() => {
                let Some(push) = push else { return "connection closed".into() };
                if push.kind == PushKind::Disconnection {
                    return "connection closed".into();
                }
                let Some(n) = near.upgrade() else { return "dropped".into() };
                n.apply(&push);
            }
            _ = ping.tick() => {
                let Some(n) = near.upgrade() else { return "dropped".into() };
                n.sample();
                drop(n);
                if let Err(why) = check(&mut conns, cluster.as_ref()).await {
                    return why;
                }
            }
        }
    }
}

/// `PING`s every connection and, on a cluster, reads its shape again
/// through the first; `Err` says what is wrong.
async fn check(
    conns: &mut [MultiplexedConnection],
    cluster: Option<&Tracked>,
) -> Result<(), String> {
    for conn in conns.iter_mut() {
        let answer =
            tokio::time::timeout(PING_TIMEOUT, redis::cmd("PING").query_async::<String>(conn))
                .await;
        match answer {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("PING failed: {e}")),
            Err(_) => return Err("PING timed out".into()),
        }
    }
    let (Some(tracked), Some(first)) = (cluster, conns.first_mut()) else {
        return Ok(());
    };
    match tokio::time::timeout(PING_TIMEOUT, shape_of(first, &tracked.asked)).await {
        Ok(Ok(now)) if now == tracked.shape => Ok(()),
        Ok(Ok(_)) => Err("the cluster's shape changed".into()),
        Ok(Err(e)) => Err(format!("CLUSTER SLOTS failed: {e}")),
        Err(_) => Err("CLUSTER SLOTS timed out".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, port: i64, id: &str) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(id.as_bytes().to_vec()),
            Value::Map(Vec::new()),
        ])
    }

    fn range(start: i64, end: i64, nodes: Vec<Value>) -> Value {
        let mut items = vec![Value::Int(start), Value::Int(end)];
        items.extend(nodes);
        Value::Array(items)
    }

    fn at(host: &str, port: u16, primary: bool) -> Node {
        Node {
            host: host.into(),
            port,
            primary,
        }
    }

    #[test]
    fn the_shape_names_every_node_once_with_its_role() {
        let reply = Value::Array(vec![
            range(
                0,
                5460,
                vec![node("10.0.0.1", 7000, "a"), node("10.0.0.4", 7003, "d")],
            ),
            // A node that does not know its own address is the one asked.
            range(5461, 10922, vec![node("", 7001, "b")]),
            // A primary serving two ranges is one node.
            range(10923, 16383, vec![node("10.0.0.1", 7000, "a")]),
        ]);
        assert_eq!(
            parse_slots(&reply, "seed").unwrap(),
            vec![
                at("10.0.0.1", 7000, true),
                at("10.0.0.4", 7003, false),
                at("seed", 7001, true),
            ]
        );
    }

    #[test]
    fn a_reply_that_names_no_usable_node_is_refused() {
        let unknown = Value::Array(vec![range(0, 16383, vec![node("?", 7000, "a")])]);
        assert_eq!(parse_slots(&unknown, "seed"), None);
        assert_eq!(parse_slots(&Value::Array(Vec::new()), "seed"), None);
        assert_eq!(parse_slots(&Value::Nil, "seed"), None);
        let bad_port = Value::Array(vec![range(0, 16383, vec![node("h", 70_000, "a")])]);
        assert_eq!(parse_slots(&bad_port, "seed"), None);
    }

    #[test]
    fn a_node_gets_the_seed_s_credentials_database_protocol_and_tls() {
        let seed =
            redis::Client::open("rediss://user:secret@seed.example:6380/3?protocol=resp3").unwrap();
        let client = client_at(&seed, &at("10.0.0.2", 7002, false)).unwrap();
        let info = client.get_connection_info();
        assert!(matches!(
            info.addr(),
            ConnectionAddr::TcpTls { host, port: 7002, .. } if host == "10.0.0.2"
        ));
        let settings = info.redis_settings();
        assert_eq!(settings.username(), Some("user"));
        assert_eq!(settings.password(), Some("secret"));
        assert_eq!(settings.db(), 3);
        assert_eq!(settings.protocol(), redis::ProtocolVersion::RESP3);

        let plain = redis::Client::open("redis://seed.example:6379").unwrap();
        let client = client_at(&plain, &at("10.0.0.2", 7002, true)).unwrap();
        assert!(matches!(
            client.get_connection_info().addr(),
            ConnectionAddr::Tcp(host, 7002) if host == "10.0.0.2"
        ));
        assert_eq!(host_of(&plain), "seed.example");
    }
}
