//! What the listener's `/health` and `/ready` report.
//!
//! The channel side records whether its subscription is up, and the stream
//! side when a read of the event stream last returned (a read blocks for at
//! most [`READ_BLOCK`](crate::bridge::READ_BLOCK), so a working consumer
//! reads at least once a second) and whether its connection is up.
//!
//! - `/health` (liveness: the process answers) is always 200, with
//!   `status` `ok` or `degraded` and the parts below.
//! - `/ready` is 200 only while the listener can take events on both paths:
//!   subscribed, and the stream read within [`STALE_AFTER`]; otherwise 503
//!   with the same body, so a load balancer or an orchestrator can tell a
//!   listener cut off from Redis from a working one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How long after its last return the stream side counts as stuck: well
/// above one blocking read, and above a slow batch of events being stored
/// and queued.
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(30);

/// The listener's state, shared by its loops and its HTTP handlers.
#[derive(Debug, Clone, Default)]
pub(crate) struct Health(Arc<Parts>);

#[derive(Debug, Default)]
struct Parts {
    subscribed: AtomicBool,
    stream_connected: AtomicBool,
    /// [`now_ms`] of the last stream read that returned; 0: none yet.
    last_read_ms: AtomicU64,
}

/// Milliseconds on a monotonic clock since the process first asked, plus
/// one (0 stays "never"); a wall-clock step cannot make a read look stale.
fn now_ms() -> u64 {
    static START: std::sync::LazyLock<std::time::Instant> =
        std::sync::LazyLock::new(std::time::Instant::now);
    START.elapsed().as_millis() as u64 + 1
}

impl Health {
    /// The channel subscription is up (`true`) or lost (`false`).
    pub(crate) fn set_subscribed(&self, up: bool) {
        self.0.subscribed.store(up, Ordering::Relaxed);
    }

    /// A read of the event stream returned, with entries or without.
    pub(crate) fn stream_read(&self) {
        self.0.stream_connected.store(true, Ordering::Relaxed);
        self.0.last_read_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// The stream side lost its connection and is reconnecting.
    pub(crate) fn stream_lost(&self) {
        self.0.stream_connected.store(false, Ordering::Relaxed);
    }

    /// Whether both paths take events now.
    pub(crate) fn ready(&self) -> bool {
        self.ready_at(now_ms())
    }

    /// [`Self::ready`] at time `now` (in [`now_ms`]'s milliseconds).
    fn ready_at(&self, now: u64) -> bool {
        let last = self.0.last_read_ms.load(Ordering::Relaxed);
        self.0.subscribed.load(Ordering::Relaxed)
            && self.0.stream_connected.load(Ordering::Relaxed)
            && last > 0
            && now.saturating_sub(last) <= STALE_AFTER.as_millis() as u64
    }

    fn body(&self, consumer: &str) -> serde_json::Value {
        let last = self.0.last_read_ms.load(Ordering::Relaxed);
        serde_json::json!({
            "status": if self.ready() { "ok" } else { "degraded" },
            "service": crate::config::SERVICE_NAME,
            "consumer": consumer,
            "subscribed": self.0.subscribed.load(Ordering::Relaxed),
            "stream": {
                "connected": self.0.stream_connected.load(Ordering::Relaxed),
                "last_read_ms_ago": (last > 0).then(|| now_ms().saturating_sub(last)),
            },
        })
    }
}

/// State of the two handlers: the health and this replica's consumer name.
#[derive(Clone)]
pub(crate) struct HealthState {
    pub(crate) health: Health,
    pub(crate) consumer: Arc<str>,
}

/// `GET /health`: always 200; `status` says whether both paths work.
impl shared::ops::Probe for HealthState {
    type Health = serde_json::Value;
    type Readiness = serde_json::Value;

    async fn health(&self) -> serde_json::Value {
        self.health.body(&self.consumer)
    }

    async fn readiness(&self) -> (bool, serde_json::Value) {
        (self.health.ready(), self.health.body(&self.consumer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_the_subscription_and_a_recent_stream_read() {
        let h = Health::default();
        assert!(!h.ready(), "nothing has happened yet");
        h.set_subscribed(true);
        assert!(!h.ready(), "the stream has not been read");
        h.stream_read();
        assert!(h.ready());
        h.stream_lost();
        assert!(!h.ready());
        h.stream_read();
        h.set_subscribed(false);
        assert!(!h.ready());
        h.set_subscribed(true);
        // A stream side that stopped returning long ago is stuck.
        h.stream_read();
        let read_at = h.0.last_read_ms.load(Ordering::Relaxed);
        assert!(h.ready_at(read_at + STALE_AFTER.as_millis() as u64));
        assert!(!h.ready_at(read_at + STALE_AFTER.as_millis() as u64 + 1));
        assert_eq!(h.body("c")["status"], "ok");
        h.set_subscribed(false);
        assert_eq!(h.body("c")["status"], "degraded");
    }
}
