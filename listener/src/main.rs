//! `listener`: see the library docs for what it does.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shared::shutdown::exit_code(
        async {
            let settings = listener::Settings::from_env()?;
            let _telemetry = shared::telemetry::init(&settings.telemetry)?;
            listener::run(settings, shared::shutdown::signal()).await
        }
        .await,
    )
}
