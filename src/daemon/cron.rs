//! Periodic jobs (docs/reference.md): each `[cron.NAME]` section
//! enqueues one job per scheduled time (a *slot*).
//!
//! A schedule is a 5-field cron expression in an IANA time zone or
//! `@every <duration>`, whose slots are multiples of the duration since the
//! Unix epoch, so every daemon computes the same ones. croner matches an
//! expression against local wall-clock times (evaluated in UTC, where no
//! clock jumps); jobd then maps each local time to instants by its own rule
//! for daylight-saving changes (see `instants`), searching a window of
//! local time around "now", because croner's own handling answered times
//! in the past inside a repeated hour and the wrong day after a skipped
//! one.
//!
//! Exactly once: the dispatcher enqueues a due slot in one transaction with
//! a compare-and-set that moves `cron.last_slot` forward
//! ([`crate::store::Schedules::cron_enqueue`]); a daemon that loses the race enqueues
//! nothing. After downtime only the most recent missed slot is enqueued. A
//! schedule seen for the first time starts at the current slot without
//! enqueueing it (no burst for a slot nobody asked to catch up on).

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;

use crate::config::{Config, CronConfig, KeyError};
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
    /// A cron expression in a time zone; true when it names one fixed
    /// time of day (single numbers for minute and hour).
    Cron(Box<croner::Cron>, Tz, bool),
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
    // Long: one section's keys checked in order, each error naming its key.
    pub fn parse(name: &str, config: &CronConfig) -> Result<Schedule, KeyError> {
        let key = |k: &str| format!("cron.{name}.{k}");
        let expression = config.schedule.trim().to_string();
        let tz: Tz = config.timezone.parse().map_err(|_| {
            KeyError::new(
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
                    KeyError::new(
                        key("schedule"),
                        format!("{expression:?}: @every takes a duration like 30s or 5m ({e})"),
                    )
                })?;
                if every < Duration::from_secs(1) || every > MAX_EVERY {
                    return Err(KeyError::new(
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
                let cron = parser.parse(&day_of_week_7_as_0(&expression)).map_err(|e| {
                    KeyError::new(
                        key("schedule"),
                        format!("{expression:?} is not a 5-field cron expression or @every <duration>: {e}"),
                    )
                })?;
                When::Cron(Box::new(cron), tz, fixed_time(&expression))
            }
        };
        // Stored in whole milliseconds: "0s" or "250us" would silently
        // become 1 ms (timeouts.* refuse 0 the same way).
        if config.timeout.is_some_and(|t| t < Duration::from_millis(1)) {
            return Err(KeyError::new(
                key("timeout"),
                "must be at least 1ms".to_string(),
            ));
        }
        let probe = Schedule {
            name: String::new(),
            expression: expression.clone(),
            timezone: String::new(),
            when: when.clone(),
            job: NewJob::new("noop"),
        };
        if probe.next_after(crate::job::now_ms()).is_none() {
            return Err(KeyError::new(
                key("schedule"),
                format!("{expression:?} never fires (no such date, e.g. 31 February)"),
            ));
        }
        crate::kinds::check_payload(&config.kind, &config.payload.to_string()).map_err(|e| {
            KeyError::new(
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
            timeout_ms: config.timeout.map(|t| t.as_millis() as i64),
            unique_key: None,
            limit_key: None,
            parents: Vec::new(),
            run_always: false,
            batch: None,
            callback_for: None,
            sequence: None,
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
            When::Cron(cron, tz, fixed) => {
                let t = whole_second(t);
                let now = tz.timestamp_millis_opt(t).single()?.naive_local();
                let mut cursor = now + DST_WINDOW;
                let mut best: Option<i64> = None;
                for _ in 0..MAX_STEPS {
                    let at = Utc.from_utc_datetime(&cursor);
                    let local = cron.find_previous_occurrence(&at, false).ok()?.naive_utc();
                    if best.is_some() && local < now - DST_WINDOW {
                        break;
                    }
                    for slot in instants(tz, *fixed, local) {
                        if slot <= t && best.is_none_or(|b| slot > b) {
                            best = Some(slot);
                        }
                    }
                    cursor = local;
                }
                best
            }
        }
    }

    /// The first slot after `t` (epoch ms), if there is one; a whole
    /// second, like every slot, and always later than `t` (inside a
    /// repeated hour croner answered a time in the past, and the
    /// dispatcher spun until the hour ended).
    pub fn next_after(&self, t: i64) -> Option<i64> {
        match &self.when {
            When::Every(every) => (t.div_euclid(*every) + 1).checked_mul(*every),
            When::Cron(cron, tz, fixed) => {
                let now = tz
                    .timestamp_millis_opt(whole_second(t))
                    .single()?
                    .naive_local();
                let mut cursor = now - DST_WINDOW;
                let mut best: Option<i64> = None;
                for _ in 0..MAX_STEPS {
                    let at = Utc.from_utc_datetime(&cursor);
                    let local = cron.find_next_occurrence(&at, false).ok()?.naive_utc();
                    if best.is_some() && local > now + DST_WINDOW {
                        break;
                    }
                    for slot in instants(tz, *fixed, local) {
                        if slot > t && best.is_none_or(|b| slot < b) {
                            best = Some(slot);
                        }
                    }
                    cursor = local;
                }
                best
            }
        }
    }
}

/// How far local time moves at a daylight-saving change, at most (2 h,
/// Antarctica/Troll): the local times to look at around "now".
const DST_WINDOW: chrono::TimeDelta = chrono::TimeDelta::hours(3);
/// A bound on the steps of one search (a `* * * * *` schedule takes about
/// 360 to cross the window both ways).
const MAX_STEPS: usize = 100_000;

/// The instants (epoch ms) at which the local wall-clock time `local`
/// happens in `tz`, by jobd's rule for daylight-saving changes:
/// - a time that happens twice (fall back) is one slot for an expression
///   of one fixed time (the first pass), and two slots for any other
///   (`*/15`, `0 * * * *`: they follow the clock through both passes);
/// - a time that does not happen (spring forward) is, for a fixed time,
///   the first instant after the gap, once; for any other, no slot.
fn instants(tz: &Tz, fixed: bool, local: chrono::NaiveDateTime) -> Vec<i64> {
    use chrono::LocalResult;
    match tz.from_local_datetime(&local) {
        LocalResult::Single(at) => vec![at.timestamp_millis()],
        LocalResult::Ambiguous(first, second) => {
            if fixed {
                vec![first.timestamp_millis()]
            } else {
                vec![first.timestamp_millis(), second.timestamp_millis()]
            }
        }
        LocalResult::None if fixed => (1..=DST_WINDOW.num_minutes())
            .find_map(|m| {
                tz.from_local_datetime(&(local + chrono::TimeDelta::minutes(m)))
                    .earliest()
            })
            .map(|at| {
                // The first valid minute after the gap is the gap's end.
                vec![whole_second(at.timestamp_millis())]
            })
            .unwrap_or_default(),
        LocalResult::None => Vec::new(),
    }
}

/// Whether a 5-field expression names one fixed time of day: its minute
/// and hour fields are single numbers (`30 2 * * *`, `0 9 * * 1-5`).
fn fixed_time(expression: &str) -> bool {
    let mut fields = expression.split_whitespace();
    let number =
        |f: Option<&str>| f.is_some_and(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()));
    number(fields.next()) && number(fields.next())
}

/// The expression with `7` as Sunday in the day-of-week field written as
/// `0` where croner wants it (`7L`, `7#2`): cron takes both.
fn day_of_week_7_as_0(expression: &str) -> String {
    let mut fields: Vec<String> = expression.split_whitespace().map(String::from).collect();
    if let Some(dow) = fields.get_mut(4) {
        *dow = dow
            .split(',')
            .map(|part| match part.strip_prefix('7') {
                Some(rest) if rest.starts_with('L') || rest.starts_with('#') => format!("0{rest}"),
                _ => part.to_string(),
            })
            .collect::<Vec<_>>()
            .join(",");
    }
    fields.join(" ")
}

/// `t` (epoch ms) without its milliseconds.
fn whole_second(t: i64) -> i64 {
    t.div_euclid(1_000) * 1_000
}

/// Checks every `[cron.*]` section: the expression, the time zone and the
/// payload against its kind. Passed to [`Config::load_checked`] by every
/// command that loads the config, so a bad schedule stops `check-config`,
/// start-up and a reload like any other bad key.
pub fn check(config: &Config) -> Result<(), KeyError> {
    for (name, section) in &config.cron {
        Schedule::parse(name, section)?;
    }
    Ok(())
}

/// Every schedule of `config` (already checked by [`check`]).
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
    entries: Vec<Entry>,
}

/// One schedule as the dispatcher runs it.
#[derive(Debug)]
struct Entry {
    schedule: Schedule,
    /// When to look again (None: at once).
    next: Option<i64>,
    /// Whether its row in the database has been looked at (first look).
    started: bool,
    /// Tries in a row that failed.
    failures: u32,
}

/// The longest wait before trying a failing schedule again.
const MAX_BACKOFF_MS: i64 = 60_000;

impl Cron {
    /// The schedules to run.
    pub fn new(schedules: Vec<Schedule>) -> Cron {
        Cron {
            entries: schedules
                .into_iter()
                .map(|schedule| Entry {
                    schedule,
                    next: None,
                    started: false,
                    failures: 0,
                })
                .collect(),
        }
    }

    /// When the next slot of any schedule is due (epoch ms).
    pub fn next_due(&self) -> Option<i64> {
        self.entries.iter().filter_map(|e| e.next).min()
    }

    /// True when a schedule has not been started or a slot is due at `now`.
    pub fn due(&self, now: i64) -> bool {
        self.entries.iter().any(|e| e.next.is_none_or(|t| t <= now))
    }

    /// Starts new schedules and enqueues the due slots; returns how many
    /// jobs it enqueued. A failure (the database down, or refusing the job)
    /// is logged once and tried again after a backoff that doubles from 1 s
    /// to a minute, never on every turn: a refused insert looped 150 000
    /// times in 4 s.
    pub fn run_due(&mut self, store: &mut dyn Store, now: i64) -> usize {
        let mut enqueued = 0;
        for Entry {
            schedule,
            next,
            started,
            failures,
        } in &mut self.entries
        {
            if next.is_some_and(|t| t > now) {
                continue;
            }
            let Some(slot) = schedule.latest_at_or_before(now) else {
                *next = schedule.next_after(now);
                continue;
            };
            // First look: a schedule new to the database starts at this
            // slot; one that ran before catches up on its latest slot.
            let result = if *started {
                cron_enqueue(store, schedule, slot, now)
            } else {
                store
                    .cron_start(&schedule.name, slot)
                    .and_then(|last| match last {
                        Some(last) if last < slot => cron_enqueue(store, schedule, slot, now),
                        _ => Ok(None),
                    })
            };
            match result {
                Ok(id) => {
                    if *failures > 0 {
                        event!(
                            Info,
                            "cron.recovered",
                            name = schedule.name.as_str(),
                            failures = *failures
                        );
                    }
                    *failures = 0;
                    *started = true;
                    enqueued += usize::from(id.is_some());
                    *next = schedule.next_after(slot.max(now));
                }
                Err(e) => {
                    let backoff = (1_000i64 << (*failures).min(6)).min(MAX_BACKOFF_MS);
                    if *failures == 0 {
                        event!(
                            Error,
                            "cron.failed",
                            name = schedule.name.as_str(),
                            slot:% = format_slot(slot),
                            error:% = e,
                            action = "trying again after a backoff, up to a minute; logged again once it works"
                        );
                    }
                    *failures = failures.saturating_add(1);
                    *next = Some(now + backoff);
                }
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

    /// Regression: inside the second pass of a repeated hour, croner
    /// answered a next time in the past (02:30 CEST at 02:20 CET), and the
    /// dispatcher spun at full CPU until the hour ended.
    #[test]
    fn inside_a_repeated_hour_the_next_slot_is_never_in_the_past() {
        // Europe/Berlin 2026-10-25: 02:00–03:00 CEST, then 02:00–03:00 CET.
        let second_pass = utc(2026, 10, 25, 1, 20); // 02:20 CET
        for (expr, want) in [
            ("30 2 * * *", "2026-10-26T01:30:00Z"), // ran at 02:30 CEST: tomorrow
            ("*/15 * * * *", "2026-10-25T01:30:00Z"), // 02:30 CET
            ("0 * * * *", "2026-10-25T02:00:00Z"),  // 03:00 CET
        ] {
            let s = schedule(expr, "Europe/Berlin");
            for t in (0..60_000 * 40).step_by(61_000) {
                let now = second_pass + t;
                let next = s.next_after(now).unwrap();
                assert!(
                    next > now,
                    "{expr} at {}: {}",
                    format_slot(now),
                    format_slot(next)
                );
            }
            assert_eq!(
                format_slot(s.next_after(second_pass).unwrap()),
                want,
                "{expr}"
            );
        }
    }

    /// Expressions that are not one fixed time follow the clock through
    /// both passes of a repeated hour and skip a missing one; a fixed time
    /// runs once in either case.
    #[test]
    fn the_dst_rule_for_fixed_times_and_others() {
        let quarter = schedule("*/15 * * * *", "Europe/Berlin");
        // Fall back: 02:00, 02:15, 02:30, 02:45 CEST, then the same CET.
        let got = slots(&quarter, utc(2026, 10, 24, 23, 50), 10);
        assert_eq!(
            got,
            [
                "2026-10-25T00:00:00Z", // 02:00 CEST
                "2026-10-25T00:15:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-25T00:45:00Z",
                "2026-10-25T01:00:00Z", // 02:00 CET
                "2026-10-25T01:15:00Z",
                "2026-10-25T01:30:00Z",
                "2026-10-25T01:45:00Z",
                "2026-10-25T02:00:00Z", // 03:00 CET
                "2026-10-25T02:15:00Z",
            ]
        );
        // Spring forward: 01:45 CET, then 03:00 CEST; 02:xx does not exist.
        let got = slots(&quarter, utc(2026, 3, 29, 0, 40), 3);
        assert_eq!(
            got,
            [
                "2026-03-29T00:45:00Z", // 01:45 CET
                "2026-03-29T01:00:00Z", // 03:00 CEST
                "2026-03-29T01:15:00Z",
            ]
        );
        // Lord Howe moves by half an hour.
        let fixed = schedule("15 2 * * *", "Australia/Lord_Howe");
        // 2026-10-04 02:00 → 02:30 (+10:30 → +11:00): 02:15 runs at 02:30.
        let got = slots(&fixed, utc(2026, 10, 3, 12, 0), 2);
        assert_eq!(got, ["2026-10-03T15:30:00Z", "2026-10-04T15:15:00Z"]);
    }

    /// Regression: `0 1 * * *` in Berlin, after 01:00 ran on a
    /// spring-forward day, showed (and woke for) 03:00 CEST the same day.
    #[test]
    fn after_a_slot_on_a_spring_forward_day_the_next_is_the_next_day() {
        let s = schedule("0 1 * * *", "Europe/Berlin");
        let ran = utc(2026, 3, 29, 0, 0); // 01:00 CET
        assert_eq!(
            format_slot(s.next_after(ran).unwrap()),
            "2026-03-29T23:00:00Z"
        );
        assert_eq!(
            format_slot(s.next_after(ran + 30 * 60_000).unwrap()),
            "2026-03-29T23:00:00Z"
        );
    }

    /// Regression: `7L` (the last Sunday, 7 being Sunday as well as 0) was
    /// refused as "never fires".
    #[test]
    fn seven_is_sunday_in_last_and_nth_weekday_forms() {
        let seven = schedule("0 9 * * 7L", "UTC");
        let zero = schedule("0 9 * * 0L", "UTC");
        let from = utc(2026, 1, 1, 0, 0);
        assert_eq!(slots(&seven, from, 3), slots(&zero, from, 3));
        assert_eq!(slots(&seven, from, 1), ["2026-01-25T09:00:00Z"]);
        let second = schedule("0 9 * * 7#2", "UTC");
        assert_eq!(slots(&second, from, 1), ["2026-01-11T09:00:00Z"]);
        // With a day of the month too, either one fires (cron's OR).
        let either = schedule("0 9 15 * 7L", "UTC");
        assert_eq!(
            slots(&either, from, 4),
            [
                "2026-01-15T09:00:00Z",
                "2026-01-25T09:00:00Z",
                "2026-02-15T09:00:00Z",
                "2026-02-22T09:00:00Z"
            ]
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
        let KeyError { key, detail: why } = bad("61 * * * *", "UTC", "noop", empty.clone());
        assert_eq!(key, "cron.nightly.schedule");
        assert!(
            why.starts_with("\"61 * * * *\" is not a 5-field cron expression"),
            "{why}"
        );
        let KeyError { key, .. } = bad("0 0 0 * * *", "UTC", "noop", empty.clone());
        assert_eq!(key, "cron.nightly.schedule", "6 fields are refused");
        // Found by fuzzing: a huge @every overflowed the slot arithmetic.
        let KeyError { key, detail: why } =
            bad("@every6270 8\n8888888    w ", "UTC", "noop", empty.clone());
        assert_eq!(key, "cron.nightly.schedule");
        assert!(why.contains("@every must be from 1s to 366d"), "{why}");
        let KeyError { key, detail: why } = bad("0 0 31 2 *", "UTC", "noop", empty.clone());
        assert_eq!(key, "cron.nightly.schedule");
        assert!(why.contains("never fires"), "{why}");
        let KeyError { key, detail: why } = bad("@every soon", "UTC", "noop", empty.clone());
        assert_eq!(key, "cron.nightly.schedule");
        assert!(why.contains("@every takes a duration"), "{why}");
        let KeyError { key, detail: why } = bad("0 9 * * *", "Mars/Olympus", "noop", empty);
        assert_eq!(key, "cron.nightly.timezone");
        assert!(
            why.contains("\"Mars/Olympus\" is not an IANA time zone"),
            "{why}"
        );
        let KeyError { key, detail: why } =
            bad("0 9 * * *", "UTC", "noop", serde_json::json!({"sleep": 1}));
        assert_eq!(key, "cron.nightly.payload");
        assert!(why.contains("unknown field `sleep`"), "{why}");
    }
}
