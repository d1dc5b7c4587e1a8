//! A daemon paused past its lease (a VM migration, a swap storm, SIGSTOP)
//! must not lose or repeat the work it holds when it wakes, on either
//! backend, alone or beside a daemon that rescues its expired leases.

mod common;

use std::time::Duration;

use common::pg::Schema;
use common::{wait_for, Home, HttpServer, Reply, PATIENCE};

/// How long the test server takes to answer: well past the lease.
const ANSWER_AFTER: Duration = Duration::from_millis(2500);

const JOBS: usize = 4;

/// A database on one backend and two homes on it: `a` runs the jobs with a
/// 1 s lease, `b` serves another queue (it only rescues).
struct Pair {
    a: Home,
    b: Home,
    schema: Option<Schema>,
}

impl Pair {
    fn sqlite() -> Pair {
        let a = Home::with_config("[daemon]\nlease = \"1s\"\nshutdown_grace = \"100ms\"\n");
        a.migrate();
        let b = Home::new();
        std::fs::write(
            b.config(),
            format!(
                "[database]\npath = \"{}\"\nbusy_timeout = \"5s\"\n\
                 [daemon]\nlease = \"1s\"\nqueues = [\"elsewhere\"]\nshutdown_grace = \"100ms\"\n",
                a.db().display()
            ),
        )
        .unwrap();
        Pair { a, b, schema: None }
    }

    fn postgres(tag: &str) -> Option<Pair> {
        let schema = Schema::create(tag)?;
        let home = |queues: &str| {
            let home = Home::new();
            std::fs::write(
                home.config(),
                format!(
                    "[database]\nurl = \"{}&application_name={}\"\n[daemon]\nlease = \"1s\"\n{queues}shutdown_grace = \"100ms\"\n",
                    schema.url(),
                    schema.name
                ),
            )
            .unwrap();
            home
        };
        let a = home("");
        let b = home("queues = [\"elsewhere\"]\n");
        a.ok(&["migrate"]);
        Some(Pair {
            a,
            b,
            schema: Some(schema),
        })
    }

    /// One integer from the shared database.
    fn value(&self, sql: &str) -> i64 {
        match &self.schema {
            Some(schema) => schema.psql(sql).unwrap().parse().unwrap(),
            None => self.a.query_i64(sql),
        }
    }

    fn wait_value(&self, sql: &str, want: i64, what: &str) {
        let mut last = -1;
        let ok = wait_for(PATIENCE, || {
            last = self.value(sql);
            (last == want).then_some(())
        });
        assert!(
            ok.is_some(),
            "{what}: {sql} stayed at {last}, expected {want}"
        );
    }
}

fn now_sql(pair: &Pair) -> &'static str {
    match pair.schema {
        Some(_) => "(extract(epoch from clock_timestamp()) * 1000)::bigint",
        None => common::NOW,
    }
}

/// Enqueues the http jobs, starts `a`, waits until every request reached
/// the server, pauses `a` until `paused_until` holds, then lets it go on
/// and waits for every job to end. Returns the server.
fn pause_past_the_lease(pair: &Pair, rescuer: bool) -> HttpServer {
    let server = HttpServer::start(|_, _| Reply::new(200, "ok").after(ANSWER_AFTER));
    for i in 0..JOBS {
        pair.a.ok(&[
            "enqueue",
            "http",
            &format!(r#"{{"url": "{}/job/{i}"}}"#, server.base),
            "--timeout",
            "30s",
        ]);
    }
    let a = pair.a.daemon_logging_to("a");
    let b = rescuer.then(|| pair.b.daemon_logging_to("b"));
    let sent = wait_for(PATIENCE, || (server.received().len() == JOBS).then_some(()));
    assert!(sent.is_some(), "the requests never reached the server");
    a.signal(libc::SIGSTOP);
    if rescuer {
        // b takes the jobs back while a sleeps.
        pair.wait_value(
            "SELECT count(*) FROM jobs WHERE state = 'queued'",
            JOBS as i64,
            "b rescues the paused daemon's jobs",
        );
    } else {
        // Every lease lapses while a sleeps.
        pair.wait_value(
            &format!(
                "SELECT count(*) FROM jobs WHERE state = 'running' AND lease_until < {}",
                now_sql(pair)
            ),
            JOBS as i64,
            "the leases lapse",
        );
    }
    a.signal(libc::SIGCONT);
    pair.wait_value(
        "SELECT count(*) FROM jobs WHERE state = 'succeeded' OR state = 'dead'",
        JOBS as i64,
        "every job ends",
    );
    assert_eq!(
        pair.value("SELECT count(*) FROM jobs WHERE state = 'succeeded'"),
        JOBS as i64,
        "every job succeeds; a's log:\n{}",
        a.log()
    );
    drop(b);
    a.stop();
    server
}

/// Alone, a daemon that wakes past its lease renews what it still runs:
/// each job succeeds on its first attempt with one request.
fn alone(pair: &Pair) {
    let server = pause_past_the_lease(pair, false);
    assert_eq!(pair.value("SELECT max(attempts) FROM jobs"), 1);
    assert_eq!(server.received().len(), JOBS, "no request repeated");
}

/// Regression: beside a daemon that rescued its expired jobs, the woken
/// daemon claimed them again (attempt 2) while attempt 1 still ran; the end
/// of attempt 1 released attempt 2's slot and stopped its renewal, so it was
/// rescued too, and so on until every job was dead although every request
/// succeeded. Now attempt 1 is stale and attempt 2 runs to success.
fn beside_a_rescuer(pair: &Pair) {
    pause_past_the_lease(pair, true);
    assert_eq!(pair.value("SELECT max(attempts) FROM jobs"), 2);
    assert_eq!(
        pair.value("SELECT count(*) FROM job_runs WHERE outcome = 'rescued'"),
        JOBS as i64,
        "each job rescued once, by b"
    );
}

#[test]
fn a_daemon_paused_past_its_lease_keeps_its_jobs_sqlite() {
    alone(&Pair::sqlite());
}

#[test]
fn a_daemon_paused_past_its_lease_keeps_its_jobs_postgres() {
    if let Some(pair) = Pair::postgres("stall") {
        alone(&pair);
    }
}

#[test]
fn a_stale_attempt_does_not_release_the_next_one_sqlite() {
    beside_a_rescuer(&Pair::sqlite());
}

#[test]
fn a_stale_attempt_does_not_release_the_next_one_postgres() {
    if let Some(pair) = Pair::postgres("stale") {
        beside_a_rescuer(&pair);
    }
}

/// Regression: with the daemon's connections cut every 0.3 s, a claim
/// could commit while its reply was lost; the daemon never knew it held
/// those jobs, and with `max_attempts = 1` they ended `dead` a lease later
/// ("stopped renewing its lease") although no request was ever made for
/// them. Now the daemon finds what the database says it holds and gives
/// it back uncounted.
#[test]
fn a_claim_whose_reply_was_lost_costs_no_attempt() {
    let Some(pair) = Pair::postgres("cut") else {
        return;
    };
    let schema = pair.schema.as_ref().unwrap();
    const CUT_JOBS: i64 = 400;
    schema
        .psql(&format!(
            "INSERT INTO jobs(kind, payload, max_attempts) \
             SELECT 'noop', '{{\"sleep_ms\": 50}}', 1 FROM generate_series(1, {CUT_JOBS});"
        ))
        .unwrap();
    let daemon = pair.a.daemon_logging_to("a");
    // Cut every jobd connection every 300 ms until the jobs are done, at
    // most for the patience. The jobs take 2.5 s on 8 threads at the
    // least, so even a loaded machine, whose psql calls are slow, cuts
    // more than three times (20 ms jobs ended after three cuts under load).
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut cuts = 0;
    while std::time::Instant::now() < deadline
        && pair.value("SELECT count(*) FROM jobs WHERE state = 'queued' OR state = 'running'") > 0
    {
        // This test's daemon names its sessions after the schema, so
        // daemons of tests running beside it are left alone.
        let _ = common::pg::psql(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = '{}'",
            schema.name
        ));
        cuts += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(cuts > 3, "the connections were cut {cuts} times");
    pair.wait_value(
        "SELECT count(*) FROM jobs WHERE state = 'succeeded' OR state = 'dead'",
        CUT_JOBS,
        "every job ends",
    );
    let dead = pair.value("SELECT count(*) FROM jobs WHERE state = 'dead'");
    assert_eq!(dead, 0, "jobs lost to cut replies; log:\n{}", daemon.log());
    daemon.stop();
}
