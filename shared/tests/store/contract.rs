//! What every store does, tested the same way on SQLite and PostgreSQL.

use chrono::{Duration, Utc};
use futures::TryStreamExt as _;
use shared::domain::{MarketSignals, Product};
use shared::store::seed::{SEED_BATCH, synthetic};
use shared::store::{
    CatalogStore, CompetitorPrice, DemandSignal, MarketUpdates, Observed, StoreError, import,
};

use crate::contract;
use crate::helpers::{Backend, TestStore, micros};

contract!(
    reads_a_product_and_its_signals,
    seeding_spans_batches_and_reseeding_writes_the_same_rows,
    upserting_replaces_a_product_and_the_last_duplicate_wins,
    import_loads_a_csv_whole_or_not_at_all,
    hostile_text_and_ids_are_only_data,
    nul_text_is_refused_and_nul_ids_find_nothing,
    market_updates_apply_whole_or_not_at_all,
    an_older_observation_never_replaces_a_newer_one,
    a_batch_keeps_its_latest_observation_per_key,
    the_scan_pages_through_the_whole_catalog_in_id_order,
    batch_reads_find_what_exists,
    a_closed_store_is_unavailable,
);

/// The signals the seed wrote for `P-i`.
fn seeded_signals(i: u64) -> MarketSignals {
    synthetic(i).signals()
}

fn product(id: &str, name: &str) -> Product {
    Product {
        id: id.into(),
        name: name.into(),
        category: "test".into(),
        unit_cost: 10.0,
        base_price: 14.0,
        stock: 5,
        target_stock: 10,
        elasticity: 1.0,
        min_margin: 0.1,
        max_margin: 0.5,
        updated_at: micros(Utc::now()),
    }
}

async fn reads_a_product_and_its_signals(backend: Backend) {
    // Arrange
    let s = TestStore::seeded(backend, 20).await;

    // Act and Assert: every seeded product reads back as written, with the
    // lowest of its competitor prices and its demand index.
    for i in 1..=20 {
        let id = format!("P-{i}");
        let (p, signals) =
            tokio::try_join!(s.store.product(&id), s.store.market_signals(&id)).unwrap();
        assert_eq!(p, Some(synthetic(i).product), "{id}");
        assert_eq!(signals, seeded_signals(i), "{id}");
    }
    assert_eq!(s.store.product("P-21").await.unwrap(), None);
    assert_eq!(
        s.store.market_signals("P-21").await.unwrap(),
        MarketSignals::default()
    );
    assert!(
        (1..=20).any(|i| seeded_signals(i).lowest_competitor_price.is_none()),
        "some products have no competitor price"
    );
}

async fn seeding_spans_batches_and_reseeding_writes_the_same_rows(backend: Backend) {
    // Arrange: more than two seed batches.
    let n = 2 * SEED_BATCH as u64 + 7;
    let s = TestStore::seeded(backend, n).await;
    let ids: Vec<String> = [1, SEED_BATCH as u64, SEED_BATCH as u64 + 1, n]
        .iter()
        .map(|i| format!("P-{i}"))
        .collect();
    let before = sorted(s.store.priced_by_ids(&ids).await.unwrap());

    // Act
    let written = shared::store::seed::seed(s.store.as_ref(), n)
        .await
        .unwrap();

    // Assert
    assert_eq!(written, n);
    assert_eq!(s.store.count_products().await.unwrap(), n);
    let after = sorted(s.store.priced_by_ids(&ids).await.unwrap());
    assert_eq!(before, after);
    assert_eq!(after[0].0, synthetic(1).product);
    assert_eq!(after[0].1, seeded_signals(1));
}

fn sorted(mut rows: Vec<(Product, MarketSignals)>) -> Vec<(Product, MarketSignals)> {
    rows.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    rows
}

async fn upserting_replaces_a_product_and_the_last_duplicate_wins(backend: Backend) {
    let s = TestStore::new(backend).await;
    let first = product("SKU-1", "first");
    s.store
        .upsert_products(std::slice::from_ref(&first))
        .await
        .unwrap();
    assert_eq!(s.store.product("SKU-1").await.unwrap(), Some(first));

    // Two rows with one id in one call: the later one wins, as row by row.
    let (mut a, mut b) = (product("SKU-1", "a"), product("SKU-1", "b"));
    (a.stock, b.stock) = (1, 2);
    s.store.upsert_products(&[a, b.clone()]).await.unwrap();

    assert_eq!(s.store.product("SKU-1").await.unwrap(), Some(b));
    assert_eq!(s.store.count_products().await.unwrap(), 1);
}

async fn import_loads_a_csv_whole_or_not_at_all(backend: Backend) {
    let s = TestStore::new(backend).await;
    let csv = "id,name,category,unit_cost,base_price,stock,target_stock\n\
               SKU-1,\"Kettle; 1.7 l, \"\"steel\"\"\",home,10,14.5,20,40\n\
               SKU-2,Toaster,home,20,29,5,10\n";
    let n = import::import(s.store.as_ref(), csv.as_bytes())
        .await
        .unwrap();
    assert_eq!(n, 2);
    let kettle = s.store.product("SKU-1").await.unwrap().unwrap();
    assert_eq!(kettle.name, "Kettle; 1.7 l, \"steel\"");
    assert_eq!((kettle.unit_cost, kettle.stock), (10.0, 20));

    // A bad third line: nothing of the file is written.
    let bad = "id,name,category,unit_cost,base_price,stock,target_stock\n\
               SKU-3,Lamp,home,5,7,1,2\n\
               SKU-1,Kettle,home,-10,14.5,20,40\n";
    let err = import::import(s.store.as_ref(), bad.as_bytes())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("line 3"), "{err}");
    assert_eq!(s.store.count_products().await.unwrap(), 2);
    assert_eq!(s.store.product("SKU-3").await.unwrap(), None);
}

async fn hostile_text_and_ids_are_only_data(backend: Backend) {
    let s = TestStore::seeded(backend, 3).await;
    let hostile = [
        "x'; DROP TABLE products; --",
        "\" OR \"1\"=\"1",
        "a\\b\ttab\nnewline\r",
        "$1 ? %s :name",
        "ünïcödé 価格 🚀",
    ];
    let products: Vec<Product> = hostile
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let mut p = product(&format!("H-{i}"), text);
            p.category = (*text).to_string();
            p
        })
        .collect();
    // The longest id the api accepts.
    let long = product(&"L".repeat(64), "long id");
    s.store.upsert_products(&products).await.unwrap();
    s.store
        .upsert_products(std::slice::from_ref(&long))
        .await
        .unwrap();

    for p in &products {
        assert_eq!(s.store.product(&p.id).await.unwrap().as_ref(), Some(p));
    }
    assert_eq!(s.store.product(&long.id).await.unwrap(), Some(long));
    // Ids that would break SQL if they were spliced into it find nothing.
    for id in [
        "' OR '1'='1",
        "P-1'; --",
        "P-1; DELETE FROM products",
        "%",
        "P-_",
    ] {
        assert_eq!(s.store.product(id).await.unwrap(), None, "{id}");
        assert_eq!(
            s.store.market_signals(id).await.unwrap(),
            MarketSignals::default()
        );
    }
    let probe = vec!["' OR '1'='1".to_string(), "P-1".to_string()];
    assert_eq!(s.store.existing_ids(&probe).await.unwrap().len(), 1);
    assert_eq!(s.store.count_products().await.unwrap(), 3 + 5 + 1);
}

async fn nul_text_is_refused_and_nul_ids_find_nothing(backend: Backend) {
    let s = TestStore::seeded(backend, 3).await;
    let nul = "P-1\0evil";
    assert_eq!(s.store.product(nul).await.unwrap(), None);
    assert_eq!(
        s.store.market_signals(nul).await.unwrap(),
        MarketSignals::default()
    );
    assert!(
        s.store
            .existing_ids(&[nul.into()])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.store
            .priced_by_ids(&[nul.into()])
            .await
            .unwrap()
            .is_empty()
    );

    let refused = s
        .store
        .upsert_products(&[product("SKU-1", "ok"), product("SKU-2", "a\0b")])
        .await
        .unwrap_err();
    assert!(matches!(refused, StoreError::Invalid(_)), "{refused:?}");
    assert!(refused.to_string().contains("name"), "{refused}");
    let updates = MarketUpdates {
        competitor_prices: vec![CompetitorPrice {
            product_id: "P-1".into(),
            competitor: "ac\0me".into(),
            price: 3.0,
            observed_at: Utc::now(),
        }],
        ..Default::default()
    };
    let refused = s.store.apply_market_updates(&updates).await.unwrap_err();
    assert!(matches!(refused, StoreError::Invalid(_)), "{refused:?}");

    // Nothing of either write is there, and the store works on.
    assert_eq!(s.store.product("SKU-1").await.unwrap(), None);
    assert_eq!(
        s.store.market_signals("P-1").await.unwrap(),
        seeded_signals(1)
    );
    assert_eq!(s.store.count_products().await.unwrap(), 3);
}

async fn market_updates_apply_whole_or_not_at_all(backend: Backend) {
    let s = TestStore::seeded(backend, 5).await;
    let demand = |id: &str, index: f64| DemandSignal {
        product_id: id.into(),
        demand_index: index,
        observed_at: Utc::now(),
    };
    let one = MarketUpdates {
        demand: vec![demand("P-3", 1.7)],
        ..Default::default()
    };
    s.store.apply_market_updates(&one).await.unwrap();
    assert_eq!(
        s.store.market_signals("P-3").await.unwrap().demand_index,
        Some(1.7)
    );

    // A unit cost the schema refuses fails the whole batch.
    let before = s.store.market_signals("P-1").await.unwrap();
    let broken = MarketUpdates {
        demand: vec![demand("P-1", 0.42)],
        unit_cost: vec![Observed {
            product_id: "P-2".into(),
            value: -1.0,
            observed_at: Utc::now(),
        }],
        ..Default::default()
    };
    let err = s.store.apply_market_updates(&broken).await.unwrap_err();
    assert!(matches!(err, StoreError::Rejected(_)), "{err:?}");
    assert_eq!(s.store.market_signals("P-1").await.unwrap(), before);
    assert!(s.store.product("P-2").await.unwrap().unwrap().unit_cost > 0.0);

    // A signal about a product the catalog does not hold is refused too.
    let unknown = MarketUpdates {
        demand: vec![demand("P-1", 0.42), demand("NOPE", 1.0)],
        ..Default::default()
    };
    let err = s.store.apply_market_updates(&unknown).await.unwrap_err();
    assert!(matches!(err, StoreError::Rejected(_)), "{err:?}");
    assert_eq!(s.store.market_signals("P-1").await.unwrap(), before);
}

/// One observation of every signal of `P-1` at `t`.
fn observation(
    t: chrono::DateTime<Utc>,
    stock: i64,
    cost: f64,
    price: f64,
    demand: f64,
) -> MarketUpdates {
    MarketUpdates {
        competitor_prices: vec![CompetitorPrice {
            product_id: "P-1".into(),
            competitor: "acme".into(),
            price,
            observed_at: t,
        }],
        demand: vec![DemandSignal {
            product_id: "P-1".into(),
            demand_index: demand,
            observed_at: t,
        }],
        stock: vec![Observed {
            product_id: "P-1".into(),
            value: stock,
            observed_at: t,
        }],
        unit_cost: vec![Observed {
            product_id: "P-1".into(),
            value: cost,
            observed_at: t,
        }],
    }
}

/// `P-1`'s stock, unit cost, lowest competitor price and demand index.
pub async fn signals_of_p1(store: &dyn CatalogStore) -> (i64, f64, Option<f64>, Option<f64>) {
    let p = store.product("P-1").await.unwrap().unwrap();
    let s = store.market_signals("P-1").await.unwrap();
    (
        p.stock,
        p.unit_cost,
        s.lowest_competitor_price,
        s.demand_index,
    )
}

async fn an_older_observation_never_replaces_a_newer_one(backend: Backend) {
    // Arrange: P-1 without competitor prices of its own beyond "acme"'s.
    let s = TestStore::seeded(backend, 3).await;
    let store = s.store.as_ref();
    let t1 = micros(Utc::now());
    let (t0, t2) = (t1 - Duration::milliseconds(5), t1 + Duration::seconds(1));
    let apply = |u: MarketUpdates, expected| async move {
        store.apply_market_updates(&u).await.unwrap();
        assert_eq!(signals_of_p1(store).await, expected);
    };
    for (update, expected) in [
        // Competitor prices below any the seed gave P-1, so the lowest is acme's.
        (
            observation(t1, 30, 4.0, 0.9, 1.2),
            (30, 4.0, Some(0.9), Some(1.2)),
        ),
        // Older: ignored, every signal.
        (
            observation(t0, 99, 7.0, 0.5, 0.5),
            (30, 4.0, Some(0.9), Some(1.2)),
        ),
        // The same time: replaces (within a batch, the later event wins).
        (
            observation(t1, 31, 4.5, 0.95, 1.3),
            (31, 4.5, Some(0.95), Some(1.3)),
        ),
        // Newer: replaces.
        (
            observation(t2, 12, 3.0, 0.8, 1.8),
            (12, 3.0, Some(0.8), Some(1.8)),
        ),
    ] {
        apply(update, expected).await;
    }

    // An import states stock and cost as of its updated_at: an event
    // observed before that leaves them as imported.
    let t3 = t2 + Duration::seconds(1);
    let mut imported = store.product("P-1").await.unwrap().unwrap();
    (imported.stock, imported.unit_cost, imported.updated_at) = (50, 2.5, t3);
    store.upsert_products(&[imported]).await.unwrap();
    let late = t3 - Duration::milliseconds(1);
    apply(
        observation(late, 7, 6.0, 0.8, 1.8),
        (50, 2.5, Some(0.8), Some(1.8)),
    )
    .await;
}

async fn a_batch_keeps_its_latest_observation_per_key(backend: Backend) {
    let s = TestStore::seeded(backend, 3).await;
    let t = micros(Utc::now());
    // Out of order in one batch: the latest time wins, and of two at the
    // same time the later in the batch.
    let batch = [
        observation(t + Duration::seconds(2), 20, 5.0, 0.7, 1.4),
        observation(t, 10, 4.0, 0.6, 1.1),
        observation(t + Duration::seconds(3), 30, 6.0, 0.9, 1.5),
        observation(t + Duration::seconds(3), 31, 6.5, 0.95, 1.6),
        observation(t + Duration::seconds(1), 40, 7.0, 0.5, 1.7),
    ];
    let mut merged = MarketUpdates::default();
    for u in batch {
        merged.append(u);
    }

    s.store.apply_market_updates(&merged).await.unwrap();

    assert_eq!(
        signals_of_p1(s.store.as_ref()).await,
        (31, 6.5, Some(0.95), Some(1.6))
    );
}

async fn the_scan_pages_through_the_whole_catalog_in_id_order(backend: Backend) {
    let s = TestStore::seeded(backend, 40).await;
    let now = Utc::now();
    // Extra signals on a few products only (ids sort as P-1, P-10, …).
    let extra: Vec<CompetitorPrice> = ["P-1", "P-10", "P-10", "P-25", "P-9"]
        .iter()
        .enumerate()
        .map(|(i, id)| CompetitorPrice {
            product_id: id.to_string(),
            competitor: format!("rival-{i}"),
            price: 1.0 + i as f64,
            observed_at: now,
        })
        .collect();
    s.store.record_competitor_prices(&extra).await.unwrap();
    s.store
        .record_demand(&[DemandSignal {
            product_id: "P-33".into(),
            demand_index: 1.9,
            observed_at: now,
        }])
        .await
        .unwrap();

    for page in [1, 7, 40, 41, 5_000] {
        let pages: Vec<Vec<_>> = s.store.clone().scan(page).try_collect().await.unwrap();
        assert!(pages.iter().all(|p| !p.is_empty() && p.len() <= page));
        let scanned: Vec<_> = pages.into_iter().flatten().collect();
        let ids: Vec<String> = scanned.iter().map(|(p, _)| p.id.clone()).collect();
        let mut order = ids.clone();
        order.sort();
        assert_eq!(ids, order, "the scan is in id order (page {page})");
        assert_eq!(ids.len(), 40);
        // The same products and signals as the per-product query.
        let by_query = sorted(s.store.priced_by_ids(&ids).await.unwrap());
        assert_eq!(scanned, by_query, "page {page}");
        let signals = |id: &str| scanned.iter().find(|(p, _)| p.id == id).unwrap().1;
        assert_eq!(
            signals("P-10").lowest_competitor_price.map(|p| p <= 2.0),
            Some(true)
        );
        assert_eq!(signals("P-33").demand_index, Some(1.9));
    }
    // Keyset pages agree with the scan.
    let first = s.store.priced_page(None, 7).await.unwrap();
    let second = s.store.priced_page(Some(&first[6].0.id), 7).await.unwrap();
    let scanned: Vec<_> = s
        .store
        .clone()
        .scan(7)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    assert_eq!(first, scanned[0]);
    assert_eq!(second, scanned[1]);

    let empty = TestStore::new(backend).await;
    let pages: Vec<Vec<_>> = empty.store.clone().scan(10).try_collect().await.unwrap();
    assert!(pages.is_empty());
}

async fn batch_reads_find_what_exists(backend: Backend) {
    let s = TestStore::seeded(backend, 30).await;
    let asked: Vec<String> = ["P-3", "P-30", "P-31", "P-3", "nope"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let existing = s.store.existing_ids(&asked).await.unwrap();
    assert_eq!(
        existing,
        ["P-3", "P-30"].iter().map(|s| s.to_string()).collect()
    );
    let priced = sorted(s.store.priced_by_ids(&asked[..3]).await.unwrap());
    assert_eq!(
        priced,
        vec![
            (synthetic(3).product, seeded_signals(3)),
            (synthetic(30).product, seeded_signals(30)),
        ]
    );
    // More ids than one statement's batch.
    let many: Vec<String> = (1..=12_000).map(|i| format!("P-{i}")).collect();
    assert_eq!(s.store.existing_ids(&many).await.unwrap().len(), 30);
    assert_eq!(s.store.priced_by_ids(&many).await.unwrap().len(), 30);
    assert_eq!(s.store.count_products().await.unwrap(), 30);
    s.store.ping().await.unwrap();
}

async fn a_closed_store_is_unavailable(backend: Backend) {
    let s = TestStore::seeded(backend, 3).await;
    s.store.close().await;
    let err = s.store.product("P-1").await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(s.store.ping().await.is_err());
}
