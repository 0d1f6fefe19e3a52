//! The Redis plumbing itself: TLS against a real `redis-server --tls-port`
//! and a Redis Cluster that speaks TLS only, with a CA made in the test, and a real Redis Cluster (three primaries,
//! three replicas): hash slots, the price cache across slots, pub/sub
//! across nodes (`WAIT` and a primary killed under load are
//! tested with the queue, in `queue/tests/queue/failover.rs`).

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod cluster;
mod tls;
