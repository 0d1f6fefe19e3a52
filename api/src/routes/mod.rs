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
use axum::extract::DefaultBodyLimit;
use utoipa::OpenApi as _;
use utoipa_swagger_ui::SwaggerUi;

use crate::error::ApiError;
use crate::extract::MAX_BODY_BYTES;
use crate::openapi::ApiDoc;
use crate::state::AppState;

/// The whole application router.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .merge(price::router())
        .merge(ops::router())
        .merge(tasks::router())
        .merge(queues::router())
        .merge(events::router())
        .merge(workers::router())
        .merge(dashboard::router())
        .merge(pages::router())
        .merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(crate::metrics::track_http))
        .layer(axum::middleware::from_fn(crate::trace::trace_http))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
