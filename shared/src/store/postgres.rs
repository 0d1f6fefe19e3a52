//! The shared catalog: PostgreSQL, for deployments on more than one machine.
//!
//! Every api, worker and listener that points `DATABASE_URL` at the same
//! PostgreSQL reads and writes one catalog, so a signal a listener records
//! on one machine prices the products a worker recalculates on another.
//! The schema (`shared/migrations/postgres`) has the same tables as the
//! SQLite one, in PostgreSQL's types; the migrations run on connect, under
//! sqlx's advisory lock, so services starting together do not race.
//!
//! How each operation keeps SQLite's behaviour:
//! - **Bulk writes** (`api seed`, `api import`, batches of signals) are one
//!   statement per batch over `UNNEST` of one array per column: every value
//!   is a bound parameter, never SQL text, and a batch of 5,000 rows costs
//!   one round trip.
//! - **Latest observation wins** under writers on any number of machines:
//!   each upsert's `ON CONFLICT … DO UPDATE … WHERE` (and each update's
//!   `WHERE`) compares the stored `observed_at` with the new one, and
//!   PostgreSQL re-checks that condition on the newest row version after
//!   waiting for a concurrent writer's lock. A batch is first reduced to
//!   its latest observation per key (PostgreSQL refuses to update one row
//!   twice in a statement) and sorted by key, so concurrent batches lock
//!   rows in one order; a deadlock or serialization failure that happens
//!   anyway is retried (`RETRIES`).
//! - **The full scan** is a server-side cursor (`DECLARE … NO SCROLL
//!   CURSOR`, then `FETCH` a page at a time) over one merge of products and
//!   their signals in id order: one snapshot of the whole catalog, memory
//!   bounded by the page, and every `FETCH` a statement of its own, so
//!   `statement_timeout` bounds each page, not the whole scan.
//! - **Text with a NUL**: PostgreSQL's text cannot hold one, so a read by
//!   an id containing one finds nothing (as it does in SQLite) instead of
//!   failing, and both stores refuse to write one ([`StoreError::Invalid`]).
//!
//! Timestamps are `TIMESTAMPTZ`, which keeps microseconds: two observations
//! less than a microsecond apart count as simultaneous (the later-applied
//! one wins), where SQLite's text keeps nanoseconds.
//!
//! It is one file of about 650 lines on purpose: it is the whole
//! [`super::CatalogStore`] for PostgreSQL, each method beside
//! its SQL, and is read against `sqlite.rs` method by method; the contract
//! suite (`shared/tests/store`) runs the same tests on both.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::TryStreamExt as _;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions as _, Connection as _, PgPool, Postgres, Row, Transaction};

use super::{
    CatalogScan, CatalogStore, CompetitorPrice, DemandSignal, MarketUpdates, Observed, StoreError,
    latest_by_key,
};
use crate::config::DatabaseSettings;
use crate::domain::{MarketSignals, Product};

/// Rows per bulk statement: a round trip per batch, and arrays small enough
/// that one statement never holds many row locks for long.
const BATCH: usize = 5_000;

/// Attempts of a write transaction that PostgreSQL aborted to resolve a
/// deadlock or a serialization failure (both safe to run again whole).
const RETRIES: usize = 5;

/// The product columns, in the order [`product_at`] reads them.
macro_rules! product_columns {
    () => {
        "p.id, p.name, p.category, p.unit_cost, p.base_price, p.stock, p.target_stock, \
         p.elasticity, p.min_margin, p.max_margin, p.updated_at"
    };
}

/// The product columns and the signals, one look-up per product: for pages
/// and named products, where only a few rows are wanted.
macro_rules! priced_select {
    () => {
        concat!(
            "SELECT ",
            product_columns!(),
            ", (SELECT MIN(c.price) FROM competitor_prices c WHERE c.product_id = p.id), \
             (SELECT d.demand_index FROM demand_signals d WHERE d.product_id = p.id) \
             FROM products p "
        )
    };
}

/// The whole catalog in id order with its signals, as one merge of three
/// ordered scans: what the full recalculation's cursor reads.
macro_rules! scan_select {
    () => {
        concat!(
            "SELECT ",
            product_columns!(),
            ", c.lowest, d.demand_index FROM products p \
             LEFT JOIN (SELECT product_id, MIN(price) AS lowest FROM competitor_prices \
                        GROUP BY product_id) c ON c.product_id = p.id \
             LEFT JOIN demand_signals d ON d.product_id = p.id \
             ORDER BY p.id"
        )
    };
}

/// A catalog in PostgreSQL.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to the server `settings.url` names, brings the schema up to
    /// date and opens the pool. Fails with [`StoreError::Open`], which names
    /// the cause in one line, when the server cannot be reached in
    /// `settings.connect_timeout`, refuses the login, or has no such database.
    pub async fn connect(settings: &DatabaseSettings) -> Result<Self, StoreError> {
        let open_error = |reason: String| StoreError::Open {
            url: settings.redacted_url(),
            reason,
        };
        let mut options = PgConnectOptions::from_str(&settings.url)
            .map_err(|e| open_error(e.to_string()))?
            .application_name("pricing");
        if !settings.statement_timeout.is_zero() {
            let ms = settings.statement_timeout.as_millis().to_string();
            options = options.options([("statement_timeout", ms.as_str())]);
        }
        // One connection first, to report why the server cannot be used
        // (the pool would only say that it timed out), and to migrate.
        let mut conn = match tokio::time::timeout(settings.connect_timeout, options.connect()).await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(open_error(e.to_string())),
            Err(_) => {
                return Err(open_error(format!(
                    "no answer within {} ms (DATABASE_CONNECT_TIMEOUT_MS)",
                    settings.connect_timeout.as_millis()
                )));
            }
        };
        sqlx::migrate!("./migrations/postgres")
            .run(&mut conn)
            .await
            .map_err(|e| open_error(format!("migrating the schema: {e}")))?;
        let _ = conn.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections.max(1))
            .acquire_timeout(settings.connect_timeout)
            // A pooled connection that has not been used for a while may have
            // been cut (a server restart, a proxy's idle timeout): the ping
            // before handing it out finds that, and the pool connects anew.
            .test_before_acquire(true)
            .idle_timeout(Some(Duration::from_secs(300)))
            .connect_lazy_with(options);
        Ok(Self { pool })
    }

    /// The underlying pool, for tests and tools that need raw SQL.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Maps a driver error: data PostgreSQL refuses as such (a constraint, a
/// value out of range, text it cannot hold) is [`StoreError::Rejected`];
/// anything else, the server or the network, is [`StoreError::Unavailable`].
fn store_error(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e
        && let Some(code) = db.code()
        // Class 22 is "data exception", class 23 "integrity constraint violation".
        && (code.starts_with("22") || code.starts_with("23"))
    {
        return StoreError::Rejected(e);
    }
    StoreError::Unavailable(e)
}

/// Whether PostgreSQL aborted the transaction to break a deadlock (40P01)
/// or a serialization conflict (40001): running it again is safe.
fn is_retryable_conflict(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if db.code().is_some_and(|c| c == "40P01" || c == "40001"))
}

/// A write the store runs in one transaction.
#[derive(Clone, Copy)]
enum Write<'a> {
    Products(&'a [Product]),
    CompetitorPrices(&'a [CompetitorPrice]),
    Demand(&'a [DemandSignal]),
    Market(&'a MarketUpdates),
}

impl Write<'_> {
    /// Runs the write's statements on `conn`; returns rows written.
    async fn run(self, conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
        match self {
            Write::Products(rows) => upsert_product_rows(conn, rows).await,
            Write::CompetitorPrices(rows) => upsert_competitor_prices(conn, rows).await,
            Write::Demand(rows) => upsert_demand(conn, rows).await,
            Write::Market(updates) => write_market_updates(conn, updates).await.map(|()| 0),
        }
    }

    /// Runs the write in a transaction, again when PostgreSQL aborted it to
    /// break a deadlock or a serialization conflict.
    async fn commit(self, pool: &PgPool) -> Result<u64, StoreError> {
        let mut attempt = 1;
        loop {
            let result = async {
                let mut tx = pool.begin().await?;
                let written = self.run(&mut tx).await?;
                tx.commit().await?;
                Ok(written)
            }
            .await;
            match result {
                Err(e) if attempt < RETRIES && is_retryable_conflict(&e) => {
                    tracing::debug!(error = %e, attempt, "write conflict; running the transaction again");
                    attempt += 1;
                }
                other => return other.map_err(store_error),
            }
        }
    }
}

/// Reads the product in the first 11 columns of `row` (`product_columns!`).
fn product_at(row: &PgRow) -> Result<Product, sqlx::Error> {
    Ok(Product {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        category: row.try_get(2)?,
        unit_cost: row.try_get(3)?,
        base_price: row.try_get(4)?,
        stock: row.try_get(5)?,
        target_stock: row.try_get(6)?,
        elasticity: row.try_get(7)?,
        min_margin: row.try_get(8)?,
        max_margin: row.try_get(9)?,
        updated_at: row.try_get(10)?,
    })
}

/// A product and its signals, from a row of the priced selects
/// (`product_columns!`, then the lowest competitor price and the demand index).
fn priced_at(row: &PgRow) -> Result<(Product, MarketSignals), sqlx::Error> {
    Ok((
        product_at(row)?,
        MarketSignals {
            lowest_competitor_price: row.try_get(11)?,
            demand_index: row.try_get(12)?,
        },
    ))
}

/// Whether `id` could be stored at all: PostgreSQL's text cannot hold NUL.
fn storable(id: &str) -> bool {
    !id.contains('\0')
}

/// Upserts competitor prices, the latest observation per product and
/// competitor winning; returns rows written.
async fn upsert_competitor_prices(
    conn: &mut PgConnection,
    rows: &[CompetitorPrice],
) -> Result<u64, sqlx::Error> {
    let rows = latest_by_key(
        rows,
        |r| (r.product_id.as_str(), r.competitor.as_str()),
        |r| r.observed_at,
    );
    let mut written = 0;
    for chunk in rows.chunks(BATCH) {
        written += sqlx::query(
            "INSERT INTO competitor_prices (product_id, competitor, price, observed_at) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::float8[], $4::timestamptz[]) \
             ON CONFLICT (product_id, competitor) DO UPDATE \
             SET price = excluded.price, observed_at = excluded.observed_at \
             WHERE excluded.observed_at >= competitor_prices.observed_at",
        )
        .bind(
            chunk
                .iter()
                .map(|r| r.product_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            chunk
                .iter()
                .map(|r| r.competitor.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(chunk.iter().map(|r| r.price).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.observed_at).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?
        .rows_affected();
    }
    Ok(written)
}

/// Upserts demand indexes, the latest observation per product winning;
/// returns rows written.
async fn upsert_demand(conn: &mut PgConnection, rows: &[DemandSignal]) -> Result<u64, sqlx::Error> {
    let rows = latest_by_key(rows, |r| r.product_id.as_str(), |r| r.observed_at);
    let mut written = 0;
    for chunk in rows.chunks(BATCH) {
        written += sqlx::query(
            "INSERT INTO demand_signals (product_id, demand_index, observed_at) \
             SELECT * FROM UNNEST($1::text[], $2::float8[], $3::timestamptz[]) \
             ON CONFLICT (product_id) DO UPDATE \
             SET demand_index = excluded.demand_index, observed_at = excluded.observed_at \
             WHERE excluded.observed_at >= demand_signals.observed_at",
        )
        .bind(
            chunk
                .iter()
                .map(|r| r.product_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(chunk.iter().map(|r| r.demand_index).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.observed_at).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?
        .rows_affected();
    }
    Ok(written)
}

/// Sets the stock, where the update was observed no earlier than the
/// stock stored.
const UPDATE_STOCK: &str = "UPDATE products p SET stock = u.value, stock_observed_at = u.at, \
     updated_at = $4 \
     FROM UNNEST($1::text[], $2::int8[], $3::timestamptz[]) AS u(id, value, at) \
     WHERE p.id = u.id AND (p.stock_observed_at IS NULL OR p.stock_observed_at <= u.at)";

/// [`UPDATE_STOCK`] for the unit cost.
const UPDATE_UNIT_COST: &str = "UPDATE products p SET unit_cost = u.value, \
     unit_cost_observed_at = u.at, updated_at = $4 \
     FROM UNNEST($1::text[], $2::float8[], $3::timestamptz[]) AS u(id, value, at) \
     WHERE p.id = u.id \
     AND (p.unit_cost_observed_at IS NULL OR p.unit_cost_observed_at <= u.at)";

/// Runs `sql` ([`UPDATE_STOCK`] or [`UPDATE_UNIT_COST`]) over the latest
/// update per product.
async fn update_observed<T>(
    conn: &mut PgConnection,
    sql: &'static str,
    updates: &[Observed<T>],
) -> Result<(), sqlx::Error>
where
    T: Copy + Send + Sync,
    Vec<T>: for<'q> sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres>,
{
    let updates = latest_by_key(updates, |o| o.product_id.as_str(), |o| o.observed_at);
    let now = Utc::now();
    for chunk in updates.chunks(BATCH) {
        sqlx::query(sql)
            .bind(
                chunk
                    .iter()
                    .map(|o| o.product_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(chunk.iter().map(|o| o.value).collect::<Vec<T>>())
            .bind(chunk.iter().map(|o| o.observed_at).collect::<Vec<_>>())
            .bind(now)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Every statement of [`CatalogStore::apply_market_updates`], on `conn`.
async fn write_market_updates(
    conn: &mut PgConnection,
    u: &MarketUpdates,
) -> Result<(), sqlx::Error> {
    upsert_competitor_prices(conn, &u.competitor_prices).await?;
    upsert_demand(conn, &u.demand).await?;
    update_observed(conn, UPDATE_STOCK, &u.stock).await?;
    update_observed(conn, UPDATE_UNIT_COST, &u.unit_cost).await?;
    Ok(())
}

/// Inserts or replaces products, the last of equal ids winning.
async fn upsert_product_rows(
    conn: &mut PgConnection,
    products: &[Product],
) -> Result<u64, sqlx::Error> {
    // The last row of an id wins, as it would row by row.
    let mut seen = HashSet::with_capacity(products.len());
    let mut rows: Vec<&Product> = products
        .iter()
        .rev()
        .filter(|p| seen.insert(p.id.as_str()))
        .collect();
    rows.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    let mut written = 0;
    for chunk in rows.chunks(BATCH) {
        let col = |f: fn(&Product) -> f64| chunk.iter().map(|p| f(p)).collect::<Vec<f64>>();
        written += sqlx::query(
            "INSERT INTO products (id, name, category, unit_cost, base_price, stock, \
             target_stock, elasticity, min_margin, max_margin, updated_at, \
             stock_observed_at, unit_cost_observed_at) \
             SELECT u.*, u.updated_at, u.updated_at FROM UNNEST($1::text[], $2::text[], \
             $3::text[], $4::float8[], $5::float8[], $6::int8[], $7::int8[], $8::float8[], \
             $9::float8[], $10::float8[], $11::timestamptz[]) \
             AS u(id, name, category, unit_cost, base_price, stock, target_stock, elasticity, \
             min_margin, max_margin, updated_at) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, \
             category = excluded.category, unit_cost = excluded.unit_cost, \
             base_price = excluded.base_price, stock = excluded.stock, \
             target_stock = excluded.target_stock, elasticity = excluded.elasticity, \
             min_margin = excluded.min_margin, max_margin = excluded.max_margin, \
             updated_at = excluded.updated_at, \
             stock_observed_at = excluded.stock_observed_at, \
             unit_cost_observed_at = excluded.unit_cost_observed_at",
        )
        .bind(chunk.iter().map(|p| p.id.as_str()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|p| p.name.as_str()).collect::<Vec<_>>())
        .bind(
            chunk
                .iter()
                .map(|p| p.category.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(col(|p| p.unit_cost))
        .bind(col(|p| p.base_price))
        .bind(chunk.iter().map(|p| p.stock).collect::<Vec<_>>())
        .bind(chunk.iter().map(|p| p.target_stock).collect::<Vec<_>>())
        .bind(col(|p| p.elasticity))
        .bind(col(|p| p.min_margin))
        .bind(col(|p| p.max_margin))
        .bind(
            chunk
                .iter()
                .map(|p| p.updated_at)
                .collect::<Vec<DateTime<Utc>>>(),
        )
        .execute(&mut *conn)
        .await?
        .rows_affected();
    }
    Ok(written)
}

/// Where a [`CatalogStore::scan`] is.
enum ScanState {
    /// Not started: the cursor is declared on the first pull.
    Start(PgPool),
    /// The cursor is open in this transaction.
    Open(Transaction<'static, Postgres>),
    /// The last page was read.
    Done,
}

/// One pull of the scan: the next page, and the state after it.
async fn next_page(
    state: ScanState,
    page: usize,
) -> Result<Option<(Vec<(Product, MarketSignals)>, ScanState)>, StoreError> {
    let mut tx = match state {
        ScanState::Done => return Ok(None),
        ScanState::Open(tx) => tx,
        ScanState::Start(pool) => {
            let mut tx = pool.begin().await.map_err(store_error)?;
            sqlx::query(concat!(
                "DECLARE catalog_scan NO SCROLL CURSOR FOR ",
                scan_select!()
            ))
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
            tx
        }
    };
    // The count is a number, not input text: safe to format into the SQL.
    let fetch = format!("FETCH FORWARD {page} FROM catalog_scan");
    let rows = sqlx::query(sqlx::AssertSqlSafe(fetch))
        .fetch_all(&mut *tx)
        .await
        .map_err(store_error)?;
    let priced = rows
        .iter()
        .map(priced_at)
        .collect::<Result<Vec<_>, _>>()
        .map_err(store_error)?;
    if priced.len() < page {
        // The last page: the cursor and its snapshot go with the transaction.
        tx.commit().await.map_err(store_error)?;
        return Ok((!priced.is_empty()).then_some((priced, ScanState::Done)));
    }
    Ok(Some((priced, ScanState::Open(tx))))
}

#[async_trait]
impl CatalogStore for PgStore {
    async fn product(&self, id: &str) -> Result<Option<Product>, StoreError> {
        if !storable(id) {
            return Ok(None);
        }
        let row = sqlx::query(concat!(
            "SELECT ",
            product_columns!(),
            " FROM products p WHERE p.id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        row.as_ref()
            .map(product_at)
            .transpose()
            .map_err(store_error)
    }

    async fn market_signals(&self, id: &str) -> Result<MarketSignals, StoreError> {
        if !storable(id) {
            return Ok(MarketSignals::default());
        }
        let row = sqlx::query(
            "SELECT (SELECT MIN(price) FROM competitor_prices WHERE product_id = $1), \
                    (SELECT demand_index FROM demand_signals WHERE product_id = $1)",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(MarketSignals {
            lowest_competitor_price: row.try_get(0).map_err(store_error)?,
            demand_index: row.try_get(1).map_err(store_error)?,
        })
    }

    async fn upsert_products(&self, products: &[Product]) -> Result<u64, StoreError> {
        super::refuse_nul_in_products(products)?;
        Write::Products(products).commit(&self.pool).await
    }

    async fn record_competitor_prices(&self, rows: &[CompetitorPrice]) -> Result<u64, StoreError> {
        super::refuse_nul(rows.iter().flat_map(|r| {
            [
                ("product_id", r.product_id.as_str()),
                ("competitor", r.competitor.as_str()),
            ]
        }))?;
        Write::CompetitorPrices(rows).commit(&self.pool).await
    }

    async fn record_demand(&self, rows: &[DemandSignal]) -> Result<u64, StoreError> {
        super::refuse_nul(rows.iter().map(|r| ("product_id", r.product_id.as_str())))?;
        Write::Demand(rows).commit(&self.pool).await
    }

    async fn apply_market_updates(&self, updates: &MarketUpdates) -> Result<(), StoreError> {
        super::refuse_nul_in_updates(updates)?;
        Write::Market(updates).commit(&self.pool).await.map(|_| ())
    }

    async fn existing_ids(&self, ids: &[String]) -> Result<HashSet<String>, StoreError> {
        let mut out = HashSet::with_capacity(ids.len());
        let ids: Vec<&str> = ids
            .iter()
            .map(String::as_str)
            .filter(|id| storable(id))
            .collect();
        for chunk in ids.chunks(BATCH) {
            let mut rows = sqlx::query_scalar::<_, String>(
                "SELECT id FROM products WHERE id = ANY($1::text[])",
            )
            .bind(chunk)
            .fetch(&self.pool);
            while let Some(id) = rows.try_next().await.map_err(store_error)? {
                out.insert(id);
            }
        }
        Ok(out)
    }

    async fn count_products(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM products")
            .fetch_one(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(n.max(0) as u64)
    }

    async fn priced_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(Product, MarketSignals)>, StoreError> {
        let rows = sqlx::query(concat!(
            priced_select!(),
            "WHERE p.id > $1 ORDER BY p.id LIMIT $2"
        ))
        .bind(after.unwrap_or(""))
        .bind(limit.max(1) as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter()
            .map(priced_at)
            .collect::<Result<_, _>>()
            .map_err(store_error)
    }

    async fn priced_by_ids(
        &self,
        ids: &[String],
    ) -> Result<Vec<(Product, MarketSignals)>, StoreError> {
        let ids: Vec<&str> = ids
            .iter()
            .map(String::as_str)
            .filter(|id| storable(id))
            .collect();
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(BATCH) {
            let rows = sqlx::query(concat!(priced_select!(), "WHERE p.id = ANY($1::text[])"))
                .bind(chunk)
                .fetch_all(&self.pool)
                .await
                .map_err(store_error)?;
            for row in &rows {
                out.push(priced_at(row).map_err(store_error)?);
            }
        }
        Ok(out)
    }

    fn scan(self: Arc<Self>, page: usize) -> CatalogScan {
        let page = page.max(1);
        Box::pin(futures::stream::try_unfold(
            ScanState::Start(self.pool.clone()),
            move |state| next_page(state, page),
        ))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
