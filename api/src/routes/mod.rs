//! The HTTP routes, one module per feature, each exposing `router()`.

pub(crate) mod dashboard;
pub(crate) mod docs;
pub(crate) mod events;
pub(crate) mod ops;
pub(crate) mod pages;
pub(crate) mod price;
pub(crate) mod queues;
pub(crate) mod tasks;
pub(crate) mod workers;

use axum::Router;
use axum::handler::Handler;
use axum::routing::{MethodFilter, MethodRouter};

use crate::error::ApiError;
use crate::observe::Observed;
use crate::state::AppState;

/// Every feature's routes, with the JSON 404 fallback, each handler timed
/// and traced ([`crate::observe`]). The OpenAPI document's routes
/// ([`docs::router`]) and the state are added by [`crate::app`].
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .merge(price::router())
        .merge(ops::router())
        .merge(tasks::router())
        .merge(queues::router())
        .merge(events::router())
        .merge(workers::router())
        .merge(dashboard::router())
        .merge(pages::router())
        .fallback(Observed::handler(None, not_found))
}

// The api's own routes use these, never axum's (clippy refuses those in
// this crate: `api/clippy.toml`), so that every handler is observed under
// its route's template.

/// The handlers of one path, by method, waiting for the path: [`Routes::at`]
/// gives it, and each handler is then timed and traced under it.
pub(crate) struct Handlers(Box<dyn FnOnce(&'static str) -> MethodRouter<AppState>>);

impl Handlers {
    fn new(build: impl FnOnce(&'static str) -> MethodRouter<AppState> + 'static) -> Self {
        Self(Box::new(build))
    }

    /// These handlers and `other`'s, on the same path.
    pub(crate) fn merge(self, other: Handlers) -> Handlers {
        Handlers::new(move |route| (self.0)(route).merge((other.0)(route)))
    }

    /// The method router that serves these handlers at `route`, each
    /// observed under it as its template, and a method they do not take
    /// with a JSON 405, observed under it too.
    pub(crate) fn at(self, route: &'static str) -> MethodRouter<AppState> {
        (self.0)(route).fallback(Observed::handler(Some(route), method_not_allowed))
    }
}

/// `axum::routing::get`, the handler timed and traced.
pub(crate) fn get<H: Handler<T, AppState>, T: 'static>(handler: H) -> Handlers {
    on(MethodFilter::GET, handler)
}

/// `axum::routing::post`, the handler timed and traced.
pub(crate) fn post<H: Handler<T, AppState>, T: 'static>(handler: H) -> Handlers {
    on(MethodFilter::POST, handler)
}

/// `axum::routing::delete`, the handler timed and traced.
pub(crate) fn delete<H: Handler<T, AppState>, T: 'static>(handler: H) -> Handlers {
    on(MethodFilter::DELETE, handler)
}

/// `axum::routing::on`, the handler timed and traced (axum's `get` and its
/// siblings are this with their method).
#[allow(clippy::disallowed_methods)]
fn on<H: Handler<T, AppState>, T: 'static>(filter: MethodFilter, handler: H) -> Handlers {
    Handlers::new(move |route| axum::routing::on(filter, Observed::handler(Some(route), handler)))
}

/// `Router::route` for [`Handlers`].
pub(crate) trait Routes {
    /// Serves `handlers` at `path` ([`Handlers::at`]).
    fn at(self, path: &'static str, handlers: Handlers) -> Self;
}

impl Routes for Router<AppState> {
    #[allow(clippy::disallowed_methods)]
    fn at(self, path: &'static str, handlers: Handlers) -> Self {
        self.route(path, handlers.at(path))
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
