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
//!
//! # Layout
//! [`Bridge`] and its constructor live here; each job it does has a
//! submodule, private, whose public items are re-exported here:
//! - `stream`: the consumer group: creating it, reading and taking over
//!   entries ([`Entry`]), pruning the consumers of stopped listeners.
//! - `channel`: the pub/sub ingester, which claims each channel-only
//!   message and appends it to the stream.
//! - `dead_letter`: counting, logging and keeping refused messages.
//! - `batch`: processing one batch of entries, step by step ([`Flushed`]).
//! - `span`: the batch's consumer span and the links to its events' traces.

mod batch;
mod channel;
mod dead_letter;
mod span;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use queue::{Queues, RetryPolicy};
use shared::keys::Keys;
use shared::redis_pool::RedisPool;
use shared::store::CatalogStore;

pub use batch::{DONE_TTL, Flushed};
pub use channel::{CHANNEL_CLAIM, INGEST_ATTEMPTS};
pub use dead_letter::DEAD_LETTER_PAYLOAD_MAX;
pub use span::MAX_BATCH_LINKS;
pub use stream::{Entry, READ_BLOCK, READ_COUNT};

/// The consumer group every listener replica joins.
pub use shared::event_bus::LISTENER_GROUP as GROUP;

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
    ordinals: Arc<std::sync::Mutex<channel::Ordinals>>,
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
}
