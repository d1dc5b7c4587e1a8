//! What only the PostgreSQL backend has: its URL and TLS settings, LISTEN
//! for pickup, connections cut under a running daemon, and `jobd migrate
//! --from` moving a SQLite file's queued jobs once. Every behaviour both
//! backends share is tested on both in its area's file (`store.rs`,
//! `daemon.rs`, `cli.rs`, `dashboard.rs`, `faults.rs`, `schema.rs`…). Each
//! test works in a schema of its own, dropped at the end.
//!
//! The server is the machine's (127.0.0.1:5432, trust auth, database
//! `test`). Where none answers the tests say so and pass, unless
//! `JOBD_REQUIRE_POSTGRES=1` (set by `.ci/run`, which starts the server).

mod common;

use common::Home;

use common::pg::{Schema, SERVER};

fn home_on(url: &str) -> Home {
    home_with(url, "")
}

/// A schema of its own for test `tag`, and a home on it, migrated.
fn migrated(tag: &str) -> Option<(Schema, Home)> {
    let schema = Schema::create(tag)?;
    let home = home_on(&schema.url());
    home.ok(&["migrate"]);
    Some((schema, home))
}

/// A home whose config uses the database at `url`, plus `extra` TOML.
fn home_with(url: &str, extra: &str) -> Home {
    Home::on_postgres(url, extra)
}

#[test]
fn url_and_path_together_or_a_wrong_url_are_refused_naming_the_keys() {
    let home = Home::new();
    std::fs::write(
        home.config(),
        format!("[database]\npath = \"x.db\"\nurl = \"{SERVER}\"\n"),
    )
    .unwrap();
    home.jobd(&["check-config"])
        .fails(1, "database.url and database.path are both set");
    std::fs::write(home.config(), "[database]\nurl = \"mysql://x/y\"\n").unwrap();
    home.jobd(&["check-config"])
        .fails(1, "database.url must be a PostgreSQL URL");
    // A password never shows in check-config.
    let with_password = "postgres://jobd:pw-4e1f-secret@127.0.0.1/test";
    std::fs::write(
        home.config(),
        format!("[database]\nurl = \"{with_password}\"\n"),
    )
    .unwrap();
    let shown = home.ok(&["check-config"]);
    assert!(!shown.contains("pw-4e1f-secret"), "{shown}");
    assert!(
        shown.contains("postgres://jobd:(redacted)@127.0.0.1/test"),
        "{shown}"
    );
    // Nor as a parameter of the query: in check-config, and in the error
    // of a connection the server refuses (it was printed whole in both).
    let in_query = "postgres://postgres@127.0.0.1/no_such_db_4e1f?password=pw-q-secret";
    std::fs::write(home.config(), format!("[database]\nurl = \"{in_query}\"\n")).unwrap();
    let shown = home.ok(&["check-config"]);
    assert!(!shown.contains("pw-q-secret"), "{shown}");
    assert!(shown.contains("password=(redacted)"), "{shown}");
    let out = home.cmd(&["migrate"]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("no_such_db_4e1f") && !said.contains("pw-q-secret"),
        "{said}"
    );
    // Or the whole URL from the environment, kept out of the file.
    std::fs::write(home.config(), "[database]\n").unwrap();
    let out = home
        .cmd(&["check-config"])
        .env("JOBD_DATABASE__URL", with_password)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(!shown.contains("pw-4e1f-secret"), "{shown}");
    assert!(
        shown.contains("url = \"postgres://jobd:(redacted)@127.0.0.1/test\""),
        "{shown}"
    );
    // The unused file path is not shown beside the URL.
    assert!(!shown.contains("path = \"jobd.db\""), "{shown}");
}

#[test]
fn an_insert_from_any_client_notifies_its_schemas_listeners_with_its_queue() {
    let Some(schema) = Schema::create("notify") else {
        return;
    };
    home_on(&schema.url()).ok(&["migrate"]);
    let mut listener = postgres::Client::connect(&schema.url(), postgres::NoTls).unwrap();
    let channel = jobd::store::postgres::channel(&schema.name);
    listener
        .batch_execute(&format!("LISTEN \"{channel}\""))
        .unwrap();
    schema
        .psql("INSERT INTO jobs(kind, queue) VALUES ('noop', 'mail');")
        .unwrap();
    use postgres::fallible_iterator::FallibleIterator as _;
    let mut notifications = listener.notifications();
    let note = notifications
        .timeout_iter(common::PATIENCE)
        .next()
        .unwrap()
        .expect("the insert notifies");
    assert_eq!((note.channel(), note.payload()), (channel.as_str(), "mail"));

    // A daemon that serves named queues is woken by inserts into them only.
    let wake =
        jobd::store::postgres::wake::listen(&schema.url(), Some(vec!["mail".to_string()])).unwrap();
    schema
        .psql("INSERT INTO jobs(kind, queue) VALUES ('noop', 'reports');")
        .unwrap();
    // Unfiltered, that wake-up would come within a millisecond or two.
    assert!(
        wake.recv_timeout(std::time::Duration::from_millis(300))
            .is_err(),
        "an insert into another queue woke it"
    );
    schema
        .psql("INSERT INTO jobs(kind, queue) VALUES ('noop', 'mail');")
        .unwrap();
    wake.recv_timeout(common::PATIENCE).expect("mail wakes it");
}

/// The listener keeps listening while wake-ups come faster than they are
/// taken: a full channel is not a daemon gone. (It took a wake-up taken
/// between its failed send and its look at the channel for the end of the
/// daemon, and stopped: the daemon then polled, at a minute in a test
/// where ten jobs waited for it.)
#[test]
fn the_listener_outlasts_a_flood_of_wake_ups_taken_as_they_come() {
    let Some(schema) = Schema::create("flood") else {
        return;
    };
    home_on(&schema.url()).ok(&["migrate"]);
    let wake = jobd::store::postgres::wake::listen(&schema.url(), None).unwrap();
    let channel = jobd::store::postgres::channel(&schema.name);
    // One transaction: its notifications arrive together, as fast as the
    // listener can pass them on, while this thread takes them as fast.
    let notify = |n: usize| {
        format!("SELECT count(pg_notify('{channel}', i::text)) FROM generate_series(1, {n}) i;")
    };
    // The notifications reach the listener after the commit, so the
    // taking goes on until none came for a while after the sender ended.
    let flood = std::thread::scope(|scope| {
        let sender = scope.spawn(|| schema.psql(&notify(200_000)).unwrap());
        let mut taken = 0u64;
        let mut last = std::time::Instant::now();
        while !sender.is_finished() || last.elapsed() < std::time::Duration::from_millis(500) {
            if wake.try_recv().is_ok() {
                taken += 1;
                last = std::time::Instant::now();
            }
        }
        sender.join().unwrap();
        taken
    });
    assert!(flood > 0, "no wake-up came during the flood");
    // One more notification must still wake.
    schema.psql(&notify(1)).unwrap();
    wake.recv_timeout(common::PATIENCE)
        .expect("the listener stopped during the flood: no wake-up after it");
}

#[test]
fn a_daemon_rides_out_its_connections_being_cut() {
    let Some(schema) = Schema::create("cut") else {
        return;
    };
    // The connections of this test's daemon, and no other test's.
    let app = schema.name.clone();
    let home = home_on(&format!("{}&application_name={app}", schema.url()));
    home.ok(&["migrate"]);
    let count = |sql: &str| -> i64 { schema.psql(sql).unwrap().parse().unwrap() };
    let succeeded = |n: i64| {
        schema.wait_value(
            "SELECT count(*) FROM jobs WHERE state = 'succeeded';",
            &n.to_string(),
            "the jobs did not all succeed",
        )
    };
    let daemon = home.daemon_logging_to("d.log");
    daemon.wait_log("daemon.started");
    schema
        .psql("INSERT INTO jobs(kind) VALUES ('noop');")
        .unwrap();
    succeeded(1);
    let cut = common::pg::psql(&format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '{app}';"
    ))
    .unwrap();
    // The dispatcher's, the maintenance thread's and the listener's.
    assert!(cut.parse::<i64>().unwrap() >= 3, "cut {cut} connections");
    schema
        .psql("INSERT INTO jobs(kind) SELECT 'noop' FROM generate_series(1, 20);")
        .unwrap();
    succeeded(21);
    // The listener is back and hears inserts again.
    daemon.wait_log("db.reconnected");
    schema
        .psql("INSERT INTO jobs(kind) VALUES ('noop');")
        .unwrap();
    succeeded(22);
    let log = daemon.stop();
    assert!(log.contains("db.error"), "{log}");
    assert!(log.contains("daemon.stopped"), "{log}");
    assert_eq!(
        count("SELECT count(*) FROM job_runs WHERE outcome = 'succeeded';"),
        22
    );
}

/// Makes `home`'s database operations give up on a lock after 200 ms.
fn short_busy_timeout(home: &Home) {
    let config = std::fs::read_to_string(home.config()).unwrap();
    std::fs::write(
        home.config(),
        config.replace("[database]\n", "[database]\nbusy_timeout = \"200ms\"\n"),
    )
    .unwrap();
}

/// The number `sql` answers in `schema`.
fn number(schema: &Schema, sql: &str) -> i64 {
    let text = schema.psql(sql).unwrap();
    text.parse()
        .unwrap_or_else(|_| panic!("{sql} gave {text:?}"))
}

#[test]
fn outcomes_written_beside_the_claim_survive_their_session_being_cut() {
    let Some(schema) = Schema::create("outcomes_cut") else {
        return;
    };
    let app = schema.name.clone();
    let home = home_on(&format!("{}&application_name={app}", schema.url()));
    home.ok(&["migrate"]);
    schema
        .psql("INSERT INTO jobs(kind) SELECT 'noop' FROM generate_series(1, 4000);")
        .unwrap();
    let daemon = home.daemon_logging_to("d.log");
    // The session that writes outcomes while the dispatcher's claims, cut
    // again and again while the jobs drain.
    let cut_sql = format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = '{app} outcomes';"
    );
    let mut cut = 0;
    let drained = common::wait_for(common::PATIENCE, || {
        cut += common::pg::psql(&cut_sql).unwrap().parse::<i64>().unwrap();
        let left = number(
            &schema,
            "SELECT count(*) FROM jobs WHERE state <> 'succeeded';",
        );
        (left == 0).then_some(())
    });
    assert!(drained.is_some(), "the jobs did not all succeed");
    let log = daemon.stop();
    assert!(cut >= 1, "the outcome session was never there to cut");
    assert!(log.contains("db.error"), "{log}");
    // Every job ran once, and every attempt has its one record.
    assert_eq!(number(&schema, "SELECT max(attempts) FROM jobs;"), 1);
    assert_eq!(
        schema
            .psql("SELECT count(DISTINCT job_id), count(*) FROM job_runs WHERE outcome = 'succeeded';")
            .unwrap(),
        "4000|4000"
    );
}

#[test]
fn claims_stay_bounded_while_outcomes_cannot_be_written() {
    let Some(schema) = Schema::create("outcomes_held") else {
        return;
    };
    // Two threads: at most 2 + 2 × 63 jobs held (PostgreSQL claims 63 ahead
    // per thread for short jobs), plus one batch claimed
    // for the slots whose outcomes were being written when the write failed.
    let home = Home::new();
    let handlers = home.path().join("handlers");
    std::fs::create_dir(&handlers).unwrap();
    let hold = handlers.join("hold");
    std::fs::write(&hold, "#!/bin/sh\nexec sleep 30\n").unwrap();
    std::fs::set_permissions(&hold, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let port = common::free_port();
    let home = home_with(
        &schema.url(),
        &format!(
            "[pool]\nthreads = 2\n[cpu]\nworkers = 1\n[exec]\ndir = \"{}\"\n\
             [metrics]\nlisten = \"127.0.0.1:{port}\"\n",
            handlers.display()
        ),
    );
    short_busy_timeout(&home);
    home.ok(&["migrate"]);
    // The CPU worker is kept busy, so the only free slots are those of
    // outcomes written (or not) beside the claim.
    schema
        .psql(
            "INSERT INTO jobs(kind, payload, timeout_ms, max_attempts) \
             VALUES ('exec', '{\"handler\":\"hold\"}', 5000, 1); \
             INSERT INTO jobs(kind, batch) SELECT 'noop', 'held' FROM generate_series(1, 2000);",
        )
        .unwrap();
    // A client locks the batch's row: ending a member (which counts it on
    // that row) waits, and fails after the busy timeout; claiming does not.
    let client = schema.hold(
        "SELECT name FROM batches WHERE name = 'held' FOR UPDATE",
        "the batch's row",
    );
    let daemon = home.daemon_logging_to("d.log");
    daemon.wait_log("db.busy");
    // Watch the running jobs over a dozen retries of the write.
    let mut most = 0;
    // Over many retries of the write, until `/healthz` says the writes keep
    // failing (after 5 s): a step whose claim went through must not end
    // the failing streak.
    let healthz = format!("http://127.0.0.1:{port}/healthz");
    let mut health = (0, String::new());
    let unhealthy = common::wait_for(common::PATIENCE, || {
        // New work keeps arriving, and tells the daemon so.
        schema
            .psql("INSERT INTO jobs(kind) VALUES ('noop');")
            .unwrap();
        most = most.max(number(
            &schema,
            "SELECT count(*) FROM jobs WHERE state = 'running';",
        ));
        health = match ureq::get(&healthz).call() {
            Ok(r) => (r.status(), r.into_string().unwrap()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
            Err(e) => panic!("GET {healthz}: {e}"),
        };
        (health.0 == 503 && health.1.contains("outcome writes have failed")).then_some(())
    });
    client.release();
    schema.wait_value(
        "SELECT count(*) FROM jobs WHERE state IN ('queued', 'running');",
        "0",
        "the jobs ran once the row was let go",
    );
    daemon.stop();
    assert!(
        most <= 256,
        "{most} jobs held while no outcome could be written"
    );
    assert!(most > 0, "nothing was claimed while the row was held");
    assert!(
        unhealthy.is_some(),
        "/healthz never said the outcome writes keep failing: {health:?}"
    );
    assert_eq!(number(&schema, "SELECT max(attempts) FROM jobs;"), 1);
}

/// Claims that keep failing while outcomes are written make one streak of
/// trouble: one `db.busy op=claim` line, and `/healthz` says so after 5 s,
/// however many outcomes are written meanwhile. A client holds the keys'
/// advisory lock past `busy_timeout`, so every keyed claim fails, while
/// eight long jobs started before it finish one by one, 1.5 s apart.
#[test]
fn claims_that_keep_failing_are_one_streak_while_outcomes_are_written() {
    let Some(schema) = Schema::create("claims_fail") else {
        return;
    };
    let port = common::free_port();
    let home = home_with(
        &schema.url(),
        &format!(
            "[pool]\nthreads = 10\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n\
             [keys.k]\nmatch = \"k:*\"\nconcurrency = 100\n"
        ),
    );
    short_busy_timeout(&home);
    home.ok(&["migrate"]);
    let daemon = home.daemon_logging_to("d.log");
    schema
        .psql(
            "INSERT INTO jobs(kind, payload, timeout_ms) SELECT 'noop', \
             json_build_object('sleep_ms', 1500 * i)::jsonb, 60000 FROM generate_series(1, 8) i;",
        )
        .unwrap();
    schema.wait_value(
        "SELECT count(*) FROM jobs WHERE state = 'running';",
        "8",
        "the long jobs started",
    );
    let client = schema.hold(
        "SELECT pg_advisory_xact_lock(hashtext('jobd.limit_keys.' || current_schema()))",
        "the keys' lock",
    );
    schema
        .psql("INSERT INTO jobs(kind, limit_key) SELECT 'noop', 'k:1' FROM generate_series(1, 5);")
        .unwrap();
    daemon.wait_log("db.busy");
    // While long jobs still run (and their outcomes are written as they
    // end), the claims' trouble lasts past 5 s and `/healthz` says so.
    let healthz = format!("http://127.0.0.1:{port}/healthz");
    let mut health = (0, String::new());
    let long_left = "SELECT count(*) FROM jobs WHERE limit_key IS NULL AND state = 'running';";
    let unhealthy = common::wait_for(common::PATIENCE, || {
        health = match ureq::get(&healthz).call() {
            Ok(r) => (r.status(), r.into_string().unwrap()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
            Err(e) => panic!("GET {healthz}: {e}"),
        };
        if health.0 == 503 {
            return Some(true);
        }
        (number(&schema, long_left) == 0).then_some(false)
    });
    let written_before = number(
        &schema,
        "SELECT count(*) FROM jobs WHERE limit_key IS NULL AND state = 'succeeded';",
    );
    schema.wait_value(
        "SELECT count(*) FROM jobs WHERE limit_key IS NULL AND state = 'succeeded';",
        "8",
        "the long jobs' outcomes were written while the claims failed",
    );
    let claim_lines = daemon
        .log()
        .lines()
        .filter(|l| l.contains("db.busy") && l.contains("op=claim"))
        .count();
    client.release();
    schema.wait_value(
        "SELECT count(*) FROM jobs WHERE state <> 'succeeded';",
        "0",
        "the keyed jobs ran once the lock was let go",
    );
    daemon.stop();
    assert_eq!(
        unhealthy,
        Some(true),
        "/healthz did not say the claims keep failing while long jobs ran ({written_before} of 8 written): {health:?}"
    );
    assert!(health.1.contains("have failed"), "/healthz: {health:?}");
    assert_eq!(
        claim_lines, 1,
        "one db.busy line for the claims' whole streak, not one per outcome written"
    );
}

#[test]
fn tls_verifies_the_servers_certificate_and_names_what_is_wrong() {
    let Some(schema) = Schema::create("tls") else {
        return;
    };
    // The machine's server runs Debian's default TLS setup: a self-signed
    // certificate for "localhost".
    let cert = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
    if common::pg::psql("SHOW ssl;").as_deref() != Ok("on") || !std::path::Path::new(cert).exists()
    {
        eprintln!("the server has no TLS certificate here: skipped");
        return;
    }
    let app = schema.name.clone();
    let url = |host: &str, tls: &str| {
        format!(
            "postgres://root@{host}:5432/test?options=-c%20search_path%3D{}&application_name={app}&{tls}",
            schema.name
        )
    };
    let home = home_on(&url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={cert}"),
    ));
    home.ok(&["migrate"]);
    let daemon = home.daemon_logging_to("d.log");
    schema
        .psql("INSERT INTO jobs(kind) VALUES ('noop');")
        .unwrap();
    schema.wait_value(
        "SELECT state FROM jobs;",
        "succeeded",
        "the job ran over TLS",
    );
    // Every connection of the daemon (dispatcher, maintenance, listener).
    let sessions = common::pg::psql(&format!(
        "SELECT count(*) FILTER (WHERE s.ssl) || '/' || count(*) FROM pg_stat_activity a \
         JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = '{app}';"
    ))
    .unwrap();
    daemon.stop();
    assert_eq!(sessions.split('/').next(), sessions.split('/').nth(1));
    assert!(
        sessions.split('/').next().unwrap().parse::<i64>().unwrap() >= 3,
        "{sessions}"
    );

    // The certificate is for "localhost", not for the address.
    std::fs::write(
        home.config(),
        format!(
            "[database]\nurl = \"{}\"\n",
            url("127.0.0.1", &format!("sslmode=require&sslrootcert={cert}"))
        ),
    )
    .unwrap();
    home.jobd(&["list"])
        .fails(1, "certificate not valid for name \"127.0.0.1\"");
    // A CA that did not sign it.
    let other_ca = home.path().join("other-ca.pem");
    std::fs::write(&other_ca, OTHER_CA).unwrap();
    std::fs::write(
        home.config(),
        format!(
            "[database]\nurl = \"{}\"\n",
            url(
                "localhost",
                &format!("sslmode=verify-full&sslrootcert={}", other_ca.display())
            )
        ),
    )
    .unwrap();
    home.jobd(&["list"]).fails(1, "invalid peer certificate");
    // A file that is not a certificate, and a missing one.
    std::fs::write(&other_ca, "not a certificate\n").unwrap();
    home.jobd(&["list"]).fails(1, "holds no PEM certificate");
    std::fs::remove_file(&other_ca).unwrap();
    home.jobd(&["list"]).fails(1, "cannot read sslrootcert");
    // Settings the config check refuses before connecting.
    for (tls, says) in [
        (
            "sslmode=verify-everything",
            "sslmode must be disable, allow, prefer",
        ),
        (
            &format!("sslrootcert={cert}") as &str,
            "sslrootcert needs sslmode=require or verify-full",
        ),
    ] {
        std::fs::write(
            home.config(),
            format!("[database]\nurl = \"{}\"\n", url("localhost", tls)),
        )
        .unwrap();
        home.jobd(&["check-config"]).fails(1, says);
    }
}

/// A CA certificate that signed nothing on this machine (generated for this
/// test with `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256`).
const OTHER_CA: &str = include_str!("data/other-ca.pem");

/// `jobd migrate --from sqlite:PATH`: a SQLite file's queued jobs move into
/// PostgreSQL once, however often it runs.
mod moving {
    use super::*;

    /// A SQLite home with jobs in every state that matters to a move.
    fn old_home() -> Home {
        let old = Home::new();
        old.migrate();
        old.sqlite3(
            "INSERT INTO jobs(id, kind, payload, queue, priority) VALUES (1, 'noop', '{\"sleep_ms\":1}', 'default', 5);
             INSERT INTO jobs(id, kind, payload, run_at) VALUES (2, 'noop', '{}', 4102444800000);
             INSERT INTO jobs(id, kind, payload, attempts, last_error, max_attempts, timeout_ms)
                 VALUES (3, 'noop', '{}', 2, 'timed out after 5 ms', 7, 900);
             INSERT INTO jobs(id, kind, payload, unique_key, queue, limit_key) VALUES (4, 'noop', '{}', 'welcome:42', 'mail', 'customer:42');
             INSERT INTO jobs(id, kind, payload, state, last_error) VALUES (5, 'noop', '{}', 'dead', 'gave up');
             INSERT INTO jobs(id, kind, payload, state) VALUES (6, 'noop', '{}', 'succeeded');
             INSERT INTO queues(name, paused) VALUES ('mail', 1);
             INSERT INTO cron(name, last_slot) VALUES ('nightly', 1700000000000);",
        )
        .succeeds();
        old
    }

    fn from(old: &Home) -> String {
        format!("sqlite:{}", old.db().display())
    }

    #[test]
    fn queued_jobs_paused_queues_and_cron_slots_move_once() {
        let Some(schema) = Schema::create("move") else {
            return;
        };
        let old = old_home();
        let pg = home_on(&schema.url());
        let out = pg.ok(&["migrate", "--from", &from(&old)]);
        assert!(out.contains("migrated from schema version 0"), "{out}");
        assert!(
            out.contains("moved 4 queued jobs from") && out.contains("1 paused queues and 1 cron"),
            "{out}"
        );
        let rows = schema
            .psql(
                "SELECT queue, kind, payload::text, priority, run_at, max_attempts, timeout_ms, \
                 unique_key, state, attempts, last_error FROM jobs ORDER BY id;",
            )
            .unwrap();
        let rows: Vec<&str> = rows.lines().collect();
        assert_eq!(rows.len(), 4, "{rows:?}");
        assert!(
            rows[0].starts_with("default|noop|{\"sleep_ms\": 1}|5|"),
            "{rows:?}"
        );
        assert!(rows[1].contains("|4102444800000|"), "{rows:?}");
        assert!(
            rows[2].ends_with("|7|900||queued|2|timed out after 5 ms"),
            "{rows:?}"
        );
        assert!(rows[3].starts_with("mail|noop|{}|0|"), "{rows:?}");
        assert!(rows[3].contains("|welcome:42|queued|0|"), "{rows:?}");
        // A job's limit key moves with it.
        assert_eq!(
            schema
                .psql(
                    "SELECT count(*) FROM jobs WHERE limit_key = 'customer:42' AND queue = 'mail';"
                )
                .unwrap(),
            "1"
        );
        assert_eq!(
            schema
                .psql("SELECT name FROM queues WHERE paused;")
                .unwrap(),
            "mail"
        );
        assert_eq!(
            schema
                .psql("SELECT last_slot FROM cron WHERE name = 'nightly';")
                .unwrap(),
            "1700000000000"
        );
        // The file keeps its history; each moved job says where it went.
        let left = old
            .sqlite3("SELECT id, state, last_error FROM jobs ORDER BY id;")
            .succeeds();
        let left: Vec<&str> = left.lines().collect();
        assert!(
            left[0].starts_with("1|cancelled|moved to postgres://root@127.0.0.1:5432/test")
                && left[0].contains(" as job "),
            "{left:?}"
        );
        assert_eq!(left[4], "5|dead|gave up");
        assert_eq!(left[5], "6|succeeded|");

        // Again: nothing moves twice. Then a job inserted into the file
        // since moves alone.
        let again = pg.ok(&["migrate", "--from", &from(&old)]);
        assert!(again.contains("moved 0 queued jobs"), "{again}");
        old.sqlite3("INSERT INTO jobs(kind) VALUES ('noop');")
            .succeeds();
        let late = pg.ok(&["migrate", "--from", &from(&old)]);
        assert!(late.contains("moved 1 queued jobs"), "{late}");
        assert_eq!(schema.psql("SELECT count(*) FROM jobs;").unwrap(), "5");

        // Interrupted between the two commits: the file still shows the
        // jobs queued though PostgreSQL has them. A rerun only marks them.
        old.sqlite3("UPDATE jobs SET state = 'queued', finished_at = NULL WHERE last_error LIKE 'moved to %';")
            .succeeds();
        let rerun = pg.ok(&["migrate", "--from", &from(&old)]);
        assert!(rerun.contains("moved 5 queued jobs"), "{rerun}");
        assert_eq!(schema.psql("SELECT count(*) FROM jobs;").unwrap(), "5");
        assert_eq!(
            old.query_i64("SELECT count(*) FROM jobs WHERE state = 'queued';"),
            0
        );

        // The moved jobs run on PostgreSQL, the retry keeping its count.
        schema
            .psql("UPDATE jobs SET run_at = 0; UPDATE queues SET paused = false;")
            .unwrap();
        let daemon = pg.daemon_logging_to("d.log");
        schema.wait_value(
            "SELECT count(*) FROM jobs WHERE state = 'succeeded';",
            "5",
            "the moved jobs run",
        );
        daemon.stop();
        assert_eq!(
            schema
                .psql("SELECT attempts FROM jobs WHERE timeout_ms = 900;")
                .unwrap(),
            "3"
        );
    }

    #[test]
    fn what_cannot_move_is_named_and_stays_queued_in_the_file() {
        let Some(schema) = Schema::create("moveref") else {
            return;
        };
        let old = old_home();
        // JSON that SQLite takes and jsonb cannot hold: NUL, a lone
        // surrogate.
        old.sqlite3(
            "INSERT INTO jobs(id, kind, payload) VALUES (7, 'noop', '{\"s\":\"a\\u0000b\"}');
             INSERT INTO jobs(id, kind, payload) VALUES (8, 'noop', '{\"s\":\"\\ud800\"}');",
        )
        .succeeds();
        let pg = home_on(&schema.url());
        pg.ok(&["migrate"]);
        // A queued job holding the same unique_key stands for job 4.
        schema
            .psql("INSERT INTO jobs(kind, unique_key) VALUES ('noop', 'welcome:42');")
            .unwrap();
        let run = pg.jobd(&["migrate", "--from", &from(&old)]);
        let err = run.fails(1, "2 jobs could not be moved and stay queued in");
        assert!(
            err.contains("job 7: unsupported Unicode escape sequence"),
            "{err}"
        );
        assert!(
            err.contains("job 8: invalid input syntax for type json"),
            "{err}"
        );
        assert!(
            run.stdout().contains("moved 3 queued jobs")
                && run.stdout().contains("1 already there by unique_key"),
            "{}",
            run.stdout()
        );
        assert_eq!(
            old.sqlite3("SELECT id FROM jobs WHERE state = 'queued' ORDER BY id;")
                .succeeds()
                .trim(),
            "7\n8"
        );
        assert!(old
            .sqlite3("SELECT last_error FROM jobs WHERE id = 4;")
            .succeeds()
            .starts_with("not moved: postgres://"));
        assert_eq!(schema.psql("SELECT count(*) FROM jobs;").unwrap(), "4");
    }

    #[test]
    fn a_file_in_use_a_wrong_source_or_a_sqlite_target_are_refused() {
        let Some(schema) = Schema::create("moveuse") else {
            return;
        };
        let old = old_home();
        let pg = home_on(&schema.url());
        pg.jobd(&["migrate", "--from", "jobd.db"])
            .fails(2, "expected sqlite:PATH");
        pg.jobd(&["migrate", "--from", "sqlite:"])
            .fails(2, "expected sqlite:PATH");
        pg.jobd(&["migrate", "--from", "sqlite:/nonexistent/jobd.db"])
            .fails(1, "/nonexistent/jobd.db");
        old.jobd(&["migrate", "--from", &from(&old)])
            .fails(2, "set database.url");
        let daemon = old.daemon();
        let err = pg
            .jobd(&["migrate", "--from", &from(&old)])
            .fails(1, "is in use by the daemon");
        assert!(err.contains("stop it first"), "{err}");
        assert_eq!(schema.psql("SELECT count(*) FROM jobs;").unwrap(), "0");
        // The daemon ran jobs 1 and 3, the rest wait (job 2 is scheduled,
        // 4 is in a paused queue). Killed while running job 9, the file
        // moves: job 9 first goes back to queued, its attempt counted.
        old.wait_state(1, "succeeded");
        old.sqlite3(
            "INSERT INTO jobs(id, kind, payload) VALUES (9, 'noop', '{\"sleep_ms\":60000}');",
        )
        .succeeds();
        old.wait_state(9, "running");
        daemon.kill9();
        let out = pg.ok(&["migrate", "--from", &from(&old)]);
        assert!(
            out.contains("moved 3 queued jobs")
                && out.contains("1 running jobs of stopped daemons put back to queued first"),
            "{out}"
        );
        assert_eq!(
            schema
                .psql("SELECT state, attempts FROM jobs WHERE payload = '{\"sleep_ms\": 60000}';")
                .unwrap(),
            "queued|1"
        );
    }
}

/// On PostgreSQL an attempt takes its place in the order (its id, from a
/// sequence) before it commits, so attempts of two daemons, or of a
/// daemon's outcomes and its rescues, can commit out of order. `jobd tail`
/// prints an attempt that commits after a later one it already printed,
/// or after a later one that was there when it started.
#[test]
fn tail_prints_an_attempt_that_commits_after_a_later_one() {
    let Some((schema, home)) = migrated("taillate") else {
        return;
    };
    schema
        .psql("INSERT INTO jobs (kind) SELECT 'noop' FROM generate_series(1, 3);")
        .unwrap();
    let attempt = |job: i64, error: &str| common::pg::failed_attempt(job, "default", error);
    // Before tail starts: one attempt takes its id and stays uncommitted,
    // a later one commits.
    let mut early = postgres::Client::connect(&schema.url(), postgres::NoTls).unwrap();
    let mut early_tx = early.transaction().unwrap();
    early_tx
        .batch_execute(&attempt(2, "held-since-before-start"))
        .unwrap();
    schema.psql(&attempt(3, "written-before-start")).unwrap();
    let mut child =
        common::Spawned::start(home.cmd(&["tail"]).stdout(std::process::Stdio::piped()));
    let rx = common::lines(child.stdout.take().unwrap());
    let printed = |needle: &str| {
        common::wait_for(common::PATIENCE, || {
            rx.recv_timeout(std::time::Duration::from_millis(100))
                .ok()
                .filter(|line| line.contains(needle))
        })
    };
    // tail follows from its start: attempts until one shows.
    let mut n = 0;
    let shown = common::wait_for(common::PATIENCE, || {
        n += 1;
        schema.psql(&attempt(1, &format!("warm-up {n}"))).unwrap();
        rx.recv_timeout(std::time::Duration::from_millis(300)).ok()
    });
    assert!(shown.is_some(), "tail printed nothing");
    early_tx.commit().unwrap();
    assert!(
        printed("held-since-before-start").is_some(),
        "tail never printed the attempt that committed after it started"
    );
    // The first takes its id and stays uncommitted while a later one
    // commits and is printed.
    let mut first = postgres::Client::connect(&schema.url(), postgres::NoTls).unwrap();
    let mut tx = first.transaction().unwrap();
    tx.batch_execute(&attempt(2, "committed-last")).unwrap();
    schema.psql(&attempt(3, "committed-first")).unwrap();
    assert!(
        printed("committed-first").is_some(),
        "tail never printed the later attempt"
    );
    tx.commit().unwrap();
    let late = printed("committed-last");
    assert!(
        late.is_some_and(|l| l.contains("job=2")),
        "tail never printed the attempt that committed after a later one"
    );
    // An id whose transaction rolls back (a daemon killed mid-write) stays
    // empty: nothing is printed for it, and tail goes on.
    let mut tx = first.transaction().unwrap();
    tx.batch_execute(&attempt(2, "rolled-back")).unwrap();
    tx.rollback().unwrap();
    schema.psql(&attempt(3, "after-the-rollback")).unwrap();
    let mut seen = Vec::new();
    let after = common::wait_for(common::PATIENCE, || {
        let line = rx
            .recv_timeout(std::time::Duration::from_millis(100))
            .ok()?;
        seen.push(line.clone());
        line.contains("after-the-rollback").then_some(line)
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(after.is_some(), "tail stopped after a rolled-back attempt");
    assert!(
        !seen.iter().any(|l| l.contains("rolled-back")),
        "tail printed a rolled-back attempt: {seen:?}"
    );
}

/// A row the driver cannot read as a claimed job (`parents` with two
/// dimensions, which the parents trigger lets through, as `unnest` and
/// `ANY` flatten it) panicked the dispatcher: the daemon died, and every
/// daemon that claimed the row after it. It ends `dead` naming the column,
/// and the daemon goes on.
#[test]
fn a_claimed_row_that_cannot_be_read_goes_dead_and_the_daemon_goes_on() {
    let Some((schema, home)) = migrated("unreadable") else {
        return;
    };
    let daemon = home.daemon_logging_to("d.log");
    schema
        .psql("INSERT INTO jobs(kind) VALUES ('noop');")
        .unwrap();
    schema.wait_value(
        "SELECT count(*) FROM jobs WHERE state = 'succeeded';",
        "1",
        "the parent never succeeded",
    );
    schema
        .psql("INSERT INTO jobs(kind, parents) VALUES ('noop', '{{1}}');")
        .unwrap();
    schema.wait_value(
        "SELECT state FROM jobs WHERE id = 2;",
        "dead",
        "the unreadable job never ended dead",
    );
    let error = schema
        .psql("SELECT last_error FROM jobs WHERE id = 2;")
        .unwrap();
    assert!(
        error.contains("the job's parents cannot be read") && error.contains("dimensions"),
        "{error}"
    );
    schema
        .psql("INSERT INTO jobs(kind) VALUES ('noop');")
        .unwrap();
    schema.wait_value(
        "SELECT count(*) FROM jobs WHERE state = 'succeeded';",
        "2",
        "the daemon stopped running jobs",
    );
    daemon.stop();
}

/// Regression: `jobd migrate` run by several at once on an empty schema
/// (daemons started together) each said "migrated from schema version 0":
/// the version was read before the lock the migration takes. One did the
/// work; the others say they found it done.
#[test]
fn concurrent_migrations_say_which_one_migrated() {
    let Some(schema) = Schema::create("migrate_race") else {
        return;
    };
    let home = home_on(&schema.url());
    let children: Vec<_> = (0..4)
        .map(|_| {
            home.cmd(&["migrate"])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let said: Vec<String> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success());
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .collect();
    let migrated = said
        .iter()
        .filter(|s| s.contains("migrated from schema version 0"))
        .count();
    assert_eq!(migrated, 1, "{said:?}");
}

/// Regression: while the database could not be read (`jobs` locked past
/// the wait), the `stats` line said `ready=0 lag_ms=0`, an all-clear with
/// thousands of jobs queued. It says the backlog is unknown, and why.
#[test]
fn the_stats_line_says_when_the_backlog_cannot_be_read() {
    let Some(schema) = Schema::create("stats_unknown") else {
        return;
    };
    let home = Home::on_postgres(&schema.url(), "[daemon]\nstats_interval = \"1s\"\n");
    home.ok(&["migrate"]);
    home.ok(&["pause", "default", "--create"]);
    home.ok(&["enqueue", "noop"]);
    let log = home.path().join("d.log");
    let daemon = home.daemon_with_env(&log, &log, &[("JOBD_DATABASE__BUSY_TIMEOUT", "200ms")]);
    let _lock = common::Spawned::start(
        std::process::Command::new("psql")
            .args(["-h", "127.0.0.1", "-d", "test", "-qAt", "-c"])
            .arg(format!(
                "SET search_path = {}; BEGIN; LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE; \
                 SELECT pg_sleep(4); COMMIT;",
                schema.name
            ))
            .stdout(std::process::Stdio::null()),
    );
    let line = daemon.wait_log("backlog_unknown=");
    assert!(
        line.contains("INFO  stats") && !line.contains("ready=0"),
        "{line}"
    );
}
