//! Timing and tracing of every request: each is timed into the duration
//! histogram ([`crate::metrics`]) and runs in its server span
//! ([`crate::trace`]).
//!
//! The api's handlers are wrapped one by one ([`Observed`] as an axum
//! `Handler`, by [`crate::routes::get`] and its siblings; the operations
//! routes `shared` builds take the same `get`). A router the api takes
//! whole (Swagger UI) gets [`Observe`], the same as a tower layer.
//!
//! Why two forms: a layer on a router wraps each of its routes in one
//! more boxed service, which axum clones, calls and whose future it boxes
//! on every request. On a near-cache hit that level cost 0.8 µs of the
//! api's 8 (alternated runs with and without it); the handler form adds
//! nothing axum does not already do per request. It replaced two
//! `axum::middleware::from_fn` layers, which cost twice as much again.
//!
//! Both read the route's template (`MatchedPath`), which axum has set by
//! the time a route's handler or layer is called, and both build the same
//! future ([`ObservedFuture`]): the work as it is, and boxed only with a
//! span (export on).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::extract::Request;
use axum::handler::Handler;
use axum::response::Response;
use tower::{Layer, Service};

use crate::metrics::Timing;
use crate::trace::RequestSpan;

/// The layer, for routers taken whole: wraps each route in [`Observed`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Observe;

impl<S> Layer<S> for Observe {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observed { inner }
    }
}

/// A route (as a tower service) or a handler (as an axum `Handler`),
/// timed and traced.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Observed<S> {
    inner: S,
}

impl<H> Observed<H> {
    /// `handler`, timed and traced.
    pub(crate) fn handler(handler: H) -> Self {
        Self { inner: handler }
    }
}

impl<S> Service<Request> for Observed<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ObservedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        observe(req, |req| self.inner.call(req))
    }
}

impl<H, T, S> Handler<T, S> for Observed<H>
where
    H: Handler<T, S>,
    T: 'static,
    S: Send + 'static,
{
    type Future = ObservedFuture<H::Future>;

    fn call(self, req: Request, state: S) -> Self::Future {
        observe(req, |req| self.inner.call(req, state))
    }
}

/// Starts timing `req` and decides its span, then has `start` begin the
/// work (which does nothing until polled, so a span's task-local is in
/// place for all of it).
fn observe<F>(req: Request, start: impl FnOnce(Request) -> F) -> ObservedFuture<F>
where
    F: Future<Output: Answer> + Send + 'static,
{
    let timing = Some(Timing::start(&req));
    let span = RequestSpan::start(&req);
    let work = start(req);
    let work = match span {
        RequestSpan::Off => Work::Plain { work },
        span => Work::Spanned {
            future: Box::pin(span.run(async move { work.await.into_response() })),
        },
    };
    ObservedFuture { work, timing }
}

/// What a route (`Result<Response, Infallible>`) or a handler
/// (`Response`) answers.
pub(crate) trait Answer {
    /// The response in it.
    fn response(&self) -> &Response;
    /// The response, taken.
    fn into_response(self) -> Response;
    /// A response, as this answer.
    fn from_response(response: Response) -> Self;
}

impl Answer for Response {
    fn response(&self) -> &Response {
        self
    }

    fn into_response(self) -> Response {
        self
    }

    fn from_response(response: Response) -> Self {
        response
    }
}

impl Answer for Result<Response, Infallible> {
    fn response(&self) -> &Response {
        match self {
            Ok(response) => response,
            Err(never) => match *never {},
        }
    }

    fn into_response(self) -> Response {
        match self {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }

    fn from_response(response: Response) -> Self {
        Ok(response)
    }
}

pin_project_lite::pin_project! {
    /// [`Observed`]'s future: the work's, then the timing recorded.
    pub(crate) struct ObservedFuture<F> {
        #[pin]
        work: Work<F>,
        // Taken when the answer is ready.
        timing: Option<Timing>,
    }
}

pin_project_lite::pin_project! {
    /// The work: as it is, or inside the request's span.
    #[project = WorkProj]
    enum Work<F> {
        Plain { #[pin] work: F },
        Spanned { future: Pin<Box<dyn Future<Output = Response> + Send>> },
    }
}

impl<F> Future for ObservedFuture<F>
where
    F: Future<Output: Answer>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = match this.work.project() {
            WorkProj::Plain { work } => ready!(work.poll(cx)),
            WorkProj::Spanned { future } => {
                F::Output::from_response(ready!(future.as_mut().poll(cx)))
            }
        };
        if let Some(timing) = this.timing.take() {
            timing.finish(answer.response().status().as_u16());
        }
        Poll::Ready(answer)
    }
}
