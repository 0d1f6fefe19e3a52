//! `api`: serves the pricing API, or seeds / imports the catalog.

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = api::cli::Cli::parse();
    let settings = api::config::Settings::from_env()?;
    let _telemetry = shared::telemetry::init(&settings.telemetry)?;
    api::cli::run(cli, settings).await
}
