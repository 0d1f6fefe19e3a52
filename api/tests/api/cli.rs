//! The `api` binary's commands and its startup checks.

use std::process::{Command, Output};

use shared::store::CatalogStore;
use shared::store::sqlite::SqliteStore;
use sqlx::Row;

fn api(database_url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_api"))
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run api binary")
}

async fn dump(url: &str) -> Vec<String> {
    let store = SqliteStore::connect(url, 1).await.unwrap();
    let mut rows = Vec::new();
    for table in [
        "SELECT * FROM products ORDER BY id",
        "SELECT * FROM competitor_prices ORDER BY product_id, competitor",
        "SELECT * FROM demand_signals ORDER BY product_id",
    ] {
        for row in sqlx::query(table).fetch_all(store.pool()).await.unwrap() {
            let cols: Vec<String> = (0..row.len())
                .map(|i| {
                    row.try_get::<String, _>(i)
                        .or_else(|_| row.try_get::<f64, _>(i).map(|v| v.to_string()))
                        .or_else(|_| row.try_get::<i64, _>(i).map(|v| v.to_string()))
                        .unwrap()
                })
                .collect();
            rows.push(cols.join("|"));
        }
    }
    store.close().await;
    rows
}

#[tokio::test]
async fn seeding_twice_writes_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/nested/catalog.db", dir.path().display());

    let first = api(&url, &["seed", "--products", "300"]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let once = dump(&url).await;
    let second = api(&url, &["seed", "--products", "300"]);
    assert!(second.status.success());
    let twice = dump(&url).await;

    assert!(once.iter().filter(|r| r.starts_with("P-")).count() >= 300);
    assert!(once.iter().any(|r| r.starts_with("P-300|")));
    assert_eq!(once, twice);

    // --if-empty leaves a populated catalog alone.
    let skipped = api(&url, &["seed", "--products", "10", "--if-empty"]);
    assert!(String::from_utf8_lossy(&skipped.stdout).contains("not seeding"));
}

#[tokio::test]
async fn import_loads_a_csv_and_a_bad_file_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/catalog.db", dir.path().display());
    let good = dir.path().join("good.csv");
    std::fs::write(
        &good,
        "id,name,category,unit_cost,base_price,stock,target_stock,elasticity,min_margin,max_margin\n\
         SKU-1,Kettle,home,10.00,14.50,20,40,1.2,0.1,0.5\n\
         SKU-2,Toaster,home,20,29,5,10,,,\n",
    )
    .unwrap();
    let out = api(&url, &["import", good.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let store = SqliteStore::connect(&url, 1).await.unwrap();
    let kettle = store.product("SKU-1").await.unwrap().expect("imported");
    assert_eq!(
        (kettle.unit_cost, kettle.base_price, kettle.stock),
        (10.0, 14.5, 20)
    );
    let toaster = store.product("SKU-2").await.unwrap().expect("imported");
    assert_eq!(
        (toaster.elasticity, toaster.min_margin, toaster.max_margin),
        (1.0, 0.10, 0.50)
    );

    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "id,name,category,unit_cost,base_price,stock,target_stock\n\
         SKU-3,Lamp,home,5,7,1,2\n\
         SKU-1,Kettle,home,-10,14.5,20,40\n",
    )
    .unwrap();
    let out = api(&url, &["import", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 3") && stderr.contains("unit_cost"),
        "{stderr}"
    );
    assert_eq!(store.count_products().await.unwrap(), 2);
    assert!(store.product("SKU-3").await.unwrap().is_none());
}

#[test]
fn a_bad_setting_stops_startup_and_names_the_variable() {
    for (var, value) in [
        ("CACHE_TTL_SECS", "soon"),
        ("API_ADDR", "not-an-address"),
        ("REDIS_URL", "http://wrong"),
        ("LOG_FORMAT", "yaml"),
        ("REDIS_POOL_SIZE", "0"),
        ("DATABASE_URL", "mysql://x"),
        ("ADMIN_TOKEN", "short"),
        ("RECALC_MAX_RETRIES", "many"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_SDK_DISABLED", "maybe"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon"),
        ("API_NEAR_CACHE_MAX_ENTRIES", "lots"),
        ("API_NEAR_CACHE_MAX_ENTRIES", "-1"),
        ("API_WORKER_THREADS", "two"),
        ("API_WORKER_THREADS", "5000"),
        ("OTEL_BSP_SCHEDULE_DELAY", "0"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "10"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "plenty"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "0"),
        // Over the default queue of 65,536.
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "100000"),
        ("OTEL_RESOURCE_ATTRIBUTES", "team"),
        ("OTEL_RESOURCE_ATTRIBUTES", "team=%zz"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_api"))
            .args(["seed", "--products", "1"])
            .env(var, value)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{var}={value} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(var), "{var}: {stderr}");
    }
}
