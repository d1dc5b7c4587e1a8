//! The store conformance suite: every behaviour the daemon and the CLI rely
//! on, written against the `Store` trait so each backend runs the same
//! checks: SQLite, and PostgreSQL on the machine's server (a schema per
//! test; skipped with a message where no server answers, unless
//! `JOBD_REQUIRE_POSTGRES=1`).

mod common;

use jobd::store::prelude::*;
use std::collections::HashSet;
use std::time::Duration;

use jobd::job::{Attempt, Claimed, JobState, NewJob, Pool, RunOutcome};
use jobd::store::{
    Applied, CancelResult, Claim, ClaimRequest, Enqueued, ListFilter, OpenMode, PruneCutoffs,
    RescueScope, RetryResult, SqliteStore, Store, WorkerInfo,
};

use common::backends as all_backends;

fn backends() -> Vec<common::Backend> {
    all_backends("conf")
}

/// Runs `test` once per backend.
fn each(test: impl Fn(&mut dyn Store)) {
    for (name, mut store, _guard) in backends() {
        eprintln!("backend: {name}");
        test(store.as_mut());
    }
}

const NOW: i64 = 1_800_000_000_000;
const W1: &str = "host:1:1";
const W2: &str = "host:2:2";

fn job(kind: &str) -> NewJob {
    NewJob::new(kind)
}

fn claim(store: &mut dyn Store, worker: &str, now: i64, queue: &str, limit: usize) -> Vec<Claimed> {
    claim_with(store, worker, now, ClaimRequest::any(queue, limit))
}

/// One request claimed by `worker` at `now` (30 s lease, no key limits).
fn claim_with(
    store: &mut dyn Store,
    worker: &str,
    now: i64,
    request: ClaimRequest,
) -> Vec<Claimed> {
    store
        .claim(&Claim {
            worker,
            now,
            lease_until: now + 30_000,
            keys: &jobd::keys::NO_KEYS,
            requests: &[request],
        })
        .unwrap()
}

fn attempt(job: &Claimed, worker: &str, finished_at: i64) -> Attempt {
    Attempt {
        id: job.id,
        worker: worker.to_string(),
        attempt: job.attempts,
        started_at: job.started_at,
        finished_at,
    }
}

fn ids(jobs: &[Claimed]) -> Vec<i64> {
    jobs.iter().map(|j| j.id).collect()
}

/// Writes each of `jobs` (claimed by W1) as succeeded at NOW + 1.
fn succeed(store: &mut dyn Store, jobs: &[Claimed]) {
    let done: Vec<_> = jobs
        .iter()
        .map(|j| attempt(j, W1, NOW + 1).succeeded(None))
        .collect();
    store.complete(&done).unwrap();
}

fn inserted(store: &mut dyn Store, jobs: &[NewJob]) -> Vec<i64> {
    store
        .enqueue(jobs, NOW)
        .unwrap()
        .into_iter()
        .map(|e| match e {
            Enqueued::Inserted(id) => id,
            other => panic!("expected an insert, got {other:?}"),
        })
        .collect()
}

#[test]
fn claim_takes_ready_jobs_by_priority_then_run_at_then_id() {
    each(|s| {
        let mut jobs = Vec::new();
        for (priority, run_at) in [
            (0, NOW - 10),
            (5, NOW - 1),
            (0, NOW - 20),
            (5, NOW - 5),
            (9, NOW + 1_000),
        ] {
            let mut j = job("noop");
            j.priority = priority;
            j.run_at = Some(run_at);
            jobs.push(j);
        }
        let ids_in = inserted(s, &jobs);
        let got = claim(s, W1, NOW, "default", 10);
        // The scheduled job (run_at in the future) waits, whatever its priority.
        assert_eq!(ids(&got), vec![ids_in[3], ids_in[1], ids_in[2], ids_in[0]]);
        for j in &got {
            assert_eq!((j.attempts, j.started_at), (1, NOW));
            let row = s.job(j.id).unwrap().unwrap();
            assert_eq!(row.state, JobState::Running);
            assert_eq!(row.attempts, 1);
            assert_eq!(row.worker.as_deref(), Some(W1));
            assert_eq!(row.lease_until, Some(NOW + 30_000));
            assert_eq!(row.started_at, Some(NOW));
        }
        assert!(claim(s, W1, NOW, "default", 10).is_empty());
        let later = claim(s, W1, NOW + 1_000, "default", 10);
        assert_eq!(ids(&later), vec![ids_in[4]]);
    });
}

#[test]
fn claim_respects_limits_queues_and_pauses() {
    each(|s| {
        let mut jobs: Vec<NewJob> = (0..5).map(|_| job("noop")).collect();
        for j in jobs.iter_mut().take(2) {
            j.queue = "mail".into();
        }
        inserted(s, &jobs);
        assert_eq!(claim(s, W1, NOW, "default", 2).len(), 2);
        s.set_paused(&["mail".to_string()], true, NOW).unwrap();
        assert_eq!(s.paused_queues().unwrap(), vec!["mail"]);
        assert!(
            claim(s, W1, NOW, "mail", 5).is_empty(),
            "a paused queue was claimed"
        );
        s.set_paused(&["mail".to_string()], false, NOW).unwrap();
        assert!(s.paused_queues().unwrap().is_empty());
        let both = s
            .claim(&Claim {
                worker: W1,
                now: NOW,
                lease_until: NOW + 1,
                keys: &jobd::keys::NO_KEYS,
                requests: &[
                    ClaimRequest::any("mail", 5),
                    ClaimRequest::any("default", 0),
                ],
            })
            .unwrap();
        assert_eq!(both.len(), 2);
        assert!(both.iter().all(|j| j.queue == "mail"));
        assert_eq!(s.queued_queues().unwrap(), vec!["default"]);
    });
}

#[test]
fn a_claim_asks_each_pool_only_for_what_it_has_room_for() {
    each(|store| {
        // CPU jobs first in line, IO jobs behind them.
        let mut jobs: Vec<NewJob> = ["exec", "checksum", "compress"].map(job).to_vec();
        jobs.extend(["noop", "http", "bogus-kind"].map(job));
        let all = inserted(store, &jobs);
        let ask = |store: &mut dyn Store, cpu: usize, io: usize, limit: usize| {
            let request = ClaimRequest {
                queue: "default".into(),
                limit,
                cpu,
                io,
                fair_after: None,
                fleet: None,
            };
            ids(&claim_with(store, W1, NOW, request))
        };
        // The CPU pool is full: IO jobs are reached past the CPU ones
        // (an unknown kind counts as IO, to fail on its first claim).
        assert_eq!(ask(store, 0, 10, 10), all[3..].to_vec());
        // One CPU slot: one CPU job, none of the others.
        assert_eq!(ask(store, 1, 0, 10), vec![all[0]]);
        // The queue's allowance caps both pools together, CPU served first.
        assert_eq!(ask(store, 5, 5, 1), vec![all[1]]);
        assert_eq!(ask(store, 5, 5, 5), vec![all[2]]);
    });
}

/// Four connections claim from one queue of 4 000 jobs at once, on each
/// backend: every job is claimed, none twice.
#[test]
fn four_claimers_in_parallel_never_take_the_same_job() {
    for (name, open, _guard) in reopenable("race") {
        let mut store = open();
        let jobs: Vec<NewJob> = (0..4_000).map(|_| job("noop")).collect();
        store.enqueue(&jobs, NOW).unwrap();
        let handles: Vec<_> = ["w1", "w2", "w3", "w4"]
            .into_iter()
            .map(|worker| {
                let open = open.clone();
                std::thread::spawn(move || {
                    let mut s = open();
                    let mut mine = Vec::new();
                    loop {
                        let got = claim(s.as_mut(), worker, NOW, "default", 7);
                        if got.is_empty() {
                            return mine;
                        }
                        mine.extend(ids(&got));
                    }
                })
            })
            .collect();
        let all: Vec<i64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let unique: HashSet<i64> = all.iter().copied().collect();
        assert_eq!(all.len(), 4_000, "{name}");
        assert_eq!(unique.len(), 4_000, "{name}: a job was claimed twice");
    }
}

/// Opens a store on a migrated database, again each time it is called.
type Opener = std::sync::Arc<dyn Fn() -> Box<dyn Store + Send> + Send + Sync>;

/// One database per backend that can be opened from several threads, each
/// with the folder or schema that holds it.
fn reopenable(tag: &str) -> Vec<(&'static str, Opener, Box<dyn std::any::Any>)> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobd.db");
    SqliteStore::open(&path, Duration::from_secs(5), OpenMode::Create)
        .unwrap()
        .migrate()
        .unwrap();
    let sqlite: Opener = std::sync::Arc::new(move || {
        Box::new(SqliteStore::open(&path, Duration::from_secs(5), OpenMode::Existing).unwrap())
    });
    let mut out: Vec<(&'static str, Opener, Box<dyn std::any::Any>)> =
        vec![("sqlite", sqlite, Box::new(dir))];
    if let Some(schema) = common::pg::Schema::create(tag) {
        let url = schema.url();
        let connect =
            move || jobd::store::postgres::PgStore::connect(&url, Duration::from_secs(5)).unwrap();
        Admin::migrate(&mut connect()).unwrap();
        let pg: Opener = std::sync::Arc::new(move || Box::new(connect()));
        out.push(("postgres", pg, Box::new(schema)));
    }
    out
}

/// Regression (PostgreSQL): a claim is all or nothing. The claim without
/// a transaction ran one statement per pool, each committing alone: when
/// the IO kinds' statement failed, the CPU job the first one took stayed
/// `running` under a daemon that never got it (given back only by a later
/// `job.orphaned` reconcile). A client's trigger here refuses to start
/// `noop` jobs.
#[test]
fn a_claim_that_fails_part_way_claims_nothing() {
    for (name, mut store, guard) in backends() {
        let s = store.as_mut();
        inserted(s, &[job("checksum"), job("noop")]);
        // A first claim looks at the keys (none closed): the next one, at
        // the same moment, needs no transaction for them.
        assert!(claim(s, W1, NOW, "elsewhere", 1).is_empty());
        let sql = |sql: &str| match guard.downcast_ref::<common::pg::Schema>() {
            Some(schema) => schema.psql(sql).unwrap(),
            None => {
                let dir = guard.downcast_ref::<tempfile::TempDir>().unwrap();
                common::sqlite3(&dir.path().join("jobd.db"), sql).succeeds()
            }
        };
        match name {
            "postgres" => sql(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                 IF NEW.kind = 'noop' AND NEW.state = 'running' THEN RAISE EXCEPTION 'refused'; END IF; \
                 RETURN NEW; END $$; \
                 CREATE TRIGGER refuse BEFORE UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION refuse();",
            ),
            _ => sql(
                "CREATE TRIGGER refuse BEFORE UPDATE OF state ON jobs \
                 WHEN NEW.kind = 'noop' AND NEW.state = 'running' \
                 BEGIN SELECT RAISE(ABORT, 'refused'); END;",
            ),
        };
        let claimed = s.claim(&Claim {
            worker: W1,
            now: NOW,
            lease_until: NOW + 30_000,
            keys: &jobd::keys::NO_KEYS,
            requests: &[ClaimRequest::any("default", 10)],
        });
        assert!(
            claimed.is_err(),
            "{name}: the claim went through: {claimed:?}"
        );
        let running = sql("SELECT count(*) FROM jobs WHERE state <> 'queued';");
        assert_eq!(
            running.trim(),
            "0",
            "{name}: jobs left claimed by a failed claim"
        );
        // Without the trigger, the same claim takes CPU kinds first and
        // keeps within the queue's allowance.
        match name {
            "postgres" => sql("DROP TRIGGER refuse ON jobs;"),
            _ => sql("DROP TRIGGER refuse;"),
        };
        let mut one = ClaimRequest::any("default", 1);
        one.io = 1;
        one.cpu = 1;
        let kinds = |jobs: Vec<Claimed>| jobs.into_iter().map(|j| j.kind).collect::<Vec<_>>();
        assert_eq!(kinds(claim_with(s, W1, NOW, one)), ["checksum"], "{name}");
        assert_eq!(kinds(claim(s, W1, NOW, "default", 10)), ["noop"], "{name}");
    }
}

/// Regression (PostgreSQL, connections cut mid-write): a completion whose
/// commit went through but whose reply was lost is sent again by the
/// completer; it was taken for stale (`job.stale … taken back from this
/// daemon`) and missed the daemon's counters. The attempt record shows it
/// is this worker's own write: the retry reports it written, and writes
/// nothing twice.
#[test]
fn a_completion_sent_again_after_its_commit_is_recognised_as_written() {
    each(|s| {
        inserted(s, &[job("noop"), job("noop")]);
        let got = claim(s, W1, NOW, "default", 2);
        let ok = attempt(&got[0], W1, NOW + 7).succeeded(None);
        let failed = attempt(&got[1], W1, NOW + 7).retry("boom".into(), NOW + 60_000);
        let first = s.complete(&[ok.clone(), failed.clone()]).unwrap();
        assert_eq!(first, vec![Applied::Done, Applied::Done]);
        let again = s.complete(&[ok, failed]).unwrap();
        assert_eq!(again, vec![Applied::Done, Applied::Done]);
        assert_eq!(s.runs(got[0].id).unwrap().len(), 1);
        assert_eq!(s.runs(got[1].id).unwrap().len(), 1);
        // Another outcome for that attempt is still stale.
        let late = s
            .complete(&[attempt(&got[0], W1, NOW + 9).dead("late".into())])
            .unwrap();
        assert_eq!(late, vec![Applied::Stale]);
    });
}

#[test]
fn completions_are_fenced_by_state_worker_and_attempt() {
    each(|s| {
        inserted(s, &[job("noop"), job("noop")]);
        let got = claim(s, W1, NOW, "default", 2);
        let (a, b) = (&got[0], &got[1]);
        let mut stranger = attempt(a, W2, NOW + 5);
        stranger.worker = W2.into();
        let mut old = attempt(b, W1, NOW + 5);
        old.attempt = 0;
        let applied = s
            .complete(&[
                stranger.succeeded(None),
                old.succeeded(None),
                attempt(a, W1, NOW + 7).succeeded(Some("{\"ok\":true}".into())),
            ])
            .unwrap();
        assert_eq!(applied, vec![Applied::Stale, Applied::Stale, Applied::Done]);
        // A second outcome for the same attempt changes nothing.
        let again = s
            .complete(&[attempt(a, W1, NOW + 9).dead("late".into())])
            .unwrap();
        assert_eq!(again, vec![Applied::Stale]);
        let done = s.job(a.id).unwrap().unwrap();
        assert_eq!(done.state, JobState::Succeeded);
        // JSON, compared as JSON: PostgreSQL's jsonb keeps no formatting.
        let result: serde_json::Value =
            serde_json::from_str(done.result.as_deref().unwrap()).unwrap();
        assert_eq!(result, serde_json::json!({"ok": true}));
        assert_eq!(done.finished_at, Some(NOW + 7));
        assert_eq!(done.lease_until, None);
        let runs = s.runs(a.id).unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].outcome, RunOutcome::Succeeded);
        assert_eq!(runs[0].duration_ms, 7);
        assert_eq!(runs[0].queue, "default");
        assert_eq!(runs[0].kind, "noop");
        assert!(s.runs(b.id).unwrap().is_empty());
    });
}

#[test]
fn every_transition_lands_in_its_state() {
    each(|s| {
        let id = inserted(
            s,
            &[
                job("noop"),
                job("noop"),
                job("noop"),
                job("noop"),
                job("noop"),
            ],
        );
        let got = claim(s, W1, NOW, "default", 5);
        let outcomes = s
            .complete(&[
                attempt(&got[0], W1, NOW + 1).retry("connection refused".into(), NOW + 4_000),
                attempt(&got[1], W1, NOW + 1).dead("404 Not Found".into()),
                attempt(&got[2], W1, NOW + 1).timed_out("timed out after 1 ms".into(), None),
                attempt(&got[3], W1, NOW + 1).cancelled(),
                attempt(&got[4], W1, NOW + 1).interrupted(),
            ])
            .unwrap();
        assert!(outcomes.iter().all(|a| *a == Applied::Done));
        let j = s.job(id[0]).unwrap().unwrap();
        assert_eq!(
            (j.state, j.run_at, j.attempts),
            (JobState::Queued, NOW + 4_000, 1)
        );
        assert_eq!(j.last_error.as_deref(), Some("connection refused"));
        assert_eq!(s.job(id[1]).unwrap().unwrap().state, JobState::Dead);
        let t = s.job(id[2]).unwrap().unwrap();
        assert_eq!(t.state, JobState::Dead);
        assert_eq!(s.runs(id[2]).unwrap()[0].outcome, RunOutcome::Timeout);
        assert_eq!(s.job(id[3]).unwrap().unwrap().state, JobState::Cancelled);
        let r = s.job(id[4]).unwrap().unwrap();
        assert_eq!(
            (r.state, r.attempts),
            (JobState::Queued, 0),
            "interrupted attempt counted"
        );
        assert_eq!(s.runs(id[4]).unwrap()[0].outcome, RunOutcome::Interrupted);
    });
}

#[test]
fn rescue_takes_back_expired_and_orphaned_jobs() {
    each(|s| {
        let mut last = job("noop");
        last.max_attempts = Some(1);
        let id = inserted(s, &[job("noop"), last, job("noop")]);
        let mut got = claim(s, W1, NOW, "default", 2);
        got.extend(claim(s, W2, NOW, "default", 1));
        // Nothing has expired yet.
        assert!(s
            .rescue(RescueScope::ExpiredLeases, NOW + 1_000, 20)
            .unwrap()
            .is_empty());
        assert_eq!(s.renew_leases(W1, &[id[0]], NOW + 60_000).unwrap(), 1);
        assert_eq!(
            s.renew_leases(W2, &[id[0]], NOW + 60_000).unwrap(),
            0,
            "renewed another's job"
        );
        let rescued = s
            .rescue(RescueScope::ExpiredLeases, NOW + 31_000, 20)
            .unwrap();
        let by_id: Vec<(i64, JobState)> = rescued.iter().map(|r| (r.id, r.state)).collect();
        assert_eq!(by_id.len(), 2, "{rescued:?}");
        assert!(
            by_id.contains(&(id[1], JobState::Dead)),
            "no attempts left must be dead"
        );
        assert!(by_id.contains(&(id[2], JobState::Queued)));
        let j = s.job(id[2]).unwrap().unwrap();
        assert!(
            j.last_error.unwrap().contains(W2),
            "last_error must name the lost worker"
        );
        assert_eq!(s.runs(id[2]).unwrap()[0].outcome, RunOutcome::Rescued);
        // The late holder's outcome is stale now.
        let late = s
            .complete(&[attempt(&got[2], W2, NOW + 32_000).succeeded(None)])
            .unwrap();
        assert_eq!(late, vec![Applied::Stale]);
        // A worker known to be gone loses its jobs at once, lease or not.
        let gone = s
            .rescue(RescueScope::Workers(&[W1.to_string()]), NOW + 32_000, 20)
            .unwrap();
        assert_eq!(gone.iter().map(|r| r.id).collect::<Vec<_>>(), vec![id[0]]);
        assert_eq!(s.job(id[0]).unwrap().unwrap().state, JobState::Queued);
    });
}

#[test]
fn cancel_and_retry_follow_the_state_machine() {
    each(|s| {
        let mut keyed = job("noop");
        keyed.unique_key = Some("k".into());
        let id = inserted(s, &[job("noop"), job("noop"), keyed]);
        claim(s, W1, NOW, "default", 1); // id[0] runs
        let results = s.cancel(&[id[0], id[1], 999], NOW).unwrap();
        assert_eq!(
            results,
            vec![
                CancelResult::Requested,
                CancelResult::Cancelled,
                CancelResult::NotFound
            ]
        );
        assert_eq!(s.cancel_requests(W1).unwrap(), vec![id[0]]);
        assert!(s.cancel_requests(W2).unwrap().is_empty());
        assert_eq!(
            s.cancel(&[id[1]], NOW).unwrap(),
            vec![CancelResult::AlreadyFinal(JobState::Cancelled)]
        );

        // Retry: only dead or cancelled, attempts reset.
        assert_eq!(
            s.retry(&[id[2]], NOW).unwrap(),
            vec![RetryResult::WrongState(JobState::Queued)]
        );
        assert_eq!(
            s.retry(&[id[1], 999], NOW + 5).unwrap(),
            vec![RetryResult::Queued, RetryResult::NotFound]
        );
        let j = s.job(id[1]).unwrap().unwrap();
        assert_eq!(
            (j.state, j.attempts, j.run_at),
            (JobState::Queued, 0, NOW + 5)
        );

        // A dead job whose key is held by an active one stays dead.
        s.cancel(&[id[2]], NOW).unwrap();
        let mut again = job("noop");
        again.unique_key = Some("k".into());
        let holder = inserted(s, &[again])[0];
        assert_eq!(
            s.retry(&[id[2]], NOW).unwrap(),
            vec![RetryResult::UniqueKeyTaken(holder)]
        );
    });
}

#[test]
fn retry_dead_requeues_in_bulk_by_queue() {
    each(|s| {
        let mut jobs: Vec<NewJob> = (0..6).map(|_| job("noop")).collect();
        jobs[0].queue = "mail".into();
        inserted(s, &jobs);
        let mut got = claim(s, W1, NOW, "default", 10);
        got.extend(claim(s, W1, NOW, "mail", 10));
        let deaths: Vec<_> = got
            .iter()
            .map(|j| attempt(j, W1, NOW + 1).dead("boom".into()))
            .collect();
        s.complete(&deaths).unwrap();
        let mail = s.retry_dead(Some("mail"), NOW).unwrap();
        assert_eq!((mail.queued, mail.skipped_unique), (1, 0));
        let rest = s.retry_dead(None, NOW).unwrap();
        assert_eq!(rest.queued, 5);
        let dead = s
            .list(&ListFilter {
                state: Some(JobState::Dead),
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert!(dead.is_empty());
    });
}

/// Regression (PostgreSQL): two dead jobs sharing a unique_key that no live
/// job holds made the whole `retry --dead` fail on the unique index, keyless
/// jobs included. Each backend retries the older of the pair and leaves the
/// other dead, counted as skipped.
#[test]
fn retry_dead_with_two_dead_jobs_sharing_a_key_retries_one_and_the_rest() {
    each(|s| {
        // Dead jobs of one key one after another (a key is held by one live
        // job at a time), then a keyless one.
        let mut dead_ids = Vec::new();
        for _ in 0..2 {
            let mut keyed = job("noop");
            keyed.unique_key = Some("shared".into());
            dead_ids.push(inserted(s, &[keyed])[0]);
            let got = claim(s, W1, NOW, "default", 10);
            s.complete(&[attempt(&got[0], W1, NOW + 1).dead("boom".into())])
                .unwrap();
        }
        let keyless = inserted(s, &[job("noop")])[0];
        let got = claim(s, W1, NOW, "default", 10);
        s.complete(&[attempt(&got[0], W1, NOW + 1).dead("boom".into())])
            .unwrap();

        let retried = s.retry_dead(None, NOW + 2).unwrap();
        assert_eq!((retried.queued, retried.skipped_unique), (2, 1));
        let state = |s: &mut dyn Store, id| s.job(id).unwrap().unwrap().state;
        assert_eq!(state(s, dead_ids[0]), JobState::Queued);
        assert_eq!(state(s, dead_ids[1]), JobState::Dead);
        assert_eq!(state(s, keyless), JobState::Queued);
    });
}

#[test]
fn enqueue_with_a_taken_unique_key_reports_the_holder() {
    each(|s| {
        let mut a = job("noop");
        a.unique_key = Some("welcome:42".into());
        let results = s
            .enqueue(&[a.clone(), a.clone(), job("noop")], NOW)
            .unwrap();
        let first = results[0].id();
        assert_eq!(results[1], Enqueued::Duplicate(first));
        assert!(matches!(results[2], Enqueued::Inserted(_)));
        // Later, against the queued holder; ids keep their order.
        let later = s.enqueue(&[job("noop"), a.clone()], NOW).unwrap();
        assert!(matches!(later[0], Enqueued::Inserted(id) if id > results[2].id()));
        assert_eq!(later[1], Enqueued::Duplicate(first));
        // Once the holder finished, the key is free again.
        s.cancel(&[first], NOW).unwrap();
        assert!(matches!(
            s.enqueue(&[a], NOW).unwrap()[0],
            Enqueued::Inserted(id) if id != first
        ));
    });
}

#[test]
fn runs_are_tallied_by_outcome_after_an_id() {
    each(|s| {
        let start = s.last_run_id().unwrap();
        assert_eq!(
            s.tally_runs_after(start).unwrap(),
            jobd::store::RunTally {
                last_id: start,
                succeeded: 0,
                failed: 0,
                places: 0
            }
        );
        inserted(s, &(0..5).map(|_| job("noop")).collect::<Vec<_>>());
        let got = claim(s, W1, NOW, "default", 5);
        s.complete(&[
            attempt(&got[0], W1, NOW + 1).succeeded(None),
            attempt(&got[1], W1, NOW + 1).succeeded(None),
            attempt(&got[2], W1, NOW + 1).retry("x".into(), NOW + 1_000),
            attempt(&got[3], W1, NOW + 1).timed_out("timed out".into(), None),
        ])
        .unwrap();
        let tally = s.tally_runs_after(start).unwrap();
        assert_eq!((tally.succeeded, tally.failed), (2, 2));
        assert_eq!(tally.last_id, s.last_run_id().unwrap());
        s.complete(&[attempt(&got[4], W1, NOW + 2).dead("y".into())])
            .unwrap();
        let next = s.tally_runs_after(tally.last_id).unwrap();
        assert_eq!((next.succeeded, next.failed, next.places), (0, 1, 1));
    });
}

/// A place between two taken ones that holds no attempt (on PostgreSQL a
/// transaction not yet committed, or rolled back; here a pruned success) is
/// found, so the dashboard's count can look for it again.
#[test]
fn the_empty_places_between_attempts_are_listed() {
    each(|s| {
        let start = s.last_run_id().unwrap();
        inserted(s, &(0..4).map(|_| job("noop")).collect::<Vec<_>>());
        let got = claim(s, W1, NOW, "default", 4);
        // Each its own write, so each takes the next place.
        for (job, finished_at) in got.iter().zip([NOW + 10, NOW + 1, NOW + 2, NOW + 10]) {
            s.complete(&[attempt(job, W1, finished_at).succeeded(None)])
                .unwrap();
        }
        let last = s.last_run_id().unwrap();
        assert!(s.empty_places(start, last).unwrap().is_empty());
        let old = PruneCutoffs {
            succeeded: Some(NOW + 5),
            dead: None,
            cancelled: None,
        };
        assert_eq!(s.prune_batch(&old, 10).unwrap().jobs, 2);
        // The second and third places are empty now, and only they.
        let tally = s.tally_runs_after(start).unwrap();
        assert_eq!((tally.last_id, tally.places), (last, 2));
        let runs = s.runs_after(start, 10).unwrap();
        let first = runs[0].id;
        assert_eq!(runs[1].id, last);
        assert_eq!(
            s.empty_places(start, last).unwrap(),
            vec![(first + 1, last - 1)]
        );
        assert_eq!(s.empty_places(first, last - 1).unwrap(), vec![]);
        // An empty place right after `after` counts too.
        assert_eq!(
            s.empty_places(first, last).unwrap(),
            vec![(first + 1, last - 1)]
        );
        assert_eq!(
            s.empty_places(first + 1, last).unwrap(),
            vec![(first + 2, last - 1)]
        );
    });
}

/// A success whose commit went through but whose reply was lost is sent
/// again; when the same attempt number was snoozed before on the same
/// worker (a snooze does not count), the resend found the snooze's record
/// first and was reported stale (no `job.succeeded`, not counted).
#[test]
fn a_resent_success_after_a_snooze_of_the_same_attempt_is_written_not_stale() {
    each(|s| {
        let id = inserted(s, &[job("noop")])[0];
        let first = claim(s, W1, NOW, "default", 1);
        assert_eq!(
            s.complete(&[attempt(&first[0], W1, NOW + 1).snoozed(NOW + 2, "later".into())])
                .unwrap(),
            vec![Applied::Done]
        );
        let again = claim(s, W1, NOW + 3, "default", 1);
        assert_eq!((again[0].id, again[0].attempts), (id, first[0].attempts));
        let success = attempt(&again[0], W1, NOW + 4).succeeded(None);
        assert_eq!(
            s.complete(std::slice::from_ref(&success)).unwrap(),
            vec![Applied::Done]
        );
        assert_eq!(s.complete(&[success]).unwrap(), vec![Applied::Done]);
    });
}

/// A release gives the attempt number back, so the same worker can hold
/// the same attempt of a job again. A release whose reply was lost, sent
/// again after that new claim, passed the fence and queued the running
/// job (which could then run twice at once). The claim's start fences it.
#[test]
fn a_resent_release_does_not_move_the_next_claim_of_the_same_attempt() {
    each(|s| {
        let id = inserted(s, &[job("noop")])[0];
        let first = claim(s, W1, NOW, "default", 1);
        let release = attempt(&first[0], W1, NOW + 1).interrupted();
        assert_eq!(
            s.complete(std::slice::from_ref(&release)).unwrap(),
            vec![Applied::Done]
        );
        let again = claim(s, W1, NOW + 10, "default", 1);
        assert_eq!((again[0].id, again[0].attempts), (id, first[0].attempts));
        // The resend changes nothing: it was written before.
        assert_eq!(s.complete(&[release]).unwrap(), vec![Applied::Done]);
        let job = s.job(id).unwrap().unwrap();
        assert_eq!(
            (job.state, job.started_at),
            (JobState::Running, Some(NOW + 10))
        );
        // The new hold's own outcome still lands.
        let done = attempt(&again[0], W1, NOW + 11).succeeded(None);
        assert_eq!(s.complete(&[done]).unwrap(), vec![Applied::Done]);
        assert_eq!(s.job(id).unwrap().unwrap().state, JobState::Succeeded);
    });
}

#[test]
fn prune_deletes_old_final_jobs_and_their_runs_in_batches() {
    each(|s| {
        let id = inserted(s, &(0..7).map(|_| job("noop")).collect::<Vec<_>>());
        let got = claim(s, W1, NOW, "default", 6);
        succeed(s, &got);
        let cut = PruneCutoffs {
            succeeded: Some(NOW + 2),
            dead: Some(NOW + 2),
            cancelled: None,
        };
        let first = s.prune_batch(&cut, 4).unwrap();
        assert_eq!((first.jobs, first.runs), (4, 4));
        let second = s.prune_batch(&cut, 4).unwrap();
        assert_eq!(second.jobs, 2);
        assert_eq!(s.prune_batch(&cut, 4).unwrap().jobs, 0);
        // The queued job is never pruned; recent ones stay.
        assert_eq!(s.job(id[6]).unwrap().unwrap().state, JobState::Queued);
        let none = PruneCutoffs {
            succeeded: Some(NOW),
            dead: None,
            cancelled: None,
        };
        assert_eq!(s.prune_batch(&none, 10).unwrap().jobs, 0);
    });
}

#[test]
fn stats_count_ready_scheduled_running_finished_and_lag() {
    each(|s| {
        let mut jobs: Vec<NewJob> = (0..5).map(|_| job("noop")).collect();
        jobs[0].run_at = Some(NOW - 2_000);
        jobs[1].run_at = Some(NOW + 60_000);
        inserted(s, &jobs);
        let got = claim(s, W1, NOW - 1_000, "default", 1); // the oldest
        assert_eq!(got[0].run_at, NOW - 2_000);
        let two = claim(s, W1, NOW, "default", 2);
        s.complete(&[
            attempt(&two[0], W1, NOW + 100).succeeded(None),
            attempt(&two[1], W1, NOW + 300).dead("x".into()),
        ])
        .unwrap();
        let stats = s.stats(NOW + 1_000).unwrap();
        let q = &stats.queues[0];
        assert_eq!(q.queue, "default");
        assert_eq!((q.ready, q.scheduled, q.running), (1, 1, 1));
        assert_eq!(
            (q.succeeded_1m, q.dead_1m, q.succeeded_1h, q.dead_1h),
            (1, 1, 1, 1)
        );
        assert_eq!(q.lag_ms, 1_000);
        assert_eq!(q.p50_ms, Some(100));
        assert_eq!(q.p95_ms, Some(300));
        // Left queued: one at NOW and one at NOW + 60 s.
        assert_eq!(s.next_run_at(None, &Pool::ALL, NOW - 1).unwrap(), Some(NOW));
        assert_eq!(
            s.next_run_at(None, &Pool::ALL, NOW).unwrap(),
            Some(NOW + 60_000)
        );
        assert_eq!(s.next_run_at(None, &Pool::ALL, NOW + 60_000).unwrap(), None);
        assert_eq!(
            s.next_run_at(Some(&["mail".to_string()]), &Pool::ALL, 0)
                .unwrap(),
            None
        );
        // Asked of one pool, the other pool's jobs do not count.
        let hashing = NewJob {
            run_at: Some(NOW + 30_000),
            ..job("checksum")
        };
        s.enqueue(&[hashing], NOW).unwrap();
        assert_eq!(
            s.next_run_at(None, &[Pool::Cpu], NOW).unwrap(),
            Some(NOW + 30_000)
        );
        assert_eq!(
            s.next_run_at(None, &[Pool::Io], NOW).unwrap(),
            Some(NOW + 60_000)
        );
        assert_eq!(
            s.next_run_at(None, &Pool::ALL, NOW).unwrap(),
            Some(NOW + 30_000)
        );
        let backlog = s.backlog(None, NOW + 1_000).unwrap();
        assert_eq!(backlog.ready, 1);
        assert_eq!(backlog.lag_ms(NOW + 1_000), 1_000);
        // A paused queue's older job counts in its own backlog, not in the
        // backlog the daemon is behind on.
        let held = NewJob {
            queue: "held".into(),
            run_at: Some(NOW - 9_000),
            ..job("noop")
        };
        s.enqueue(&[held], NOW).unwrap();
        s.set_paused(&["held".to_string()], true, NOW).unwrap();
        assert_eq!(
            s.backlog(None, NOW + 1_000).unwrap().lag_ms(NOW + 1_000),
            10_000
        );
        let active = jobd::store::active_backlog(s, None, NOW + 1_000).unwrap();
        assert_eq!((active.ready, active.lag_ms(NOW + 1_000)), (1, 1_000));
        let named = ["held".to_string()];
        let active = jobd::store::active_backlog(s, Some(&named), NOW + 1_000).unwrap();
        assert_eq!((active.ready, active.lag_ms(NOW + 1_000)), (0, 0));
    });
}

#[test]
fn workers_register_heartbeat_and_leave() {
    each(|s| {
        let w = WorkerInfo {
            id: W1.into(),
            host: "host".into(),
            pid: 1,
            version: "0.1.0".into(),
            started_at: NOW,
            heartbeat_at: NOW,
            queues: "*".into(),
            running: 0,
            handlers: Vec::new(),
        };
        s.register_worker(&w).unwrap();
        let warm = jobd::job::HandlerProcess {
            name: "thumbnail".into(),
            pid: 4242,
            jobs: 17,
            rss_bytes: 31 << 20,
            started_at: NOW - 60_000,
        };
        assert!(s
            .heartbeat(W1, NOW + 5_000, 3, std::slice::from_ref(&warm))
            .unwrap());
        let all = s.workers().unwrap();
        // running is counted from the jobs it holds (none), not the beat's.
        assert_eq!((all[0].heartbeat_at, all[0].running), (NOW + 5_000, 0));
        assert_eq!(all[0].handlers, vec![warm]);
        s.deregister_worker(W1).unwrap();
        assert!(s.workers().unwrap().is_empty());
        // A beat of a daemon without a row says so, and writes none.
        assert!(!s.heartbeat(W1, NOW + 6_000, 0, &[]).unwrap());
        assert!(s.workers().unwrap().is_empty());
    });
}

#[test]
fn tail_reads_runs_in_write_order() {
    each(|s| {
        inserted(s, &[job("noop"), job("http")]);
        assert_eq!(s.last_run_id().unwrap(), 0);
        let got = claim(s, W1, NOW, "default", 2);
        s.complete(&[attempt(&got[0], W1, NOW + 1).succeeded(None)])
            .unwrap();
        let cursor = s.last_run_id().unwrap();
        s.complete(&[attempt(&got[1], W1, NOW + 2).retry("503".into(), NOW + 10)])
            .unwrap();
        let runs = s.runs_after(cursor, 10).unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(
            (runs[0].kind.as_str(), runs[0].outcome),
            ("http", RunOutcome::Retry)
        );
        let all = s.runs_after(0, 10).unwrap();
        assert_eq!(all.len(), 2);
        // By place, whichever part holds it (the success is its job row,
        // the retry a row of job_attempts); a place nobody took is absent.
        let among = s.runs_among(&[all[1].id, 999_999, all[0].id]).unwrap();
        let seen: Vec<(i64, RunOutcome)> = among.iter().map(|r| (r.id, r.outcome)).collect();
        assert_eq!(
            seen,
            vec![
                (all[0].id, RunOutcome::Succeeded),
                (all[1].id, RunOutcome::Retry)
            ]
        );
        assert!(s.runs_among(&[]).unwrap().is_empty());
    });
}

#[test]
fn a_cron_slot_is_enqueued_once_and_never_behind_the_last() {
    each(|store| {
        // A new schedule starts at its current slot, enqueueing nothing.
        assert_eq!(store.cron_start("tick", 5_000).unwrap(), Some(5_000));
        assert_eq!(store.cron_start("tick", 9_000).unwrap(), Some(5_000));
        let job = job("noop");
        assert!(store
            .cron_enqueue("tick", 5_000, &job, NOW)
            .unwrap()
            .is_none());
        let first = store.cron_enqueue("tick", 6_000, &job, NOW).unwrap();
        let first = first.expect("the next slot is enqueued").id();
        // The same slot again (another daemon), or an older one: nothing.
        assert!(store
            .cron_enqueue("tick", 6_000, &job, NOW)
            .unwrap()
            .is_none());
        assert!(store
            .cron_enqueue("tick", 5_500, &job, NOW)
            .unwrap()
            .is_none());
        let rows = store.cron_rows().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].last_slot, Some(6_000));
        assert_eq!(rows[0].last_job_id, Some(first));
        assert_eq!(rows[0].last_job_state, Some(JobState::Queued));
        // A schedule with no row yet gets one on its first enqueue.
        assert!(store.cron_enqueue("other", 1, &job, NOW).unwrap().is_some());
        assert_eq!(store.cron_rows().unwrap().len(), 2);
    });
}

/// A cancel requested while an attempt ran wins over whatever the attempt
/// ended in, in the fenced write itself: retry, timeout, dead and an
/// interruption all end `cancelled` (attempt record `cancelled`, attempts
/// not given back); a success stays `succeeded`, because the work happened.
#[test]
fn a_cancel_survives_a_retryable_failure() {
    each(|s| {
        let id = inserted(
            s,
            &[
                job("noop"),
                job("noop"),
                job("noop"),
                job("noop"),
                job("noop"),
            ],
        );
        let got = claim(s, W1, NOW, "default", 5);
        // The request lands after the daemon last looked: only the write sees it.
        for job in &got {
            assert_eq!(
                s.cancel(&[job.id], NOW).unwrap(),
                vec![CancelResult::Requested]
            );
        }
        let applied = s
            .complete(&[
                attempt(&got[0], W1, NOW + 1).retry("exit status 75".into(), NOW + 4_000),
                attempt(&got[1], W1, NOW + 1).timed_out("timed out".into(), Some(NOW + 4_000)),
                attempt(&got[2], W1, NOW + 1).dead("exit status 1".into()),
                attempt(&got[3], W1, NOW + 1).interrupted(),
                attempt(&got[4], W1, NOW + 1).succeeded(None),
            ])
            .unwrap();
        assert_eq!(
            applied,
            vec![
                Applied::Cancelled,
                Applied::Cancelled,
                Applied::Cancelled,
                Applied::Cancelled,
                Applied::Done
            ]
        );
        for (i, want) in [
            RunOutcome::Retry,
            RunOutcome::Timeout,
            RunOutcome::Dead,
            RunOutcome::Interrupted,
        ]
        .iter()
        .enumerate()
        {
            let job = s.job(id[i]).unwrap().unwrap();
            assert_eq!(job.state, JobState::Cancelled, "job {i} after {want}");
            assert_eq!(job.attempts, 1, "job {i}: the attempt counts");
            assert_eq!(job.finished_at, Some(NOW + 1));
            assert_eq!(job.run_at, got[i].run_at, "job {i} keeps its run_at");
            assert_eq!(
                job.last_error.as_deref(),
                Some("cancelled by an operator while running")
            );
            let runs = s.runs(id[i]).unwrap();
            assert_eq!(runs.len(), 1);
            assert_eq!(runs[0].outcome, RunOutcome::Cancelled, "job {i}");
        }
        // What the attempt said stays in its record.
        assert_eq!(
            s.runs(id[0]).unwrap()[0].error.as_deref(),
            Some("exit status 75")
        );
        let done = s.job(id[4]).unwrap().unwrap();
        assert_eq!(done.state, JobState::Succeeded);
        assert_eq!(s.runs(id[4]).unwrap()[0].outcome, RunOutcome::Succeeded);
        // Nothing is claimable again.
        assert!(claim(s, W1, NOW + 10_000, "default", 5).is_empty());
    });
}

/// Regression: on SQLite a job enqueued after `prune` took the id of the
/// newest pruned job. Ids never repeat in a database, on either backend.
#[test]
fn job_ids_never_repeat_after_prune() {
    each(|s| {
        let ids = inserted(s, &(0..3).map(|_| job("noop")).collect::<Vec<_>>());
        let got = claim(s, W1, NOW, "default", 3);
        succeed(s, &got);
        let cut = PruneCutoffs {
            succeeded: Some(NOW + 2),
            dead: None,
            cancelled: None,
        };
        assert_eq!(s.prune_batch(&cut, 10).unwrap().jobs, 3);
        let next = inserted(s, &[job("noop")]);
        assert!(next[0] > ids[2], "id {} reused (had {ids:?})", next[0]);
    });
}

/// Each database has an id of its own, the same on every read.
#[test]
fn a_database_has_a_stable_random_id_of_its_own() {
    let mut seen = HashSet::new();
    for round in 0..2 {
        for (name, mut store, _guard) in backends() {
            let id = store.database_id().unwrap();
            assert_eq!(id.len(), 12, "{name}: {id}");
            assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{name}: {id}");
            assert_eq!(store.database_id().unwrap(), id, "{name}");
            assert!(seen.insert(id.clone()), "{name} round {round}: {id} twice");
        }
    }
}

/// Regression: `stats` showed a daemon RUNNING 128 (its last heartbeat's
/// figure) while every queue showed 0 running. A daemon's running count is
/// now read from the jobs, as the queues' is.
#[test]
fn a_daemons_running_count_is_the_queues_running_count() {
    each(|s| {
        s.register_worker(&WorkerInfo {
            id: W1.into(),
            host: "host".into(),
            pid: 1,
            version: "test".into(),
            started_at: NOW,
            heartbeat_at: NOW,
            queues: "*".into(),
            running: 0,
            handlers: Vec::new(),
        })
        .unwrap();
        inserted(s, &(0..5).map(|_| job("noop")).collect::<Vec<_>>());
        let got = claim(s, W1, NOW, "default", 3);
        // The heartbeat's own figure is stale on purpose.
        assert!(s.heartbeat(W1, NOW, 128, &[]).unwrap());
        let stats = s.stats(NOW).unwrap();
        let queued_running: u64 = stats.queues.iter().map(|q| q.running).sum();
        assert_eq!(queued_running, 3);
        assert_eq!(stats.workers[0].running, 3);
        succeed(s, &got);
        let stats = s.stats(NOW + 2).unwrap();
        assert_eq!(stats.workers[0].running, 0);
    });
}

#[test]
fn list_pages_newest_first_and_filters_by_state_queue_and_kind() {
    each(|s| {
        let mut jobs: Vec<NewJob> = (0..5).map(|_| job("noop")).collect();
        jobs[1].queue = "mail".into();
        jobs[2] = job("http");
        let id = inserted(s, &jobs);
        claim(s, W1, NOW, "mail", 1);
        let list = |s: &mut dyn Store, filter: ListFilter| -> Vec<i64> {
            s.list(&filter).unwrap().iter().map(|j| j.id).collect()
        };
        let first = list(
            s,
            ListFilter {
                limit: 2,
                ..Default::default()
            },
        );
        assert_eq!(first, vec![id[4], id[3]], "newest first");
        let next = list(
            s,
            ListFilter {
                limit: 10,
                before: Some(first[1]),
                ..Default::default()
            },
        );
        assert_eq!(next, vec![id[2], id[1], id[0]], "the next page");
        let queued = list(
            s,
            ListFilter {
                state: Some(JobState::Queued),
                limit: 10,
                ..Default::default()
            },
        );
        assert_eq!(queued, vec![id[4], id[3], id[2], id[0]]);
        let mail = list(
            s,
            ListFilter {
                queue: Some("mail".into()),
                limit: 10,
                ..Default::default()
            },
        );
        assert_eq!(mail, vec![id[1]]);
        let http = list(
            s,
            ListFilter {
                kind: Some("http".into()),
                limit: 10,
                ..Default::default()
            },
        );
        assert_eq!(http, vec![id[2]]);
    });
}

/// What an operator reads of a rescued job: which attempt was lost, on
/// which worker, and why (its lease ran out, or its process is gone); with
/// no attempts left it is dead, and the reason is the same.
#[test]
fn a_rescued_jobs_last_error_says_which_attempt_was_lost_where_and_why() {
    each(|s| {
        let mut last = job("noop");
        last.max_attempts = Some(1);
        let id = inserted(s, &[last, job("noop")]);
        claim(s, W1, NOW, "default", 1);
        claim(s, W2, NOW, "default", 1);
        s.rescue(RescueScope::ExpiredLeases, NOW + 31_000, 20)
            .unwrap();
        let dead = s.job(id[0]).unwrap().unwrap();
        assert_eq!(dead.state, JobState::Dead);
        assert_eq!(
            dead.last_error.as_deref(),
            Some("attempt 1 was lost: worker host:1:1 stopped renewing its lease")
        );
        let requeued = s.job(id[1]).unwrap().unwrap();
        assert_eq!(requeued.state, JobState::Queued);
        claim(s, W2, NOW + 32_000, "default", 1);
        s.rescue(RescueScope::Workers(&[W2.to_string()]), NOW + 33_000, 20)
            .unwrap();
        assert_eq!(
            s.job(id[1]).unwrap().unwrap().last_error.as_deref(),
            Some("attempt 2 was lost: worker host:2:2 is gone (its process no longer runs)")
        );
        let runs = s.runs(id[1]).unwrap();
        assert_eq!(
            runs.iter().map(|r| r.outcome).collect::<Vec<_>>(),
            vec![RunOutcome::Rescued, RunOutcome::Rescued]
        );
    });
}

/// A job's result is JSON, stored as text on SQLite and as `jsonb` on
/// PostgreSQL: what comes back is the same JSON value on both.
#[test]
fn a_result_reads_back_as_the_same_json_on_either_backend() {
    let written =
        r#"{"status":200,"body":"caf\u00e9 \"quoted\"","nested":{"b":[1,2.5,null],"a":true}}"#;
    each(|s| {
        let id = inserted(s, &[job("noop")]);
        let got = claim(s, W1, NOW, "default", 1);
        s.complete(&[attempt(&got[0], W1, NOW + 1).succeeded(Some(written.into()))])
            .unwrap();
        let read = s.job(id[0]).unwrap().unwrap().result.expect("a result");
        let parse = |t: &str| serde_json::from_str::<serde_json::Value>(t).unwrap();
        assert_eq!(parse(&read), parse(written), "read back as {read}");
    });
}

/// Three connections claim one rate-limited key as fast as they can, on
/// each backend, with the real clock: no second ever holds more than the
/// rate's count of starts, and the window is used.
#[test]
fn a_keys_rate_holds_across_claimers_in_any_window() {
    let rules = jobd::keys::KeyRules {
        limits: vec![jobd::keys::KeyLimit::new(
            "paced",
            "paced",
            None,
            Some(jobd::keys::KeyRate {
                count: 10,
                per: Duration::from_secs(1),
            }),
        )
        .unwrap()],
        ..Default::default()
    };
    let rules = std::sync::Arc::new(rules);
    for (name, open, _guard) in reopenable("rate") {
        let mut store = open();
        let mut paced = job("noop");
        paced.limit_key = Some("paced".into());
        store
            .enqueue(&vec![paced; 35], jobd::job::now_ms())
            .unwrap();
        let handles: Vec<_> = ["w1", "w2", "w3"]
            .into_iter()
            .map(|worker| {
                let (open, rules) = (open.clone(), rules.clone());
                std::thread::spawn(move || {
                    let mut s = open();
                    let mut starts = Vec::new();
                    let until = std::time::Instant::now() + Duration::from_millis(3_300);
                    while std::time::Instant::now() < until {
                        let now = jobd::job::now_ms();
                        let got = s
                            .claim(&Claim {
                                worker,
                                now,
                                lease_until: now + 30_000,
                                requests: &[ClaimRequest::any("default", 4)],
                                keys: &rules,
                            })
                            .unwrap();
                        starts.extend(got.iter().map(|j| j.started_at));
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    starts
                })
            })
            .collect();
        let mut starts: Vec<i64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        starts.sort_unstable();
        assert!(starts.len() >= 30, "{name}: {} starts", starts.len());
        for (i, &s) in starts.iter().enumerate() {
            let within = starts[i..].iter().take_while(|&&t| t < s + 1_000).count();
            assert!(
                within <= 10,
                "{name}: {within} in the second from {s}: {starts:?}"
            );
        }
    }
}

/// A fair claim takes one job of each key in rotation from the key after
/// the one served last (jobs without a key as one more key at the end),
/// a higher priority first, and each pool's jobs only; with fewer keys
/// than the claim wants, their next jobs fill it.
#[test]
fn a_fair_claim_rotates_across_keys_with_priority_first() {
    each(|s| {
        let keyed = |key: Option<&str>, kind: &str, priority: i64| {
            let mut j = job(kind);
            j.limit_key = key.map(str::to_string);
            j.priority = priority;
            j
        };
        let mut jobs: Vec<NewJob> = vec![keyed(Some("k:a"), "noop", 0); 10];
        jobs.extend(vec![keyed(Some("k:b"), "noop", 0); 3]);
        jobs.extend(vec![keyed(Some("k:c"), "noop", 0); 2]);
        jobs.extend(vec![keyed(None, "noop", 0); 2]);
        jobs.push(keyed(Some("k:d"), "noop", 5));
        jobs.push(keyed(Some("k:a"), "exec", 0));
        let id = inserted(s, &jobs);
        // Built on demand, by the first daemon with a fair queue.
        assert!(s.ensure_key_index().unwrap());
        assert!(!s.ensure_key_index().unwrap());
        let (a, b, c, u, d, exec) = (
            &id[0..10],
            &id[10..13],
            &id[13..15],
            &id[15..17],
            id[17],
            id[18],
        );
        let fair = |s: &mut dyn Store, after: &str, cpu: usize, io: usize, limit: usize| {
            let request = ClaimRequest {
                queue: "default".into(),
                limit,
                cpu,
                io,
                fair_after: Some(after.into()),
                fleet: None,
            };
            let got = claim_with(s, W1, NOW, request);
            // Which jobs, not their order: a claim returns them in claim order.
            let mut got = ids(&got);
            got.sort();
            got
        };
        let set = |mut v: Vec<i64>| {
            v.sort();
            v
        };
        // Priority first, then a, b, c, d's turn taken, the unkeyed last.
        assert_eq!(fair(s, "", 0, 3, 3), set(vec![d, a[0], b[0]]));
        // From after b: c, then round to a (not a and b, as from the start).
        assert_eq!(fair(s, "k:b", 0, 2, 2), set(vec![c[0], a[1]]));
        // The CPU pool's claim sees only its own jobs.
        assert_eq!(fair(s, "k:c", 1, 0, 1), vec![exec]);
        // Four groups for a claim of eight: each one's next jobs in turn
        // (b, c, a, unkeyed, then b, a, unkeyed, then a).
        assert_eq!(
            fair(s, "k:a", 0, 8, 8),
            set(vec![b[1], c[1], a[2], u[0], b[2], a[3], u[1], a[4]])
        );
    });
}

/// A fleet-wide queue limit counts every claimer's jobs: two daemons
/// (two workers on one store) asking for ten each get two between them
/// under `concurrency = 2`, a third after one ends; under a rate of three
/// an hour three start and the queue's row says when it opens again.
#[test]
fn a_fleet_wide_queue_limit_counts_every_daemons_jobs() {
    each(|s| {
        let mut jobs: Vec<NewJob> = (0..10).map(|_| job("noop")).collect();
        for j in jobs.iter_mut().skip(5) {
            j.queue = "paced".into();
        }
        inserted(s, &jobs);
        let ask = |s: &mut dyn Store, worker: &str, queue: &str, limit: jobd::keys::Limit| {
            let mut request = ClaimRequest::any(queue, 10);
            request.fleet = Some(limit);
            claim_with(s, worker, NOW, request)
        };
        let two = jobd::keys::Limit {
            concurrency: Some(2),
            rate: None,
        };
        let first = ask(s, W1, "default", two);
        assert_eq!(first.len(), 2);
        assert!(ask(s, W2, "default", two).is_empty());
        succeed(s, &first[..1]);
        assert_eq!(ask(s, W2, "default", two).len(), 1);

        let three_an_hour = jobd::keys::Limit {
            concurrency: None,
            rate: Some(jobd::keys::KeyRate {
                count: 3,
                per: Duration::from_secs(3_600),
            }),
        };
        assert_eq!(ask(s, W1, "paced", three_an_hour).len(), 3);
        assert!(ask(s, W2, "paced", three_an_hour).is_empty());
        let keys = s.keys(NOW, false).unwrap();
        let queue = keys
            .iter()
            .find(|k| k.key == "jobd:queue:paced")
            .expect("the queue's rate state");
        assert_eq!(queue.closed_until, NOW + 3_600_000);
        assert_eq!(queue.starts, vec![NOW; 3]);
    });
}
