//! From market events to jobs: the stream consumer, the channel ingester and
//! the batch processing both share.
//!
//! # Design
//! Every event ends up in one Redis Stream, `{ns}:events:stream`, and is
//! processed from there by a consumer group (`listeners`) that all listener
//! replicas join:
//!
//! - The api appends each event to the stream and also PUBLISHes it on the
//!   channel, marked `durable`. Listeners ignore the channel copy of such an
//!   event: the stream has it.
//! - A publisher that only PUBLISHes (the original service, `redis-cli`)
//!   reaches the listeners through the channel. Every replica receives the
//!   message; the one that claims it first (`SET NX`, for
//!   [`CHANNEL_CLAIM`]) appends it to the stream, tagged `path=pubsub`; from
//!   there it is processed like any other event. A message with its own
//!   `event_id` is claimed by that id. One without is claimed by a hash of
//!   its bytes and its *ordinal*: how many times this replica has received
//!   the same bytes within [`CHANNEL_CLAIM`] of each other. Redis delivers
//!   channel messages to every subscriber in the same order, so the replicas
//!   agree on the ordinal, and the same message published twice (two
//!   `Recalculate_Triggered_v1`, stock 5 then 3 then 5) is appended twice,
//!   once by one replica each time. A bad message is claimed the same way,
//!   so it is counted and dead-lettered once, not once per replica.
//! - A consumer reads with `XREADGROUP … BLOCK`, which returns as soon as an
//!   entry is appended, so the stream is itself the fast wake-up path. It
//!   acknowledges (`XACK`) only after the event's signals are stored and its
//!   job is queued. Entries a dead listener left unacknowledged are taken
//!   over with `XAUTOCLAIM` once idle for `LISTENER_CLAIM_IDLE_MS`.
//! - Before processing, a consumer claims each event id (`{ns}:events:done:
//!   {id}` set to its own name, in one script with the check); after its
//!   job is queued the key says `done` (kept 24 h), in the same round trip as
//!   the `XACK`. An event already done, or claimed by another live consumer,
//!   is skipped, so an event delivered twice (a redelivery after a crash, the
//!   same event published on both paths or twice by a retrying client) queues
//!   its jobs once, even when two consumers hold its two copies at once. An
//!   entry taken over from a stopped consumer takes its claims over too.
//!
//! So an event published while no listener runs waits in the stream (and in
//! Redis's AOF) and is processed when one starts; a group created on first
//! start reads the stream from its beginning.
//!
//! # Processing a batch
//! Parse and validate each entry (a bad one is counted, logged and kept in
//! the capped dead-letter list `{ns}:events:dead`, never retried); skip
//! events already done; refuse events naming unknown products (dead-lettered
//! as `unknown_product`); store every signal of the batch in one
//! transaction; queue one `recalculate_all_prices` when the batch has a
//! `recalculate_all`, else `recalculate_prices` for the union of the named
//! products (in jobs of up to 10,000 ids); then mark done and acknowledge.
//! The caller gathers events that arrive within `LISTENER_COALESCE_WINDOW_MS`
//! of the previous batch into one batch, so a burst becomes one job (after
//! the job of its first event), and no event's data is dropped: all of it is
//! stored before the job that reads it is queued.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use queue::{NewJob, Queues, RetryPolicy};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use shared::events::{EventData, EventError, EventKind, MAX_PRODUCTS_PER_EVENT, MarketEvent};
use shared::jobs::{RecalculatePrices, recalculate_all_job};
use shared::keys::Keys;
use shared::redis_pool::Conn;
use shared::redis_pool::RedisPool;
use shared::store::{CatalogStore, CompetitorPrice, DemandSignal, MarketUpdates, Observed};
use tracing::Instrument as _;

use crate::metrics;

/// The consumer group every listener replica joins.
pub use shared::event_bus::LISTENER_GROUP as GROUP;

/// Entries one read returns at most.
pub const READ_COUNT: usize = 1_000;

/// How long one blocking read waits for entries (also the longest a
/// shutdown request waits to be noticed).
pub const READ_BLOCK: Duration = Duration::from_secs(1);

/// How long a replica's claim on a channel-only message lasts: long enough
/// for every replica to have received the same message. Also the gap after
/// which a replica counts the same bytes from one again (see the module docs).
pub const CHANNEL_CLAIM: Duration = Duration::from_secs(2);

/// Attempts at appending a batch of channel messages to the stream before
/// they are given up (logged as lost): pub/sub cannot redeliver them.
pub const INGEST_ATTEMPTS: u32 = 3;

/// Most other events a batch span links to (and gives a `receive` span).
pub const MAX_BATCH_LINKS: usize = 128;

/// How long an event id is remembered as processed.
pub const DONE_TTL: Duration = Duration::from_secs(86_400);

/// KEYS: the events' done keys. ARGV: consumer, claim_ms, then one flag per
/// key (`1`: the entry was taken over from a stopped consumer).
/// Claims each event for `consumer` unless it is done, or claimed by another
/// consumer (a taken-over entry takes that claim over). Returns 1 per event
/// this consumer should process, 0 per duplicate.
static CLAIM_EVENTS: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if v == 'done' or (v and v ~= ARGV[1] and ARGV[2 + i] ~= '1') then
    out[i] = 0
  else
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
    out[i] = 1
  end
end
return out
"#,
    )
});

/// Most bytes of a rejected payload the dead-letter list keeps.
pub const DEAD_LETTER_PAYLOAD_MAX: usize = 64 * 1024;

/// KEYS: claim, stream. ARGV: consumer, claim_ms, maxlen, event.
/// Appends a channel message to the stream unless another replica claimed
/// it first. Returns 1 when appended, 0 when claimed elsewhere. (A bad
/// message is claimed with a plain `SET NX`, and dead-lettered by the winner.)
static INGEST: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'event', ARGV[4], 'path', 'pubsub')
return 1
"#,
    )
});

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
    fn appended_ms(&self) -> Option<i64> {
        self.id.split('-').next()?.parse().ok()
    }
}

/// What one processed batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flushed {
    /// Events stored and covered by a queued job.
    pub processed: usize,
    /// Entries refused (dead-lettered).
    pub rejected: usize,
    /// Events skipped as already processed.
    pub duplicates: usize,
    /// Jobs queued.
    pub jobs: usize,
}

/// Everything the bridge works with.
#[derive(Clone)]
pub struct Bridge {
    pool: RedisPool,
    keys: Keys,
    stream: String,
    store: Arc<dyn CatalogStore>,
    queues: Queues,
    recalc_retry: RetryPolicy,
    stream_maxlen: u64,
    dead_letter_max: u64,
    consumer: String,
    /// How long a consumer's claim on an event it processes lasts.
    event_claim: Duration,
    ordinals: Arc<std::sync::Mutex<Ordinals>>,
}

/// Per payload hash, how many times this replica has received it in a row
/// of arrivals less than [`CHANNEL_CLAIM`] apart, and when last.
#[derive(Default)]
struct Ordinals {
    seen: std::collections::HashMap<u64, (u32, Instant)>,
    last_purge: Option<Instant>,
}

impl Ordinals {
    /// The ordinal of this arrival of the payload hashed `hash`, from 1.
    fn next(&mut self, hash: u64, now: Instant) -> u32 {
        if self
            .last_purge
            .is_none_or(|t| now.duration_since(t) >= CHANNEL_CLAIM)
        {
            self.seen
                .retain(|_, (_, last)| now.duration_since(*last) <= CHANNEL_CLAIM);
            self.last_purge = Some(now);
        }
        let (n, last) = self.seen.entry(hash).or_insert((0, now));
        if now.duration_since(*last) > CHANNEL_CLAIM {
            *n = 0;
        }
        *n += 1;
        *last = now;
        *n
    }
}

impl Bridge {
    /// A bridge consuming as `consumer`. An event it is processing stays
    /// claimed for `event_claim` (the listener uses its claim-idle time,
    /// after which a stopped consumer's entries are taken over anyway).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pool: RedisPool,
        keys: Keys,
        store: Arc<dyn CatalogStore>,
        queues: Queues,
        recalc_retry: RetryPolicy,
        stream_maxlen: u64,
        dead_letter_max: u64,
        consumer: String,
        event_claim: Duration,
    ) -> Self {
        Self {
            event_claim: event_claim.max(Duration::from_secs(1)),
            ordinals: Arc::default(),
            stream: keys.event_stream(),
            pool,
            keys,
            store,
            queues,
            recalc_retry,
            stream_maxlen,
            dead_letter_max,
            consumer,
        }
    }

    /// This replica's consumer name.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

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

    /// Handles messages from the channel, in order: the api's own
    /// (`durable`) messages are left to the stream; every other message is
    /// claimed (see the module docs) and, by the replica that wins it,
    /// appended to the stream when valid or counted and dead-lettered when
    /// not. All of a batch goes in one pipelined round trip, which keeps
    /// its order, retried a few times if Redis fails.
    pub async fn on_channel_messages(&self, payloads: &[Vec<u8>]) {
        let now = Instant::now();
        let mut pipe = redis::pipe();
        pipe.load_script(&INGEST).ignore();
        // What each reply of the pipeline (after the script load) is about.
        let mut sent: Vec<Result<String, (EventError, &[u8])>> = Vec::new();
        for payload in payloads {
            let parsed = shared::events::parse_received(payload);
            if parsed.as_ref().is_ok_and(|r| r.durable) {
                continue;
            }
            let claim = match &parsed {
                Ok(r) if r.id_given => self
                    .keys
                    .event_ingest_claim(&format!("id:{}", r.event.event_id)),
                _ => {
                    let hash = fnv1a(payload);
                    let n = self
                        .ordinals
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .next(hash, now);
                    self.keys.event_ingest_claim(&format!("{hash:016x}:{n}"))
                }
            };
            match parsed {
                Ok(r) => {
                    pipe.invoke_script(
                        INGEST
                            .key(&claim)
                            .key(&self.stream)
                            .arg(&self.consumer)
                            .arg(CHANNEL_CLAIM.as_millis() as u64)
                            .arg(self.stream_maxlen)
                            .arg(r.event.encode(false)),
                    );
                    sent.push(Ok(r.event.event_id));
                }
                Err(e) => {
                    pipe.cmd("SET")
                        .arg(&claim)
                        .arg(&self.consumer)
                        .arg("NX")
                        .arg("PX")
                        .arg(CHANNEL_CLAIM.as_millis() as u64);
                    sent.push(Err((e, payload.as_slice())));
                }
            }
        }
        if sent.is_empty() {
            return;
        }
        let mut delay = shared::redis_pool::INITIAL_RECONNECT_DELAY;
        let mut attempt = 1;
        let won: Vec<redis::Value> = loop {
            let (mut conn, tracker) = self.pool.get_durable();
            match tracker.track(pipe.query_async(&mut conn).await) {
                Ok(won) => {
                    // Ingested events must survive a failover (REDIS_WAIT_REPLICAS).
                    self.pool.wait_for_replicas(&mut conn, &self.stream).await;
                    break won;
                }
                Err(e) if attempt < INGEST_ATTEMPTS => {
                    tracing::warn!(error = %e, messages = sent.len(), retry_in = ?delay, "cannot ingest channel messages; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(e) => {
                    let first = sent.iter().find_map(|m| m.as_ref().ok()).cloned();
                    tracing::error!(error = %e, messages = sent.len(), first_event = ?first, "cannot ingest channel messages; they are lost (publish through the api for durability)");
                    return;
                }
            }
        };
        for (what, reply) in sent.into_iter().zip(won) {
            let ours = matches!(reply, redis::Value::Int(1) | redis::Value::Okay);
            match what {
                Ok(_) => {}
                Err((e, payload)) if ours => {
                    metrics::rejected(e.label);
                    tracing::warn!(reason = e.label, error = %e, path = "pubsub", "rejected a market event");
                    self.dead_letter(e.label, &e.to_string(), payload, "pubsub")
                        .await;
                }
                // Another replica won it: it counts and dead-letters it.
                Err(_) => {}
            }
        }
    }

    async fn dead_letter(&self, reason: &str, detail: &str, payload: &[u8], path: &str) {
        let cut = &payload[..payload.len().min(DEAD_LETTER_PAYLOAD_MAX)];
        let record = serde_json::json!({
            "reason": reason,
            "detail": detail,
            "path": path,
            "payload": String::from_utf8_lossy(cut),
            "truncated": cut.len() < payload.len(),
            "received_at": Utc::now(),
        });
        let key = self.keys.event_dead_letters();
        let (mut conn, tracker) = self.pool.get();
        let res: redis::RedisResult<()> = tracker.track(
            redis::pipe()
                .cmd("LPUSH")
                .arg(&key)
                .arg(record.to_string())
                .ignore()
                .cmd("LTRIM")
                .arg(&key)
                .arg(0)
                .arg(self.dead_letter_max.saturating_sub(1))
                .ignore()
                .query_async(&mut conn)
                .await,
        );
        if let Err(e) = res {
            tracing::warn!(error = %e, "cannot keep a rejected event in the dead-letter list");
        }
    }

    /// Counts, logs and dead-letters a refused entry, then acknowledges it,
    /// so it is refused once even if the rest of its batch is retried.
    async fn reject(&self, entry: &Entry, label: &'static str, detail: &str) -> anyhow::Result<()> {
        metrics::rejected(label);
        tracing::warn!(reason = label, error = %detail, path = entry.path, entry = %entry.id, "rejected a market event");
        self.dead_letter(label, detail, &entry.payload, entry.path)
            .await;
        let (mut conn, tracker) = self.pool.get();
        tracker.track(
            redis::cmd("XACK")
                .arg(&self.stream)
                .arg(GROUP)
                .arg(&entry.id)
                .query_async::<()>(&mut conn)
                .await,
        )?;
        Ok(())
    }

    /// Processes a batch of entries (see the module docs). Refused entries
    /// are acknowledged (and removed from `entries`) as they are found. On
    /// `Err` the rest was not acknowledged: the caller retries what is left
    /// in `entries` later.
    pub async fn flush(&self, entries: &mut Vec<Entry>) -> anyhow::Result<Flushed> {
        let mut refused = HashSet::new();
        let out = self.process(entries, &mut refused).await;
        entries.retain(|e| !refused.contains(&e.id));
        out
    }

    /// [`Self::flush`]'s work; records the ids of refused (and already
    /// acknowledged) entries in `refused`.
    async fn process(
        &self,
        entries: &[Entry],
        refused: &mut HashSet<String>,
    ) -> anyhow::Result<Flushed> {
        let mut out = Flushed::default();
        if entries.is_empty() {
            return Ok(out);
        }
        // 1. Parse; refuse bad entries; drop in-batch duplicates.
        let mut parsed = Vec::with_capacity(entries.len());
        for entry in entries.iter() {
            // As of the later of the entry's append time (its id: Redis's
            // clock, close to the publisher's) and this host's clock, so a
            // listener whose clock runs behind the api's does not refuse an
            // event the api accepted (see `parse_as_of`).
            let appended = entry
                .id
                .split('-')
                .next()
                .and_then(|ms| ms.parse().ok())
                .and_then(chrono::DateTime::from_timestamp_millis);
            let now = appended.map_or_else(Utc::now, |t| t.max(Utc::now()));
            match shared::events::parse_as_of(&entry.payload, now) {
                Ok(event) => parsed.push(Some(event)),
                Err(e) => {
                    self.reject(entry, e.label, &e.to_string()).await?;
                    refused.insert(entry.id.clone());
                    parsed.push(None);
                    out.rejected += 1;
                }
            }
        }
        let mut valid: Vec<(&Entry, MarketEvent)> = Vec::with_capacity(entries.len());
        let mut ids = HashSet::new();
        for (entry, event) in entries.iter().zip(parsed) {
            match event {
                Some(event) if ids.insert(event.event_id.clone()) => valid.push((entry, event)),
                Some(_) => out.duplicates += 1,
                None => {}
            }
        }
        // 2. Claim the events (skipping those done before or held by another
        // consumer) and 3. look up the products they name, at once: the two
        // round trips are independent, and each costs a few hundred µs when
        // the machine is busy.
        let named: Vec<String> = valid
            .iter()
            .flat_map(|(_, e)| e.product_ids.iter().cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let claim = async {
            if valid.is_empty() {
                return Ok(Vec::new());
            }
            let mut claim = CLAIM_EVENTS.prepare_invoke();
            claim
                .arg(&self.consumer)
                .arg(self.event_claim.as_millis() as u64);
            for (entry, event) in &valid {
                claim
                    .key(self.keys.event_done(&event.event_id))
                    .arg(u8::from(entry.reclaimed));
            }
            let (mut conn, tracker) = self.pool.get();
            let ours: Vec<i64> = tracker.track(claim.invoke_async(&mut conn).await)?;
            anyhow::Ok(ours)
        };
        let lookup = async { anyhow::Ok(self.store.existing_ids(&named).await?) };
        let (ours, existing) = tokio::try_join!(claim, lookup)?;
        let before = valid.len();
        valid = valid
            .into_iter()
            .zip(ours)
            .filter_map(|(v, ours)| (ours == 1).then_some(v))
            .collect();
        out.duplicates += before - valid.len();
        // Refuse events about unknown products.
        let mut kept = Vec::with_capacity(valid.len());
        for (entry, event) in valid {
            let missing: Vec<&str> = event
                .product_ids
                .iter()
                .filter(|id| !existing.contains(*id))
                .map(String::as_str)
                .collect();
            if missing.is_empty() {
                kept.push((entry, event));
            } else {
                let shown = missing
                    .iter()
                    .take(10)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ");
                let detail = format!("{} unknown product(s): {shown}", missing.len());
                self.reject(entry, "unknown_product", &detail).await?;
                refused.insert(entry.id.clone());
                out.rejected += 1;
            }
        }
        let valid = kept;
        // 4. Store the signals, then 5. queue the jobs.
        let updates = market_updates(valid.iter().map(|(_, e)| e));
        if !updates.is_empty() {
            self.store.apply_market_updates(&updates).await?;
        }
        let jobs = if valid.is_empty() {
            0
        } else {
            let span = self.batch_span(valid.iter().map(|(_, e)| e));
            self.queue_jobs(valid.iter().map(|(_, e)| e))
                .instrument(span)
                .await?
        };
        // Publish-to-enqueue lag: the entry's append time is the Redis
        // clock's, so this assumes the listener's clock agrees (NTP). For a
        // channel-only message it starts when a listener ingested it.
        let now_ms = Utc::now().timestamp_millis();
        for (entry, _) in &valid {
            if let Some(at) = entry.appended_ms() {
                metrics::lag((now_ms - at).max(0) as f64 / 1_000.0);
            }
        }
        out.jobs = jobs;
        out.processed = valid.len();
        // 6. Mark done and acknowledge, in one round trip.
        let mut pipe = redis::pipe();
        for (_, event) in &valid {
            pipe.cmd("SET")
                .arg(self.keys.event_done(&event.event_id))
                .arg("done")
                .arg("EX")
                .arg(DONE_TTL.as_secs())
                .ignore();
        }
        pipe.cmd("XACK").arg(&self.stream).arg(GROUP);
        for entry in entries {
            pipe.arg(&entry.id);
        }
        pipe.ignore();
        let (mut conn, tracker) = self.pool.get();
        tracker.track(pipe.query_async::<()>(&mut conn).await)?;
        // 7. Metrics.
        for (entry, event) in &valid {
            metrics::received(event.kind.as_str(), entry.path);
        }
        metrics::coalesced(out.processed.saturating_sub(jobs) as u64);
        if out.duplicates > 0 {
            metrics::duplicates(out.duplicates as u64);
        }
        Ok(out)
    }

    /// The consumer span of a batch, in the messaging conventions for batch
    /// processing: a child of the first event's publish span (so a lone
    /// event, the common case, is one connected trace down to the worker),
    /// linked to the publish span of every other event. Each of those others
    /// also gets a short `receive` span in its own trace, linked back to the
    /// batch span, so its trace shows that a listener took it.
    fn batch_span<'a>(&self, events: impl Iterator<Item = &'a MarketEvent>) -> tracing::Span {
        let events: Vec<&MarketEvent> = events.collect();
        let span = tracing::debug_span!(
            "market_events process",
            otel.name = %format_args!("process {}", self.stream),
            otel.kind = "consumer",
            messaging.system = "redis",
            messaging.destination.name = %self.stream,
            messaging.operation = "process",
            "messaging.operation.type" = "process",
            messaging.batch.message_count = events.len(),
            messaging.message.id = %events[0].event_id,
        );
        if span.is_disabled() {
            return span;
        }
        shared::telemetry::set_remote_parent(
            &span,
            events[0].traceparent.as_deref(),
            events[0].tracestate.as_deref(),
        );
        let batch = span.in_scope(shared::telemetry::current_trace_context);
        for event in events.iter().skip(1).take(MAX_BATCH_LINKS) {
            shared::telemetry::add_remote_link(
                &span,
                event.traceparent.as_deref(),
                event.tracestate.as_deref(),
            );
            let receive = tracing::debug_span!(
                "market_event receive",
                otel.name = %format_args!("receive {}", self.stream),
                otel.kind = "consumer",
                messaging.system = "redis",
                messaging.destination.name = %self.stream,
                messaging.operation = "receive",
                "messaging.operation.type" = "receive",
                messaging.message.id = %event.event_id,
            );
            shared::telemetry::set_remote_parent(
                &receive,
                event.traceparent.as_deref(),
                event.tracestate.as_deref(),
            );
            if let Some((parent, state)) = &batch {
                shared::telemetry::add_remote_link(&receive, Some(parent), state.as_deref());
            }
        }
        span
    }

    /// Queues the jobs that cover `events`; returns how many.
    async fn queue_jobs<'a>(
        &self,
        events: impl Iterator<Item = &'a MarketEvent>,
    ) -> anyhow::Result<usize> {
        let events: Vec<&MarketEvent> = events.collect();
        let mut jobs = Vec::new();
        if events.iter().any(|e| e.kind == EventKind::RecalculateAll) {
            // A full recalculation covers every product the others name.
            jobs.push(recalculate_all_job(self.recalc_retry));
        } else {
            let products: Vec<String> = events
                .iter()
                .flat_map(|e| e.product_ids.iter().cloned())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            for chunk in products.chunks(MAX_PRODUCTS_PER_EVENT) {
                let job = RecalculatePrices {
                    product_ids: chunk.to_vec(),
                };
                jobs.push(NewJob::of(&job)?.retry(self.recalc_retry));
            }
        }
        // The jobs carry the context of the queue's producer span, a child
        // of this batch's span.
        self.queues.push_bulk(&jobs).await?;
        for job in &jobs {
            metrics::enqueued(&job.name);
        }
        Ok(jobs.len())
    }
}

/// The store writes a batch of events asks for, in stream order, each value
/// with its event's `occurred_at`: the store keeps the latest observation,
/// and of two at the same time the later in the batch.
fn market_updates<'a>(events: impl Iterator<Item = &'a MarketEvent>) -> MarketUpdates {
    let mut u = MarketUpdates::default();
    for e in events {
        match &e.data {
            EventData::CompetitorPrices { competitor, prices } => {
                u.competitor_prices
                    .extend(prices.iter().map(|(id, price)| CompetitorPrice {
                        product_id: id.clone(),
                        competitor: competitor.clone(),
                        price: *price,
                        observed_at: e.occurred_at,
                    }));
            }
            EventData::Demand(m) => u.demand.extend(m.iter().map(|(id, d)| DemandSignal {
                product_id: id.clone(),
                demand_index: *d,
                observed_at: e.occurred_at,
            })),
            EventData::Stock(m) => u.stock.extend(m.iter().map(|(id, s)| Observed {
                product_id: id.clone(),
                value: *s,
                observed_at: e.occurred_at,
            })),
            EventData::UnitCost(m) => u.unit_cost.extend(m.iter().map(|(id, c)| Observed {
                product_id: id.clone(),
                value: *c,
                observed_at: e.occurred_at,
            })),
            EventData::RecalculateAll => {}
        }
    }
    u
}

/// FNV-1a, 64 bits: the same on every replica (unlike std's hasher).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn later_events_for_the_same_product_come_later_in_the_updates() {
        let a = shared::events::parse(br#"{"kind":"stock_changed","data":{"stock":{"P-1":5}}}"#)
            .unwrap();
        let b = shared::events::parse(br#"{"kind":"stock_changed","data":{"stock":{"P-1":7}}}"#)
            .unwrap();
        let u = market_updates([a.clone(), b.clone()].iter());
        let stock: Vec<(&str, i64, _)> = u
            .stock
            .iter()
            .map(|o| (o.product_id.as_str(), o.value, o.observed_at))
            .collect();
        assert_eq!(
            stock,
            vec![("P-1", 5, a.occurred_at), ("P-1", 7, b.occurred_at)]
        );
    }
}
