//! Request and response bodies of the price endpoints.
//!
//! The request shape is the original service's, so its clients keep working:
//! `{"product_id", "user_location"?, "is_prime_member"?}`. Unknown fields are
//! refused, so a typo (`is_prime`) is an error, not a silently full price.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;

/// Most product ids one batch request may ask for.
pub const MAX_BATCH_IDS: usize = 1_000;

/// Longest accepted `user_location`.
pub const MAX_LOCATION_LEN: usize = 128;

/// `POST /api/v1/price`.
// Its strings borrow from the request body where they can (they are copied
// only when they hold an escape), so reading a price request allocates
// nothing.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceRequest<'a> {
    /// Product id: 1–64 characters of `[A-Za-z0-9_.:-]`.
    #[schema(example = "P-42", value_type = String)]
    #[serde(borrow)]
    pub product_id: Cow<'a, str>,
    /// Where the customer is; accepted for compatibility and logged, not priced.
    #[serde(default, borrow, deserialize_with = "borrowed_option")]
    #[schema(example = "US-NY", value_type = Option<String>)]
    pub user_location: Option<Cow<'a, str>>,
    /// Prime members get a 5% discount, applied after the cache.
    #[serde(default)]
    pub is_prime_member: bool,
}

/// An optional string, borrowed from the input where it can be: serde
/// borrows a `Cow` field of a struct, but not one inside an `Option`.
fn borrowed_option<'de: 'a, 'a, D>(de: D) -> Result<Option<Cow<'a, str>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Borrowed<'a>>::deserialize(de)?.map(|b| b.0))
}

/// Query of `GET /api/v1/price/{product_id}`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PriceQuery {
    /// Prime members get a 5% discount.
    #[serde(default)]
    pub is_prime_member: bool,
    /// Where the customer is; accepted for compatibility, not priced.
    #[serde(default)]
    pub user_location: Option<String>,
}

/// `POST /api/v1/prices/batch`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// 1 to 1,000 product ids; duplicates are answered once.
    pub product_ids: Vec<String>,
    /// Prime members get a 5% discount.
    #[serde(default)]
    pub is_prime_member: bool,
}

/// Where a price came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PriceSource {
    /// Read from the Redis cache.
    Cache,
    /// Computed from the catalog store (a cache miss).
    Database,
}

/// A price, as returned to a customer.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct PriceDetail {
    /// The product.
    #[schema(example = "P-42")]
    pub product_id: String,
    /// What this customer pays: `base_price × (1 − discount_rate)`, in whole cents.
    #[schema(example = 18.99)]
    pub final_price: f64,
    /// The product's dynamic price before any per-customer adjustment
    /// (the value that is cached).
    #[schema(example = 19.99)]
    pub base_price: f64,
    /// The customer's discount: 0.05 for prime members, else 0.
    #[schema(example = 0.05)]
    pub discount_rate: f64,
    /// `cache` on a hit, `database` on a miss.
    pub source: PriceSource,
    /// ISO 4217 currency code.
    #[schema(example = "USD")]
    pub currency: String,
    /// When the dynamic price was computed.
    pub calculated_at: DateTime<Utc>,
}

/// Answer of `POST /api/v1/prices/batch`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct BatchResponse {
    /// Prices of the known products, in request order.
    pub prices: Vec<PriceDetail>,
    /// Requested ids that are not in the catalog.
    pub not_found: Vec<String>,
}

/// Checks a product id and names the field on failure.
pub fn check_product_id(field: &str, id: &str) -> Result<(), ApiError> {
    shared::domain::validate_product_id(id)
        .map_err(|e| ApiError::field(field, format!("{field} {e}")))
}

/// Checks an optional location.
pub fn check_location(location: Option<&str>) -> Result<(), ApiError> {
    // Printable ASCII (nearly every location) is checked by its bytes.
    let printable_ascii =
        |loc: &str| loc.len() <= MAX_LOCATION_LEN && loc.bytes().all(|b| (0x20..0x7f).contains(&b));
    match location {
        Some(loc)
            if !printable_ascii(loc)
                && (loc.chars().count() > MAX_LOCATION_LEN
                    || loc.chars().any(char::is_control)) =>
        {
            Err(ApiError::field(
                "user_location",
                format!("user_location must be at most {MAX_LOCATION_LEN} printable characters"),
            ))
        }
        _ => Ok(()),
    }
}

impl BatchRequest {
    /// Validates the request and returns its ids without duplicates, in order.
    pub fn unique_ids(&self) -> Result<Vec<String>, ApiError> {
        if self.product_ids.is_empty() {
            return Err(ApiError::field(
                "product_ids",
                "product_ids must not be empty",
            ));
        }
        if self.product_ids.len() > MAX_BATCH_IDS {
            return Err(ApiError::field(
                "product_ids",
                format!("product_ids holds at most {MAX_BATCH_IDS} ids"),
            ));
        }
        let mut seen = std::collections::HashSet::with_capacity(self.product_ids.len());
        let mut ids = Vec::with_capacity(self.product_ids.len());
        for (i, id) in self.product_ids.iter().enumerate() {
            check_product_id(&format!("product_ids[{i}]"), id)?;
            if seen.insert(id.as_str()) {
                ids.push(id.clone());
            }
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_strings_borrow_from_the_body_unless_escaped() {
        let plain = br#"{"product_id":"P-1","user_location":"US-NY"}"#;
        let req: PriceRequest<'_> = serde_json::from_slice(plain).unwrap();
        assert!(matches!(req.product_id, Cow::Borrowed("P-1")));
        assert!(matches!(req.user_location, Some(Cow::Borrowed("US-NY"))));
        assert!(!req.is_prime_member);

        let escaped =
            br#"{"product_id":"P\u002d1","user_location":"S\u00e3o Paulo","is_prime_member":true}"#;
        let req: PriceRequest<'_> = serde_json::from_slice(escaped).unwrap();
        assert_eq!(req.product_id, "P-1");
        assert_eq!(req.user_location.as_deref(), Some("São Paulo"));
        assert!(req.is_prime_member);

        let absent: PriceRequest<'_> = serde_json::from_slice(br#"{"product_id":"P-1"}"#).unwrap();
        assert_eq!(absent.user_location, None);
        let null: PriceRequest<'_> =
            serde_json::from_slice(br#"{"product_id":"P-1","user_location":null}"#).unwrap();
        assert_eq!(null.user_location, None);
    }

    #[test]
    fn locations_are_limited_by_characters_and_refused_with_control_characters() {
        let accepted = [
            String::new(),
            "US-NY".into(),
            "x".repeat(MAX_LOCATION_LEN),
            // 128 characters but 256 bytes: the limit counts characters.
            "é".repeat(MAX_LOCATION_LEN),
            "São Paulo, BR".into(),
        ];
        for loc in &accepted {
            assert!(check_location(Some(loc)).is_ok(), "{loc:?}");
        }
        let refused = [
            "x".repeat(MAX_LOCATION_LEN + 1),
            "é".repeat(MAX_LOCATION_LEN + 1),
            "US\tNY".into(),
            "US\u{7f}".into(),
            "São\u{85}Paulo".into(),
        ];
        for loc in &refused {
            assert!(check_location(Some(loc)).is_err(), "{loc:?}");
        }
        assert!(check_location(None).is_ok());
    }
}
