//! `api`: serves the pricing API, or seeds / imports the catalog.

use clap::Parser as _;

/// mimalloc: the read path allocates a few small buffers per request, and
/// glibc's malloc cost about a tenth of the api's CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = api::Cli::parse();
    shared::shutdown::exit_code(
        async {
            let settings = api::Settings::from_env()?;
            let _telemetry = shared::telemetry::init_head_sampled(&settings.telemetry)?;
            api::run(cli, settings).await
        }
        .await,
    )
}
