//! [`Store`] on one SQLite file in WAL mode.
//!
//! jobd's own connections use `synchronous = NORMAL`: in WAL mode a power cut
//! can then undo only jobd's latest claims and completions, which at-least-once
//! delivery already covers; clients keep whatever setting they choose for
//! their inserts. Every write is one short `BEGIN IMMEDIATE` transaction so a
//! client with a busy timeout of a second never sees `database is locked`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{
    params, params_from_iter, Connection, ErrorCode, OpenFlags, OptionalExtension, Row,
};

use super::schema::{MIGRATIONS, SCHEMA_VERSION};
use super::CPU_KIND_TEST;
use super::{
    Applied, Backlog, BulkRetry, CancelResult, Claim, CronRow, Enqueued, Held, JobRun, ListFilter,
    PruneCutoffs, Pruned, QueueStats, RescueScope, Rescued, Result, RetryResult, Stats, Store,
    StoreError, WorkerInfo,
};
use crate::job::{Claimed, Completion, Job, JobState, NewJob, Pool, RunOutcome, Transition};

/// Prepared statements kept per connection; enough for every named query.
const STATEMENT_CACHE: usize = 128;

use super::{
    cancelled_instead, earliest, percentile, Moved, RunRow, RunTally, BULK_RETRY_BATCH,
    CANCELLED_ERROR, PERCENTILE_SAMPLE,
};

/// How the store may treat a missing file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Create the file if needed; the caller migrates (daemon, enqueue, migrate).
    Create,
    /// The file must exist with the current schema (read and admin commands).
    Existing,
}

/// The SQLite store.
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    busy_timeout: Duration,
}

const JOB_COLUMNS: &str = "id, queue, kind, payload, priority, run_at, max_attempts, timeout_ms, \
     unique_key, state, attempts, created_at, started_at, finished_at, lease_until, worker, \
     last_error, result, cancel_requested";

/// What a claim returns (see [`Claimed`]).
const CLAIMED_COLUMNS: &str =
    "id, queue, kind, payload, priority, run_at, max_attempts, timeout_ms, attempts, started_at";

const RUN_COLUMNS: &str =
    "id, job_id, queue, kind, attempt, worker, started_at, finished_at, outcome, error, duration_ms";

impl SqliteStore {
    /// Makes `dead` the queued jobs of a queue whose name is not UTF-8. Jobs
    /// are claimed by queue name, and no name a daemon can hold matches
    /// those bytes: left queued they would wait for ever, unseen. Their
    /// `last_error` names the fault; the daemon's counts and `jobd list
    /// --state dead` show them.
    fn bury_undecodable_queue(&mut self, name: &[u8]) -> Result<()> {
        let fault = utf8_fault("queue", name).unwrap_or_default();
        let now = crate::job::now_ms();
        self.write("set aside jobs whose queue is not UTF-8", |tx| {
            tx.prepare_cached(
                "UPDATE jobs SET state = 'dead', finished_at = ?2, last_error = ?3 \
                 WHERE state = 'queued' AND queue = CAST(?1 AS TEXT)",
            )?
            .execute(params![name, now, fault])
        })?;
        Ok(())
    }

    /// Opens the database at `path`: creating the file if needed with
    /// [`OpenMode::Create`] (call [`Store::migrate`] next), or checking that it
    /// exists with the current schema with [`OpenMode::Existing`]. A file from
    /// a newer jobd is refused either way and left untouched.
    pub fn open(path: &Path, busy_timeout: Duration, mode: OpenMode) -> Result<SqliteStore> {
        let path = path.to_path_buf();
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => return Err(StoreError::IsDirectory { path }),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if mode == OpenMode::Existing {
                    return Err(StoreError::Missing { path });
                }
                let folder = path.parent().filter(|p| !p.as_os_str().is_empty());
                if folder.is_some_and(|f| !f.is_dir()) {
                    return Err(StoreError::NoFolder { path });
                }
            }
            Err(e) => {
                return Err(StoreError::ReadOnly {
                    path,
                    detail: e.to_string(),
                })
            }
        }
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        if mode == OpenMode::Create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let conn =
            Connection::open_with_flags(&path, flags).map_err(|e| classify(&path, "open", e))?;
        let mut store = SqliteStore {
            conn,
            path,
            busy_timeout,
        };
        // Read the version before anything writes: a file from a newer jobd
        // is left exactly as it was.
        store
            .conn
            .busy_timeout(busy_timeout)
            .map_err(|e| store.err("configure", e))?;
        let version = store.user_version()?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: store.path,
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        store.configure()?;
        if mode == OpenMode::Existing && version < SCHEMA_VERSION {
            return Err(StoreError::TooOld {
                path: store.path,
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `PRAGMA data_version`: changes whenever another connection commits.
    /// Cheap (no disk read), so a dispatcher can ask it often.
    pub fn data_version(&mut self) -> Result<i64> {
        self.conn
            .prepare_cached("PRAGMA data_version")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(|e| self.err("data_version", e))
    }

    /// The schema version recorded in the file.
    pub fn user_version(&mut self) -> Result<i64> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err("read schema version", e))
    }

    /// Applies the first `version` migrations only. For tests of upgrades
    /// from older files; the daemon always uses [`Store::migrate`].
    pub fn migrate_to(&mut self, version: i64) -> Result<(i64, i64)> {
        let target = version.clamp(0, SCHEMA_VERSION);
        let before = self.user_version()?;
        for (i, sql) in MIGRATIONS.iter().enumerate().take(target as usize) {
            let step = i as i64 + 1;
            self.write("migrate", |tx| {
                let current: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
                if current >= step {
                    return Ok(());
                }
                tx.execute_batch(sql)?;
                tx.execute_batch(&format!("PRAGMA user_version = {step}"))?;
                Ok(())
            })?;
        }
        Ok((before, self.user_version()?))
    }

    /// Up to `limit` queued jobs with ids above `after`, in id order: what
    /// `jobd migrate --from` moves.
    pub fn queued_after(&mut self, after: i64, limit: usize) -> Result<Vec<Job>> {
        let result: rusqlite::Result<Vec<Job>> = (|| {
            self.conn
                .prepare_cached(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'queued' AND id > ?1 \
                     ORDER BY id LIMIT ?2"
                ))?
                .query_map(params![after, limit as i64], job_from_row)?
                .collect()
        })();
        result.map_err(|e| self.err("read queued jobs", e))
    }

    /// Closes the queued jobs that moved to `target` (a database's name for
    /// people): each becomes `cancelled` with a `last_error` that says where
    /// it went, so that a daemon started on this file again by mistake does
    /// not run it twice and `jobd show` on the old file tells where it is.
    /// A job no longer queued is left alone. Returns how many were closed.
    pub fn close_moved(&mut self, moved: &[(i64, Moved)], target: &str, now: i64) -> Result<usize> {
        self.write("close moved jobs", |tx| {
            let mut statement = tx.prepare_cached(
                "UPDATE jobs SET state = 'cancelled', finished_at = ?2, last_error = ?3 \
                 WHERE id = ?1 AND state = 'queued'",
            )?;
            let mut closed = 0;
            for (id, moved) in moved {
                let note = match moved {
                    Moved::To(new) => {
                        format!("moved to {target} as job {new} by jobd migrate --from")
                    }
                    Moved::Duplicate => format!(
                        "not moved: {target} already holds a queued or running job with this \
                         unique_key, which stands for it (jobd migrate --from)"
                    ),
                    Moved::Refused(_) => continue,
                };
                closed += statement.execute(params![id, now, note])?;
            }
            Ok(closed)
        })
    }

    /// A direct handle for tests and benchmarks that must inspect the file.    /// A direct handle for tests and benchmarks that must inspect the file.
    pub fn connection(&mut self) -> &mut Connection {
        &mut self.conn
    }

    fn configure(&mut self) -> Result<()> {
        self.conn
            .set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        // WAL is persistent in the file, so every other client uses it too.
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| self.err("enable WAL", e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::ReadOnly {
                path: self.path.clone(),
                detail: format!("journal_mode stayed {mode:?}, WAL is required"),
            });
        }
        self.conn
            .execute_batch("PRAGMA synchronous = NORMAL; PRAGMA temp_store = MEMORY;")
            .map_err(|e| self.err("configure", e))
    }

    fn err(&self, op: &'static str, e: rusqlite::Error) -> StoreError {
        match classify(&self.path, op, e) {
            StoreError::Busy { path, op, .. } => StoreError::Busy {
                path,
                op,
                waited: self.busy_timeout,
            },
            other => other,
        }
    }

    /// `queues`, or when None every queue that holds queued jobs.
    fn these_or_queued(&mut self, queues: Option<&[String]>) -> Result<Vec<String>> {
        match queues {
            Some(q) => Ok(q.to_vec()),
            None => self.queued_queues(),
        }
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction and commits it.
    fn write<T>(
        &mut self,
        op: &'static str,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let result: rusqlite::Result<T> = (|| {
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let value = f(&tx)?;
            tx.commit()?;
            Ok(value)
        })();
        result.map_err(|e| self.err(op, e))
    }
}

/// Turns a rusqlite error into the store error an operator can act on.
fn classify(path: &Path, op: &'static str, e: rusqlite::Error) -> StoreError {
    let path = path.to_path_buf();
    if let rusqlite::Error::SqliteFailure(ref f, ref msg) = e {
        match f.code {
            ErrorCode::NotADatabase => return StoreError::NotADatabase { path },
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                return StoreError::Busy {
                    path,
                    op,
                    waited: Duration::ZERO,
                }
            }
            ErrorCode::DiskFull => return StoreError::Full { path, op },
            ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied => {
                return StoreError::ReadOnly {
                    path,
                    detail: msg.clone().unwrap_or_else(|| f.to_string()),
                }
            }
            _ => {}
        }
    }
    StoreError::Sqlite {
        path,
        op,
        source: e,
    }
}

/// Text as SQLite holds it. A client can store bytes that are not UTF-8
/// (`CAST(x'ff' AS TEXT)` passes every CHECK of a file made before the
/// guards, and `json_valid`); one such row must not make every read or
/// claim that meets it fail. Readers show each undecodable byte escaped
/// (`\xff`), the claim also names the fault ([`utf8_fault`]).
struct Text(String);

impl rusqlite::types::FromSql for Text {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        match value {
            rusqlite::types::ValueRef::Text(bytes) | rusqlite::types::ValueRef::Blob(bytes) => {
                Ok(Text(escape_invalid_utf8(bytes)))
            }
            _ => Err(rusqlite::types::FromSqlError::InvalidType),
        }
    }
}

/// `bytes` as a string, each byte that is not part of valid UTF-8 written
/// as `\xNN`.
pub(crate) fn escape_invalid_utf8(bytes: &[u8]) -> String {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return text.to_string();
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

/// One sentence naming what is wrong with `column` when its bytes are not
/// UTF-8, or None when they are.
fn utf8_fault(column: &str, bytes: &[u8]) -> Option<String> {
    let e = std::str::from_utf8(bytes).err()?;
    let at = e.valid_up_to();
    Some(format!(
        "column {column} is not valid UTF-8 (byte 0x{:02x} at offset {at}); \
         insert text, not raw bytes",
        bytes[at]
    ))
}

/// A text column, undecodable bytes escaped.
fn text(row: &Row<'_>, index: usize) -> rusqlite::Result<String> {
    Ok(row.get::<_, Text>(index)?.0)
}

/// A nullable text column, undecodable bytes escaped.
fn opt_text(row: &Row<'_>, index: usize) -> rusqlite::Result<Option<String>> {
    Ok(row.get::<_, Option<Text>>(index)?.map(|t| t.0))
}

fn job_from_row(row: &Row<'_>) -> rusqlite::Result<Job> {
    let state: String = row.get(9)?;
    Ok(Job {
        id: row.get(0)?,
        queue: text(row, 1)?,
        kind: text(row, 2)?,
        payload: text(row, 3)?,
        priority: row.get(4)?,
        run_at: row.get(5)?,
        max_attempts: row.get(6)?,
        timeout_ms: row.get(7)?,
        unique_key: opt_text(row, 8)?,
        state: state.parse().map_err(|e: crate::job::UnknownState| {
            rusqlite::Error::FromSqlConversionFailure(9, rusqlite::types::Type::Text, Box::new(e))
        })?,
        attempts: row.get(10)?,
        created_at: row.get(11)?,
        started_at: row.get(12)?,
        finished_at: row.get(13)?,
        lease_until: row.get(14)?,
        worker: opt_text(row, 15)?,
        last_error: opt_text(row, 16)?,
        result: opt_text(row, 17)?,
        cancel_requested: row.get::<_, i64>(18)? != 0,
    })
}

/// A claimed row. A queue, kind or payload that is not UTF-8 is escaped and
/// named in `undecodable`, so the dispatcher settles that job `dead` and the
/// claim goes on; failing the row would fail the whole claim, every turn.
fn claimed_from_row(row: &Row<'_>) -> rusqlite::Result<Claimed> {
    let mut undecodable = None;
    let mut column = |index: usize, name: &str| -> rusqlite::Result<String> {
        let bytes = row.get_ref(index)?.as_bytes()?;
        if undecodable.is_none() {
            undecodable = utf8_fault(name, bytes);
        }
        Ok(escape_invalid_utf8(bytes))
    };
    let queue = column(1, "queue")?;
    let kind = column(2, "kind")?;
    let payload = column(3, "payload")?;
    Ok(Claimed {
        id: row.get(0)?,
        queue,
        kind,
        payload,
        priority: row.get(4)?,
        run_at: row.get(5)?,
        max_attempts: row.get(6)?,
        timeout_ms: row.get(7)?,
        attempts: row.get(8)?,
        started_at: row.get(9)?,
        undecodable,
    })
}

fn run_from_row(row: &Row<'_>) -> rusqlite::Result<JobRun> {
    let outcome: String = row.get(8)?;
    Ok(JobRun {
        id: row.get(0)?,
        job_id: row.get(1)?,
        queue: text(row, 2)?,
        kind: text(row, 3)?,
        attempt: row.get(4)?,
        worker: text(row, 5)?,
        started_at: row.get(6)?,
        finished_at: row.get(7)?,
        outcome: outcome.parse().map_err(|e: String| {
            rusqlite::Error::FromSqlConversionFailure(8, rusqlite::types::Type::Text, e.into())
        })?,
        error: opt_text(row, 9)?,
        duration_ms: row.get(10)?,
    })
}

fn worker_from_row(row: &Row<'_>) -> rusqlite::Result<WorkerInfo> {
    Ok(WorkerInfo {
        id: text(row, 0)?,
        host: text(row, 1)?,
        pid: row.get(2)?,
        version: text(row, 3)?,
        started_at: row.get(4)?,
        heartbeat_at: row.get(5)?,
        queues: text(row, 6)?,
        running: row.get(7)?,
    })
}

fn state_of(tx: &rusqlite::Transaction<'_>, id: i64) -> rusqlite::Result<Option<JobState>> {
    let state: Option<String> = tx
        .query_row("SELECT state FROM jobs WHERE id = ?1", [id], |r| r.get(0))
        .optional()?;
    Ok(state.and_then(|s| s.parse().ok()))
}

/// Largest number of rows one batched statement carries. Batches are cut
/// into power-of-two chunks up to this size, so at most eight statement
/// shapes exist per operation and each stays in the statement cache.
const CHUNK_MAX: usize = 64;

/// Splits `items` into chunks of 64, 32, …, 1 items.
fn chunks<T>(items: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let size = CHUNK_MAX.min(1 << rest.len().ilog2());
        let (head, tail) = rest.split_at(size);
        rest = tail;
        Some(head)
    })
}

/// `(?, ?, …), (?, …)` for `rows` rows of `columns` parameters.
fn values_list(rows: usize, columns: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    vec![row; rows].join(", ")
}

/// One statement completes a whole chunk: every row is fenced by state,
/// worker and attempt, so a late writer (its lease lapsed, someone rescued
/// the job) matches nothing, and RETURNING says which rows moved. One
/// statement per chunk instead of per job: statement set-up and tear-down
/// were half the cost of a completion.
fn complete_sql(rows: usize) -> String {
    // A job an operator asked to cancel ends cancelled whatever its attempt
    // ended in, except a success (the work happened): the flag is read here,
    // in the fenced write, so a cancel that lands after the daemon last
    // looked is honoured too.
    let cancel = "(jobs.cancel_requested = 1 AND c.state <> 'succeeded')";
    format!(
        "WITH c(id, worker, attempt, state, finished_at, run_at, result, last_error, release) AS \
         (VALUES {values}) \
         UPDATE jobs SET state = CASE WHEN {cancel} THEN 'cancelled' ELSE c.state END, \
           finished_at = CASE WHEN c.release AND NOT {cancel} THEN jobs.finished_at ELSE c.finished_at END, \
           lease_until = NULL, \
           run_at = CASE WHEN {cancel} THEN jobs.run_at ELSE COALESCE(c.run_at, jobs.run_at) END, \
           result = CASE WHEN c.state = 'succeeded' THEN c.result ELSE jobs.result END, \
           last_error = CASE WHEN {cancel} THEN '{CANCELLED_ERROR}' \
             WHEN c.release THEN jobs.last_error ELSE c.last_error END, \
           attempts = jobs.attempts - CASE WHEN {cancel} THEN 0 ELSE c.release END \
         FROM c WHERE jobs.id = c.id AND jobs.state = 'running' AND jobs.worker = c.worker \
           AND jobs.attempts = c.attempt \
         RETURNING jobs.id, jobs.worker, jobs.attempts, jobs.queue, jobs.kind, jobs.state",
        values = values_list(rows, 9)
    )
}

/// The nine values of one row of [`complete_sql`].
fn completion_values(c: &Completion) -> [rusqlite::types::Value; 9] {
    use rusqlite::types::Value;
    let text = |s: Option<&str>| s.map_or(Value::Null, |s| Value::Text(s.to_string()));
    let (state, run_at, result, release) = match &c.transition {
        Transition::Succeed { result } => ("succeeded", None, result.as_deref(), 0),
        Transition::Requeue { run_at } => ("queued", Some(*run_at), None, 0),
        Transition::Release => ("queued", None, None, 1),
        Transition::Dead => ("dead", None, None, 0),
        Transition::Cancel => ("cancelled", None, None, 0),
    };
    let error = match c.transition {
        Transition::Succeed { .. } => None,
        _ => c.error.as_deref(),
    };
    [
        Value::Integer(c.id),
        Value::Text(c.worker.clone()),
        Value::Integer(c.attempt),
        Value::Text(state.to_string()),
        Value::Integer(c.finished_at),
        run_at.map_or(Value::Null, Value::Integer),
        text(result),
        text(error),
        Value::Integer(release),
    ]
}

/// A multi-row insert of `rows` attempt records.
fn insert_runs_sql(rows: usize) -> String {
    format!(
        "INSERT INTO job_runs (job_id, attempt, worker, queue, kind, started_at, finished_at, \
         outcome, error, duration_ms) VALUES {}",
        values_list(rows, 10)
    )
}

/// Writes attempt records with one multi-row insert per chunk; the single
/// way jobd appends to `job_runs` (completions and rescues alike).
fn insert_runs(tx: &rusqlite::Transaction<'_>, runs: &[RunRow<'_>]) -> rusqlite::Result<()> {
    use rusqlite::types::Value;
    for chunk in chunks(runs) {
        let mut args: Vec<Value> = Vec::with_capacity(chunk.len() * 10);
        for run in chunk {
            args.extend([
                Value::Integer(run.job_id),
                Value::Integer(run.attempt),
                Value::Text(run.worker.to_string()),
                Value::Text(run.queue.to_string()),
                Value::Text(run.kind.to_string()),
                Value::Integer(run.started_at),
                Value::Integer(run.finished_at),
                Value::Text(run.outcome.as_str().to_string()),
                run.error
                    .map_or(Value::Null, |e| Value::Text(e.to_string())),
                Value::Integer((run.finished_at - run.started_at).max(0)),
            ]);
        }
        tx.prepare_cached(&insert_runs_sql(chunk.len()))?
            .execute(params_from_iter(args))?;
    }
    Ok(())
}

/// Claims inside an open transaction (see [`Store::claim`]).
fn claim_in(tx: &rusqlite::Transaction<'_>, claim: &Claim<'_>) -> rusqlite::Result<Vec<Claimed>> {
    super::claim_by_plan(claim.requests, |queue, pool, limit| {
        claim_pool(tx, claim, queue, pool, limit)
    })
}

/// Claims up to `limit` ready jobs of `queue` that run on `pool`.
fn claim_pool(
    tx: &rusqlite::Transaction<'_>,
    claim: &Claim<'_>,
    queue: &str,
    pool: Pool,
    limit: usize,
) -> rusqlite::Result<Vec<Claimed>> {
    // The LIMIT and the pool are written into the text: a bound LIMIT
    // makes SQLite re-prepare the statement on every run (the planner
    // reads its value), which cost more than the claim itself. The cache
    // keeps one statement per pool and limit in use. The pool test is the
    // claim index's expression, word for word, so the index serves it.
    let mut stmt = tx.prepare_cached(&format!(
        "UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = ?1, \
         finished_at = NULL, lease_until = ?2, worker = ?3 \
         WHERE state = 'queued' AND id IN ( \
             SELECT id FROM jobs \
             WHERE state = 'queued' AND queue = ?4 AND {CPU_KIND_TEST} = {} AND run_at <= ?1 \
               AND NOT EXISTS (SELECT 1 FROM queues WHERE name = ?4 AND paused = 1) \
             ORDER BY priority DESC, run_at, id LIMIT {limit}) \
         RETURNING {CLAIMED_COLUMNS}",
        i32::from(pool == Pool::Cpu)
    ))?;
    let rows = stmt.query_map(
        params![claim.now, claim.lease_until, claim.worker, queue],
        claimed_from_row,
    )?;
    rows.collect()
}

/// Inserts one job inside an open transaction; a job whose `unique_key` is
/// taken by a queued or running job is not inserted, and the holder's id is
/// returned instead.
fn insert_in(tx: &rusqlite::Transaction<'_>, job: &NewJob, now: i64) -> rusqlite::Result<Enqueued> {
    let id: Option<i64> = tx
        .prepare_cached(
            "INSERT INTO jobs (queue, kind, payload, priority, run_at, max_attempts, \
             timeout_ms, unique_key, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
             ON CONFLICT DO NOTHING RETURNING id",
        )?
        .query_row(
            params![
                job.queue,
                job.kind,
                job.payload,
                job.priority,
                job.run_at.unwrap_or(now),
                job.max_attempts,
                job.timeout_ms,
                job.unique_key,
                now,
            ],
            |r| r.get(0),
        )
        .optional()?;
    match id {
        Some(id) => Ok(Enqueued::Inserted(id)),
        // Only the unique_key index can make DO NOTHING skip a row.
        None => tx
            .prepare_cached(
                "SELECT id FROM jobs WHERE unique_key = ?1 \
                 AND (state = 'queued' OR state = 'running')",
            )?
            .query_row([&job.unique_key], |r| r.get(0))
            .map(Enqueued::Duplicate),
    }
}

/// Writes outcomes inside an open transaction (see [`Store::complete`]).
fn complete_in(
    tx: &rusqlite::Transaction<'_>,
    completions: &[Completion],
) -> rusqlite::Result<Vec<Applied>> {
    if completions.is_empty() {
        return Ok(Vec::new());
    }
    // The jobs the fenced update moved: id → (worker, attempts now, queue,
    // kind, state now).
    let mut moved: HashMap<i64, (String, i64, String, String, String)> =
        HashMap::with_capacity(completions.len());
    for chunk in chunks(completions) {
        let mut stmt = tx.prepare_cached(&complete_sql(chunk.len()))?;
        let mut args: Vec<rusqlite::types::Value> = Vec::with_capacity(chunk.len() * 9);
        for c in chunk {
            args.extend(completion_values(c));
        }
        let mut rows = stmt.query(params_from_iter(args))?;
        while let Some(row) = rows.next()? {
            moved.insert(
                row.get(0)?,
                (
                    row.get(1)?,
                    row.get(2)?,
                    text(row, 3)?,
                    text(row, 4)?,
                    row.get(5)?,
                ),
            );
        }
    }
    // A completion applied if its job moved under its worker and
    // attempt (a released attempt is no longer counted, unless a cancel
    // turned it into the end); a second one for the same attempt in the
    // same batch is stale.
    let mut out = Vec::with_capacity(completions.len());
    let mut runs = Vec::with_capacity(completions.len());
    for c in completions {
        let applied = moved
            .get(&c.id)
            .is_some_and(|(worker, attempts, _, _, state)| {
                let overridden = cancelled_instead(c, state);
                let counted = i64::from(c.transition == Transition::Release && !overridden);
                *worker == c.worker && *attempts + counted == c.attempt
            });
        match applied.then(|| moved.remove(&c.id)).flatten() {
            Some((_, _, queue, kind, state)) => {
                let overridden = cancelled_instead(c, &state);
                runs.push((c, queue, kind, overridden));
                out.push(if overridden {
                    Applied::Cancelled
                } else {
                    Applied::Done
                });
            }
            None => {
                // Read before this batch's records go in, so a second
                // outcome for one attempt within the batch stays stale.
                let recorded: Option<String> = tx
                    .prepare_cached(
                        "SELECT outcome FROM job_runs WHERE job_id = ?1 AND attempt = ?2 \
                         AND worker = ?3 AND outcome <> 'rescued' LIMIT 1",
                    )?
                    .query_row(params![c.id, c.attempt, c.worker], |r| r.get(0))
                    .optional()?;
                out.push(super::recorded_as(c, recorded.as_deref()));
            }
        }
    }
    let runs: Vec<RunRow<'_>> = runs
        .iter()
        .map(|(c, queue, kind, overridden)| RunRow {
            job_id: c.id,
            attempt: c.attempt,
            worker: &c.worker,
            queue,
            kind,
            started_at: c.started_at,
            finished_at: c.finished_at,
            outcome: if *overridden {
                RunOutcome::Cancelled
            } else {
                c.outcome
            },
            error: c.error.as_deref(),
        })
        .collect();
    insert_runs(tx, &runs)?;
    Ok(out)
}

impl Store for SqliteStore {
    fn migrate(&mut self) -> Result<(i64, i64)> {
        self.migrate_to(SCHEMA_VERSION)
    }

    fn enqueue(&mut self, jobs: &[NewJob], now: i64) -> Result<Vec<Enqueued>> {
        self.write("enqueue", |tx| {
            jobs.iter().map(|job| insert_in(tx, job, now)).collect()
        })
    }

    fn cron_start(&mut self, name: &str, slot: i64) -> Result<Option<i64>> {
        self.write("start a periodic schedule", |tx| {
            tx.prepare_cached("INSERT OR IGNORE INTO cron(name, last_slot) VALUES (?1, ?2)")?
                .execute(params![name, slot])?;
            tx.prepare_cached("SELECT last_slot FROM cron WHERE name = ?1")?
                .query_row([name], |r| r.get(0))
        })
    }

    fn cron_enqueue(
        &mut self,
        name: &str,
        slot: i64,
        job: &NewJob,
        now: i64,
    ) -> Result<Option<Enqueued>> {
        self.write("enqueue a periodic job", |tx| {
            tx.prepare_cached("INSERT OR IGNORE INTO cron(name, last_slot) VALUES (?1, NULL)")?
                .execute([name])?;
            let moved = tx
                .prepare_cached(
                    "UPDATE cron SET last_slot = ?2 \
                     WHERE name = ?1 AND (last_slot IS NULL OR last_slot < ?2)",
                )?
                .execute(params![name, slot])?;
            if moved == 0 {
                // Another daemon enqueued this slot (or a later one).
                return Ok(None);
            }
            let enqueued = insert_in(tx, job, now)?;
            tx.prepare_cached("UPDATE cron SET last_job_id = ?2 WHERE name = ?1")?
                .execute(params![name, enqueued.id()])?;
            Ok(Some(enqueued))
        })
    }

    fn cron_rows(&mut self) -> Result<Vec<CronRow>> {
        let result: rusqlite::Result<Vec<CronRow>> = (|| {
            let mut stmt = self.conn.prepare_cached(
                "SELECT cron.name, cron.last_slot, cron.last_job_id, jobs.state \
                 FROM cron LEFT JOIN jobs ON jobs.id = cron.last_job_id ORDER BY cron.name",
            )?;
            let rows = stmt.query_map([], |r| {
                let state: Option<String> = r.get(3)?;
                Ok(CronRow {
                    name: text(r, 0)?,
                    last_slot: r.get(1)?,
                    last_job_id: r.get(2)?,
                    last_job_state: state.and_then(|s| s.parse().ok()),
                })
            })?;
            rows.collect()
        })();
        result.map_err(|e| self.err("read periodic schedules", e))
    }

    fn claim(&mut self, claim: &Claim<'_>) -> Result<Vec<Claimed>> {
        if claim.requests.iter().all(|r| r.limit == 0) {
            return Ok(Vec::new());
        }
        self.write("claim", |tx| claim_in(tx, claim))
    }

    fn complete(&mut self, completions: &[Completion]) -> Result<Vec<Applied>> {
        if completions.is_empty() {
            return Ok(Vec::new());
        }
        self.write("complete", |tx| complete_in(tx, completions))
    }

    fn complete_and_claim(
        &mut self,
        completions: &[Completion],
        claim: &Claim<'_>,
    ) -> Result<(Vec<Applied>, Vec<Claimed>)> {
        let claiming = claim.requests.iter().any(|r| r.limit > 0);
        if completions.is_empty() && !claiming {
            return Ok((Vec::new(), Vec::new()));
        }
        self.write("complete and claim", |tx| {
            let applied = complete_in(tx, completions)?;
            let jobs = if claiming {
                claim_in(tx, claim)?
            } else {
                Vec::new()
            };
            Ok((applied, jobs))
        })
    }

    fn renew_leases(&mut self, worker: &str, ids: &[i64], lease_until: i64) -> Result<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.write("renew leases", |tx| {
            let mut stmt = tx.prepare_cached(
                "UPDATE jobs SET lease_until = ?1 WHERE id = ?2 AND state = 'running' AND worker = ?3",
            )?;
            let mut renewed = 0;
            for id in ids {
                renewed += stmt.execute(params![lease_until, id, worker])?;
            }
            Ok(renewed)
        })
    }

    fn held_by(&mut self, worker: &str) -> Result<Vec<Held>> {
        let result: rusqlite::Result<Vec<Held>> = (|| {
            self.conn
                .prepare_cached(
                    "SELECT id, attempts, queue, kind, started_at FROM jobs INDEXED BY jobs_running \
                     WHERE state = 'running' AND worker = ?1",
                )?
                .query_map([worker], |r| {
                    Ok(Held {
                        id: r.get(0)?,
                        attempt: r.get(1)?,
                        queue: text(r, 2)?,
                        kind: text(r, 3)?,
                        started_at: r.get::<_, Option<i64>>(4)?.unwrap_or(0),
                    })
                })?
                .collect()
        })();
        result.map_err(|e| self.err("read the jobs this daemon holds", e))
    }

    fn cancel_requests(&mut self, worker: &str) -> Result<Vec<i64>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id FROM jobs INDEXED BY jobs_running \
                 WHERE state = 'running' AND worker = ?1 AND cancel_requested = 1",
            )
            .map_err(|e| self.err("read cancel requests", e))?;
        let ids = stmt
            .query_map([worker], |r| r.get(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<i64>>>());
        drop(stmt);
        ids.map_err(|e| self.err("read cancel requests", e))
    }

    fn rescue(
        &mut self,
        scope: RescueScope<'_>,
        now: i64,
        default_max_attempts: u32,
    ) -> Result<Vec<Rescued>> {
        self.write("rescue", |tx| {
            let (filter, args): (String, Vec<rusqlite::types::Value>) = match scope {
                RescueScope::ExpiredLeases => (
                    "lease_until < ?3".to_string(),
                    vec![rusqlite::types::Value::Integer(now)],
                ),
                RescueScope::ExpiredLeasesOfOthers(me) => (
                    "lease_until < ?3 AND worker IS NOT ?4".to_string(),
                    vec![
                        rusqlite::types::Value::Integer(now),
                        rusqlite::types::Value::Text(me.to_string()),
                    ],
                ),
                RescueScope::Workers([]) => return Ok(Vec::new()),
                RescueScope::Workers(workers) => (
                    format!(
                        "worker IN ({})",
                        (0..workers.len())
                            .map(|i| format!("?{}", i + 3))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    workers
                        .iter()
                        .map(|w| rusqlite::types::Value::Text(w.clone()))
                        .collect(),
                ),
            };
            let reason = scope.reason();
            let sql = format!(
                "UPDATE jobs SET \
                   state = CASE WHEN attempts >= COALESCE(max_attempts, ?2) THEN 'dead' ELSE 'queued' END, \
                   finished_at = ?1, lease_until = NULL, \
                   last_error = 'attempt ' || attempts || ' was lost: worker ' || worker || ' {reason}' \
                 WHERE state = 'running' AND {filter} \
                 RETURNING id, kind, queue, attempts, worker, state, started_at"
            );
            let mut all: Vec<rusqlite::types::Value> = vec![
                rusqlite::types::Value::Integer(now),
                rusqlite::types::Value::Integer(i64::from(default_max_attempts)),
            ];
            all.extend(args);
            let mut rescued = Vec::new();
            let mut lost = Vec::new();
            {
                let mut stmt = tx.prepare(&sql)?;
                let mut rows = stmt.query(params_from_iter(all.iter()))?;
                while let Some(row) = rows.next()? {
                    let state: String = row.get(5)?;
                    let job = Rescued {
                        id: row.get(0)?,
                        kind: text(row, 1)?,
                        queue: text(row, 2)?,
                        attempt: row.get(3)?,
                        worker: text(row, 4)?,
                        state: if state == "dead" {
                            JobState::Dead
                        } else {
                            JobState::Queued
                        },
                    };
                    let started: Option<i64> = row.get(6)?;
                    lost.push(started.unwrap_or(now));
                    rescued.push(job);
                }
            }
            super::with_rescue_runs(&rescued, &lost, reason, now, |runs| insert_runs(tx, runs))?;
            Ok(rescued)
        })
    }

    fn cancel(&mut self, ids: &[i64], now: i64) -> Result<Vec<CancelResult>> {
        self.write("cancel", |tx| {
            let mut out = Vec::with_capacity(ids.len());
            for &id in ids {
                let queued = tx
                    .prepare_cached(
                        "UPDATE jobs SET state = 'cancelled', finished_at = ?2, \
                         last_error = 'cancelled by an operator before it ran' \
                         WHERE id = ?1 AND state = 'queued'",
                    )?
                    .execute(params![id, now])?;
                if queued == 1 {
                    out.push(CancelResult::Cancelled);
                    continue;
                }
                let running = tx
                    .prepare_cached(
                        "UPDATE jobs SET cancel_requested = 1 WHERE id = ?1 AND state = 'running'",
                    )?
                    .execute([id])?;
                if running == 1 {
                    out.push(CancelResult::Requested);
                    continue;
                }
                out.push(match state_of(tx, id)? {
                    Some(state) => CancelResult::AlreadyFinal(state),
                    None => CancelResult::NotFound,
                });
            }
            Ok(out)
        })
    }

    fn retry(&mut self, ids: &[i64], now: i64) -> Result<Vec<RetryResult>> {
        self.write("retry", |tx| {
            let mut out = Vec::with_capacity(ids.len());
            for &id in ids {
                let state = match state_of(tx, id)? {
                    None => {
                        out.push(RetryResult::NotFound);
                        continue;
                    }
                    Some(state) => state,
                };
                if !matches!(state, JobState::Dead | JobState::Cancelled) {
                    out.push(RetryResult::WrongState(state));
                    continue;
                }
                let holder: Option<i64> = tx
                    .query_row(
                        "SELECT other.id FROM jobs AS this JOIN jobs AS other \
                         ON other.unique_key = this.unique_key \
                         WHERE this.id = ?1 AND (other.state = 'queued' OR other.state = 'running')",
                        [id],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(holder) = holder {
                    out.push(RetryResult::UniqueKeyTaken(holder));
                    continue;
                }
                tx.prepare_cached(
                    "UPDATE jobs SET state = 'queued', attempts = 0, run_at = ?2, started_at = NULL, \
                     finished_at = NULL, lease_until = NULL, cancel_requested = 0 \
                     WHERE id = ?1 AND (state = 'dead' OR state = 'cancelled')",
                )?
                .execute(params![id, now])?;
                out.push(RetryResult::Queued);
            }
            Ok(out)
        })
    }

    fn retry_dead(&mut self, queue: Option<&str>, now: i64) -> Result<BulkRetry> {
        let mut total = BulkRetry::default();
        let mut after = 0i64;
        loop {
            let (ids, queued) = self.write("retry dead jobs", |tx| {
                let ids: Vec<i64> = tx
                    .prepare_cached(
                        "SELECT id FROM jobs WHERE state = 'dead' AND id > ?1 \
                         AND (?2 IS NULL OR queue = ?2) ORDER BY id LIMIT ?3",
                    )?
                    .query_map(params![after, queue, BULK_RETRY_BATCH as i64], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                // OR IGNORE leaves a job dead when its unique_key is taken.
                let mut stmt = tx.prepare_cached(
                    "UPDATE OR IGNORE jobs SET state = 'queued', attempts = 0, run_at = ?2, \
                     started_at = NULL, finished_at = NULL, lease_until = NULL, cancel_requested = 0 \
                     WHERE id = ?1 AND state = 'dead'",
                )?;
                let mut queued = 0u64;
                for id in &ids {
                    queued += stmt.execute(params![id, now])? as u64;
                }
                Ok((ids, queued))
            })?;
            total.queued += queued;
            total.skipped_unique += ids.len() as u64 - queued;
            match ids.last() {
                Some(&last) if ids.len() == BULK_RETRY_BATCH => after = last,
                _ => return Ok(total),
            }
        }
    }

    fn prune_batch(&mut self, cutoffs: &PruneCutoffs, batch: usize) -> Result<Pruned> {
        self.write("prune", |tx| {
            let mut pruned = Pruned::default();
            let mut left = batch as i64;
            for (state, cutoff) in [
                ("succeeded", cutoffs.succeeded),
                ("dead", cutoffs.dead),
                ("cancelled", cutoffs.cancelled),
            ] {
                let Some(cutoff) = cutoff else { continue };
                if left <= 0 {
                    break;
                }
                // The state is a literal so the query planner can use its
                // partial index (a bound parameter would not prove it).
                let ids: Vec<i64> = tx
                    .prepare_cached(&format!(
                        "SELECT id FROM jobs INDEXED BY jobs_{state} \
                         WHERE state = '{state}' AND finished_at < ?1 LIMIT ?2"
                    ))?
                    .query_map(params![cutoff, left], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                let mut runs = tx.prepare_cached("DELETE FROM job_runs WHERE job_id = ?1")?;
                let mut jobs =
                    tx.prepare_cached("DELETE FROM jobs WHERE id = ?1 AND state = ?2")?;
                for id in &ids {
                    pruned.runs += runs.execute([id])? as u64;
                    pruned.jobs += jobs.execute(params![id, state])? as u64;
                }
                left -= ids.len() as i64;
            }
            Ok(pruned)
        })
    }

    fn set_paused(&mut self, queues: &[String], paused: bool, now: i64) -> Result<()> {
        self.write("pause", |tx| {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO queues (name, paused, updated_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, \
                 updated_at = excluded.updated_at",
            )?;
            for queue in queues {
                stmt.execute(params![queue, paused as i64, now])?;
            }
            Ok(())
        })
    }

    fn paused_queues(&mut self) -> Result<Vec<String>> {
        let result: rusqlite::Result<Vec<String>> = (|| {
            self.conn
                .prepare_cached("SELECT name FROM queues WHERE paused = 1 ORDER BY name")?
                .query_map([], |r| text(r, 0))?
                .collect()
        })();
        result.map_err(|e| self.err("read paused queues", e))
    }

    fn queued_queues(&mut self) -> Result<Vec<String>> {
        let result: rusqlite::Result<Vec<Vec<u8>>> = (|| {
            self.conn
                .prepare_cached(super::QUEUED_QUEUES_SQL)?
                .query_map([], |r| Ok(r.get_ref(0)?.as_bytes()?.to_vec()))?
                .collect()
        })();
        let mut names = Vec::new();
        for bytes in result.map_err(|e| self.err("read queues", e))? {
            match String::from_utf8(bytes) {
                Ok(name) => names.push(name),
                Err(e) => self.bury_undecodable_queue(e.as_bytes())?,
            }
        }
        Ok(names)
    }

    fn next_run_at(
        &mut self,
        queues: Option<&[String]>,
        pools: &[Pool],
        after: i64,
    ) -> Result<Option<i64>> {
        let queues = self.these_or_queued(queues)?;
        let mut next: Option<i64> = None;
        for queue in &queues {
            for &pool in pools {
                let cpu = i32::from(pool == Pool::Cpu);
                let within = format!("state = 'queued' AND queue = ?1 AND {CPU_KIND_TEST} = {cpu}");
                let at: Option<i64> = self
                    .conn
                    .prepare_cached(&super::next_run_at_sql(&within, "?2"))
                    .and_then(|mut s| s.query_row(params![queue, after], |r| r.get(0)))
                    .map_err(|e| self.err("read next run_at", e))?;
                next = earliest(next, at);
            }
        }
        Ok(next)
    }

    fn change_counter(&mut self) -> Result<i64> {
        self.data_version()
    }

    fn database_id(&mut self) -> Result<String> {
        self.conn
            .prepare_cached("SELECT value FROM meta WHERE key = 'database_id'")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(|e| self.err("read the database id", e))
    }

    fn commit_file(&self) -> Option<PathBuf> {
        Some(crate::store::wake::wal_path(&self.path))
    }

    fn backlog(&mut self, queues: Option<&[String]>, now: i64) -> Result<Backlog> {
        let queues = self.these_or_queued(queues)?;
        let mut backlog = Backlog::default();
        for queue in &queues {
            let (ready, oldest): (i64, Option<i64>) = self
                .conn
                .prepare_cached(
                    "SELECT count(*), min(run_at) FROM jobs INDEXED BY jobs_ready \
                     WHERE state = 'queued' AND queue = ?1 AND run_at <= ?2",
                )
                .and_then(|mut s| s.query_row(params![queue, now], |r| Ok((r.get(0)?, r.get(1)?))))
                .map_err(|e| self.err("read backlog", e))?;
            backlog.ready += ready as u64;
            backlog.oldest_ready = earliest(backlog.oldest_ready, oldest);
        }
        Ok(backlog)
    }

    fn job_counts(&mut self) -> Result<Vec<(String, JobState, u64)>> {
        let result: rusqlite::Result<Vec<(String, JobState, u64)>> = (|| {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT queue, state, count(*) FROM jobs GROUP BY queue, state")?;
            let rows = stmt.query_map([], |r| {
                let state: String = r.get(1)?;
                let state = state.parse().map_err(|e: crate::job::UnknownState| {
                    rusqlite::Error::FromSqlConversionFailure(
                        1,
                        rusqlite::types::Type::Text,
                        Box::new(e),
                    )
                })?;
                Ok((text(r, 0)?, state, r.get::<_, i64>(2)? as u64))
            })?;
            rows.collect()
        })();
        result.map_err(|e| self.err("count jobs", e))
    }

    fn job(&mut self, id: i64) -> Result<Option<Job>> {
        let result = self
            .conn
            .prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"))
            .and_then(|mut s| s.query_row([id], job_from_row).optional());
        result.map_err(|e| self.err("read job", e))
    }

    fn runs(&mut self, job_id: i64) -> Result<Vec<JobRun>> {
        let result: rusqlite::Result<Vec<JobRun>> = (|| {
            self.conn
                .prepare_cached(&format!(
                    "SELECT {RUN_COLUMNS} FROM job_runs WHERE job_id = ?1 ORDER BY attempt, id"
                ))?
                .query_map([job_id], run_from_row)?
                .collect()
        })();
        result.map_err(|e| self.err("read job runs", e))
    }

    fn list(&mut self, filter: &ListFilter) -> Result<Vec<Job>> {
        let result: rusqlite::Result<Vec<Job>> = (|| {
            self.conn
                .prepare_cached(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs \
                     WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR queue = ?2) \
                       AND (?3 IS NULL OR kind = ?3) AND (?5 IS NULL OR id < ?5) \
                     ORDER BY id DESC LIMIT ?4"
                ))?
                .query_map(
                    params![
                        filter.state.map(|s| s.as_str()),
                        filter.queue,
                        filter.kind,
                        filter.limit as i64,
                        filter.before
                    ],
                    job_from_row,
                )?
                .collect()
        })();
        result.map_err(|e| self.err("list jobs", e))
    }

    fn last_run_id(&mut self) -> Result<i64> {
        let result = self
            .conn
            .query_row("SELECT COALESCE(max(id), 0) FROM job_runs", [], |r| {
                r.get(0)
            });
        result.map_err(|e| self.err("read job runs", e))
    }

    fn tally_runs_after(&mut self, after_id: i64) -> Result<RunTally> {
        let result = self
            .conn
            .prepare_cached(&super::tally_runs_sql("?1"))
            .and_then(|mut s| {
                s.query_row([after_id], |r| {
                    Ok(RunTally {
                        last_id: r.get(0)?,
                        succeeded: r.get::<_, i64>(1)? as u64,
                        failed: r.get::<_, i64>(2)? as u64,
                    })
                })
            });
        result.map_err(|e| self.err("read job runs", e))
    }

    fn runs_after(&mut self, after_id: i64, limit: usize) -> Result<Vec<JobRun>> {
        let result: rusqlite::Result<Vec<JobRun>> = (|| {
            self.conn
                .prepare_cached(&format!(
                    "SELECT {RUN_COLUMNS} FROM job_runs WHERE id > ?1 ORDER BY id LIMIT ?2"
                ))?
                .query_map(params![after_id, limit as i64], run_from_row)?
                .collect()
        })();
        result.map_err(|e| self.err("read job runs", e))
    }

    fn stats(&mut self, now: i64) -> Result<Stats> {
        use std::collections::BTreeMap;
        const MINUTE: i64 = 60_000;
        const HOUR: i64 = 3_600_000;
        let result: rusqlite::Result<Stats> = (|| {
            let tx = self.conn.transaction()?;
            let mut queues: BTreeMap<String, QueueStats> = BTreeMap::new();
            let entry = |name: String| QueueStats {
                queue: name,
                ..QueueStats::default()
            };
            {
                let mut stmt = tx.prepare_cached(
                    "SELECT queue, \
                       sum(run_at <= ?1), sum(run_at > ?1), min(CASE WHEN run_at <= ?1 THEN run_at END) \
                     FROM jobs WHERE state = 'queued' GROUP BY queue",
                )?;
                let mut rows = stmt.query([now])?;
                while let Some(r) = rows.next()? {
                    let name = text(r, 0)?;
                    let q = queues.entry(name.clone()).or_insert_with(|| entry(name));
                    q.ready = r.get::<_, i64>(1)? as u64;
                    q.scheduled = r.get::<_, i64>(2)? as u64;
                    q.lag_ms = r
                        .get::<_, Option<i64>>(3)?
                        .map_or(0, |oldest| (now - oldest).max(0));
                }
            }
            {
                let mut stmt = tx.prepare_cached(
                    "SELECT queue, count(*) FROM jobs INDEXED BY jobs_running \
                     WHERE state = 'running' GROUP BY queue",
                )?;
                let mut rows = stmt.query([])?;
                while let Some(r) = rows.next()? {
                    let name = text(r, 0)?;
                    queues
                        .entry(name.clone())
                        .or_insert_with(|| entry(name))
                        .running = r.get::<_, i64>(1)? as u64;
                }
            }
            for state in ["succeeded", "dead"] {
                let mut stmt = tx.prepare_cached(&format!(
                    "SELECT queue, sum(finished_at >= ?2), count(*) FROM jobs \
                     INDEXED BY jobs_{state} \
                     WHERE state = '{state}' AND finished_at >= ?1 GROUP BY queue"
                ))?;
                let mut rows = stmt.query([now - HOUR, now - MINUTE])?;
                while let Some(r) = rows.next()? {
                    let name = text(r, 0)?;
                    let minute = r.get::<_, i64>(1)? as u64;
                    let hour = r.get::<_, i64>(2)? as u64;
                    let q = queues.entry(name.clone()).or_insert_with(|| entry(name));
                    if state == "succeeded" {
                        q.succeeded_1m = minute;
                        q.succeeded_1h = hour;
                    } else {
                        q.dead_1m = minute;
                        q.dead_1h = hour;
                    }
                }
            }
            {
                let mut durations: BTreeMap<String, Vec<i64>> = BTreeMap::new();
                // The newest runs by rowid (the order they were written),
                // a range on the primary key with no index to maintain.
                let mut stmt = tx.prepare_cached(
                    "SELECT queue, duration_ms FROM job_runs \
                     WHERE id > (SELECT COALESCE(max(id), 0) FROM job_runs) - ?2 \
                       AND finished_at >= ?1",
                )?;
                let mut rows = stmt.query(params![now - HOUR, PERCENTILE_SAMPLE as i64])?;
                while let Some(r) = rows.next()? {
                    durations.entry(text(r, 0)?).or_default().push(r.get(1)?);
                }
                for (name, mut values) in durations {
                    values.sort_unstable();
                    let q = queues.entry(name.clone()).or_insert_with(|| entry(name));
                    q.p50_ms = percentile(&values, 0.50);
                    q.p95_ms = percentile(&values, 0.95);
                }
            }
            {
                let mut stmt = tx.prepare_cached("SELECT name, paused FROM queues")?;
                let mut rows = stmt.query([])?;
                while let Some(r) = rows.next()? {
                    let name = text(r, 0)?;
                    queues
                        .entry(name.clone())
                        .or_insert_with(|| entry(name))
                        .paused = r.get::<_, i64>(1)? != 0;
                }
            }
            let workers = tx
                .prepare_cached(
                    "SELECT id, host, pid, version, started_at, heartbeat_at, queues, \
                     (SELECT count(*) FROM jobs WHERE state = 'running' AND worker = workers.id) \
                 FROM workers ORDER BY id",
                )?
                .query_map([], worker_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            tx.commit()?;
            Ok(Stats {
                now,
                queues: queues.into_values().collect(),
                workers,
            })
        })();
        result.map_err(|e| self.err("read stats", e))
    }

    fn register_worker(&mut self, w: &WorkerInfo) -> Result<()> {
        self.write("register worker", |tx| {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO workers (id, host, pid, version, started_at, heartbeat_at, \
                 queues, running) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                w.id,
                w.host,
                w.pid,
                w.version,
                w.started_at,
                w.heartbeat_at,
                w.queues,
                w.running
            ])?;
            Ok(())
        })
    }

    fn heartbeat(&mut self, worker: &str, now: i64, running: i64) -> Result<()> {
        self.write("heartbeat", |tx| {
            tx.prepare_cached("UPDATE workers SET heartbeat_at = ?2, running = ?3 WHERE id = ?1")?
                .execute(params![worker, now, running])?;
            Ok(())
        })
    }

    fn deregister_worker(&mut self, worker: &str) -> Result<()> {
        self.write("deregister worker", |tx| {
            tx.prepare_cached("DELETE FROM workers WHERE id = ?1")?
                .execute([worker])?;
            Ok(())
        })
    }

    fn workers(&mut self) -> Result<Vec<WorkerInfo>> {
        let result: rusqlite::Result<Vec<WorkerInfo>> = (|| {
            self.conn
                .prepare_cached(
                    "SELECT id, host, pid, version, started_at, heartbeat_at, queues, \
                     (SELECT count(*) FROM jobs WHERE state = 'running' AND worker = workers.id) \
                 FROM workers ORDER BY id",
                )?
                .query_map([], worker_from_row)?
                .collect()
        })();
        result.map_err(|e| self.err("read workers", e))
    }
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentile_picks_the_nearest_rank() {
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[7], 0.95), Some(7));
        let values: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&values, 0.5), Some(50));
        assert_eq!(percentile(&values, 0.95), Some(95));
    }
}
