//! `worker`: see the library docs for what it does.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = worker::config::Settings::from_env()?;
    let _telemetry = shared::telemetry::init(&settings.telemetry)?;
    worker::run(settings, shared::shutdown::signal()).await
}
