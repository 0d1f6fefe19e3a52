//! Everything the `api`, `worker` and `listener` binaries must agree on.
//!
//! The three services are separate processes that meet only in Redis and in
//! the catalog store. Whatever crosses those boundaries (settings, key names,
//! the pricing rules, the cached price format, the catalog schema) lives here,
//! so that the services can never disagree about a key or a field.
//!
//! # Layout
//! Every module is public: each is a namespace the services import by path
//! (`shared::keys::Keys`, `shared::config::RedisSettings`), and each file
//! says why it exists. The job queue itself is the `queue` crate; test
//! support is the dev-only `testkit` crate.
//!
//! Contracts, with no I/O (what crosses a process boundary):
//! - [`domain`]: catalog types ([`domain::Product`], [`domain::MarketSignals`]) and id validation.
//! - [`pricing`]: the deterministic pricing rules and the prime-member discount.
//! - [`keys`]: Redis key builders under one namespace prefix.
//! - [`events`]: the market-event contract: kinds, the wire envelope, validation.
//! - [`jobs`]: the job contract ([`jobs::JobSpec`], [`jobs::NewJob`], retry policy) and the
//!   pricing jobs (`recalculate_all_prices`, `recalculate_prices`).
//!
//! Plumbing (Redis, the store, the process):
//! - [`config`]: typed settings read from the environment; a bad value names its variable.
//! - [`redis_pool`]: a small pool of multiplexed, self-reconnecting Redis connections.
//! - [`cache`]: the cached price format, its re-validation on read, the price cache, and
//!   the near cache in the api's memory that Redis keeps consistent (`CLIENT TRACKING`).
//! - [`lock`]: the Redis distributed lock (watchdog, fencing) and fenced cache writes.
//! - [`event_bus`]: where events travel and the bus that appends and publishes them.
//! - [`store`]: the catalog store boundary ([`store::CatalogStore`]) and its two implementations,
//!   SQLite and PostgreSQL, plus the deterministic seed generator and the CSV importer.
//! - [`telemetry`]: tracing subscriber, JSON logs on request, OTLP export when configured,
//!   W3C trace context across processes.
//! - [`metrics`]: the process-wide Prometheus recorder and its histogram buckets.
//! - [`ops`]: `/health`, `/ready` and `/metrics`, built one way for every service.
//! - [`shutdown`]: the SIGTERM / Ctrl-C future every binary stops on.

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
