//! Everything the `api`, `worker` and `listener` binaries must agree on.
//!
//! The three services are separate processes that meet only in Redis and in
//! the catalog store. Whatever crosses those boundaries (settings, key names,
//! the pricing rules, the cached price format, the catalog schema) lives here,
//! so that the services can never disagree about a key or a field.
//!
//! # Layout
//! - [`config`]: typed settings read from the environment; a bad value names its variable.
//! - [`telemetry`]: tracing subscriber, JSON logs on request, OTLP export when configured.
//! - [`domain`]: catalog types ([`domain::Product`], [`domain::MarketSignals`]) and id validation.
//! - [`lock`]: the Redis distributed lock (watchdog, fencing) and fenced cache writes.
//! - [`metrics`]: the process-wide Prometheus recorder and its histogram buckets.
//! - [`jobs`]: the pricing job contracts (`recalculate_all_prices`, `recalculate_prices`).
//! - [`pricing`]: the deterministic pricing rules and the prime-member discount.
//! - [`cache`]: the cached price format and its re-validation on read.
//! - [`events`]: the market-event contract (kinds, validation, the wire envelope) and its settings.
//! - [`keys`]: Redis key builders under one namespace prefix.
//! - [`redis_pool`]: a small pool of multiplexed, self-reconnecting Redis connections.
//! - [`shutdown`]: the SIGTERM / Ctrl-C future every binary stops on.
//! - [`store`]: the catalog store boundary ([`store::CatalogStore`]) and its two implementations,
//!   SQLite and PostgreSQL, plus the deterministic seed generator and the CSV importer.

pub mod cache;
pub mod config;
pub mod domain;
pub mod event_bus;
pub mod events;
pub mod jobs;
pub mod keys;
pub mod lock;
pub mod metrics;
pub mod ops;
pub mod pricing;
pub mod redis_pool;
pub mod shutdown;
pub mod store;
pub mod telemetry;
