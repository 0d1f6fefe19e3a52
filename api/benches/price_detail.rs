//! Benchmarks of JSON encode and decode of the API's bodies: the
//! serialisation work on every request of the read path. The api writes
//! its price answers with its own writer (`price_detail_write_json`);
//! `price_detail_encode` is serde's, for comparison.

use std::hint::black_box;

use api::model::{PriceDetail, PriceRequest, PriceSource};
use api::{WriteJson as _, parse_object};
use criterion::{Criterion, criterion_group, criterion_main};

fn json(c: &mut Criterion) {
    let detail = PriceDetail {
        product_id: "P-42".into(),
        final_price: 18.99,
        base_price: 19.99,
        discount_rate: 0.05,
        source: PriceSource::Cache,
        currency: "USD".into(),
        calculated_at: chrono::Utc::now(),
    };
    let encoded = serde_json::to_vec(&detail).expect("encode");
    c.bench_function("price_detail_encode", |b| {
        b.iter(|| serde_json::to_vec(black_box(&detail)))
    });
    // What the api writes (its own writer, the same bytes as serde's).
    c.bench_function("price_detail_write_json", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(224);
            black_box(&detail).write_json(&mut out);
            out
        })
    });
    c.bench_function("price_detail_decode", |b| {
        b.iter(|| serde_json::from_slice::<PriceDetail>(black_box(&encoded)))
    });
    let request = br#"{"product_id":"P-42","user_location":"US-NY","is_prime_member":true}"#;
    c.bench_function("price_request_decode (with field-path errors)", |b| {
        b.iter(|| parse_object::<PriceRequest<'_>>(black_box(request)))
    });
}

criterion_group!(benches, json);
criterion_main!(benches);
