//! Writers racing on one catalog from two clients, as listeners on two
//! machines do: whatever order their transactions commit in, every signal
//! ends at its latest observation.

use std::sync::Arc;

use chrono::{Duration, Utc};
use shared::store::{CatalogStore, CompetitorPrice, DemandSignal, MarketUpdates, Observed};

use crate::contract;
use crate::helpers::{Backend, TestStore, micros};

contract!(racing_writers_on_two_clients_keep_every_latest_observation);

/// Products the observations are about.
const PRODUCTS: usize = 8;

/// Observations, each of a few products, at distinct times.
const OBSERVATIONS: u64 = 80;

/// Concurrent writers; each applies every observation once, in its own
/// shuffled order, so each is applied this many times.
const WRITERS: usize = 6;

/// Observations per transaction.
const PER_BATCH: usize = 4;

/// Which products observation `k` is about (two or three of them).
fn products_of(k: u64) -> Vec<String> {
    let mut ids: Vec<String> = (0..PRODUCTS as u64)
        .filter(|p| (k * 7 + p * 3) % 5 < 2)
        .map(|p| format!("P-{}", p + 1))
        .collect();
    if ids.is_empty() {
        ids.push(format!("P-{}", k % PRODUCTS as u64 + 1));
    }
    ids
}

/// Observation `k`: every signal of its products, with values that say `k`.
fn observation(k: u64, t0: chrono::DateTime<Utc>) -> MarketUpdates {
    let at = t0 + Duration::milliseconds(k as i64);
    let mut u = MarketUpdates::default();
    for id in products_of(k) {
        u.competitor_prices.push(CompetitorPrice {
            product_id: id.clone(),
            competitor: "acme".into(),
            price: 0.01 * (k + 1) as f64,
            observed_at: at,
        });
        u.demand.push(DemandSignal {
            product_id: id.clone(),
            demand_index: 0.1 + k as f64 / 100.0,
            observed_at: at,
        });
        u.stock.push(Observed {
            product_id: id.clone(),
            value: k as i64,
            observed_at: at,
        });
        u.unit_cost.push(Observed {
            product_id: id,
            value: 1.0 + k as f64,
            observed_at: at,
        });
    }
    u
}

fn merge(batch: impl IntoIterator<Item = MarketUpdates>) -> MarketUpdates {
    let mut merged = MarketUpdates::default();
    for u in batch {
        merged.append(u);
    }
    merged
}

async fn racing_writers_on_two_clients_keep_every_latest_observation(backend: Backend) {
    // Arrange: two clients with pools of their own, as on two machines.
    let s = TestStore::seeded(backend, PRODUCTS as u64).await;
    let clients: [Arc<dyn CatalogStore>; 2] = [s.store.clone(), s.another_client().await];
    let t0 = micros(Utc::now());

    // Act: every writer applies every observation, in its own order, in
    // batches of several products, all at once.
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = clients[w % 2].clone();
            tokio::spawn(async move {
                let mut order: Vec<u64> = (0..OBSERVATIONS).collect();
                fastrand::Rng::with_seed(w as u64 + 1).shuffle(&mut order);
                for batch in order.chunks(PER_BATCH) {
                    let updates = merge(batch.iter().map(|k| observation(*k, t0)));
                    store.apply_market_updates(&updates).await.unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }

    // Assert: each product holds what its latest observation said.
    for p in 1..=PRODUCTS {
        let id = format!("P-{p}");
        let latest = (0..OBSERVATIONS)
            .filter(|k| products_of(*k).contains(&id))
            .max()
            .unwrap();
        let product = s.store.product(&id).await.unwrap().unwrap();
        let signals = s.store.market_signals(&id).await.unwrap();
        assert_eq!(product.stock, latest as i64, "{id} stock");
        assert_eq!(product.unit_cost, 1.0 + latest as f64, "{id} unit cost");
        assert_eq!(
            signals.demand_index,
            Some(0.1 + latest as f64 / 100.0),
            "{id} demand"
        );
        assert_eq!(
            signals.lowest_competitor_price,
            Some(0.01 * (latest + 1) as f64),
            "{id} competitor price"
        );
    }
}
