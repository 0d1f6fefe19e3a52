//! Redis key builders.
//!
//! Every key the services use is built here, under one namespace prefix
//! (`REDIS_NAMESPACE`, default `pricing`). Two deployments, or two test runs,
//! can therefore share one Redis without seeing each other's data, and no
//! service can spell a key differently from another.

/// Builds the namespaced Redis keys of one deployment.
#[derive(Debug, Clone)]
pub struct Keys {
    namespace: String,
    price_prefix: String,
}

impl Keys {
    /// Key builder for `namespace` (e.g. `pricing`).
    pub fn new(namespace: impl Into<String>) -> Self {
        let namespace = namespace.into();
        let price_prefix = format!("{namespace}:price:");
        Self {
            namespace,
            price_prefix,
        }
    }

    /// The namespace every key starts with.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The cached price of one product: `{ns}:price:{product_id}`.
    pub fn price(&self, product_id: &str) -> String {
        let mut key = String::with_capacity(self.price_prefix.len() + product_id.len());
        key.push_str(&self.price_prefix);
        key.push_str(product_id);
        key
    }

    /// The newest lock fence that has written prices: writes with an older
    /// fence are refused (see [`crate::lock::FencedWriter`]).
    pub fn price_fence(&self) -> String {
        format!("{}:price-fence", self.namespace)
    }

    /// The lock that lets one full recalculation run at a time.
    pub fn recalc_lock(&self) -> String {
        format!("{}:lock:recalculate_all_prices", self.namespace)
    }

    /// The stream every api-published (and listener-ingested) market event
    /// is appended to; the listeners' consumer group reads it.
    pub fn event_stream(&self) -> String {
        format!("{}:events:stream", self.namespace)
    }

    /// Set once an event's jobs are queued, so a redelivered or duplicate
    /// event is not processed twice.
    pub fn event_done(&self, event_id: &str) -> String {
        format!("{}:events:done:{event_id}", self.namespace)
    }

    /// Claimed by the listener replica that ingests a channel-only message.
    pub fn event_ingest_claim(&self, key: &str) -> String {
        format!("{}:events:claim:{key}", self.namespace)
    }

    /// The capped list of rejected event messages, newest first.
    pub fn event_dead_letters(&self) -> String {
        format!("{}:events:dead", self.namespace)
    }

    /// A pattern matching every cached price of this namespace, for SCAN.
    pub fn price_pattern(&self) -> String {
        format!("{}*", self.price_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_live_under_the_namespace() {
        let keys = Keys::new("pricing");
        assert_eq!(keys.price("P-1"), "pricing:price:P-1");
        assert_eq!(keys.price_pattern(), "pricing:price:*");
        assert_eq!(Keys::new("t1").price("P-1"), "t1:price:P-1");
    }
}
