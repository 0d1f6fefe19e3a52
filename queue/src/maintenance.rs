//! Housekeeping any worker runs: due jobs promoted to the wait list,
//! expired leases reaped, expired records deleted, each a bounded batch.

use std::time::Duration;

use crate::scripts;
use crate::*;

impl Queue {
    /// Moves due scheduled jobs and retries to the queue. Returns how many
    /// moved and how long until the next one is due.
    pub async fn promote_due(&self) -> Result<(usize, Option<Duration>), QueueError> {
        let (mut conn, tracker) = self.pool.get();
        let (moved, next): (usize, i64) = tracker.track(
            scripts::PROMOTE
                .key(&self.keys.delayed)
                .key(&self.keys.wait)
                .key(&self.keys.live)
                .arg(MAINTENANCE_BATCH)
                .invoke_async(&mut conn)
                .await,
        )?;
        Ok((
            moved,
            (next >= 0).then(|| Duration::from_millis(next as u64)),
        ))
    }

    /// Takes back jobs whose lease expired. Returns how many.
    pub async fn reap_expired(&self) -> Result<usize, QueueError> {
        let (mut conn, tracker) = self.pool.get();
        Ok(tracker.track(
            scripts::REAP
                .key(&self.keys.active)
                .key(&self.keys.wait)
                .key(&self.keys.live)
                .key(&self.keys.dead)
                .key(&self.keys.finished)
                .key(&self.keys.stats)
                .key(&self.keys.errors)
                .key(&self.keys.unique)
                .key(&self.keys.uniq_of)
                .key(&self.keys.revoked)
                .key(&self.keys.results)
                .arg(MAINTENANCE_BATCH)
                .arg(self.settings.max_lease_losses)
                .arg(self.settings.dead_retention.as_millis() as u64)
                .arg(self.settings.result_retention.as_millis() as u64)
                .invoke_async(&mut conn)
                .await,
        )?)
    }

    /// Deletes records whose retention ran out. Returns how many.
    pub async fn cleanup(&self) -> Result<usize, QueueError> {
        let (mut conn, tracker) = self.pool.get();
        Ok(tracker.track(
            scripts::CLEANUP
                .key(&self.keys.finished)
                .key(&self.keys.jobs)
                .key(&self.keys.args)
                .key(&self.keys.results)
                .key(&self.keys.dead)
                .key(&self.keys.live)
                .key(&self.keys.errors)
                .key(&self.keys.uniq_of)
                .key(&self.keys.revoked)
                .arg(MAINTENANCE_BATCH)
                .invoke_async(&mut conn)
                .await,
        )?)
    }
}
