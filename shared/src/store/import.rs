//! Loads a real catalog from CSV (`api import FILE.csv`).
//!
//! The file needs a header row. Columns, in any order:
//!
//! | column | required | meaning |
//! |---|---|---|
//! | `id` | yes | product id, 1–64 characters of `[A-Za-z0-9_.:-]` |
//! | `name` | yes | display name |
//! | `category` | yes | category |
//! | `unit_cost` | yes | cost of one unit, > 0 |
//! | `base_price` | yes | list price, > 0 |
//! | `stock` | yes | units on hand, ≥ 0 |
//! | `target_stock` | yes | units wanted on hand, > 0 |
//! | `elasticity` | no (1.0) | price elasticity magnitude, in (0, 100] |
//! | `min_margin` | no (0.10) | lowest margin over unit cost |
//! | `max_margin` | no (0.50) | highest margin over unit cost, ≥ `min_margin` |
//!
//! The whole file is parsed and validated before anything is written, so a
//! bad row (reported with its line number) leaves the catalog untouched.
//! Existing products with the same id are replaced.

use std::io::Read;

use serde::Deserialize;

use super::{CatalogStore, StoreError};
use crate::domain::{DEFAULT_MAX_MARGIN, DEFAULT_MIN_MARGIN, Product};

/// Products written per transaction while importing.
const IMPORT_BATCH: usize = 5_000;

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A row could not be parsed or failed validation; nothing was written.
    #[error("line {line}: {reason}")]
    Row {
        /// 1-based line number in the file (the header is line 1).
        line: u64,
        /// What is wrong with the row.
        reason: String,
    },
    /// The file is not CSV with the expected header.
    #[error("invalid CSV: {0}")]
    Format(String),
    /// Writing to the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CsvRow {
    id: String,
    name: String,
    category: String,
    unit_cost: f64,
    base_price: f64,
    stock: i64,
    target_stock: i64,
    elasticity: Option<f64>,
    min_margin: Option<f64>,
    max_margin: Option<f64>,
}

/// Parses and validates a whole CSV catalog.
pub fn parse(reader: impl Read) -> Result<Vec<Product>, ImportError> {
    let mut csv = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(reader);
    let now = chrono::Utc::now();
    let mut products = Vec::new();
    for result in csv.deserialize::<CsvRow>() {
        let row = result.map_err(|e| match e.position() {
            Some(pos) => ImportError::Row {
                line: pos.line(),
                reason: e.to_string(),
            },
            None => ImportError::Format(e.to_string()),
        })?;
        let product = Product {
            id: row.id,
            name: row.name,
            category: row.category,
            unit_cost: row.unit_cost,
            base_price: row.base_price,
            stock: row.stock,
            target_stock: row.target_stock,
            elasticity: row.elasticity.unwrap_or(1.0),
            min_margin: row.min_margin.unwrap_or(DEFAULT_MIN_MARGIN),
            max_margin: row.max_margin.unwrap_or(DEFAULT_MAX_MARGIN),
            updated_at: now,
        };
        // Header is line 1, so the n-th product is on line n + 1.
        let line = products.len() as u64 + 2;
        product.validate().map_err(|e| ImportError::Row {
            line,
            reason: e.to_string(),
        })?;
        products.push(product);
    }
    Ok(products)
}

/// Parses, validates and writes a CSV catalog. Returns the products written.
pub async fn import(store: &dyn CatalogStore, reader: impl Read) -> Result<u64, ImportError> {
    let products = parse(reader)?;
    for chunk in products.chunks(IMPORT_BATCH) {
        store.upsert_products(chunk).await?;
    }
    Ok(products.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "id,name,category,unit_cost,base_price,stock,target_stock,elasticity,min_margin,max_margin\n";

    #[test]
    fn parses_rows_and_applies_defaults() {
        let csv = "id,name,category,unit_cost,base_price,stock,target_stock\nSKU-1,Kettle,home,10,14.5,20,40\n";
        let products = parse(csv.as_bytes()).expect("valid csv");
        assert_eq!(products.len(), 1);
        assert_eq!(products[0].id, "SKU-1");
        assert_eq!(products[0].elasticity, 1.0);
        assert_eq!(products[0].min_margin, DEFAULT_MIN_MARGIN);
        assert_eq!(products[0].max_margin, DEFAULT_MAX_MARGIN);
    }

    #[test]
    fn reports_the_line_of_a_bad_row() {
        let csv = format!("{HEADER}A,a,c,1,2,3,4,1,0.1,0.5\nB,b,c,-1,2,3,4,1,0.1,0.5\n");
        match parse(csv.as_bytes()) {
            Err(ImportError::Row { line, reason }) => {
                assert_eq!(line, 3);
                assert!(reason.contains("unit_cost"), "{reason}");
            }
            other => panic!("expected a row error, got {other:?}"),
        }
    }

    #[test]
    fn refuses_unknown_columns_and_bad_numbers() {
        let unknown =
            "id,name,category,unit_cost,base_price,stock,target_stock,colour\nA,a,c,1,2,3,4,red\n";
        assert!(parse(unknown.as_bytes()).is_err());
        let bad = format!("{HEADER}A,a,c,one,2,3,4,1,0.1,0.5\n");
        assert!(matches!(
            parse(bad.as_bytes()),
            Err(ImportError::Row { line: 2, .. })
        ));
        let margins = format!("{HEADER}A,a,c,1,2,3,4,1,0.5,0.1\n");
        assert!(matches!(
            parse(margins.as_bytes()),
            Err(ImportError::Row { line: 2, .. })
        ));
    }
}
