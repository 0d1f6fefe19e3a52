//! `worker`: see the library docs for what it does.

/// mimalloc: a full recalculation allocates several small strings per
/// product, and glibc's malloc took about a tenth of its CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shared::shutdown::exit_code(
        async {
            let settings = worker::Settings::from_env()?;
            let _telemetry = shared::telemetry::init(&settings.telemetry)?;
            worker::run(settings, shared::shutdown::signal()).await
        }
        .await,
    )
}
