//! The schema as SQL clients see it: inserts from the real `sqlite3` shell,
//! CHECK rules, de-duplication, the claim index, migrations and bad files.

mod common;

use std::time::Duration;

use common::{sqlite3, Home};
use jobd::store::{cpu_kind_test, OpenMode, SqliteStore, StoreError, SCHEMA_VERSION};

#[test]
fn spec_inserts_from_the_sqlite3_shell_work() {
    let home = Home::new();
    home.migrate();
    let run = home.sqlite3(
        "INSERT INTO jobs(kind, payload) VALUES ('http', '{\"url\":\"http://127.0.0.1:8080/hook\",\"method\":\"POST\",\"json\":{\"order\":42}}');
         INSERT INTO jobs(kind, payload, run_at) VALUES ('noop', '{}', unixepoch('now','+5 minutes') * 1000);
         INSERT OR IGNORE INTO jobs(kind, payload, unique_key) VALUES ('email', '{\"to\":\"a@x\"}', 'welcome:user:42');
         SELECT count(*), sum(state = 'queued'), sum(attempts) FROM jobs;",
    );
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert_eq!(run.stdout().trim(), "3|3|0");
    // Defaults are epoch milliseconds, near now, in the formula SQLite 3.40 understands.
    let skew = home.query_i64(
        "SELECT abs(created_at - CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)) FROM jobs WHERE id = 1",
    );
    assert!(skew < 60_000, "created_at is {skew} ms from now");
    let ahead = home.query_i64("SELECT run_at - created_at FROM jobs WHERE id = 2");
    assert!(
        (295_000..=305_000).contains(&ahead),
        "run_at is {ahead} ms ahead"
    );
}

#[test]
fn each_check_rule_fails_in_the_shell_at_once() {
    let home = Home::new();
    home.migrate();
    let cases = [
        (
            "INSERT INTO jobs(kind, payload) VALUES ('noop', '{not json');",
            "payload_is_json",
        ),
        (
            "INSERT INTO jobs(kind, payload) VALUES ('', '{}');",
            "kind_not_empty",
        ),
        (
            "INSERT INTO jobs(kind, max_attempts) VALUES ('noop', 0);",
            "max_attempts_at_least_1",
        ),
        (
            "INSERT INTO jobs(kind, timeout_ms) VALUES ('noop', -5);",
            "timeout_ms_positive",
        ),
        (
            "INSERT INTO jobs(kind, state) VALUES ('noop', 'done');",
            "state_known",
        ),
        (
            "INSERT INTO jobs(payload) VALUES ('{}');",
            "NOT NULL constraint failed: jobs.kind",
        ),
        // INSERT OR IGNORE must not turn a broken row into a silent drop.
        (
            "INSERT OR IGNORE INTO jobs(kind, payload) VALUES ('noop', '{');",
            "payload_is_json",
        ),
        (
            "INSERT OR IGNORE INTO jobs(kind) VALUES ('');",
            "kind_not_empty",
        ),
        (
            "INSERT OR IGNORE INTO jobs(kind, max_attempts) VALUES ('noop', 0);",
            "max_attempts_at_least_1",
        ),
        (
            "INSERT OR IGNORE INTO jobs(kind, timeout_ms) VALUES ('noop', 0);",
            "timeout_ms_positive",
        ),
    ];
    for (sql, needle) in cases {
        let run = home.sqlite3(sql);
        assert_ne!(run.code(), 0, "{sql} was accepted");
        let err = run.stderr();
        assert!(err.contains(needle), "{sql}: {err}");
        if needle.contains('_') && !needle.contains(' ') {
            assert!(err.contains("CHECK constraint failed"), "{sql}: {err}");
        }
    }
    assert_eq!(home.query_i64("SELECT count(*) FROM jobs"), 0);
}

#[test]
fn insert_or_ignore_deduplicates_on_unique_key_while_active() {
    let home = Home::new();
    home.migrate();
    let insert = "INSERT OR IGNORE INTO jobs(kind, unique_key) VALUES ('noop', 'k');";
    for _ in 0..3 {
        assert_eq!(home.sqlite3(insert).code(), 0);
    }
    assert_eq!(home.query_i64("SELECT count(*) FROM jobs"), 1);
    // A finished job frees its key.
    home.sqlite3("UPDATE jobs SET state = 'succeeded', finished_at = 1 WHERE unique_key = 'k';");
    assert_eq!(home.sqlite3(insert).code(), 0);
    assert_eq!(
        home.query_i64("SELECT count(*) FROM jobs WHERE unique_key = 'k'"),
        2
    );
    // A plain INSERT of a duplicate is an error, not a second job.
    let run = home.sqlite3("INSERT INTO jobs(kind, unique_key) VALUES ('noop', 'k');");
    assert!(
        run.stderr().contains("UNIQUE constraint failed"),
        "{}",
        run.stderr()
    );
}

#[test]
fn the_claim_query_of_either_pool_is_an_index_range_scan() {
    let home = Home::new();
    home.migrate();
    for pool in [0, 1] {
        let plan = home.sqlite3(&format!(
            "EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE state = 'queued' AND queue = 'default' \
             AND {} = {pool} AND run_at <= 1 ORDER BY priority DESC, run_at, id LIMIT 64;",
            cpu_kind_test()
        ));
        let plan = plan.stdout();
        assert!(plan.contains("INDEX jobs_ready (queue=? AND "), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "the claim sorts: {plan}");
        assert!(!plan.contains("SCAN jobs"), "the claim scans: {plan}");
    }
}

#[test]
fn a_file_from_the_previous_schema_version_is_upgraded_in_place() {
    let home = Home::new();
    {
        let mut old =
            SqliteStore::open(&home.db(), Duration::from_secs(5), OpenMode::Create).unwrap();
        assert_eq!(
            old.migrate_to(SCHEMA_VERSION - 1).unwrap(),
            (0, SCHEMA_VERSION - 1)
        );
    }
    let run = sqlite3(
        &home.db(),
        "INSERT INTO jobs(kind, payload) VALUES ('noop', '{\"sleep_ms\":1}');",
    );
    assert_eq!(run.code(), 0, "{}", run.stderr());
    // Read commands refuse the old file and say what to do.
    home.jobd(&["list"]).fails(1, "run `jobd migrate`");
    let out = home.ok(&["migrate"]);
    assert!(
        out.contains(&format!(
            "from schema version {} to {SCHEMA_VERSION}",
            SCHEMA_VERSION - 1
        )),
        "{out}"
    );
    assert_eq!(home.query_i64("PRAGMA user_version"), SCHEMA_VERSION);
    assert_eq!(
        home.query_i64("SELECT count(*) FROM jobs WHERE kind = 'noop'"),
        1
    );
    let out = home.ok(&["list"]);
    assert!(out.contains("noop"), "{out}");
    assert!(home.ok(&["migrate"]).contains("is at schema version"));
}

/// Rows of an older `job_runs` (one per attempt, successes included),
/// inserted into an old schema: a job that failed once and then
/// succeeded, and a dead one. (id, job, attempt, outcome.)
/// Job 3 succeeded, was queued again by SQL and then died: its success
/// is no longer its job row's, and stays a row of its own.
const OLD_RUNS: [(i64, i64, i64, &str); 5] = [
    (10, 1, 1, "retry"),
    (11, 1, 2, "succeeded"),
    (12, 2, 1, "dead"),
    (13, 3, 1, "succeeded"),
    (14, 3, 2, "dead"),
];

/// The SQL that writes [`OLD_RUNS`] and their jobs (the same on both
/// backends' old schemas).
fn old_history_sql() -> String {
    let mut sql = String::from(
        "INSERT INTO jobs (id, kind, state, attempts, worker, started_at, finished_at) VALUES \
         (1, 'noop', 'succeeded', 2, 'w', 2000, 2050), (2, 'noop', 'dead', 1, 'w', 1000, 1010), \
         (3, 'noop', 'dead', 2, 'w', 2000, 2050);",
    );
    for (id, job, attempt, outcome) in OLD_RUNS {
        let (started, finished) = if attempt == 2 {
            (2000, 2050)
        } else {
            (1000, 1010)
        };
        sql.push_str(&format!(
            "INSERT INTO job_runs (id, job_id, attempt, worker, queue, kind, started_at, \
             finished_at, outcome, error, duration_ms) VALUES ({id}, {job}, {attempt}, 'w', \
             'default', 'noop', {started}, {finished}, '{outcome}', NULL, {});",
            finished - started
        ));
    }
    sql
}

/// Claims the one queued job, `id`, and writes its success.
fn run_to_success(store: &mut dyn jobd::store::Store, id: i64) {
    let now = jobd::job::now_ms();
    let claimed = store
        .claim(&jobd::store::Claim {
            worker: "w2",
            now,
            lease_until: now + 60_000,
            requests: &[jobd::store::ClaimRequest::any("default", 10)],
            keys: &jobd::keys::NO_KEYS,
        })
        .unwrap();
    assert_eq!(claimed.iter().map(|j| j.id).collect::<Vec<_>>(), [id]);
    let started = claimed[0].started_at;
    let done = jobd::job::Attempt::new(id, "w2", 1, started, started + 7).succeeded(None);
    store.complete(&[done]).unwrap();
}

/// What `job_runs` must show of [`OLD_RUNS`] after the upgrade.
const OLD_RUNS_SHOWN: &str =
    "10|1|1|retry|10\n11|1|2|succeeded|50\n12|2|1|dead|10\n13|3|1|succeeded|10\n14|3|2|dead|50";

const RUNS_IN_ORDER: &str =
    "SELECT id || '|' || job_id || '|' || attempt || '|' || outcome || '|' || duration_ms \
     FROM job_runs ORDER BY id;";

/// Since schema version 17 a success is its job row: the upgrade keeps
/// every attempt of the old `job_runs`, with its id, in the view of that
/// name, and the next attempt continues the order.
#[test]
fn an_upgrade_keeps_every_attempt_and_its_place_when_successes_move_into_their_jobs() {
    let home = Home::new();
    {
        let mut old =
            SqliteStore::open(&home.db(), Duration::from_secs(5), OpenMode::Create).unwrap();
        old.migrate_to(16).unwrap();
    }
    sqlite3(&home.db(), &old_history_sql()).succeeds();
    home.ok(&["migrate"]);
    assert_eq!(home.text(RUNS_IN_ORDER).trim(), OLD_RUNS_SHOWN);
    assert_eq!(
        home.query_i64("SELECT count(*) FROM job_attempts WHERE outcome = 'succeeded'"),
        1,
        "only job 3's success, which its job row no longer holds, stays a row"
    );
    let shown = home.ok(&["show", "1"]);
    assert!(
        shown.contains("retry") && shown.contains("succeeded"),
        "{shown}"
    );
    // The next attempt, a success, comes after the old ones.
    let id = home.ok(&["enqueue", "noop"]).trim().parse::<i64>().unwrap();
    run_to_success(&mut home.store(), id);
    assert_eq!(
        home.text(&format!("SELECT id FROM job_runs WHERE job_id = {id};"))
            .trim(),
        "15"
    );
}

/// A daemon of the version before (during a rolling upgrade, `jobd
/// migrate` run while it works) and any script still write attempts into
/// `job_runs` and prune through it: those writes land in the new layout,
/// a success as its job's place, another attempt as a row, each with a
/// place of its own.
#[test]
fn writes_through_job_runs_land_in_the_new_layout() {
    for b in common::homes("runs_writes") {
        b.home.ok(&["migrate"]);
        b.value(
            "INSERT INTO jobs (id, kind, state, attempts, worker, started_at, finished_at) VALUES \
             (1, 'noop', 'succeeded', 1, 'w', 2000, 2050), (2, 'noop', 'dead', 1, 'w', 1000, 1010);",
        );
        b.value(
            "INSERT INTO job_runs (job_id, attempt, worker, queue, kind, started_at, finished_at, \
             outcome, error, duration_ms) VALUES \
             (2, 1, 'w', 'default', 'noop', 1000, 1010, 'dead', 'boom', 10), \
             (1, 1, 'w', 'default', 'noop', 2000, 2050, 'succeeded', NULL, 50);",
        );
        let shown = "SELECT job_id || '|' || outcome || '|' || duration_ms FROM job_runs \
                     ORDER BY id;";
        assert_eq!(
            b.value(shown).trim(),
            "2|dead|10\n1|succeeded|50",
            "{}",
            b.name
        );
        assert_eq!(
            b.value("SELECT count(DISTINCT id) FROM job_runs WHERE id IS NOT NULL;")
                .trim(),
            "2",
            "{}: every attempt has a place of its own",
            b.name
        );
        assert_eq!(
            b.value("SELECT count(*) FROM job_attempts WHERE outcome = 'succeeded';")
                .trim(),
            "0",
            "{}",
            b.name
        );
        b.value("DELETE FROM job_runs WHERE job_id = 2;");
        assert_eq!(
            b.value("SELECT count(*) FROM job_attempts;").trim(),
            "0",
            "{}",
            b.name
        );
        assert_eq!(b.value(shown).trim(), "1|succeeded|50", "{}", b.name);
    }
}

/// A succeeded job that SQL queues again (to run it once more) keeps its
/// success in the history: `job_runs` and `jobd show` tell of both runs,
/// each at a place of its own, the first where it was. (The success was
/// its job row alone, and vanished with the state.)
#[test]
fn a_success_queued_again_by_sql_stays_in_the_history() {
    for b in common::homes("success_kept") {
        b.home.migrate();
        let daemon = b.home.daemon();
        b.value("INSERT INTO jobs (kind) VALUES ('noop');");
        let first = "SELECT count(*) FROM job_runs WHERE job_id = 1 AND outcome = 'succeeded'";
        b.wait_value(first, "1", "the first run");
        daemon.stop();
        let place = b.value("SELECT run_id FROM jobs WHERE id = 1;");
        b.value("UPDATE jobs SET state = 'queued', run_at = 0 WHERE id = 1;");
        assert_eq!(
            b.value(
                "SELECT id || '|' || attempt || '|' || outcome FROM job_runs WHERE job_id = 1;"
            )
            .trim(),
            format!("{}|1|succeeded", place.trim()),
            "{}: the first success left the history when its job was queued again",
            b.name
        );
        let daemon = b.home.daemon();
        b.wait_value(first, "2", "the second run");
        daemon.stop();
        let runs = b.value(
            "SELECT id || '|' || attempt || '|' || outcome FROM job_runs WHERE job_id = 1 ORDER BY id;",
        );
        let runs: Vec<&str> = runs.trim().lines().collect();
        assert_eq!(runs.len(), 2, "{}: {runs:?}", b.name);
        assert_eq!(
            runs[0],
            format!("{}|1|succeeded", place.trim()),
            "{}",
            b.name
        );
        assert!(runs[1].ends_with("|2|succeeded"), "{}: {runs:?}", b.name);
        let shown = b.home.ok(&["show", "1"]);
        assert_eq!(
            shown.matches("succeeded").count(),
            3,
            "{}: the job and two attempts:\n{shown}",
            b.name
        );
    }
}

/// A success written through `job_runs` that no job can hold (its job is
/// not `succeeded`, or already holds its success) is kept as an attempt
/// row at a place of its own, not dropped without a word.
#[test]
fn a_success_written_through_job_runs_that_no_job_can_hold_is_kept() {
    for b in common::homes("success_row") {
        b.home.ok(&["migrate"]);
        b.value(
            "INSERT INTO jobs (id, kind, state, attempts, worker, started_at, finished_at) VALUES \
             (1, 'noop', 'succeeded', 1, 'w', 2000, 2050), (2, 'noop', 'queued', 0, NULL, NULL, NULL);",
        );
        let success = |job: i64| {
            format!(
                "INSERT INTO job_runs (job_id, attempt, worker, queue, kind, started_at, \
                 finished_at, outcome, error, duration_ms) VALUES \
                 ({job}, 1, 'w', 'default', 'noop', 2000, 2050, 'succeeded', NULL, 50);"
            )
        };
        // Its job's own success, then the same again, then one for a job
        // that has not run.
        b.value(&success(1));
        b.value(&success(1));
        b.value(&success(2));
        assert_eq!(
            b.value("SELECT job_id || '|' || outcome FROM job_runs ORDER BY id;")
                .trim(),
            "1|succeeded\n1|succeeded\n2|succeeded",
            "{}",
            b.name
        );
        assert_eq!(
            b.value("SELECT count(DISTINCT id) FROM job_runs WHERE id IS NOT NULL;")
                .trim(),
            "3",
            "{}: every attempt has a place of its own",
            b.name
        );
    }
}

/// The pruner may delete the newest attempts (every finished job past its
/// retention): the next attempt still takes a place after every place
/// handed out before, so a `jobd tail` that showed them sees it.
#[test]
fn places_are_never_handed_out_twice_when_the_newest_are_pruned() {
    for b in common::homes("places_pruned") {
        b.home.migrate();
        b.value("INSERT INTO jobs (kind) VALUES ('noop');");
        let daemon = b.home.daemon();
        let done = "SELECT count(*) FROM jobs WHERE state = 'succeeded'";
        b.wait_value(done, "1", "the first job");
        let first: i64 = b
            .value("SELECT max(id) FROM job_runs;")
            .trim()
            .parse()
            .unwrap();
        b.home.ok(&["prune", "--older-than", "0s"]);
        assert_eq!(
            b.value("SELECT count(*) FROM job_runs;").trim(),
            "0",
            "{}",
            b.name
        );
        b.value("INSERT INTO jobs (kind) VALUES ('noop');");
        b.wait_value(done, "1", "the second job");
        daemon.stop();
        let next: i64 = b
            .value("SELECT max(id) FROM job_runs;")
            .trim()
            .parse()
            .unwrap();
        assert!(
            next > first,
            "{}: the place {first} was handed out again ({next})",
            b.name
        );
    }
}

#[test]
fn journal_mode_is_wal_for_every_client() {
    let home = Home::new();
    home.migrate();
    assert_eq!(home.sqlite3("PRAGMA journal_mode;").stdout().trim(), "wal");
}

#[test]
fn a_newer_schema_is_refused_and_left_untouched() {
    let home = Home::new();
    home.migrate();
    home.sqlite3("PRAGMA user_version = 99;");
    let before = std::fs::read(home.db()).unwrap();
    for args in [&["list"][..], &["migrate"], &["enqueue", "noop"]] {
        home.jobd(args).fails(1, "newer than this jobd knows");
    }
    assert_eq!(std::fs::read(home.db()).unwrap(), before);
}

#[test]
fn bad_database_paths_get_their_own_messages() {
    let home = Home::new();
    home.jobd(&["list"])
        .fails(1, "does not exist (run `jobd migrate` to create it)");
    assert!(!home.db().exists(), "a read command created the file");

    std::fs::create_dir(home.db()).unwrap();
    home.jobd(&["list"])
        .fails(1, "is a directory, not a SQLite file");
    home.jobd(&["migrate"])
        .fails(1, "is a directory, not a SQLite file");
    std::fs::remove_dir(home.db()).unwrap();

    std::fs::write(
        home.db(),
        b"this is not a database, just some text that is long enough to be a header ....",
    )
    .unwrap();
    let err = home.jobd(&["list"]).fails(1, "is not a SQLite database");
    assert_eq!(err.lines().count(), 1, "{err}");
    home.jobd(&["enqueue", "noop"])
        .fails(1, "is not a SQLite database");

    // A database in a folder that does not exist: the daemon and migrate
    // say so rather than "read-only".
    let elsewhere = home.path().join("no-such-folder").join("jobd.db");
    std::fs::write(
        home.config(),
        format!("[database]\npath = \"{}\"\n", elsewhere.display()),
    )
    .unwrap();
    for command in ["run", "migrate"] {
        let err = home.jobd(&[command]).fails(
            1,
            "no-such-folder/jobd.db does not exist; create it or change database.path",
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn store_errors_are_typed() {
    let home = Home::new();
    let err = SqliteStore::open(&home.db(), Duration::from_secs(1), OpenMode::Existing)
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::Missing { .. }), "{err}");
}

/// Regression: ids were reused after `prune` (no `AUTOINCREMENT`), so a new
/// email took a pruned one's id, `Message-ID` and mail file. Upgrading a
/// version 4 file starts the counter past every id it ever recorded: in
/// jobs, in attempt records and in cron rows.
#[test]
fn upgrading_to_version_5_never_hands_out_a_used_id_again() {
    let home = Home::new();
    {
        let mut old =
            SqliteStore::open(&home.db(), Duration::from_secs(5), OpenMode::Create).unwrap();
        old.migrate_to(4).unwrap();
    }
    sqlite3(
        &home.db(),
        "INSERT INTO jobs(id, kind, payload, unique_key) VALUES (1, 'noop', '{}', 'k1'), (2, 'noop', '{}', NULL), (3, 'noop', '{}', NULL);
         INSERT INTO job_runs(job_id, attempt, worker, queue, kind, started_at, finished_at, outcome, duration_ms)
             VALUES (10, 1, 'w', 'default', 'noop', 1, 2, 'succeeded', 1);
         INSERT INTO cron(name, last_slot, last_job_id) VALUES ('tick', 1, 12);
         DELETE FROM jobs WHERE id = 3;",
    )
    .succeeds();
    home.migrate();
    assert_eq!(home.query_i64("PRAGMA user_version"), SCHEMA_VERSION);
    assert_eq!(home.query_i64("SELECT count(*) FROM jobs"), 2);
    assert_eq!(
        home.text("SELECT unique_key FROM jobs WHERE id = 1;")
            .trim(),
        "k1"
    );
    let id = home
        .ok(&["enqueue", "noop", "{}"])
        .trim()
        .parse::<i64>()
        .unwrap();
    assert_eq!(id, 13, "the next id is past job_runs' 10 and cron's 12");
    // Deleting the newest (what prune does) does not free its id.
    home.sqlite3("DELETE FROM jobs WHERE id = 13;").succeeds();
    let next = home.insert(&format!(
        "('noop', '{{}}', 'default', 0, {}, 1, NULL)",
        common::NOW
    ));
    assert_eq!(next, vec![14]);
    // The indexes and guards came back with the table.
    for name in [
        "jobs_ready",
        "jobs_unique_key",
        "jobs_running",
        "jobs_succeeded",
        "jobs_dead",
        "jobs_cancelled",
        "jobs_guard_payload",
        "jobs_guard_kind",
        "jobs_guard_max_attempts",
        "jobs_guard_timeout",
    ] {
        assert_eq!(
            home.query_i64(&format!(
                "SELECT count(*) FROM sqlite_master WHERE name = '{name}'"
            )),
            1,
            "{name}"
        );
    }
}

/// Regression: SQLite stored any bytes a client cast to TEXT, and one row
/// that was not UTF-8 stalled every queue. The schema refuses them in
/// `queue`, `kind`, `payload` and `unique_key`, on insert and update, with
/// a sentence naming the column; valid text of any script passes.
#[test]
fn text_that_is_not_utf8_is_refused_at_insert() {
    let home = Home::new();
    home.migrate();
    let invalid = ["ff", "c0af", "eda080", "f4908080", "e282", "80", "f0", "c3"];
    for hex in invalid {
        for (column, value) in [
            (
                "payload",
                format!("CAST(x'7b2261223a22' || x'{hex}' || x'227d' AS TEXT)"),
            ),
            ("queue", format!("CAST(x'6d61696c' || x'{hex}' AS TEXT)")),
            ("kind", format!("CAST(x'{hex}' AS TEXT)")),
            ("unique_key", format!("CAST(x'6b' || x'{hex}' AS TEXT)")),
            ("limit_key", format!("CAST(x'6b' || x'{hex}' AS TEXT)")),
        ] {
            let (columns, values) = match column {
                "kind" => ("kind".to_string(), value.clone()),
                _ => (format!("kind, {column}"), format!("'noop', {value}")),
            };
            let run = home.sqlite3(&format!("INSERT INTO jobs({columns}) VALUES ({values});"));
            assert!(
                run.stderr().contains(&format!(
                    "jobs.{column} is not valid UTF-8: insert text, not raw bytes"
                )),
                "{column} with {hex}: {}",
                run.stderr()
            );
        }
    }
    let long_ascii = "A".repeat(40);
    for text in ["é", "€", "𝄞", "日本語のテキスト", "\u{ffff}", &long_ascii] {
        home.sqlite3(&format!(
            "INSERT INTO jobs(kind, payload, queue) VALUES ('noop', json_object('t', '{text}'), 'q{text}');"
        ))
        .succeeds();
    }
    let ok = home.query_i64("SELECT count(*) FROM jobs");
    assert_eq!(ok, 6);
    home.sqlite3("UPDATE jobs SET payload = CAST(x'7b7dff' AS TEXT) WHERE id = 1;")
        .fails(1, "jobs.payload is not valid UTF-8");
}

/// The same schema on PostgreSQL, as `psql` sees it: created and upgraded
/// by `jobd migrate`, the same CHECK rules and defaults, the claim an index
/// range scan.
mod postgres {
    use super::*;
    use common::pg::Schema;

    fn home_on(url: &str) -> Home {
        Home::on_postgres(url, "")
    }

    /// A schema of its own (see [`Schema::create`]) with jobd's tables,
    /// made by `jobd migrate`.
    fn migrated(tag: &str) -> Option<Schema> {
        let schema = Schema::create(tag)?;
        home_on(&schema.url()).ok(&["migrate"]);
        Some(schema)
    }

    /// The upgrade to version 18, as SQLite's to 17 (see there): the old
    /// schema is built from the migrations before it.
    #[test]
    fn an_upgrade_keeps_every_attempt_and_its_place_when_successes_move_into_their_jobs() {
        let Some(schema) = Schema::create("runs_upgrade") else {
            return;
        };
        let old = &jobd::store::postgres::schema::MIGRATIONS[..17];
        let mut sql = String::from(
            "CREATE TABLE jobd_schema (version BIGINT NOT NULL); \
             INSERT INTO jobd_schema VALUES (17);",
        );
        for step in old {
            sql.push_str(step);
            sql.push(';');
        }
        schema.psql(&sql).unwrap();
        schema.psql(&super::old_history_sql()).unwrap();
        schema
            .psql("SELECT setval('job_runs_id_seq', 14); SELECT setval('jobs_id_seq', 3);")
            .unwrap();
        let home = home_on(&schema.url());
        home.ok(&["migrate"]);
        assert_eq!(
            schema.psql(super::RUNS_IN_ORDER).unwrap().trim(),
            super::OLD_RUNS_SHOWN
        );
        let shown = home.ok(&["show", "1"]);
        assert!(
            shown.contains("retry") && shown.contains("succeeded"),
            "{shown}"
        );
        let id = home.ok(&["enqueue", "noop"]).trim().parse::<i64>().unwrap();
        super::run_to_success(
            &mut jobd::store::postgres::PgStore::connect(&schema.url(), Duration::from_secs(5))
                .unwrap(),
            id,
        );
        assert_eq!(
            schema
                .psql(&format!("SELECT id FROM job_runs WHERE job_id = {id};"))
                .unwrap(),
            "15"
        );
    }

    #[test]
    fn migrate_creates_the_schema_once_and_says_so() {
        let Some(schema) = Schema::create("migrate") else {
            return;
        };
        use jobd::store::postgres::SCHEMA_VERSION;
        let home = home_on(&schema.url());
        let first = home.ok(&["migrate"]);
        assert!(
            first.contains(&format!(
                "migrated from schema version 0 to {SCHEMA_VERSION}"
            )),
            "{first}"
        );
        let again = home.ok(&["migrate"]);
        assert!(
            again.contains(&format!("is at schema version {SCHEMA_VERSION}")),
            "{again}"
        );
        let tables = schema
            .psql("SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.tables WHERE table_schema = current_schema();")
            .unwrap();
        assert_eq!(
            tables,
            "batches,cron,imported_jobs,job_attempts,job_deps,job_runs,jobd_schema,jobs,limit_keys,meta,queues,sequences,workers"
        );
        // A schema from a newer jobd is refused, not touched.
        schema.psql("UPDATE jobd_schema SET version = 99;").unwrap();
        home.jobd(&["migrate"])
            .fails(1, "newer than this jobd knows");
        assert_eq!(
            schema.psql("SELECT version FROM jobd_schema;").unwrap(),
            "99"
        );
    }

    #[test]
    fn a_schema_from_the_previous_version_is_upgraded_with_its_jobs() {
        use jobd::store::postgres::{MIGRATIONS, SCHEMA_VERSION};
        let Some(schema) = Schema::create("upgrade") else {
            return;
        };
        let previous = SCHEMA_VERSION - 1;
        let mut sql = String::from("CREATE TABLE jobd_schema (version BIGINT NOT NULL);");
        for step in &MIGRATIONS[..previous as usize] {
            sql.push_str(step);
        }
        sql.push_str(&format!(
            "INSERT INTO jobd_schema VALUES ({previous}); INSERT INTO jobs(kind) VALUES ('noop');"
        ));
        schema.psql(&sql).unwrap();
        let home = home_on(&schema.url());
        // Commands that only read refuse the old schema and say what to do.
        home.jobd(&["list"]).fails(1, "run `jobd migrate`");
        let out = home.ok(&["migrate"]);
        assert!(
            out.contains(&format!(
                "from schema version {previous} to {SCHEMA_VERSION}"
            )),
            "{out}"
        );
        assert_eq!(
            schema
                .psql("SELECT kind || ':' || state FROM jobs;")
                .unwrap(),
            "noop:queued"
        );
        home.ok(&["list"]);
    }

    #[test]
    fn the_database_rejects_bad_inserts_and_fills_defaults() {
        let Some(schema) = migrated("checks") else {
            return;
        };
        for (insert, needle) in [
            (
                "INSERT INTO jobs(kind, payload) VALUES ('noop', '{bad');",
                "invalid input syntax for type json",
            ),
            ("INSERT INTO jobs(kind) VALUES ('');", "kind_not_empty"),
            (
                "INSERT INTO jobs(kind, max_attempts) VALUES ('noop', 0);",
                "max_attempts_at_least_1",
            ),
            (
                "INSERT INTO jobs(kind, timeout_ms) VALUES ('noop', -5);",
                "timeout_ms_positive",
            ),
            (
                "INSERT INTO jobs(kind, state) VALUES ('noop', 'paused');",
                "state_known",
            ),
            (
                "INSERT INTO jobs(kind, queue) VALUES ('noop', '');",
                "queue_not_empty",
            ),
            // Text that is not UTF-8 never gets in (SQLite needs triggers for
            // this; PostgreSQL checks every text value itself).
            (
                "INSERT INTO jobs(kind, payload) VALUES ('noop', E'{\"a\":\"\\xff\"}');",
                "invalid byte sequence for encoding \"UTF8\": 0xff",
            ),
            (
                "INSERT INTO jobs(kind, queue) VALUES ('noop', convert_from('\\x6dff'::bytea, 'UTF8'));",
                "invalid byte sequence for encoding \"UTF8\"",
            ),
        ] {
            let err = schema.psql(insert).expect_err(insert);
            assert!(err.contains(needle), "{insert}: {err}");
        }
        let row = schema
            .psql(
                "INSERT INTO jobs(kind, payload) VALUES ('http', '{\"url\":\"http://x\"}') \
                 RETURNING state || ',' || queue || ',' || attempts || ',' || \
                 (abs(run_at - (extract(epoch from now()) * 1000)::bigint) < 60000);",
            )
            .unwrap();
        assert_eq!(row.lines().next().unwrap(), "queued,default,0,true");
        // The unique key allows one active job per key.
        schema
            .psql("INSERT INTO jobs(kind, unique_key) VALUES ('noop', 'k');")
            .unwrap();
        let dup = schema
            .psql("INSERT INTO jobs(kind, unique_key) VALUES ('noop', 'k');")
            .unwrap_err();
        assert!(dup.contains("jobs_unique_key"), "{dup}");
    }

    #[test]
    fn the_reads_before_a_claim_seek_even_when_planned_while_the_table_was_empty() {
        use jobd::job::Pool;
        use jobd::store::postgres::{next_run_at_sql, queued_queues_sql};
        let Some(schema) = migrated("loose_plan") else {
            return;
        };
        // One session, as a daemon's: the statements are prepared and run
        // (more than the server's five custom plans) on an empty table,
        // then 20 000 jobs arrive and the cached plans run again.
        let mut sql = format!(
            "PREPARE q AS {}; PREPARE n(text, bigint) AS {};",
            queued_queues_sql(),
            next_run_at_sql(Pool::Io)
        );
        for _ in 0..8 {
            sql.push_str("EXECUTE q; EXECUTE n('default', 0);");
        }
        sql.push_str(
            "INSERT INTO jobs(kind, run_at) SELECT 'noop', i FROM generate_series(1, 20000) i; \
             EXPLAIN (ANALYZE, TIMING OFF, COSTS OFF) EXECUTE q; \
             EXPLAIN (ANALYZE, TIMING OFF, COSTS OFF) EXECUTE n('default', 0);",
        );
        let plans = schema.psql(&sql).unwrap();
        // Every node reads a row or two, never the queued jobs.
        let most = plans
            .split("rows=")
            .skip(1)
            .filter_map(|r| {
                r.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .max()
            .unwrap();
        assert!(most <= 2, "a node read {most} rows: {plans}");
        assert!(
            plans.contains("Index Only Scan using jobs_ready"),
            "{plans}"
        );
    }

    /// Regression: after an `ANALYZE` that saw no running job (autovacuum
    /// at an idle moment), the completion of a batch drove its join from
    /// `jobs_running`, taken for one row, and compared every outcome with
    /// every running job: 512 × 512 twice per batch, 200 ms a batch. Each
    /// outcome must find its job by key, in a generic and a custom plan.
    #[test]
    fn the_completion_finds_each_job_by_key_even_after_an_analyze_saw_none_running() {
        let Some(schema) = migrated("complete_plan") else {
            return;
        };
        schema
            .psql(
                "INSERT INTO jobs(kind) SELECT 'noop' FROM generate_series(1, 20000); \
                 ANALYZE jobs; \
                 UPDATE jobs SET state = 'running', worker = 'w', attempts = 1, started_at = 1 \
                 WHERE id <= 512;",
            )
            .unwrap();
        let ids = format!(
            "'{{{}}}'",
            (1..=512)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        let fill = |value: &str, ty: &str| format!("array_fill({value}::{ty}, ARRAY[512])");
        let args = [
            ids,
            fill("'w'", "text"),
            fill("1", "bigint"),
            fill("'succeeded'", "text"),
            fill("1", "bigint"),
            fill("NULL", "bigint"),
            fill("NULL", "text"),
            fill("NULL", "text"),
            fill("false", "bool"),
            fill("false", "bool"),
            fill("1", "bigint"),
        ]
        .join(", ");
        for mode in ["force_generic_plan", "force_custom_plan"] {
            let plan = schema
                .psql(&format!(
                    "BEGIN; SET LOCAL plan_cache_mode = {mode}; \
                     PREPARE d(bigint[], text[], bigint[], text[], bigint[], bigint[], text[], \
                       text[], bool[], bool[], bigint[]) AS {}; \
                     EXPLAIN (ANALYZE, COSTS OFF) EXECUTE d({args}); ROLLBACK;",
                    jobd::store::postgres::complete_sql()
                ))
                .unwrap();
            assert!(
                plan.contains("rows=512"),
                "{mode}: the outcomes were not written: {plan}"
            );
            assert!(
                !plan.contains("jobs_running"),
                "{mode}: the completion scans the running jobs: {plan}"
            );
            let most_removed = plan
                .lines()
                .filter_map(|l| l.split("Rows Removed by Join Filter: ").nth(1))
                .filter_map(|n| n.trim().parse::<u64>().ok())
                .max()
                .unwrap_or(0);
            assert!(
                most_removed < 1000,
                "{mode}: a join compared {most_removed} pairs: {plan}"
            );
        }
    }

    #[test]
    fn the_claim_of_either_pool_is_an_index_range_scan_however_many_are_queued() {
        use jobd::job::Pool;
        use jobd::store::postgres::claim_sql;
        let Some(schema) = migrated("plan") else {
            return;
        };
        schema
            .psql(
                "INSERT INTO jobs(kind) SELECT 'noop' FROM generate_series(1, 20000); \
                 INSERT INTO jobs(kind, payload) SELECT 'exec', '{\"handler\":\"x\"}' FROM generate_series(1, 20000); \
                 ANALYZE jobs;",
            )
            .unwrap();
        for pool in Pool::ALL {
            // A prepared statement planned with its parameters as constants,
            // as the server plans the store's first executions.
            let plan = schema
                .psql(&format!(
                    "PREPARE c(bigint, bigint, text, text, bigint) AS {}; \
                     EXPLAIN EXECUTE c(9000000000000, 9000000000000, 'w', 'default', 64);",
                    claim_sql(pool)
                ))
                .unwrap();
            assert!(
                plan.contains("Index Scan using jobs_ready"),
                "{pool:?}: {plan}"
            );
            assert!(!plan.contains("Sort"), "the {pool:?} claim sorts: {plan}");
            assert!(
                !plan.contains("Seq Scan on jobs"),
                "the {pool:?} claim scans: {plan}"
            );
        }
        // Both pools in one statement: two range scans of the same index.
        let plan = schema
            .psql(&format!(
                "PREPARE b(bigint, bigint, text, text, bigint, bigint, bigint) AS {}; \
                 EXPLAIN EXECUTE b(9000000000000, 9000000000000, 'w', 'default', 8, 64, 64);",
                jobd::store::postgres::claim_both_sql()
            ))
            .unwrap();
        assert_eq!(
            plan.matches("Index Scan using jobs_ready").count(),
            2,
            "{plan}"
        );
        assert!(
            !plan.contains("Sort"),
            "the claim of both pools sorts: {plan}"
        );
        assert!(
            !plan.contains("Seq Scan on jobs"),
            "the claim of both pools scans: {plan}"
        );
    }
}
