//! The keys of one queue, all under one hash tag (`{<namespace>:<queue>}`),
//! so every script's keys meet on one Redis Cluster slot.

/// The keys of one queue, all under one hash tag.
#[derive(Debug, Clone)]
pub struct QueueKeys {
    pub(crate) wait: String,
    pub(crate) delayed: String,
    pub(crate) active: String,
    pub(crate) dead: String,
    pub(crate) jobs: String,
    pub(crate) args: String,
    pub(crate) results: String,
    pub(crate) unique: String,
    pub(crate) finished: String,
    pub(crate) stats: String,
    pub(crate) live: String,
    pub(crate) errors: String,
    pub(crate) uniq_of: String,
    pub(crate) paused: String,
    pub(crate) rate: String,
    pub(crate) sched: String,
    pub(crate) revoked: String,
    pub(crate) history: String,
}

impl QueueKeys {
    /// Keys of `queue` in `namespace`: `{namespace:queue}:wait`, ….
    pub fn new(namespace: &str, queue: &str) -> Self {
        let tag = format!("{{{namespace}:{queue}}}");
        let k = |s: &str| format!("{tag}:{s}");
        Self {
            wait: k("wait"),
            delayed: k("delayed"),
            active: k("active"),
            dead: k("dead"),
            jobs: k("jobs"),
            args: k("args"),
            results: k("results"),
            unique: k("unique"),
            finished: k("finished"),
            stats: k("stats"),
            live: k("live"),
            errors: k("errors"),
            uniq_of: k("uniq_of"),
            paused: k("paused"),
            rate: k("rate"),
            sched: k("sched"),
            revoked: k("revoked"),
            history: k("history"),
        }
    }

    /// Every key, for tests that check the hash tag and for cleanup.
    pub fn all(&self) -> [&str; 18] {
        [
            &self.history,
            &self.paused,
            &self.rate,
            &self.sched,
            &self.revoked,
            &self.live,
            &self.errors,
            &self.uniq_of,
            &self.wait,
            &self.delayed,
            &self.active,
            &self.dead,
            &self.jobs,
            &self.args,
            &self.results,
            &self.unique,
            &self.finished,
            &self.stats,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_queue_shares_one_hash_tag() {
        let keys = QueueKeys::new("pricing", "default");
        for key in keys.all() {
            assert!(key.starts_with("{pricing:default}:"), "{key}");
        }
    }

    #[test]
    fn no_event_key_is_a_key_of_the_events_queue() {
        let keys = shared::keys::Keys::new("pricing");
        let queue = QueueKeys::new("pricing", crate::EVENTS_QUEUE);
        for key in [
            keys.event_stream(),
            keys.event_done("01J"),
            keys.event_ingest_claim("id:01J"),
            keys.event_dead_letters(),
        ] {
            assert!(!queue.all().contains(&key.as_str()), "{key} is a queue key");
        }
        assert!(
            queue
                .all()
                .contains(&keys.legacy_event_dead_letters().as_str())
        );
    }
}
