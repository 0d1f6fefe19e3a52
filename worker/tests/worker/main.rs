//! Integration tests of the worker against a real redis-server: every
//! delivery guarantee of the queue, end to end through apalis.

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod control;
mod delivery;
mod feed;
mod helpers;
mod lifecycle;
mod queues;
mod recalc;
mod retries;
mod schedules;
mod workers;
