//! Browsing a queue, for the dashboard: pages of jobs by state, and the
//! queue's recent throughput.
//!
//! Every call here is bounded work in Redis whatever the backlog: a page
//! reads at most [`SCAN_BUDGET`] ids by rank from the one list or sorted set
//! that holds its state (`LRANGE` from the nearer end, `ZRANGE` by rank),
//! and nothing here walks the keyspace.
//!
//! | state | read from | order |
//! |---|---|---|
//! | pending | `wait` | next to run first |
//! | scheduled, retrying | `delayed` | soonest due first |
//! | running | `active` | soonest lease deadline first |
//! | failed | `dead` | newest failure first |
//! | succeeded, skipped, cancelled | `finished` | newest first |
//!
//! Where one set holds several states (`delayed`, `finished`, and `wait`
//! with its cancelled tombstones) a page keeps only the asked state and may
//! come back short: it says where to go on (`next_cursor`), like `SCAN`.
//! Ranks move as jobs move, so a page is a snapshot, not a stable cursor.
//!
//! Throughput comes from samples of the queue's counters that the calls of
//! [`Queue::throughput`] leave in the queue's `history` sorted set (one per
//! second at most, kept two windows long): every worker's maintenance loop
//! takes one every few seconds, and every dashboard poll another, so every
//! api replica reports the same rates from the same samples, a dashboard
//! opened on a busy queue shows the last minute at once, and the workers'
//! hot scripts pay nothing for them.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use serde::{Deserialize, Serialize};

use crate::record::{decode_record, parse_state};
use crate::{JobState, JobStatus, Queue, QueueError};

/// The window of the dashboard's rates: samples are kept twice as long.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);

/// Most jobs one page lists.
pub const MAX_PAGE: usize = 200;

/// Most ids one page of a listing that filters by state examines.
pub const SCAN_BUDGET: usize = 1_000;

/// A page of one queue's jobs in one state.
#[derive(Debug, Clone)]
pub struct JobPage {
    /// The jobs, in the listing's order; their `args` and `result` are left out.
    pub jobs: Vec<JobStatus>,
    /// Entries in the set the state is read from (see the module docs).
    pub set_size: u64,
    /// The cursor of the next page; `None` at the end.
    pub next_cursor: Option<u64>,
    /// Ids examined for this page.
    pub examined: usize,
}

/// The set a state is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Set {
    Wait,
    Delayed,
    Active,
    Dead,
    Finished,
}

/// How to list one state: its set, and whether the set holds other states too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listing {
    set: Set,
    state: JobState,
}

impl Listing {
    /// The listing of `state`.
    pub fn of(state: JobState) -> Self {
        let set = match state {
            JobState::Pending => Set::Wait,
            JobState::Scheduled | JobState::Retrying => Set::Delayed,
            JobState::Running => Set::Active,
            JobState::Failed => Set::Dead,
            JobState::Succeeded | JobState::Skipped | JobState::Cancelled => Set::Finished,
        };
        Self { set, state }
    }

    /// Whether the set holds only this state, so every id read is kept.
    fn exact(self) -> bool {
        matches!(self.set, Set::Active | Set::Dead)
    }
}

/// A queue's recent throughput.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Throughput {
    /// Seconds the rates are measured over: the window asked for, or less
    /// while the samples are younger (`null` with a single sample).
    pub window_secs: Option<f64>,
    /// Attempts started per second.
    pub started_per_sec: Option<f64>,
    /// Jobs finished per second, in any final state.
    pub finished_per_sec: Option<f64>,
    /// Jobs failed for good per second.
    pub failed_per_sec: Option<f64>,
    /// Failed ones among those finished in the window (`null` when none finished).
    pub failure_rate: Option<f64>,
    /// Age of the job next to run, in seconds (`null` when none waits).
    pub oldest_pending_secs: Option<f64>,
}

/// Counter fields sampled, in the order of a sample's values.
const SAMPLED: [&str; 5] = ["started", "succeeded", "failed", "skipped", "cancelled"];

/// KEYS: stats, history, wait, live. ARGV: window_ms, every_ms.
/// Adds a sample of the counters (`now:v1:v2:…`) unless the newest is
/// younger than every_ms, drops samples older than two windows, and returns
/// {now, the sample of now, the oldest sample within the window, the
/// enqueue time of the job next to run ('' when none)}.
static SAMPLE: LazyLock<Script> =
    LazyLock::new(|| crate::scripts::script(include_str!("lua/sample.lua")));

/// Parses a sample `t:v1:v2:…` into its time and values.
fn parse_sample(s: &str) -> Option<(f64, [f64; SAMPLED.len()])> {
    let mut f = s.split(':').map(|v| v.parse::<f64>().ok());
    let t = f.next()??;
    let mut vals = [0.0; SAMPLED.len()];
    for v in &mut vals {
        *v = f.next()??;
    }
    Some((t, vals))
}

/// Rates between two samples.
fn rates(now: &str, old: &str) -> Throughput {
    let (Some((t1, v1)), Some((t0, v0))) = (parse_sample(now), parse_sample(old)) else {
        return Throughput::default();
    };
    let secs = (t1 - t0) / 1000.0;
    if secs <= 0.0 {
        return Throughput::default();
    }
    let d = |i: usize| (v1[i] - v0[i]).max(0.0);
    let finished = d(1) + d(2) + d(3) + d(4);
    Throughput {
        window_secs: Some(secs),
        started_per_sec: Some(d(0) / secs),
        finished_per_sec: Some(finished / secs),
        failed_per_sec: Some(d(2) / secs),
        failure_rate: (finished > 0.0).then(|| d(2) / finished),
        oldest_pending_secs: None,
    }
}

impl Queue {
    /// One page of the jobs in `state`, from rank `cursor` of the set that
    /// holds them, at most `limit` (clamped to 1..=[`MAX_PAGE`]) of them.
    pub async fn list(
        &self,
        state: JobState,
        cursor: u64,
        limit: usize,
    ) -> Result<JobPage, QueueError> {
        let listing = Listing::of(state);
        let limit = limit.clamp(1, MAX_PAGE);
        let (mut conn, tracker) = self.pool.get();
        let key = match listing.set {
            Set::Wait => &self.keys.wait,
            Set::Delayed => &self.keys.delayed,
            Set::Active => &self.keys.active,
            Set::Dead => &self.keys.dead,
            Set::Finished => &self.keys.finished,
        };
        let set_size: u64 = tracker.track(
            redis::cmd(if listing.set == Set::Wait {
                "LLEN"
            } else {
                "ZCARD"
            })
            .arg(key)
            .query_async(&mut conn)
            .await,
        )?;
        // Ids kept, with their live fields; the rank to go on from.
        let mut kept: Vec<(String, String)> = Vec::with_capacity(limit);
        let mut rank = cursor;
        let mut examined = 0usize;
        let mut at_end = false;
        let budget = SCAN_BUDGET.max(limit);
        let chunk = if listing.exact() {
            limit
        } else {
            (limit * 2).max(50)
        };
        'pages: while kept.len() < limit && examined < budget {
            if rank >= set_size {
                at_end = true;
                break;
            }
            let n = chunk.min(budget - examined) as u64;
            let ids = self.ids_at(listing.set, key, rank, n, set_size).await?;
            let got = ids.len() as u64;
            if got == 0 {
                at_end = true;
                break;
            }
            let lives: Vec<Option<String>> = tracker.track(
                redis::cmd("HMGET")
                    .arg(&self.keys.live)
                    .arg(&ids)
                    .query_async(&mut conn)
                    .await,
            )?;
            for (id, live) in ids.into_iter().zip(lives) {
                examined += 1;
                rank += 1;
                // A record gone between the two reads (cleaned up) is skipped.
                let Some(live) = live else { continue };
                let matches = listing.exact()
                    || live.split('\t').next().map(parse_state) == Some(listing.state);
                if matches {
                    kept.push((id, live));
                    if kept.len() == limit {
                        break 'pages;
                    }
                }
            }
            if got < n {
                at_end = true;
                break;
            }
        }
        let (ids, lives) = kept.into_iter().unzip();
        let jobs = self.records(ids, Some(lives)).await?;
        Ok(JobPage {
            jobs,
            set_size,
            next_cursor: (!at_end && rank < set_size).then_some(rank),
            examined,
        })
    }

    /// Up to `n` ids of `set` from `rank` on, in the listing's order.
    async fn ids_at(
        &self,
        set: Set,
        key: &str,
        rank: u64,
        n: u64,
        size: u64,
    ) -> Result<Vec<String>, QueueError> {
        let (mut conn, tracker) = self.pool.get();
        let last = rank + n - 1;
        let cmd = match set {
            // Next to run is at the right: rank r is index -(r + 1). LRANGE
            // walks from the nearer end, so counting from the left when the
            // page is nearer the left end keeps it bounded by the page.
            Set::Wait => {
                let mut c = redis::cmd("LRANGE");
                if rank * 2 > size {
                    let hi = size.saturating_sub(rank + 1) as i64;
                    let lo = size.saturating_sub(last + 1) as i64;
                    c.arg(key).arg(lo).arg(hi);
                } else {
                    c.arg(key).arg(-(last as i64) - 1).arg(-(rank as i64) - 1);
                }
                c
            }
            Set::Delayed | Set::Active => {
                let mut c = redis::cmd("ZRANGE");
                c.arg(key).arg(rank).arg(last);
                c
            }
            Set::Dead | Set::Finished => {
                let mut c = redis::cmd("ZRANGE");
                c.arg(key).arg(rank).arg(last).arg("REV");
                c
            }
        };
        let mut ids: Vec<String> = tracker.track(cmd.query_async(&mut conn).await)?;
        if set == Set::Wait {
            ids.reverse();
        }
        Ok(ids)
    }

    /// The records of `ids`, in order, from their stored parts; `lives`
    /// are their `live` fields when the caller has read them already, else
    /// they are read in the same round trip. Missing jobs are left out,
    /// unreadable ones logged and left out.
    pub(crate) async fn records(
        &self,
        ids: Vec<String>,
        lives: Option<Vec<String>>,
    ) -> Result<Vec<JobStatus>, QueueError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let (mut conn, tracker) = self.pool.get();
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET").arg(&self.keys.jobs).arg(&ids);
        pipe.cmd("HMGET").arg(&self.keys.errors).arg(&ids);
        if lives.is_none() {
            pipe.cmd("HMGET").arg(&self.keys.live).arg(&ids);
        }
        let mut columns: Vec<Vec<Option<String>>> =
            tracker.track(pipe.query_async(&mut conn).await)?;
        let lives: Vec<Option<String>> = match lives {
            Some(lives) => lives.into_iter().map(Some).collect(),
            None => columns.pop().unwrap_or_default(),
        };
        let errors = columns.pop().unwrap_or_default();
        let descriptions = columns.pop().unwrap_or_default();
        let mut out = Vec::with_capacity(ids.len());
        for (((id, d), l), e) in ids.into_iter().zip(descriptions).zip(lives).zip(errors) {
            let (Some(d), Some(l)) = (d, l) else { continue };
            match decode_record(&id, &d, &l, e) {
                Ok(record) => out.push(JobStatus {
                    id,
                    record,
                    result: None,
                    args: None,
                }),
                Err(err) => {
                    tracing::warn!(job_id = %id, error = %err, "skipping an unreadable job")
                }
            }
        }
        Ok(out)
    }

    /// Jobs started, finished and failed per second over the last `window`
    /// (or since the first sample, when younger), and the age of the job
    /// next to run. Each call leaves a sample of the counters for later ones
    /// (one per second at most); see the module docs.
    pub async fn throughput(&self, window: Duration) -> Result<Throughput, QueueError> {
        let (mut conn, tracker) = self.pool.get();
        let out: Vec<String> = tracker.track(
            SAMPLE
                .key(&self.keys.stats)
                .key(&self.keys.history)
                .key(&self.keys.wait)
                .key(&self.keys.live)
                .arg(window.as_millis() as u64)
                .arg(1_000)
                .invoke_async(&mut conn)
                .await,
        )?;
        let [now, sample, old, enqueued] = out.as_slice() else {
            return Err(QueueError::Encode(format!(
                "history sample: {} fields",
                out.len()
            )));
        };
        let mut t = rates(sample, old);
        if let (Ok(now), Ok(enqueued)) = (now.parse::<f64>(), enqueued.parse::<f64>()) {
            t.oldest_pending_secs = Some(((now - enqueued) / 1000.0).max(0.0));
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_counter_deltas_over_the_samples_time_apart() {
        let t = rates("11000:30:20:5:3:2", "1000:10:10:1:1:0");
        assert_eq!(t.window_secs, Some(10.0));
        assert_eq!(t.started_per_sec, Some(2.0));
        // finished: 10 succeeded + 4 failed + 2 skipped + 2 cancelled = 18.
        assert_eq!(t.finished_per_sec, Some(1.8));
        assert_eq!(t.failed_per_sec, Some(0.4));
        assert_eq!(t.failure_rate, Some(4.0 / 18.0));
    }

    #[test]
    fn one_sample_gives_no_rates() {
        let t = rates("1000:1:1:0:0:0", "1000:1:1:0:0:0");
        assert_eq!(t, Throughput::default());
    }

    #[test]
    fn a_window_with_no_finishes_has_no_failure_rate() {
        let t = rates("3000:9:0:0:0:0", "1000:1:0:0:0:0");
        assert_eq!(t.started_per_sec, Some(4.0));
        assert_eq!(t.failure_rate, None);
    }

    #[test]
    fn listings_read_each_state_from_its_set() {
        assert!(Listing::of(JobState::Failed).exact());
        assert!(Listing::of(JobState::Running).exact());
        assert!(!Listing::of(JobState::Pending).exact(), "tombstones");
        assert!(!Listing::of(JobState::Retrying).exact());
        assert_eq!(Listing::of(JobState::Cancelled).set, Set::Finished);
    }
}
