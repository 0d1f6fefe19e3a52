//! Timing and tracing of every request: each is timed into the duration
//! histogram ([`crate::metrics`]) and runs in its server span
//! ([`crate::trace`]).
//!
//! The api's handlers are wrapped one by one: [`Observed`] is an axum
//! `Handler`, built by [`crate::routes::get`] and its siblings with the
//! template [`crate::routes::Routes::at`] registers the route under. The
//! operations routes `shared` builds take the same `get`.
//!
//! Why handlers and not a layer: a layer on a router wraps each of its
//! routes in one more boxed service, which axum clones, calls and whose
//! future it boxes on every request. On a near-cache hit that level cost
//! 0.8 µs of the api's 8 (alternated runs with and without it); the handler
//! form adds nothing axum does not already do per request.
//!
//! Why the template is given and not read from axum's `MatchedPath`: with
//! it known here, axum's `matched-path` and `original-uri` features are off,
//! and with them two of the three extensions axum inserts into every
//! request (a map allocated per request, an `Arc` and a `Uri` cloned):
//! about 1,000 instructions of a near-cache hit's 20,000 (callgrind).
//! The template is held as a [`shared::telemetry::ServerRoute`], which
//! keeps the route's server-span strings, so a traced request does not
//! look them up.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::extract::Request;
use axum::handler::Handler;
use axum::response::Response;
use shared::telemetry::{InSpan, Scoped, ServerRoute, UntracedContext};

use crate::metrics::Timing;
use crate::trace::RequestSpan;

/// A handler, timed and traced under its route's template (`None`: no
/// route matched).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Observed<H> {
    route: Option<&'static ServerRoute>,
    inner: H,
}

impl<H> Observed<H> {
    /// `handler`, timed and traced under `route`.
    pub(crate) fn handler(route: Option<&'static str>, handler: H) -> Self {
        Self {
            route: route.map(ServerRoute::of),
            inner: handler,
        }
    }
}

impl<H, T, S> Handler<T, S> for Observed<H>
where
    H: Handler<T, S>,
    T: 'static,
    S: Send + 'static,
{
    type Future = ObservedFuture<H::Future>;

    /// Starts timing `req` and decides its span, then has the handler begin
    /// the work (which does nothing until polled, so a span is current for
    /// all of it).
    fn call(self, req: Request, state: S) -> Self::Future {
        let timing = Some(Timing::start(
            self.route.map(ServerRoute::template),
            req.method(),
        ));
        let span = RequestSpan::start(&req, self.route);
        let work = self.inner.call(req, state);
        let work = match span {
            RequestSpan::Off => Work::Plain { work },
            RequestSpan::Untraced(context) => Work::Untraced {
                work: shared::telemetry::run_untraced(context, work),
            },
            RequestSpan::Traced(span) => Work::Traced {
                work: span.run(work),
            },
        };
        ObservedFuture { work, timing }
    }
}

pin_project_lite::pin_project! {
    /// [`Observed`]'s future: the handler's, then the timing recorded.
    pub(crate) struct ObservedFuture<F> {
        #[pin]
        work: Work<F>,
        // Taken when the response is ready.
        timing: Option<Timing>,
    }
}

pin_project_lite::pin_project! {
    /// The work: as it is, marked as a request head sampling dropped, or
    /// inside the request's span. Each holds the handler's future in place:
    /// boxing it, or wrapping it in an `async` block, copies that large
    /// future once more per request.
    #[project = WorkProj]
    enum Work<F> {
        Plain { #[pin] work: F },
        Untraced { #[pin] work: Scoped<UntracedContext, F> },
        Traced { #[pin] work: InSpan<F> },
    }
}

impl<F: Future<Output = Response>> Future for ObservedFuture<F> {
    type Output = Response;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response> {
        let this = self.project();
        let response = match this.work.project() {
            WorkProj::Plain { work } => ready!(work.poll(cx)),
            WorkProj::Untraced { work } => ready!(work.poll(cx)),
            WorkProj::Traced { mut work } => {
                let mut response = ready!(work.as_mut().poll(cx));
                if let Some(span) = work.take_span() {
                    crate::trace::answered(&mut response, span);
                }
                response
            }
        };
        if let Some(timing) = this.timing.take() {
            timing.finish(response.status().as_u16());
        }
        Poll::Ready(response)
    }
}
