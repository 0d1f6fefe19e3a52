//! Building and running the HTTP server.
//!
//! [`Application::build`] opens the store (running migrations), creates the
//! Redis pool and binds the listener; [`Application::run_until_stopped`]
//! serves until the shutdown future resolves, then drains in-flight
//! requests. Tests build it with `API_ADDR` port 0 and read [`Application::port`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use shared::store::{self, CatalogStore};
use tokio::net::TcpListener;

use crate::config::Settings;
use crate::state::AppState;

/// A bound, ready-to-serve api.
pub struct Application {
    listener: TcpListener,
    state: AppState,
}

impl Application {
    /// Opens the store named by the settings, then builds the app over it.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        // The error names DATABASE_URL (password hidden) and the cause in one line.
        let store = store::open(&settings.database).await?;
        Self::build_with_store(settings, store).await
    }

    /// Builds the app over an already-open store.
    pub async fn build_with_store(
        settings: &Settings,
        store: Arc<dyn CatalogStore>,
    ) -> anyhow::Result<Self> {
        let state = AppState::build(settings, store).await?;
        let listener = TcpListener::bind(settings.addr)
            .await
            .with_context(|| format!("binding API_ADDR {}", settings.addr))?;
        Ok(Self { listener, state })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// The shared state, for tests that need to reach behind the API.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then finishes in-flight requests.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr(), "api listening");
        let store = self.state.store.clone();
        crate::serve::serve(self.listener, crate::app(self.state), shutdown).await;
        store.close().await;
        tracing::info!("api stopped");
        Ok(())
    }
}
