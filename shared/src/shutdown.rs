//! The stop signal every binary waits on.
//!
//! Services stop on SIGTERM (what `docker stop`, systemd and Kubernetes send)
//! and on Ctrl-C (SIGINT). [`signal`] installs both handlers at once, when it
//! is called, not when its future is first polled: a SIGTERM that arrives
//! right after a service reports ready must still be a graceful stop, not
//! the default "terminate now". [`exit_code`] is how a binary ends when it
//! cannot start or run: one line on stderr, whatever `RUST_BACKTRACE` says.

use std::future::Future;
use std::process::ExitCode;

/// The process's exit code for `result`; an error is printed first as one
/// line, `Error: outer: cause: …` (the whole chain, no backtrace), so an
/// operator reads what to fix (the error names its setting) in one place.
pub fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Installs the SIGTERM and SIGINT handlers and returns a future that
/// resolves on the first of them. Call it inside the tokio runtime.
#[cfg(unix)]
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let (mut term, mut int) = match (term, int) {
            (Ok(t), Ok(i)) => (t, i),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM/SIGINT; stop with SIGKILL");
                std::future::pending::<()>().await;
                unreachable!()
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("received SIGTERM, shutting down"),
            _ = int.recv() => tracing::info!("received Ctrl-C, shutting down"),
        }
    }
}

/// Resolves on Ctrl-C (platforms without Unix signals).
#[cfg(not(unix))]
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("received Ctrl-C, shutting down");
    }
}
