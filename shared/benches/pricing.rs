//! Benchmarks of the pricing rules and the cache entry codec: the CPU work
//! of every cache miss (pricing) and every hit (decode).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use shared::cache::CachedPrice;
use shared::domain::MarketSignals;
use shared::pricing::compute_price_cents;
use shared::store::seed::synthetic;

fn pricing(c: &mut Criterion) {
    let row = synthetic(42);
    let signals = MarketSignals {
        lowest_competitor_price: row.competitor_prices.first().map(|c| c.price),
        demand_index: Some(1.3),
    };
    c.bench_function("compute_price_cents", |b| {
        b.iter(|| compute_price_cents(black_box(&row.product), black_box(&signals)))
    });

    let rows: Vec<_> = (1..=1_000).map(synthetic).collect();
    c.bench_function("compute_price_cents x1000 (varied catalog)", |b| {
        b.iter(|| {
            rows.iter()
                .map(|r| compute_price_cents(black_box(&r.product), black_box(&signals)))
                .sum::<i64>()
        })
    });

    let entry = CachedPrice::new("P-42", 12_345, chrono::Utc::now());
    let raw = entry.encode();
    c.bench_function("cached_price_encode", |b| {
        b.iter(|| black_box(&entry).encode())
    });
    c.bench_function("cached_price_decode_and_validate", |b| {
        b.iter(|| CachedPrice::decode("P-42", black_box(raw.as_bytes())))
    });
}

criterion_group!(benches, pricing);
criterion_main!(benches);
