//! The channel side of the bridge: ingesting pub/sub messages into the
//! stream.
//!
//! Every replica receives every channel message, but a channel-only message
//! must become exactly one stream entry (and a bad one one dead letter).
//! This module holds the claim that decides which replica appends it: the
//! per-replica [`Ordinals`] of identical payloads, the hash they are keyed
//! by, and the one script that claims and appends (see [the design](super)).

use std::time::{Duration, Instant};

use shared::events::EventError;

use super::Bridge;
use crate::metrics;

/// How long a replica's claim on a channel-only message lasts: long enough
/// for every replica to have received the same message. Also the gap after
/// which a replica counts the same bytes from one again (see
/// [the design](super)).
pub const CHANNEL_CLAIM: Duration = Duration::from_secs(2);

/// Attempts at appending a batch of channel messages to the stream before
/// they are given up (logged as lost): pub/sub cannot redeliver them.
pub const INGEST_ATTEMPTS: u32 = 3;

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

/// Per payload hash, how many times this replica has received it in a row
/// of arrivals less than [`CHANNEL_CLAIM`] apart, and when last.
#[derive(Default)]
pub(crate) struct Ordinals {
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
    /// Handles messages from the channel, in order: the api's own
    /// (`durable`) messages are left to the stream; every other message is
    /// claimed (see [the design](super)) and, by the replica that wins it,
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
}
