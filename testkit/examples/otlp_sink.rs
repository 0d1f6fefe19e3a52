//! An OTLP trace sink for benchmarks: receives spans (OTLP/gRPC, or
//! OTLP/HTTP when `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`) on
//! `127.0.0.1:$OTLP_PORT`, counts them without keeping them (it shares the
//! machine with what it measures), and on SIGTERM prints how many it
//! received. `scripts/bench-read` runs it with `OTLP=1`.

use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::var("OTLP_PORT")?.parse()?;
    // The protocol the exporters are told to use (`scripts/bench-read`
    // passes its environment on): OTLP/gRPC unless `http/protobuf`.
    let rx = match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
        Ok("http/protobuf") => {
            testkit::otlp_receiver::OtlpReceiver::start_http_on(port, true).await?
        }
        _ => testkit::otlp_receiver::OtlpReceiver::start_counting_on(port).await?,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    term.recv().await;
    // Let an exporter's last batch land.
    tokio::time::sleep(Duration::from_millis(200)).await;
    println!("otlp sink: received {} spans", rx.count());
    Ok(())
}
