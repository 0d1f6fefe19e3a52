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

use crate::error::ApiError;
use crate::state::AppState;

/// Every feature's routes, with the JSON 404 and 405 fallbacks. The
/// OpenAPI document, the layers and the state are added by [`crate::app`].
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
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
