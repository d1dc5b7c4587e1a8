//! Rows a client stored that jobd cannot read as text, or whose numbers
//! are at the edge of their range: one of them must never stall the
//! other queues nor break a reader.
//!
//! SQLite stores whatever bytes a client casts to TEXT
//! (`CAST(x'…' AS TEXT)` passes `json_valid`), so the tests of text run
//! on SQLite (PostgreSQL refuses such text at insert); those of numbers
//! run on both.

mod common;

use common::{Home, NOW};

/// Regression: a row a client wrote with `attempts` at the largest
/// integer made `attempts + 1` fail every claim that met it (out of range
/// on PostgreSQL, a REAL refused by SQLite's STRICT table), so the jobs
/// behind it never ran, on any daemon. The claim leaves that count as it is.
#[test]
fn a_row_with_the_largest_attempt_count_stalls_no_claim() {
    for backend in common::homes("maxattempts") {
        let home = &backend.home;
        home.migrate();
        backend.value(
            "INSERT INTO jobs (kind, attempts, priority, max_attempts) \
             VALUES ('noop', 9223372036854775807, 5, 1);",
        );
        backend.value("INSERT INTO jobs (kind) VALUES ('noop');");
        let daemon = home.daemon_logging_to("d.log");
        backend.wait_value(
            "SELECT count(*) FROM jobs WHERE state = 'succeeded';",
            "2",
            "both jobs ran",
        );
        daemon.stop();
        assert_eq!(
            backend.value("SELECT attempts FROM jobs WHERE priority = 5;"),
            "9223372036854775807"
        );
    }
}

/// Regression: a row whose `attempts` a client set below zero (SQLite
/// stores it with `PRAGMA ignore_check_constraints`) made the claim's
/// `attempts + 1` fail its CHECK, so every claim failed and every queue
/// stalled. The claim counts such a job's attempt as its first.
#[test]
fn a_row_with_a_negative_attempt_count_stalls_no_claim() {
    let home = Home::new();
    home.migrate();
    home.text(
        "PRAGMA ignore_check_constraints = 1; \
         INSERT INTO jobs (kind, attempts, priority) VALUES ('noop', -5, 5); \
         INSERT INTO jobs (kind, queue) VALUES ('noop', 'other');",
    );
    let daemon = home.daemon_logging_to("d.log");
    let ran = common::wait_for(common::PATIENCE, || {
        (home.text("SELECT count(*) FROM jobs WHERE state = 'succeeded';") == "2").then_some(())
    });
    let log = daemon.stop();
    assert!(ran.is_some(), "{log}");
    assert_eq!(
        home.text("SELECT attempts FROM jobs WHERE priority = 5;"),
        "1"
    );
}

/// Regression: jobs a client marked `running` by SQL stayed running for
/// good. With no lease (`lease_until` NULL) the rescue, which looks for
/// a lease in the past, never took them back, and `cancel`/`retry`
/// could not either; on PostgreSQL a rescued row without a worker
/// panicked the maintenance thread. One marked with the live daemon's
/// own id but no start time was given back and fenced out at every lease
/// renewal, forever (`job.orphaned` then `job.stale`). Each is taken
/// back as lost and runs.
#[test]
fn jobs_marked_running_by_hand_are_taken_back() {
    for backend in common::homes_with("handrunning", "[daemon]\nlease = \"2s\"\n") {
        let home = &backend.home;
        home.migrate();
        backend.value(
            "INSERT INTO jobs (id, kind, state) VALUES (1, 'noop', 'running'); \
             INSERT INTO jobs (id, kind, state, lease_until) VALUES (2, 'noop', 'running', 0); \
             INSERT INTO jobs (id, kind, queue) VALUES (3, 'noop', 'later');",
        );
        home.ok(&["pause", "later"]);
        let daemon = home.daemon_logging_to("d.log");
        backend.wait_value(
            "SELECT count(*) FROM jobs WHERE state = 'succeeded' AND id IN (1, 2);",
            "2",
            "the jobs without a lease or a worker ran",
        );
        // Job 3 as if this daemon held it, but with no start time.
        let me = backend.value("SELECT id FROM workers;");
        backend.value(&format!(
            "UPDATE jobs SET state = 'running', worker = '{me}', attempts = 1, \
             lease_until = {}, started_at = NULL WHERE id = 3;",
            jobd::job::now_ms() + 600_000
        ));
        home.ok(&["resume", "later"]);
        backend.wait_value(
            "SELECT state FROM jobs WHERE id = 3;",
            "succeeded",
            "the job marked as this daemon's ran",
        );
        let log = daemon.stop();
        assert!(!log.contains("panicked"), "{}: {log}", backend.name);
        let show = home.ok(&["show", "1"]);
        assert!(show.contains("rescued"), "{}: {show}", backend.name);
    }
}

/// Drops the schema's UTF-8 guards, if it has any, so these rows can be
/// stored as a file made before the guards (or a client that removed
/// them) would hold them.
fn without_utf8_guards(home: &Home) {
    let names =
        home.text("SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE '%utf8%';");
    for name in names.lines().filter(|n| !n.is_empty()) {
        home.sqlite3(&format!("DROP TRIGGER {name};")).succeeds();
    }
}

/// Regression: one row whose payload was not UTF-8 made every claim fail
/// (`db.error op=claim … invalid utf-8`) and stalled every queue; one whose
/// queue was not UTF-8 did the same, and `jobd list`/`show` failed on both.
#[test]
fn a_non_utf8_row_goes_dead_and_claiming_goes_on() {
    let home = Home::new();
    home.migrate();
    without_utf8_guards(&home);
    // {"a":"<ff><fe>"}: valid JSON to json_valid, not UTF-8.
    let bad_payload = home.insert(&format!(
        "('noop', CAST(x'7b2261223a22fffe227d' AS TEXT), 'default', 5, {NOW}, 1, NULL)"
    ))[0];
    let bad_queue = home.insert(&format!(
        "('noop', '{{}}', CAST(x'6d61696cff' AS TEXT), 5, {NOW}, 1, NULL)"
    ))[0];
    let bad_kind = home.insert(&format!(
        "(CAST(x'6e6f6f70ff' AS TEXT), '{{}}', 'default', 5, {NOW}, 1, NULL)"
    ))[0];
    let good = home.insert(&format!(
        "('noop', '{{}}', 'default', 0, {NOW}, 1, NULL), ('noop', '{{}}', 'other', 0, {NOW}, 1, NULL)"
    ));
    let daemon = home.daemon();
    for id in &good {
        home.wait_state(*id, "succeeded");
    }
    for id in [bad_payload, bad_queue, bad_kind] {
        home.wait_state(id, "dead");
    }
    let error = |id: i64| home.text(&format!("SELECT last_error FROM jobs WHERE id = {id};"));
    assert_eq!(
        error(bad_payload),
        "column payload is not valid UTF-8 (byte 0xff at offset 6); insert text, not raw bytes"
    );
    assert!(
        error(bad_queue).starts_with("column queue is not valid UTF-8 (byte 0xff at offset 4)"),
        "{}",
        error(bad_queue)
    );
    assert!(
        error(bad_kind).starts_with("column kind is not valid UTF-8 (byte 0xff at offset 4)"),
        "{}",
        error(bad_kind)
    );
    // Claiming goes on after them.
    let later = home.insert_job("noop", "{}", "1", "NULL");
    home.wait_state(later, "succeeded");
    let log = daemon.stop();
    assert!(!log.contains("op=claim"), "{log}");
}

/// Regression: `jobd list`, `show`, `stats` and `tail` failed as a whole on
/// a row with bytes that are not UTF-8; they show those bytes escaped.
#[test]
fn readers_escape_undecodable_bytes() {
    let home = Home::new();
    home.migrate();
    without_utf8_guards(&home);
    let id = home.insert(&format!(
        "('noop', CAST(x'7b2261223a22fffe227d' AS TEXT), CAST(x'6d61696cff' AS TEXT), 0, {NOW}, 1, NULL)"
    ))[0];
    home.sqlite3(&format!(
        "UPDATE jobs SET unique_key = CAST(x'6b6579ff' AS TEXT) WHERE id = {id};"
    ))
    .succeeds();
    let list = home.ok(&["list"]);
    assert!(list.contains(r"mail\xff"), "{list}");
    let json = home.ok(&["list", "--json"]);
    assert!(json.contains(r"mail\\xff"), "{json}");
    let show = home.ok(&["show", &id.to_string()]);
    assert!(show.contains(r"\xff\xfe"), "{show}");
    assert!(show.contains(r"key\xff"), "{show}");
    let stats = home.ok(&["stats"]);
    assert!(stats.contains(r"mail\xff"), "{stats}");
    home.ok(&["stats", "--json"]);
    // Once the daemon has set the job aside, history readers show it too.
    let daemon = home.daemon();
    home.wait_state(id, "dead");
    drop(daemon);
    let show = home.ok(&["show", &id.to_string()]);
    assert!(show.contains("not valid UTF-8"), "{show}");
    home.ok(&["cron"]);
}

/// Regression: `list`, `show`, `stats` and `cron` printed raw control
/// characters from the database: a queue name with a newline forged a
/// whole table row, an `ESC ]0;` retitled the terminal. Every control and
/// bidi character is now shown escaped.
#[test]
fn human_output_escapes_control_characters() {
    let home = Home::new();
    home.migrate();
    let evil_queue =
        "'mail' || char(10) || '999  queued  forged' || char(27) || ']0;pwned' || char(7)";
    let evil_kind = "'noop' || char(13) || char(155) || '31m'";
    let evil_error = "'boom ' || char(27) || '[2J' || char(8238) || 'txt.exe'";
    home.sqlite3(&format!(
        "INSERT INTO jobs(kind, payload, queue, run_at, state, attempts, last_error, finished_at) \
         VALUES ({evil_kind}, '{{}}', {evil_queue}, {NOW}, 'dead', 1, {evil_error}, {NOW}); \
         INSERT INTO cron(name, last_slot, last_job_id) VALUES ('gone' || char(27) || '[1A', {NOW}, 1);"
    ))
    .succeeds();
    let outputs = [
        ("list", home.ok(&["list"])),
        ("show", home.ok(&["show", "1"])),
        ("stats", home.ok(&["stats"])),
        ("cron", home.ok(&["cron"])),
    ];
    for (command, out) in &outputs {
        let raw: Vec<char> = out
            .chars()
            .filter(|&c| (c.is_control() && c != '\n') || ('\u{202a}'..='\u{202e}').contains(&c))
            .collect();
        assert!(raw.is_empty(), "jobd {command} printed {raw:?}:\n{out}");
    }
    let list = &outputs[0].1;
    assert_eq!(list.lines().count(), 2, "one header, one job:\n{list}");
    assert!(
        list.contains("mail\\n999  queued  forged\\u{001b}]0;pwned\\u{0007}"),
        "{list}"
    );
    assert!(list.contains("noop\\r\\u{009b}31m"), "{list}");
    let show = &outputs[1].1;
    assert!(show.contains("boom \\u{001b}[2J\\u{202e}txt.exe"), "{show}");
    assert!(
        outputs[3].1.contains("gone\\u{001b}[1A"),
        "{}",
        outputs[3].1
    );
}

/// Numbers at the edges of their range that a client wrote (a `run_at`,
/// the times of a success, a daemon's heartbeat, a batch's counters)
/// break no reader and no daemon: `stats` panicked on the lag and on the
/// daemon's age, `show` and `tail` failed on the success's duration (a
/// REAL on SQLite, out of range on PostgreSQL; `tail` stopped following),
/// `batch` panicked adding the counters, and the daemon's maintenance
/// thread panicked forgetting the daemon that never beat.
#[test]
fn numbers_at_the_edges_break_no_reader_and_no_daemon() {
    const MIN: i64 = i64::MIN;
    const MAX: i64 = i64::MAX;
    for b in common::homes("edges") {
        let home = &b.home;
        home.migrate();
        b.value(&format!(
            "INSERT INTO jobs (id, kind, queue, run_at) VALUES (1, 'noop', 'far', {MIN}); \
             INSERT INTO workers (id, host, pid, version, started_at, heartbeat_at, queues) \
             VALUES ('ghost:1:1', 'ghost', 1, '0', {MIN}, {MIN}, '*'); \
             INSERT INTO batches (name, total, succeeded, dead, cancelled) \
             VALUES ('b', {MAX}, {MAX}, {MAX}, {MAX});"
        ));
        // The daemon forgets the daemon that never beat, and runs jobs.
        let daemon = home.daemon_logging_to("d.log");
        daemon.wait_log("worker.forgotten");
        let mut tail =
            common::Spawned::start(home.cmd(&["tail"]).stdout(std::process::Stdio::piped()));
        let lines = common::lines(tail.stdout.take().unwrap());
        let mut seen = Vec::new();
        let mut tail_shows = |id: i64, within: std::time::Duration| {
            let needle = format!("job={id} ");
            common::wait_for(within, || {
                let line = lines
                    .recv_timeout(std::time::Duration::from_millis(200))
                    .ok()?;
                seen.push(line.clone());
                line.contains(&needle).then_some(())
            })
            .is_some()
        };
        // Tail follows from the newest place when it starts, which may come
        // after a job run meanwhile: jobs are run until one shows.
        let following = common::wait_for(common::PATIENCE, || {
            let id = 100 + b.count("SELECT count(*) FROM jobs WHERE id >= 100");
            b.value(&format!(
                "INSERT INTO jobs (id, kind) VALUES ({id}, 'noop');"
            ));
            tail_shows(id, std::time::Duration::from_secs(2)).then_some(())
        });
        assert!(following.is_some(), "{}: tail never followed", b.name);
        // A success with the most extreme times, placed through job_runs.
        b.value(&format!(
            "INSERT INTO jobs (id, kind, state, attempts, worker, started_at, finished_at) \
             VALUES (2, 'noop', 'succeeded', 1, 'w', {MIN}, {MAX}); \
             INSERT INTO job_runs (job_id, attempt, worker, queue, kind, started_at, finished_at, \
             outcome, error, duration_ms) VALUES (2, 1, 'w', 'default', 'noop', {MIN}, {MAX}, \
             'succeeded', NULL, 0);"
        ));
        for args in [
            &["stats"][..],
            &["stats", "--json"],
            &["show", "2"],
            &["show", "2", "--json"],
            &["list"],
            &["batch", "b"],
        ] {
            let out = home.cmd(args).output().unwrap();
            assert!(
                out.status.success(),
                "{}: jobd {args:?}: {}",
                b.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let shown = home.ok(&["show", "2", "--json"]);
        assert!(shown.contains(&MAX.to_string()), "{}: {shown}", b.name);
        // Tail shows the extreme success and goes on after it.
        assert!(
            tail_shows(2, common::PATIENCE),
            "{}: tail did not show job 2",
            b.name
        );
        b.value("INSERT INTO jobs (id, kind) VALUES (3, 'noop');");
        let after = tail_shows(3, common::PATIENCE);
        tail.kill().unwrap();
        tail.wait().unwrap();
        assert!(after, "{}: tail printed {seen:?}", b.name);
        daemon.stop();
    }
}
