//! Periodic jobs (`celery beat`), safe to run on every worker.
//!
//! A schedule is declared in the environment: `SCHEDULE_<NAME>` holds a cron
//! expression (five fields, or six with seconds first; UTC) or an interval
//! (`@every 30s`, units `s`, `m`, `h`, `d`, aligned to the epoch), and
//! `SCHEDULE_<NAME>_ARGS` the job's arguments as JSON (default `{}`). The
//! job type is `SCHEDULE_<NAME>_JOB` if set (so two schedules can queue one
//! type with different arguments, as Celery beat's named entries do), else
//! `<name>` in lower case; `SCHEDULE_RECALCULATE_ALL` is short for
//! `SCHEDULE_RECALCULATE_ALL_PRICES`.
//!
//! **Exactly once.** Every worker runs the scheduler. A tick is queued by a
//! push that claims it in the same script (`sched[schedule]` holds the last
//! claimed tick; a push of that tick or an earlier one queues nothing), so
//! however many workers see a tick, one job is queued for it; when the
//! worker that would have queued it is dead, the next worker to look (within
//! its loop of at most a second) queues it.
//!
//! **Missed ticks** (`SCHEDULE_MISSED`): a tick counts as on time for
//! [`GRACE`] after its time. An older one, seen when a worker comes back
//! after no worker ran, is skipped (`skip`, the default, as cron does) or
//! run once (`once`, as Celery beat does: the latest missed tick is queued
//! once; the ones before it are not). Either way the schedule never queues a
//! burst of catch-up jobs.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use shared::config::ConfigError;

/// How long after its time a tick still counts as on time.
pub const GRACE: Duration = Duration::from_secs(10);

/// The prefix of schedule variables.
const PREFIX: &str = "SCHEDULE_";

/// What a schedule does with a tick that is late by more than [`GRACE`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Missed {
    /// Skip it; the next tick runs on time.
    #[default]
    Skip,
    /// Queue the latest missed tick once.
    Once,
}

impl Missed {
    /// Parses `skip` or `once`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "skip" => Ok(Self::Skip),
            "once" => Ok(Self::Once),
            _ => Err("expected skip or once".into()),
        }
    }
}

#[derive(Debug, Clone)]
enum Every {
    Cron(Box<croner::Cron>),
    Interval(i64),
}

/// One periodic job.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Its name (the variable's suffix, lower case).
    pub name: String,
    /// The job type it queues.
    pub job_type: String,
    /// The expression as written.
    pub expression: String,
    /// The job's arguments.
    pub args: serde_json::Value,
    every: Every,
}

impl Schedule {
    /// A schedule named `name` that queues `job_type` with `args` on `expression`.
    pub fn parse(
        name: &str,
        job_type: &str,
        expression: &str,
        args: serde_json::Value,
    ) -> Result<Self, String> {
        let expression = expression.trim();
        let every = match expression.strip_prefix("@every") {
            Some(rest) => Every::Interval(parse_interval(rest.trim())?),
            None => {
                let cron = croner::parser::CronParser::builder()
                    .seconds(croner::parser::Seconds::Optional)
                    .build()
                    .parse(expression)
                    .map_err(|e| format!("not a cron expression: {e}"))?;
                // An expression that never fires (e.g. 30 February) is an error.
                cron.find_next_occurrence(&Utc::now(), false)
                    .map_err(|e| format!("the expression never fires: {e}"))?;
                Every::Cron(Box::new(cron))
            }
        };
        Ok(Self {
            name: name.into(),
            job_type: job_type.into(),
            expression: expression.into(),
            args,
            every,
        })
    }

    /// The latest tick at or before `now_ms` (ms since the epoch).
    pub fn latest_due(&self, now_ms: i64) -> Option<i64> {
        match &self.every {
            Every::Interval(iv) => Some(now_ms.div_euclid(*iv) * iv),
            Every::Cron(cron) => {
                let now = DateTime::<Utc>::from_timestamp_millis(now_ms)?;
                cron.find_previous_occurrence(&now, true)
                    .ok()
                    .map(|t| t.timestamp_millis())
            }
        }
    }

    /// The first tick after `now_ms`.
    pub fn next_after(&self, now_ms: i64) -> Option<i64> {
        match &self.every {
            Every::Interval(iv) => Some((now_ms.div_euclid(*iv) + 1) * iv),
            Every::Cron(cron) => {
                let now = DateTime::<Utc>::from_timestamp_millis(now_ms)?;
                cron.find_next_occurrence(&now, false)
                    .ok()
                    .map(|t| t.timestamp_millis())
            }
        }
    }

    /// Whether tick `tick`, seen at `now_ms`, is queued under `missed`.
    pub fn wants(tick: i64, now_ms: i64, missed: Missed) -> bool {
        missed == Missed::Once || now_ms - tick <= GRACE.as_millis() as i64
    }

    /// The definition a worker reports.
    pub fn definition(&self, queue: &str, missed: Missed) -> ScheduleDef {
        ScheduleDef {
            name: self.name.clone(),
            job: self.job_type.clone(),
            queue: queue.into(),
            expression: self.expression.clone(),
            args: self.args.clone(),
            missed,
        }
    }
}

/// A schedule as workers report it and `GET /api/v1/schedules` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScheduleDef {
    /// Its name.
    pub name: String,
    /// The job type it queues.
    pub job: String,
    /// The queue that job goes to.
    pub queue: String,
    /// Its cron expression or interval.
    pub expression: String,
    /// The job's arguments.
    #[schema(value_type = Object)]
    pub args: serde_json::Value,
    /// What happens to a tick missed while no worker ran.
    pub missed: Missed,
}

impl ScheduleDef {
    /// Parses the definition back into a schedule (to compute its next run).
    pub fn schedule(&self) -> Result<Schedule, String> {
        Schedule::parse(&self.name, &self.job, &self.expression, self.args.clone())
    }
}

/// Parses `30s`, `15m`, `2h`, `1d` (at least one second) into milliseconds.
fn parse_interval(s: &str) -> Result<i64, String> {
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or("an interval needs a unit: s, m, h or d (e.g. @every 30s)")?;
    let (n, unit) = s.split_at(split);
    let n: i64 = n
        .parse()
        .map_err(|_| "an interval starts with a whole number (e.g. @every 30s)")?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => return Err(format!("unknown unit {other:?}: use s, m, h or d")),
    };
    if !(1..=366 * 86_400).contains(&n) {
        return Err("an interval must be at least 1s and at most 366d".into());
    }
    Ok(n * unit_ms)
}

/// The schedules and the missed-tick policy a worker runs.
#[derive(Debug, Clone, Default)]
pub struct ScheduleSettings {
    /// Every schedule, by name.
    pub schedules: Vec<Schedule>,
    /// `SCHEDULE_MISSED`.
    pub missed: Missed,
}

impl ScheduleSettings {
    /// Reads every `SCHEDULE_<NAME>`, its `SCHEDULE_<NAME>_ARGS`, and
    /// `SCHEDULE_MISSED`. A bad expression, name or argument list names its
    /// variable.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// As [`Self::from_env`], from the given variables.
    pub fn from_vars(vars: impl Iterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let vars: std::collections::BTreeMap<String, String> =
            vars.filter(|(k, _)| k.starts_with(PREFIX)).collect();
        // A startup error names the variable; the service stops with it, so
        // leaking that one name is fine.
        let fail = |var: &str, value: &str, reason: String| {
            ConfigError::new(Box::leak(var.to_string().into_boxed_str()), value, reason)
        };
        let mut out = Self::default();
        for (var, value) in &vars {
            let suffix = &var[PREFIX.len()..];
            if suffix == "MISSED" {
                out.missed = Missed::parse(value).map_err(|r| fail(var, value, r))?;
                continue;
            }
            if let Some(base) = suffix
                .strip_suffix("_ARGS")
                .or_else(|| suffix.strip_suffix("_JOB"))
            {
                if !vars.contains_key(&format!("{PREFIX}{base}")) {
                    return Err(fail(var, value, format!("no {PREFIX}{base} to go with it")));
                }
                continue;
            }
            if value.trim().is_empty() {
                continue;
            }
            if suffix.is_empty()
                || !suffix
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(fail(
                    var,
                    value,
                    "the name after SCHEDULE_ must be A-Z 0-9 _".into(),
                ));
            }
            let name = suffix.to_ascii_lowercase();
            let job_var = format!("{var}_JOB");
            let job_type = match (vars.get(&job_var), name.as_str()) {
                (Some(j), _) if !j.trim().is_empty() => j.trim().to_string(),
                (_, "recalculate_all") => {
                    <shared::jobs::RecalculateAllPrices as shared::jobs::JobSpec>::NAME.to_string()
                }
                _ => name.clone(),
            };
            let args_var = format!("{var}_ARGS");
            let args = match vars.get(&args_var) {
                Some(a) if !a.trim().is_empty() => serde_json::from_str(a)
                    .map_err(|e| fail(&args_var, a, format!("not JSON: {e}")))?,
                _ => serde_json::json!({}),
            };
            let schedule =
                Schedule::parse(&name, &job_type, value, args).map_err(|r| fail(var, value, r))?;
            out.schedules.push(schedule);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(v: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn cron_with_seconds_and_intervals_give_their_ticks() {
        let every_15m = Schedule::parse("r", "r", "0 */15 * * * *", serde_json::json!({})).unwrap();
        // 2026-12-03T10:07:30Z
        let now = DateTime::parse_from_rfc3339("2026-12-03T10:07:30Z")
            .unwrap()
            .timestamp_millis();
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis();
        assert_eq!(every_15m.latest_due(now), Some(at("2026-12-03T10:00:00Z")));
        assert_eq!(every_15m.next_after(now), Some(at("2026-12-03T10:15:00Z")));
        assert_eq!(
            every_15m.latest_due(at("2026-12-03T10:15:00Z")),
            Some(at("2026-12-03T10:15:00Z"))
        );
        let five_fields = Schedule::parse("r", "r", "*/5 * * * *", serde_json::json!({})).unwrap();
        assert_eq!(
            five_fields.next_after(now),
            Some(at("2026-12-03T10:10:00Z"))
        );
        let every_30s = Schedule::parse("r", "r", "@every 30s", serde_json::json!({})).unwrap();
        assert_eq!(every_30s.latest_due(now), Some(now));
        assert_eq!(every_30s.next_after(now), Some(now + 30_000));
        assert_eq!(every_30s.latest_due(now + 29_999), Some(now));
    }

    #[test]
    fn bad_expressions_say_why() {
        let bad = |e: &str| Schedule::parse("r", "r", e, serde_json::json!({})).unwrap_err();
        assert!(bad("every 15 minutes").contains("not a cron expression"));
        assert!(bad("61 * * * * *").contains("not a cron expression"));
        assert!(bad("@every 10parsec").contains("unknown unit"));
        assert!(bad("@every 0s").contains("at least 1s"));
        assert!(bad("@every s").contains("whole number"));
        assert!(bad("@every 10").contains("needs a unit"));
    }

    #[test]
    fn late_ticks_follow_the_missed_policy() {
        let grace = GRACE.as_millis() as i64;
        assert!(Schedule::wants(0, grace, Missed::Skip));
        assert!(!Schedule::wants(0, grace + 1, Missed::Skip));
        assert!(Schedule::wants(0, 100 * grace, Missed::Once));
    }

    #[test]
    fn settings_name_the_bad_variable() {
        let s = ScheduleSettings::from_vars(vars(&[
            ("SCHEDULE_RECALCULATE_ALL", "0 */15 * * * *"),
            ("SCHEDULE_RECALCULATE_PRICES", "@every 1m"),
            (
                "SCHEDULE_RECALCULATE_PRICES_ARGS",
                r#"{"product_ids":["p1"]}"#,
            ),
            ("SCHEDULE_NIGHTLY", "0 0 3 * * *"),
            ("SCHEDULE_NIGHTLY_JOB", "recalculate_prices"),
            ("SCHEDULE_MISSED", "once"),
        ]))
        .unwrap();
        assert_eq!(s.missed, Missed::Once);
        let names: Vec<(&str, &str)> = s
            .schedules
            .iter()
            .map(|s| (s.name.as_str(), s.job_type.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("nightly", "recalculate_prices"),
                ("recalculate_all", "recalculate_all_prices"),
                ("recalculate_prices", "recalculate_prices")
            ]
        );
        assert_eq!(s.schedules[2].args["product_ids"][0], "p1");

        let err = |v: &[(&str, &str)]| ScheduleSettings::from_vars(vars(v)).unwrap_err();
        let e = err(&[("SCHEDULE_RECALCULATE_ALL", "0 */15 * * *  *  * *")]);
        assert_eq!(e.var, "SCHEDULE_RECALCULATE_ALL");
        assert_eq!(
            err(&[("SCHEDULE_MISSED", "sometimes")]).var,
            "SCHEDULE_MISSED"
        );
        let e = err(&[("SCHEDULE_NOOP", "@every 1s"), ("SCHEDULE_NOOP_ARGS", "{")]);
        assert_eq!(e.var, "SCHEDULE_NOOP_ARGS");
        assert_eq!(
            err(&[("SCHEDULE_NOOP_ARGS", "{}")]).var,
            "SCHEDULE_NOOP_ARGS"
        );
        assert_eq!(
            err(&[("SCHEDULE_NOOP_JOB", "noop")]).var,
            "SCHEDULE_NOOP_JOB"
        );
        assert_eq!(
            err(&[("SCHEDULE_no-op", "@every 1s")]).var,
            "SCHEDULE_no-op"
        );
    }
}
