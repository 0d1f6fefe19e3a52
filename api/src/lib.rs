//! The pricing api: the fast read path and the operations endpoints.
//!
//! `POST /api/v1/price` answers from Redis on a hit; on a miss it reads the
//! catalog, computes the price with the shared rules, caches it and answers
//! (cache-aside). Redis failing degrades the api to store reads, never to
//! errors. The same binary seeds and imports the catalog.
//!
//! # Layout
//! - [`cli`]: the `api [serve|seed|import]` command line.
//! - [`config`]: [`config::Settings`] from the environment.
//! - [`startup`]: [`startup::Application`]: build, bind, serve, stop.
//! - [`state`]: [`state::AppState`], the shared clients.
//! - [`trace`]: the server span of each request; continues and returns `traceparent`.
//! - [`routes`]: one module per feature (prices, tasks, operations), each with `router()`.
//! - [`service`]: the cache-aside logic the price handlers call.
//! - [`model`]: request and response bodies, and their validation.
//! - [`extract`]: extractors that turn bad input into JSON 4xx errors.
//! - [`error`]: [`error::ApiError`], the one error type at the HTTP boundary.
//! - [`metrics`]: the Prometheus recorder and the request-timing middleware.
//! - [`openapi`]: the generated OpenAPI document.

pub mod cli;
pub mod config;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod model;
pub mod openapi;
pub mod routes;
pub mod service;
pub mod startup;
pub mod state;
pub mod trace;

/// The whole application router over `state`: what the server serves, and
/// what tests drive in-process with `tower::ServiceExt::oneshot`.
pub fn app(state: state::AppState) -> axum::Router {
    routes::router(state)
}
