//! Catalog types and the rules for what a valid value is.
//!
//! A [`Product`] is a catalog row; [`MarketSignals`] is what the market told
//! us about it (the lowest competitor price and a demand index). The pricing
//! rules in [`crate::pricing`] take both and nothing else, which is what makes
//! a price reproducible.

use serde::{Deserialize, Serialize};

/// Longest accepted product id, in bytes.
pub const MAX_PRODUCT_ID_LEN: usize = 64;

/// Default lower margin bound: the price is at least `unit_cost × 1.10`.
pub const DEFAULT_MIN_MARGIN: f64 = 0.10;

/// Default upper margin bound: the price is at most `unit_cost × 1.50`.
pub const DEFAULT_MAX_MARGIN: f64 = 0.50;

/// Why a product id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProductIdError {
    /// The id is the empty string.
    #[error("must not be empty")]
    Empty,
    /// The id is longer than [`MAX_PRODUCT_ID_LEN`].
    #[error("must be at most {MAX_PRODUCT_ID_LEN} characters")]
    TooLong,
    /// The id holds a character outside `[A-Za-z0-9_.:-]`.
    #[error("must contain only the characters A-Z a-z 0-9 _ . : -")]
    BadCharacter,
}

/// Checks a product id: 1–64 characters of `[A-Za-z0-9_.:-]`.
///
/// The alphabet keeps ids safe to embed in Redis keys, URLs and log lines
/// without escaping.
pub fn validate_product_id(id: &str) -> Result<(), ProductIdError> {
    if id.is_empty() {
        return Err(ProductIdError::Empty);
    }
    if id.len() > MAX_PRODUCT_ID_LEN {
        return Err(ProductIdError::TooLong);
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
    {
        return Err(ProductIdError::BadCharacter);
    }
    Ok(())
}

/// One catalog row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    /// Stable identifier, e.g. `P-42`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Free-form category, e.g. `electronics`.
    pub category: String,
    /// What one unit costs us; the margin band is relative to it.
    pub unit_cost: f64,
    /// List price before any market adjustment.
    pub base_price: f64,
    /// Units on hand.
    pub stock: i64,
    /// Units we want on hand; stock above it pushes the price down.
    pub target_stock: i64,
    /// Price elasticity of demand, as a positive magnitude: higher means
    /// customers react more to price, so demand moves the price less.
    pub elasticity: f64,
    /// Lowest allowed margin over unit cost (0.10 = 10%).
    pub min_margin: f64,
    /// Highest allowed margin over unit cost (0.50 = 50%).
    pub max_margin: f64,
    /// When the row last changed (RFC 3339).
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// Why a product row was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ProductError {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl Product {
    /// Checks the invariants the pricing rules rely on.
    pub fn validate(&self) -> Result<(), ProductError> {
        let err = |field, reason: &str| {
            Err(ProductError {
                field,
                reason: reason.to_string(),
            })
        };
        if let Err(e) = validate_product_id(&self.id) {
            return err("id", &e.to_string());
        }
        // PostgreSQL's text cannot hold NUL; refused here, with its field,
        // before any store sees it.
        if self.name.contains('\0') {
            return err("name", "must not contain a NUL character");
        }
        if self.category.contains('\0') {
            return err("category", "must not contain a NUL character");
        }
        if !(self.unit_cost.is_finite() && self.unit_cost > 0.0) {
            return err("unit_cost", "must be a positive number");
        }
        if !(self.base_price.is_finite() && self.base_price > 0.0) {
            return err("base_price", "must be a positive number");
        }
        if self.stock < 0 {
            return err("stock", "must not be negative");
        }
        if self.target_stock <= 0 {
            return err("target_stock", "must be positive");
        }
        if !(self.elasticity.is_finite() && self.elasticity > 0.0 && self.elasticity <= 100.0) {
            return err("elasticity", "must be in (0, 100]");
        }
        if !(self.min_margin.is_finite() && (0.0..=10.0).contains(&self.min_margin)) {
            return err("min_margin", "must be in [0, 10]");
        }
        if !(self.max_margin.is_finite() && (0.0..=10.0).contains(&self.max_margin)) {
            return err("max_margin", "must be in [0, 10]");
        }
        if self.max_margin < self.min_margin {
            return err("max_margin", "must not be below min_margin");
        }
        Ok(())
    }
}

/// What the market currently says about one product.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MarketSignals {
    /// The lowest latest price among all competitors, if any is known.
    pub lowest_competitor_price: Option<f64>,
    /// Demand index: 1.0 is normal, 2.0 twice the usual demand. `None` means normal.
    pub demand_index: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_ids_follow_the_alphabet() {
        assert_eq!(validate_product_id("P-1"), Ok(()));
        assert_eq!(validate_product_id("sku:abc_1.2"), Ok(()));
        assert_eq!(validate_product_id(""), Err(ProductIdError::Empty));
        assert_eq!(
            validate_product_id(&"a".repeat(65)),
            Err(ProductIdError::TooLong)
        );
        assert_eq!(validate_product_id(&"a".repeat(64)), Ok(()));
        assert_eq!(
            validate_product_id("a b"),
            Err(ProductIdError::BadCharacter)
        );
        assert_eq!(validate_product_id("é"), Err(ProductIdError::BadCharacter));
    }
}
