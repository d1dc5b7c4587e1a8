//! The bare claim + complete loop, the yardstick for jobd's SQLite store,
//! and the variants between it and jobd that say where the store's time
//! goes (`BENCH_ONLY=bisect` in the daemon benchmark).
//!
//! The bare loop: rusqlite on a fresh file with jobd's pragmas (WAL,
//! `synchronous = NORMAL`, `temp_store = MEMORY`); a `jobs` table with the
//! contract's columns only (no CHECK, not STRICT, no AUTOINCREMENT), the
//! ready index `(queue, priority DESC, run_at, id) WHERE state = 'queued'`,
//! a `job_runs` table with no index, no triggers. Each batch: one
//! `BEGIN IMMEDIATE` transaction claims 64 with one
//! `UPDATE … WHERE id IN (SELECT … LIMIT 64) RETURNING`, a second completes
//! them, each with a fenced `UPDATE` (id, state, worker, attempts) and a
//! `job_runs` insert. Statements are prepared once (the cache).

use std::path::Path;
use std::time::Instant;

use rusqlite::{params, Connection};

use jobd::job::now_ms;

use super::WORKER;

/// The contract's columns of `jobs`.
macro_rules! contract_columns {
    () => {
        "id INTEGER PRIMARY KEY, queue TEXT NOT NULL DEFAULT 'default', kind TEXT NOT NULL,
    payload TEXT NOT NULL DEFAULT '{}', priority INTEGER NOT NULL DEFAULT 0,
    run_at INTEGER NOT NULL, max_attempts INTEGER, timeout_ms INTEGER, unique_key TEXT,
    state TEXT NOT NULL DEFAULT 'queued', attempts INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL, started_at INTEGER, finished_at INTEGER,
    lease_until INTEGER, worker TEXT, last_error TEXT, result TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0"
    };
}

/// The contract's columns, nothing else.
const BARE_JOBS: &str = concat!("CREATE TABLE jobs (", contract_columns!(), ");");

/// The contract's columns and jobd's others (limit keys, flows, progress,
/// snoozes, a success's place), without their CHECK rules: the row width
/// alone.
const WIDE_JOBS: &str = concat!(
    "CREATE TABLE jobs (",
    contract_columns!(),
    ", limit_key TEXT, parents TEXT,
    run_always INTEGER NOT NULL DEFAULT 0, waiting_for INTEGER NOT NULL DEFAULT 0,
    has_children INTEGER NOT NULL DEFAULT 0, batch TEXT, callback_for TEXT, sequence TEXT,
    progress TEXT, snoozes INTEGER NOT NULL DEFAULT 0, seq_pos INTEGER, run_id INTEGER);"
);

const BARE_READY: &str =
    "CREATE INDEX jobs_ready ON jobs (queue, priority DESC, run_at, id) WHERE state = 'queued';";

const BARE_RUNS: &str = "CREATE TABLE job_runs (
    id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL, attempt INTEGER NOT NULL,
    worker TEXT NOT NULL, queue TEXT NOT NULL, kind TEXT NOT NULL,
    started_at INTEGER NOT NULL, finished_at INTEGER NOT NULL, outcome TEXT NOT NULL,
    error TEXT, duration_ms INTEGER NOT NULL);";

/// The bare claim.
const BARE_CLAIM: &str = "UPDATE jobs SET state = 'running', attempts = attempts + 1, \
     started_at = ?1, lease_until = ?2, worker = ?3 \
     WHERE id IN (SELECT id FROM jobs WHERE state = 'queued' AND queue = ?4 AND run_at <= ?1 \
                  ORDER BY priority DESC, run_at, id LIMIT 64) \
     RETURNING id, queue, kind, payload, priority, run_at, max_attempts, timeout_ms, attempts, \
     started_at";

/// The claim over jobd's ready index: its pool test, as jobd's plain
/// claim spells it for the IO pool.
const POOL_CLAIM: &str = "UPDATE jobs SET state = 'running', attempts = attempts + 1, \
     started_at = ?1, lease_until = ?2, worker = ?3 \
     WHERE id IN (SELECT id FROM jobs WHERE state = 'queued' AND queue = ?4 \
                  AND (kind = 'checksum' OR kind = 'compress' OR kind = 'exec') = 0 \
                  AND run_at <= ?1 ORDER BY priority DESC, run_at, id LIMIT 64) \
     RETURNING id, queue, kind, payload, priority, run_at, max_attempts, timeout_ms, attempts, \
     started_at";

/// jobd's claim statement (`claim_pool` in src/store/sqlite/mod.rs, IO
/// pool, limit 64), copied.
const JOBD_CLAIM: &str = "UPDATE jobs SET state = 'running', attempts = attempts + 1, \
     started_at = ?1, finished_at = NULL, lease_until = ?2, worker = ?3 \
     WHERE state = 'queued' AND id IN ( \
         SELECT id FROM jobs \
         WHERE state = 'queued' AND queue = ?4 \
           AND (kind = 'checksum' OR kind = 'compress' OR kind = 'exec') = 0 AND run_at <= ?1 \
           AND NOT EXISTS (SELECT 1 FROM queues WHERE name = ?4 AND paused = 1) \
         ORDER BY priority DESC, run_at, id LIMIT 64) \
     RETURNING id, queue, kind, payload, priority, run_at, max_attempts, timeout_ms, attempts, \
     started_at, limit_key, parents, callback_for, snoozes";

const BARE_COMPLETE: &str = "UPDATE jobs SET state = 'succeeded', finished_at = ?1, \
     lease_until = NULL, result = NULL \
     WHERE id = ?2 AND state = 'running' AND worker = ?3 AND attempts = ?4";

const BARE_RUN: &str = "INSERT INTO job_runs (job_id, attempt, worker, queue, kind, started_at, \
     finished_at, outcome, error, duration_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'succeeded', \
     NULL, ?8)";

fn values_list(rows: usize, columns: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    vec![row; rows].join(", ")
}

/// A claimed job as a worker needs it.
struct Taken {
    id: i64,
    queue: String,
    kind: String,
    attempts: i64,
    started_at: i64,
}

/// Opens `path` afresh with jobd's pragmas.
fn connect(path: &Path) -> Connection {
    for suffix in ["", "-wal", "-shm"] {
        std::fs::remove_file(format!("{}{suffix}", path.display())).ok();
    }
    let conn = Connection::open(path).unwrap();
    conn.set_prepared_statement_cache_capacity(128);
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA temp_store = MEMORY;")
        .unwrap();
    conn
}

/// Inserts `n` queued noop jobs, as `NewJob::new("noop")` has them.
fn fill(conn: &Connection, n: usize) {
    let now = now_ms();
    conn.execute(
        "INSERT INTO jobs (queue, kind, payload, priority, run_at, created_at) \
         SELECT 'default', 'noop', '{}', 0, ?1, ?1 FROM \
         (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?2) \
          SELECT i FROM n)",
        params![now, n as i64],
    )
    .unwrap();
}

/// How a variant completes a batch.
#[derive(Clone, Copy)]
enum Complete {
    /// A fenced UPDATE and a `job_runs` insert per job.
    PerRow,
    /// jobd's statements: one multi-row UPDATE … FROM (VALUES …) and one
    /// multi-row insert per batch.
    Jobd,
}

/// This thread's CPU time: what other sessions on a shared machine take
/// from the wall clock does not count in it.
pub fn thread_cpu() -> std::time::Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    std::time::Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Jobs per second of wall time, and per second of this thread's CPU time.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    pub wall: f64,
    pub cpu: f64,
}

/// Claims and completes until `count` jobs are done.
fn drive(conn: &mut Connection, claim: &str, complete: Complete, count: usize) -> Rate {
    let started = Instant::now();
    let cpu = thread_cpu();
    let mut done = 0;
    while done < count {
        let now = now_ms();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        let jobs: Vec<Taken> = tx
            .prepare_cached(claim)
            .unwrap()
            .query_map(params![now, now + 30_000, WORKER, "default"], |r| {
                let _payload: String = r.get(3)?;
                let _limits: (i64, i64, Option<i64>, Option<i64>) =
                    (r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?);
                Ok(Taken {
                    id: r.get(0)?,
                    queue: r.get(1)?,
                    kind: r.get(2)?,
                    attempts: r.get(8)?,
                    started_at: r.get(9)?,
                })
            })
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        tx.commit().unwrap();
        if jobs.is_empty() {
            break;
        }
        let finished = now_ms();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        match complete {
            Complete::PerRow => {
                let mut update = tx.prepare_cached(BARE_COMPLETE).unwrap();
                let mut insert = tx.prepare_cached(BARE_RUN).unwrap();
                for j in &jobs {
                    let moved = update
                        .execute(params![finished, j.id, WORKER, j.attempts])
                        .unwrap();
                    assert_eq!(moved, 1);
                    insert
                        .execute(params![
                            j.id,
                            j.attempts,
                            WORKER,
                            j.queue,
                            j.kind,
                            j.started_at,
                            finished,
                            finished - j.started_at
                        ])
                        .unwrap();
                }
            }
            Complete::Jobd => {
                // jobd's completion: a success is its job row (`run_id`),
                // no attempt row.
                use rusqlite::types::Value;
                let mut args = Vec::with_capacity(jobs.len() * 12);
                for j in &jobs {
                    args.extend([
                        Value::Integer(j.id),
                        Value::Text(WORKER.into()),
                        Value::Integer(j.attempts),
                        Value::Text("succeeded".into()),
                        Value::Integer(finished),
                        Value::Null,
                        Value::Null,
                        Value::Null,
                        Value::Integer(0),
                        Value::Integer(0),
                        Value::Integer(j.id),
                        Value::Integer(j.started_at),
                    ]);
                }
                let moved = tx
                    .prepare_cached(&jobd::store::sqlite::complete_sql(jobs.len()))
                    .unwrap()
                    .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, i64>(0))
                    .unwrap()
                    .count();
                assert_eq!(moved, jobs.len());
            }
        }
        tx.commit().unwrap();
        done += jobs.len();
    }
    assert_eq!(done, count, "the loop ran out of jobs");
    Rate {
        wall: done as f64 / started.elapsed().as_secs_f64(),
        cpu: done as f64 / (thread_cpu() - cpu).as_secs_f64(),
    }
}

/// The bare loop over `count` jobs on a fresh `path`; jobs/s.
pub fn bare(path: &Path, count: usize) -> Rate {
    let mut conn = connect(path);
    conn.execute_batch(&format!("{BARE_JOBS}{BARE_READY}{BARE_RUNS}"))
        .unwrap();
    fill(&conn, count);
    drive(&mut conn, BARE_CLAIM, Complete::PerRow, count)
}

/// One step between the bare loop and jobd's store.
pub struct Step {
    pub name: &'static str,
    /// jobd's schema objects (names in `sqlite_master`) it keeps.
    keep: &'static [&'static str],
    /// A jobd-made file (migrated, its other objects dropped), or a
    /// hand-made table (`BARE_JOBS` or `WIDE_JOBS`).
    table: Table,
    claim: &'static str,
    complete: Complete,
}

#[derive(Clone, Copy)]
enum Table {
    Bare,
    Wide,
    Jobd,
}

/// jobd's indexes on `jobs` besides the ready index.
const RUNNING: &[&str] = &["jobs_running"];
const FINISHED: &[&str] = &["jobs_succeeded", "jobs_dead", "jobs_cancelled"];
const OTHERS: &[&str] = &[
    "jobs_unique_key",
    "jobs_running_key",
    "jobs_batch",
    "jobs_sequence_live",
];
/// The batch counters' trigger on a change of state (two before version
/// 16: `jobs_batch_ended`, `jobs_batch_reopened`).
const BATCH_TRIGGERS: &[&str] = &[
    "jobs_batch_moved",
    "jobs_batch_ended",
    "jobs_batch_reopened",
];

/// The steps, each adding one of jobd's pieces to the one before: the
/// schema's columns, rules and indexes, then jobd's statements, then the
/// triggers a change of state fires (measured under jobd's statements,
/// which run each once per batch, not once per job).
pub fn steps() -> Vec<Step> {
    fn keep(parts: &[&[&'static str]]) -> &'static [&'static str] {
        Box::leak(parts.concat().into_boxed_slice())
    }
    let ready: &[&str] = &["jobs_ready"];
    let runs: &[&str] = &["job_attempts"];
    let indexes = keep(&[ready, RUNNING, FINISHED, OTHERS, runs]);
    // jobd's completion puts a success's place in `jobs.run_id`, indexed.
    let completed = keep(&[indexes, &["jobs_run"]]);
    let all: &[&str] = &["*"];
    let step = |name, keep, table, claim, complete| Step {
        name,
        keep,
        table,
        claim,
        complete,
    };
    use Complete::*;
    vec![
        step("bare", &[][..], Table::Bare, BARE_CLAIM, PerRow),
        step(
            "+ jobd's extra columns (row width)",
            &[],
            Table::Wide,
            BARE_CLAIM,
            PerRow,
        ),
        step(
            "+ STRICT, CHECKs, AUTOINCREMENT (jobd's table)",
            &[],
            Table::Jobd,
            BARE_CLAIM,
            PerRow,
        ),
        step(
            "+ pool expression in the ready index",
            ready,
            Table::Jobd,
            POOL_CLAIM,
            PerRow,
        ),
        step(
            "+ jobs_running",
            keep(&[ready, RUNNING]),
            Table::Jobd,
            POOL_CLAIM,
            PerRow,
        ),
        step(
            "+ jobs_succeeded, _dead, _cancelled",
            keep(&[ready, RUNNING, FINISHED]),
            Table::Jobd,
            POOL_CLAIM,
            PerRow,
        ),
        step(
            "+ unique_key, running_key, batch, sequence_live",
            keep(&[ready, RUNNING, FINISHED, OTHERS]),
            Table::Jobd,
            POOL_CLAIM,
            PerRow,
        ),
        step(
            "+ jobd's job_attempts (CHECK, job_attempts_job)",
            indexes,
            Table::Jobd,
            POOL_CLAIM,
            PerRow,
        ),
        step(
            "+ jobd's claim statement",
            indexes,
            Table::Jobd,
            JOBD_CLAIM,
            PerRow,
        ),
        step(
            "+ jobd's completion statements (a success in its job row, jobs_run)",
            completed,
            Table::Jobd,
            JOBD_CLAIM,
            Jobd,
        ),
        step(
            "+ batch triggers (UPDATE OF state)",
            keep(&[completed, BATCH_TRIGGERS]),
            Table::Jobd,
            JOBD_CLAIM,
            Jobd,
        ),
        step(
            "+ flow triggers, the rest (jobd's schema)",
            all,
            Table::Jobd,
            JOBD_CLAIM,
            Jobd,
        ),
    ]
}

/// Runs `step` over `count` jobs on a fresh `path`; jobs/s.
pub fn run_step(step: &Step, path: &Path, count: usize) -> Rate {
    let mut conn = match step.table {
        Table::Bare | Table::Wide => {
            let conn = connect(path);
            let table = if matches!(step.table, Table::Bare) {
                BARE_JOBS
            } else {
                WIDE_JOBS
            };
            conn.execute_batch(&format!("{table}{BARE_READY}{BARE_RUNS}"))
                .unwrap();
            conn
        }
        Table::Jobd => jobd_file(path, step.keep),
    };
    fill(&conn, count);
    drive(&mut conn, step.claim, step.complete, count)
}

/// A file migrated by jobd, then stripped to the objects in `keep` ("*":
/// all): indexes and triggers on `jobs` dropped, `job_runs` made bare
/// unless kept, the ready index made bare unless kept.
fn jobd_file(path: &Path, keep: &[&str]) -> Connection {
    drop(connect(path));
    drop(super::open(path));
    let conn = connect_existing(path);
    if keep == ["*"] {
        return conn;
    }
    let objects: Vec<(String, String)> = conn
        .prepare(
            "SELECT type, name FROM sqlite_master WHERE tbl_name = 'jobs' \
             AND (type = 'index' OR type = 'trigger') AND sql IS NOT NULL",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let mut sql = String::new();
    for (kind, name) in objects {
        if !keep.contains(&name.as_str()) {
            sql.push_str(&format!("DROP {} {name};\n", kind.to_uppercase()));
        }
    }
    if !keep.contains(&"jobs_ready") {
        sql.push_str(BARE_READY);
    }
    // jobd's attempt rows are `job_attempts`, behind the view `job_runs`:
    // a step that keeps them writes there under the view's name.
    sql.push_str("DROP VIEW job_runs;");
    if keep.contains(&"job_attempts") {
        sql.push_str("ALTER TABLE job_attempts RENAME TO job_runs;");
    } else {
        sql.push_str("DROP TABLE job_attempts;");
        sql.push_str(BARE_RUNS);
    }
    conn.execute_batch(&sql).unwrap();
    conn
}

fn connect_existing(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.set_prepared_statement_cache_capacity(128);
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA temp_store = MEMORY;",
    )
    .unwrap();
    conn
}
