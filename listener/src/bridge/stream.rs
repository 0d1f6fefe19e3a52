//! The stream side of the bridge: the consumer group every replica joins.
//!
//! Creating the group, reading new entries, taking over the entries a
//! stopped listener left unacknowledged, and pruning the consumers stopped
//! listeners leave behind all speak `XGROUP`/`XREADGROUP`/`XAUTOCLAIM`/
//! `XINFO` to the one event stream, so they live together here, apart from
//! what is done with the entries (`batch`).

use std::time::Duration;

use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use shared::redis_pool::Conn;

use super::{Bridge, GROUP};

/// Entries one read returns at most.
pub const READ_COUNT: usize = 1_000;

/// How long one blocking read waits for entries (also the longest a
/// shutdown request waits to be noticed).
pub const READ_BLOCK: Duration = Duration::from_secs(1);

/// One stream entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Stream entry id (`<ms>-<seq>`, Redis clock).
    pub id: String,
    /// The event payload.
    pub payload: Vec<u8>,
    /// `stream` (appended by the api or a publisher) or `pubsub` (ingested
    /// from the channel by a listener).
    pub path: &'static str,
    /// Taken over from a consumer that stopped before acknowledging it.
    pub reclaimed: bool,
}

impl Entry {
    fn from_stream(s: StreamId) -> Self {
        let payload = s
            .map
            .get("event")
            .and_then(|v| redis::from_redis_value_ref::<Vec<u8>>(v).ok())
            .unwrap_or_default();
        let path = match s
            .map
            .get("path")
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
            .as_deref()
        {
            Some("pubsub") => "pubsub",
            _ => "stream",
        };
        Self {
            id: s.id,
            payload,
            path,
            reclaimed: false,
        }
    }

    /// Milliseconds (Redis clock) when the entry was appended.
    pub(crate) fn appended_ms(&self) -> Option<i64> {
        self.id.split('-').next()?.parse().ok()
    }
}

impl Bridge {
    /// Creates the consumer group (and the stream) if missing. A new group
    /// starts at the stream's beginning, so events published before any
    /// listener ever ran are processed too.
    pub async fn ensure_group(&self, conn: &mut Conn) -> redis::RedisResult<()> {
        let res: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(conn)
            .await;
        match res {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// Reads new entries for this consumer, waiting up to `block`.
    pub async fn read(&self, conn: &mut Conn, block: Duration) -> redis::RedisResult<Vec<Entry>> {
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(block.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">")
            .query_async(conn)
            .await?;
        Ok(reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .map(Entry::from_stream)
            .collect())
    }

    /// Takes over entries another consumer left unacknowledged for `idle`.
    pub async fn claim_stale(
        &self,
        conn: &mut Conn,
        idle: Duration,
    ) -> redis::RedisResult<Vec<Entry>> {
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(READ_COUNT)
            .query_async(conn)
            .await?;
        if !reply.claimed.is_empty() {
            tracing::info!(
                claimed = reply.claimed.len(),
                "took over events a stopped listener left unacknowledged"
            );
        }
        Ok(reply
            .claimed
            .into_iter()
            .map(|s| Entry {
                reclaimed: true,
                ..Entry::from_stream(s)
            })
            .collect())
    }

    /// Removes consumers of the group that hold no entries and have not read
    /// for `idle`: each listener start joins under a new name, so stopped
    /// listeners would otherwise pile up in the group. Returns how many.
    pub async fn prune_consumers(
        &self,
        conn: &mut Conn,
        idle: Duration,
    ) -> redis::RedisResult<usize> {
        let consumers: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&self.stream)
            .arg(GROUP)
            .query_async(conn)
            .await?;
        let number = |c: &std::collections::HashMap<String, redis::Value>, k: &str| {
            c.get(k)
                .and_then(|v| redis::from_redis_value_ref::<u64>(v).ok())
        };
        let mut removed = 0;
        for c in &consumers {
            let Some(name) = c
                .get("name")
                .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
            else {
                continue;
            };
            let stale = number(c, "pending") == Some(0)
                && number(c, "idle").is_some_and(|ms| ms >= idle.as_millis() as u64);
            if stale && name != self.consumer {
                // DELCONSUMER drops its pending entries too; it has none.
                let _: u64 = redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(&self.stream)
                    .arg(GROUP)
                    .arg(&name)
                    .query_async(conn)
                    .await?;
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(
                removed,
                "removed idle consumers of stopped listeners from the group"
            );
        }
        Ok(removed)
    }
}
