//! Named queues, which job type goes to which, and which queues a worker
//! consumes in what order.
//!
//! A bulk job must never delay an urgent one behind it, so job types route
//! to queues of their own (by default `recalculate_all_prices` to `bulk`,
//! `recalculate_prices` to `events`, everything else to `default`;
//! `QUEUE_ROUTES` changes that) and a worker consumes the queues in
//! `WORKER_QUEUES` either in **strict priority** order (`events,bulk,default`:
//! a fetch fills its batch from the first queue that has jobs, then the
//! next) or **by weight** (`events:5,bulk:1`: each fetch starts from a queue
//! drawn with probability proportional to its weight, then fills from the
//! others in weighted order). Every queue keeps all of a queue's guarantees
//! (leases, retries, the dead set, retention, keys under one hash tag).
//!
//! [`Queues`] is the set a service works with: one [`Queue`] per known queue
//! (`default`, `bulk`, `events` and every route target), the routes, and the
//! look-ups across queues (a task id does not say its queue).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::{JobStatus, NewJob, Pushed, Queue, QueueError, QueueSettings};
use shared::config::{ConfigError, env_opt};
use shared::redis_pool::RedisPool;

/// The queue of the full recalculation.
pub const BULK_QUEUE: &str = "bulk";

/// The queue of the targeted, event-driven recalculations.
pub const EVENTS_QUEUE: &str = "events";

/// The queues every deployment has, besides route targets.
pub const BUILT_IN_QUEUES: [&str; 3] = [EVENTS_QUEUE, BULK_QUEUE, crate::DEFAULT_QUEUE];

/// Whether `name` can name a queue: 1–32 of `[a-z0-9_-]` (it is part of
/// every key of the queue and of the api's paths).
pub fn is_queue_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Job type → queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routes {
    routes: BTreeMap<String, String>,
}

impl Default for Routes {
    fn default() -> Self {
        Self {
            routes: [
                ("recalculate_all_prices", BULK_QUEUE),
                ("recalculate_prices", EVENTS_QUEUE),
            ]
            .into_iter()
            .map(|(j, q)| (j.to_string(), q.to_string()))
            .collect(),
        }
    }
}

impl Routes {
    /// The defaults, changed by `QUEUE_ROUTES`: comma-separated
    /// `job_type=queue` pairs, e.g. `recalculate_all_prices=bulk,noop=events`.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut routes = Self::default();
        if let Some(raw) = env_opt("QUEUE_ROUTES") {
            routes
                .apply(&raw)
                .map_err(|reason| ConfigError::new("QUEUE_ROUTES", &raw, reason))?;
        }
        Ok(routes)
    }

    /// Adds (or replaces) the routes in `spec` (`job=queue,…`).
    pub fn apply(&mut self, spec: &str) -> Result<(), String> {
        for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (job, queue) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not job_type=queue"))?;
            let (job, queue) = (job.trim(), queue.trim());
            if job.is_empty() {
                return Err(format!("{pair:?} names no job type"));
            }
            if !is_queue_name(queue) {
                return Err(format!(
                    "{queue:?} is not a queue name (1-32 of a-z 0-9 _ -)"
                ));
            }
            self.routes.insert(job.to_string(), queue.to_string());
        }
        Ok(())
    }

    /// The queue jobs of type `job` go to.
    pub fn queue_of(&self, job: &str) -> &str {
        self.routes
            .get(job)
            .map_or(crate::DEFAULT_QUEUE, String::as_str)
    }

    /// Every queue there is: the built-in ones and every route target.
    pub fn queues(&self) -> BTreeSet<String> {
        BUILT_IN_QUEUES
            .iter()
            .map(|q| q.to_string())
            .chain(self.routes.values().cloned())
            .collect()
    }

    /// The routes, job type → queue.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.routes.iter().map(|(j, q)| (j.as_str(), q.as_str()))
    }
}

/// How a worker chooses among its queues.
#[derive(Debug, Clone, PartialEq)]
pub enum Consume {
    /// Always the first queue with jobs, in this order.
    Strict(Vec<String>),
    /// Drawn by weight for each fetch.
    Weighted(Vec<(String, u32)>),
}

impl Default for Consume {
    /// The built-in queues in strict order: `events`, `bulk`, `default`.
    fn default() -> Self {
        Self::Strict(BUILT_IN_QUEUES.iter().map(|q| q.to_string()).collect())
    }
}

impl Consume {
    /// `WORKER_QUEUES`: `events,bulk,default` (strict, the default) or
    /// `events:5,bulk:1,default:1` (by weight, when any weight is given).
    /// Every queue must be one of `known`.
    pub fn from_env(known: &BTreeSet<String>) -> Result<Self, ConfigError> {
        let raw = env_opt("WORKER_QUEUES").unwrap_or_else(|| BUILT_IN_QUEUES.join(","));
        Self::parse(&raw, known).map_err(|reason| ConfigError::new("WORKER_QUEUES", &raw, reason))
    }

    /// Parses a `WORKER_QUEUES` value.
    pub fn parse(raw: &str, known: &BTreeSet<String>) -> Result<Self, String> {
        let mut entries: Vec<(String, Option<u32>)> = Vec::new();
        for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, weight) = match item.split_once(':') {
                Some((n, w)) => {
                    let w: u32 = w
                        .trim()
                        .parse()
                        .ok()
                        .filter(|w| (1..=1000).contains(w))
                        .ok_or_else(|| format!("{item:?}: a weight is a number from 1 to 1000"))?;
                    (n.trim(), Some(w))
                }
                None => (item, None),
            };
            if !known.contains(name) {
                let known: Vec<&str> = known.iter().map(String::as_str).collect();
                return Err(format!(
                    "unknown queue {name:?}; the queues are {}",
                    known.join(", ")
                ));
            }
            if entries.iter().any(|(n, _)| n == name) {
                return Err(format!("{name:?} is listed twice"));
            }
            entries.push((name.to_string(), weight));
        }
        if entries.is_empty() {
            return Err("names no queue".into());
        }
        Ok(if entries.iter().any(|(_, w)| w.is_some()) {
            Self::Weighted(
                entries
                    .into_iter()
                    .map(|(n, w)| (n, w.unwrap_or(1)))
                    .collect(),
            )
        } else {
            Self::Strict(entries.into_iter().map(|(n, _)| n).collect())
        })
    }

    /// The queues, in their configured order.
    pub fn queues(&self) -> Vec<&str> {
        match self {
            Self::Strict(q) => q.iter().map(String::as_str).collect(),
            Self::Weighted(q) => q.iter().map(|(n, _)| n.as_str()).collect(),
        }
    }

    /// The order to fill one fetch's batch in: the configured order, or a
    /// weighted draw without replacement.
    pub fn fetch_order(&self) -> Vec<&str> {
        match self {
            Self::Strict(q) => q.iter().map(String::as_str).collect(),
            Self::Weighted(q) => {
                let mut left: Vec<(&str, u32)> = q.iter().map(|(n, w)| (n.as_str(), *w)).collect();
                let mut order = Vec::with_capacity(left.len());
                while !left.is_empty() {
                    let total: u32 = left.iter().map(|(_, w)| w).sum();
                    let mut pick = fastrand::u32(0..total);
                    let i = left
                        .iter()
                        .position(|(_, w)| {
                            if pick < *w {
                                true
                            } else {
                                pick -= w;
                                false
                            }
                        })
                        .unwrap_or(0);
                    order.push(left.remove(i).0);
                }
                order
            }
        }
    }
}

/// Every queue of a deployment, and the routes into them.
#[derive(Clone)]
pub struct Queues {
    queues: Arc<BTreeMap<String, Queue>>,
    routes: Arc<Routes>,
}

impl Queues {
    /// A handle on every queue `routes` knows of.
    pub fn new(pool: RedisPool, namespace: &str, routes: Routes, settings: QueueSettings) -> Self {
        let queues = routes
            .queues()
            .into_iter()
            .map(|name| {
                let q = Queue::new(pool.clone(), namespace, &name, settings.clone());
                (name, q)
            })
            .collect();
        Self {
            queues: Arc::new(queues),
            routes: Arc::new(routes),
        }
    }

    /// The queue jobs of type `job` go to.
    pub fn for_job(&self, job: &str) -> &Queue {
        let name = self.routes.queue_of(job);
        // Every route target is a known queue.
        self.queues
            .get(name)
            .or_else(|| self.queues.values().next())
            .expect("a deployment has queues")
    }

    /// The queue named `name`, if there is one.
    pub fn get(&self, name: &str) -> Option<&Queue> {
        self.queues.get(name)
    }

    /// Every queue, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Queue)> {
        self.queues.iter().map(|(n, q)| (n.as_str(), q))
    }

    /// The routes.
    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// The pool underneath.
    pub fn pool(&self) -> &RedisPool {
        self.queues
            .values()
            .next()
            .map(Queue::pool)
            .expect("a deployment has queues")
    }

    /// Pushes a job to the queue its type routes to.
    pub async fn push(&self, job: NewJob) -> Result<Pushed, QueueError> {
        self.for_job(&job.name).push(job).await
    }

    /// Pushes jobs, each to its queue (one pipeline per queue).
    pub async fn push_bulk(&self, jobs: &[NewJob]) -> Result<Vec<Pushed>, QueueError> {
        let mut by_queue: BTreeMap<&str, Vec<(usize, NewJob)>> = BTreeMap::new();
        for (i, job) in jobs.iter().enumerate() {
            by_queue
                .entry(self.routes.queue_of(&job.name))
                .or_default()
                .push((i, job.clone()));
        }
        let mut out: Vec<Option<Pushed>> = vec![None; jobs.len()];
        for (name, batch) in by_queue {
            let queue = self.get(name).unwrap_or_else(|| self.for_job(""));
            let (at, jobs): (Vec<usize>, Vec<NewJob>) = batch.into_iter().unzip();
            for (i, pushed) in at.into_iter().zip(queue.push_bulk(&jobs).await?) {
                out[i] = Some(pushed);
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// A job's status and the queue that holds it; `None` when no queue
    /// knows the id (all are asked at once).
    pub async fn find(&self, id: &str) -> Result<Option<(Queue, JobStatus)>, QueueError> {
        let found = futures::future::try_join_all(self.queues.values().map(|q| async move {
            Ok::<_, QueueError>(q.status(id).await?.map(|s| (q.clone(), s)))
        }))
        .await?;
        Ok(found.into_iter().flatten().next())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> BTreeSet<String> {
        Routes::default().queues()
    }

    #[test]
    fn routes_default_and_override() {
        let mut r = Routes::default();
        assert_eq!(r.queue_of("recalculate_all_prices"), "bulk");
        assert_eq!(r.queue_of("recalculate_prices"), "events");
        assert_eq!(r.queue_of("noop"), "default");
        r.apply("noop=events, sleep=slow").unwrap();
        assert_eq!(r.queue_of("noop"), "events");
        assert!(r.queues().contains("slow"));
        assert!(r.apply("noop").is_err());
        assert!(r.apply("noop=Bad Queue").is_err());
        assert!(r.apply("=events").is_err());
    }

    #[test]
    fn worker_queues_parse_strict_or_weighted_and_refuse_unknown_ones() {
        assert_eq!(
            Consume::parse("events,bulk,default", &known()),
            Ok(Consume::Strict(vec![
                "events".into(),
                "bulk".into(),
                "default".into()
            ]))
        );
        assert_eq!(
            Consume::parse("events:5, bulk", &known()),
            Ok(Consume::Weighted(vec![
                ("events".into(), 5),
                ("bulk".into(), 1)
            ]))
        );
        assert!(
            Consume::parse("events,nope", &known())
                .unwrap_err()
                .contains("unknown queue")
        );
        assert!(Consume::parse("events:0", &known()).is_err());
        assert!(Consume::parse("events:x", &known()).is_err());
        assert!(Consume::parse("events,events", &known()).is_err());
        assert!(Consume::parse(" , ", &known()).is_err());
    }

    #[test]
    fn a_weighted_order_holds_every_queue_and_favours_the_heavy_one() {
        let c = Consume::parse("events:9,bulk:1", &known()).unwrap();
        let mut first = 0;
        for _ in 0..1_000 {
            let order = c.fetch_order();
            assert_eq!(order.len(), 2);
            first += usize::from(order[0] == "events");
        }
        // 90% expected; far from 50%.
        assert!(first > 800, "{first}");
    }
}
