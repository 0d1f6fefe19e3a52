//! Integration tests of the api, against a real redis-server and a real
//! SQLite catalog (a real PostgreSQL in `postgres`). Each test starts its
//! own servers on free ports.

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod cli;
mod dashboard;
mod events;
mod helpers;
mod ops;
mod postgres;
mod price;
mod serve;
mod tasks;
mod validation;
