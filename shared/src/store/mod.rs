//! The catalog store boundary.
//!
//! Handlers and jobs talk to [`CatalogStore`], never to SQL directly, so a
//! PostgreSQL implementation can be added beside [`sqlite::SqliteStore`]
//! without touching them. [`open`] picks the implementation from
//! `DATABASE_URL` and runs the migrations.
//!
//! Also here: [`seed`], the deterministic synthetic catalog behind
//! `api seed --products N`, and [`import`], the CSV importer behind
//! `api import FILE.csv`.

pub mod import;
pub mod seed;
pub mod sqlite;

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::config::DatabaseSettings;
use crate::domain::{MarketSignals, Product};

/// A catalog store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or used right now (closed pool, I/O
    /// error, timeout). Readers answer 503; jobs retry.
    #[error("catalog store unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// The store refused the data (a constraint failed).
    #[error("catalog store rejected the data: {0}")]
    Rejected(#[source] sqlx::Error),
    /// The bulk catalog scan failed (see [`sqlite`]'s bulk reader).
    #[error("catalog scan failed: {0}")]
    Scan(String),
    /// The schema could not be brought up to date.
    #[error("catalog migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db)
                if db.is_check_violation()
                    || db.is_foreign_key_violation()
                    || db.is_unique_violation() =>
            {
                StoreError::Rejected(e)
            }
            _ => StoreError::Unavailable(e),
        }
    }
}

/// The latest price one competitor asks for one product.
#[derive(Debug, Clone, PartialEq)]
pub struct CompetitorPrice {
    /// The product.
    pub product_id: String,
    /// Who asks this price.
    pub competitor: String,
    /// Their price.
    pub price: f64,
    /// When it was seen.
    pub observed_at: DateTime<Utc>,
}

/// The latest demand index of one product.
#[derive(Debug, Clone, PartialEq)]
pub struct DemandSignal {
    /// The product.
    pub product_id: String,
    /// 1.0 is normal demand.
    pub demand_index: f64,
    /// When it was measured.
    pub observed_at: DateTime<Utc>,
}

/// A new value of one product field (stock, unit cost), and when the event
/// that carries it happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed<T> {
    /// The product.
    pub product_id: String,
    /// The new value.
    pub value: T,
    /// When it was observed (the event's `occurred_at`).
    pub observed_at: DateTime<Utc>,
}

/// Market changes to record together (one transaction), as the listener
/// gathers them from a batch of events.
///
/// Every signal is kept by the time it was observed: a value observed
/// before the one stored is ignored (an equal time replaces it, so within a
/// batch the later event wins). Events applied out of order, by two
/// listener replicas or after a taken-over entry, therefore cannot bring an
/// older value back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MarketUpdates {
    /// Latest price per product and competitor.
    pub competitor_prices: Vec<CompetitorPrice>,
    /// Latest demand index per product.
    pub demand: Vec<DemandSignal>,
    /// New stock levels, in units.
    pub stock: Vec<Observed<i64>>,
    /// New unit costs.
    pub unit_cost: Vec<Observed<f64>>,
}

impl MarketUpdates {
    /// Whether there is nothing to record.
    pub fn is_empty(&self) -> bool {
        self.competitor_prices.is_empty()
            && self.demand.is_empty()
            && self.stock.is_empty()
            && self.unit_cost.is_empty()
    }
}

/// What the services need from a catalog store.
#[async_trait]
pub trait CatalogStore: Send + Sync + 'static {
    /// One product, or `None` when the id is unknown.
    async fn product(&self, id: &str) -> Result<Option<Product>, StoreError>;

    /// The market signals of one product (empty when none are known).
    async fn market_signals(&self, id: &str) -> Result<MarketSignals, StoreError>;

    /// Inserts or replaces products, in one transaction. Returns rows written.
    async fn upsert_products(&self, products: &[Product]) -> Result<u64, StoreError>;

    /// Records the latest competitor prices, replacing older ones per competitor.
    async fn record_competitor_prices(&self, rows: &[CompetitorPrice]) -> Result<u64, StoreError>;

    /// Records the latest demand indexes.
    async fn record_demand(&self, rows: &[DemandSignal]) -> Result<u64, StoreError>;

    /// Records a batch of market changes in one transaction: all or nothing.
    /// Later entries for the same product (and competitor) win.
    async fn apply_market_updates(&self, updates: &MarketUpdates) -> Result<(), StoreError>;

    /// Which of `ids` exist in the catalog.
    async fn existing_ids(&self, ids: &[String]) -> Result<HashSet<String>, StoreError>;

    /// How many products the catalog holds.
    async fn count_products(&self) -> Result<u64, StoreError>;

    /// Up to `limit` products with ids after `after` (in id order), each
    /// with its market signals: one page of a catalog scan whose memory is
    /// bounded by the page, not the catalog.
    async fn priced_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(Product, MarketSignals)>, StoreError>;

    /// The named products that exist, each with its market signals.
    async fn priced_by_ids(
        &self,
        ids: &[String],
    ) -> Result<Vec<(Product, MarketSignals)>, StoreError>;

    /// A cheap round trip, for readiness checks.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Closes the store; later calls fail with [`StoreError::Unavailable`].
    async fn close(&self);
}

/// Opens the store named by the settings and brings its schema up to date.
pub async fn open(settings: &DatabaseSettings) -> Result<Arc<dyn CatalogStore>, StoreError> {
    let store = sqlite::SqliteStore::connect(&settings.url, settings.max_connections).await?;
    Ok(Arc::new(store))
}
