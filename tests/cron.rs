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

fn schedule(expression: &str) -> jobd::daemon::cron::Schedule {
    let section: jobd::config::CronConfig =
        toml::from_str(&format!("schedule = \"{expression}\"\nkind = \"noop\"\n")).unwrap();
    jobd::daemon::cron::Schedule::parse("report", &section).unwrap()
}

/// Epoch ms of a UTC time.
fn at(h: u32, mi: u32, s: u32, ms: i64) -> i64 {
    use chrono::TimeZone;
    chrono::Utc
        .with_ymd_and_hms(2026, 12, 3, h, mi, s)
        .unwrap()
        .timestamp_millis()
        + ms
}

fn run_ats(store: &mut dyn jobd::store::Store) -> Vec<i64> {
    let jobs = store
        .list(&jobd::store::ListFilter {
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    let mut run_ats: Vec<i64> = jobs.iter().map(|j| j.run_at).collect();
    run_ats.sort_unstable();
    run_ats
}

/// Three restarts within one minute (each a new `Cron`, as a new daemon
/// process makes) enqueue that minute's slot once, at its exact instant.
#[test]
fn cron_slots_are_exact_across_restarts() {
    for (name, mut store, _guard) in common::backends("cron_restarts") {
        let every_minute = schedule("* * * * *");
        // The schedule is known from a run before the minute began.
        let mut first = jobd::daemon::cron::Cron::new(vec![every_minute.clone()]);
        first.run_due(store.as_mut(), at(17, 13, 30, 120));
        assert_eq!(run_ats(store.as_mut()), Vec::<i64>::new(), "{name}");
        let mut enqueued = 0;
        for now in [at(17, 14, 0, 506), at(17, 14, 0, 708), at(17, 14, 29, 936)] {
            let mut restarted = jobd::daemon::cron::Cron::new(vec![every_minute.clone()]);
            enqueued += restarted.run_due(store.as_mut(), now);
        }
        assert_eq!(enqueued, 1, "{name}: one job for 17:14");
        assert_eq!(run_ats(store.as_mut()), vec![at(17, 14, 0, 0)], "{name}");
        let rows = store.cron_rows().unwrap();
        assert_eq!(rows[0].last_slot, Some(at(17, 14, 0, 0)), "{name}");
    }
}

/// A schedule first seen in the evening, then reloaded (SIGHUP builds a new
/// `Cron`), does not enqueue that morning's 09:00 slot nine hours late.
#[test]
fn a_schedule_first_seen_at_reload_is_not_enqueued_late() {
    for (name, mut store, _guard) in common::backends("cron_reload") {
        let weekdays = schedule("0 9 * * 1-5");
        let mut seen = jobd::daemon::cron::Cron::new(vec![weekdays.clone()]);
        assert_eq!(seen.run_due(store.as_mut(), at(18, 0, 0, 123)), 0, "{name}");
        let mut reloaded = jobd::daemon::cron::Cron::new(vec![weekdays.clone()]);
        assert_eq!(
            reloaded.run_due(store.as_mut(), at(18, 0, 5, 456)),
            0,
            "{name}"
        );
        assert_eq!(
            run_ats(store.as_mut()),
            Vec::<i64>::new(),
            "{name}: nothing enqueued late"
        );
        // The next morning's slot runs, once.
        let next = at(9, 0, 0, 0) + 24 * 3_600_000;
        assert_eq!(reloaded.next_due(), Some(next), "{name}");
        assert_eq!(reloaded.run_due(store.as_mut(), next + 250), 1, "{name}");
        let mut again = jobd::daemon::cron::Cron::new(vec![weekdays]);
        assert_eq!(again.run_due(store.as_mut(), next + 750), 0, "{name}");
        assert_eq!(run_ats(store.as_mut()), vec![next], "{name}");
    }
}

/// Walks a daemon's cron through a time span the way the dispatcher does
/// (run what is due, then sleep until the next due time), failing if it
/// would wake again at once (the spin inside a repeated hour).
fn walk(
    cron: &mut jobd::daemon::cron::Cron,
    store: &mut dyn jobd::store::Store,
    from: i64,
    to: i64,
) {
    let mut now = from;
    let mut turns = 0;
    while now < to {
        if cron.due(now) {
            cron.run_due(store, now);
        }
        let next = cron.next_due().expect("a schedule always has a next slot");
        assert!(next > now, "woken again at once at {now}: next {next}");
        turns += 1;
        assert!(turns < 1_000, "the cron loop spins");
        now = next;
    }
}

/// Regression: inside the repeated hour of a fall-back night the next slot
/// was in the past and the dispatcher spun. Through the whole Berlin night
/// (both backends): a fixed time runs once, an interval runs through both
/// passes, each slot once, nothing spins.
#[test]
fn a_fall_back_night_enqueues_each_slot_once_without_spinning() {
    for (name, mut store, _guard) in common::backends("cron_dst") {
        let parse = |expr: &str, section: &str| {
            let config: jobd::config::CronConfig = toml::from_str(&format!(
                "schedule = \"{expr}\"\nkind = \"noop\"\ntimezone = \"Europe/Berlin\"\n"
            ))
            .unwrap();
            jobd::daemon::cron::Schedule::parse(section, &config).unwrap()
        };
        let mut cron = jobd::daemon::cron::Cron::new(vec![
            parse("*/15 * * * *", "quarter"),
            parse("30 2 * * *", "nightly"),
        ]);
        let hour = |h: u32, m: u32| {
            use chrono::TimeZone;
            chrono::Utc
                .with_ymd_and_hms(2026, 10, 25, h, m, 0)
                .unwrap()
                .timestamp_millis()
        };
        // 00:05 CEST (22:05 UTC the day before) to 03:35 CET.
        walk(
            &mut cron,
            store.as_mut(),
            hour(0, 0) - 115 * 60_000,
            hour(2, 35),
        );
        let quarters = (0..=10).map(|i| hour(0, 0) + i * 15 * 60_000);
        let mut want: Vec<i64> = quarters.collect(); // 02:00 CEST … 03:30 CET
        want.push(hour(0, 30)); // nightly, 02:30 CEST only
        want.sort_unstable();
        // The first quarter slots of the walk (22:15 … 23:45 UTC) too.
        let mut got = run_ats(store.as_mut());
        got.retain(|&t| t >= hour(0, 0));
        assert_eq!(got, want, "{name}");
    }
}

/// Regression: a job the database refused (a cron `timeout` that broke its
/// CHECK) was tried again on every turn: 150 000 log lines in 4 s and no
/// job ran. A failure is retried after a backoff; once the database takes
/// the job again, the slot is enqueued.
#[test]
fn a_refused_cron_insert_backs_off_instead_of_looping() {
    for (name, mut store, guard) in common::backends("cron_refused") {
        let refuse = |on: bool| match guard.downcast_ref::<common::pg::Schema>() {
            Some(schema) => {
                let sql = if on {
                    "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$; \
                     CREATE TRIGGER refuse BEFORE INSERT ON jobs FOR EACH ROW EXECUTE FUNCTION refuse();"
                } else {
                    "DROP TRIGGER refuse ON jobs;"
                };
                schema.psql(sql).unwrap();
            }
            None => {
                let dir = guard.downcast_ref::<tempfile::TempDir>().unwrap();
                let sql = if on {
                    "CREATE TRIGGER refuse BEFORE INSERT ON jobs BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;"
                } else {
                    "DROP TRIGGER refuse;"
                };
                common::sqlite3(&dir.path().join("jobd.db"), sql).succeeds();
            }
        };
        let tick = schedule("@every 1s");
        let mut cron = jobd::daemon::cron::Cron::new(vec![tick]);
        let t0 = at(12, 0, 0, 0);
        cron.run_due(store.as_mut(), t0); // first look: starts, enqueues nothing
        refuse(true);
        assert_eq!(cron.run_due(store.as_mut(), t0 + 1_000), 0, "{name}");
        // Not tried again on the next turns: the next look is a backoff away.
        let next = cron.next_due().unwrap();
        assert!(next >= t0 + 2_000, "{name}: retried at {next}");
        assert!(!cron.due(t0 + 1_500), "{name}");
        cron.run_due(store.as_mut(), next); // fails again: the wait doubles
        let again = cron.next_due().unwrap();
        assert!(again - next >= 2_000, "{name}: {again} after {next}");
        refuse(false);
        assert_eq!(cron.run_due(store.as_mut(), again), 1, "{name}");
        assert_eq!(
            run_ats(store.as_mut()),
            vec![again / 1_000 * 1_000],
            "{name}"
        );
    }
}

/// The real binary with its clock frozen (libfaketime) at 02:20 CET, in
/// the second pass of Berlin's repeated hour: `jobd cron` showed the next
/// quarter as 02:30 CEST, an hour in the past.
#[test]
fn jobd_cron_inside_a_repeated_hour_shows_a_next_time_ahead() {
    let home = Home::with_config(
        "[cron.quarter]\nschedule = \"*/15 * * * *\"\ntimezone = \"Europe/Berlin\"\nkind = \"noop\"\n\
         [cron.nightly]\nschedule = \"30 2 * * *\"\ntimezone = \"Europe/Berlin\"\nkind = \"noop\"\n",
    );
    home.migrate();
    let out = common::Run(
        home.cmd(&["cron"])
            .env("TZ", "UTC")
            .env("FAKETIME", "@2026-10-25 01:20:00")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .env("LD_PRELOAD", common::LIBFAKETIME)
            .output()
            .unwrap(),
    )
    .succeeds();
    let row = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .to_string()
    };
    assert!(row("quarter").contains("2026-10-25 02:30:00 CET"), "{out}");
    assert!(row("nightly").contains("2026-10-26 02:30:00 CET"), "{out}");
}

/// Three daemons on one database enqueue each slot of a schedule exactly
/// once, none skipped, on either backend.
#[test]
fn three_daemons_enqueue_each_cron_slot_exactly_once() {
    for backend in common::homes_with(
        "cron",
        "[daemon]\nshutdown_grace = \"100ms\"\n\
         [cron.tick]\nschedule = \"@every 1s\"\nkind = \"noop\"\n",
    ) {
        three_daemons_one_schedule(&backend);
    }
}

fn three_daemons_one_schedule(backend: &common::BackendHome) {
    let home = &backend.home;
    home.ok(&["migrate"]);
    let daemons: Vec<_> = ["a.log", "b.log", "c.log"]
        .iter()
        .map(|log| home.daemon_logging_to(log))
        .collect();
    common::wait_for(common::PATIENCE, || {
        (backend
            .value("SELECT count(*) FROM jobs;")
            .parse::<i64>()
            .unwrap()
            >= 5)
            .then_some(())
    })
    .expect("the schedule enqueues");
    for daemon in daemons {
        daemon.stop();
    }
    let slots: Vec<i64> = backend
        .value("SELECT run_at FROM jobs ORDER BY run_at;")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let mut distinct = slots.clone();
    distinct.dedup();
    assert_eq!(distinct, slots, "a slot enqueued twice");
    for pair in slots.windows(2) {
        assert_eq!(pair[1] - pair[0], 1_000, "a slot skipped: {slots:?}");
    }
}
