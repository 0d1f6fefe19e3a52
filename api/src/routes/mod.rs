//! The HTTP routes, one module per feature, each exposing `router()`.

pub(crate) mod dashboard;
pub(crate) mod events;
pub(crate) mod ops;
pub(crate) mod pages;
pub(crate) mod price;
pub(crate) mod queues;
pub(crate) mod tasks;
pub(crate) mod workers;

use axum::Router;
use axum::handler::Handler;
use axum::routing::MethodRouter;

use crate::error::ApiError;
use crate::observe::Observed;
use crate::state::AppState;

/// Every feature's routes, with the JSON 404 and 405 fallbacks, each
/// handler timed and traced ([`crate::observe`]). The OpenAPI document and
/// the state are added by [`crate::app`].
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
        .fallback(Observed::handler(not_found))
        .method_not_allowed_fallback(Observed::handler(method_not_allowed))
}

// The api's own routes use these, never axum's (clippy refuses those in
// this crate: `api/clippy.toml`), so that every handler is observed.

/// `axum::routing::get`, the handler timed and traced.
#[allow(clippy::disallowed_methods)]
pub(crate) fn get<H: Handler<T, AppState>, T: 'static>(handler: H) -> MethodRouter<AppState> {
    axum::routing::get(Observed::handler(handler))
}

/// `axum::routing::post`, the handler timed and traced.
#[allow(clippy::disallowed_methods)]
pub(crate) fn post<H: Handler<T, AppState>, T: 'static>(handler: H) -> MethodRouter<AppState> {
    axum::routing::post(Observed::handler(handler))
}

/// `axum::routing::delete`, the handler timed and traced.
#[allow(clippy::disallowed_methods)]
pub(crate) fn delete<H: Handler<T, AppState>, T: 'static>(handler: H) -> MethodRouter<AppState> {
    axum::routing::delete(Observed::handler(handler))
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
