//! The pricing api: the fast read path and the operations endpoints.
//!
//! `POST /api/v1/price` answers from Redis on a hit; on a miss it reads the
//! catalog, computes the price with the shared rules, caches it and answers
//! (cache-aside). Redis failing degrades the api to store reads, never to
//! errors. The same binary seeds and imports the catalog.
//!
//! # Layout
//! The modules are private; what tests, benches and `main.rs` use is
//! re-exported here.
//! - `cli`: the `api [serve|seed|import]` command line ([`Cli`], [`main`], [`run`]).
//! - `config`: [`Settings`] from the environment.
//! - `startup`: [`Application`]: build, bind, serve, stop.
//! - `serve`: the HTTP/1 accept loop (`axum::serve`'s, with hyper's half-close
//!   on, so a request's read buffer is reused) and its graceful shutdown.
//! - `state`: [`AppState`], one handle on the shared [`Clients`]; [`app`] is the router over it.
//! - `observe`: times every request and runs it in its span, around each handler
//!   (`routes::get`, `post`, `delete`, under the template `Routes::at` gives).
//! - `trace`: the server span of each request; continues and returns `traceparent`.
//! - `routes`: one module per feature (prices, tasks, queues, events, workers,
//!   dashboard JSON, dashboard pages, operations, the OpenAPI document and
//!   Swagger UI), each with `router()`.
//! - `service`: the cache-aside logic the price handlers call.
//! - [`model`]: request and response bodies, and their validation.
//! - `render`: the price answers' JSON, written directly (the read path's
//!   largest own cost through serde), byte for byte as serde writes it.
//! - `extract`: extractors that turn bad input into JSON 4xx errors ([`parse_object`]).
//! - `error`: [`ApiError`], the one error type at the HTTP boundary.
//! - `metrics`: the api's series and each request's timing.
//! - `openapi`: the generated OpenAPI document ([`ApiDoc`]).

mod cli;
mod config;
mod error;
mod extract;
mod metrics;
pub mod model;
mod observe;
mod openapi;
mod render;
mod routes;
mod serve;
mod service;
mod startup;
mod state;
mod trace;

pub use cli::{Cli, main, run};
pub use config::Settings;
pub use error::ApiError;
pub use extract::parse_object;
pub use openapi::ApiDoc;
pub use render::WriteJson;
pub use startup::Application;
pub use state::{AppState, Clients};

/// The whole application router over `state`: what the server serves, and
/// what tests drive in-process with `tower::ServiceExt::oneshot`.
pub fn app(state: AppState) -> axum::Router {
    use utoipa::OpenApi as _;
    routes::router()
        .merge(routes::docs::router(&ApiDoc::openapi()))
        .with_state(state)
}
