//! Dead-lettering: what happens to a message the listener refuses.
//!
//! A bad message is never retried; it is counted, logged and kept, with why
//! it was refused, in the capped list `{ns}:events:dead` for someone to
//! look at. Both the channel ingester and batch processing refuse messages,
//! so the one way of keeping them lives here.

use chrono::Utc;

use super::{Bridge, Entry, GROUP};
use crate::metrics;

/// Most bytes of a rejected payload the dead-letter list keeps.
pub const DEAD_LETTER_PAYLOAD_MAX: usize = 64 * 1024;

impl Bridge {
    /// Keeps a refused payload (cut to [`DEAD_LETTER_PAYLOAD_MAX`] bytes)
    /// with why it was refused at the head of the dead-letter list, trimmed
    /// to its cap. Best effort: a failure is logged, never retried.
    pub(crate) async fn dead_letter(&self, reason: &str, detail: &str, payload: &[u8], path: &str) {
        let cut = &payload[..payload.len().min(DEAD_LETTER_PAYLOAD_MAX)];
        let record = serde_json::json!({
            "reason": reason,
            "detail": detail,
            "path": path,
            "payload": String::from_utf8_lossy(cut),
            "truncated": cut.len() < payload.len(),
            "received_at": Utc::now(),
        });
        let key = self.keys.event_dead_letters();
        let (mut conn, tracker) = self.pool.get();
        let res: redis::RedisResult<()> = tracker.track(
            redis::pipe()
                .cmd("LPUSH")
                .arg(&key)
                .arg(record.to_string())
                .ignore()
                .cmd("LTRIM")
                .arg(&key)
                .arg(0)
                .arg(self.dead_letter_max.saturating_sub(1))
                .ignore()
                .query_async(&mut conn)
                .await,
        );
        if let Err(e) = res {
            tracing::warn!(error = %e, "cannot keep a rejected event in the dead-letter list");
        }
    }

    /// Counts, logs and dead-letters a refused entry, then acknowledges it,
    /// so it is refused once even if the rest of its batch is retried.
    pub(crate) async fn reject(
        &self,
        entry: &Entry,
        label: &'static str,
        detail: &str,
    ) -> anyhow::Result<()> {
        metrics::rejected(label);
        tracing::warn!(reason = label, error = %detail, path = entry.path, entry = %entry.id, "rejected a market event");
        self.dead_letter(label, detail, &entry.payload, entry.path)
            .await;
        let (mut conn, tracker) = self.pool.get();
        tracker.track(
            redis::cmd("XACK")
                .arg(&self.stream)
                .arg(GROUP)
                .arg(&entry.id)
                .query_async::<()>(&mut conn)
                .await,
        )?;
        Ok(())
    }
}
