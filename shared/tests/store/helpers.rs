//! A fresh store of either kind, with whatever keeps it alive.

use std::sync::Arc;

use shared::config::DatabaseSettings;
use shared::store::{self, CatalogStore};
use tempfile::TempDir;
use testkit::PostgresServer;

/// Which store a contract test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// What keeps a test store's data alive; held, never read.
#[allow(dead_code)]
pub enum Home {
    Sqlite(TempDir),
    Postgres(PostgresServer),
}

/// A fresh, empty store, opened through `store::open` as the services do.
pub struct TestStore {
    pub store: Arc<dyn CatalogStore>,
    pub settings: DatabaseSettings,
    pub _home: Home,
}

impl TestStore {
    pub async fn new(backend: Backend) -> Self {
        shared::telemetry::init_for_tests();
        let (url, home) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}/catalog.db", dir.path().display());
                (url, Home::Sqlite(dir))
            }
            Backend::Postgres => {
                let server = PostgresServer::start().await;
                (server.url(), Home::Postgres(server))
            }
        };
        let settings = DatabaseSettings::for_url(url, 4);
        let store = store::open(&settings).await.unwrap();
        Self {
            store,
            settings,
            _home: home,
        }
    }

    /// A fresh store holding the synthetic catalog P-1 … P-`n`.
    pub async fn seeded(backend: Backend, n: u64) -> Self {
        let s = Self::new(backend).await;
        store::seed::seed(s.store.as_ref(), n).await.unwrap();
        s
    }

    /// Another client of the same store with its own pool, as a service on
    /// another machine would be.
    pub async fn another_client(&self) -> Arc<dyn CatalogStore> {
        store::open(&self.settings).await.unwrap()
    }
}

/// `t` rounded down to the microsecond, the precision both stores keep.
pub fn micros(t: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap()
}
