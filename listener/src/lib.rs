//! The listener: turns market events into jobs, losing none.
//!
//! It subscribes to `MARKET_EVENTS_CHANNEL` and consumes the event stream
//! through a consumer group shared by every replica ([`bridge`] explains the
//! design); it stores the signals each event carries in the catalog and
//! queues `recalculate_prices {product_ids}` (or `recalculate_all_prices`).
//! Events arriving within `LISTENER_COALESCE_WINDOW_MS` of the previous
//! batch are gathered into one job. Bad messages are counted, logged and
//! dead-lettered; the next one is handled normally. When Redis goes away it
//! reconnects with exponential backoff (from
//! [`shared::redis_pool::INITIAL_RECONNECT_DELAY`],
//! 100 ms, doubling up to
//! [`shared::redis_pool::MAX_RECONNECT_DELAY`], 5 s),
//! subscribes again and resumes the stream where its group left off. It
//! starts without any fixed sleep, and serves `/metrics`, `/health` and
//! `/ready` (`health`) on `LISTENER_METRICS_ADDR`.
//!
//! # Layout
//! The modules are private but [`bridge`]; what tests, benches and
//! `main.rs` use is re-exported here.
//! - `config`: [`Settings`] from the environment.
//! - [`bridge`]: the stream consumer, the channel ingester, dead letters, batch processing.
//! - `health`: what `/health` and `/ready` report (served by `shared::ops`).
//! - `metrics`: the listener's Prometheus series.
//! - [`Listener`]: build, then run until a shutdown future resolves; [`run`] for `main.rs`.

pub mod bridge;
mod config;
mod health;
mod metrics;

pub use config::Settings;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use queue::Queues;
use shared::keys::Keys;
use shared::redis_pool::{INITIAL_RECONNECT_DELAY, MAX_RECONNECT_DELAY, RedisPool};
use shared::store::CatalogStore;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::bridge::{Bridge, Entry, READ_BLOCK};

fn router(state: health::HealthState) -> axum::Router {
    let router = shared::ops::router().with_state(state);
    // The recorder is installed now: describe and zero the series first.
    metrics::describe();
    metrics::register_zeroes();
    router
}

/// A listener ready to run.
pub struct Listener {
    settings: Settings,
    store: Arc<dyn CatalogStore>,
    bridge: Bridge,
    pool: RedisPool,
    health: health::Health,
    metrics_addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl Listener {
    /// Opens the store, binds the metrics address. Redis is not needed yet.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        // The error names DATABASE_URL (password hidden) and the cause in one line.
        let store = shared::store::open(&settings.database).await?;
        let pool = RedisPool::open(&settings.redis).await?;
        let keys = Keys::new(&settings.redis.namespace);
        move_legacy_dead_letters(&pool, &keys, settings.dead_letter_max).await?;
        let queues = Queues::new(
            pool.clone(),
            &settings.redis.namespace,
            settings.routes.clone(),
            settings.queue.clone(),
        );
        let bridge = Bridge::new(
            pool.clone(),
            keys,
            store.clone(),
            queues,
            settings.recalc_retry,
            settings.events.stream_maxlen,
            settings.dead_letter_max,
            shared::ops::instance_id("listener"),
            settings.claim_idle,
        );
        let health = health::Health::default();
        let state = health::HealthState {
            health: health.clone(),
            consumer: bridge.consumer().into(),
        };
        let (metrics_addr, server) = shared::metrics::bind(settings.metrics_addr, router(state))
            .await
            .with_context(|| format!("binding LISTENER_METRICS_ADDR {}", settings.metrics_addr))?;
        let server = tokio::spawn(async move {
            let _ = server.await;
        });
        Ok(Self {
            settings,
            store,
            bridge,
            pool,
            health,
            metrics_addr,
            server,
        })
    }

    /// Where `/metrics`, `/health` and `/ready` are served.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// This replica's consumer name in the group.
    pub fn consumer(&self) -> &str {
        self.bridge.consumer()
    }

    /// Runs until `shutdown` resolves; events already read are processed
    /// (or left to the group) before it returns.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let channel = tokio::spawn(subscribe(
            self.pool.clone(),
            self.settings.events.channel.clone(),
            self.bridge.clone(),
            self.health.clone(),
            stop_rx.clone(),
        ));
        let consume = consume(
            self.pool.clone(),
            self.bridge.clone(),
            self.health.clone(),
            self.settings.coalesce_window,
            self.settings.claim_idle,
            stop_rx,
        );
        tracing::info!(
            redis = %self.settings.redis.url,
            channel = %self.settings.events.channel,
            consumer = %self.bridge.consumer(),
            metrics = %self.metrics_addr,
            "listener ready"
        );
        tokio::pin!(consume);
        tokio::select! {
            () = shutdown => {
                let _ = stop_tx.send(true);
                consume.await;
            }
            () = &mut consume => {}
        }
        let _ = channel.await;
        self.server.abort();
        self.store.close().await;
        tracing::info!("listener stopped");
        Ok(())
    }
}

/// Moves dead letters a listener before the named queues kept at
/// `{ns:events}:dead` (now the `events` job queue's dead set, a sorted set)
/// to their own list, older ones after any kept there since, capped as
/// usual. One script, so two listeners starting at once move them once.
pub async fn move_legacy_dead_letters(
    pool: &RedisPool,
    keys: &Keys,
    max: u64,
) -> redis::RedisResult<usize> {
    static MOVE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
        redis::Script::new(
            r#"
if redis.call('TYPE', KEYS[1]).ok ~= 'list' then return 0 end
local items = redis.call('LRANGE', KEYS[1], 0, -1)
for _, item in ipairs(items) do redis.call('RPUSH', KEYS[2], item) end
redis.call('DEL', KEYS[1])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[1]) - 1)
return #items
"#,
        )
    });
    let (mut conn, tracker) = pool.get();
    let moved: usize = tracker.track(
        MOVE.key(keys.legacy_event_dead_letters())
            .key(keys.event_dead_letters())
            .arg(max.max(1))
            .invoke_async(&mut conn)
            .await,
    )?;
    if moved > 0 {
        tracing::info!(
            moved,
            "moved dead letters from the key the events queue now uses"
        );
    }
    Ok(moved)
}

/// Runs the listener until `shutdown` resolves.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    Listener::build(settings)
        .await?
        .run_until_stopped(shutdown)
        .await
}

/// A consumer of the group that has read nothing for this long and holds
/// no entries belongs to a stopped listener, and is removed.
pub const PRUNE_IDLE: Duration = Duration::from_secs(3_600);

/// Most channel messages handled in one pipelined round trip.
pub const CHANNEL_BATCH: usize = 256;

/// Sleeps `delay` unless told to stop; returns the next delay.
async fn back_off(delay: Duration, stop: &mut watch::Receiver<bool>) -> Duration {
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = stop.changed() => {}
    }
    (delay * 2).min(MAX_RECONNECT_DELAY)
}

/// The channel side: subscribe, hand every message to the bridge,
/// re-subscribe with backoff when the connection drops.
async fn subscribe(
    pool: RedisPool,
    channel: String,
    bridge: Bridge,
    health: health::Health,
    mut stop: watch::Receiver<bool>,
) {
    let mut delay = INITIAL_RECONNECT_DELAY;
    while !*stop.borrow() {
        health.set_subscribed(false);
        let mut pubsub = match pool.pubsub().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "cannot connect to subscribe");
                delay = back_off(delay, &mut stop).await;
                continue;
            }
        };
        if let Err(e) = pubsub.subscribe(&channel).await {
            tracing::warn!(error = %e, retry_in = ?delay, "cannot subscribe");
            delay = back_off(delay, &mut stop).await;
            continue;
        }
        tracing::info!(%channel, "subscribed");
        health.set_subscribed(true);
        delay = INITIAL_RECONNECT_DELAY;
        // Whatever has arrived, up to CHANNEL_BATCH messages, is handled together.
        let mut messages = pubsub.on_message().ready_chunks(CHANNEL_BATCH);
        loop {
            tokio::select! {
                batch = messages.next() => match batch {
                    Some(batch) => {
                        let payloads: Vec<Vec<u8>> =
                            batch.iter().map(|m| m.get_payload_bytes().to_vec()).collect();
                        bridge.on_channel_messages(&payloads).await;
                    }
                    None => {
                        tracing::warn!(retry_in = ?delay, "subscription lost; subscribing again");
                        health.set_subscribed(false);
                        break;
                    }
                },
                _ = stop.changed() => {
                    health.set_subscribed(false);
                    return;
                }
            }
        }
        delay = back_off(delay, &mut stop).await;
    }
}

/// The stream side: read, gather within the coalescing window, process;
/// take over stale entries now and then; reconnect with backoff.
async fn consume(
    pool: RedisPool,
    bridge: Bridge,
    health: health::Health,
    window: Duration,
    claim_idle: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut delay = INITIAL_RECONNECT_DELAY;
    // Read but not yet processed; kept across reconnects.
    let mut pending: Vec<Entry> = Vec::new();
    let mut last_flush: Option<Instant> = None;
    'connect: loop {
        health.stream_lost();
        if *stop.borrow() {
            break;
        }
        let mut conn = match pool.dedicated().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "cannot connect to read the event stream");
                health.stream_lost();
                delay = back_off(delay, &mut stop).await;
                continue;
            }
        };
        if let Err(e) = bridge.ensure_group(&mut conn).await {
            tracing::warn!(error = %e, retry_in = ?delay, "cannot create the consumer group");
            health.stream_lost();
            delay = back_off(delay, &mut stop).await;
            continue;
        }
        let mut next_claim = Instant::now();
        loop {
            let stopping = *stop.borrow();
            if Instant::now() >= next_claim && !stopping {
                next_claim = Instant::now() + (claim_idle / 2).max(Duration::from_secs(1));
                match bridge.claim_stale(&mut conn, claim_idle).await {
                    Ok(claimed) => {
                        pending.extend(claimed);
                        if let Err(e) = bridge.prune_consumers(&mut conn, PRUNE_IDLE).await {
                            tracing::warn!(error = %e, "cannot prune the consumer group");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the event stream failed; reconnecting");
                        health.stream_lost();
                        delay = back_off(delay, &mut stop).await;
                        continue 'connect;
                    }
                }
            }
            let due = last_flush.is_none_or(|t| t.elapsed() >= window);
            if !pending.is_empty() && (due || stopping) {
                match bridge.flush(&mut pending).await {
                    Ok(_) => {
                        pending.clear();
                        last_flush = Some(Instant::now());
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, events = pending.len(), retry_in = ?delay, "processing events failed; will retry them");
                        health.stream_lost();
                        delay = back_off(delay, &mut stop).await;
                        if *stop.borrow() {
                            // Left unacknowledged: another listener (or the
                            // next start) takes them over.
                            break 'connect;
                        }
                        continue 'connect;
                    }
                }
            }
            if stopping {
                break 'connect;
            }
            // Wait for new entries; with some pending, only until the window ends.
            let block = match last_flush {
                Some(t) if !pending.is_empty() => {
                    (t + window).saturating_duration_since(Instant::now())
                }
                _ => READ_BLOCK,
            };
            match bridge
                .read(&mut conn, block.clamp(Duration::from_millis(1), READ_BLOCK))
                .await
            {
                Ok(entries) => {
                    health.stream_read();
                    // Redis answers again: the next outage backs off from the start.
                    delay = INITIAL_RECONNECT_DELAY;
                    pending.extend(entries);
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "reading the event stream failed; reconnecting");
                    health.stream_lost();
                    delay = back_off(delay, &mut stop).await;
                    continue 'connect;
                }
            }
        }
    }
    // Stopping: no longer reading.
    health.stream_lost();
}
