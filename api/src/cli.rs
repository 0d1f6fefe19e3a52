//! The `api` command line: serve (the default), seed or import.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use shared::store;

use crate::config::Settings;
use crate::startup::Application;

/// Dynamic pricing API.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve HTTP on API_ADDR until SIGTERM or Ctrl-C.
    Serve,
    /// Write a deterministic synthetic catalog with ids P-1 … P-N.
    Seed {
        /// How many products to write.
        #[arg(long, default_value_t = 1_000)]
        products: u64,
        /// Only seed when the catalog is empty.
        #[arg(long)]
        if_empty: bool,
    },
    /// Load a catalog from a CSV file (format in docs/catalog-store.md, "Seed and import").
    Import {
        /// The CSV file.
        file: PathBuf,
    },
}

/// Reads the settings, builds the tokio runtime they ask for
/// (`API_WORKER_THREADS`) and runs the chosen command in it.
pub fn main(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    runtime(settings.worker_threads)
        .context("starting the tokio runtime")?
        .block_on(async {
            let _telemetry = shared::telemetry::init_head_sampled(&settings.telemetry)?;
            run(cli, settings).await
        })
}

/// A multi-threaded runtime with `worker_threads` workers (0: one per core).
fn runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if worker_threads > 0 {
        builder.worker_threads(worker_threads);
    }
    builder.enable_all().build()
}

/// Runs the chosen command.
pub async fn run(cli: Cli, settings: Settings) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = Application::build(&settings).await?;
            app.run_until_stopped(shared::shutdown::signal()).await
        }
        Command::Seed { products, if_empty } => {
            let store = store::open(&settings.database).await?;
            let existing = store.count_products().await?;
            if if_empty && existing > 0 {
                println!("catalog already holds {existing} products; not seeding");
                return Ok(());
            }
            let n = store::seed::seed(store.as_ref(), products).await?;
            println!("seeded {n} products (P-1 … P-{products})");
            store.close().await;
            Ok(())
        }
        Command::Import { file } => {
            let store = store::open(&settings.database).await?;
            let reader = std::fs::File::open(&file)
                .with_context(|| format!("opening {}", file.display()))?;
            let n = store::import::import(store.as_ref(), std::io::BufReader::new(reader))
                .await
                .with_context(|| format!("importing {}", file.display()))?;
            println!("imported {n} products from {}", file.display());
            store.close().await;
            Ok(())
        }
    }
}
