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
//!   reaches the listeners through the channel. The replica that claims the
//!   message first (`SET NX` on a hash of the payload, for 2 s) appends it to
//!   the stream, tagged `path=pubsub`; from there it is processed like any
//!   other event.
//! - A consumer reads with `XREADGROUP … BLOCK`, which returns as soon as an
//!   entry is appended, so the stream is itself the fast wake-up path. It
//!   acknowledges (`XACK`) only after the event's signals are stored and its
//!   job is queued. Entries a dead listener left unacknowledged are taken
//!   over with `XAUTOCLAIM` once idle for `LISTENER_CLAIM_IDLE_MS`.
//! - Each processed event's id is marked done (`{ns}:events:done:{id}`, kept
//!   24 h) in the same round trip as its `XACK`, and events already marked
//!   are skipped, so an event delivered twice (a redelivery after a crash,
//!   the same event published on both paths) queues its jobs once.
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
use std::time::Duration;

use chrono::Utc;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use shared::events::{EventData, EventKind, MAX_PRODUCTS_PER_EVENT, MarketEvent};
use shared::jobs::{RecalculatePrices, recalculate_all_job};
use shared::keys::Keys;
use shared::queue::{NewJob, Queue, RetryPolicy};
use shared::redis_pool::RedisPool;
use shared::store::{CatalogStore, CompetitorPrice, DemandSignal, MarketUpdates};
use tracing::Instrument as _;

use crate::metrics;

/// The consumer group every listener replica joins.
pub const GROUP: &str = "listeners";

/// Entries one read returns at most.
pub const READ_COUNT: usize = 1_000;

/// How long one blocking read waits for entries (also the longest a
/// shutdown request waits to be noticed).
pub const READ_BLOCK: Duration = Duration::from_secs(1);

/// How long a replica's claim on a channel-only message lasts: long enough
/// for every replica to have received the same message.
pub const CHANNEL_CLAIM: Duration = Duration::from_secs(2);

/// How long an event id is remembered as processed.
pub const DONE_TTL: Duration = Duration::from_secs(86_400);

/// Most bytes of a rejected payload the dead-letter list keeps.
pub const DEAD_LETTER_PAYLOAD_MAX: usize = 64 * 1024;

/// KEYS: claim, stream. ARGV: consumer, claim_ms, maxlen, event.
/// Appends a channel message to the stream unless another replica claimed
/// it first. Returns 1 when appended, 0 when claimed elsewhere.
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
    queue: Queue,
    recalc_retry: RetryPolicy,
    stream_maxlen: u64,
    dead_letter_max: u64,
    consumer: String,
}

impl Bridge {
    /// A bridge consuming as `consumer`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pool: RedisPool,
        keys: Keys,
        store: Arc<dyn CatalogStore>,
        queue: Queue,
        recalc_retry: RetryPolicy,
        stream_maxlen: u64,
        dead_letter_max: u64,
        consumer: String,
    ) -> Self {
        Self {
            stream: keys.event_stream(),
            pool,
            keys,
            store,
            queue,
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
    pub async fn ensure_group(&self, conn: &mut MultiplexedConnection) -> redis::RedisResult<()> {
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
    pub async fn read(
        &self,
        conn: &mut MultiplexedConnection,
        block: Duration,
    ) -> redis::RedisResult<Vec<Entry>> {
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
        conn: &mut MultiplexedConnection,
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
        Ok(reply.claimed.into_iter().map(Entry::from_stream).collect())
    }

    /// Handles messages from the channel, in order: the api's own
    /// (`durable`) messages are left to the stream; others are validated and
    /// appended to the stream by the one replica that claims each (all of a
    /// batch in one pipelined round trip, which keeps their order).
    pub async fn on_channel_messages(&self, payloads: &[Vec<u8>]) {
        let mut pipe = redis::pipe();
        pipe.load_script(&INGEST).ignore();
        let mut appended = Vec::new();
        let mut rejected = Vec::new();
        for payload in payloads {
            if shared::events::is_durable(payload) {
                continue;
            }
            let claim = self
                .keys
                .event_ingest_claim(&format!("{:016x}", fnv1a(payload)));
            match shared::events::parse(payload) {
                Ok(event) => {
                    pipe.invoke_script(
                        INGEST
                            .key(&claim)
                            .key(&self.stream)
                            .arg(&self.consumer)
                            .arg(CHANNEL_CLAIM.as_millis() as u64)
                            .arg(self.stream_maxlen)
                            .arg(event.encode(false)),
                    );
                    appended.push(event.event_id);
                }
                Err(e) => {
                    // Every replica that received it counts it; the one that
                    // claims it dead-letters it.
                    metrics::rejected(e.label);
                    rejected.push((claim, e, payload));
                }
            }
        }
        if !appended.is_empty() {
            let (mut conn, tracker) = self.pool.get();
            let res: redis::RedisResult<Vec<i64>> =
                tracker.track(pipe.query_async(&mut conn).await);
            if let Err(e) = res {
                tracing::error!(error = %e, events = appended.len(), first = %appended[0], "cannot append channel events to the stream; they are lost");
            }
        }
        for (claim, e, payload) in rejected {
            let (mut conn, tracker) = self.pool.get();
            let won: redis::RedisResult<Option<String>> = tracker.track(
                redis::cmd("SET")
                    .arg(&claim)
                    .arg(&self.consumer)
                    .arg("NX")
                    .arg("PX")
                    .arg(CHANNEL_CLAIM.as_millis() as u64)
                    .query_async(&mut conn)
                    .await,
            );
            if let Ok(Some(_)) = won {
                tracing::warn!(reason = e.label, error = %e, path = "pubsub", "rejected a market event");
                self.dead_letter(e.label, &e.to_string(), payload, "pubsub")
                    .await;
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

    async fn reject(&self, entry: &Entry, label: &'static str, detail: &str) {
        metrics::rejected(label);
        tracing::warn!(reason = label, error = %detail, path = entry.path, entry = %entry.id, "rejected a market event");
        self.dead_letter(label, detail, &entry.payload, entry.path)
            .await;
    }

    /// Processes a batch of entries (see the module docs). On `Err` nothing
    /// was acknowledged: the caller retries the same batch later.
    pub async fn flush(&self, entries: &[Entry]) -> anyhow::Result<Flushed> {
        let mut out = Flushed::default();
        if entries.is_empty() {
            return Ok(out);
        }
        // 1. Parse; drop in-batch duplicates.
        let mut valid: Vec<(&Entry, MarketEvent)> = Vec::with_capacity(entries.len());
        let mut ids = HashSet::new();
        for entry in entries {
            match shared::events::parse(&entry.payload) {
                Ok(event) if ids.insert(event.event_id.clone()) => valid.push((entry, event)),
                Ok(_) => out.duplicates += 1,
                Err(e) => {
                    self.reject(entry, e.label, &e.to_string()).await;
                    out.rejected += 1;
                }
            }
        }
        // 2. Skip events processed before.
        if !valid.is_empty() {
            let keys: Vec<String> = valid
                .iter()
                .map(|(_, e)| self.keys.event_done(&e.event_id))
                .collect();
            let (mut conn, tracker) = self.pool.get();
            let done: Vec<Option<String>> =
                tracker.track(redis::cmd("MGET").arg(&keys).query_async(&mut conn).await)?;
            let before = valid.len();
            valid = valid
                .into_iter()
                .zip(done)
                .filter_map(|(v, d)| d.is_none().then_some(v))
                .collect();
            out.duplicates += before - valid.len();
        }
        // 3. Refuse events about unknown products.
        let named: Vec<String> = valid
            .iter()
            .flat_map(|(_, e)| e.product_ids.iter().cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let existing = self.store.existing_ids(&named).await?;
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
                self.reject(entry, "unknown_product", &detail).await;
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
            let first = &valid[0].1;
            let span = tracing::debug_span!(
                "market_events process",
                otel.kind = "consumer",
                messaging.system = "redis",
                messaging.destination.name = %self.stream,
                messaging.operation = "process",
                messaging.batch.message_count = valid.len(),
                event.id = %first.event_id,
            );
            shared::telemetry::set_remote_parent(
                &span,
                first.traceparent.as_deref(),
                first.tracestate.as_deref(),
            );
            self.queue_jobs(valid.iter().map(|(_, e)| e))
                .instrument(span)
                .await?
        };
        out.jobs = jobs;
        out.processed = valid.len();
        // 6. Mark done and acknowledge, in one round trip.
        let mut pipe = redis::pipe();
        for (_, event) in &valid {
            pipe.cmd("SET")
                .arg(self.keys.event_done(&event.event_id))
                .arg(1)
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
        let now_ms = Utc::now().timestamp_millis();
        for (entry, event) in &valid {
            metrics::received(event.kind.as_str(), entry.path);
            if let Some(at) = entry.appended_ms() {
                metrics::lag((now_ms - at).max(0) as f64 / 1_000.0);
            }
        }
        metrics::coalesced(out.processed.saturating_sub(jobs) as u64);
        if out.duplicates > 0 {
            metrics::duplicates(out.duplicates as u64);
        }
        Ok(out)
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
        let context = shared::telemetry::current_trace_context();
        for job in &mut jobs {
            if let Some((parent, state)) = &context {
                job.traceparent = Some(parent.clone());
                job.tracestate = state.clone();
            }
        }
        self.queue.push_bulk(&jobs).await?;
        for job in &jobs {
            metrics::enqueued(&job.name);
        }
        Ok(jobs.len())
    }
}

/// The store writes a batch of events asks for, in stream order (later
/// values for the same product win).
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
            EventData::Stock(m) => u.stock.extend(m.iter().map(|(id, s)| (id.clone(), *s))),
            EventData::UnitCost(m) => u.unit_cost.extend(m.iter().map(|(id, c)| (id.clone(), *c))),
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
        let u = market_updates([a, b].iter());
        assert_eq!(
            u.stock,
            vec![("P-1".to_string(), 5), ("P-1".to_string(), 7)]
        );
    }
}
