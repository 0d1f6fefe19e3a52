//! Integration tests of the api, against a real redis-server and a real
//! SQLite catalog. Each test starts its own redis-server on a free port.

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod cli;
mod events;
mod helpers;
mod ops;
mod price;
mod tasks;
mod validation;
