//! The pricing rules: one pure, deterministic function.
//!
//! [`compute_price`] takes a [`Product`] and its [`MarketSignals`] and
//! returns the product's price before any per-customer adjustment. It reads
//! no clock, no randomness and no global state, so the same inputs give the
//! same price in every process: that is what lets the api, the worker and a
//! replica on another machine agree, and what makes a cached price valid.
//!
//! The formula, step by step (docs/pricing.md has the same text):
//!
//! 1. **Competition.** With a lowest competitor price `c`, move half-way
//!    from the base price `b` towards it: `p₁ = b + 0.5 × (c − b)`.
//!    Without one, `p₁ = b`.
//! 2. **Inventory.** With stock `s` and target `t`, the factor
//!    `f_inv = clamp(1 + 0.2 × (1 − s / t), 0.85, 1.15)`: scarce stock
//!    raises the price, overstock lowers it.
//! 3. **Demand.** With demand index `d` (1.0 = normal, clamped to
//!    `[0.1, 10]`) and elasticity `e`, the factor
//!    `f_dem = clamp(d^(1/e), 0.80, 1.25)`: the less elastic the product,
//!    the more demand moves its price.
//! 4. **Margin band.** `raw = p₁ × f_inv × f_dem` is clamped to
//!    `[unit_cost × (1 + min_margin), unit_cost × (1 + max_margin)]` and
//!    rounded to whole cents, rounding the band's ends inwards so that the
//!    rounded price never leaves the band.
//!
//! The prime-member discount ([`PRIME_DISCOUNT_RATE`]) is applied after this,
//! per request, by [`customer_price`]; it is never part of a cached value.

use crate::domain::{MarketSignals, Product};

/// How far the price moves towards the lowest competitor price (0 = ignore
/// competitors, 1 = match them).
pub const COMPETITION_WEIGHT: f64 = 0.5;

/// How strongly the stock-to-target ratio moves the price.
pub const INVENTORY_SENSITIVITY: f64 = 0.2;

/// Bounds of the inventory factor, so that an empty or flooded warehouse
/// moves the price by at most 15%.
pub const INVENTORY_FACTOR_RANGE: (f64, f64) = (0.85, 1.15);

/// Bounds of the demand factor.
pub const DEMAND_FACTOR_RANGE: (f64, f64) = (0.80, 1.25);

/// Bounds the demand index is clamped to before use, so that a bad signal
/// cannot produce an infinite or zero factor.
pub const DEMAND_INDEX_RANGE: (f64, f64) = (0.1, 10.0);

/// Discount for prime members, applied after the cache read.
pub const PRIME_DISCOUNT_RATE: f64 = 0.05;

/// Currency of every price this service returns.
pub const CURRENCY: &str = "USD";

/// Tolerance used when rounding the band's ends to cents, so that
/// `110.00000000000001` counts as 110.00 rather than 110.01.
const CENT_EPSILON: f64 = 1e-6;

/// The margin band of a product, in whole cents: `(floor, ceiling)`.
///
/// Ends are rounded inwards. If the band is narrower than one cent the floor
/// wins, since selling below the minimum margin is the worse error.
pub fn margin_band_cents(product: &Product) -> (i64, i64) {
    let floor = product.unit_cost * (1.0 + product.min_margin) * 100.0;
    let ceiling = product.unit_cost * (1.0 + product.max_margin) * 100.0;
    let lo = (floor - CENT_EPSILON).ceil() as i64;
    let hi = ((ceiling + CENT_EPSILON).floor() as i64).max(lo);
    (lo, hi)
}

/// The product's price, in cents, before any per-customer adjustment.
pub fn compute_price_cents(product: &Product, signals: &MarketSignals) -> i64 {
    let base = product.base_price;
    let competitive = match signals.lowest_competitor_price {
        Some(c) if c.is_finite() && c > 0.0 => base + COMPETITION_WEIGHT * (c - base),
        _ => base,
    };

    let stock_ratio = product.stock.max(0) as f64 / product.target_stock.max(1) as f64;
    let inventory = (1.0 + INVENTORY_SENSITIVITY * (1.0 - stock_ratio))
        .clamp(INVENTORY_FACTOR_RANGE.0, INVENTORY_FACTOR_RANGE.1);

    let demand_index = match signals.demand_index {
        Some(d) if d.is_finite() => d.clamp(DEMAND_INDEX_RANGE.0, DEMAND_INDEX_RANGE.1),
        _ => 1.0,
    };
    let elasticity = if product.elasticity.is_finite() && product.elasticity > 0.0 {
        product.elasticity
    } else {
        1.0
    };
    let demand = demand_index
        .powf(1.0 / elasticity)
        .clamp(DEMAND_FACTOR_RANGE.0, DEMAND_FACTOR_RANGE.1);

    let raw_cents = competitive * inventory * demand * 100.0;
    let (lo, hi) = margin_band_cents(product);
    let cents = if raw_cents.is_finite() {
        raw_cents.round() as i64
    } else {
        lo
    };
    cents.clamp(lo, hi)
}

/// The product's price before any per-customer adjustment, in currency units.
pub fn compute_price(product: &Product, signals: &MarketSignals) -> f64 {
    cents_to_amount(compute_price_cents(product, signals))
}

/// The discount rate a customer gets.
pub fn discount_rate(is_prime_member: bool) -> f64 {
    if is_prime_member {
        PRIME_DISCOUNT_RATE
    } else {
        0.0
    }
}

/// Applies the customer's discount to a price in cents, rounding to the nearest cent.
pub fn customer_price_cents(price_cents: i64, is_prime_member: bool) -> i64 {
    let rate = discount_rate(is_prime_member);
    (price_cents as f64 * (1.0 - rate)).round() as i64
}

/// Applies the customer's discount to a price, in currency units.
pub fn customer_price(price: f64, is_prime_member: bool) -> f64 {
    cents_to_amount(customer_price_cents(
        amount_to_cents(price),
        is_prime_member,
    ))
}

/// Converts whole cents to a currency amount.
pub fn cents_to_amount(cents: i64) -> f64 {
    cents as f64 / 100.0
}

/// Converts a currency amount to whole cents, rounding to the nearest.
pub fn amount_to_cents(amount: f64) -> i64 {
    (amount * 100.0).round() as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn product(unit_cost: f64, base_price: f64) -> Product {
        Product {
            id: "P-1".into(),
            name: "Widget".into(),
            category: "tools".into(),
            unit_cost,
            base_price,
            stock: 100,
            target_stock: 100,
            elasticity: 1.0,
            min_margin: 0.10,
            max_margin: 0.50,
            updated_at: chrono::DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn neutral_signals_keep_the_base_price() {
        let p = product(10.0, 12.5);
        assert_eq!(compute_price_cents(&p, &MarketSignals::default()), 1250);
    }

    #[test]
    fn cheaper_competitor_pulls_the_price_half_way_down() {
        let p = product(10.0, 14.0);
        let s = MarketSignals {
            lowest_competitor_price: Some(12.0),
            demand_index: None,
        };
        assert_eq!(compute_price_cents(&p, &s), 1300);
    }

    #[test]
    fn price_is_clamped_to_the_margin_band() {
        let p = product(10.0, 100.0);
        assert_eq!(compute_price_cents(&p, &MarketSignals::default()), 1500);
        let p = product(10.0, 1.0);
        assert_eq!(compute_price_cents(&p, &MarketSignals::default()), 1100);
    }

    #[test]
    fn band_floor_is_not_pushed_up_by_float_noise() {
        // 100 × 1.1 is 110.00000000000001 in binary floating point.
        let p = product(100.0, 1.0);
        assert_eq!(margin_band_cents(&p).0, 11000);
    }

    #[test]
    fn scarce_stock_raises_and_overstock_lowers() {
        let mut p = product(10.0, 12.0);
        p.stock = 0;
        let scarce = compute_price_cents(&p, &MarketSignals::default());
        p.stock = 300;
        let flooded = compute_price_cents(&p, &MarketSignals::default());
        assert!(scarce > 1200 && flooded < 1200, "{scarce} {flooded}");
    }

    #[test]
    fn prime_discount_is_five_percent() {
        assert_eq!(customer_price_cents(2000, true), 1900);
        assert_eq!(customer_price_cents(2000, false), 2000);
        assert_eq!(customer_price(19.99, true), 18.99);
    }

    fn arb_product() -> impl Strategy<Value = Product> {
        (
            0.01f64..10_000.0,
            0.01f64..20_000.0,
            0i64..10_000,
            1i64..10_000,
            0.05f64..20.0,
            0.0f64..1.0,
            0.0f64..2.0,
        )
            .prop_map(|(cost, base, stock, target, el, min_m, extra)| Product {
                id: "P-1".into(),
                name: "x".into(),
                category: "c".into(),
                unit_cost: cost,
                base_price: base,
                stock,
                target_stock: target,
                elasticity: el,
                min_margin: min_m,
                max_margin: min_m + extra,
                updated_at: chrono::DateTime::UNIX_EPOCH,
            })
    }

    fn arb_signals() -> impl Strategy<Value = MarketSignals> {
        (
            proptest::option::of(0.01f64..50_000.0),
            proptest::option::of(0.0f64..20.0),
        )
            .prop_map(|(c, d)| MarketSignals {
                lowest_competitor_price: c,
                demand_index: d,
            })
    }

    proptest! {
        #[test]
        fn price_is_always_inside_the_margin_band(p in arb_product(), s in arb_signals()) {
            let cents = compute_price_cents(&p, &s);
            let floor = p.unit_cost * (1.0 + p.min_margin) * 100.0;
            let ceiling = p.unit_cost * (1.0 + p.max_margin) * 100.0;
            // A band narrower than one cent resolves to its floor, rounded up.
            if ceiling - floor >= 1.0 {
                prop_assert!(cents as f64 >= floor - 1e-6, "{cents} < {floor}");
                prop_assert!(cents as f64 <= ceiling + 1e-6, "{cents} > {ceiling}");
            } else {
                prop_assert!(cents as f64 >= floor - 1e-6);
                prop_assert!((cents as f64) < floor + 1.0);
            }
        }

        #[test]
        fn price_never_rises_when_the_competitor_price_falls(
            p in arb_product(),
            demand in proptest::option::of(0.0f64..20.0),
            high in 0.02f64..50_000.0,
            cut in 0.0f64..1.0,
        ) {
            let low = high * cut;
            let at = |c: f64| compute_price_cents(&p, &MarketSignals {
                lowest_competitor_price: Some(c),
                demand_index: demand,
            });
            prop_assert!(at(low.max(0.01)) <= at(high));
        }

        #[test]
        fn equal_inputs_give_equal_prices(p in arb_product(), s in arb_signals()) {
            let copy = p.clone();
            prop_assert_eq!(compute_price_cents(&p, &s), compute_price_cents(&copy, &s));
        }

        #[test]
        fn prime_price_is_never_above_the_regular_price(cents in 1i64..100_000_000) {
            prop_assert!(customer_price_cents(cents, true) <= customer_price_cents(cents, false));
        }
    }
}
