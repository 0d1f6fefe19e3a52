//! An OTLP/gRPC trace sink for benchmarks: receives spans on
//! `127.0.0.1:$OTLP_PORT`, counts them without keeping them (it shares the
//! machine with what it measures), and on SIGTERM prints how many it
//! received. `scripts/bench-read` runs it with `OTLP=1`.

use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::var("OTLP_PORT")?.parse()?;
    let rx = shared::otlp_receiver::OtlpReceiver::start_counting_on(port).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    term.recv().await;
    // Let an exporter's last batch land.
    tokio::time::sleep(Duration::from_millis(200)).await;
    println!("otlp sink: received {} spans", rx.count());
    Ok(())
}
