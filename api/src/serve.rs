//! The HTTP/1 accept loop: [`axum::serve`]'s work, with hyper's connection
//! builder in our hands.
//!
//! `axum::serve` does not let its caller configure hyper, and one setting
//! matters on the read path: **half-close**. With hyper's default, while a
//! request is in flight the connection reads its socket once more to notice
//! a client that hung up. That read reserves space in the connection's read
//! buffer while the request's parsed headers still point into it, so the
//! buffer cannot be reclaimed and hyper allocates a fresh 8 KiB one for
//! every request (about 600 instructions and an allocation pair per request,
//! measured with callgrind; see `docs/benchmarks.md`). With half-close on,
//! hyper leaves the socket alone until the response is written: the buffer
//! is reused, and a client that closes its write side while it waits still
//! gets its answer, as HTTP/1.1 allows.
//!
//! What changes for a client that hangs up mid-request: its handler runs to
//! the end (every route is bounded, the slowest by the store's and Redis's
//! own timeouts) and the answer is dropped at the write, where before the
//! handler was cancelled at the next read.
//!
//! Everything else is what `axum::serve` does: HTTP/1.1 with keep-alive,
//! accept errors that concern one connection skipped and others logged and
//! retried after a pause, and on shutdown the listener closed and every
//! open connection finishing its in-flight request before it closes.

use std::future::Future;
use std::io;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// How long to wait before accepting again after an accept error that is
/// not about one connection (out of file descriptors, say): axum's pause.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` until `shutdown` resolves, then stops
/// accepting and waits for the open connections to finish their requests.
pub(crate) async fn serve(
    listener: TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send,
) {
    let mut builder = http1::Builder::new();
    builder.half_close(true);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    accept_error(error).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                // A client that hangs up or sends garbage: nothing to act on.
                tracing::trace!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Skips an accept error that concerns one connection; logs any other and
/// pauses, so that running out of descriptors does not spin the loop.
async fn accept_error(error: io::Error) {
    if is_connection_error(&error) {
        return;
    }
    tracing::error!(%error, "accepting a connection failed; retrying in a second");
    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
}

/// Whether an accept error is about the one connection being accepted.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
