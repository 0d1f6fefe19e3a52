//! The embedded default: the catalog in one SQLite file, through `sqlx`.
//!
//! The file (and its folder) is created if missing and the migrations in
//! `shared/migrations` run on connect. WAL mode lets readers (the api) and a
//! writer (seed, import, the listener) work at once.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

use super::{CatalogStore, CompetitorPrice, DemandSignal, StoreError};
use crate::domain::{MarketSignals, Product};

/// Rows per multi-row INSERT. 11 columns × 500 rows stays well under
/// SQLite's limit of 32,766 bound parameters per statement.
const INSERT_CHUNK: usize = 500;

/// How long a writer waits for another writer's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a request waits for a free pooled connection before failing.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// A catalog in SQLite.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
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
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool })
    }

    /// The underlying pool, for tests and tools that need raw SQL.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
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

fn priced_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<(Product, MarketSignals), sqlx::Error> {
    Ok((
        product_from_row(row)?,
        MarketSignals {
            lowest_competitor_price: row.try_get("lowest")?,
            demand_index: row.try_get("demand")?,
        },
    ))
}

#[async_trait]
impl CatalogStore for SqliteStore {
    async fn priced_page(
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
        let mut tx = self.pool.begin().await?;
        let mut written = 0;
        for chunk in products.chunks(INSERT_CHUNK) {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO products (id, name, category, unit_cost, base_price, stock, \
                 target_stock, elasticity, min_margin, max_margin, updated_at) ",
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
                    .push_bind(p.updated_at);
            });
            qb.push(
                " ON CONFLICT (id) DO UPDATE SET name = excluded.name, \
                 category = excluded.category, unit_cost = excluded.unit_cost, \
                 base_price = excluded.base_price, stock = excluded.stock, \
                 target_stock = excluded.target_stock, elasticity = excluded.elasticity, \
                 min_margin = excluded.min_margin, max_margin = excluded.max_margin, \
                 updated_at = excluded.updated_at",
            );
            written += qb.build().execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(written)
    }

    async fn record_competitor_prices(&self, rows: &[CompetitorPrice]) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
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
                 observed_at = excluded.observed_at",
            );
            written += qb.build().execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(written)
    }

    async fn record_demand(&self, rows: &[DemandSignal]) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
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
                 observed_at = excluded.observed_at",
            );
            written += qb.build().execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(written)
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
