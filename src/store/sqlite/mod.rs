//! [`crate::store::Store`] on one SQLite file in WAL mode.
//!
//! jobd's own connections use `synchronous = NORMAL`: in WAL mode a power cut
//! can then undo only jobd's latest claims and completions, which at-least-once
//! delivery already covers; clients keep whatever setting they choose for
//! their inserts. Every write is one short `BEGIN IMMEDIATE` transaction so a
//! client with a busy timeout of a second never sees `database is locked`.

mod admin;
mod claim;
mod fleet;
pub mod guard;
mod queue;
mod reads;
mod schedules;
pub mod schema;
pub mod wake;

use crate::store::contract::Queue;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{
    params, params_from_iter, Connection, ErrorCode, OpenFlags, OptionalExtension, Row,
};

use crate::job::{Claimed, Completion, Job, JobState, NewJob, Pool, RunOutcome, Transition};
use crate::store::contract::{
    handlers_from_json, Applied, Claim, Enqueued, JobRun, Moved, OpenMode, Result, WorkerInfo,
};
use crate::store::error::StoreError;
use crate::store::shared::{cancelled_instead, RunRow, CANCELLED_ERROR, NEXT_ATTEMPT};
use schema::cpu_kind_test;
use schema::{MIGRATIONS, SCHEMA_VERSION};

/// Prepared statements kept per connection; enough for every named query.
const STATEMENT_CACHE: usize = 128;

/// The SQLite store.
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    busy_timeout: Duration,
    /// What the claims last saw of `limit_keys`.
    keys_seen: std::sync::Arc<crate::store::keyed::KeysSeen>,
}

const JOB_COLUMNS: &str = "id, queue, kind, payload, priority, run_at, max_attempts, timeout_ms, \
     unique_key, state, attempts, created_at, started_at, finished_at, lease_until, worker, \
     last_error, result, cancel_requested, limit_key, progress";

/// What a claim returns (see [`Claimed`]).
const CLAIMED_COLUMNS: &str =
    "id, queue, kind, payload, priority, run_at, max_attempts, timeout_ms, attempts, started_at, \
     limit_key, parents, callback_for, snoozes";

const RUN_COLUMNS: &str =
    "id, job_id, queue, kind, attempt, worker, started_at, finished_at, outcome, error, duration_ms";

/// The order of `job_runs` in SQLite's words.
const RUN_ORDER: crate::store::shared::RunOrder = crate::store::shared::RunOrder {
    greatest: "max",
    null_text: "NULL",
    pruned: schema::places_pruned!(),
    // A difference past the largest integer is a REAL, which the cast
    // brings back to the largest integer.
    duration: "CAST(max(finished_at - started_at, 0) AS INTEGER)",
};

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
    /// [`OpenMode::Create`] (call [`crate::store::Admin::migrate`] next), or checking that it
    /// exists with the current schema with [`OpenMode::Existing`]. A file from
    /// a newer jobd is refused either way and left untouched.
    pub fn open(path: &Path, busy_timeout: Duration, mode: OpenMode) -> Result<SqliteStore> {
        let path = path.to_path_buf();
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => {
                return Err(StoreError::IsDirectory {
                    database: shown(&path),
                })
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if mode == OpenMode::Existing {
                    return Err(StoreError::Missing {
                        database: shown(&path),
                    });
                }
                let folder = path.parent().filter(|p| !p.as_os_str().is_empty());
                if folder.is_some_and(|f| !f.is_dir()) {
                    return Err(StoreError::NoFolder {
                        database: shown(&path),
                    });
                }
            }
            Err(e) => {
                return Err(StoreError::ReadOnly {
                    database: shown(&path),
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
            keys_seen: Default::default(),
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
                database: shown(&store.path),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        store.configure()?;
        if mode == OpenMode::Existing && version < SCHEMA_VERSION {
            return Err(StoreError::TooOld {
                database: shown(&store.path),
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
    /// from older files; the daemon always uses [`crate::store::Admin::migrate`].
    pub fn migrate_to(&mut self, version: i64) -> Result<(i64, i64)> {
        let target = version.clamp(0, SCHEMA_VERSION);
        // Every step in one transaction: a step that fails (a file whose
        // version a client set back, so a step meets the tables it makes)
        // leaves the file as it was, not half-migrated. The version is
        // read inside it, so of two processes migrating at once one does
        // the work and the other finds it done.
        self.write("migrate", |tx| {
            let before: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            for (i, sql) in MIGRATIONS.iter().enumerate().take(target as usize) {
                let step = i as i64 + 1;
                if before >= step {
                    continue;
                }
                tx.execute_batch(sql)?;
                tx.execute_batch(&format!("PRAGMA user_version = {step}"))?;
            }
            Ok((before, before.max(target)))
        })
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
                database: shown(&self.path),
                detail: format!("journal_mode stayed {mode:?}, WAL is required"),
            });
        }
        self.conn
            .execute_batch("PRAGMA synchronous = NORMAL; PRAGMA temp_store = MEMORY;")
            .map_err(|e| self.err("configure", e))
    }

    fn err(&self, op: &'static str, e: rusqlite::Error) -> StoreError {
        match classify(&self.path, op, e) {
            StoreError::Busy { database, op, .. } => StoreError::Busy {
                database,
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
    let database = shown(path);
    if let rusqlite::Error::SqliteFailure(ref f, ref msg) = e {
        match f.code {
            ErrorCode::NotADatabase => return StoreError::NotADatabase { database },
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                return StoreError::Busy {
                    database,
                    op,
                    waited: Duration::ZERO,
                }
            }
            ErrorCode::DiskFull => return StoreError::Full { database, op },
            ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied => {
                return StoreError::ReadOnly {
                    database,
                    detail: msg.clone().unwrap_or_else(|| f.to_string()),
                }
            }
            _ => {}
        }
    }
    StoreError::Failed {
        database,
        op,
        detail: e.to_string(),
        source: Some(Box::new(e)),
    }
}

/// A database file as errors name it.
fn shown(path: &Path) -> String {
    path.display().to_string()
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
        limit_key: opt_text(row, 19)?,
        progress: opt_text(row, 20)?,
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
        limit_key: opt_text(row, 10)?,
        undecodable,
        // The insert trigger admits only an array of integers.
        parents: opt_text(row, 11)?
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default(),
        callback_for: opt_text(row, 12)?,
        snoozes: row.get(13)?,
        inputs: None,
    })
}

fn run_from_row(row: &Row<'_>) -> rusqlite::Result<JobRun> {
    let outcome: String = row.get(8)?;
    let started_at = row.get::<_, Option<i64>>(6)?.unwrap_or(0);
    Ok(JobRun {
        id: row.get(0)?,
        job_id: row.get(1)?,
        queue: text(row, 2)?,
        kind: text(row, 3)?,
        attempt: row.get(4)?,
        // A succeeded job row an operator wrote by hand may lack these.
        worker: opt_text(row, 5)?.unwrap_or_default(),
        started_at,
        finished_at: row.get::<_, Option<i64>>(7)?.unwrap_or(started_at),
        outcome: outcome.parse().map_err(|e: String| {
            rusqlite::Error::FromSqlConversionFailure(8, rusqlite::types::Type::Text, e.into())
        })?,
        error: opt_text(row, 9)?,
        duration_ms: row.get::<_, Option<i64>>(10)?.unwrap_or(0),
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
        handlers: handlers_from_json(opt_text(row, 8)?.as_deref()),
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

/// The text of a batched statement for each chunk size (1, 2, 4, … 64
/// rows), built once: a completion of 64 jobs formatted 4 KB of SQL for
/// each statement before the statement cache could find it.
fn chunk_sql(texts: &'static std::sync::LazyLock<Vec<String>>, rows: usize) -> &'static str {
    debug_assert!(rows.is_power_of_two() && rows <= CHUNK_MAX);
    &texts[rows.ilog2() as usize]
}

/// Every chunk size's text of a statement built by `sql`.
fn per_chunk_size(sql: fn(usize) -> String) -> Vec<String> {
    (0..=CHUNK_MAX.ilog2()).map(|i| sql(1 << i)).collect()
}

static COMPLETE_SQL: std::sync::LazyLock<Vec<String>> =
    std::sync::LazyLock::new(|| per_chunk_size(complete_sql));

static INSERT_RUNS_SQL: std::sync::LazyLock<Vec<String>> =
    std::sync::LazyLock::new(|| per_chunk_size(insert_runs_sql));

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
/// worker, attempt and start (a release or a snooze gives the attempt
/// number back, so the same worker may hold the same attempt again; the
/// claim's start tells its holds apart), so a late writer (its lease lapsed, someone rescued
/// the job) matches nothing, and RETURNING says which rows moved. One
/// statement per chunk instead of per job: statement set-up and tear-down
/// were half the cost of a completion. Public, as PostgreSQL's
/// `claim_sql` is, so that a benchmark measures the very statement.
pub fn complete_sql(rows: usize) -> String {
    // A job an operator asked to cancel ends cancelled whatever its attempt
    // ended in, except a success (the work happened): the flag is read here,
    // in the fenced write, so a cancel that lands after the daemon last
    // looked is honoured too.
    let cancel = "(jobs.cancel_requested = 1 AND c.state <> 'succeeded')";
    format!(
        "WITH c(id, worker, attempt, state, finished_at, run_at, result, last_error, release, \
           snooze, run_id, started_at) AS (VALUES {values}) \
         UPDATE jobs SET state = CASE WHEN {cancel} THEN 'cancelled' ELSE c.state END, \
           finished_at = CASE WHEN c.release AND NOT {cancel} THEN jobs.finished_at ELSE c.finished_at END, \
           lease_until = NULL, \
           run_at = CASE WHEN {cancel} THEN jobs.run_at ELSE COALESCE(c.run_at, jobs.run_at) END, \
           result = CASE WHEN c.state = 'succeeded' THEN c.result ELSE jobs.result END, \
           last_error = CASE WHEN {cancel} THEN '{CANCELLED_ERROR}' \
             WHEN c.release THEN jobs.last_error ELSE c.last_error END, \
           attempts = jobs.attempts - CASE WHEN {cancel} THEN 0 ELSE c.release END, \
           snoozes = jobs.snoozes + CASE WHEN {cancel} THEN 0 ELSE c.snooze END, \
           run_id = CASE WHEN c.state = 'succeeded' THEN c.run_id ELSE jobs.run_id END \
         FROM c WHERE jobs.id = c.id AND jobs.state = 'running' AND jobs.worker = c.worker \
           AND jobs.attempts = c.attempt AND jobs.started_at = c.started_at \
         RETURNING jobs.id, jobs.worker, jobs.attempts, jobs.queue, jobs.kind, jobs.state",
        values = values_list(rows, 12)
    )
}

/// The twelve values of one row of [`complete_sql`]; `run_id` is a
/// success's place in the order of `job_runs` (see [`next_run_id`]).
fn completion_values(c: &Completion, run_id: Option<i64>) -> [rusqlite::types::Value; 12] {
    use rusqlite::types::Value;
    let text = |s: Option<&str>| s.map_or(Value::Null, |s| Value::Text(s.to_string()));
    let (state, run_at, result, release) = match &c.transition {
        Transition::Succeed { result } => ("succeeded", None, result.as_deref(), 0),
        Transition::Requeue { run_at } => ("queued", Some(*run_at), None, 0),
        Transition::Release | Transition::Snooze { .. } => ("queued", None, None, 1),
        Transition::Dead => ("dead", None, None, 0),
        Transition::Cancel => ("cancelled", None, None, 0),
    };
    let error = match c.transition {
        Transition::Succeed { .. } => None,
        _ => c.error.as_deref(),
    };
    // A snooze is a release with a time of its own, counted.
    let (run_at, snooze) = match c.transition {
        Transition::Snooze { run_at } => (Some(run_at), 1),
        _ => (run_at, 0),
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
        Value::Integer(snooze),
        run_id.map_or(Value::Null, Value::Integer),
        Value::Integer(c.started_at),
    ]
}

/// A multi-row insert of `rows` attempt records, ids given.
pub fn insert_runs_sql(rows: usize) -> String {
    format!(
        "INSERT INTO job_attempts (id, job_id, attempt, worker, queue, kind, started_at, \
         finished_at, outcome, error, duration_ms) VALUES {}",
        values_list(rows, 11)
    )
}

/// The next id in the order of `job_runs`, shared by the attempt rows and
/// the successes (`jobs.run_id`), inside the write transaction that takes
/// it: SQLite's one writer makes that order the order of the commits,
/// which `tail` follows. Two index seeks.
fn next_run_id(tx: &rusqlite::Connection) -> rusqlite::Result<i64> {
    static LAST_RUN_SQL: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| RUN_ORDER.last_sql());
    let last: i64 = tx
        .prepare_cached(&LAST_RUN_SQL)?
        .query_row([], |r| r.get(0))?;
    Ok(last + 1)
}

/// Writes attempt records with one multi-row insert per chunk; the single
/// way jobd appends to `job_attempts` (completions and rescues alike).
fn insert_runs(tx: &rusqlite::Transaction<'_>, runs: &[RunRow<'_>]) -> rusqlite::Result<()> {
    use rusqlite::types::Value;
    if runs.is_empty() {
        return Ok(());
    }
    let mut next = next_run_id(tx)?;
    for chunk in chunks(runs) {
        let mut args: Vec<Value> = Vec::with_capacity(chunk.len() * 11);
        for run in chunk {
            args.extend([
                Value::Integer(next),
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
                Value::Integer(run.finished_at.saturating_sub(run.started_at).max(0)),
            ]);
            next += 1;
        }
        tx.prepare_cached(chunk_sql(&INSERT_RUNS_SQL, chunk.len()))?
            .execute(params_from_iter(args))?;
    }
    Ok(())
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
        "UPDATE jobs SET state = 'running', attempts = {NEXT_ATTEMPT}, started_at = ?1, \
         finished_at = NULL, lease_until = ?2, worker = ?3 \
         WHERE state = 'queued' AND id IN ( \
             SELECT id FROM jobs \
             WHERE state = 'queued' AND queue = ?4 AND {} = {} AND run_at <= ?1 \
               AND NOT EXISTS (SELECT 1 FROM queues WHERE name = ?4 AND paused = 1) \
             ORDER BY priority DESC, run_at, id LIMIT {limit}) \
         RETURNING {CLAIMED_COLUMNS}",
        cpu_kind_test(),
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
             timeout_ms, unique_key, created_at, limit_key, parents, run_always, batch, \
             callback_for, sequence) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15) \
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
                job.limit_key,
                (!job.parents.is_empty())
                    .then(|| serde_json::to_string(&job.parents).unwrap_or_default()),
                i64::from(job.run_always),
                job.batch,
                job.callback_for,
                job.sequence,
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
                 AND (state = 'queued' OR state = 'running' OR state = 'waiting')",
            )?
            .query_row([&job.unique_key], |r| r.get(0))
            .map(Enqueued::Duplicate),
    }
}

/// Writes the blocks services asked for (see [`crate::job::KeyBlock`])
/// with the outcomes that applied; a key's block only ever lengthens.
fn write_blocks(
    tx: &rusqlite::Transaction<'_>,
    completions: &[Completion],
    applied: &[Applied],
) -> rusqlite::Result<()> {
    for (c, a) in completions.iter().zip(applied) {
        let (Some(block), Applied::Done) = (&c.block, a) else {
            continue;
        };
        let Some(until) = block.until else { continue };
        tx.prepare_cached(
            "INSERT INTO limit_keys (key, blocked_until, blocked_for_ms, blocked_status, \
               closed_until, updated_at) VALUES (?1, ?2, ?3, ?4, ?2, ?5) \
             ON CONFLICT (key) DO UPDATE SET \
               blocked_until = max(coalesce(blocked_until, 0), excluded.blocked_until), \
               blocked_for_ms = excluded.blocked_for_ms, blocked_status = excluded.blocked_status, \
               closed_until = max(closed_until, excluded.blocked_until), \
               updated_at = excluded.updated_at",
        )?
        .execute(params![
            block.key,
            until,
            until - c.finished_at,
            block.status,
            c.finished_at
        ])?;
    }
    Ok(())
}

/// Writes outcomes inside an open transaction (see [`crate::store::Queue::complete`]).
// Long: the whole completion transaction (fenced updates, cancel checks, attempt rows) in one place, as the hot path is easier to reason about whole.
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
    // A success takes its place in the order of `job_runs` on the job row
    // (a fenced-out one leaves a gap, which no reader minds).
    let mut next_run = None;
    for chunk in chunks(completions) {
        let mut stmt = tx.prepare_cached(chunk_sql(&COMPLETE_SQL, chunk.len()))?;
        let mut args: Vec<rusqlite::types::Value> = Vec::with_capacity(chunk.len() * 12);
        for c in chunk {
            let run_id = match c.transition {
                Transition::Succeed { .. } => {
                    let next = match next_run {
                        Some(next) => next,
                        None => next_run_id(tx)?,
                    };
                    next_run = Some(next + 1);
                    Some(next)
                }
                _ => None,
            };
            args.extend(completion_values(c, run_id));
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
                let released = matches!(
                    c.transition,
                    Transition::Release | Transition::Snooze { .. }
                );
                let counted = i64::from(released && !overridden);
                *worker == c.worker && *attempts + counted == c.attempt
            });
        match applied.then(|| moved.remove(&c.id)).flatten() {
            Some((_, _, queue, kind, state)) => {
                let overridden = cancelled_instead(c, &state);
                // A success is its job row (`run_id`); the rest get rows.
                if state != "succeeded" {
                    runs.push((c, queue, kind, overridden));
                }
                out.push(if overridden {
                    Applied::Cancelled
                } else {
                    Applied::Done
                });
            }
            None => {
                // Read before this batch's records go in, so a second
                // outcome for one attempt within the batch stays stale.
                // An attempt number recurs (a snooze or an interrupted attempt does
                // not count): this very outcome's record first, then a cancel's.
                let recorded: Option<String> = tx
                    .prepare_cached(
                        "SELECT outcome FROM job_runs WHERE job_id = ?1 AND attempt = ?2 \
                         AND worker = ?3 AND outcome <> 'rescued' \
                         ORDER BY outcome = ?4 DESC, outcome = 'cancelled' DESC LIMIT 1",
                    )?
                    .query_row(
                        params![c.id, c.attempt, c.worker, c.outcome.as_str()],
                        |r| r.get(0),
                    )
                    .optional()?;
                out.push(crate::store::shared::recorded_as(c, recorded.as_deref()));
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
    write_blocks(tx, completions, &out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::store::shared::percentile;

    #[test]
    fn percentile_picks_the_nearest_rank() {
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[7], 0.95), Some(7));
        let values: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&values, 0.5), Some(50));
        assert_eq!(percentile(&values, 0.95), Some(95));
    }
}
