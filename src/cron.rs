//! Periodic jobs (SPEC §3 *Periodic jobs*): each `[cron.NAME]` section
//! enqueues one job per scheduled time (a *slot*).
//!
//! A schedule is a 5-field cron expression in an IANA time zone (parsed and
//! evaluated by croner, which resolves daylight-saving changes the way cron
//! users expect: a fixed time that falls into a spring-forward gap runs at
//! the first valid time after it, one that occurs twice in a fall-back
//! overlap runs once) or `@every <duration>`, whose slots are multiples of
//! the duration since the Unix epoch, so every daemon computes the same
//! ones.
//!
//! Exactly once: the dispatcher enqueues a due slot in one transaction with
//! a compare-and-set that moves `cron.last_slot` forward
//! ([`Store::cron_enqueue`]); a daemon that loses the race enqueues
//! nothing. After downtime only the most recent missed slot is enqueued. A
//! schedule seen for the first time starts at the current slot without
//! enqueueing it (no burst for a slot nobody asked to catch up on).

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;

use crate::config::{Config, CronConfig};
use crate::event;
use crate::job::NewJob;
use crate::store::{Enqueued, Store};

/// The longest `@every`: a slot a year apart is what a cron expression is
/// for, and the bound keeps slot arithmetic far from overflow (found by the
/// `cron` fuzz target: `@every 8888888w` wrapped around).
const MAX_EVERY: Duration = Duration::from_secs(366 * 24 * 3600);

/// When a schedule fires.
#[derive(Clone, Debug)]
enum When {
    /// A cron expression in a time zone.
    Cron(Box<croner::Cron>, Tz),
    /// Every so long, aligned to the epoch.
    Every(i64),
}

/// One `[cron.NAME]` section, parsed and checked.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// The section's name.
    pub name: String,
    /// The expression as written.
    pub expression: String,
    /// The time zone's name.
    pub timezone: String,
    when: When,
    /// The job each slot enqueues (`run_at` set per slot).
    pub job: NewJob,
}

impl Schedule {
    /// Parses and checks a section; the error is a sentence naming the key.
    pub fn parse(name: &str, config: &CronConfig) -> Result<Schedule, (String, String)> {
        let key = |k: &str| format!("cron.{name}.{k}");
        let expression = config.schedule.trim().to_string();
        let tz: Tz = config.timezone.parse().map_err(|_| {
            (
                key("timezone"),
                format!(
                    "{:?} is not an IANA time zone (e.g. UTC, Europe/Berlin)",
                    config.timezone
                ),
            )
        })?;
        let when = match expression.strip_prefix("@every") {
            Some(every) => {
                let every = humantime::parse_duration(every.trim()).map_err(|e| {
                    (
                        key("schedule"),
                        format!("{expression:?}: @every takes a duration like 30s or 5m ({e})"),
                    )
                })?;
                if every < Duration::from_secs(1) || every > MAX_EVERY {
                    return Err((
                        key("schedule"),
                        format!("{expression:?}: @every must be from 1s to 366d"),
                    ));
                }
                When::Every(every.as_millis() as i64)
            }
            None => {
                let parser = croner::parser::CronParser::builder()
                    .seconds(croner::parser::Seconds::Disallowed)
                    .build();
                let cron = parser.parse(&expression).map_err(|e| {
                    (
                        key("schedule"),
                        format!("{expression:?} is not a 5-field cron expression or @every <duration>: {e}"),
                    )
                })?;
                When::Cron(Box::new(cron), tz)
            }
        };
        let probe = Schedule {
            name: String::new(),
            expression: expression.clone(),
            timezone: String::new(),
            when: when.clone(),
            job: NewJob::new("noop"),
        };
        if probe.next_after(crate::job::now_ms()).is_none() {
            return Err((
                key("schedule"),
                format!("{expression:?} never fires (no such date, e.g. 31 February)"),
            ));
        }
        crate::kinds::check_payload(&config.kind, &config.payload.to_string()).map_err(|e| {
            (
                key("payload"),
                format!("does not suit kind {}: {e}", config.kind),
            )
        })?;
        let job = NewJob {
            kind: config.kind.clone(),
            payload: config.payload.to_string(),
            queue: config.queue.clone(),
            priority: config.priority,
            run_at: None,
            max_attempts: config.max_attempts.map(i64::from),
            timeout_ms: config.timeout.map(|t| t.as_millis().max(1) as i64),
            unique_key: None,
        };
        Ok(Schedule {
            name: name.to_string(),
            expression,
            timezone: tz.name().to_string(),
            when,
            job,
        })
    }

    /// The latest slot at or before `t` (epoch ms), if there is one.
    /// Slots are whole seconds: croner keeps the sub-second part of the
    /// time it starts from, which made each restart's "latest slot" a new
    /// one (`17:14:00.506`, then `.708`) and enqueued it again.
    pub fn latest_at_or_before(&self, t: i64) -> Option<i64> {
        match &self.when {
            When::Every(every) => t.div_euclid(*every).checked_mul(*every),
            When::Cron(cron, tz) => {
                let at = tz.timestamp_millis_opt(whole_second(t)).single()?;
                let found = cron.find_previous_occurrence(&at, true).ok()?;
                Some(whole_second(found.timestamp_millis()))
            }
        }
    }

    /// The first slot after `t` (epoch ms), if there is one; a whole
    /// second, like every slot.
    pub fn next_after(&self, t: i64) -> Option<i64> {
        match &self.when {
            When::Every(every) => (t.div_euclid(*every) + 1).checked_mul(*every),
            When::Cron(cron, tz) => {
                let at = tz.timestamp_millis_opt(whole_second(t)).single()?;
                let found = cron.find_next_occurrence(&at, false).ok()?;
                Some(whole_second(found.timestamp_millis()))
            }
        }
    }
}

/// `t` (epoch ms) without its milliseconds.
fn whole_second(t: i64) -> i64 {
    t.div_euclid(1_000) * 1_000
}

/// Every schedule of `config` (already validated by [`Config::load`]).
pub fn schedules(config: &Config) -> Vec<Schedule> {
    config
        .cron
        .iter()
        .filter_map(|(name, section)| Schedule::parse(name, section).ok())
        .collect()
}

/// The dispatcher's periodic enqueuer: which slot of which schedule is due
/// next.
#[derive(Debug, Default)]
pub struct Cron {
    /// Each schedule with its next slot (None until started).
    entries: Vec<(Schedule, Option<i64>)>,
}

impl Cron {
    /// The schedules to run.
    pub fn new(schedules: Vec<Schedule>) -> Cron {
        Cron {
            entries: schedules.into_iter().map(|s| (s, None)).collect(),
        }
    }

    /// When the next slot of any schedule is due (epoch ms).
    pub fn next_due(&self) -> Option<i64> {
        self.entries.iter().filter_map(|(_, next)| *next).min()
    }

    /// True when a schedule has not been started or a slot is due at `now`.
    pub fn due(&self, now: i64) -> bool {
        self.entries
            .iter()
            .any(|(_, next)| next.is_none_or(|t| t <= now))
    }

    /// Starts new schedules and enqueues the due slots; returns how many
    /// jobs it enqueued. A database error leaves the schedule due, to be
    /// tried again on the next turn.
    pub fn run_due(&mut self, store: &mut dyn Store, now: i64) -> usize {
        let mut enqueued = 0;
        for (schedule, next) in &mut self.entries {
            if next.is_some_and(|t| t > now) {
                continue;
            }
            let Some(slot) = schedule.latest_at_or_before(now) else {
                *next = schedule.next_after(now);
                continue;
            };
            let result = match next {
                // First look: a schedule new to the database starts at this
                // slot; one that ran before catches up on its latest slot.
                None => store
                    .cron_start(&schedule.name, slot)
                    .and_then(|last| match last {
                        Some(last) if last < slot => cron_enqueue(store, schedule, slot, now),
                        _ => Ok(None),
                    }),
                Some(_) => cron_enqueue(store, schedule, slot, now),
            };
            match result {
                Ok(id) => {
                    enqueued += usize::from(id.is_some());
                    *next = schedule.next_after(slot.max(now));
                }
                Err(e) => crate::logging::log_db_trouble(
                    "enqueue a periodic job",
                    &e,
                    "trying again at the next turn",
                ),
            }
        }
        enqueued
    }
}

fn cron_enqueue(
    store: &mut dyn Store,
    schedule: &Schedule,
    slot: i64,
    now: i64,
) -> Result<Option<i64>, crate::store::StoreError> {
    let mut job = schedule.job.clone();
    job.run_at = Some(slot);
    let result = store.cron_enqueue(&schedule.name, slot, &job, now)?;
    if let Some(enqueued) = result {
        let id = enqueued.id();
        let duplicate = matches!(enqueued, Enqueued::Duplicate(_));
        event!(
            Info,
            "cron.enqueued",
            name = schedule.name.as_str(),
            id = id,
            slot:% = format_slot(slot),
            kind = schedule.job.kind.as_str(),
            queue = schedule.job.queue.as_str(),
            duplicate = duplicate
        );
        return Ok(Some(id));
    }
    Ok(None)
}

/// A slot as an RFC 3339 time in UTC.
pub fn format_slot(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| ms.to_string())
}

/// A slot as a time in the schedule's zone, for `jobd cron`.
pub fn format_local(ms: i64, timezone: &str) -> String {
    let tz: Tz = timezone.parse().unwrap_or(Tz::UTC);
    match tz.timestamp_millis_opt(ms).single() {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S %Z").to_string(),
        None => format_slot(ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(expr: &str, tz: &str, kind: &str, payload: serde_json::Value) -> CronConfig {
        CronConfig {
            schedule: expr.into(),
            kind: kind.into(),
            payload,
            queue: "default".into(),
            priority: 0,
            max_attempts: None,
            timeout: None,
            timezone: tz.into(),
        }
    }

    fn schedule(expr: &str, tz: &str) -> Schedule {
        Schedule::parse("t", &section(expr, tz, "noop", serde_json::json!({}))).unwrap()
    }

    /// Epoch ms of a local wall-clock time in `tz` (the earlier one if
    /// ambiguous).
    fn local(tz: &str, y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
        let tz: Tz = tz.parse().unwrap();
        tz.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .earliest()
            .unwrap()
            .timestamp_millis()
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
        local("UTC", y, mo, d, h, mi)
    }

    /// The slots after `from`, `n` of them, as UTC times.
    fn slots(s: &Schedule, from: i64, n: usize) -> Vec<String> {
        let mut t = from;
        (0..n)
            .map(|_| {
                t = s.next_after(t).unwrap();
                format_slot(t)
            })
            .collect()
    }

    #[test]
    fn cron_slots_are_whole_seconds_whatever_the_milliseconds_of_now() {
        let s = schedule("* * * * *", "UTC");
        let minute = utc(2026, 12, 3, 17, 14);
        for ms in [0, 506, 708, 936, 37_506, 59_999] {
            assert_eq!(s.latest_at_or_before(minute + ms), Some(minute), "+{ms}");
            assert_eq!(s.next_after(minute + ms), Some(minute + 60_000), "+{ms}");
        }
        assert_eq!(s.latest_at_or_before(minute - 1), Some(minute - 60_000));
    }

    #[test]
    fn every_is_aligned_to_the_epoch_so_all_daemons_agree() {
        let s = schedule("@every 30s", "UTC");
        assert_eq!(s.latest_at_or_before(95_000), Some(90_000));
        assert_eq!(s.latest_at_or_before(90_000), Some(90_000));
        assert_eq!(s.next_after(90_000), Some(120_000));
        assert_eq!(s.next_after(119_999), Some(120_000));
    }

    #[test]
    fn spring_forward_runs_a_skipped_fixed_time_once_after_the_gap() {
        // Europe/Berlin 2026-03-29: 02:00 → 03:00.
        let s = schedule("30 2 * * *", "Europe/Berlin");
        let got = slots(&s, utc(2026, 3, 27, 12, 0), 3);
        assert_eq!(
            got,
            [
                "2026-03-28T01:30:00Z", // 02:30 CET
                "2026-03-29T01:00:00Z", // 02:30 does not exist: 03:00 CEST
                "2026-03-30T00:30:00Z", // 02:30 CEST
            ]
        );
    }

    #[test]
    fn fall_back_runs_a_repeated_fixed_time_once() {
        // Europe/Berlin 2026-10-25: 03:00 CEST → 02:00 CET, 02:30 happens twice.
        let s = schedule("30 2 * * *", "Europe/Berlin");
        let got = slots(&s, utc(2026, 10, 23, 12, 0), 3);
        assert_eq!(
            got,
            [
                "2026-10-24T00:30:00Z",
                "2026-10-25T00:30:00Z", // the first 02:30 (CEST) only
                "2026-10-26T01:30:00Z",
            ]
        );
        // The latest slot before a time inside the second 02:30 hour is
        // still that single run.
        let inside = utc(2026, 10, 25, 1, 45);
        assert_eq!(
            s.latest_at_or_before(inside).map(format_slot).unwrap(),
            "2026-10-25T00:30:00Z"
        );
    }

    #[test]
    fn month_ends_and_weekdays_in_a_named_zone() {
        let s = schedule("0 12 31 * *", "UTC");
        assert_eq!(
            slots(&s, utc(2026, 1, 31, 13, 0), 3),
            [
                "2026-03-31T12:00:00Z",
                "2026-05-31T12:00:00Z",
                "2026-07-31T12:00:00Z"
            ]
        );
        let weekdays = schedule("0 9 * * 1-5", "America/New_York");
        // Friday 2026-11-27 → Monday 2026-11-30, 09:00 EST = 14:00 UTC.
        assert_eq!(
            slots(&weekdays, local("America/New_York", 2026, 11, 27, 10, 0), 1),
            ["2026-11-30T14:00:00Z"]
        );
        let every5 = schedule("*/5 * * * *", "UTC");
        assert_eq!(
            every5.latest_at_or_before(utc(2026, 1, 1, 0, 7)),
            Some(utc(2026, 1, 1, 0, 5))
        );
    }

    #[test]
    fn bad_sections_are_named() {
        let bad = |expr: &str, tz: &str, kind: &str, payload: serde_json::Value| {
            Schedule::parse("nightly", &section(expr, tz, kind, payload)).unwrap_err()
        };
        let empty = serde_json::json!({});
        let (key, why) = bad("61 * * * *", "UTC", "noop", empty.clone());
        assert_eq!(key, "cron.nightly.schedule");
        assert!(
            why.starts_with("\"61 * * * *\" is not a 5-field cron expression"),
            "{why}"
        );
        let (key, _) = bad("0 0 0 * * *", "UTC", "noop", empty.clone());
        assert_eq!(key, "cron.nightly.schedule", "6 fields are refused");
        // Found by fuzzing: a huge @every overflowed the slot arithmetic.
        let (key, why) = bad("@every6270 8\n8888888    w ", "UTC", "noop", empty.clone());
        assert_eq!(key, "cron.nightly.schedule");
        assert!(why.contains("@every must be from 1s to 366d"), "{why}");
        let (key, why) = bad("0 0 31 2 *", "UTC", "noop", empty.clone());
        assert_eq!(key, "cron.nightly.schedule");
        assert!(why.contains("never fires"), "{why}");
        let (key, why) = bad("@every soon", "UTC", "noop", empty.clone());
        assert_eq!(key, "cron.nightly.schedule");
        assert!(why.contains("@every takes a duration"), "{why}");
        let (key, why) = bad("0 9 * * *", "Mars/Olympus", "noop", empty);
        assert_eq!(key, "cron.nightly.timezone");
        assert!(
            why.contains("\"Mars/Olympus\" is not an IANA time zone"),
            "{why}"
        );
        let (key, why) = bad("0 9 * * *", "UTC", "noop", serde_json::json!({"sleep": 1}));
        assert_eq!(key, "cron.nightly.payload");
        assert!(why.contains("unknown field `sleep`"), "{why}");
    }
}
