//! The catalog store boundary.
//!
//! Handlers and jobs talk to [`CatalogStore`], never to SQL directly. Two
//! implementations keep the same behaviour (one contract test suite runs
//! against both, `shared/tests/store`): [`sqlite::SqliteStore`], the
//! embedded default, one file on one machine; and [`postgres::PgStore`],
//! one catalog shared by every service on every machine. [`open`] picks one
//! by the scheme of `DATABASE_URL` and brings its schema up to date.
//!
//! Also here: [`seed`], the deterministic synthetic catalog behind
//! `api seed --products N`, and [`import`], the CSV importer behind
//! `api import FILE.csv`.

pub mod import;
pub mod postgres;
pub mod seed;
pub mod sqlite;

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::Stream;

use crate::config::{DatabaseBackend, DatabaseSettings};
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
    /// The data cannot be stored as it is (text holding a NUL character,
    /// which PostgreSQL's text cannot hold): refused by both stores alike,
    /// before anything is written.
    #[error("catalog store rejected the data: {0}")]
    Invalid(String),
    /// The bulk catalog scan failed (see [`sqlite`]'s bulk reader).
    #[error("catalog scan failed: {0}")]
    Scan(String),
    /// The schema could not be brought up to date.
    #[error("catalog migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// The store could not be opened at startup: the server is unreachable,
    /// refuses the login, has no such database, or the file cannot be
    /// created. One line that names the setting, for an operator.
    #[error("cannot open the catalog store at DATABASE_URL={url}: {reason}")]
    Open {
        /// `DATABASE_URL`, its password hidden.
        url: String,
        /// What went wrong, as the driver or server said it.
        reason: String,
    },
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
    /// Adds `other`'s changes after this batch's own.
    pub fn append(&mut self, other: MarketUpdates) {
        self.competitor_prices.extend(other.competitor_prices);
        self.demand.extend(other.demand);
        self.stock.extend(other.stock);
        self.unit_cost.extend(other.unit_cost);
    }

    /// Whether there is nothing to record.
    pub fn is_empty(&self) -> bool {
        self.competitor_prices.is_empty()
            && self.demand.is_empty()
            && self.stock.is_empty()
            && self.unit_cost.is_empty()
    }
}

/// The whole catalog as pages of products with their signals, in id
/// order: what [`CatalogStore::scan`] returns.
pub type CatalogScan =
    Pin<Box<dyn Stream<Item = Result<Vec<(Product, MarketSignals)>, StoreError>> + Send + 'static>>;

/// The latest observation per key of `rows`, sorted by key: the one with
/// the latest `at`, and of equal times the later in `rows`, which is what
/// applying `rows` one by one under "an observation no older than the
/// stored one replaces it" leaves. Writers that lock rows in key order
/// cannot deadlock each other.
pub fn latest_by_key<'r, T, K: Ord>(
    rows: &'r [T],
    key: impl Fn(&'r T) -> K,
    at: impl Fn(&T) -> DateTime<Utc>,
) -> Vec<&'r T> {
    let mut indexed: Vec<(usize, &T)> = rows.iter().enumerate().collect();
    indexed.sort_by(|(i, a), (j, b)| {
        key(a)
            .cmp(&key(b))
            .then_with(|| at(a).cmp(&at(b)))
            .then_with(|| i.cmp(j))
    });
    let mut out: Vec<&T> = Vec::with_capacity(indexed.len());
    for (_, row) in indexed {
        match out.last_mut() {
            // Sorted by key, then time, then position: a row with the same
            // key as the last kept one supersedes it.
            Some(last) if key(last) == key(row) => *last = row,
            _ => out.push(row),
        }
    }
    out
}

/// Refuses text that holds a NUL character, naming the field: PostgreSQL's
/// text cannot hold one, so both stores refuse it, before writing anything.
pub(crate) fn refuse_nul<'a>(
    fields: impl IntoIterator<Item = (&'static str, &'a str)>,
) -> Result<(), StoreError> {
    for (field, text) in fields {
        if text.contains('\0') {
            return Err(StoreError::Invalid(format!(
                "{field} {:?} holds a NUL character",
                text.replace('\0', "\\0")
            )));
        }
    }
    Ok(())
}

/// [`refuse_nul`] over every text of a batch of products.
pub(crate) fn refuse_nul_in_products(products: &[Product]) -> Result<(), StoreError> {
    refuse_nul(products.iter().flat_map(|p| {
        [
            ("id", p.id.as_str()),
            ("name", p.name.as_str()),
            ("category", p.category.as_str()),
        ]
    }))
}

/// [`refuse_nul`] over every id and competitor of some signals.
pub(crate) fn refuse_nul_in_updates(u: &MarketUpdates) -> Result<(), StoreError> {
    refuse_nul(
        u.competitor_prices
            .iter()
            .flat_map(|c| {
                [
                    ("product_id", c.product_id.as_str()),
                    ("competitor", c.competitor.as_str()),
                ]
            })
            .chain(
                u.demand
                    .iter()
                    .map(|d| ("product_id", d.product_id.as_str())),
            )
            .chain(
                u.stock
                    .iter()
                    .map(|o| ("product_id", o.product_id.as_str())),
            )
            .chain(
                u.unit_cost
                    .iter()
                    .map(|o| ("product_id", o.product_id.as_str())),
            ),
    )
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

    /// The whole catalog in id order, in pages of up to `page` products
    /// with their signals, for the full recalculation: memory is bounded by
    /// the pages the caller holds, never the catalog. The default pages
    /// through [`CatalogStore::priced_page`]; PostgreSQL reads one cursor.
    fn scan(self: Arc<Self>, page: usize) -> CatalogScan {
        let page = page.max(1);
        Box::pin(futures::stream::try_unfold(
            (self, None::<String>, false),
            move |(store, after, done)| async move {
                if done {
                    return Ok(None);
                }
                let rows = store.priced_page(after.as_deref(), page).await?;
                let Some((last, _)) = rows.last() else {
                    return Ok(None);
                };
                let after = Some(last.id.clone());
                let done = rows.len() < page;
                Ok(Some((rows, (store, after, done))))
            },
        ))
    }

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

/// Opens the store `settings.url` names and brings its schema up to date.
/// Any failure is a [`StoreError::Open`]: one line naming `DATABASE_URL`
/// and the cause, which is what the services stop with at startup.
pub async fn open(settings: &DatabaseSettings) -> Result<Arc<dyn CatalogStore>, StoreError> {
    let open_error = |e: StoreError| match e {
        open @ StoreError::Open { .. } => open,
        other => StoreError::Open {
            url: settings.redacted_url(),
            reason: one_line(&other),
        },
    };
    Ok(match settings.backend {
        DatabaseBackend::Sqlite => Arc::new(
            sqlite::SqliteStore::connect(&settings.url, settings.max_connections)
                .await
                .map_err(open_error)?,
        ),
        DatabaseBackend::Postgres => Arc::new(
            postgres::PgStore::connect(settings)
                .await
                .map_err(open_error)?,
        ),
    })
}

/// An error and its sources in one line, `outer: inner: …`, leaving out a
/// source whose text the outer message already contains.
fn one_line(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = s.source();
    }
    line
}
