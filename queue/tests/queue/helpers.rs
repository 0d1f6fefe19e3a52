//! Helpers shared by the modules of the queue's test binary.

use queue::{NewJob, Queue};

/// Pushes `jobs` in one pipeline; returns their ids, in order.
pub async fn push_all(q: &Queue, jobs: &[NewJob]) -> Vec<String> {
    let pushed = q.push_bulk(jobs).await.unwrap();
    pushed.into_iter().map(|p| p.id).collect()
}
