//! One tower layer around every route: times the request into the
//! duration histogram ([`crate::metrics`]) and runs it in its server span
//! ([`crate::trace`]).
//!
//! It replaced two `axum::middleware::from_fn` layers. Each of those, on
//! every request, cloned the service below it, boxed it again behind
//! `Next` and boxed its own future; with export off they were 15% of the
//! api's CPU on a near-cache hit (measured by removing them: 9.7 against
//! 8.2 µs per request). This layer calls the route directly (axum gives
//! each request a fresh clone of the route's service, so nothing else is
//! waiting on it) and boxes one future.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use tower::{Layer, Service};

/// The layer: wraps each route in [`Observed`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Observe;

impl<S> Layer<S> for Observe {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observed { inner }
    }
}

/// A route, timed and traced.
#[derive(Debug, Clone)]
pub(crate) struct Observed<S> {
    inner: S,
}

impl<S> Service<Request> for Observed<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let timing = crate::metrics::Timing::start(&req);
        let span = crate::trace::RequestSpan::start(&req);
        // The route's future does nothing until polled, so the span's
        // task-local is in place for all of its work.
        let route = self.inner.call(req);
        Box::pin(async move {
            let route = async move {
                match route.await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            };
            let response = span.run(route).await;
            timing.finish(response.status().as_u16());
            Ok(response)
        })
    }
}
