//! Processing one batch of stream entries, from parsed payloads to stored
//! signals, queued jobs and acknowledged entries.
//!
//! This is the one place an event's effects happen, whichever path it came
//! by, so the order that makes redelivery safe (store, then queue, then mark
//! done and acknowledge) is kept here, as one step function per stage of
//! [`Bridge::flush`] (see [the design](super)).

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use chrono::Utc;
use queue::NewJob;
use shared::events::{EventData, EventKind, MAX_PRODUCTS_PER_EVENT, MarketEvent};
use shared::jobs::{RecalculatePrices, recalculate_all_job};
use shared::store::{CompetitorPrice, DemandSignal, MarketUpdates, Observed};
use tracing::Instrument as _;

use super::{Bridge, Entry, GROUP};
use crate::metrics;

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

/// An event of the batch still being processed, with the entry it came in.
type EntryEvent<'a> = (&'a Entry, MarketEvent);

impl Bridge {
    /// Processes a batch of entries (see [the design](super)). Refused
    /// entries are acknowledged (and removed from `entries`) as they are
    /// found. On `Err` the rest was not acknowledged: the caller retries
    /// what is left in `entries` later.
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
        let parsed = self.parse(entries, refused, &mut out).await?;
        let valid = drop_repeats(entries, parsed, &mut out);
        let (ours, existing) =
            tokio::try_join!(self.claim(&valid), self.existing_products(&valid))?;
        let valid = keep_claimed(valid, ours, &mut out);
        let valid = self
            .refuse_unknown_products(valid, &existing, refused, &mut out)
            .await?;
        self.store_signals(&valid).await?;
        out.jobs = self.queue_jobs(&valid).await?;
        record_lag(&valid);
        out.processed = valid.len();
        self.mark_done_and_ack(&valid, entries).await?;
        record_metrics(&valid, &out);
        Ok(out)
    }

    /// Parses each entry, in order; one per entry, `None` where the entry
    /// was refused. A bad entry is rejected (counted, dead-lettered and
    /// acknowledged) at once, so a retry of the batch does not count it
    /// again. Each is parsed as of the later of its append time (its id:
    /// Redis's clock, close to the publisher's) and this host's clock, so a
    /// listener whose clock runs behind the api's does not refuse an event
    /// the api accepted (see `parse_as_of`).
    async fn parse(
        &self,
        entries: &[Entry],
        refused: &mut HashSet<String>,
        out: &mut Flushed,
    ) -> anyhow::Result<Vec<Option<MarketEvent>>> {
        let mut parsed = Vec::with_capacity(entries.len());
        for entry in entries {
            let appended = entry
                .appended_ms()
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
        Ok(parsed)
    }

    /// Claims the batch's events for this consumer: one script checks and
    /// sets every event's done key, so two consumers holding two copies of
    /// an event (a redelivery, or one event published on both paths) never
    /// both process it. One flag per event, in order: 1 where this consumer
    /// holds it, 0 where it is done or held by another live consumer.
    async fn claim(&self, valid: &[EntryEvent<'_>]) -> anyhow::Result<Vec<i64>> {
        if valid.is_empty() {
            return Ok(Vec::new());
        }
        let mut claim = CLAIM_EVENTS.prepare_invoke();
        claim
            .arg(&self.consumer)
            .arg(self.event_claim.as_millis() as u64);
        for (entry, event) in valid {
            claim
                .key(self.keys.event_done(&event.event_id))
                .arg(u8::from(entry.reclaimed));
        }
        let (mut conn, tracker) = self.pool.get();
        let ours: Vec<i64> = tracker.track(claim.invoke_async(&mut conn).await)?;
        Ok(ours)
    }

    /// Which of the products the batch's events name the catalog holds, in
    /// one lookup. Run alongside [`Self::claim`]: the two round trips are
    /// independent, and each costs a few hundred µs when the machine is busy.
    async fn existing_products(&self, valid: &[EntryEvent<'_>]) -> anyhow::Result<HashSet<String>> {
        let named = product_union(valid.iter().map(|(_, e)| e));
        Ok(self.store.existing_ids(&named).await?)
    }

    /// Refuses (dead-letters as `unknown_product` and acknowledges) the
    /// events that name a product the catalog does not hold, so neither
    /// their signals nor a job are kept for a product that does not exist.
    /// Returns the rest.
    async fn refuse_unknown_products<'a>(
        &self,
        valid: Vec<EntryEvent<'a>>,
        existing: &HashSet<String>,
        refused: &mut HashSet<String>,
        out: &mut Flushed,
    ) -> anyhow::Result<Vec<EntryEvent<'a>>> {
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
        Ok(kept)
    }

    /// Stores every signal of the batch in one transaction, before any job
    /// that reads them is queued, so no event's data is dropped.
    async fn store_signals(&self, valid: &[EntryEvent<'_>]) -> anyhow::Result<()> {
        let updates = market_updates(valid.iter().map(|(_, e)| e));
        if !updates.is_empty() {
            self.store.apply_market_updates(&updates).await?;
        }
        Ok(())
    }

    /// Queues the jobs that cover the batch under its consumer span (see
    /// [`Self::batch_span`]), so each job continues the events' traces.
    /// Returns how many.
    async fn queue_jobs(&self, valid: &[EntryEvent<'_>]) -> anyhow::Result<usize> {
        if valid.is_empty() {
            return Ok(0);
        }
        let span = self.batch_span(valid.iter().map(|(_, e)| e));
        self.push_jobs(valid.iter().map(|(_, e)| e))
            .instrument(span)
            .await
    }

    /// Marks the processed events done and acknowledges every entry of the
    /// batch, in one round trip: only now, with the signals stored and the
    /// jobs queued, may the group forget them.
    async fn mark_done_and_ack(
        &self,
        valid: &[EntryEvent<'_>],
        entries: &[Entry],
    ) -> anyhow::Result<()> {
        let mut pipe = redis::pipe();
        for (_, event) in valid {
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
        Ok(())
    }

    /// Queues the jobs that cover `events`; returns how many.
    async fn push_jobs<'a>(
        &self,
        events: impl Iterator<Item = &'a MarketEvent>,
    ) -> anyhow::Result<usize> {
        let events: Vec<&MarketEvent> = events.collect();
        let mut jobs = Vec::new();
        if events.iter().any(|e| e.kind == EventKind::RecalculateAll) {
            // A full recalculation covers every product the others name.
            jobs.push(recalculate_all_job(self.recalc_retry));
        } else {
            let products = product_union(events.iter().copied());
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

/// Drops the events of the batch whose id an earlier entry of the same
/// batch already carries (counted as duplicates), and the refused entries:
/// what is left are the events to claim, each with its entry.
fn drop_repeats<'a>(
    entries: &'a [Entry],
    parsed: Vec<Option<MarketEvent>>,
    out: &mut Flushed,
) -> Vec<EntryEvent<'a>> {
    let mut valid = Vec::with_capacity(entries.len());
    let mut ids = HashSet::new();
    for (entry, event) in entries.iter().zip(parsed) {
        match event {
            Some(event) if ids.insert(event.event_id.clone()) => valid.push((entry, event)),
            Some(_) => out.duplicates += 1,
            None => {}
        }
    }
    valid
}

/// Keeps the events [`Bridge::claim`] gave this consumer (`ours`, one flag
/// per event); the others are done or held elsewhere, and counted as
/// duplicates.
fn keep_claimed<'a>(
    valid: Vec<EntryEvent<'a>>,
    ours: Vec<i64>,
    out: &mut Flushed,
) -> Vec<EntryEvent<'a>> {
    let before = valid.len();
    let valid: Vec<EntryEvent<'a>> = valid
        .into_iter()
        .zip(ours)
        .filter_map(|(v, ours)| (ours == 1).then_some(v))
        .collect();
    out.duplicates += before - valid.len();
    valid
}

/// Records each processed event's publish-to-enqueue lag. The entry's
/// append time is the Redis clock's, so this assumes the listener's clock
/// agrees (NTP). For a channel-only message it starts when a listener
/// ingested it.
fn record_lag(valid: &[EntryEvent<'_>]) {
    let now_ms = Utc::now().timestamp_millis();
    for (entry, _) in valid {
        if let Some(at) = entry.appended_ms() {
            metrics::lag((now_ms - at).max(0) as f64 / 1_000.0);
        }
    }
}

/// Counts the batch once it is acknowledged: each event received (by kind
/// and path), the events a shared job saved, and the duplicates skipped.
fn record_metrics(valid: &[EntryEvent<'_>], out: &Flushed) {
    for (entry, event) in valid {
        metrics::received(event.kind.as_str(), entry.path);
    }
    metrics::coalesced(out.processed.saturating_sub(out.jobs) as u64);
    if out.duplicates > 0 {
        metrics::duplicates(out.duplicates as u64);
    }
}

/// Every product `events` name, once each, sorted.
fn product_union<'a>(events: impl Iterator<Item = &'a MarketEvent>) -> Vec<String> {
    events
        .flat_map(|e| e.product_ids.iter().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

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
