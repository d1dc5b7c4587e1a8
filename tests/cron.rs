//! Periodic jobs through the real daemon: one job per slot, exactly once
//! with two daemons on one file, one catch-up job after downtime, bad
//! sections refused naming them, and `jobd cron`.

mod common;

use common::{snippet, wait_for, Home, PATIENCE};

const TICK: &str =
    "[cron.tick]\nschedule = \"@every 1s\"\nkind = \"noop\"\npayload = { sleep_ms = 1 }\n\
                    [daemon]\nshutdown_grace = \"100ms\"\n";

/// The `run_at` of every job the schedule enqueued, in id order.
fn slots(home: &Home) -> Vec<i64> {
    let text =
        home.text("SELECT group_concat(run_at, ' ') FROM (SELECT run_at FROM jobs ORDER BY id);");
    text.split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect()
}

/// Waits until the schedule has enqueued `n` jobs.
fn wait_jobs(home: &Home, n: i64) {
    home.wait_count(&format!("SELECT min(count(*), {n}) FROM jobs"), n);
}

#[test]
fn an_every_1s_schedule_enqueues_one_job_per_second() {
    let home = Home::with_config(TICK);
    home.migrate();
    let daemon = home.daemon();
    wait_jobs(&home, 3);
    let log = daemon.stop();
    let slots = slots(&home);
    for pair in slots.windows(2) {
        assert_eq!(pair[1] - pair[0], 1_000, "{slots:?}");
    }
    assert!(slots.iter().all(|s| s % 1_000 == 0), "aligned: {slots:?}");
    let last_id = home.query_i64("SELECT max(id) FROM jobs");
    assert_eq!(
        home.query_i64("SELECT last_job_id FROM cron WHERE name = 'tick'"),
        last_id
    );
    assert!(
        log.contains(&format!("cron.enqueued name=tick id={last_id} slot=")),
        "{log}"
    );
    let listed = home.ok(&["cron"]);
    assert!(listed.contains("tick  @every 1s  UTC"), "{listed}");
    assert!(
        listed.contains(&format!("{last_id}         succeeded")),
        "{listed}"
    );
}

#[test]
fn two_daemons_on_one_file_enqueue_each_slot_exactly_once() {
    let home = Home::with_config(TICK);
    home.migrate();
    let first = home.daemon_logging_to("first.log");
    let second = home.daemon_logging_to("second.log");
    assert_eq!(home.query_i64("SELECT count(*) FROM workers"), 2);
    wait_jobs(&home, 8);
    first.stop();
    second.stop();
    let slots = slots(&home);
    let mut sorted = slots.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        slots.len(),
        "a slot enqueued twice: {slots:?}"
    );
    for pair in sorted.windows(2) {
        assert_eq!(pair[1] - pair[0], 1_000, "a slot skipped: {sorted:?}");
    }
}

#[test]
fn after_downtime_only_the_latest_missed_slot_is_enqueued() {
    let config = "[cron.hourly]\nschedule = \"@every 1h\"\nkind = \"noop\"\n";
    let home = Home::with_config(config);
    home.migrate();
    const HOUR: i64 = 3_600_000;
    let latest = jobd::job::now_ms() / HOUR * HOUR;
    // The daemon last ran five slots ago.
    home.sqlite3(&format!(
        "INSERT INTO cron(name, last_slot) VALUES ('hourly', {});",
        latest - 5 * HOUR
    ))
    .succeeds();
    let daemon = home.daemon();
    daemon.wait_log("cron.enqueued name=hourly");
    let log = daemon.stop();
    let slots = slots(&home);
    assert!(
        slots.iter().all(|&s| s >= latest),
        "a missed slot was replayed: {slots:?}\n{log}"
    );
    assert_eq!(
        slots.iter().filter(|&&s| s == latest).count(),
        1,
        "{slots:?}"
    );
}

#[test]
fn a_new_schedule_starts_at_its_next_slot_without_a_burst() {
    let config = "[cron.hourly]\nschedule = \"@every 1h\"\nkind = \"noop\"\n";
    let home = Home::with_config(config);
    home.migrate();
    let daemon = home.daemon();
    let started = wait_for(PATIENCE, || {
        let n = home.query_i64("SELECT count(*) FROM cron WHERE name = 'hourly'");
        (n == 1).then_some(())
    });
    assert!(started.is_some());
    daemon.stop();
    assert_eq!(home.query_i64("SELECT count(*) FROM jobs"), 0);
}

#[test]
fn bad_schedules_are_refused_naming_the_section() {
    let cases = [
        (
            "schedule = \"61 * * * *\"\nkind = \"noop\"",
            "cron.nightly.schedule",
        ),
        (
            "schedule = \"@every\"\nkind = \"noop\"",
            "cron.nightly.schedule",
        ),
        (
            "schedule = \"0 3 * * *\"\ntimezone = \"Europe/Atlantis\"\nkind = \"noop\"",
            "cron.nightly.timezone",
        ),
        (
            "schedule = \"0 3 * * *\"\nkind = \"nope\"",
            "cron.nightly.kind",
        ),
        (
            "schedule = \"0 3 * * *\"\nkind = \"http\"\npayload = { uri = \"http://x\" }",
            "cron.nightly.payload",
        ),
    ];
    for (section, key) in cases {
        let home = Home::with_config(&format!("[cron.nightly]\n{section}\n"));
        let out = home.jobd(&["check-config"]).fails(1, key);
        assert!(out.lines().count() == 1, "one sentence: {out}");
        home.jobd(&["run"]).fails(1, key);
    }
}

#[test]
fn the_readme_examples_are_valid_schedules() {
    let home = Home::with_config(&snippet("cron.toml"));
    home.migrate();
    let checked = home.ok(&["check-config"]);
    assert!(checked.contains("[cron.morning-report]"), "{checked}");
    let listed = home.ok(&["cron"]);
    for line in [
        "cleanup         */5 * * * *  UTC",
        "heartbeat       @every 30s   UTC",
        "morning-report  0 9 * * 1-5  Europe/Berlin",
    ] {
        assert!(listed.contains(line), "{line:?} in\n{listed}");
    }
}

#[test]
fn a_reload_with_a_bad_schedule_keeps_the_running_ones() {
    let home = Home::with_config(TICK);
    home.migrate();
    let daemon = home.daemon();
    wait_jobs(&home, 1);
    home.write_config("[cron.tick]\nschedule = \"@every 1 fortnight\"\nkind = \"noop\"\n");
    daemon.signal(libc::SIGHUP);
    let line = daemon.wait_log("config.invalid");
    assert!(line.contains("cron.tick.schedule"), "{line}");
    let before = home.query_i64("SELECT count(*) FROM jobs");
    wait_jobs(&home, before + 2);
    daemon.stop();
}
