//! Faults, shown rather than assumed: `kill -9` at random moments, a write
//! lock held by another process, bad database files, and secrets that must
//! never be printed. The short variants run in CI; `cargo test --test
//! faults -- --ignored` runs the long crash loop (20 000 jobs, 20 crashes).

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::{procs, wait_for, Home, HttpServer, Reply, SmtpServer, NOW, PATIENCE};

/// What a crash loop ended with.
#[derive(Debug)]
#[allow(dead_code)] // read through Debug, in the report line
struct CrashReport {
    jobs: i64,
    crashes: usize,
    /// Jobs a crash caught claimed or running, taken back at the restart
    /// (each has a `rescued` attempt; none succeeded twice).
    rescued: i64,
    lost: i64,
}

/// Inserts `jobs` jobs (nine in ten `noop` of 0–3 ms, one in ten `exec`
/// of `/bin/true` on the CPU pool), then `crashes` times: starts the
/// daemon, waits until a random number of jobs finished, kills it with
/// SIGKILL and checks its workers died with it. A last daemon finishes the
/// work. Every job must succeed exactly once and none may be left running.
fn crash_loop(jobs: usize, crashes: usize, seed: u64) -> CrashReport {
    eprintln!("crash loop: {jobs} jobs, {crashes} crashes, seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let home = Home::new();
    let handlers = home.path().join("handlers");
    std::fs::create_dir_all(&handlers).unwrap();
    // A copy: handlers must be regular files, not links.
    std::fs::copy("/bin/true", handlers.join("true")).unwrap();
    home.write_config(&format!(
        "[exec]\ndir = \"{}\"\n[pool]\nthreads = 8\n[cpu]\nworkers = 2\n\
         [retry]\nbackoff_base = \"10ms\"\nbackoff_max = \"50ms\"\n",
        handlers.display()
    ));
    home.migrate();
    let mut rows = Vec::with_capacity(jobs);
    for i in 0..jobs {
        rows.push(if i % 10 == 9 {
            format!("('exec', '{{\"handler\":\"true\"}}', 'default', 0, {NOW}, 25, NULL)")
        } else {
            format!(
                "('noop', '{{\"sleep_ms\":{}}}', 'default', 0, {NOW}, 25, NULL)",
                rng.u64(0..4)
            )
        });
    }
    for chunk in rows.chunks(500) {
        home.insert(&chunk.join(", "));
    }
    let done = |home: &Home| home.query_i64("SELECT count(*) FROM jobs WHERE state = 'succeeded'");
    for crash in 0..crashes {
        let daemon = home.daemon_logging_to(&format!("run-{crash}.log"));
        let workers = procs::workers(daemon.pid());
        // A random moment: when a random share of what is left has finished.
        let start = done(&home);
        let target = start + rng.i64(0..=((jobs as i64 - start) / (crashes - crash) as i64).max(1));
        wait_for(PATIENCE, || (done(&home) >= target).then_some(()))
            .expect("the daemon makes progress between crashes");
        daemon.kill9();
        for pid in workers {
            assert!(
                wait_for(PATIENCE, || procs::gone(pid).then_some(())).is_some(),
                "CPU worker {pid} outlived kill -9 of its daemon"
            );
        }
    }
    let last = home.daemon_logging_to("last.log");
    home.wait_count(
        "SELECT count(*) FROM jobs WHERE state = 'succeeded'",
        jobs as i64,
    );
    last.stop();

    assert_eq!(
        home.query_i64("SELECT count(*) FROM jobs WHERE state <> 'succeeded'"),
        0
    );
    // Exactly one successful attempt per job, and no more attempts than
    // one per crash on top of it.
    assert_eq!(
        home.query_i64(
            "SELECT count(*) FROM (SELECT job_id FROM job_runs WHERE outcome = 'succeeded' \
             GROUP BY job_id HAVING count(*) <> 1)"
        ),
        0,
        "a job succeeded twice"
    );
    assert_eq!(
        home.query_i64("SELECT count(DISTINCT job_id) FROM job_runs WHERE outcome = 'succeeded'"),
        jobs as i64
    );
    let most_runs = home.query_i64(
        "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM job_runs GROUP BY job_id)",
    );
    assert!(
        most_runs <= 1 + 2 * crashes as i64,
        "a job ran {most_runs} times in {crashes} crashes"
    );
    // Each extra attempt was rescued from a crashed daemon, never a retry
    // of a job that had already succeeded.
    assert_eq!(
        home.query_i64(
            "SELECT count(*) FROM job_runs a JOIN job_runs b ON a.job_id = b.job_id \
             AND a.outcome = 'succeeded' AND b.attempt > a.attempt"
        ),
        0
    );
    CrashReport {
        jobs: jobs as i64,
        crashes,
        rescued: home
            .query_i64("SELECT count(DISTINCT job_id) FROM job_runs WHERE outcome = 'rescued'"),
        lost: jobs as i64 - home.query_i64("SELECT count(*) FROM jobs WHERE state = 'succeeded'"),
    }
}

fn seed() -> u64 {
    std::env::var("JOBD_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..))
}

#[test]
fn kill_9_at_random_moments_loses_and_doubles_nothing() {
    let report = crash_loop(2_000, 5, seed());
    eprintln!("{report:?}");
    assert_eq!(report.lost, 0);
}

#[test]
#[ignore = "long: 20 000 jobs and 20 crashes (about a minute)"]
fn kill_9_twenty_times_over_20_000_jobs() {
    let report = crash_loop(20_000, 20, seed());
    eprintln!("{report:?}");
    assert_eq!(report.lost, 0);
}

/// Another process takes the database's write lock for 3 s, with the
/// daemon's `busy_timeout` at 300 ms: jobd's writes wait, fail, are logged
/// as `db.busy` saying what it does next, and are tried again; every job
/// runs once and nothing is lost. On SQLite a `BEGIN IMMEDIATE`, on
/// PostgreSQL a `LOCK TABLE jobs IN EXCLUSIVE MODE`.
#[test]
fn a_write_lock_held_by_another_process_delays_outcomes_but_loses_none() {
    const JOBS: usize = 200;
    for backend in common::homes_with(
        "locked",
        "[pool]\nthreads = 8\n[daemon]\nshutdown_grace = \"100ms\"\n",
    ) {
        let home = &backend.home;
        home.ok(&["migrate"]);
        backend.insert_many(
            JOBS,
            "kind, payload, max_attempts",
            "'noop', '{\"sleep_ms\":30}', 3",
        );
        let log = home.path().join("daemon.log");
        let daemon = home.daemon_with_env(&log, &log, &[("JOBD_DATABASE__BUSY_TIMEOUT", "300ms")]);
        let succeeded = || backend.count("SELECT count(*) FROM jobs WHERE state = 'succeeded';");
        wait_for(PATIENCE, || (succeeded() >= 20).then_some(())).expect("jobs run");
        let mut locker = hold_the_write_lock(&backend, 3);
        let busy = daemon.wait_log("db.busy");
        assert!(busy.contains("action="), "says what it will do: {busy}");
        assert!(
            busy.contains("stayed locked by another connection")
                && busy.contains("for more than 300ms"),
            "{}: {busy}",
            backend.name
        );
        assert!(locker.wait().unwrap().success());
        backend.wait_value(
            "SELECT count(*) FROM jobs WHERE state = 'succeeded';",
            &JOBS.to_string(),
            "every job finished once the lock was gone",
        );
        let log = daemon.stop();
        // Whatever the lock caught (outcomes, claims, the heartbeat),
        // its end is said: it used to be said only for outcomes.
        assert!(log.contains("db.recovered"), "{}: {log}", backend.name);
        assert!(busy.contains("WARN  db.busy"), "{busy}");
        // Every job ran once: nothing lost, no attempt counted twice.
        assert_eq!(backend.count("SELECT count(*) FROM job_runs;"), JOBS as i64);
        assert_eq!(backend.count("SELECT max(attempts) FROM jobs;"), 1);
    }
}

/// Starts a process that takes `backend`'s write lock on `jobs` for `secs`
/// seconds, and returns once it holds it.
fn hold_the_write_lock(backend: &common::BackendHome, secs: u32) -> std::process::Child {
    let mut cmd;
    match &backend.schema {
        Some(schema) => {
            cmd = std::process::Command::new("psql");
            cmd.args(["-h", "127.0.0.1", "-d", "test", "-qAt", "-c"])
                .arg(format!(
                    "SET search_path = {}; BEGIN; LOCK TABLE jobs IN EXCLUSIVE MODE; \
                     SELECT pg_sleep({secs}); COMMIT;",
                    schema.name
                ))
                .stdout(std::process::Stdio::null());
        }
        None => {
            cmd = std::process::Command::new("python3");
            cmd.arg("-c")
                .arg(
                    "import sqlite3, sys, time, pathlib\n\
                     db = sqlite3.connect(sys.argv[1], timeout=10, isolation_level=None)\n\
                     db.execute('BEGIN IMMEDIATE')\n\
                     pathlib.Path(sys.argv[2]).write_text('locked')\n\
                     time.sleep(float(sys.argv[3]))\n\
                     db.execute('COMMIT')\n",
                )
                .arg(backend.home.db())
                .arg(backend.home.path().join("locked"))
                .arg(secs.to_string());
        }
    }
    let child = cmd.spawn().expect("the lock holder starts");
    let held = || match &backend.schema {
        Some(schema) => {
            schema
                .psql(&format!(
                    "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                 WHERE c.relname = 'jobs' AND l.mode = 'ExclusiveLock' AND l.granted \
                 AND c.relnamespace = '{}'::regnamespace;",
                    schema.name
                ))
                .as_deref()
                == Ok("1")
        }
        None => backend.home.path().join("locked").exists(),
    };
    wait_for(PATIENCE, || held().then_some(())).expect("the lock is taken");
    child
}

/// Puts a bad file at the database path.
type MakeDb = fn(&Path);

#[test]
fn a_bad_database_stops_the_daemon_with_one_sentence_and_stays_untouched() {
    let cases: [(&str, MakeDb, &str); 3] = [
        (
            "a directory",
            |db| std::fs::create_dir(db).unwrap(),
            "is a directory, not a SQLite file",
        ),
        (
            "not SQLite",
            |db| std::fs::write(db, vec![b'x'; 4096]).unwrap(),
            "is not a SQLite database",
        ),
        (
            "a newer schema",
            |db| {
                let run = common::sqlite3(db, "CREATE TABLE t(x); PRAGMA user_version = 99;");
                assert_eq!(run.code(), 0);
            },
            "newer than this jobd knows",
        ),
    ];
    for (what, make, needle) in cases {
        let home = Home::new();
        make(&home.db());
        let before = std::fs::read(home.db()).ok();
        let err = home.jobd(&["run"]).fails(1, needle);
        assert_eq!(err.lines().count(), 1, "{what}: {err}");
        assert_eq!(
            std::fs::read(home.db()).ok(),
            before,
            "{what}: the file changed"
        );
        assert!(!home.path().join("jobd.db-wal").exists(), "{what}");
    }
}

#[test]
fn secrets_never_show_in_logs_config_output_show_or_errors() {
    const PASSWORD: &str = "pw-7f3a9c-never-print-me";
    const TOKEN: &str = "Bearer tok-51e0b2-never-print-me";
    let smtp = SmtpServer::start(false);
    let api = HttpServer::start(|_, _| Reply::new(500, "upstream broke"));
    let home = Home::new();
    home.write_config(&format!(
        "[email]\ntransport = \"smtp\"\nfrom = \"jobd@example.com\"\n\
         [email.smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nusername = \"jobd\"\npassword_env = \"SMTP_SECRET\"\n\
         [retry]\nbackoff_base = \"10ms\"\n[daemon]\nshutdown_grace = \"100ms\"\n[log]\nlevel = \"debug\"\n",
        smtp.port
    ));
    // Every command loads the config, which needs the variable it names.
    let jobd = |args: &[&str]| {
        let out = home
            .cmd(args)
            .env("SMTP_SECRET", PASSWORD)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    jobd(&["migrate"]);
    let log = home.path().join("daemon.log");
    let daemon = home.daemon_with_env(&log, &log, &[("SMTP_SECRET", PASSWORD)]);
    let http = home.insert_job(
        "http",
        &format!(
            r#"{{"url":"{}/hook","method":"POST","headers":{{"Authorization":"{TOKEN}","X-Trace":"t1"}}}}"#,
            api.base
        ),
        "2",
        "NULL",
    );
    let mail = home.insert_job(
        "email",
        r#"{"to":"ann@example.com","subject":"hi","text":"hello"}"#,
        "2",
        "NULL",
    );
    home.wait_state(http, "dead");
    let mail_state = wait_for(PATIENCE, || {
        let s = home.state(mail);
        (s != "queued" && s != "running").then_some(s)
    })
    .unwrap();
    daemon.stop();
    // The request really carried the token; nothing printed it.
    assert!(api
        .received()
        .iter()
        .any(|r| r.header("Authorization") == Some(TOKEN)));
    let mut printed: HashMap<&str, String> = HashMap::new();
    printed.insert("daemon log", std::fs::read_to_string(&log).unwrap());
    printed.insert("check-config", jobd(&["check-config"]));
    printed.insert("show http", jobd(&["show", &http.to_string()]));
    printed.insert("show email", jobd(&["show", &mail.to_string()]));
    printed.insert("show --json", jobd(&["show", &http.to_string(), "--json"]));
    printed.insert("list --json", jobd(&["list", "--json"]));
    printed.insert(
        "last_error",
        home.text("SELECT group_concat(coalesce(last_error, ''), ' | ') FROM jobs;"),
    );
    printed.insert(
        "job_runs",
        home.text("SELECT group_concat(coalesce(error, ''), ' | ') FROM job_runs;"),
    );
    for (what, text) in &printed {
        for secret in [PASSWORD, "tok-51e0b2"] {
            assert!(!text.contains(secret), "{what} printed a secret:\n{text}");
        }
    }
    assert!(
        printed["show http"].contains("[redacted]"),
        "{}",
        printed["show http"]
    );
    assert!(
        printed["show http"].contains("X-Trace"),
        "other headers stay visible"
    );
    eprintln!("email job ended {mail_state}");
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mounts `size` at `path`; None (with a message) where mounting is
    /// impossible (not root, no mount namespace rights).
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("cannot mount a tmpfs here: the disk-full test is skipped");
            return None;
        }
        Some(Tmpfs(path.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the file system of `path` with `filler` until it is full.
fn fill(filler: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(filler).unwrap();
    let block = vec![0u8; 64 * 1024];
    while file.write_all(&block).is_ok() {}
    let _ = file.sync_all();
}

#[test]
fn a_full_disk_stops_progress_without_losing_or_corrupting_anything() {
    let home = Home::new();
    let disk = home.path().join("disk");
    let Some(_tmpfs) = Tmpfs::mount(&disk, "24m") else {
        return;
    };
    let files = disk.join("files");
    std::fs::create_dir_all(&files).unwrap();
    let db = disk.join("jobd.db");
    // The whole config by hand: the database lives on the tmpfs.
    std::fs::write(
        home.config(),
        format!(
            "[database]\npath = \"{}\"\nbusy_timeout = \"5s\"\n[file]\nroots = [\"{}\"]\n\
             [retry]\nmax_attempts = 1000\nbackoff_base = \"20ms\"\nbackoff_max = \"200ms\"\n\
             [daemon]\nshutdown_grace = \"100ms\"\n[pool]\nthreads = 2\n",
            db.display(),
            files.display()
        ),
    )
    .unwrap();
    home.ok(&["migrate"]);
    // Slow enough (two threads, 10 ms a noop) that the disk fills mid-way.
    let content = "x".repeat(10 * 1024);
    let jobs: Vec<String> = (0..300)
        .map(|i| {
            if i % 2 == 0 {
                r#"{"kind":"noop","payload":{"sleep_ms":10}}"#.to_string()
            } else {
                format!(
                    r#"{{"kind":"file","payload":{{"op":"write","path":"out-{i}.txt","content":"{content}"}}}}"#
                )
            }
        })
        .collect();
    let import = home.path().join("jobs.jsonl");
    std::fs::write(&import, jobs.join("\n")).unwrap();
    home.ok(&["enqueue", "--file", import.to_str().unwrap()]);
    let count = |sql: &str| {
        common::sqlite3(&db, sql)
            .succeeds()
            .trim()
            .parse::<i64>()
            .unwrap()
    };
    let daemon = home.daemon();
    wait_for(PATIENCE, || {
        (count("SELECT count(*) FROM jobs WHERE state = 'succeeded';") >= 10).then_some(())
    })
    .expect("some jobs ran before the disk filled");

    let filler = disk.join("filler");
    fill(&filler);
    let line = daemon.wait_log("db.error");
    eprintln!("{line}");
    assert!(line.contains("action="), "says what it will do: {line}");
    let stalled = count("SELECT count(*) FROM jobs WHERE state = 'succeeded';");
    assert!(stalled < 300, "the disk filled too late to matter");

    std::fs::remove_file(&filler).unwrap();
    wait_for(PATIENCE, || {
        (count("SELECT count(*) FROM jobs WHERE state = 'succeeded';") == 300).then_some(())
    })
    .expect("every job completes once space is back");
    let log = daemon.stop();
    assert!(!log.contains("panicked"), "{log}");
    for event in ["db.recovered", "job.retry"] {
        eprintln!("{event}: {} lines", log.matches(event).count());
    }
    assert_eq!(
        common::sqlite3(&db, "PRAGMA integrity_check;")
            .succeeds()
            .trim(),
        "ok"
    );
    assert_eq!(
        count("SELECT count(*) FROM job_runs WHERE outcome = 'succeeded';"),
        300,
        "each job succeeded exactly once"
    );
    for i in [1, 149, 299] {
        let written = std::fs::read_to_string(files.join(format!("out-{i}.txt"))).unwrap();
        assert_eq!(written.len(), content.len());
    }
}

#[test]
fn a_database_on_a_read_only_file_system_stops_the_daemon_untouched() {
    // As root a file's mode does not stop a write; a read-only mount does.
    let home = Home::new();
    let disk = home.path().join("ro");
    let Some(_tmpfs) = Tmpfs::mount(&disk, "4m") else {
        return;
    };
    let db = disk.join("jobd.db");
    std::fs::write(
        home.config(),
        format!("[database]\npath = \"{}\"\n", db.display()),
    )
    .unwrap();
    home.ok(&["migrate"]);
    let remounted = std::process::Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&disk)
        .status()
        .is_ok_and(|s| s.success());
    if !remounted {
        eprintln!("cannot remount read-only here: skipped");
        return;
    }
    let before = std::fs::read(&db).unwrap();
    let err = home.jobd(&["run"]).fails(1, "read-only");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(std::fs::read(&db).unwrap(), before);
}

/// CPU ticks (1/100 s) the process `pid` has used, its threads included.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Outcome writes that fail at once (a full disk, an immutable file; here
/// a trigger that refuses them) while every slot holds an unwritten
/// outcome: the daemon retries every 250 ms and otherwise sleeps. It spun
/// a core: the back-off of a claim that had failed with them stayed in
/// the past and woke the loop at once, forever.
#[test]
fn outcome_writes_that_fail_at_once_do_not_spin_the_daemon() {
    for backend in common::homes_with("failfast", "[pool]\nthreads = 2\n") {
        let home = &backend.home;
        home.ok(&["migrate"]);
        let refuse = match &backend.schema {
            None => "CREATE TRIGGER refuse BEFORE UPDATE OF state ON jobs \
                     WHEN NEW.state = 'succeeded' BEGIN SELECT RAISE(ABORT, 'refused'); END;"
                .to_string(),
            Some(_) => "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \
                        $$ BEGIN RAISE EXCEPTION 'refused'; END $$; \
                        CREATE TRIGGER refuse BEFORE UPDATE OF state ON jobs FOR EACH ROW \
                        WHEN (NEW.state = 'succeeded') EXECUTE FUNCTION refuse();"
                .to_string(),
        };
        backend.value(&refuse);
        // Jobs long enough that the pool's two slots are all it claims:
        // once their outcomes are refused, no slot is free to claim with.
        backend.insert_many(6, "kind, payload", "'noop', '{\"sleep_ms\":100}'");
        let daemon = home.daemon_logging_to("d.log");
        let line = daemon.wait_log("op=\"write outcomes\"");
        assert!(line.contains("refused"), "{}: {line}", backend.name);
        // A failed statement is an error to whoever alerts on errors.
        assert!(line.contains("ERROR db.error"), "{}: {line}", backend.name);
        // Two seconds of refused writes: a few retries, not a busy loop.
        let before = cpu_ticks(daemon.pid());
        // A window to measure over, not a wait for something to happen.
        std::thread::sleep(std::time::Duration::from_secs(2));
        let used = cpu_ticks(daemon.pid()) - before;
        assert!(
            used < 60,
            "{}: the daemon used {used} ticks of CPU in 2 s while its writes failed",
            backend.name
        );
        backend.value(match backend.schema {
            None => "DROP TRIGGER refuse;",
            Some(_) => "DROP TRIGGER refuse ON jobs;",
        });
        backend.wait_value(
            "SELECT count(*) FROM jobs WHERE state = 'succeeded';",
            "6",
            "the outcomes were written once the writes went through",
        );
        daemon.stop();
    }
}

/// Regression: a restore moved over `jobd.db` under a running daemon left
/// it writing to the file it had opened, through the log and index SQLite
/// finds by name, which the new file now shared: a client opening the new
/// file read the old file's frames ("database disk image is malformed",
/// "no such table"), and the daemon's own writes kept landing there. The
/// daemon stops at once, empties its log into the old file first, and the
/// new file is read as it was restored; a new daemon rescues the job.
#[test]
fn a_database_file_replaced_under_the_daemon_stops_it_and_the_new_file_stays_whole() {
    let home = Home::with_config("[daemon]\nlease = \"10m\"\nshutdown_grace = \"100ms\"\n");
    home.migrate();
    let held = home.insert_job("noop", r#"{"sleep_ms": 60000}"#, "NULL", "NULL");
    let daemon = home.daemon_logging_to("d.log");
    home.wait_state(held, "running");
    let restored = home.path().join("restored.db");
    common::sqlite3(&home.db(), &format!(".backup '{}'", restored.display())).succeeds();
    // Written to the old file only, after the copy was taken.
    let later = home.insert_job("noop", "{}", "NULL", "NULL");
    home.wait_state(later, "succeeded");
    std::fs::rename(&restored, home.db()).unwrap();
    let (code, log) = daemon.wait_exit();
    assert_eq!(code, 1, "{log}");
    let line = log
        .lines()
        .find(|l| l.contains("db.replaced"))
        .unwrap_or_default();
    assert!(
        line.contains("the database file")
            && line.contains("was replaced under the daemon")
            && line.contains("jobd stops now"),
        "{log}"
    );
    // The restored file, not the old one's frames.
    assert_eq!(home.text("PRAGMA integrity_check;"), "ok");
    assert_eq!(
        home.text(&format!("SELECT count(*) FROM jobs WHERE id = {later};")),
        "0"
    );
    let second = home.daemon_logging_to("second.log");
    home.wait_count(
        &format!("SELECT count(*) FROM jobs WHERE id = {held} AND attempts = 2"),
        1,
    );
    second.stop();
}

/// Regression: `rm jobd.db-wal jobd.db-shm` under a running daemon went
/// unnoticed: the daemon committed to the deleted log, clients to a new
/// one, each blind to the other, and at its stop the daemon wrote its log
/// over the file and deleted the clients' (their jobs were lost). It stops
/// at once without closing the database.
#[test]
fn a_write_ahead_log_deleted_under_the_daemon_stops_it() {
    let home = Home::new();
    home.migrate();
    let daemon = home.daemon_logging_to("d.log");
    let id = home.insert_job("noop", "{}", "NULL", "NULL");
    home.wait_state(id, "succeeded");
    for suffix in ["-wal", "-shm"] {
        let mut name = home.db().as_os_str().to_owned();
        name.push(suffix);
        std::fs::remove_file(std::path::PathBuf::from(name)).unwrap();
    }
    let (code, log) = daemon.wait_exit();
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains("db.replaced")
            && log.contains("write-ahead log file")
            && log.contains("was deleted under the daemon"),
        "{log}"
    );
}

/// Regression: trouble outside outcome writes (an idle daemon's heartbeat
/// and lease rescue, its claims) was logged at every beat while a lock
/// lasted and never said to be over: `db.recovered` came only for
/// outcomes. Each streak is now logged when it starts and when it ends.
#[test]
fn the_end_of_trouble_is_said_whatever_operation_met_it() {
    for backend in common::homes_with("recovered", "[daemon]\nlease = \"1500ms\"\n") {
        let home = &backend.home;
        home.ok(&["migrate"]);
        let log = home.path().join("daemon.log");
        let daemon = home.daemon_with_env(&log, &log, &[("JOBD_DATABASE__BUSY_TIMEOUT", "200ms")]);
        let mut locker = hold_the_write_lock(&backend, 3);
        // The heartbeat on SQLite; on PostgreSQL (only `jobs` is locked)
        // the rescue of expired leases.
        let op = match backend.schema {
            None => "op=heartbeat",
            Some(_) => "op=\"rescue expired leases\"",
        };
        let busy = daemon.wait_log(op);
        assert!(busy.contains("db.busy"), "{}: {busy}", backend.name);
        assert!(locker.wait().unwrap().success());
        let recovered = wait_for(PATIENCE, || {
            let log = daemon.log();
            let said = log
                .lines()
                .any(|l| l.contains("db.recovered") && l.contains(op));
            said.then_some(())
        });
        assert!(recovered.is_some(), "{}: {}", backend.name, daemon.log());
        let log = daemon.stop();
        assert_eq!(
            log.matches(op).count(),
            2,
            "{}: one line when it starts, one when it ends: {log}",
            backend.name
        );
    }
}

/// Regression: a database whose `user_version` a client set back (a
/// current schema saying 7) was changed by `jobd migrate` and `run`: the
/// step to 8 committed, the next failed ("no such table: main.jobs"),
/// and the file was left at version 8, half-migrated. The migration is
/// one transaction: it fails whole and the file stays as it was.
#[test]
fn a_migration_that_fails_part_way_leaves_the_file_as_it_was() {
    let home = Home::new();
    home.migrate();
    home.text("PRAGMA user_version = 7;");
    let schema = || home.text("SELECT group_concat(sql, ';') FROM sqlite_master;");
    let before = schema();
    let run = home.jobd(&["migrate"]);
    assert_eq!(run.code(), 1, "{}", run.stderr());
    assert_eq!(run.stderr().lines().count(), 1, "{}", run.stderr());
    assert_eq!(home.text("PRAGMA user_version;"), "7");
    assert!(schema() == before, "the schema changed");
}
