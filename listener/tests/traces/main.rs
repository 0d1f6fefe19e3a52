//! One trace per request across api → Redis → listener → worker, proven
//! with the real binaries exporting over OTLP (gRPC, and HTTP) to an
//! in-process receiver. Its own test binary: it runs the three services as
//! processes.
//!
//! The api and worker binaries are the ones `cargo test --workspace` builds
//! next to the listener's (`target/<profile>/api`, `…/worker`).
//!
//! Its modules: `services` starts the binaries and sends traced requests,
//! `spans` says what a trace must hold and checks it; the tests are in
//! `propagation` (one connected trace per request, batch links) and
//! `export` (how and when spans leave the services).

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod export;
mod propagation;
mod services;
mod spans;

use std::time::Duration;

/// The trace id of the client every traced request comes from.
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
/// That client's span: the parent of the api's server span.
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
/// A guard against a hang, never a timing check.
const LONG: Duration = Duration::from_secs(60);
/// The Redis namespace the services share.
const NS: &str = "tr";
