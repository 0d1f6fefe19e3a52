//! The embedded default: the catalog in one SQLite file, through `sqlx`.
//!
//! The file (and its folder) is created if missing and the migrations in
//! `shared/migrations/sqlite` run on connect. WAL mode lets readers (the api) and a
//! writer (seed, import, the listener) work at once.
//!
//! The full-catalog scan ([`CatalogStore::priced_page`]) goes through
//! `rusqlite` on a read-only connection in a blocking thread instead: sqlx's
//! SQLite driver hands each row from its worker thread to the async side
//! through a channel, which costs about 20 µs of wake-ups per row, four
//! times what SQLite itself needs (`scripts/bench-recalc` with `PHASES=1`).
//! Both drivers link the same `libsqlite3-sys`. An in-memory database has no
//! file a second connection could open, so it keeps the sqlx path.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

use super::{CatalogStore, CompetitorPrice, DemandSignal, MarketUpdates, StoreError};
use crate::domain::{MarketSignals, Product};

/// Rows per multi-row INSERT. 11 columns × 500 rows stays well under
/// SQLite's limit of 32,766 bound parameters per statement.
const INSERT_CHUNK: usize = 500;

/// How long a writer waits for another writer's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a request waits for a free pooled connection before failing.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// The product columns plus its lowest competitor price and demand index.
macro_rules! priced_select {
    () => {
        "SELECT p.id, p.name, p.category, p.unit_cost, p.base_price, p.stock, \
     p.target_stock, p.elasticity, p.min_margin, p.max_margin, p.updated_at, \
     (SELECT MIN(c.price) FROM competitor_prices c WHERE c.product_id = p.id) AS lowest, \
     (SELECT d.demand_index FROM demand_signals d WHERE d.product_id = p.id) AS demand \
     FROM products p"
    };
}

/// A catalog in SQLite.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The bulk reader, for a file database.
    scan: Option<Arc<BulkReader>>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` and migrates it.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let filename = options.get_filename();
        if let Some(dir) = Path::new(filename).parent()
            && !dir.as_os_str().is_empty()
            && filename.to_str() != Some(":memory:")
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Unavailable(sqlx::Error::Io(e)))?;
        }
        let in_memory = filename.to_str() == Some(":memory:") || url.contains("mode=memory");
        let scan = (!in_memory).then(|| {
            Arc::new(BulkReader {
                path: filename.to_path_buf(),
                conn: Mutex::new(None),
            })
        });
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // A ping before each use is a round trip to the connection's
            // worker thread, for a local file that cannot go away like a
            // network peer; a broken connection still fails its query.
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Self { pool, scan })
    }

    /// The underlying pool, for tests and tools that need raw SQL.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// [`CatalogStore::priced_page`] through sqlx instead of the bulk
    /// reader: what an in-memory database does, and what
    /// `scripts/bench-recalc` (`PHASES=1`) times against the bulk reader.
    pub async fn priced_page_through_sqlx(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(Product, MarketSignals)>, StoreError> {
        let rows = sqlx::query(concat!(
            priced_select!(),
            " WHERE p.id > ? ORDER BY p.id LIMIT ?"
        ))
        .bind(after.unwrap_or(""))
        .bind(limit.max(1) as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(priced_from_row).collect::<Result<_, _>>()?)
    }
}

fn product_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Product, sqlx::Error> {
    Ok(Product {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        category: row.try_get("category")?,
        unit_cost: row.try_get("unit_cost")?,
        base_price: row.try_get("base_price")?,
        stock: row.try_get("stock")?,
        target_stock: row.try_get("target_stock")?,
        elasticity: row.try_get("elasticity")?,
        min_margin: row.try_get("min_margin")?,
        max_margin: row.try_get("max_margin")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// A lazily opened read-only `rusqlite` connection for catalog scans.
struct BulkReader {
    path: PathBuf,
    conn: Mutex<Option<rusqlite::Connection>>,
}

impl BulkReader {
    fn page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(Product, MarketSignals)>, rusqlite::Error> {
        let mut slot = self
            .conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let conn = match slot.as_mut() {
            Some(conn) => conn,
            None => {
                let conn = rusqlite::Connection::open_with_flags(
                    &self.path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                conn.busy_timeout(BUSY_TIMEOUT)?;
                slot.insert(conn)
            }
        };
        let out = scan_page(conn, after, limit);
        if out.is_err() {
            // Start from a fresh connection next time.
            *slot = None;
        }
        out
    }
}

/// One page of the scan: the products, then the signals of their id range
/// in two range scans, merged by id. Sequential range scans cost far less
/// than the two index look-ups per product a correlated subquery makes.
fn scan_page(
    conn: &rusqlite::Connection,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<(Product, MarketSignals)>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, name, category, unit_cost, base_price, stock, target_stock, elasticity, \
         min_margin, max_margin, updated_at FROM products WHERE id > ?1 ORDER BY id LIMIT ?2",
    )?;
    let products = stmt
        .query_map(
            rusqlite::params![after.unwrap_or(""), limit.max(1) as i64],
            |r| {
                let updated: String = r.get(10)?;
                let updated_at = chrono::DateTime::parse_from_rfc3339(&updated)
                    .map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(
                            10,
                            rusqlite::types::Type::Text,
                            Box::new(e),
                        )
                    })?
                    .with_timezone(&chrono::Utc);
                Ok(Product {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    category: r.get(2)?,
                    unit_cost: r.get(3)?,
                    base_price: r.get(4)?,
                    stock: r.get(5)?,
                    target_stock: r.get(6)?,
                    elasticity: r.get(7)?,
                    min_margin: r.get(8)?,
                    max_margin: r.get(9)?,
                    updated_at,
                })
            },
        )?
        .collect::<Result<Vec<_>, _>>()?;
    let (Some(first), Some(last)) = (products.first(), products.last()) else {
        return Ok(Vec::new());
    };
    let range = rusqlite::params![first.id, last.id];
    let mut lowest = conn.prepare_cached(
        "SELECT product_id, MIN(price) FROM competitor_prices \
         WHERE product_id >= ?1 AND product_id <= ?2 GROUP BY product_id ORDER BY product_id",
    )?;
    let mut lowest = SortedSignals::new(lowest.query(range)?);
    let mut demand = conn.prepare_cached(
        "SELECT product_id, demand_index FROM demand_signals \
         WHERE product_id >= ?1 AND product_id <= ?2 ORDER BY product_id",
    )?;
    let mut demand = SortedSignals::new(demand.query(range)?);
    products
        .into_iter()
        .map(|p| {
            let signals = MarketSignals {
                lowest_competitor_price: lowest.value_for(&p.id)?,
                demand_index: demand.value_for(&p.id)?,
            };
            Ok((p, signals))
        })
        .collect()
}

/// `(product_id, value)` rows in product order, merged against the page's
/// products (also in product order) without a map: no hashing, and no
/// allocation for ids that the comparison can read in place.
struct SortedSignals<'s> {
    rows: rusqlite::Rows<'s>,
    /// The current row's id and value, not yet matched.
    current: Option<(String, f64)>,
    done: bool,
}

impl<'s> SortedSignals<'s> {
    fn new(rows: rusqlite::Rows<'s>) -> Self {
        Self {
            rows,
            current: None,
            done: false,
        }
    }

    /// The value for `id`; ids must be asked in ascending order.
    fn value_for(&mut self, id: &str) -> Result<Option<f64>, rusqlite::Error> {
        loop {
            if let Some((cur, value)) = &self.current {
                match cur.as_str().cmp(id) {
                    std::cmp::Ordering::Less => self.current = None,
                    std::cmp::Ordering::Equal => {
                        let v = *value;
                        self.current = None;
                        return Ok(Some(v));
                    }
                    std::cmp::Ordering::Greater => return Ok(None),
                }
            }
            if self.done {
                return Ok(None);
            }
            match self.rows.next()? {
                Some(row) => {
                    let rid = row.get_ref(0)?.as_str()?;
                    match rid.cmp(id) {
                        // A signal of a product not on this page (deleted
                        // meanwhile): skip it without allocating.
                        std::cmp::Ordering::Less => continue,
                        std::cmp::Ordering::Equal => return Ok(Some(row.get(1)?)),
                        std::cmp::Ordering::Greater => {
                            self.current = Some((rid.to_owned(), row.get(1)?));
                            return Ok(None);
                        }
                    }
                }
                None => self.done = true,
            }
        }
    }
}

fn priced_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<(Product, MarketSignals), sqlx::Error> {
    Ok((
        product_from_row(row)?,
        MarketSignals {
            lowest_competitor_price: row.try_get("lowest")?,
            demand_index: row.try_get("demand")?,
        },
    ))
}

/// Inserts or updates competitor prices inside `tx`; returns rows written.
async fn upsert_competitor_prices(
    conn: &mut SqliteConnection,
    rows: &[CompetitorPrice],
) -> Result<u64, sqlx::Error> {
    let mut written = 0;
    for chunk in rows.chunks(INSERT_CHUNK) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO competitor_prices (product_id, competitor, price, observed_at) ",
        );
        qb.push_values(chunk, |mut b, r| {
            b.push_bind(r.product_id.clone())
                .push_bind(r.competitor.clone())
                .push_bind(r.price)
                .push_bind(r.observed_at);
        });
        qb.push(
            " ON CONFLICT (product_id, competitor) DO UPDATE SET price = excluded.price, \
             observed_at = excluded.observed_at \
             WHERE excluded.observed_at >= competitor_prices.observed_at",
        );
        written += qb.build().execute(&mut *conn).await?.rows_affected();
    }
    Ok(written)
}

/// Inserts or updates demand indexes inside `tx`; returns rows written.
async fn upsert_demand(
    conn: &mut SqliteConnection,
    rows: &[DemandSignal],
) -> Result<u64, sqlx::Error> {
    let mut written = 0;
    for chunk in rows.chunks(INSERT_CHUNK) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO demand_signals (product_id, demand_index, observed_at) ",
        );
        qb.push_values(chunk, |mut b, r| {
            b.push_bind(r.product_id.clone())
                .push_bind(r.demand_index)
                .push_bind(r.observed_at);
        });
        qb.push(
            " ON CONFLICT (product_id) DO UPDATE SET demand_index = excluded.demand_index, \
             observed_at = excluded.observed_at \
             WHERE excluded.observed_at >= demand_signals.observed_at",
        );
        written += qb.build().execute(&mut *conn).await?.rows_affected();
    }
    Ok(written)
}

/// Sets the stock from an update observed no earlier than the stock stored.
/// Times are compared as the RFC 3339 text they are stored as: always UTC
/// and written by this code, so text order is time order.
const UPDATE_STOCK: &str = "UPDATE products SET stock = ?, stock_observed_at = ?, updated_at = ? \
     WHERE id = ? AND (stock_observed_at IS NULL OR stock_observed_at <= ?)";

/// [`UPDATE_STOCK`] for the unit cost.
const UPDATE_UNIT_COST: &str = "UPDATE products SET unit_cost = ?, unit_cost_observed_at = ?, \
     updated_at = ? WHERE id = ? AND (unit_cost_observed_at IS NULL OR unit_cost_observed_at <= ?)";

/// Runs `sql` ([`UPDATE_STOCK`] or [`UPDATE_UNIT_COST`]) for each update.
async fn update_observed<T>(
    conn: &mut SqliteConnection,
    sql: &'static str,
    updates: &[super::Observed<T>],
) -> Result<(), sqlx::Error>
where
    T: for<'q> sqlx::Encode<'q, Sqlite> + sqlx::Type<Sqlite> + Copy + Send + Sync,
{
    let now = chrono::Utc::now();
    for o in updates {
        sqlx::query(sql)
            .bind(o.value)
            .bind(o.observed_at)
            .bind(now)
            .bind(&o.product_id)
            .bind(o.observed_at)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// The statements of [`CatalogStore::apply_market_updates`], on `conn`.
async fn write_market_updates(
    conn: &mut SqliteConnection,
    u: &MarketUpdates,
) -> Result<(), sqlx::Error> {
    upsert_competitor_prices(conn, &u.competitor_prices).await?;
    upsert_demand(conn, &u.demand).await?;
    update_observed(conn, UPDATE_STOCK, &u.stock).await?;
    update_observed(conn, UPDATE_UNIT_COST, &u.unit_cost).await?;
    Ok(())
}

#[async_trait]
impl CatalogStore for SqliteStore {
    async fn priced_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(Product, MarketSignals)>, StoreError> {
        if let Some(scan) = &self.scan {
            let (scan, after) = (scan.clone(), after.map(str::to_string));
            return tokio::task::spawn_blocking(move || scan.page(after.as_deref(), limit))
                .await
                .map_err(|e| StoreError::Scan(e.to_string()))?
                .map_err(|e| StoreError::Scan(e.to_string()));
        }
        self.priced_page_through_sqlx(after, limit).await
    }

    async fn priced_by_ids(
        &self,
        ids: &[String],
    ) -> Result<Vec<(Product, MarketSignals)>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(INSERT_CHUNK) {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(priced_select!());
            qb.push(" WHERE p.id IN (");
            let mut sep = qb.separated(", ");
            for id in chunk {
                sep.push_bind(id.clone());
            }
            qb.push(")");
            let rows = qb.build().fetch_all(&self.pool).await?;
            for row in &rows {
                out.push(priced_from_row(row)?);
            }
        }
        Ok(out)
    }

    async fn product(&self, id: &str) -> Result<Option<Product>, StoreError> {
        let row = sqlx::query(
            "SELECT id, name, category, unit_cost, base_price, stock, target_stock, \
             elasticity, min_margin, max_margin, updated_at FROM products WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(product_from_row).transpose()?)
    }

    async fn market_signals(&self, id: &str) -> Result<MarketSignals, StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT MIN(price) FROM competitor_prices WHERE product_id = ?1) AS lowest, \
                    (SELECT demand_index FROM demand_signals WHERE product_id = ?1) AS demand",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        Ok(MarketSignals {
            lowest_competitor_price: row.try_get("lowest")?,
            demand_index: row.try_get("demand")?,
        })
    }

    async fn upsert_products(&self, products: &[Product]) -> Result<u64, StoreError> {
        super::refuse_nul_in_products(products)?;
        let mut tx = self.pool.begin().await?;
        let mut written = 0;
        for chunk in products.chunks(INSERT_CHUNK) {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO products (id, name, category, unit_cost, base_price, stock, \
                 target_stock, elasticity, min_margin, max_margin, updated_at, \
                 stock_observed_at, unit_cost_observed_at) ",
            );
            qb.push_values(chunk, |mut b, p| {
                b.push_bind(p.id.clone())
                    .push_bind(p.name.clone())
                    .push_bind(p.category.clone())
                    .push_bind(p.unit_cost)
                    .push_bind(p.base_price)
                    .push_bind(p.stock)
                    .push_bind(p.target_stock)
                    .push_bind(p.elasticity)
                    .push_bind(p.min_margin)
                    .push_bind(p.max_margin)
                    .push_bind(p.updated_at)
                    // The stock and cost stated as of `updated_at`: a market
                    // event observed before it does not replace them.
                    .push_bind(p.updated_at)
                    .push_bind(p.updated_at);
            });
            qb.push(
                " ON CONFLICT (id) DO UPDATE SET name = excluded.name, \
                 category = excluded.category, unit_cost = excluded.unit_cost, \
                 base_price = excluded.base_price, stock = excluded.stock, \
                 target_stock = excluded.target_stock, elasticity = excluded.elasticity, \
                 min_margin = excluded.min_margin, max_margin = excluded.max_margin, \
                 updated_at = excluded.updated_at, \
                 stock_observed_at = excluded.stock_observed_at, \
                 unit_cost_observed_at = excluded.unit_cost_observed_at",
            );
            written += qb.build().execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(written)
    }

    async fn record_competitor_prices(&self, rows: &[CompetitorPrice]) -> Result<u64, StoreError> {
        super::refuse_nul(rows.iter().flat_map(|r| {
            [
                ("product_id", r.product_id.as_str()),
                ("competitor", r.competitor.as_str()),
            ]
        }))?;
        let mut tx = self.pool.begin().await?;
        let written = upsert_competitor_prices(&mut tx, rows).await?;
        tx.commit().await?;
        Ok(written)
    }

    async fn record_demand(&self, rows: &[DemandSignal]) -> Result<u64, StoreError> {
        super::refuse_nul(rows.iter().map(|r| ("product_id", r.product_id.as_str())))?;
        let mut tx = self.pool.begin().await?;
        let written = upsert_demand(&mut tx, rows).await?;
        tx.commit().await?;
        Ok(written)
    }

    async fn apply_market_updates(&self, u: &MarketUpdates) -> Result<(), StoreError> {
        super::refuse_nul_in_updates(u)?;
        let statements = u.competitor_prices.len().div_ceil(INSERT_CHUNK)
            + u.demand.len().div_ceil(INSERT_CHUNK)
            + u.stock.len()
            + u.unit_cost.len();
        if statements <= 1 {
            // One statement is atomic by itself: no BEGIN and COMMIT, each a
            // round trip to the connection's thread (a lone event's case).
            let mut conn = self.pool.acquire().await?;
            return Ok(write_market_updates(&mut conn, u).await?);
        }
        let mut tx = self.pool.begin().await?;
        write_market_updates(&mut tx, u).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn existing_ids(&self, ids: &[String]) -> Result<HashSet<String>, StoreError> {
        let mut out = HashSet::with_capacity(ids.len());
        for chunk in ids.chunks(INSERT_CHUNK) {
            let mut qb: QueryBuilder<Sqlite> =
                QueryBuilder::new("SELECT id FROM products WHERE id IN (");
            let mut sep = qb.separated(", ");
            for id in chunk {
                sep.push_bind(id.clone());
            }
            qb.push(")");
            for row in qb.build().fetch_all(&self.pool).await? {
                out.insert(row.try_get::<String, _>(0)?);
            }
        }
        Ok(out)
    }

    async fn count_products(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM products")
            .fetch_one(&self.pool)
            .await?;
        Ok(n.max(0) as u64)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
