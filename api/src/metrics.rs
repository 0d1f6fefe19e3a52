//! Prometheus metrics: the recorder, the HTTP middleware and the names.
//!
//! Series exported by the api:
//! - `http_request_duration_seconds` (histogram; labels `method`, `route`,
//!   `status`). The route is the template (`/api/v1/price/{product_id}`), never
//!   the raw path, so the label set stays bounded. Buckets ([`shared::metrics::DURATION_BUCKETS`])
//!   start at 50 µs and are dense below 2 ms, so p95 and p99 of cache hits can be read from them.
//! - `cache_hits_total`, `cache_misses_total` (label `reason`: `absent`,
//!   `invalid`, `redis_error`).
//! - `redis_pool_connections`, `redis_pool_healthy_connections`,
//!   `redis_pool_command_errors_total`: the Redis pool state, sampled at scrape.
//! - `runtime_worker_threads`: the tokio runtime's worker threads
//!   (`API_WORKER_THREADS`), sampled at scrape.
//! - `events_published_total` (label `kind`): market events published.

use std::time::Instant;

use axum::http::Method;
use metrics_exporter_prometheus::PrometheusHandle;
use shared::redis_pool::RedisPool;

/// Name of the request-duration histogram.
pub(crate) const HTTP_DURATION: &str = "http_request_duration_seconds";

/// The process-wide recorder (see [`shared::metrics`]), with the api's
/// series described.
pub(crate) fn recorder() -> PrometheusHandle {
    static DESCRIBED: std::sync::Once = std::sync::Once::new();
    let handle = shared::metrics::recorder();
    DESCRIBED.call_once(describe);
    handle
}

fn describe() {
    metrics::describe_histogram!(
        HTTP_DURATION,
        metrics::Unit::Seconds,
        "HTTP request duration by method, route template and status"
    );
    metrics::describe_counter!("cache_hits_total", "Price lookups answered from Redis");
    metrics::describe_counter!(
        "events_published_total",
        "Market events published (stream + channel), by kind"
    );
    metrics::describe_counter!(
        "cache_misses_total",
        "Price lookups not answered from Redis, by reason"
    );
    metrics::describe_gauge!(
        "redis_pool_connections",
        "Multiplexed connections in the Redis pool"
    );
    metrics::describe_gauge!(
        "redis_pool_healthy_connections",
        "Pool connections whose last command succeeded"
    );
    metrics::describe_gauge!(
        "runtime_worker_threads",
        "Worker threads of the api's tokio runtime (API_WORKER_THREADS; 0 means one per core)"
    );
    metrics::describe_counter!(
        "redis_pool_command_errors_total",
        "Redis commands that failed since start"
    );
    metrics::describe_counter!(
        "redis_wait_short_total",
        "Durable writes whose WAIT reached fewer than REDIS_WAIT_REPLICAS replicas, or skipped it"
    );
}

/// Records one cache hit.
pub(crate) fn cache_hit() {
    static HITS: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
    shared::metrics::counter(&HITS, "cache_hits_total").increment(1);
}

/// Records one cache miss and why.
pub(crate) fn cache_miss(reason: &'static str) {
    metrics::counter!("cache_misses_total", "reason" => reason).increment(1);
}

/// Samples the pool state into gauges, before a scrape renders them.
pub(crate) fn sample_pool(pool: &RedisPool) {
    let state = pool.state();
    metrics::gauge!("redis_pool_connections").set(state.size as f64);
    metrics::gauge!("redis_pool_healthy_connections").set(state.healthy as f64);
    metrics::counter!("redis_pool_command_errors_total").absolute(state.errors);
}

/// Samples the tokio runtime's worker count (`API_WORKER_THREADS`).
pub(crate) fn sample_runtime() {
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    metrics::gauge!("runtime_worker_threads").set(workers as f64);
}

/// One request's timing into [`HTTP_DURATION`] (see [`crate::observe`]).
pub(crate) struct Timing {
    start: Instant,
    method: &'static str,
    route: &'static str,
}

impl Timing {
    /// Starts timing a `method` request to `route` (its template; `None`:
    /// no route matched, labelled `unmatched`).
    pub(crate) fn start(route: Option<&'static str>, method: &Method) -> Self {
        Self {
            start: Instant::now(),
            method: method_label(method),
            route: route.unwrap_or("unmatched"),
        }
    }

    /// Records the request as answered with `status`.
    pub(crate) fn finish(self, status: u16) {
        record_duration(self.method, self.route, status, self.start.elapsed());
    }
}

/// A thread's [`HTTP_DURATION`] handles: by route, then by method and status.
type DurationHandles =
    foldhash::HashMap<&'static str, Vec<(&'static str, u16, metrics::Histogram)>>;

thread_local! {
    /// This thread's handles on [`HTTP_DURATION`], by route, then method
    /// and status: found without building a labelled key, hashing it and
    /// taking the registry's shared lock on every request. Bounded by the
    /// route templates (and `unmatched`) times the methods and statuses.
    /// Hashed with foldhash: its keys are the router's templates, never a
    /// string a client chose.
    static DURATIONS: std::cell::RefCell<DurationHandles> = std::cell::RefCell::default();
}

fn record_duration(
    method: &'static str,
    route: &'static str,
    status: u16,
    took: std::time::Duration,
) {
    DURATIONS.with_borrow_mut(|by_route| {
        let handles = by_route.entry(route).or_default();
        let at = handles
            .iter()
            .position(|(m, s, _)| *m == method && *s == status)
            .unwrap_or_else(|| {
                let histogram = metrics::histogram!(
                    HTTP_DURATION,
                    "method" => method,
                    "route" => route,
                    "status" => status.to_string(),
                );
                handles.push((method, status, histogram));
                handles.len() - 1
            });
        handles[at].2.record(took.as_secs_f64());
    });
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}
