//! The daemon as users run it: the real `jobd run` process, jobs inserted by
//! the real `sqlite3` shell, real signals. Every wait polls the database or
//! the log with a deadline; nothing sleeps for a fixed time.

mod common;

use common::{wait_for, Home, NOW, PATIENCE};

/// A VALUES tuple for `Home::insert`: kind, payload, queue, priority, run_at,
/// max_attempts, timeout_ms.
fn job(kind: &str, payload: &str) -> String {
    format!("('{kind}', '{payload}', 'default', 0, {NOW}, NULL, NULL)")
}

fn noop(sleep_ms: u64) -> String {
    job("noop", &format!("{{\"sleep_ms\":{sleep_ms}}}"))
}

/// `n` tuples joined for one INSERT.
fn many(n: usize, tuple: &str) -> String {
    vec![tuple; n].join(", ")
}

#[test]
fn noop_jobs_inserted_with_the_sqlite3_shell_succeed() {
    let home = Home::new();
    home.migrate();
    let ids = home.insert(&many(50, &noop(0)));
    let daemon = home.daemon();
    home.wait_count("SELECT count(*) FROM jobs WHERE state = 'succeeded'", 50);
    assert_eq!(
        home.query_i64("SELECT count(*) FROM job_runs WHERE outcome = 'succeeded'"),
        50
    );
    // Jobs inserted while it runs are picked up too.
    let late = home.insert(&noop(0));
    home.wait_state(late[0], "succeeded");
    let log = daemon.stop();
    assert!(log.contains(&format!("job.succeeded id={} kind=noop", ids[0])));
    assert!(log.contains("daemon.stopped"));
    assert_eq!(home.query_i64("SELECT count(*) FROM workers"), 0);
}

#[test]
fn jobs_of_one_queue_run_in_priority_order_with_concurrency_one() {
    let home = Home::with_config("[queues.serial]\nconcurrency = 1\n");
    home.migrate();
    let values: Vec<String> = [(0, 10), (5, 20), (5, 0), (9, 30), (0, 0)]
        .iter()
        .map(|(priority, age)| {
            format!("('noop', '{{}}', 'serial', {priority}, {NOW} - {age}, NULL, NULL)")
        })
        .collect();
    let ids = home.insert(&values.join(", "));
    let daemon = home.daemon();
    home.wait_count("SELECT count(*) FROM jobs WHERE state = 'succeeded'", 5);
    daemon.stop();
    let order = home
        .sqlite3("SELECT job_id FROM job_runs ORDER BY id;")
        .succeeds();
    let order: Vec<i64> = order.lines().map(|l| l.parse().unwrap()).collect();
    // priority 9; then priority 5, older run_at first; then priority 0.
    assert_eq!(order, vec![ids[3], ids[1], ids[2], ids[0], ids[4]]);
    // One at a time: each started after the previous one finished.
    let overlaps = home.query_i64(
        "SELECT count(*) FROM job_runs a JOIN job_runs b ON a.id < b.id \
         WHERE b.started_at < a.finished_at",
    );
    assert_eq!(overlaps, 0);
}

#[test]
fn a_scheduled_job_waits_for_its_run_at() {
    let home = Home::new();
    home.migrate();
    let daemon = home.daemon();
    let ids = home.insert(&format!(
        "('noop', '{{}}', 'default', 0, {NOW} + 1500, NULL, NULL)"
    ));
    home.wait_state(ids[0], "succeeded");
    let early = home.query_i64(&format!(
        "SELECT count(*) FROM jobs WHERE id = {} AND started_at < run_at",
        ids[0]
    ));
    assert_eq!(early, 0, "the job started before its run_at");
    daemon.stop();
}

#[test]
fn timeouts_are_retried_with_backoff_until_attempts_run_out() {
    let home = Home::with_config("[retry]\nbackoff_base = \"50ms\"\nbackoff_max = \"1s\"\n");
    home.migrate();
    let ids = home.insert(&format!(
        "('noop', '{{\"sleep_ms\":60000}}', 'default', 0, {NOW}, 3, 40)"
    ));
    let daemon = home.daemon();
    home.wait_state(ids[0], "dead");
    let log = daemon.stop();
    let id = ids[0];
    let runs = home
        .sqlite3(&format!(
            "SELECT attempt, outcome, error, duration_ms FROM job_runs WHERE job_id = {id} ORDER BY attempt;"
        ))
        .succeeds();
    let rows: Vec<&str> = runs.lines().collect();
    assert_eq!(rows.len(), 3, "{runs}");
    for (i, row) in rows.iter().enumerate() {
        assert!(
            row.starts_with(&format!("{}|timeout|timed out after 40 ms|", i + 1)),
            "{row}"
        );
    }
    // Backoff: attempt 2 started at least 0.8 × 50 ms after attempt 1
    // ended, attempt 3 at least 0.8 × 100 ms after attempt 2.
    let gaps = home
        .sqlite3(&format!(
            "SELECT b.started_at - a.finished_at FROM job_runs a JOIN job_runs b \
             ON b.job_id = a.job_id AND b.attempt = a.attempt + 1 WHERE a.job_id = {id} ORDER BY a.attempt;"
        ))
        .succeeds();
    let gaps: Vec<i64> = gaps.lines().map(|l| l.parse().unwrap()).collect();
    assert!(gaps[0] >= 40 && gaps[1] >= 80, "gaps {gaps:?}");
    let last_error = home
        .sqlite3(&format!("SELECT last_error FROM jobs WHERE id = {id};"))
        .succeeds();
    assert_eq!(last_error.trim(), "timed out after 40 ms");
    assert!(log.contains(&format!(
        "job.timeout id={id} kind=noop queue=default attempt=1"
    )));
    assert!(log.contains("next_run_in="));
}

/// A job claimed ahead of a free thread waits for it without using its
/// time: the deadline runs from when a thread starts the job. With one
/// thread, quick jobs teach the daemon to claim many ahead; then 16 jobs
/// of 100 ms with a 400 ms timeout arrive in one commit and are claimed
/// together. Timed from the claim, the fifth and later would time out
/// without having run a moment.
#[test]
fn a_jobs_timeout_runs_from_when_a_thread_starts_it_not_from_its_claim() {
    for b in common::homes_with("deadline", "[pool]\nthreads = 1\n") {
        let daemon = b.home.daemon();
        let done = "SELECT count(*) FROM jobs WHERE state = 'succeeded'";
        b.insert_many(20, "kind, payload", "'noop', '{}'");
        b.wait_value(done, "20", "the quick jobs");
        b.insert_many(
            16,
            "kind, payload, timeout_ms",
            "'noop', '{\"sleep_ms\":100}', 400",
        );
        b.wait_value(done, "36", "the slower jobs");
        let failed = b.value(
            "SELECT count(*) || ' ' || coalesce(min(error), '') FROM job_runs \
             WHERE outcome <> 'succeeded'",
        );
        assert_eq!(failed.trim(), "0", "{}: attempts that failed", b.name);
        daemon.stop();
    }
}

/// An idle CPU pool starts no claim of its own: while IO jobs run one at a
/// time, the daemon writes once per job (its outcome and the next claim in
/// one step). Before, a claim that filled the IO pool but found no CPU job
/// was followed at once by a claim for the CPU pool alone (and, on
/// PostgreSQL, every step's outcomes by another claim): two or three
/// writes per job, and an IO drain's batches of outcomes split in two.
#[test]
fn an_idle_cpu_pool_adds_no_claim_to_each_io_job() {
    const JOBS: usize = 5;
    // No poll during the test: each would be a change (the daemon's own
    // writes, its upkeep's) and a claim.
    let config = "[pool]\nthreads = 1\n[cpu]\nworkers = 2\n\
                  [daemon]\npoll_interval = \"10s\"\nlease = \"60s\"\n";
    for b in common::homes_with("idlecpu", config) {
        b.home.migrate();
        b.insert_many(JOBS, "kind, payload", "'noop', '{\"sleep_ms\":100}'");
        let daemon = b.home.daemon();
        let done = "SELECT count(*) FROM jobs WHERE state = 'succeeded'";
        b.wait_value(done, &JOBS.to_string(), "the jobs");
        let log = daemon.stop();
        let stopped = log
            .lines()
            .find(|l| l.contains("daemon.stopped"))
            .unwrap_or_else(|| panic!("{}: no daemon.stopped line:\n{log}", b.name));
        let writes: usize = (stopped.split_whitespace())
            .find_map(|w| w.strip_prefix("writes="))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{}: no writes= in {stopped}", b.name));
        // One step per job plus the first claim; one more for the poll at
        // start, one for a commit of the daemon's upkeep seen as a change.
        assert!(
            writes <= JOBS + 3,
            "{}: {writes} write steps for {JOBS} jobs run one at a time: {stopped}",
            b.name
        );
    }
}

/// No poll during these tests (the longest allowed): what a daemon does
/// must come from its wake-ups and due times, not from polling.
const NO_POLL: &str = "[daemon]\npoll_interval = \"60s\"\nlease = \"180s\"\n\
                       shutdown_grace = \"200ms\"\n";

/// A queue at its concurrency limit takes its next jobs as its running
/// ones end, with nothing else to wake the daemon: the ends of its own
/// jobs are what frees the places (on PostgreSQL they were left to the
/// next poll while the other queue's claim had found nothing).
#[test]
fn a_queue_at_its_concurrency_limit_goes_on_as_its_jobs_end() {
    let config = format!(
        "{NO_POLL}queues = [\"default\", \"mail\"]\n[pool]\nthreads = 4\n\
         [queues.mail]\nconcurrency = 2\n"
    );
    for b in common::homes_with("qlimit", &config) {
        b.home.migrate();
        let daemon = b.home.daemon();
        b.insert_many(
            10,
            "kind, payload, queue",
            "'noop', '{\"sleep_ms\":20}', 'mail'",
        );
        let done = "SELECT count(*) FROM jobs WHERE state = 'succeeded'";
        b.wait_value(done, "10", "the mail jobs, two at a time");
        daemon.stop();
    }
}

/// Jobs inserted one by one, each in its own transaction, in quick
/// succession while the daemon is idle: each starts at its insert's wake,
/// though wakes come while the daemon is in the middle of a write step
/// whose claim came up short, and (on SQLite) though an insert's commit
/// shows only after its fsync, well after its wake. Polling is 60 s, so a
/// wake lost shows as a stall, or as a wait for the heartbeat's next
/// write (every 5 s), which also wakes the daemon: hence a burst's limit
/// of 2 s, far above the milliseconds ten jobs take.
#[test]
fn jobs_inserted_one_by_one_in_quick_succession_start_without_waiting_for_a_poll() {
    const JOBS: usize = 10;
    const ROUNDS: usize = 80;
    let config = format!("{NO_POLL}[pool]\nthreads = 2\n");
    for b in common::homes_with("onebyone", &config) {
        b.home.migrate();
        let daemon = b.home.daemon();
        daemon.wait_log("daemon.started");
        let insert = "INSERT INTO jobs (kind) VALUES ('noop')";
        let mut insert_one: Box<dyn FnMut()> = match &b.schema {
            Some(schema) => {
                let mut client = postgres::Client::connect(&schema.url(), postgres::NoTls).unwrap();
                Box::new(move || {
                    client.execute(insert, &[]).unwrap();
                })
            }
            None => {
                let db = rusqlite::Connection::open(b.home.db()).unwrap();
                db.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
                Box::new(move || {
                    db.execute(insert, []).unwrap();
                })
            }
        };
        // Each burst's last wake is the one that may be lost.
        for burst in 1..=ROUNDS {
            for _ in 0..JOBS {
                insert_one();
            }
            let done = "SELECT count(*) FROM jobs WHERE state = 'succeeded'";
            let want = (burst * JOBS).to_string();
            if wait_for(std::time::Duration::from_secs(2), || {
                (b.value(done) == want).then_some(())
            })
            .is_none()
            {
                panic!("{}: burst {burst} stalled: {}", b.name, b.states());
            }
        }
        daemon.stop();
    }
}

/// A job due later, claimed for while the CPU pool filled and the IO pool
/// found nothing ready, starts when it is due, though no CPU slot comes
/// free and nothing else wakes the daemon.
#[test]
fn a_job_due_later_starts_on_time_while_the_cpu_pool_is_busy() {
    let config = format!("{NO_POLL}[pool]\nthreads = 2\n[cpu]\nworkers = 1\n");
    for b in common::homes_with("duebusy", &config) {
        let handlers = b.home.path().join("handlers");
        std::fs::create_dir_all(&handlers).unwrap();
        let hold = handlers.join("hold");
        std::fs::write(&hold, "#!/bin/sh\nexec sleep 120\n").unwrap();
        std::fs::set_permissions(&hold, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut text = std::fs::read_to_string(b.home.config()).unwrap();
        text.push_str(&format!("[exec]\ndir = \"{}\"\n", handlers.display()));
        std::fs::write(b.home.config(), text).unwrap();
        b.home.migrate();
        let daemon = b.home.daemon();
        daemon.wait_log("daemon.started");
        // One transaction: the claim it wakes fills the CPU pool and finds
        // no IO job ready yet.
        let due = jobd::job::now_ms() + 1_500;
        b.value(&format!(
            "INSERT INTO jobs (kind, payload, timeout_ms, run_at) VALUES \
             ('exec', '{{\"handler\":\"hold\"}}', 120000, {}), \
             ('noop', '{{}}', NULL, {due});",
            jobd::job::now_ms()
        ));
        let done = "SELECT count(*) FROM jobs WHERE kind = 'noop' AND state = 'succeeded'";
        b.wait_value(done, "1", "the job due 1.5 s after the insert");
        let running = "SELECT count(*) FROM jobs WHERE kind = 'exec' AND state = 'running'";
        assert_eq!(b.value(running), "1", "{}: the CPU job ended first", b.name);
        daemon.stop();
    }
}

#[test]
fn bad_jobs_go_dead_on_first_claim_naming_what_is_wrong() {
    let home = Home::with_config("[limits]\nmax_payload_bytes = \"100B\"\n");
    home.migrate();
    let big = format!("{{\"sleep_ms\":0,\"pad\":\"{}\"}}", "x".repeat(200));
    let values = [
        job("bogus", "{}"),
        job("noop", r#"{"sleep_ms":"soon"}"#),
        job("noop", r#"{"slep_ms":5}"#),
        job("noop", r#"{"sleep_ms":-1}"#),
        job("noop", &big),
        noop(0),
    ];
    let ids = home.insert(&values.join(", "));
    let daemon = home.daemon();
    home.wait_state(ids[5], "succeeded");
    for &id in &ids[..5] {
        home.wait_state(id, "dead");
    }
    let error = |i: usize| {
        home.sqlite3(&format!(
            "SELECT last_error FROM jobs WHERE id = {};",
            ids[i]
        ))
        .succeeds()
        .trim()
        .to_string()
    };
    assert_eq!(
        error(0),
        "unknown kind \"bogus\" (this jobd runs: checksum, compress, email, exec, file, http, noop)"
    );
    assert!(
        error(1).starts_with("payload field sleep_ms: invalid type: string \"soon\", expected u64"),
        "{}",
        error(1)
    );
    assert!(
        error(2).contains("unknown field `slep_ms`, expected `sleep_ms`"),
        "{}",
        error(2)
    );
    assert!(
        error(3).starts_with("payload field sleep_ms: invalid value: integer `-1`"),
        "{}",
        error(3)
    );
    assert!(
        error(4).contains("over limits.max_payload_bytes (100)"),
        "{}",
        error(4)
    );
    // Never retried: exactly one attempt each.
    assert_eq!(
        home.query_i64("SELECT count(*) FROM job_runs WHERE outcome = 'dead'"),
        5
    );
    assert_eq!(home.query_i64("SELECT max(attempts) FROM jobs"), 1);
    daemon.stop();
}

#[test]
fn cancel_stops_queued_jobs_at_once_and_running_jobs_through_their_flag() {
    let home = Home::new();
    home.migrate();
    let daemon = home.daemon();
    let running = home.insert(&noop(60_000))[0];
    let scheduled = home.insert(&format!(
        "('noop', '{{}}', 'default', 0, {NOW} + 3600000, NULL, NULL)"
    ))[0];
    home.wait_state(running, "running");
    let out = home.ok(&["cancel", &running.to_string(), &scheduled.to_string()]);
    assert!(out.contains("cancel requested"), "{out}");
    assert_eq!(home.state(scheduled), "cancelled");
    home.wait_state(running, "cancelled");
    let outcome = home
        .sqlite3(&format!(
            "SELECT outcome FROM job_runs WHERE job_id = {running};"
        ))
        .succeeds();
    assert_eq!(outcome.trim(), "cancelled");
    let log = daemon.stop();
    assert!(log.contains(&format!("job.cancelled id={running}")));
}

#[test]
fn a_paused_queue_gets_no_claims_until_resumed() {
    let home = Home::new();
    home.migrate();
    let daemon = home.daemon();
    home.ok(&["pause", "--create", "mail"]);
    let held = home.insert(&format!("('noop', '{{}}', 'mail', 0, {NOW}, NULL, NULL)"))[0];
    // A job inserted after it in another queue finishing proves a claim pass
    // ran after the held job was visible.
    let other = home.insert(&noop(0))[0];
    home.wait_state(other, "succeeded");
    assert_eq!(home.state(held), "queued");
    // Pausing with plain SQL works as well as the CLI; resuming wakes it.
    home.sqlite3("INSERT OR REPLACE INTO queues(name, paused) VALUES ('mail', 0);")
        .succeeds();
    home.wait_state(held, "succeeded");
    daemon.stop();
}

#[test]
fn jobs_of_a_daemon_killed_with_sigkill_run_again_right_after_a_restart() {
    // A lease far longer than the test: only the start-up rescue can bring
    // the job back in time.
    let home = Home::with_config("[daemon]\nlease = \"10m\"\nshutdown_grace = \"100ms\"\n");
    home.migrate();
    let id = home.insert(&noop(60_000))[0];
    let first = home.daemon();
    home.wait_state(id, "running");
    first.kill9();
    assert_eq!(home.state(id), "running");
    let second = home.daemon_logging_to("second.log");
    home.wait_count(
        &format!(
            "SELECT count(*) FROM jobs WHERE id = {id} AND state = 'running' AND attempts = 2"
        ),
        1,
    );
    let rescued = home
        .sqlite3(&format!(
            "SELECT attempt, outcome FROM job_runs WHERE job_id = {id};"
        ))
        .succeeds();
    assert_eq!(rescued.trim(), "1|rescued");
    let line = second.wait_log("job.rescued");
    assert!(line.contains(&format!("id={id}")), "{line}");
    // The dead daemon's row is gone; only the new one remains.
    assert_eq!(home.query_i64("SELECT count(*) FROM workers"), 1);
    second.stop();
}

/// Regression: a client that deleted a running daemon's `workers` row
/// (`DELETE FROM workers`) left it unregistered for good (the heartbeat
/// only updated the row), so `stats` showed no daemon and, after a crash,
/// the restart did not know the jobs' holder was gone: they waited out
/// their lease. The next beat writes the row again and says so.
#[test]
fn a_daemon_whose_row_was_deleted_registers_again_and_its_crash_is_rescued_at_once() {
    let home = Home::with_config("[daemon]\nlease = \"10m\"\nshutdown_grace = \"100ms\"\n");
    home.migrate();
    let id = home.insert(&noop(60_000))[0];
    let first = home.daemon_logging_to("first.log");
    home.wait_state(id, "running");
    home.sqlite3("DELETE FROM workers;").succeeds();
    let line = first.wait_log("worker.restored");
    assert!(line.contains("detail="), "{line}");
    home.wait_count("SELECT count(*) FROM workers", 1);
    first.kill9();
    let second = home.daemon_logging_to("second.log");
    home.wait_count(
        &format!(
            "SELECT count(*) FROM jobs WHERE id = {id} AND state = 'running' AND attempts = 2"
        ),
        1,
    );
    second.stop();
}

#[test]
fn sigterm_drains_then_requeues_unfinished_jobs_without_counting_the_attempt() {
    let home = Home::with_config("[daemon]\nshutdown_grace = \"300ms\"\n");
    home.migrate();
    let long = home.insert(&noop(60_000))[0];
    let daemon = home.daemon();
    home.wait_state(long, "running");
    let log = daemon.stop();
    assert!(log.contains("daemon.draining running=1"), "{log}");
    assert!(log.contains("daemon.stopped requeued=1"), "{log}");
    assert_eq!(home.state(long), "queued");
    assert_eq!(
        home.query_i64(&format!("SELECT attempts FROM jobs WHERE id = {long}")),
        0
    );
    let outcome = home
        .sqlite3(&format!(
            "SELECT outcome FROM job_runs WHERE job_id = {long};"
        ))
        .succeeds();
    assert_eq!(outcome.trim(), "interrupted");
}

#[test]
fn sigterm_lets_a_short_job_finish_and_a_second_signal_skips_the_wait() {
    let home = Home::with_config("[daemon]\nshutdown_grace = \"1h\"\n");
    home.migrate();
    let short = home.insert(&noop(300))[0];
    let daemon = home.daemon();
    home.wait_state(short, "running");
    let log = daemon.stop();
    assert!(log.contains("daemon.stopped requeued=0"), "{log}");
    assert_eq!(home.state(short), "succeeded");

    let long = home.insert(&noop(3_600_000))[0];
    let daemon = home.daemon_logging_to("second.log");
    home.wait_state(long, "running");
    daemon.signal(libc::SIGTERM);
    daemon.wait_log("daemon.draining");
    daemon.signal(libc::SIGINT);
    let (code, log) = daemon.wait_exit();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("daemon.stopped requeued=1"), "{log}");
    assert_eq!(home.state(long), "queued");
}

#[test]
fn sighup_applies_a_new_pool_size_and_keeps_the_old_config_when_the_new_one_is_invalid() {
    const GRACE: &str = "[daemon]\nshutdown_grace = \"100ms\"\n";
    let home = Home::with_config(&format!("{GRACE}[pool]\nthreads = 1\n"));
    home.migrate();
    let daemon = home.daemon();
    let first = home.insert(&noop(60_000))[0];
    let second = home.insert(&noop(60_000))[0];
    home.wait_state(first, "running");
    // One thread: the second waits. (Both were visible to the claim that
    // took the first, or to a later one that found no free slot.)
    assert_eq!(home.state(second), "queued");

    home.write_config(&format!(
        "{GRACE}[pool]\nthreads = 3\n[log]\nlevel = \"debug\"\n"
    ));
    daemon.signal(libc::SIGHUP);
    let line = daemon.wait_log("config.reloaded");
    assert!(line.contains("threads=3"), "{line}");
    assert!(line.contains("level=debug"), "{line}");
    home.wait_state(second, "running");

    let before = daemon.log().len();
    home.write_config(&format!("{GRACE}[pool]\nthreads = 0\n"));
    daemon.signal(libc::SIGHUP);
    let line = daemon.wait_log_after(before, "config.invalid");
    assert!(line.contains("pool.threads must be at least 1"), "{line}");
    assert!(line.contains("keeping the running configuration"), "{line}");
    // Still three threads: a third long job runs beside the other two.
    let third = home.insert(&noop(60_000))[0];
    home.wait_state(third, "running");
    let log = daemon.stop();
    assert!(log.contains("daemon.stopped requeued=3"), "{log}");
}

/// Reloads and a stop (with a second signal at once) in the middle of a
/// fast drain, with claimed jobs waiting for a thread, then the rest
/// after a restart: every job succeeds exactly once, an attempt is never
/// written twice, and the stop gives back what it did not run.
#[test]
fn reloads_and_a_stop_in_the_middle_of_a_fast_drain_lose_no_job_and_run_none_twice() {
    // Jobs of 1 ms on 8 threads: a drain of a few seconds on any machine,
    // with jobs claimed ahead waiting for a thread.
    const JOBS: i64 = 20_000;
    for backend in common::homes_with(
        "midrain",
        "[daemon]\nshutdown_grace = \"1h\"\n[pool]\nthreads = 8\n",
    ) {
        let home = &backend.home;
        home.ok(&["migrate"]);
        backend.insert_many(JOBS as usize, "kind, payload", "'noop', '{\"sleep_ms\":1}'");
        let succeeded = || backend.count("SELECT count(*) FROM jobs WHERE state = 'succeeded';");
        let daemon = home.daemon();
        wait_for(PATIENCE, || (succeeded() >= JOBS / 10).then_some(()))
            .expect("the drain makes progress");
        for n in 1..=3 {
            let before = daemon.log().len();
            daemon.signal(libc::SIGHUP);
            daemon.wait_log_after(before, "config.reloaded");
            assert!(
                succeeded() < JOBS,
                "{}: drained before reload {n}",
                backend.name
            );
        }
        // A stop and at once a second signal: no waiting for the drain.
        daemon.signal(libc::SIGTERM);
        daemon.signal(libc::SIGINT);
        let (code, log) = daemon.wait_exit();
        assert_eq!(code, 0, "{}: {log}", backend.name);
        let stopped = log
            .lines()
            .find(|l| l.contains("daemon.stopped"))
            .unwrap_or_else(|| panic!("{}: no daemon.stopped line: {log}", backend.name));
        assert!(
            stopped.contains("unwritten=0"),
            "{}: {stopped}",
            backend.name
        );
        assert!(
            succeeded() < JOBS,
            "{}: drained before the stop",
            backend.name
        );
        // Nothing is left running, and what went back was not counted.
        let count = |sql: &str| backend.count(sql);
        assert_eq!(
            count("SELECT count(*) FROM jobs WHERE state NOT IN ('queued', 'succeeded');"),
            0,
            "{}",
            backend.name
        );
        assert_eq!(
            count("SELECT count(*) FROM jobs WHERE state = 'queued' AND attempts <> 0;"),
            0,
            "{}",
            backend.name
        );

        let daemon = home.daemon_logging_to("second.log");
        if wait_for(PATIENCE, || (succeeded() == JOBS).then_some(())).is_none() {
            panic!(
                "{}: not every job finished: {}",
                backend.name,
                backend.states()
            );
        }
        daemon.stop();
        assert_eq!(
            count("SELECT count(*) FROM job_runs WHERE outcome = 'succeeded';"),
            JOBS,
            "{}: a job succeeded twice or not at all",
            backend.name
        );
        assert_eq!(
            count("SELECT count(*) FROM (SELECT 1 FROM job_runs WHERE outcome <> 'interrupted' GROUP BY job_id, attempt HAVING count(*) > 1) t;"),
            0,
            "{}: an attempt was written twice",
            backend.name
        );
        assert_eq!(
            count("SELECT count(*) FROM jobs WHERE attempts <> 1;"),
            0,
            "{}",
            backend.name
        );
    }
}

/// Three daemons on one database, one killed with SIGKILL mid-run holding
/// claimed jobs: every job succeeds exactly once, no attempt runs twice,
/// and the others take back the killed one's jobs.
#[test]
fn three_daemons_share_one_database_and_take_back_a_killed_ones_jobs() {
    const JOBS: i64 = 20_000;
    for backend in common::homes_with(
        "fleet",
        "[daemon]\nlease = \"1s\"\nshutdown_grace = \"200ms\"\n\
         [pool]\nthreads = 4\n[cpu]\nworkers = 1\n",
    ) {
        let home = &backend.home;
        home.ok(&["migrate"]);
        backend.insert_many(JOBS as usize, "kind, payload", "'noop', '{\"sleep_ms\":2}'");
        let succeeded = || backend.count("SELECT count(*) FROM jobs WHERE state = 'succeeded';");
        let a = home.daemon_logging_to("a.log");
        let b = home.daemon_logging_to("b.log");
        let c = home.daemon_logging_to("c.log");
        wait_for(PATIENCE, || (succeeded() >= JOBS / 5).then_some(()))
            .expect("the fleet makes progress");
        let victim = c.pid();
        c.kill9();
        if wait_for(PATIENCE * 2, || (succeeded() == JOBS).then_some(())).is_none() {
            panic!(
                "{}: not every job finished: {}",
                backend.name,
                backend.states()
            );
        }
        a.stop();
        b.stop();
        let count = |sql: &str| backend.count(sql);
        assert_eq!(
            count("SELECT count(*) FROM (SELECT job_id FROM job_runs WHERE outcome = 'succeeded' GROUP BY job_id HAVING count(*) <> 1) t;"),
            0,
            "{}: a job succeeded twice",
            backend.name
        );
        assert_eq!(
            count("SELECT count(DISTINCT job_id) FROM job_runs WHERE outcome = 'succeeded';"),
            JOBS
        );
        // Every attempt was recorded once: no two daemons ran the same one.
        assert_eq!(
            count("SELECT count(*) FROM (SELECT 1 FROM job_runs GROUP BY job_id, attempt HAVING count(*) > 1) t;"),
            0,
            "{}: an attempt ran twice",
            backend.name
        );
        // All three ran jobs; the killed one's unfinished jobs were rescued.
        assert_eq!(
            count("SELECT count(DISTINCT worker) FROM job_runs WHERE outcome = 'succeeded';"),
            3,
            "{}",
            backend.name
        );
        let rescued = count(&format!(
            "SELECT count(*) FROM job_runs WHERE outcome = 'rescued' AND worker LIKE '%:{victim}:%';"
        ));
        eprintln!(
            "{}: {JOBS} jobs, 3 daemons, one killed: {rescued} of its jobs rescued by the others",
            backend.name
        );
    }
}

#[test]
fn four_sqlite3_writers_inserting_while_the_daemon_runs_see_no_lock_errors() {
    let home = Home::new();
    home.migrate();
    let daemon = home.daemon();
    // 1 500 separate autocommit inserts per writer, as a script.
    for w in 0..4 {
        let script: String = (0..1500)
            .map(|i| {
                format!(
                    "INSERT INTO jobs(kind, payload, queue) VALUES ('noop', '{{}}', 'w{}'); -- {i}\n",
                    w % 2
                )
            })
            .collect();
        std::fs::write(home.path().join(format!("writer{w}.sql")), script).unwrap();
    }
    let children: Vec<_> = (0..4)
        .map(|w| {
            let path = home.path().join(format!("writer{w}.sql"));
            std::process::Command::new(common::sqlite3_bin())
                .args(["-bail", "-cmd", ".timeout 5000"])
                .arg(home.db())
                .stdin(std::fs::File::open(&path).unwrap())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    home.wait_count("SELECT count(*) FROM jobs WHERE state = 'succeeded'", 6_000);
    assert_eq!(home.query_i64("SELECT count(*) FROM jobs"), 6_000);
    let log = daemon.stop();
    assert!(
        !log.contains("db.busy") && !log.contains("db.error"),
        "{log}"
    );
}

/// Kinds that misbehave, run by an in-process daemon through the public API
/// (the shipped kinds cannot be made to panic or ignore their deadline).
mod misbehaving_kinds {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use jobd::config::Config;
    use jobd::job::NewJob;
    use jobd::kinds::{Context, JobError, Kind, Registry};
    use jobd::os::signals::Request;
    use jobd::store::prelude::*;
    use jobd::store::{OpenMode, SqliteStore};

    use super::common::{wait_for, PATIENCE};

    struct Panics;
    impl Kind for Panics {
        fn name(&self) -> &'static str {
            "panics"
        }
        fn run(&self, _: &Context<'_>, _: &str) -> Result<Option<String>, JobError> {
            panic!("deliberate panic in a job")
        }
    }

    /// Sleeps through its deadline and its cancel flag.
    struct Stubborn;
    impl Kind for Stubborn {
        fn name(&self) -> &'static str {
            "stubborn"
        }
        fn run(&self, _: &Context<'_>, _: &str) -> Result<Option<String>, JobError> {
            std::thread::sleep(Duration::from_secs(3));
            Ok(None)
        }
    }

    /// Fails transiently twice, then succeeds with a result.
    struct Flaky(AtomicU32);
    impl Kind for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        fn run(&self, ctx: &Context<'_>, _: &str) -> Result<Option<String>, JobError> {
            if self.0.fetch_add(1, Ordering::SeqCst) < 2 {
                return Err(JobError::transient(format!(
                    "connection refused on attempt {}",
                    ctx.attempt
                )));
            }
            Ok(Some(r#"{"ok":true}"#.into()))
        }
    }

    #[test]
    fn panics_overruns_and_transient_errors_fail_attempts_never_the_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::defaults();
        config.database.path = dir.path().join("jobd.db");
        config.pool.threads = 2;
        config.cpu.workers = 1;
        config.retry.backoff_base = Duration::from_millis(10);
        let mut registry = Registry::builtin(&config);
        registry.add(Arc::new(Panics));
        registry.add(Arc::new(Stubborn));
        registry.add(Arc::new(Flaky(AtomicU32::new(0))));
        let (tx, rx) = crossbeam_channel::unbounded();
        let path = config.database.path.clone();
        let daemon = {
            let config = config.clone();
            std::thread::spawn(move || {
                let process = jobd::daemon::FromProcess {
                    requests: rx,
                    reload: Box::new(|| Err("no reload".into())),
                    worker_program: env!("CARGO_BIN_EXE_jobd").into(),
                    notifier: jobd::os::notify::Notifier::disabled(),
                };
                jobd::daemon::run(config, registry, process)
            })
        };
        let mut store = wait_for(PATIENCE, || {
            SqliteStore::open(&path, Duration::from_secs(5), OpenMode::Existing).ok()
        })
        .expect("the daemon creates the database");
        let one = |kind: &str, max_attempts: i64, timeout_ms: Option<i64>| NewJob {
            max_attempts: Some(max_attempts),
            timeout_ms,
            ..NewJob::new(kind)
        };
        let ids: Vec<i64> = store
            .enqueue(
                &[
                    one("panics", 1, None),
                    one("stubborn", 1, Some(100)),
                    one("flaky", 5, None),
                ],
                jobd::job::now_ms(),
            )
            .unwrap()
            .into_iter()
            .map(|e| e.id())
            .collect();
        let state = |store: &mut SqliteStore, id| store.job(id).unwrap().unwrap();
        for (&id, want) in ids.iter().zip(["dead", "dead", "succeeded"]) {
            let done = wait_for(PATIENCE, || {
                let job = state(&mut store, id);
                (job.state.as_str() == want).then_some(job)
            });
            assert!(
                done.is_some(),
                "job {id} never reached {want}: {:?}",
                state(&mut store, id)
            );
        }
        let panicked = state(&mut store, ids[0]);
        assert_eq!(
            panicked.last_error.as_deref(),
            Some(
                "the panics handler panicked: deliberate panic in a job (gave up after 1 attempts)"
            )
        );
        let overran = state(&mut store, ids[1]);
        assert_eq!(
            overran.last_error.as_deref(),
            Some("timed out after 100 ms")
        );
        let flaky = state(&mut store, ids[2]);
        assert_eq!(flaky.attempts, 3);
        assert_eq!(flaky.result.as_deref(), Some(r#"{"ok":true}"#));
        let outcomes: Vec<String> = store
            .runs(ids[2])
            .unwrap()
            .into_iter()
            .map(|r| r.outcome.to_string())
            .collect();
        assert_eq!(outcomes, ["retry", "retry", "succeeded"]);
        // The stuck thread was replaced: two more jobs still run side by side.
        let more: Vec<i64> = store
            .enqueue(
                &[NewJob::new("noop"), NewJob::new("noop")],
                jobd::job::now_ms(),
            )
            .unwrap()
            .into_iter()
            .map(|e| e.id())
            .collect();
        for id in more {
            let done = wait_for(PATIENCE, || {
                (state(&mut store, id).state.as_str() == "succeeded").then_some(())
            });
            assert!(done.is_some());
        }
        tx.send(Request::Stop).unwrap();
        let summary = daemon.join().unwrap().unwrap();
        assert_eq!(summary.requeued, 0);
    }
}

#[test]
fn enqueue_wait_follows_a_job_through_a_running_daemon() {
    let home = Home::new();
    home.migrate();
    let daemon = home.daemon();
    let out = home.ok(&["enqueue", "noop", r#"{"sleep_ms":20}"#, "--wait"]);
    let id: i64 = out.lines().next().unwrap().parse().unwrap();
    assert_eq!(home.state(id), "succeeded");
    home.jobd(&["enqueue", "noop", r#"{"sleep_ms":"x"}"#, "--wait"])
        .fails(1, "ended dead: payload field sleep_ms: invalid type");
    // While it runs, `jobd stats` lists it among the live daemons.
    let stats = home.ok(&["stats"]);
    assert!(!stats.contains("no daemons running"), "{stats}");
    daemon.stop();
}

#[test]
fn the_stats_line_reports_backlog_throughput_and_resources() {
    let home = Home::with_config("[daemon]\nstats_interval = \"1s\"\n");
    home.migrate();
    home.insert(&many(20, &noop(0)));
    home.insert(&format!(
        "('noop', '{{}}', 'default', 0, {NOW} + 3600000, NULL, NULL)"
    ));
    // A paused queue's jobs wait by choice: neither ready nor lag.
    home.sqlite3("INSERT INTO queues(name, paused) VALUES ('held', 1);")
        .succeeds();
    home.insert(&format!(
        "('noop', '{{}}', 'held', 0, {NOW} - 60000, NULL, NULL)"
    ));
    let daemon = home.daemon();
    home.wait_count("SELECT count(*) FROM jobs WHERE state = 'succeeded'", 20);
    let line = daemon.wait_log("INFO  stats ready=0 running=0 lag_ms=0 done=");
    for key in [
        "failed=0",
        "rss_mib=",
        "cpu_pct=",
        "threads=",
        "cpu_workers_rss_mib=",
    ] {
        assert!(line.contains(key), "{line}");
    }
    let done: u64 = daemon
        .log()
        .lines()
        .filter(|l| l.contains(" stats "))
        .filter_map(|l| {
            l.split(" done=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    daemon.stop();
    // A line with nothing ready or running comes after the last success was
    // written, and every success is counted in exactly one line.
    assert_eq!(done, 20);
}

#[test]
fn a_job_whose_holder_stopped_renewing_its_lease_is_rescued_by_any_daemon() {
    // A short lease: the maintenance beat (a third of it) looks often.
    let home = Home::with_config("[daemon]\nlease = \"1s\"\n");
    home.migrate();
    // A job running under a daemon on another host whose lease runs out
    // after this daemon started (so the periodic rescue, not the start-up
    // one, takes it back).
    let ids = home.insert(&format!(
        "('noop', '{{}}', 'default', 0, {NOW}, NULL, NULL)"
    ));
    let id = ids[0];
    home.sqlite3(&format!(
        "UPDATE jobs SET state = 'running', attempts = 1, worker = 'elsewhere:42:1', \
         started_at = {NOW} - 60000, lease_until = {NOW} + 3000 WHERE id = {id};"
    ))
    .succeeds();
    let daemon = home.daemon();
    assert_eq!(home.state(id), "running");
    home.wait_state(id, "succeeded");
    let runs = home
        .sqlite3(&format!(
            "SELECT attempt, outcome, error FROM job_runs WHERE job_id = {id} ORDER BY id;"
        ))
        .succeeds();
    let rows: Vec<&str> = runs.lines().collect();
    assert_eq!(
        rows[0],
        "1|rescued|attempt 1 was lost: worker elsewhere:42:1 stopped renewing its lease"
    );
    assert_eq!(rows[1], "2|succeeded|");
    daemon.stop();
}

#[test]
fn outcomes_survive_a_database_locked_by_another_process_for_longer_than_the_busy_timeout() {
    let home = Home::new();
    std::fs::write(
        home.config(),
        format!(
            "[database]\npath = \"{}\"\nbusy_timeout = \"100ms\"\n",
            home.db().display()
        ),
    )
    .unwrap();
    home.migrate();
    let daemon = home.daemon();
    let id = home.insert(&noop(1_500))[0];
    home.wait_state(id, "running");
    // Another process (this test) takes the write lock while the job still
    // runs and holds it until the daemon has said it keeps the outcome.
    let mut store = home.store();
    let conn = store.connection();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    let state: String = conn
        .query_row("SELECT state FROM jobs WHERE id = ?1", [id], |r| r.get(0))
        .unwrap();
    assert_eq!(state, "running", "the job ended before the lock was taken");
    let line = daemon.wait_log("op=\"write outcomes\"");
    assert!(line.contains("db.busy"), "{line}");
    assert!(line.contains("action=\"keeping the outcomes"), "{line}");
    conn.execute_batch("COMMIT").unwrap();
    drop(store);
    home.wait_state(id, "succeeded");
    daemon.wait_log("db.recovered");
    assert_eq!(
        home.query_i64(&format!(
            "SELECT count(*) FROM job_runs WHERE job_id = {id} AND outcome = 'succeeded'"
        )),
        1
    );
    daemon.stop();
}

#[test]
fn a_queue_rate_spaces_its_claims_and_daemon_queues_limits_what_is_served() {
    let home = Home::with_config(
        "[daemon]\nqueues = [\"api\", \"default\"]\nshutdown_grace = \"100ms\"\n[queues.api]\nrate = \"5/s\"\n",
    );
    home.migrate();
    let api: Vec<i64> = (0..10)
        .map(|_| home.insert(&format!("('noop', '{{}}', 'api', 0, {NOW}, NULL, NULL)"))[0])
        .collect();
    let elsewhere = home.insert(&format!("('noop', '{{}}', 'other', 0, {NOW}, NULL, NULL)"))[0];
    let daemon = home.daemon();
    for &id in &api {
        home.wait_state(id, "succeeded");
    }
    // A bucket of 5 that refills 5 a second: the 10th claim comes at least
    // (10 - 5) / 5 s = 1 s after the first.
    let spread =
        home.query_i64("SELECT max(started_at) - min(started_at) FROM jobs WHERE queue = 'api'");
    assert!(spread >= 950, "10 jobs at 5/s started within {spread} ms");
    // A queue this daemon does not serve is left alone: a job inserted
    // after it in a served queue finishing proves claims went on.
    let probe = home.insert(&noop(0))[0];
    home.wait_state(probe, "succeeded");
    assert_eq!(home.state(elsewhere), "queued");
    daemon.stop();
}

#[test]
fn sighup_reopens_the_log_file_after_logrotate_moved_it() {
    let home = Home::new();
    let log = home.path().join("jobd.log");
    let config = format!(
        "[log]\nfile = \"{}\"\n[daemon]\nshutdown_grace = \"100ms\"\n",
        log.display()
    );
    home.write_config(&config);
    home.migrate();
    let daemon = home.daemon_reading(&home.path().join("stderr.txt"), &log);
    let read = |path: &std::path::Path| std::fs::read_to_string(path).unwrap_or_default();
    // logrotate moves the file away, then signals.
    let rotated = home.path().join("jobd.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    daemon.signal(libc::SIGHUP);
    common::wait_for(common::PATIENCE, || {
        read(&log).contains("config.reloaded").then_some(())
    })
    .expect("a new log file after SIGHUP");
    let id = home.insert(&noop(0))[0];
    home.wait_state(id, "succeeded");
    let stopped = daemon.stop();
    let fresh = read(&log);
    assert_eq!(fresh, stopped);
    assert!(fresh.contains(&format!("job.succeeded id={id}")), "{fresh}");
    assert!(fresh.contains("daemon.stopped"), "{fresh}");
    // Nothing lost: what was written before the reload stays in the old file.
    let old = read(&rotated);
    assert!(old.contains("daemon.started"), "{old}");
    assert!(!old.contains("config.reloaded"));
}

/// Regression: the commit watcher was set up before the first migration,
/// when a new database has no `-wal` file yet, so a fresh install fell back
/// to polling (`pickup.fallback`).
#[test]
fn a_daemon_on_a_new_database_watches_its_commits() {
    let home = Home::new();
    let daemon = home.daemon();
    let id = home.insert(&noop(0))[0];
    home.wait_state(id, "succeeded");
    let log = daemon.stop();
    assert!(!log.contains("pickup.fallback"), "{log}");
}

/// A database for a daemon test, on each backend: the home whose config
/// points at it, and the argv of a shell that runs SQL on it (for handlers
/// and test servers, which act as an operator's client would).
struct Db {
    name: &'static str,
    home: Home,
    sql_argv: Vec<String>,
    _schema: Option<common::pg::Schema>,
}

impl Db {
    /// SQL through the backend's own shell; the trimmed output.
    fn sql(&self, sql: &str) -> String {
        sql_with(&self.sql_argv, sql)
    }

    /// Inserts one job; its id.
    fn insert(&self, kind: &str, payload: &str, max_attempts: i64) -> i64 {
        self.sql(&format!(
            "INSERT INTO jobs(kind, payload, max_attempts) \
             VALUES ('{kind}', '{payload}', {max_attempts}) RETURNING id;"
        ))
        .parse()
        .expect("an id")
    }

    fn wait_state(&self, id: i64, state: &str) {
        let sql = format!("SELECT state FROM jobs WHERE id = {id};");
        common::wait_for(common::PATIENCE, || (self.sql(&sql) == state).then_some(()))
            .unwrap_or_else(|| panic!("{}: job {id} never {state}: {}", self.name, self.sql(&sql)));
    }
}

fn sql_with(argv: &[String], sql: &str) -> String {
    let out = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .arg(sql)
        .output()
        .expect("the SQL shell runs");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A migrated SQLite home and, where a server answers, a PostgreSQL one
/// (a schema of its own), each with `extra` TOML in its config.
fn databases(tag: &str, extra: &str) -> Vec<Db> {
    let sqlite = Home::with_config(extra);
    sqlite.migrate();
    let sqlite3 = which("sqlite3");
    let sql_argv = vec![
        sqlite3,
        "-bail".into(),
        "-cmd".into(),
        ".timeout 5000".into(),
        sqlite.db().display().to_string(),
    ];
    let mut out = vec![Db {
        name: "sqlite",
        home: sqlite,
        sql_argv,
        _schema: None,
    }];
    if let Some(schema) = common::pg::Schema::create(tag) {
        let home = Home::new();
        std::fs::write(
            home.config(),
            format!("[database]\nurl = \"{}\"\n{extra}", schema.url()),
        )
        .unwrap();
        home.migrate();
        let sql_argv = vec![
            which("psql"),
            format!(
                "postgresql://root@127.0.0.1:5432/test?options=-c%20search_path%3D{}",
                schema.name
            ),
            "-v".into(),
            "ON_ERROR_STOP=1".into(),
            "-qAt".into(),
            "-c".into(),
        ];
        out.push(Db {
            name: "postgres",
            home,
            sql_argv,
            _schema: Some(schema),
        });
    }
    out
}

/// The absolute path of a program on PATH (handlers run with a minimal PATH).
fn which(program: &str) -> String {
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .expect("sh runs");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!path.is_empty(), "{program} must be installed");
    path
}

/// Fast retries, so a lost cancel would show as a retried attempt at once.
const FAST_RETRIES: &str = "[retry]\nbackoff_base = \"20ms\"\nbackoff_max = \"50ms\"\n\
                            [daemon]\nshutdown_grace = \"200ms\"\n";

/// The job's attempts, its runs' outcomes in order, and the daemon's log.
fn cancelled_after_one_attempt(db: &Db, id: i64) {
    db.wait_state(id, "cancelled");
    assert_eq!(
        db.sql(&format!("SELECT attempts FROM jobs WHERE id = {id};")),
        "1",
        "{}: the cancel ended the job after its first attempt",
        db.name
    );
    assert_eq!(
        db.sql(&format!(
            "SELECT outcome FROM job_runs WHERE job_id = {id} ORDER BY attempt;"
        )),
        "cancelled",
        "{}",
        db.name
    );
}

/// An `exec` job whose cancel is requested while it runs (by SQL, while
/// the daemon is stopped, so it cannot kill the handler first) and whose
/// handler then exits 75 ends `cancelled` with attempts to spare, on both
/// backends.
#[test]
fn a_cancel_survives_a_retryable_failure() {
    for db in databases("cancel_exec", FAST_RETRIES) {
        let handlers = db.home.path().join("handlers");
        std::fs::create_dir_all(&handlers).unwrap();
        let mut config = std::fs::read_to_string(db.home.config()).unwrap();
        config.push_str(&format!("[exec]\ndir = \"{}\"\n", handlers.display()));
        std::fs::write(db.home.config(), config).unwrap();
        let go = db.home.path().join("go");
        let pid_file = db.home.path().join("handler.pid");
        let script = format!(
            "#!/bin/sh\necho $$ $PPID > '{}'\nwhile [ ! -e '{}' ]; do sleep 0.01; done\n\
             echo 'busy, try later' >&2\nexit 75\n",
            pid_file.display(),
            go.display(),
        );
        let handler = handlers.join("later");
        std::fs::write(&handler, script).unwrap();
        std::fs::set_permissions(
            &handler,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let daemon = db.home.daemon();
        let id = db.insert("exec", r#"{"handler":"later"}"#, 5);
        db.wait_state(id, "running");
        let (pid, worker) = wait_for(PATIENCE, || {
            let text = std::fs::read_to_string(&pid_file).ok()?;
            let mut pids = text.split_whitespace().map(|p| p.parse::<i32>().ok());
            Some((pids.next()??, pids.next()??))
        })
        .expect("the handler started");
        // The daemon stopped, the cancel lands and the handler ends (its
        // worker reaps it and reports exit 75); then the daemon wakes to an
        // attempt that failed retryably and a cancel it never acted on.
        daemon.signal(libc::SIGSTOP);
        let flag = if db.name == "sqlite" { "1" } else { "true" };
        db.sql(&format!(
            "UPDATE jobs SET cancel_requested = {flag} WHERE id = {id};"
        ));
        std::fs::write(&go, "").unwrap();
        // Reaped, and its worker has sent the answer: it is back to
        // reading its next order on stdin (read(2) is syscall 0, fd 0).
        let reaped = wait_for(PATIENCE, || {
            let gone = !std::path::Path::new(&format!("/proc/{pid}")).exists();
            let idle = std::fs::read_to_string(format!("/proc/{worker}/syscall"))
                .is_ok_and(|s| s.starts_with("0 0x0 "));
            (gone && idle).then_some(())
        });
        daemon.signal(libc::SIGCONT);
        assert!(reaped.is_some(), "{}: the handler never ended", db.name);
        cancelled_after_one_attempt(&db, id);
        let error = db.sql(&format!("SELECT error FROM job_runs WHERE job_id = {id};"));
        assert!(
            error.contains("exit 75"),
            "{}: the attempt's own error stays in its record: {error}",
            db.name
        );
        let log = daemon.stop();
        assert!(
            log.contains(&format!("job.cancelled id={id} ")),
            "{}: {log}",
            db.name
        );
        assert!(
            !log.contains(&format!("job.retry id={id} ")),
            "{}: {log}",
            db.name
        );
    }
}

/// An `http` job whose cancel is requested during its attempt against a
/// slow server answering 503 ends `cancelled`, not retried to the end.
#[test]
fn a_cancelled_http_job_is_not_retried_after_a_503() {
    for db in databases("cancel_http", FAST_RETRIES) {
        let argv = db.sql_argv.clone();
        let flag = if db.name == "sqlite" { "1" } else { "true" };
        let server = common::HttpServer::start(move |_, _| {
            // The operator's cancel lands while the request is in flight.
            sql_with(
                &argv,
                &format!("UPDATE jobs SET cancel_requested = {flag} WHERE kind = 'http';"),
            );
            common::Reply::new(503, "busy")
        });
        let daemon = db.home.daemon();
        let id = db.insert("http", &format!(r#"{{"url":"{}/slow"}}"#, server.base), 5);
        cancelled_after_one_attempt(&db, id);
        assert_eq!(server.received().len(), 1, "{}", db.name);
        daemon.stop();
    }
}

/// A daemon started from the default `./config.toml` keeps its running
/// configuration when a reload finds that file gone (a tool rewriting it
/// at that moment): the defaults apply only to a daemon that started
/// without a file. (The reload took the built-in defaults, resized the
/// pools to them and stopped every schedule.)
#[test]
fn a_reload_while_the_default_config_file_is_gone_keeps_the_running_configuration() {
    let home = Home::with_config("[pool]\nthreads = 3\n");
    home.migrate();
    let log = home.path().join("d.log");
    let daemon = home.spawn_daemon(home.bare(&["run"]), &log, &log);
    std::fs::rename(home.config(), home.path().join("config.toml.bak")).unwrap();
    let before = daemon.log().len();
    daemon.signal(libc::SIGHUP);
    let line = wait_for(PATIENCE, || {
        let text = daemon.log();
        let new = &text[before..];
        new.lines()
            .find(|l| l.contains("config.invalid") || l.contains("config.reloaded"))
            .map(str::to_string)
    })
    .expect("the reload was logged");
    assert!(
        line.contains("config.invalid") && line.contains("does not exist"),
        "{line}"
    );
    daemon.stop();
}

/// A reload that changes what only a restart applies (the listen address,
/// the queues served) says so and keeps them; the rest applies. (A new
/// listen address was logged as reloaded while the old one went on.)
#[test]
fn a_reload_says_which_changed_keys_wait_for_a_restart() {
    let port = common::free_port();
    let home = Home::with_config(&format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\n[pool]\nthreads = 1\n"
    ));
    home.migrate();
    let daemon = home.daemon();
    let other = common::free_port();
    home.write_config(&format!(
        "[metrics]\nlisten = \"127.0.0.1:{other}\"\n[daemon]\nqueues = [\"mail\"]\n[pool]\nthreads = 2\n"
    ));
    let before = daemon.log().len();
    daemon.signal(libc::SIGHUP);
    let line = daemon.wait_log_after(before, "config.restart_needed");
    assert!(line.contains("keys=daemon.queues,metrics.listen"), "{line}");
    let line = daemon.wait_log_after(before, "config.reloaded");
    assert!(line.contains("threads=2"), "{line}");
    // The old address still serves.
    let health = std::net::TcpStream::connect(("127.0.0.1", port));
    assert!(health.is_ok(), "the listener moved or stopped");
    daemon.stop();
}
