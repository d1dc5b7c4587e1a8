//! The command line, driven as a user would: the real binary, a real
//! database file, exit statuses and one-sentence errors.

mod common;

use jobd::store::prelude::*;
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use common::{wait_for, Home, Run};
use jobd::job::Attempt;
use jobd::store::{Claim, ClaimRequest};

fn id_of(out: &str) -> i64 {
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("not an id: {out:?}"))
}

/// Claims every ready job of the default queue as worker `w` and completes
/// them with `f`, standing in for the daemon of the next issue.
fn work(home: &Home, f: impl Fn(Attempt) -> jobd::job::Completion) {
    let mut s = home.store();
    let now = jobd::job::now_ms();
    let jobs = s
        .claim(&Claim {
            worker: "test:1:1",
            now,
            lease_until: now + 30_000,
            keys: &jobd::keys::NO_KEYS,
            requests: &[ClaimRequest::any("default", 100)],
        })
        .unwrap();
    let done: Vec<_> = jobs
        .iter()
        .map(|j| {
            f(Attempt {
                id: j.id,
                worker: "test:1:1".into(),
                attempt: j.attempts,
                started_at: now,
                finished_at: now + 3,
            })
        })
        .collect();
    s.complete(&done).unwrap();
}

#[test]
fn enqueue_prints_the_id_and_stores_every_option() {
    let home = Home::new();
    home.migrate();
    let id = id_of(&home.ok(&[
        "enqueue",
        "noop",
        r#"{"sleep_ms": 5}"#,
        "--queue",
        "mail",
        "--priority",
        "-3",
        "--delay",
        "5m",
        "--max-attempts",
        "4",
        "--timeout",
        "1500ms",
        "--unique-key",
        "u1",
    ]));
    let mut s = home.store();
    let job = s.job(id).unwrap().unwrap();
    assert_eq!(job.payload, r#"{"sleep_ms": 5}"#);
    assert_eq!((job.queue.as_str(), job.priority), ("mail", -3));
    assert_eq!((job.max_attempts, job.timeout_ms), (Some(4), Some(1500)));
    assert_eq!(job.unique_key.as_deref(), Some("u1"));
    let ahead = job.run_at - job.created_at;
    assert!((299_000..=301_000).contains(&ahead), "{ahead}");

    // De-duplicated: the existing id, and a note on stderr.
    let run = home.jobd(&["enqueue", "noop", "--unique-key", "u1"]);
    assert_eq!(run.code(), 0);
    assert_eq!(id_of(&run.stdout()), id);
    assert!(
        run.stderr().contains("already queued or running"),
        "{}",
        run.stderr()
    );

    let at = id_of(&home.ok(&["enqueue", "noop", "--at", "2030-01-01T00:00:00+01:00"]));
    assert_eq!(s.job(at).unwrap().unwrap().run_at, 1_893_452_400_000);
}

#[test]
fn enqueue_reads_the_payload_from_stdin() {
    let home = Home::new();
    home.migrate();
    let mut child = home
        .cmd(&["enqueue", "noop", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"sleep_ms\": 1}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let id = id_of(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        home.store().job(id).unwrap().unwrap().payload,
        "{\"sleep_ms\": 1}"
    );
}

#[test]
fn enqueue_bad_inputs_are_usage_errors_and_write_nothing() {
    let home = Home::with_config("[limits]\nmax_payload_bytes = 64");
    home.migrate();
    let cases: &[(&[&str], &str)] = &[
        (
            &["enqueue", "noop", "[1, 2]"],
            "payload must be a JSON object, got an array",
        ),
        (&["enqueue", "noop", "{oops"], "payload is not valid JSON"),
        (&["enqueue", "nop"], "unknown kind \"nop\""),
        (&["enqueue", "noop", "--delay", "soon"], "--delay"),
        (&["enqueue", "noop", "--at", "tomorrow"], "RFC 3339"),
        (
            &["enqueue", "noop", "--max-attempts", "0"],
            "--max-attempts",
        ),
        (
            &["enqueue", "noop", "--queue", ""],
            "queue must not be empty",
        ),
        (
            &[
                "enqueue",
                "noop",
                "--delay",
                "1s",
                "--at",
                "2030-01-01T00:00:00Z",
            ],
            "cannot be used with",
        ),
        (&["enqueue"], "required"),
    ];
    for (args, needle) in cases {
        let err = home.jobd(args).fails(2, needle);
        assert!(!err.contains("panicked"), "{err}");
    }
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(100));
    home.jobd(&["enqueue", "noop", &big])
        .fails(2, "limits.max_payload_bytes (64)");
    assert_eq!(home.query_i64("SELECT count(*) FROM jobs"), 0);
}

/// Regression: `--delay 10000000000000000s` overflowed `run_at` into a
/// negative time (the job ran at once), `--at …T23:59:60Z` was taken as the
/// next day's first second, `--delay -5s` got clap's "use '-- -5s'" hint and
/// `--timeout 250us` was stored as 1 ms. Each is now refused with a sentence.
#[test]
fn overflowing_or_odd_enqueue_times_are_refused_naming_the_flag() {
    let home = Home::new();
    home.migrate();
    let cases: &[(&[&str], &str)] = &[
        (
            &["enqueue", "noop", "--delay", "10000000000000000s"],
            "longer than the longest delay, 100 years",
        ),
        (
            &["enqueue", "noop", "--delay", "584542046090w"],
            "longer than the longest delay",
        ),
        // A year or a month has no fixed length.
        (
            &["enqueue", "noop", "--delay", "1y"],
            "months and years vary in length",
        ),
        (
            &["enqueue", "noop", "--delay", "1M"],
            "write days, e.g. \"30d\"",
        ),
        (
            &["enqueue", "noop", "--delay", "-5s"],
            "a delay cannot be negative",
        ),
        (
            &["enqueue", "noop", "--at", "2026-12-31T23:59:60Z"],
            "is a leap second",
        ),
        (&["enqueue", "noop", "--timeout", "0s"], "at least 1ms"),
        (&["enqueue", "noop", "--timeout", "250us"], "at least 1ms"),
        (
            &["enqueue", "noop", "--timeout", "-1s"],
            "a timeout cannot be negative",
        ),
    ];
    for (args, needle) in cases {
        let err = home.jobd(args).fails(2, needle);
        assert!(err.contains("--"), "the flag is named: {err}");
        assert!(!err.contains("-- -"), "no clap hint: {err}");
    }
    assert_eq!(home.query_i64("SELECT count(*) FROM jobs"), 0);
    // The longest delay still lands in the future.
    let id = home.ok(&["enqueue", "noop", "--delay", "36500d"]);
    let run_at = home.query_i64(&format!("SELECT run_at FROM jobs WHERE id = {}", id.trim()));
    assert!(run_at > 4_000_000_000_000, "{run_at}");
}

fn spawn_piped(mut cmd: std::process::Command) -> std::process::Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn enqueue_wait_follows_the_job_to_its_end() {
    let home = Home::new();
    home.migrate();
    let child = spawn_piped(home.cmd(&["enqueue", "noop", "--wait"]));
    // The job appears; finish it as a daemon would.
    wait_for(Duration::from_secs(10), || {
        (home.query_i64("SELECT count(*) FROM jobs") == 1).then_some(())
    })
    .expect("the job was enqueued");
    work(&home, |a| a.succeeded(Some("{\"answer\":42}".into())));
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("{\"answer\":42}"));

    let child = spawn_piped(home.cmd(&["enqueue", "noop", "--wait"]));
    wait_for(Duration::from_secs(10), || {
        (home.query_i64("SELECT count(*) FROM jobs WHERE state = 'queued'") == 1).then_some(())
    })
    .expect("the second job was enqueued");
    work(&home, |a| {
        a.dead("payload field sleep_ms: expected an integer".into())
    });
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ended dead: payload field sleep_ms"), "{err}");
}

#[test]
fn bulk_import_of_100_000_lines() {
    let home = Home::new();
    home.migrate();
    let path = home.path().join("jobs.jsonl");
    let mut text = String::new();
    for i in 0..100_000 {
        text.push_str(&format!(
            "{{\"kind\":\"noop\",\"payload\":{{\"n\":{i}}},\"priority\":{}}}\n",
            i % 3
        ));
    }
    text.push_str("{\"kind\":\"noop\",\"unique_key\":\"once\"}\n\n{\"kind\":\"noop\",\"unique_key\":\"once\"}\n");
    std::fs::write(&path, text).unwrap();
    let out = home.ok(&["enqueue", "--file", path.to_str().unwrap()]);
    assert!(
        out.contains("enqueued 100001 jobs (1 duplicates skipped)"),
        "{out}"
    );
    assert_eq!(home.query_i64("SELECT count(*) FROM jobs"), 100_001);
    assert_eq!(
        home.query_i64("SELECT json_extract(payload, '$.n') FROM jobs WHERE id = 100000"),
        99_999
    );
    assert_eq!(
        home.query_i64("SELECT count(*) FROM jobs WHERE priority = 2"),
        33_333
    );
}

#[test]
fn bulk_import_with_a_bad_line_imports_nothing_and_names_the_line() {
    let home = Home::new();
    home.migrate();
    let path = home.path().join("jobs.jsonl");
    std::fs::write(
        &path,
        "{\"kind\":\"noop\"}\n{\"kind\":\"noop\",\"payload\":\"x\"}\n{\"kind\":\"noop\",\"prio\":1}\nnot json\n{\"kind\":\"nope\"}\n",
    )
    .unwrap();
    let err = home
        .jobd(&["enqueue", "--file", path.to_str().unwrap()])
        .fails(1, "has 4 bad line(s), nothing was imported");
    assert!(
        err.contains("line 2: payload must be a JSON object, got a string"),
        "{err}"
    );
    assert!(err.contains("line 3: unknown field `prio`"), "{err}");
    assert!(err.contains("line 4:"), "{err}");
    assert!(err.contains("line 5: unknown kind \"nope\""), "{err}");
    assert_eq!(home.query_i64("SELECT count(*) FROM jobs"), 0);
    // The first bad lines by line, though the database's check (a parent
    // that does not exist) finds line 1 after the file's own found 11.
    std::fs::write(
        &path,
        format!(
            "{{\"kind\":\"noop\",\"parents\":[999999]}}\n{}",
            "not json\n".repeat(11)
        ),
    )
    .unwrap();
    let err = home
        .jobd(&["enqueue", "--file", path.to_str().unwrap()])
        .fails(
            1,
            "has 12 bad line(s), nothing was imported: line 1: parent job 999999",
        );
    assert!(err.contains("; and 7 more"), "{err}");
    home.jobd(&["enqueue", "--file", "/nonexistent/jobs.jsonl"])
        .fails(1, "cannot open /nonexistent/jobs.jsonl");
}

/// Lines only the database would refuse are refused before anything is
/// written too, named by line, on both backends: a parent that does not
/// exist, a batch sealed in the database or by a callback earlier in the
/// file, an empty batch name, a NUL character. (The first 2 000 lines of
/// such a file were imported before the database refused the batch with
/// the bad line, which it did not name.)
#[test]
fn a_bulk_line_the_database_would_refuse_is_named_before_anything_is_written() {
    for b in common::homes("bulk_db") {
        let home = &b.home;
        home.migrate();
        // A sealed batch: its callback is in.
        home.ok(&["enqueue", "noop", "--batch", "done"]);
        home.ok(&["enqueue", "noop", "--batch-callback", "done"]);
        let before = b.count("SELECT count(*) FROM jobs");
        let good = "{\"kind\":\"noop\"}\n".repeat(2_500);
        let path = home.path().join("jobs.jsonl");
        let bad_lines = [
            r#"{"kind":"noop","parents":[999999]}"#,
            r#"{"kind":"noop","batch":"done"}"#,
            r#"{"kind":"noop","callback_for":"open"}"#,
            r#"{"kind":"noop","batch":"open"}"#,
            r#"{"kind":"noop","batch":""}"#,
            r#"{"kind":"noop","payload":{"a":"x\u0000y"}}"#,
        ];
        std::fs::write(&path, format!("{good}{}\n", bad_lines.join("\n"))).unwrap();
        let err = home
            .jobd(&["enqueue", "--file", path.to_str().unwrap()])
            .fails(1, "has 5 bad line(s), nothing was imported");
        for needle in [
            "line 2501: parent job 999999 does not exist",
            "line 2502: batch \"done\" is sealed",
            "line 2504: batch \"open\" is sealed by its callback on line 2503",
            "line 2505: batch must not be empty",
            "line 2506: payload contains a NUL character",
        ] {
            assert!(
                err.contains(needle),
                "{}: {needle:?} missing from: {err}",
                b.name
            );
        }
        // In the file's order, though found in two passes.
        assert!(
            err.find("line 2501").unwrap() < err.find("line 2504").unwrap(),
            "{}: {err}",
            b.name
        );
        assert_eq!(b.count("SELECT count(*) FROM jobs"), before, "{}", b.name);
    }
}

#[test]
fn list_filters_and_prints_json() {
    let home = Home::new();
    home.migrate();
    home.ok(&["enqueue", "noop"]);
    home.ok(&[
        "enqueue",
        "http",
        r#"{"url":"http://127.0.0.1/"}"#,
        "--queue",
        "hooks",
    ]);
    home.ok(&["enqueue", "noop"]);
    work(&home, |a| a.dead("boom\nsecond line".into()));
    let table = home.ok(&["list"]);
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(table.lines().next().unwrap().starts_with("ID"));
    assert!(
        table.contains("boom second line"),
        "errors stay on one line: {table}"
    );
    let hooks = home.ok(&["list", "--queue", "hooks"]);
    assert_eq!(hooks.lines().count(), 2, "{hooks}");
    let json: serde_json::Value =
        serde_json::from_str(&home.ok(&["list", "--state", "dead", "--json"])).unwrap();
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["state"], "dead");
    assert!(rows[0]["payload"].is_object(), "payload is embedded JSON");
    assert_eq!(
        home.ok(&["list", "--kind", "http", "--limit", "1", "--json"])
            .matches("\"kind\"")
            .count(),
        1
    );
    home.jobd(&["list", "--state", "done"])
        .fails(2, "unknown job state \"done\"");
}

/// Jobs an operator moved by hand, which no daemon ran to that end: one
/// marked `succeeded` by SQL has no place among the attempts, and one
/// that succeeded and was queued again by SQL is running again (its
/// first success kept as an attempt row). `show`
/// (and `tail`'s reads) failed on SQLite and panicked on PostgreSQL on the
/// NULLs of such rows; they show the attempts there are.
#[test]
fn show_reads_jobs_an_operator_moved_by_sql() {
    for backend in common::homes("handmoved") {
        let home = &backend.home;
        home.migrate();
        backend.value("INSERT INTO jobs (kind) VALUES ('noop');");
        backend.value("UPDATE jobs SET state = 'succeeded' WHERE id = 1;");
        let shown = home.ok(&["show", "1"]);
        assert!(shown.contains("succeeded"), "{}: {shown}", backend.name);
        // A success queued again, and claimed (no end time yet).
        let id = home.ok(&["enqueue", "noop"]).trim().parse::<i64>().unwrap();
        let mut store: Box<dyn jobd::store::Store> = match &backend.schema {
            Some(schema) => Box::new(
                jobd::store::postgres::PgStore::connect(&schema.url(), Duration::from_secs(5))
                    .unwrap(),
            ),
            None => Box::new(home.store()),
        };
        let now = jobd::job::now_ms();
        let claim = |store: &mut Box<dyn jobd::store::Store>| {
            store
                .claim(&Claim {
                    worker: "w",
                    now,
                    lease_until: now + 60_000,
                    requests: &[ClaimRequest::any("default", 10)],
                    keys: &jobd::keys::NO_KEYS,
                })
                .unwrap()
        };
        let got = claim(&mut store);
        store
            .complete(&[Attempt::new(id, "w", 1, got[0].started_at, now + 5).succeeded(None)])
            .unwrap();
        backend.value(&format!(
            "UPDATE jobs SET state = 'queued' WHERE id = {id};"
        ));
        assert_eq!(claim(&mut store).len(), 1);
        let shown = home.ok(&["show", &id.to_string()]);
        assert!(shown.contains("running"), "{}: {shown}", backend.name);
        // Its first run's success stays in the history; the run under way
        // is no attempt yet.
        let runs = store.runs_after(0, 10).unwrap();
        let of_job: Vec<(i64, &str)> = runs
            .iter()
            .filter(|r| r.job_id == id)
            .map(|r| (r.attempt, r.outcome.as_str()))
            .collect();
        assert_eq!(
            of_job,
            [(1, "succeeded")],
            "{}: a running job shows as a success, or its first success is lost: {runs:?}",
            backend.name
        );
    }
}

#[test]
fn show_prints_payload_result_and_history() {
    let home = Home::new();
    home.migrate();
    let id = id_of(&home.ok(&["enqueue", "noop", r#"{"sleep_ms":7}"#]));
    work(&home, |a| a.retry("connection refused".into(), 0));
    work(&home, |a| a.succeeded(Some(r#"{"status":200}"#.into())));
    let text = home.ok(&["show", &id.to_string()]);
    for needle in [
        "state            succeeded",
        "\"sleep_ms\": 7",
        "\"status\": 200",
        "retry",
        "connection refused",
        "test:1:1",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&home.ok(&["show", &id.to_string(), "--json"])).unwrap();
    assert_eq!(json["runs"].as_array().unwrap().len(), 2);
    assert_eq!(json["runs"][0]["outcome"], "retry");
    assert_eq!(json["result"]["status"], 200);
    home.jobd(&["show", "424242"])
        .fails(1, "job 424242 does not exist");
    home.jobd(&["show", "abc"]).fails(2, "invalid value 'abc'");
}

#[test]
fn stats_reports_queues_and_json() {
    let home = Home::new();
    home.migrate();
    home.ok(&["enqueue", "noop"]);
    home.ok(&["enqueue", "noop", "--delay", "1h"]);
    home.ok(&["pause", "--create", "mail"]);
    let text = home.ok(&["stats"]);
    assert!(
        text.contains("QUEUE") && text.contains("mail (paused)"),
        "{text}"
    );
    assert!(text.contains("no daemons running"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&home.ok(&["stats", "--json"])).unwrap();
    let default = &json["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "default")
        .unwrap();
    assert_eq!(
        (default["ready"].as_u64(), default["scheduled"].as_u64()),
        (Some(1), Some(1))
    );
}

#[test]
fn tail_follows_attempts_as_they_finish() {
    let home = Home::new();
    home.migrate();
    home.ok(&["enqueue", "noop"]);
    let mut child =
        common::Spawned::start(home.cmd(&["tail", "--kind", "noop"]).stdout(Stdio::piped()));
    let rx = common::lines(child.stdout.take().unwrap());
    // tail starts from "now": give it a moment by finishing jobs until a line shows.
    let line = wait_for(Duration::from_secs(10), || {
        home.ok(&["enqueue", "noop"]);
        work(&home, |a| a.succeeded(None));
        rx.recv_timeout(Duration::from_millis(300)).ok()
    })
    .expect("tail printed an attempt");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        line.contains("succeeded job=")
            && line.contains("kind=noop")
            && line.contains("duration_ms=3"),
        "{line}"
    );
}

#[test]
fn cancel_retry_pause_resume_and_prune() {
    let home = Home::new();
    home.migrate();
    let a = id_of(&home.ok(&["enqueue", "noop"]));
    let out = home.ok(&["cancel", &a.to_string()]);
    assert!(out.contains(&format!("job {a} cancelled")), "{out}");
    let err = home
        .jobd(&["cancel", &a.to_string(), "777"])
        .fails(1, "already cancelled");
    assert!(err.contains("job 777 does not exist"), "{err}");
    assert!(home.ok(&["retry", &a.to_string()]).contains("queued again"));
    home.jobd(&["retry", &a.to_string()])
        .fails(1, "is queued; only dead or cancelled jobs can be retried");
    home.jobd(&["retry"]).fails(2, "required");
    home.jobd(&["retry", "--queue", "x"]).fails(2, "--dead");

    work(&home, |at| at.dead("boom".into()));
    assert!(home
        .ok(&["retry", "--dead"])
        .contains("queued 1 dead jobs again"));

    assert!(home
        .ok(&["pause", "--create", "mail", "default"])
        .contains("paused queue default"));
    assert_eq!(
        home.query_i64("SELECT count(*) FROM queues WHERE paused = 1"),
        2
    );
    assert!(home
        .ok(&["resume", "default"])
        .contains("resumed queue default"));
    assert_eq!(
        home.query_i64("SELECT paused FROM queues WHERE name = 'default'"),
        0
    );
    home.jobd(&["pause"]).fails(2, "required");

    work(&home, |at| at.succeeded(None));
    assert!(
        home.ok(&["prune"]).contains("pruned 0 jobs"),
        "retention keeps a fresh job"
    );
    std::thread::sleep(Duration::from_millis(5));
    assert!(home
        .ok(&["prune", "--older-than", "1ms"])
        .contains("pruned 1 jobs and 2 attempt records"));
    assert_eq!(home.query_i64("SELECT count(*) FROM jobs"), 0);
    home.jobd(&["prune", "--older-than", "a while"])
        .fails(2, "--older-than");
}

#[test]
fn config_errors_name_the_key_and_exit_1() {
    let home = Home::with_config("[pool]\nthreads = 0");
    home.jobd(&["check-config"])
        .fails(1, "pool.threads must be at least 1 (got 0)");
    home.write_config("[pool]\nthraeds = 4");
    home.jobd(&["list"]).fails(1, "unknown key pool.thraeds");
    home.write_config("[pool]\nthreads = \"many\"");
    home.jobd(&["check-config"])
        .fails(1, "pool.threads is invalid: invalid type: string \"many\"");
    home.write_config("[queues.mail]\nrate = \"abc\"");
    home.jobd(&["check-config"])
        .fails(1, "queues.mail.rate must be a rate like \"10/s\"");
    home.write_config("[daemon]\npoll_interval = 10");
    home.jobd(&["check-config"])
        .fails(1, "daemon.poll_interval must be a duration string");
    home.write_config("[pool\nthreads = 1");
    home.jobd(&["check-config"]).fails(1, "is not valid TOML");

    // The environment overrides the file, and its errors name the variable.
    home.write_config("[pool]\nthreads = 4");
    let run = home
        .cmd(&["check-config"])
        .env("JOBD_POOL__THREADS", "32")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&run.stdout).contains("threads = 32"));
    let run = common::Run(
        home.cmd(&["check-config"])
            .env("JOBD_POOL__THREADS", "0")
            .output()
            .unwrap(),
    );
    run.fails(
        1,
        "JOBD_POOL__THREADS: pool.threads must be at least 1 (got 0)",
    );

    // An explicit config path must exist.
    common::Run(
        home.bare(&["--config", "/nonexistent/jobd.toml", "check-config"])
            .output()
            .unwrap(),
    )
    .fails(1, "config file /nonexistent/jobd.toml does not exist");
}

#[test]
fn check_config_prints_effective_values_without_secrets() {
    let home = Home::with_config("[email.smtp]\npassword_env = \"TEST_SMTP_PASSWORD\"");
    let mut cmd = home.cmd(&["check-config"]);
    cmd.env("TEST_SMTP_PASSWORD", "s3cret-value");
    let out = common::Run(cmd.output().unwrap()).succeeds();
    assert!(
        out.contains("threads = 16") && out.contains("poll_interval = \"10ms\""),
        "{out}"
    );
    assert!(out.contains("password = \"(set, redacted)\""), "{out}");
    assert!(!out.contains("s3cret-value"), "the secret leaked: {out}");
}

#[test]
fn the_shipped_config_toml_is_valid_and_matches_the_defaults() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml");
    let home = Home::new();
    let check = |config: &str| {
        common::Run(
            home.bare(&["--config", config, "check-config"])
                .output()
                .unwrap(),
        )
        .succeeds()
    };
    let empty = home.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    // The first line names the file; the effective values must be identical.
    let values = |out: String| out.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(
        values(check(shipped)),
        values(check(empty.to_str().unwrap())),
        "config.toml drifted from the built-in defaults"
    );
}

#[test]
fn concurrent_enqueuers_never_see_database_is_locked() {
    let home = Home::new();
    home.migrate();
    let file = home.path().join("bulk.jsonl");
    std::fs::write(&file, "{\"kind\":\"noop\"}\n".repeat(20_000)).unwrap();
    let file = file.to_str().unwrap();
    // A bulk import, two CLI enqueuers and the sqlite3 shell, all at once.
    std::thread::scope(|scope| {
        let bulk = scope.spawn(|| home.jobd(&["enqueue", "--file", file]));
        let singles: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    (0..40)
                        .map(|_| home.jobd(&["enqueue", "noop"]))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let shell = scope.spawn(|| {
            (0..40)
                .map(|i| {
                    home.sqlite3(&format!(
                        "INSERT INTO jobs(kind, payload) VALUES ('noop', '{{\"i\":{i}}}');"
                    ))
                })
                .collect::<Vec<_>>()
        });
        let bulk = bulk.join().unwrap();
        assert_eq!(bulk.code(), 0, "{}", bulk.stderr());
        for run in singles.into_iter().flat_map(|h| h.join().unwrap()) {
            assert_eq!(run.code(), 0, "enqueue failed: {}", run.stderr());
        }
        for run in shell.join().unwrap() {
            assert_eq!(run.code(), 0, "sqlite3 failed: {}", run.stderr());
        }
    });
    assert_eq!(
        home.query_i64("SELECT count(*) FROM jobs WHERE state = 'queued'"),
        20_000 + 80 + 40
    );
}

/// Regression: with `email.smtp.password_env` or
/// `metrics.dashboard_token_env` in the config, `list`, `stats`, `enqueue`
/// and `cron` failed unless the daemon's secret was in the operator's
/// shell. Only `run` and `check-config` read secrets.
#[test]
fn commands_other_than_run_need_no_secrets() {
    let home = Home::with_config(
        "[email.smtp]\npassword_env = \"JOBD_TEST_SMTP_PW\"\n\
         [metrics]\ndashboard_token_env = \"JOBD_TEST_DASH\"\n",
    );
    home.migrate();
    let id = id_of(&home.ok(&["enqueue", "noop", "{}"]));
    assert!(home.ok(&["list"]).contains("queued"));
    home.ok(&["show", &id.to_string()]);
    home.ok(&["stats"]);
    home.ok(&["cron"]);
    home.ok(&["pause", "default"]);
    home.ok(&["resume", "default"]);
    home.ok(&["cancel", &id.to_string()]);
    home.ok(&["retry", &id.to_string()]);
    // The daemon and check-config still say what is missing.
    home.jobd(&["check-config"]).fails(
        1,
        "email.smtp.password_env names the environment variable JOBD_TEST_SMTP_PW, which is not set",
    );
    home.jobd(&["run"]).fails(
        1,
        "email.smtp.password_env names the environment variable JOBD_TEST_SMTP_PW, which is not set",
    );
}

/// Regression: `jobd enqueue` on a path with no database silently created
/// one, which the daemon (reading another file) never saw.
#[test]
fn enqueue_never_creates_a_database() {
    let home = Home::new();
    home.jobd(&["enqueue", "noop", "{}"])
        .fails(1, "does not exist (run `jobd migrate` to create it)");
    assert!(
        !home.db().exists(),
        "enqueue created {}",
        home.db().display()
    );
    let jobs = home.path().join("jobs.jsonl");
    std::fs::write(&jobs, "{\"kind\":\"noop\",\"payload\":{}}\n").unwrap();
    home.jobd(&["enqueue", "--file", jobs.to_str().unwrap()])
        .fails(1, "does not exist");
    assert!(!home.db().exists());
}

/// `check-config` says when there is no config file and the defaults
/// apply, and prints the warnings the daemon logs as `config.warning`.
#[test]
fn check_config_says_when_defaults_apply_and_warns_of_risky_settings() {
    let home = Home::new();
    std::fs::remove_file(home.config()).unwrap();
    let out = Run(home.bare(&["check-config"]).output().expect("run jobd")).succeeds();
    assert!(
        out.starts_with("# config.toml does not exist: the built-in defaults apply"),
        "{out}"
    );
    let port = common::free_port();
    home.write_config(&format!(
        "[metrics]\nlisten = \"0.0.0.0:{port}\"\n[file]\nroots = [\"/\"]\n[daemon]\nshutdown_grace = \"100ms\"\n"
    ));
    let out = home.ok(&["check-config"]);
    assert!(out.contains(&format!("# warning: metrics.listen is 0.0.0.0:{port}, reachable from other hosts, and no dashboard token is set")), "{out}");
    assert!(
        out.contains("# warning: file.roots includes /, a system folder"),
        "{out}"
    );
    home.migrate();
    let daemon = home.daemon();
    let line = daemon.wait_log("config.warning key=metrics.listen");
    assert!(line.contains("no dashboard token is set"), "{line}");
    daemon.wait_log("config.warning key=file.roots");
    daemon.stop();
}

/// Regression: `pause nosuchqueue` silently created a paused queue that
/// then showed on the dashboard for good. A queue with no jobs that the
/// config does not name is taken for a typo unless `--create` says so.
#[test]
fn pausing_an_unknown_queue_needs_create() {
    let home = Home::with_config("[queues.reports]\nconcurrency = 1\n");
    home.migrate();
    home.ok(&["enqueue", "noop", "{}", "--queue", "mail"]);
    home.jobd(&["pause", "mial"]).fails(
        2,
        "queue mial has no jobs and the config does not name it; check the name, or pass --create",
    );
    home.jobd(&["pause", "mail", "mial"]).fails(2, "queue mial");
    assert_eq!(
        home.query_i64("SELECT count(*) FROM queues WHERE paused = 1"),
        0
    );
    home.ok(&["pause", "mail"]);
    home.ok(&["pause", "reports"]);
    home.ok(&["pause", "--create", "later"]);
    home.ok(&["pause", "later"]);
    assert_eq!(
        home.query_i64("SELECT count(*) FROM queues WHERE paused = 1"),
        3
    );
}

/// Times in `list`, `show` and `tail` are UTC, and say so.
#[test]
fn times_are_shown_as_utc() {
    let home = Home::new();
    home.migrate();
    let id = id_of(&home.ok(&["enqueue", "noop", "{}"]));
    let list = home.ok(&["list"]);
    assert!(list.lines().nth(1).unwrap().contains(" UTC"), "{list}");
    let show = home.ok(&["show", &id.to_string()]);
    let run_at = show
        .lines()
        .find(|l| l.trim_start().starts_with("run_at"))
        .unwrap();
    assert!(run_at.ends_with(" UTC"), "{show}");
}

/// Every command against each backend, from an empty database to a daemon
/// followed with `tail` and `--wait`.
#[test]
fn every_command_works_on_either_backend() {
    for backend in common::homes("cli") {
        every_command(&backend);
    }
}

fn every_command(backend: &common::BackendHome) {
    let home = &backend.home;
    // Commands that need the schema say so before it exists.
    home.jobd(&["list"]).fails(1, "run `jobd migrate`");
    home.ok(&["migrate"]);
    let id = home.ok(&[
        "enqueue",
        "http",
        r#"{"url":"http://x/hook","headers":{"Authorization":"Bearer t0k"}}"#,
        "--queue",
        "hooks",
    ]);
    let id = id.trim().to_string();
    let first = home.ok(&["enqueue", "noop", "--unique-key", "once"]);
    let again = home.ok(&["enqueue", "noop", "--unique-key", "once"]);
    assert!(
        again.contains(first.trim()),
        "the key de-duplicates: {first} / {again}"
    );
    let list = home.ok(&["list"]);
    assert!(list.contains("hooks") && list.contains("http"), "{list}");
    let show = home.ok(&["show", &id]);
    assert!(
        show.contains("[redacted]") && !show.contains("t0k"),
        "{show}"
    );
    let stats = home.ok(&["stats"]);
    assert!(stats.contains("hooks"), "{stats}");
    home.ok(&["pause", "hooks"]);
    assert_eq!(
        backend.value(
            "SELECT CASE WHEN paused THEN 'yes' ELSE 'no' END FROM queues WHERE name = 'hooks';"
        ),
        "yes",
        "{}",
        backend.name
    );
    home.ok(&["resume", "hooks"]);
    let cancelled = home.ok(&["cancel", &id]);
    assert!(cancelled.contains("cancelled"), "{cancelled}");
    let retried = home.ok(&["retry", &id]);
    assert!(retried.contains("queued"), "{retried}");
    home.ok(&["prune", "--older-than", "1s"]);
    home.ok(&["cron"]);
    let checked = home.ok(&["check-config"]);
    assert!(checked.contains(&backend.database_named()), "{checked}");
    for json in [
        home.ok(&["list", "--json"]),
        home.ok(&["show", &id, "--json"]),
        home.ok(&["stats", "--json"]),
    ] {
        serde_json::from_str::<serde_json::Value>(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    }
    let file = home.path().join("jobs.jsonl");
    std::fs::write(
        &file,
        "{\"kind\":\"noop\",\"queue\":\"bulk\"}\n{\"kind\":\"noop\",\"queue\":\"bulk\",\"priority\":3}\n",
    )
    .unwrap();
    let bulk = home.ok(&["enqueue", "--file", file.to_str().unwrap()]);
    assert!(bulk.contains("enqueued 2 jobs"), "{bulk}");

    // With a daemon: --wait follows a job to its end, tail follows attempts.
    home.ok(&["pause", "hooks"]);
    let daemon = home.daemon_logging_to("d.log");
    let mut tail = common::Spawned::start(
        home.cmd(&["tail", "--kind", "noop"])
            .stdout(std::process::Stdio::piped()),
    );
    let rx = common::lines(tail.stdout.take().unwrap());
    let line = common::wait_for(common::PATIENCE, || {
        // Exits 0 only once the job succeeded.
        let waited = home.ok(&["enqueue", "noop", "--wait"]);
        let id: i64 = waited.lines().next().unwrap().parse().unwrap();
        assert_eq!(
            backend.value(&format!("SELECT state FROM jobs WHERE id = {id};")),
            "succeeded"
        );
        rx.recv_timeout(std::time::Duration::from_millis(300)).ok()
    })
    .expect("tail printed an attempt");
    tail.kill().unwrap();
    tail.wait().unwrap();
    assert!(
        line.contains("succeeded job=") && line.contains("kind=noop"),
        "{line}"
    );
    home.jobd(&["enqueue", "noop", r#"{"sleep_ms":"x"}"#, "--wait"])
        .fails(1, "ended dead: payload field sleep_ms: invalid type");
    daemon.stop();
}

/// A variable of the environment that is not UTF-8 stops no command
/// unless it is jobd's own, which is refused by name. (Any such variable,
/// another program's too, made every command panic.)
#[test]
fn an_environment_variable_that_is_not_utf8_is_left_out_unless_it_is_jobds() {
    use std::os::unix::ffi::OsStrExt;
    let home = Home::new();
    let latin1 = std::ffi::OsStr::from_bytes(b"caf\xe9");
    let out = home
        .cmd(&["check-config"])
        .env("LANG_OLD", latin1)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = home
        .cmd(&["check-config"])
        .env("JOBD_POOL__THREADS", latin1)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert_eq!(
        said.trim(),
        "jobd: the environment variable JOBD_POOL__THREADS is not valid UTF-8"
    );
}

/// `prune --older-than` takes an age of at most 100 years: one past the
/// millisecond arithmetic's limit wrapped the cutoff into the future and
/// deleted every finished job, the one that had just ended too.
#[test]
fn prune_refuses_an_age_it_cannot_count_and_deletes_nothing() {
    let home = Home::new();
    home.migrate();
    let id = id_of(&home.ok(&["enqueue", "noop"]));
    work(&home, |a| a.succeeded(None));
    for age in ["10000000000000000s", "9223372036854776s"] {
        home.jobd(&["prune", "--older-than", age])
            .fails(2, "is longer than 100 years");
    }
    assert_eq!(home.state(id), "succeeded");
    assert!(home
        .ok(&["prune", "--older-than", "1d"])
        .contains("pruned 0 jobs"));
    assert_eq!(home.state(id), "succeeded");
}

/// Inputs without an end, or that are not files, are refused with a
/// sentence instead of read until memory runs out or waited on forever:
/// a bulk file or a payload from `/dev/zero`, a config or a secret file
/// that is a device or a FIFO.
#[test]
fn endless_inputs_and_files_that_are_not_files_are_refused() {
    let home = Home::with_config("[limits]\nmax_payload_bytes = \"1KiB\"\n");
    home.migrate();
    home.jobd(&["enqueue", "--file", "/dev/zero"])
        .fails(1, "line 1 is longer than 1049600 bytes");
    let zero = std::fs::File::open("/dev/zero").unwrap();
    let out = home
        .cmd(&["enqueue", "noop", "-"])
        .stdin(zero)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("the payload on stdin is larger than limits.max_payload_bytes (1024 bytes)"),
        "{said}"
    );
    let out = home
        .bare(&["--config", "/dev/zero", "check-config"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("/dev/zero: cannot be read: it is not a regular file"),
        "{said}"
    );
    let fifo = home.path().join("config.fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let out = home
        .bare(&["--config", fifo.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("it is not a regular file"), "{said}");
    std::fs::write(
        home.config(),
        "[metrics]\nlisten = \"127.0.0.1:0\"\ndashboard_token_file = \"/dev/zero\"\n",
    )
    .unwrap();
    home.jobd(&["check-config"]).fails(
        1,
        "/dev/zero, which cannot be read: it is not a regular file",
    );
}

/// The small things a hostile review found in the operator commands:
/// `resume` of a name no queue has is refused like `pause` (it wrote a
/// row and said "resumed"), names with control characters are printed
/// escaped by `pause`, `resume` and `batch`, a section no job can name
/// (empty, or a path as a handler's name) is refused, and a command
/// failing for thousands of ids says so in one short line.
#[test]
fn operator_commands_hold_names_to_what_jobs_can_name_and_stay_short() {
    let home = Home::new();
    home.migrate();
    home.jobd(&["resume", "nosuch"])
        .fails(2, "queue nosuch is not paused");
    assert_eq!(home.query_i64("SELECT count(*) FROM queues"), 0);
    let odd = "q\u{1b}]0;x\u{7}";
    let paused = home.ok(&["pause", "--create", odd]);
    assert!(
        !paused.contains('\u{1b}') && paused.contains(r"\u{001b}"),
        "{paused:?}"
    );
    let resumed = home.ok(&["resume", odd]);
    assert!(!resumed.contains('\u{1b}'), "{resumed:?}");
    home.ok(&["enqueue", "noop", "--batch", odd]);
    let batch = home.ok(&["batch", odd]);
    assert!(
        !batch.contains('\u{1b}') && batch.contains(r"\u{001b}"),
        "{batch:?}"
    );
    let ids: Vec<String> = (1_000_000..1_050_000).map(|i| i.to_string()).collect();
    let mut args = vec!["cancel"];
    args.extend(ids.iter().map(String::as_str));
    let err = home.jobd(&args).fails(1, "; and 49990 more");
    assert!(err.len() < 2_000, "{} bytes", err.len());
    for (section, needle) in [
        (
            "[queues.\"\"]\nconcurrency = 1\n",
            "queues.\"\" is a section with an empty name",
        ),
        (
            "[cron.\"\"]\nschedule = \"@every 1m\"\nkind = \"noop\"\n",
            "cron.\"\" is a section",
        ),
        (
            "[exec.handlers.\"../../bin/sh\"]\nmode = \"persistent\"\n",
            "is not a handler's name",
        ),
    ] {
        std::fs::write(home.config(), section).unwrap();
        home.jobd(&["check-config"]).fails(1, needle);
    }
}

/// A queue name or kind of tens of thousands of characters (SQL accepts
/// them) breaks no table: `list` and `stats` print it cut, `--json`
/// whole. Padding a cell that wide panicked ("Formatting argument out of
/// range").
#[test]
fn tables_print_cells_of_any_width() {
    let home = Home::new();
    home.migrate();
    let queue = "q".repeat(70_000);
    home.ok(&["enqueue", "noop", "--queue", &queue]);
    home.text(&format!(
        "INSERT INTO jobs(kind) VALUES ('{}');",
        "k".repeat(1_000_000)
    ));
    for verb in [&["list"][..], &["stats"]] {
        let out = home.ok(verb);
        assert!(out.contains(&format!("{}…", "q".repeat(20))), "{verb:?}");
        assert!(out.len() < 10_000, "{verb:?} printed {} bytes", out.len());
    }
    let json = home.ok(&["list", "--json"]);
    assert!(json.contains(&queue));
}

/// Regression: `enqueue --file` stopped by Ctrl-C or SIGTERM part-way
/// exited without a word, its batches so far committed: run again, it
/// imported them twice. It finishes the batch in hand and says which
/// lines were imported.
#[test]
fn an_interrupted_bulk_import_says_what_it_imported() {
    let home = Home::new();
    home.migrate();
    let lines = 400_000;
    let file = home.path().join("many.jsonl");
    std::fs::write(&file, "{\"kind\":\"noop\"}\n".repeat(lines)).unwrap();
    let child = home
        .cmd(&["enqueue", "--file", file.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    common::wait_for(common::PATIENCE, || {
        (home.query_i64("SELECT count(*) FROM jobs") > 0).then_some(())
    })
    .expect("the import started");
    // SAFETY: a plain kill(2) of the child this test started.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let imported = home.query_i64("SELECT count(*) FROM jobs");
    assert!(
        imported < lines as i64,
        "the import ended before the signal"
    );
    assert!(
        stderr.contains("interrupted")
            && stderr.contains(&format!("({imported} of {lines}) were imported")),
        "{stderr}"
    );
}
