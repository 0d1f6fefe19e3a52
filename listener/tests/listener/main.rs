//! Integration tests of the listener binary against a real redis-server.
//!
//! One test binary, its modules by topic: `helpers` holds the shared setup,
//! each other module the tests of one topic (the process's lifecycle, the
//! whole stack end to end, the channel path, durability, several replicas,
//! coalescing, dead letters, the dashboard in a browser).

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod channel;
mod coalescing;
mod dashboard;
mod dead_letters;
mod durability;
mod end_to_end;
mod helpers;
mod lifecycle;
mod replicas;

use shared::events::MarketEvent;

fn event(json: serde_json::Value) -> MarketEvent {
    shared::events::parse(json.to_string().as_bytes()).unwrap()
}
