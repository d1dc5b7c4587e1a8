//! The PostgreSQL backend: `jobd migrate` creates and upgrades the schema
//! on a real server, the database itself rejects bad inserts from `psql`,
//! the claim is an index range scan, daemons share one queue (30 000 jobs,
//! one killed), ride out cut connections, and `jobd migrate --from` moves a
//! SQLite file's queued jobs once. Each test works in a schema of its own,
//! dropped at the end.
//!
//! The server is the machine's (127.0.0.1:5432, trust auth, database
//! `test`). Where none answers the tests say so and pass, unless
//! `JOBD_REQUIRE_POSTGRES=1` (set by `.ci/run`, which starts the server).

mod common;

use common::Home;
use jobd::store::prelude::*;

use common::pg::{Schema, SERVER};

fn home_on(url: &str) -> Home {
    home_with(url, "")
}

/// A home whose config uses the database at `url`, plus `extra` TOML.
fn home_with(url: &str, extra: &str) -> Home {
    Home::on_postgres(url, extra)
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
        "cron,imported_jobs,job_runs,jobd_schema,jobs,meta,queues,workers"
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
    let Some(schema) = Schema::create("checks") else {
        return;
    };
    home_on(&schema.url()).ok(&["migrate"]);
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

mod lifecycle {
    use super::*;
    use jobd::job::{Attempt, NewJob};
    use jobd::store::postgres::PgStore;
    use jobd::store::{Applied, Claim, ClaimRequest, Enqueued};

    const NOW: i64 = 1_800_000_000_000;

    fn claim(store: &mut PgStore, worker: &str, requests: &[ClaimRequest]) -> Vec<i64> {
        store
            .claim(&Claim {
                worker,
                now: NOW,
                lease_until: NOW + 30_000,
                requests,
            })
            .unwrap()
            .iter()
            .map(|j| j.id)
            .collect()
    }

    fn store(schema: &Schema) -> PgStore {
        home_on(&schema.url()).ok(&["migrate"]);
        PgStore::connect(&schema.url(), std::time::Duration::from_secs(5)).unwrap()
    }

    #[test]
    fn enqueue_claim_and_fenced_completion() {
        let Some(schema) = Schema::create("cycle") else {
            return;
        };
        let mut s = store(&schema);
        let mut high = NewJob::new("noop");
        high.priority = 5;
        let mut keyed = NewJob::new("noop");
        keyed.unique_key = Some("k".into());
        let got = s
            .enqueue(&[NewJob::new("noop"), high, keyed.clone(), keyed], NOW)
            .unwrap();
        let ids: Vec<i64> = got.iter().map(|e| e.id()).collect();
        assert!(
            matches!(got[3], Enqueued::Duplicate(id) if id == ids[2]),
            "{got:?}"
        );
        let claimed = claim(&mut s, "w1", &[ClaimRequest::any("default", 10)]);
        assert_eq!(
            claimed,
            vec![ids[1], ids[0], ids[2]],
            "priority, then run_at, then id"
        );
        assert!(claim(&mut s, "w2", &[ClaimRequest::any("default", 10)]).is_empty());
        let done =
            Attempt::new(ids[1], "w1", 1, NOW, NOW + 5).succeeded(Some(r#"{"ok":true}"#.into()));
        let stale = Attempt::new(ids[0], "w2", 1, NOW, NOW + 5).dead("not mine".into());
        let retry = Attempt::new(ids[2], "w1", 1, NOW, NOW + 5).retry("later".into(), NOW + 1_000);
        assert_eq!(
            s.complete(&[done, stale, retry]).unwrap(),
            vec![Applied::Done, Applied::Stale, Applied::Done]
        );
        let state = |id: i64| {
            schema.psql(&format!("SELECT state || ',' || coalesce(result::text, '-') || ',' || coalesce(last_error, '-') FROM jobs WHERE id = {id};")).unwrap()
        };
        assert_eq!(state(ids[1]), r#"succeeded,{"ok": true},-"#);
        assert_eq!(
            state(ids[0]),
            "running,-,-",
            "the stale outcome changed nothing"
        );
        assert_eq!(state(ids[2]), "queued,-,later");
        assert_eq!(
            schema
                .psql("SELECT string_agg(job_id || ':' || outcome, ' ' ORDER BY id) FROM job_runs;")
                .unwrap(),
            format!("{}:succeeded {}:retry", ids[1], ids[2])
        );
    }

    #[test]
    fn a_claim_reaches_io_jobs_past_cpu_jobs_and_respects_pauses() {
        let Some(schema) = Schema::create("pools") else {
            return;
        };
        let mut s = store(&schema);
        let ids: Vec<i64> = s
            .enqueue(&["exec", "checksum", "noop", "http"].map(NewJob::new), NOW)
            .unwrap()
            .iter()
            .map(|e| e.id())
            .collect();
        let io_only = ClaimRequest {
            queue: "default".into(),
            limit: 10,
            cpu: 0,
            io: 10,
        };
        assert_eq!(claim(&mut s, "w", &[io_only]), vec![ids[2], ids[3]]);
        schema
            .psql("INSERT INTO queues(name, paused) VALUES ('default', true);")
            .unwrap();
        assert!(claim(&mut s, "w", &[ClaimRequest::any("default", 10)]).is_empty());
    }

    #[test]
    fn claimers_in_parallel_never_take_the_same_job() {
        let Some(schema) = Schema::create("race") else {
            return;
        };
        let mut s = store(&schema);
        let all: Vec<i64> = s
            .enqueue(&vec![NewJob::new("noop"); 2_000], NOW)
            .unwrap()
            .iter()
            .map(|e| e.id())
            .collect();
        let url = schema.url();
        let claimers: Vec<_> = (0..4)
            .map(|n| {
                let url = url.clone();
                std::thread::spawn(move || {
                    let mut s = PgStore::connect(&url, std::time::Duration::from_secs(5)).unwrap();
                    let worker = format!("w{n}");
                    let mut mine = Vec::new();
                    loop {
                        let got = claim(&mut s, &worker, &[ClaimRequest::any("default", 25)]);
                        if got.is_empty() {
                            return mine;
                        }
                        mine.extend(got);
                    }
                })
            })
            .collect();
        let mut seen: Vec<i64> = claimers
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect();
        let claimed = seen.len();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), claimed, "a job was claimed twice");
        assert_eq!(seen, all, "every job was claimed");
    }
}

mod leases {
    use super::*;
    use jobd::job::{JobState, NewJob};
    use jobd::store::postgres::PgStore;
    use jobd::store::{Claim, ClaimRequest, RescueScope, WorkerInfo};

    const NOW: i64 = 1_800_000_000_000;

    fn worker(id: &str, beat: i64) -> WorkerInfo {
        WorkerInfo {
            id: id.into(),
            host: "h".into(),
            pid: 1,
            version: "0".into(),
            started_at: NOW,
            heartbeat_at: beat,
            queues: "*".into(),
            running: 0,
        }
    }

    #[test]
    fn workers_beat_and_leave_and_lost_jobs_are_rescued() {
        let Some(schema) = Schema::create("leases") else {
            return;
        };
        home_on(&schema.url()).ok(&["migrate"]);
        let mut s = PgStore::connect(&schema.url(), std::time::Duration::from_secs(5)).unwrap();
        s.register_worker(&worker("a", NOW)).unwrap();
        s.register_worker(&worker("b", NOW)).unwrap();
        s.heartbeat("a", NOW + 5, 3).unwrap();
        let ws = s.workers().unwrap();
        // running is counted from the jobs a daemon holds (none here), not
        // taken from its heartbeat.
        assert_eq!(
            (ws.len(), ws[0].heartbeat_at, ws[0].running),
            (2, NOW + 5, 0)
        );
        s.deregister_worker("b").unwrap();
        assert_eq!(s.workers().unwrap().len(), 1);

        let mut last = NewJob::new("noop");
        last.max_attempts = Some(1);
        let ids: Vec<i64> = s
            .enqueue(&[NewJob::new("noop"), last, NewJob::new("noop")], NOW)
            .unwrap()
            .iter()
            .map(|e| e.id())
            .collect();
        let claim = |s: &mut PgStore, w: &str, until: i64| {
            s.claim(&Claim {
                worker: w,
                now: NOW,
                lease_until: until,
                requests: &[ClaimRequest::any("default", 2)],
            })
            .unwrap()
        };
        assert_eq!(claim(&mut s, "a", NOW + 1_000).len(), 2);
        assert_eq!(claim(&mut s, "gone", NOW + 60_000).len(), 1);
        // "a" renews one of its two; the other runs out.
        assert_eq!(s.renew_leases("a", &[ids[0]], NOW + 90_000).unwrap(), 1);
        assert_eq!(s.renew_leases("zzz", &[ids[0]], NOW + 90_000).unwrap(), 0);
        let expired = s
            .rescue(RescueScope::ExpiredLeases, NOW + 2_000, 20)
            .unwrap();
        assert_eq!(expired.len(), 1);
        assert_eq!(
            (expired[0].id, expired[0].state),
            (ids[1], JobState::Dead),
            "no attempts left"
        );
        let gone = s
            .rescue(RescueScope::Workers(&["gone".to_string()]), NOW + 3_000, 20)
            .unwrap();
        assert_eq!(
            (gone.len(), gone[0].id, gone[0].state),
            (1, ids[2], JobState::Queued)
        );
        let row = |id: i64| {
            schema
                .psql(&format!(
                    "SELECT state || ',' || last_error FROM jobs WHERE id = {id};"
                ))
                .unwrap()
        };
        assert_eq!(
            row(ids[2]),
            "queued,attempt 1 was lost: worker gone is gone (its process no longer runs)"
        );
        assert_eq!(
            row(ids[1]),
            "dead,attempt 1 was lost: worker a stopped renewing its lease"
        );
        assert_eq!(
            schema
                .psql("SELECT count(*) FROM job_runs WHERE outcome = 'rescued';")
                .unwrap(),
            "2"
        );
        // Nothing more to take back.
        assert!(s
            .rescue(RescueScope::ExpiredLeases, NOW + 2_000, 20)
            .unwrap()
            .is_empty());
        assert!(s
            .rescue(RescueScope::Workers(&[]), NOW, 20)
            .unwrap()
            .is_empty());
    }
}

mod operators {
    use super::*;
    use jobd::job::{Attempt, JobState, NewJob};
    use jobd::store::postgres::PgStore;
    use jobd::store::{CancelResult, Claim, ClaimRequest, ListFilter, PruneCutoffs, RetryResult};

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn cancel_retry_prune_pause_and_reads() {
        let Some(schema) = Schema::create("ops") else {
            return;
        };
        home_on(&schema.url()).ok(&["migrate"]);
        let mut s = PgStore::connect(&schema.url(), std::time::Duration::from_secs(5)).unwrap();
        let mut keyed = NewJob::new("noop");
        keyed.unique_key = Some("k".into());
        let ids: Vec<i64> = s
            .enqueue(
                &[
                    NewJob::new("noop"),
                    NewJob::new("noop"),
                    keyed.clone(),
                    NewJob::new("noop"),
                ],
                NOW,
            )
            .unwrap()
            .iter()
            .map(|e| e.id())
            .collect();
        // Claim the first two; one will run on, one is cancelled by request.
        let claimed = s
            .claim(&Claim {
                worker: "w",
                now: NOW,
                lease_until: NOW + 30_000,
                requests: &[ClaimRequest::any("default", 2)],
            })
            .unwrap();
        assert_eq!(claimed.len(), 2);
        assert_eq!(
            s.cancel(&[ids[3], ids[1], 999_999], NOW).unwrap(),
            vec![
                CancelResult::Cancelled,
                CancelResult::Requested,
                CancelResult::NotFound
            ]
        );
        assert_eq!(s.cancel_requests("w").unwrap(), vec![ids[1]]);
        // The first job dies; retry brings it back.
        let dead = Attempt::new(ids[0], "w", 1, NOW, NOW + 1).dead("boom".into());
        s.complete(&[dead]).unwrap();
        assert_eq!(
            s.cancel(&[ids[0]], NOW).unwrap(),
            vec![CancelResult::AlreadyFinal(JobState::Dead)]
        );
        assert_eq!(
            s.retry(&[ids[0], ids[2], ids[3]], NOW + 5).unwrap(),
            vec![
                RetryResult::Queued,
                RetryResult::WrongState(JobState::Queued),
                RetryResult::Queued
            ]
        );
        let job = s.job(ids[0]).unwrap().unwrap();
        assert_eq!(
            (job.state, job.attempts, job.run_at),
            (JobState::Queued, 0, NOW + 5)
        );
        assert_eq!(s.runs(ids[0]).unwrap().len(), 1);
        assert!(s.job(999_999).unwrap().is_none());

        // A dead job whose key a queued job holds stays dead in a bulk retry.
        schema
            .psql(&format!(
                "UPDATE jobs SET state = 'dead', finished_at = 1 WHERE id = {};",
                ids[0]
            ))
            .unwrap();
        let mut twin = NewJob::new("noop");
        twin.unique_key = Some("k2".into());
        let twin = s.enqueue(&[twin.clone()], NOW).unwrap()[0].id();
        schema.psql(&format!("UPDATE jobs SET state = 'dead', finished_at = 1 WHERE id = {twin}; INSERT INTO jobs(kind, unique_key) VALUES ('noop', 'k2');")).unwrap();
        let bulk = s.retry_dead(None, NOW).unwrap();
        assert_eq!((bulk.queued, bulk.skipped_unique), (1, 1));

        // Listing, filtering and paging.
        let queued = s
            .list(&ListFilter {
                state: Some(JobState::Queued),
                limit: 2,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(queued.len(), 2);
        assert!(queued[0].id > queued[1].id, "newest first");
        let older = s
            .list(&ListFilter {
                before: Some(queued[1].id),
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert!(older.iter().all(|j| j.id < queued[1].id));

        // Pausing, and pruning old final jobs with their attempt records.
        s.set_paused(&["mail".into(), "default".into()], true, NOW)
            .unwrap();
        s.set_paused(&["mail".into()], false, NOW).unwrap();
        assert_eq!(s.paused_queues().unwrap(), vec!["default".to_string()]);
        let pruned = s
            .prune_batch(
                &PruneCutoffs {
                    succeeded: Some(NOW),
                    dead: Some(NOW),
                    cancelled: Some(NOW),
                },
                100,
            )
            .unwrap();
        assert_eq!(
            pruned.jobs, 1,
            "the one dead job older than the cutoff: {pruned:?}"
        );
        assert!(s.job(twin).unwrap().is_none());
    }
}

#[test]
fn the_claim_of_either_pool_is_an_index_range_scan_however_many_are_queued() {
    use jobd::job::Pool;
    use jobd::store::postgres::claim_sql;
    let Some(schema) = Schema::create("plan") else {
        return;
    };
    let home = home_on(&schema.url());
    home.ok(&["migrate"]);
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

#[test]
fn a_lock_held_by_a_client_delays_the_daemon_but_never_hangs_it() {
    let Some(schema) = Schema::create("locked") else {
        return;
    };
    let home = home_with(
        &schema.url(),
        "busy_timeout = \"300ms\"\n[pool]\nthreads = 2\n",
    );
    home.ok(&["migrate"]);
    schema
        .psql("INSERT INTO jobs(kind, payload) SELECT 'noop', '{\"sleep_ms\":100}' FROM generate_series(1, 60);")
        .unwrap();
    let daemon = home.daemon_logging_to("d.log");
    // A client holds the table for 2 s: jobd's writes wait 300 ms, fail,
    // are logged and tried again; nothing is lost.
    let holder = std::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-d", "test", "-qAt", "-c"])
        .arg(format!(
            "SET search_path = {}; BEGIN; LOCK TABLE jobs IN EXCLUSIVE MODE; SELECT pg_sleep(2); COMMIT;",
            schema.name
        ))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Reported as SQLite reports a lock held past its busy timeout.
    let log = daemon.wait_log("stayed locked by another connection");
    assert!(log.contains("WARN  db.busy "), "{log}");
    assert!(log.contains("for more than 300ms"), "{log}");
    let mut holder = holder;
    assert!(holder.wait().unwrap().success());
    schema.wait_value(
        "SELECT count(*) FROM jobs WHERE state = 'succeeded';",
        "60",
        "every job finished once the lock was gone",
    );
    daemon.stop();
    assert_eq!(
        schema
            .psql("SELECT count(*) FROM job_runs WHERE outcome = 'succeeded';")
            .unwrap(),
        "60"
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

#[test]
fn the_dashboard_charts_every_daemons_attempts() {
    let Some(schema) = Schema::create("fleetchart") else {
        return;
    };
    // A serves the dashboard and queue "a"; B, elsewhere, runs queue "b".
    let port = common::free_port();
    let a = home_with(
        &schema.url(),
        &format!(
            "[daemon]\nqueues = [\"a\"]\nlease = \"1s\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"
        ),
    );
    let b = home_with(&schema.url(), "[daemon]\nqueues = [\"b\"]\n");
    a.ok(&["migrate"]);
    let dashboard = a.daemon_logging_to("a.log");
    let worker = b.daemon_logging_to("b.log");
    let chart = || -> Option<String> {
        let page = ureq::get(&format!("http://127.0.0.1:{port}/"))
            .call()
            .ok()?
            .into_string()
            .ok()?;
        Some(
            page.split("<svg")
                .nth(1)?
                .split("</svg>")
                .next()?
                .to_string(),
        )
    };
    // Bar heights of the attempts chart (the first), once it has bars: two
    // samples, so the attempts below fall between samples.
    let bars = |svg: &str| -> Vec<f64> {
        svg.split("<rect")
            .skip(1)
            .filter_map(|r| r.split("height=\"").nth(1)?.split('"').next()?.parse().ok())
            .collect()
    };
    common::wait_for(common::PATIENCE, || {
        chart().filter(|svg| !bars(svg).is_empty())
    })
    .expect("the chart has its first bar");
    schema
        .psql("INSERT INTO jobs(kind, queue) SELECT 'noop', 'b' FROM generate_series(1, 30);")
        .unwrap();
    schema.wait_value(
        "SELECT count(*) FROM jobs WHERE state = 'succeeded';",
        "30",
        "B ran its jobs",
    );
    common::wait_for(common::PATIENCE, || {
        chart().filter(|svg| bars(svg).iter().any(|h| *h > 0.0))
    })
    .unwrap_or_else(|| panic!("A's chart does not count B's attempts: {:?}", chart()));
    dashboard.stop();
    worker.stop();
    assert_eq!(
        schema
            .psql("SELECT count(DISTINCT worker) FROM job_runs;")
            .unwrap(),
        "1",
        "only B ran jobs"
    );
}

#[test]
fn three_daemons_share_one_database_and_take_back_a_killed_ones_jobs() {
    let Some(schema) = Schema::create("fleet") else {
        return;
    };
    let home = home_with(
        &schema.url(),
        "[daemon]\nlease = \"1s\"\nshutdown_grace = \"200ms\"\n\
         [pool]\nthreads = 4\n[cpu]\nworkers = 1\n",
    );
    home.ok(&["migrate"]);
    schema
        .psql("INSERT INTO jobs(kind, payload) SELECT 'noop', '{\"sleep_ms\":2}' FROM generate_series(1, 30000);")
        .unwrap();
    let count = |sql: &str| -> i64 { schema.psql(sql).unwrap().parse().unwrap() };
    let a = home.daemon_logging_to("a.log");
    let b = home.daemon_logging_to("b.log");
    let c = home.daemon_logging_to("c.log");
    // Kill one mid-run, holding claimed jobs.
    common::wait_for(common::PATIENCE, || {
        (count("SELECT count(*) FROM jobs WHERE state = 'succeeded';") >= 6000).then_some(())
    })
    .expect("the fleet makes progress");
    let victim = c.pid();
    c.kill9();
    common::wait_for(common::PATIENCE * 2, || {
        (count("SELECT count(*) FROM jobs WHERE state = 'succeeded';") == 30000).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "not every job finished: {}",
            schema
                .psql("SELECT state, count(*) FROM jobs GROUP BY state;")
                .unwrap()
        )
    });
    a.stop();
    b.stop();
    assert_eq!(
        count("SELECT count(*) FROM (SELECT job_id FROM job_runs WHERE outcome = 'succeeded' GROUP BY job_id HAVING count(*) <> 1) t;"),
        0,
        "a job succeeded twice"
    );
    assert_eq!(
        count("SELECT count(DISTINCT job_id) FROM job_runs WHERE outcome = 'succeeded';"),
        30000
    );
    assert_eq!(
        count("SELECT count(*) FROM jobs WHERE state <> 'succeeded';"),
        0
    );
    // Every attempt was recorded once: no two daemons ran the same one.
    assert_eq!(
        count("SELECT count(*) FROM (SELECT 1 FROM job_runs GROUP BY job_id, attempt HAVING count(*) > 1) t;"),
        0,
        "an attempt ran twice"
    );
    // All three ran jobs; the killed one's unfinished jobs were rescued.
    assert_eq!(
        count("SELECT count(DISTINCT worker) FROM job_runs WHERE outcome = 'succeeded';"),
        3
    );
    let rescued = count(&format!(
        "SELECT count(*) FROM job_runs WHERE outcome = 'rescued' AND worker LIKE '%:{victim}:%';"
    ));
    eprintln!("30 000 jobs, 3 daemons, one killed: {rescued} of its jobs rescued by the others");
}

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
             INSERT INTO jobs(id, kind, payload, unique_key, queue) VALUES (4, 'noop', '{}', 'welcome:42', 'mail');
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
