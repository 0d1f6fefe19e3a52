//! The Redis side of market events: where they travel ([`EventSettings`]),
//! and the [`EventBus`] that appends them to the stream and publishes them
//! on the channel, and reads the stream back for the dashboard. What an event
//! is lives in [`crate::events`], which does no I/O.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, env_in_range, env_or};
use crate::events::{EventKind, MarketEvent, parse};
use crate::telemetry::redis_span;
use tracing::Instrument as _;

/// Where events travel, shared by the api and the listener.
#[derive(Debug, Clone)]
pub struct EventSettings {
    /// `MARKET_EVENTS_CHANNEL`: the pub/sub channel. Defaults to `market_events`.
    pub channel: String,
    /// `MARKET_EVENTS_STREAM_MAXLEN`: the stream keeps about this many
    /// latest events (`XADD MAXLEN ~`). Defaults to 100,000.
    pub stream_maxlen: u64,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            channel: "market_events".into(),
            stream_maxlen: 100_000,
        }
    }
}

impl EventSettings {
    /// Reads `MARKET_EVENTS_CHANNEL` and `MARKET_EVENTS_STREAM_MAXLEN`.
    pub fn from_env() -> Result<Self, ConfigError> {
        let channel: String = env_or("MARKET_EVENTS_CHANNEL", "market_events".to_string())?;
        if channel.trim().is_empty() {
            return Err(ConfigError::new(
                "MARKET_EVENTS_CHANNEL",
                channel,
                "must not be empty",
            ));
        }
        Ok(Self {
            channel,
            stream_maxlen: env_in_range(
                "MARKET_EVENTS_STREAM_MAXLEN",
                100_000u64,
                1_000,
                100_000_000,
            )?,
        })
    }
}

/// The consumer group every listener replica joins.
pub const LISTENER_GROUP: &str = "listeners";

/// Most product ids of one event that [`EventBus::info`] reports.
pub const RECENT_PRODUCT_IDS: usize = 10;

/// An event as the stream holds it, for the dashboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StreamEntry {
    /// The stream entry's id.
    pub entry_id: String,
    /// When the stream took it (the entry id's time).
    pub appended_at: Option<DateTime<Utc>>,
    /// The event's id; `null` when the entry cannot be read as an event.
    pub event_id: Option<String>,
    /// What changed.
    pub kind: Option<EventKind>,
    /// Products it names.
    pub products: usize,
    /// The first of them (at most [`RECENT_PRODUCT_IDS`]).
    pub product_ids: Vec<String>,
    /// Why the entry cannot be read as an event, when it cannot.
    pub error: Option<String>,
}

/// One consumer group of the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GroupInfo {
    /// The group's name.
    pub name: String,
    /// Its consumers.
    pub consumers: u64,
    /// Entries delivered and not acknowledged yet.
    pub pending: u64,
    /// Entries not delivered to the group yet (`null` when Redis cannot tell).
    pub lag: Option<u64>,
}

/// The stream's length, its consumer groups and its newest entries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StreamInfo {
    /// The stream's key.
    pub stream: String,
    /// Entries it holds (about `MARKET_EVENTS_STREAM_MAXLEN` at most).
    pub length: u64,
    /// Its consumer groups (the listeners' is `listeners`).
    pub groups: Vec<GroupInfo>,
    /// The newest entries, newest first.
    pub recent: Vec<StreamEntry>,
}

impl StreamEntry {
    fn of(entry_id: String, payload: Option<&[u8]>) -> Self {
        let appended_at = entry_id
            .split('-')
            .next()
            .and_then(|ms| ms.parse().ok())
            .and_then(DateTime::from_timestamp_millis);
        let mut e = StreamEntry {
            entry_id,
            appended_at,
            event_id: None,
            kind: None,
            products: 0,
            product_ids: Vec::new(),
            error: None,
        };
        match payload.map(parse) {
            Some(Ok(ev)) => {
                e.event_id = Some(ev.event_id);
                e.kind = Some(ev.kind);
                e.products = ev.product_ids.len();
                e.product_ids = ev
                    .product_ids
                    .into_iter()
                    .take(RECENT_PRODUCT_IDS)
                    .collect();
            }
            Some(Err(err)) => e.error = Some(err.to_string()),
            None => e.error = Some("no `event` field".into()),
        }
        e
    }
}

/// Reads `XINFO GROUPS`' answer: one map per group.
fn parse_groups(v: redis::Value) -> redis::RedisResult<Vec<GroupInfo>> {
    let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::from_redis_value(v)?;
    Ok(groups
        .into_iter()
        .map(|g| {
            let num = |k: &str| {
                g.get(k)
                    .and_then(|v| redis::from_redis_value::<Option<u64>>(v.clone()).ok())
                    .flatten()
            };
            GroupInfo {
                name: g
                    .get("name")
                    .and_then(|v| redis::from_redis_value(v.clone()).ok())
                    .unwrap_or_default(),
                consumers: num("consumers").unwrap_or(0),
                pending: num("pending").unwrap_or(0),
                lag: num("lag"),
            }
        })
        .collect())
}

/// Publishes events: appends each to the stream (durable, read by the
/// listeners' consumer group) and PUBLISHes it on the channel (for every
/// subscriber, marked `durable` so listeners leave it to the stream).
#[derive(Clone)]
pub struct EventBus {
    pool: crate::redis_pool::RedisPool,
    stream: String,
    settings: EventSettings,
}

/// What a publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Subscribers of the channel that received it (PUBLISH's answer).
    pub receivers: u64,
    /// When the stream took it (ms, Redis clock: its entry id's time part).
    pub appended_ms: i64,
}

impl EventBus {
    /// A publisher on `pool`, with the keys of `keys`.
    pub fn new(
        pool: crate::redis_pool::RedisPool,
        keys: &crate::keys::Keys,
        settings: EventSettings,
    ) -> Self {
        Self {
            pool,
            stream: keys.event_stream(),
            settings,
        }
    }

    /// The channel events go to.
    pub fn channel(&self) -> &str {
        &self.settings.channel
    }

    /// The stream's length, its consumer groups with their lag, and its
    /// `n` newest entries: bounded work (`XLEN`, `XREVRANGE … COUNT n`,
    /// `XINFO GROUPS`), whatever the stream holds.
    pub async fn info(&self, n: usize) -> redis::RedisResult<StreamInfo> {
        let (mut conn, tracker) = self.pool.get();
        let (length, entries): (u64, redis::streams::StreamRangeReply) = tracker.track(
            redis::pipe()
                .cmd("XLEN")
                .arg(&self.stream)
                .cmd("XREVRANGE")
                .arg(&self.stream)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(n.max(1))
                .query_async(&mut conn)
                .await,
        )?;
        let groups = if length == 0 {
            Vec::new()
        } else {
            let v: redis::RedisResult<redis::Value> = tracker.track(
                redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(&self.stream)
                    .query_async(&mut conn)
                    .await,
            );
            parse_groups(v?)?
        };
        let recent = entries
            .ids
            .into_iter()
            .map(|id| {
                let payload = match id.map.get("event") {
                    Some(redis::Value::BulkString(b)) => Some(b.clone()),
                    Some(redis::Value::SimpleString(s)) => Some(s.clone().into_bytes()),
                    _ => None,
                };
                StreamEntry::of(id.id, payload.as_deref())
            })
            .collect();
        Ok(StreamInfo {
            stream: self.stream.clone(),
            length,
            groups,
            recent,
        })
    }

    /// Appends `event` to the stream and publishes it, in one round trip
    /// (`XADD … MAXLEN ~ n`, then `PUBLISH`; on a cluster, where a pipeline
    /// stays in one slot and `PUBLISH` is routed by its channel, the two at
    /// once).
    pub async fn publish(&self, event: &MarketEvent) -> redis::RedisResult<Published> {
        let payload = event.encode(true);
        let mut xadd = redis::cmd("XADD");
        xadd.arg(&self.stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.settings.stream_maxlen)
            .arg("*")
            .arg("event")
            .arg(&payload);
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(&self.settings.channel).arg(&payload);
        let cmds = vec![
            (self.stream.clone(), xadd),
            (self.settings.channel.clone(), publish),
        ];
        let (mut conn, tracker) = self.pool.get_durable();
        let answers = tracker.track(
            self.pool
                .query_keyed(&mut conn, cmds)
                .instrument(redis_span("XADD PUBLISH", "BATCH"))
                .await,
        )?;
        let (entry, receivers): (String, u64) =
            redis::from_redis_value(redis::Value::Array(answers))?;
        // An accepted event must survive a failover (REDIS_WAIT_REPLICAS).
        self.pool.wait_for_replicas(&mut conn, &self.stream).await;
        let appended_ms = entry
            .split('-')
            .next()
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(0);
        Ok(Published {
            receivers,
            appended_ms,
        })
    }
}
