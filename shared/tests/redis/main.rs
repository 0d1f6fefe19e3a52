//! The Redis plumbing itself: TLS against a real `redis-server --tls-port`
//! with a CA made in the test, and a real Redis Cluster (three primaries,
//! three replicas): hash slots, the price cache across slots, pub/sub
//! across nodes, `WAIT` for replicas, and a primary killed under load.

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod cluster;
mod failover;
mod tls;
