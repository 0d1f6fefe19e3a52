//! Global rate limits and time limits per job type, from the environment.
//!
//! - **Rate limits** (`RATE_LIMIT_<JOB_TYPE>=100/s`, also `/m` and `/h`,
//!   optionally `:burst`, e.g. `100/s:20`; a burst is never less than one
//!   millisecond of the rate, the resolution of the script's clock) hold
//!   across every worker and machine: the fetch script admits a job of a limited type only when the
//!   type's GCRA state in Redis allows it (see `scripts`), and puts
//!   a job over the limit back as scheduled for its turn, spending no
//!   attempt and holding no worker slot. The state lives in the hash tag of
//!   the queue the type routes to; every worker must carry the same limits.
//! - **Time limits** (`TIME_LIMIT_<JOB_TYPE>=soft[,hard]`, seconds, e.g.
//!   `300,360`): past the soft limit the handler's cancellation token fires,
//!   so it can stop cleanly; past the hard limit the worker drops the
//!   handler and the attempt fails with `time_limit_exceeded`, which the
//!   job's retry policy follows.
//!
//! `<JOB_TYPE>` is the job's name in capitals (`RECALCULATE_PRICES` for
//! `recalculate_prices`).

use std::collections::BTreeMap;
use std::time::Duration;

use shared::config::ConfigError;

/// One job type's rate: `count` starts per `per`, in bursts of at most `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Starts allowed per period.
    pub count: u64,
    /// The period.
    pub per: Duration,
    /// Starts allowed at once after an idle spell (1: evenly spaced).
    pub burst: u64,
}

impl Rate {
    /// Parses `100/s`, `6000/m`, `10/h`, with an optional `:burst`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let (rate, burst) = match raw.trim().split_once(':') {
            Some((r, b)) => (r, Some(b)),
            None => (raw.trim(), None),
        };
        let (count, unit) = rate
            .split_once('/')
            .ok_or_else(|| "expected <count>/<s|m|h>, e.g. 100/s".to_string())?;
        let count: u64 = count
            .trim()
            .parse()
            .ok()
            .filter(|c| (1..=1_000_000).contains(c))
            .ok_or_else(|| "the count must be a whole number from 1 to 1000000".to_string())?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3_600),
            other => return Err(format!("unknown unit {other:?}; expected s, m or h")),
        };
        let burst = match burst {
            None => 1,
            Some(b) => b
                .trim()
                .parse()
                .ok()
                .filter(|b| (1..=1_000_000).contains(b))
                .ok_or_else(|| "the burst must be a whole number from 1 to 1000000".to_string())?,
        };
        Ok(Self { count, per, burst })
    }

    /// The burst the fetch script applies: at least one millisecond's worth
    /// of the rate, since the script's clock counts whole milliseconds (a
    /// fetch at one instant admits `1,000/ms` of a `1000000/s` type, not one).
    pub fn effective_burst(&self) -> u64 {
        let per_ms = (self.count as f64 / self.per.as_secs_f64() / 1_000.0).ceil() as u64;
        self.burst.max(per_ms)
    }

    /// The GCRA emission interval in ms, fractional: rates above 1,000/s
    /// need intervals under a millisecond (1,000,000/s is 0.001 ms).
    pub fn interval_ms(&self) -> f64 {
        self.per.as_nanos() as f64 / self.count as f64 / 1e6
    }
}

/// A job type's time limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeLimit {
    /// When the handler is asked to stop (its cancellation token fires).
    pub soft: Duration,
    /// When the handler is dropped and the attempt fails.
    pub hard: Duration,
}

impl TimeLimit {
    /// Parses `soft[,hard]` in seconds (`300,360`; a bare `300` makes the
    /// hard limit the soft one plus a tenth, at least a second).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let secs = |s: &str| -> Result<Duration, String> {
            let s = s.trim().trim_end_matches('s');
            s.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v > 0.0 && *v <= 7.0 * 86_400.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| format!("{s:?} is not a number of seconds in (0, 604800]"))
        };
        let (soft, hard) = match raw.split_once(',') {
            Some((s, h)) => (secs(s)?, secs(h)?),
            None => {
                let soft = secs(raw)?;
                (soft, soft + (soft / 10).max(Duration::from_secs(1)))
            }
        };
        if hard < soft {
            return Err("the hard limit must not be shorter than the soft one".into());
        }
        Ok(Self { soft, hard })
    }
}

/// Reads every `<PREFIX><JOB_TYPE>` variable with `parse`, keyed by job type.
fn by_job_type<T>(
    prefix: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<BTreeMap<String, T>, ConfigError> {
    let mut out = BTreeMap::new();
    for (var, value) in std::env::vars() {
        let Some(job) = var.strip_prefix(prefix) else {
            continue;
        };
        if value.trim().is_empty() {
            continue;
        }
        // A startup error names the variable; the service stops with it,
        // so leaking that one name is fine.
        let fail = |reason: String| {
            ConfigError::new(Box::leak(var.clone().into_boxed_str()), &value, reason)
        };
        let parsed = parse(&value).map_err(fail)?;
        if job.is_empty()
            || !job
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(fail(
                "the job type after the prefix must be A-Z 0-9 _".into(),
            ));
        }
        out.insert(job.to_ascii_lowercase(), parsed);
    }
    Ok(out)
}

/// Every `RATE_LIMIT_<JOB_TYPE>`, by job type.
pub fn rate_limits_from_env() -> Result<BTreeMap<String, Rate>, ConfigError> {
    by_job_type("RATE_LIMIT_", Rate::parse)
}

/// Every `TIME_LIMIT_<JOB_TYPE>`, by job type.
pub fn time_limits_from_env() -> Result<BTreeMap<String, TimeLimit>, ConfigError> {
    by_job_type("TIME_LIMIT_", TimeLimit::parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_bad_ones_say_why() {
        assert_eq!(
            Rate::parse("100/s"),
            Ok(Rate {
                count: 100,
                per: Duration::from_secs(1),
                burst: 1
            })
        );
        assert_eq!(Rate::parse("100/s").unwrap().interval_ms(), 10.0);
        assert_eq!(Rate::parse("1000000/s").unwrap().interval_ms(), 0.001);
        // Bursts cover at least a millisecond of the rate.
        let burst = |r: &str| Rate::parse(r).unwrap().effective_burst();
        assert_eq!(
            (
                burst("100/s"),
                burst("100/s:20"),
                burst("1000000/s"),
                burst("2500/s")
            ),
            (1, 20, 1_000, 3)
        );
        assert_eq!(Rate::parse("6000/m:50").unwrap().burst, 50);
        assert_eq!(Rate::parse("2/h").unwrap().interval_ms(), 1_800_000.0);
        assert!(
            Rate::parse("10/parsec")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(Rate::parse("ten/s").is_err());
        assert!(Rate::parse("0/s").is_err());
        assert!(Rate::parse("100").is_err());
        assert!(Rate::parse("100/s:0").is_err());
    }

    #[test]
    fn time_limits_parse_soft_and_hard() {
        let t = TimeLimit::parse("30,60").unwrap();
        assert_eq!(
            (t.soft, t.hard),
            (Duration::from_secs(30), Duration::from_secs(60))
        );
        let t = TimeLimit::parse("0.5s").unwrap();
        assert_eq!(t.soft, Duration::from_millis(500));
        assert_eq!(t.hard, Duration::from_millis(1_500));
        assert!(TimeLimit::parse("60,30").is_err());
        assert!(TimeLimit::parse("-1").is_err());
        assert!(TimeLimit::parse("soon").is_err());
    }
}
