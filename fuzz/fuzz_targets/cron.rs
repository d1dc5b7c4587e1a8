//! Schedule parsing and slot arithmetic on any expression and time zone:
//! an error or a schedule, and slots that move forward, never a panic.
#![no_main]
use jobd::config::CronConfig;
use jobd::cron::Schedule;
use libfuzzer_sys::fuzz_target;

const ZONES: [&str; 4] = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
];

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let zone = ZONES[data[0] as usize % ZONES.len()];
    let at = i64::from_le_bytes(data[1..9].try_into().unwrap()) % 4_102_444_800_000; // before 2100
    let Ok(expression) = std::str::from_utf8(&data[9..]) else {
        return;
    };
    let section = CronConfig {
        schedule: expression.to_string(),
        kind: "noop".into(),
        payload: serde_json::json!({}),
        queue: "default".into(),
        priority: 0,
        max_attempts: None,
        timeout: None,
        timezone: zone.into(),
    };
    let Ok(schedule) = Schedule::parse("fuzz", &section) else {
        return;
    };
    let at = at.abs();
    if let Some(next) = schedule.next_after(at) {
        assert!(
            next > at,
            "{expression:?} in {zone}: next {next} not after {at}"
        );
    }
    if let Some(latest) = schedule.latest_at_or_before(at) {
        assert!(
            latest <= at,
            "{expression:?} in {zone}: latest {latest} after {at}"
        );
    }
});
