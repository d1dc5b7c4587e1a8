//! The PostgreSQL backend (docs/reference.md): daemons on many hosts share one queue.
//!
//! The schema is the SQLite one with `BIGINT` epoch-ms timestamps and
//! `jsonb` payloads and results, the same columns, states and CHECK rules,
//! so clients insert the same way on either backend and the database itself
//! rejects a bad row; an insert trigger NOTIFYs `jobd_jobs_<schema>`.
//!
//! [`PgStore`] implements the whole [`crate::store::contract::Store`] trait and passes the
//! same conformance suite as SQLite (`tests/store.rs` runs every test on
//! both). Claims are one `UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP
//! LOCKED)` per queue and pool over the ready index, so daemons claim side
//! by side; rescue skips rows other transactions hold. Statements run on
//! every turn are prepared once per connection, and a connection the
//! server lost is reopened by the next operation. [`PgStore::import_queued`]
//! is the receiving end of `jobd migrate --from sqlite:PATH`.
//!
//! The `postgres` crate is the blocking client the issue names: it runs a
//! small runtime of its own inside, and jobd's code stays synchronous.

mod admin;
mod claim;
mod connect;
mod fleet;
mod queue;
mod reads;
mod schedules;
pub mod schema;
pub mod wake;

pub use connect::{channel, CONNECT_TIMEOUT, TCP_USER_TIMEOUT};
pub use schema::{MIGRATIONS, SCHEMA_VERSION};

pub use crate::config::redact_url;
use connect::{client, describe, failing};

use postgres::Client;

use crate::job::{Claimed, Completion, Job, JobState, NewJob, Pool, RunOutcome, Transition};
use crate::store::contract::{Applied, CronRow, Enqueued, JobRun, Moved, Result};
use crate::store::error::StoreError;
use crate::store::shared::{cancelled_instead, RunRow, CANCELLED_ERROR, NEXT_ATTEMPT};

/// Moves a batch of queued jobs in, and marks them imported, in one
/// statement; rows imported before come back with what they became.
const IMPORT_SQL: &str = "
WITH u AS (
    SELECT * FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[],
        $7::bigint[], $8::bigint[], $9::bigint[], $10::text[], $11::bigint[], $12::bigint[],
        $13::text[], $15::text[])
      AS u(source_id, queue, kind, payload, priority, run_at, max_attempts, timeout_ms,
           unique_key, attempts, created_at, last_error, limit_key)),
before AS (
    SELECT i.source_id, i.job_id FROM imported_jobs i
    WHERE i.source = $1 AND i.source_id IN (SELECT source_id FROM u)),
s AS (
    SELECT u.*, nextval(pg_get_serial_sequence('jobs', 'id')) AS new_id FROM u
    WHERE u.source_id NOT IN (SELECT source_id FROM before)),
ins AS (
    INSERT INTO jobs (id, queue, kind, payload, priority, run_at, max_attempts, timeout_ms,
                      unique_key, attempts, created_at, last_error, limit_key)
    SELECT new_id, queue, kind, payload::jsonb, priority, run_at, max_attempts, timeout_ms,
           unique_key, attempts, created_at, last_error, limit_key
    FROM s ORDER BY source_id
    ON CONFLICT DO NOTHING
    RETURNING id),
now_moved AS (
    SELECT s.source_id, ins.id AS job_id FROM s LEFT JOIN ins ON ins.id = s.new_id),
marks AS (
    INSERT INTO imported_jobs (source, source_id, job_id, imported_at)
    SELECT $1, source_id, job_id, $14 FROM now_moved)
SELECT source_id, job_id FROM now_moved
UNION ALL
SELECT source_id, job_id FROM before
";

/// One field of every row as an array parameter, for the `unnest($n)`
/// statements that write a whole batch at once.
fn column<'a, T, U>(rows: &'a [T], field: impl Fn(&'a T) -> U) -> Vec<U> {
    rows.iter().map(field).collect()
}

/// Inserts a batch of jobs with one statement, each de-duplicated on its
/// `unique_key` against queued and running jobs (and earlier rows of the
/// batch), and returns what became of each, in order. Ids are drawn from
/// the sequence first so that each result finds its input row.
const INSERT_JOBS_SQL: &str = "
WITH input AS (
    SELECT i.*, nextval(pg_get_serial_sequence('jobs', 'id')) AS id
    FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[],
        $7::bigint[], $8::text[], $10::text[], $11::text[], $12::boolean[], $13::text[],
        $14::text[], $15::text[]) WITH ORDINALITY
      AS i(queue, kind, payload, priority, run_at, max_attempts, timeout_ms, unique_key,
           limit_key, parents, run_always, batch, callback_for, sequence, n)),
ins AS (
    INSERT INTO jobs (id, queue, kind, payload, priority, run_at, max_attempts, timeout_ms,
                      unique_key, limit_key, created_at, parents, run_always, batch, callback_for,
                      sequence)
    SELECT id, queue, kind, payload::jsonb, priority, run_at, max_attempts, timeout_ms,
           unique_key, limit_key, $9, parents::bigint[], run_always, batch, callback_for, sequence
    FROM input ORDER BY n
    ON CONFLICT DO NOTHING
    RETURNING id, unique_key)
SELECT input.n, ins.id IS NOT NULL,
       COALESCE(ins.id,
                (SELECT min(b.id) FROM ins b WHERE b.unique_key = input.unique_key),
                (SELECT j.id FROM jobs j WHERE j.unique_key = input.unique_key
                   AND j.state IN ('queued', 'running', 'waiting')))
FROM input LEFT JOIN ins ON ins.id = input.id
ORDER BY input.n
";

fn insert_jobs(
    tx: &mut postgres::Transaction<'_>,
    statements: &mut Statements,
    jobs: &[NewJob],
    now: i64,
) -> std::result::Result<Vec<Enqueued>, postgres::Error> {
    let mut out = insert_jobs_once(tx, statements, jobs, now)?;
    // A row skipped for a key whose holder committed while the statement
    // ran has no holder in the statement's snapshot; a fresh statement
    // either sees the holder or inserts the row.
    for (i, job) in jobs.iter().enumerate() {
        let mut passes = 0;
        while out[i].is_none() && passes < 3 {
            out[i] = insert_jobs_once(tx, statements, std::slice::from_ref(job), now)?[0];
            passes += 1;
        }
        if out[i].is_none() {
            let holder: i64 = tx
                .query_one(
                    "SELECT id FROM jobs WHERE unique_key = $1 AND state IN ('queued', 'running', 'waiting')",
                    &[&job.unique_key],
                )?
                .get(0);
            out[i] = Some(Enqueued::Duplicate(holder));
        }
    }
    Ok(out.into_iter().flatten().collect())
}

/// One pass of [`INSERT_JOBS_SQL`]: None where a skipped row's holder is
/// not visible to it.
fn insert_jobs_once(
    tx: &mut postgres::Transaction<'_>,
    statements: &mut Statements,
    jobs: &[NewJob],
    now: i64,
) -> std::result::Result<Vec<Option<Enqueued>>, postgres::Error> {
    let statement = statements.get(tx, INSERT_JOBS_SQL)?;
    let rows = tx.query(
        &statement,
        &[
            &column(jobs, |j| j.queue.as_str()),
            &column(jobs, |j| j.kind.as_str()),
            &column(jobs, |j| j.payload.as_str()),
            &column(jobs, |j| j.priority),
            &column(jobs, |j| j.run_at.unwrap_or(now)),
            &column(jobs, |j| j.max_attempts),
            &column(jobs, |j| j.timeout_ms),
            &column(jobs, |j| j.unique_key.as_deref()),
            &now,
            &column(jobs, |j| j.limit_key.as_deref()),
            // An array of arrays cannot be unnested row by row: each
            // row's parents travel as an array literal.
            &column(jobs, |j| {
                (!j.parents.is_empty()).then(|| {
                    let ids: Vec<String> = j.parents.iter().map(i64::to_string).collect();
                    format!("{{{}}}", ids.join(","))
                })
            }),
            &column(jobs, |j| j.run_always),
            &column(jobs, |j| j.batch.as_deref()),
            &column(jobs, |j| j.callback_for.as_deref()),
            &column(jobs, |j| j.sequence.as_deref()),
        ],
    )?;
    Ok(rows
        .iter()
        .map(|r| {
            let id: Option<i64> = r.get(2);
            // Only the unique_key index can make DO NOTHING skip a row.
            id.map(|id| match r.get(1) {
                true => Enqueued::Inserted(id),
                false => Enqueued::Duplicate(id),
            })
        })
        .collect())
}

/// A connection to a PostgreSQL database holding (or about to hold) the
/// jobd schema.
pub struct PgStore {
    client: Client,
    url: String,
    lock_timeout: std::time::Duration,
    statements: Statements,
    /// What the claims last saw of `limit_keys`.
    keys_seen: crate::store::keyed::KeysSeen,
    /// The connection that writes a write step's outcomes while this one
    /// claims (see [`Queue::complete_and_claim`]); opened at the first step
    /// that has both.
    ///
    /// [`Queue::complete_and_claim`]: crate::store::contract::Queue::complete_and_claim
    outcomes: Option<Box<OutcomeWriter>>,
    /// When to try opening `outcomes` again after it could not be opened.
    outcomes_retry: Option<std::time::Instant>,
    /// Whether this session serves a dispatcher (see
    /// [`crate::store::contract::Queue::serve_dispatcher`]): its commits do
    /// not wait for the WAL flush, except those that write outcomes.
    dispatching: bool,
    /// Whether the LISTEN of [`Queue::watch_commits`] is connected now,
    /// so that the flow triggers' NOTIFY reaches the daemon.
    ///
    /// [`Queue::watch_commits`]: crate::store::contract::Queue::watch_commits
    listening: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// The dispatcher's session setting: commits return before their WAL is
/// flushed (the server flushes it within `wal_writer_delay`).
pub(crate) const UNFLUSHED: &str = "SET synchronous_commit = off";

/// A transaction that writes outcomes or cron's slots on the dispatcher's
/// session commits as the server, role or URL says (`on` unless an
/// operator chose otherwise), as every outcome does: an undone slot
/// would never run again.
pub(crate) const FLUSHED: &str = "SET LOCAL synchronous_commit TO DEFAULT";

/// A second session of the same store that only writes outcomes, so that
/// one daemon keeps two server backends busy: one step's claim runs on the
/// first while its outcomes are written here. Alone, one backend was the
/// limit of a daemon (about 80 % of a core, the daemon itself 13 %).
struct OutcomeWriter {
    pub(super) client: Client,
    statements: Statements,
    url: String,
    lock_timeout: std::time::Duration,
}

impl OutcomeWriter {
    /// A session named after the daemon's own, plus ` outcomes`, so that
    /// `pg_stat_activity` tells the two apart.
    fn session(url: &str, lock_timeout: std::time::Duration) -> Result<Client> {
        let mut client = PgStore::session(url, lock_timeout)?;
        client
            .batch_execute(
                "SELECT set_config('application_name', \
                   left(current_setting('application_name'), 54) || ' outcomes', false)",
            )
            .map_err(failing(url, "connect"))?;
        Ok(client)
    }

    /// Writes `completions` in one transaction of their own (see
    /// [`complete_in`]), on a fresh session if the last one was lost.
    fn complete(&mut self, completions: &[Completion]) -> Result<Vec<Applied>> {
        let fail = busy_or_failing(&self.url, self.lock_timeout, "complete");
        if self.client.is_closed() {
            self.client = Self::session(&self.url, self.lock_timeout)?;
            self.statements = Statements::default();
        }
        let mut tx = self.client.transaction().map_err(&fail)?;
        // As on the dispatcher's session: behind a pooler that hands out
        // server sessions per transaction, that session's `UNFLUSHED` may
        // have been left on this one.
        tx.batch_execute(FLUSHED).map_err(&fail)?;
        let applied = complete_in(&mut tx, &mut self.statements, completions).map_err(&fail)?;
        tx.commit().map_err(&fail)?;
        Ok(applied)
    }
}

/// How long a daemon writes outcomes and claims on one session after the
/// second could not be opened, before it tries again.
pub(super) const OUTCOMES_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Prepared statements by their SQL, so that a statement run on every
/// turn is parsed and planned by the server once per connection, not once
/// per transaction.
#[derive(Default)]
struct Statements(std::collections::HashMap<String, postgres::Statement>);

impl Statements {
    /// The statement for `sql`, prepared on `client` the first time.
    fn get(
        &mut self,
        client: &mut impl postgres::GenericClient,
        sql: &str,
    ) -> std::result::Result<postgres::Statement, postgres::Error> {
        if let Some(statement) = self.0.get(sql) {
            return Ok(statement.clone());
        }
        let statement = client.prepare(sql)?;
        self.0.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &redact_url(&self.url))
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host/db`).
    ///
    /// `lock_timeout` (jobd's `database.busy_timeout`) bounds how long any
    /// statement waits for a lock another session holds (a client's open
    /// transaction on a job row, a `LOCK TABLE`): past it the statement
    /// fails and is retried like any database error, so the dispatcher
    /// keeps turning (and pinging systemd's watchdog) instead of hanging.
    pub fn connect(url: &str, lock_timeout: std::time::Duration) -> Result<PgStore, StoreError> {
        let client = Self::session(url, lock_timeout)?;
        Ok(PgStore {
            client,
            url: url.to_string(),
            lock_timeout,
            statements: Statements::default(),
            keys_seen: Default::default(),
            outcomes: None,
            outcomes_retry: None,
            dispatching: false,
            listening: Default::default(),
        })
    }

    /// The outcome writer, opened if need be; `None` while it cannot be
    /// (the step then runs on this session alone, as one transaction).
    fn outcome_writer(&mut self) -> Option<Box<OutcomeWriter>> {
        if let Some(writer) = self.outcomes.take() {
            return Some(writer);
        }
        let now = std::time::Instant::now();
        if self.outcomes_retry.is_some_and(|t| now < t) {
            return None;
        }
        match OutcomeWriter::session(&self.url, self.lock_timeout) {
            Ok(client) => {
                self.outcomes_retry = None;
                Some(Box::new(OutcomeWriter {
                    client,
                    statements: Statements::default(),
                    url: self.url.clone(),
                    lock_timeout: self.lock_timeout,
                }))
            }
            Err(e) => {
                // Said once a streak: the daemon goes on at about half
                // its speed (a connection limit reached, say).
                if self.outcomes_retry.is_none() {
                    crate::store::error::log_trouble(
                        "open a second session for outcomes",
                        &e,
                        "writing outcomes with the claims on one session, and trying again every 5s",
                    );
                }
                self.outcomes_retry = Some(now + OUTCOMES_RETRY);
                None
            }
        }
    }

    fn session(url: &str, lock_timeout: std::time::Duration) -> Result<Client, StoreError> {
        let fail = failing(url, "connect");
        let mut client = client(url, "connect")?;
        client
            .batch_execute(&format!(
                "SET lock_timeout = {}",
                lock_timeout.as_millis().max(1)
            ))
            .map_err(&fail)?;
        Ok(client)
    }

    /// Opens a fresh connection when the last one was lost (the server
    /// restarted, a proxy or an administrator cut it), so a daemon rides
    /// out a database restart: the operation that failed is retried on the
    /// new connection like any other database error.
    fn revive(&mut self) -> Result<()> {
        if !self.client.is_closed() {
            return Ok(());
        }
        self.client = Self::session(&self.url, self.lock_timeout)?;
        self.statements = Statements::default();
        if self.dispatching {
            self.client
                .batch_execute(UNFLUSHED)
                .map_err(self.failing("connect"))?;
        }
        Ok(())
    }

    /// Turns a client error during `op` into the store error: a statement
    /// that waited `lock_timeout` for another session's lock is
    /// [`StoreError::Busy`] (logged `db.busy`, as SQLite's busy timeout is),
    /// anything else names the database and what the server said.
    fn failing(&self, op: &'static str) -> impl Fn(postgres::Error) -> StoreError {
        busy_or_failing(&self.url, self.lock_timeout, op)
    }

    fn err(&self, op: &'static str, e: postgres::Error) -> StoreError {
        self.failing(op)(e)
    }

    /// Connects to `url` for a command that needs the current schema: a
    /// database without it, or with an older one, is an error that says to
    /// run `jobd migrate`.
    pub fn open_current(
        url: &str,
        lock_timeout: std::time::Duration,
    ) -> Result<PgStore, StoreError> {
        let mut store = PgStore::connect(url, lock_timeout)?;
        let found = store.schema_version()?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                database: redact_url(url),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if found < SCHEMA_VERSION {
            return Err(StoreError::TooOld {
                database: redact_url(url),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(store)
    }

    /// The schema version of the database (0: no jobd schema yet).
    pub fn schema_version(&mut self) -> Result<i64, StoreError> {
        let exists: bool = self
            .client
            .query_one("SELECT to_regclass('jobd_schema') IS NOT NULL", &[])
            .map_err(|e| self.err("read the schema version", e))?
            .get(0);
        if !exists {
            return Ok(0);
        }
        let version: i64 = self
            .client
            .query_one("SELECT version FROM jobd_schema", &[])
            .map_err(|e| self.err("read the schema version", e))?
            .get(0);
        Ok(version)
    }
}

/// A client error during `op` as the store error (see [`PgStore::failing`]).
fn busy_or_failing(
    url: &str,
    waited: std::time::Duration,
    op: &'static str,
) -> impl Fn(postgres::Error) -> StoreError {
    let url = url.to_string();
    move |e| {
        if e.code() == Some(&postgres::error::SqlState::LOCK_NOT_AVAILABLE) {
            return StoreError::Busy {
                database: redact_url(&url),
                op,
                waited,
            };
        }
        failing(&url, op)(e)
    }
}

/// The CPU-kind test of the claim, built from the kind catalogue
/// ([`crate::job::CPU_KINDS`]) as migration 1's ready index spells it (a
/// test holds the two together).
fn cpu_kind_test() -> &'static str {
    static TEST: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let names: Vec<String> = crate::job::CPU_KINDS
            .iter()
            .map(|k| format!("'{k}'"))
            .collect();
        format!("(kind IN ({}))", names.join(", "))
    });
    &TEST
}

/// The condition that keeps a query to `pool`'s part of the ready index.
///
/// IO: `IS FALSE`, never `= $n`: the planner rewrites `(kind IN (…)) =
/// false` into `kind <> ALL (…)`, which no longer matches the index
/// expression, and then sorts every queued job on each claim (31 ms a
/// claim with 50 000 queued, measured). A boolean test it matches.
///
/// CPU: the bare `kind IN (…)`, the predicate of the CPU jobs' own partial
/// index (`jobs_ready_cpu`, schema v7), which the planner proves from this
/// spelling only (not from `IS TRUE`). Through `jobs_ready` it estimated
/// half the table for the pool's index range and the few CPU jobs for the
/// filter, and chose a sequential scan of every row: 210 ms a claim with
/// 1 000 000 IO jobs queued and analyzed, measured.
fn pool_test(pool: Pool) -> String {
    match pool {
        Pool::Cpu => cpu_kind_test().to_string(),
        Pool::Io => format!("({} IS FALSE)", cpu_kind_test()),
    }
}

/// `jobd migrate --from`: queued jobs moved in from another database.
impl PgStore {
    /// Inserts `jobs` (queued jobs of the database `source` names) with
    /// their attempts, times and last error, each at most once per source
    /// however often this runs: a job imported before reports what it
    /// became. A job whose `unique_key` a queued or running job here holds
    /// is not inserted. Rows the server refuses (a payload `jsonb` cannot
    /// hold, an empty queue) are reported one by one and the rest go in.
    pub fn import_queued(
        &mut self,
        source: &str,
        jobs: &[Job],
        now: i64,
    ) -> Result<Vec<(i64, Moved)>, StoreError> {
        let fail = self.failing("import jobs");
        let mut tx = self.client.transaction().map_err(&fail)?;
        tx.batch_execute("SAVEPOINT batch").map_err(&fail)?;
        match import_in(&mut tx, &mut self.statements, source, jobs, now) {
            Ok(moved) => {
                tx.commit().map_err(&fail)?;
                return Ok(moved);
            }
            // Something in the batch is unfit; find what, row by row.
            Err(e) if e.as_db_error().is_some() => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT batch")
                    .map_err(&fail)?;
            }
            Err(e) => return Err(fail(e)),
        }
        let mut moved = Vec::with_capacity(jobs.len());
        for job in jobs {
            tx.batch_execute("SAVEPOINT one").map_err(&fail)?;
            match import_in(
                &mut tx,
                &mut self.statements,
                source,
                std::slice::from_ref(job),
                now,
            ) {
                Ok(mut one) => moved.append(&mut one),
                Err(e) if e.as_db_error().is_some() => {
                    tx.batch_execute("ROLLBACK TO SAVEPOINT one")
                        .map_err(&fail)?;
                    moved.push((job.id, Moved::Refused(describe(&e))));
                }
                Err(e) => return Err(fail(e)),
            }
        }
        tx.commit().map_err(&fail)?;
        Ok(moved)
    }
}

impl PgStore {
    /// Carries the cron slots another database enqueued over, so that a
    /// slot already enqueued there is not enqueued again here: per name,
    /// the later of the two `last_slot`s wins.
    pub fn import_cron(&mut self, rows: &[CronRow]) -> Result<(), StoreError> {
        let fail = self.failing("import cron slots");
        let mut tx = self.client.transaction().map_err(&fail)?;
        for row in rows.iter().filter(|r| r.last_slot.is_some()) {
            tx.execute(
                "INSERT INTO cron (name, last_slot) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET last_slot = GREATEST(cron.last_slot, EXCLUDED.last_slot)",
                &[&row.name, &row.last_slot],
            )
            .map_err(&fail)?;
        }
        tx.commit().map_err(&fail)
    }
}

fn import_in(
    tx: &mut postgres::Transaction<'_>,
    statements: &mut Statements,
    source: &str,
    jobs: &[Job],
    now: i64,
) -> std::result::Result<Vec<(i64, Moved)>, postgres::Error> {
    let statement = statements.get(tx, IMPORT_SQL)?;
    let rows = tx.query(
        &statement,
        &[
            &source,
            &column(jobs, |j| j.id),
            &column(jobs, |j| j.queue.as_str()),
            &column(jobs, |j| j.kind.as_str()),
            &column(jobs, |j| j.payload.as_str()),
            &column(jobs, |j| j.priority),
            &column(jobs, |j| j.run_at),
            &column(jobs, |j| j.max_attempts),
            &column(jobs, |j| j.timeout_ms),
            &column(jobs, |j| j.unique_key.as_deref()),
            &column(jobs, |j| j.attempts),
            &column(jobs, |j| j.created_at),
            &column(jobs, |j| j.last_error.as_deref()),
            &now,
            &column(jobs, |j| j.limit_key.as_deref()),
        ],
    )?;
    Ok(rows
        .iter()
        .map(|r| {
            let id: i64 = r.get(0);
            match r.get::<_, Option<i64>>(1) {
                Some(new) => (id, Moved::To(new)),
                None => (id, Moved::Duplicate),
            }
        })
        .collect())
}

/// Writes attempt records with one `INSERT … SELECT unnest(…)`: the single
/// way the PostgreSQL store appends to `job_attempts` (completions and rescues).
fn insert_runs(
    tx: &mut postgres::Transaction<'_>,
    statements: &mut Statements,
    runs: &[RunRow<'_>],
) -> std::result::Result<(), postgres::Error> {
    if runs.is_empty() {
        return Ok(());
    }
    let statement = statements.get(
        tx,
        "INSERT INTO job_attempts (job_id, attempt, worker, queue, kind, started_at, finished_at, \
         outcome, error, duration_ms) \
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
           $6::bigint[], $7::bigint[], $8::text[], $9::text[], $10::bigint[])",
    )?;
    tx.execute(
        &statement,
        &[
            &column(runs, |r| r.job_id),
            &column(runs, |r| r.attempt),
            &column(runs, |r| r.worker),
            &column(runs, |r| r.queue),
            &column(runs, |r| r.kind),
            &column(runs, |r| r.started_at),
            &column(runs, |r| r.finished_at),
            &column(runs, |r| r.outcome.as_str()),
            &column(runs, |r| r.error),
            &column(runs, |r| r.finished_at.saturating_sub(r.started_at).max(0)),
        ],
    )?;
    Ok(())
}

/// The queues holding queued jobs (a loose index scan, no parameters), as
/// the dispatcher reads them before each claim. Public, as [`claim_sql`]
/// is, so that a test can `EXPLAIN` the very statement.
pub fn queued_queues_sql() -> &'static str {
    crate::store::shared::QUEUED_QUEUES_SQL
}

/// The earliest `run_at` after `$2` among queue `$1`'s queued jobs of
/// `pool`, as the dispatcher reads it to know when to look next.
pub fn next_run_at_sql(pool: Pool) -> String {
    let within = format!("state = 'queued' AND queue = $1 AND {}", pool_test(pool));
    crate::store::shared::next_run_at_sql(&within, "$2")
}

/// The claim of one queue's jobs of one pool: the oldest of the highest
/// priority first, as one `UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP
/// LOCKED)` over the ready index. Parameters: now, lease end, worker,
/// queue, limit. Public so that a test (or an operator) can `EXPLAIN` the
/// very statement the store runs.
pub fn claim_sql(pool: Pool) -> String {
    format!(
        "UPDATE jobs SET state = 'running', attempts = {NEXT_ATTEMPT}, started_at = $1, \
             finished_at = NULL, lease_until = $2, worker = $3 \
             WHERE id IN ( \
                 SELECT id FROM jobs \
                 WHERE state = 'queued' AND queue = $4 AND {} AND run_at <= $1 \
                   AND NOT EXISTS (SELECT 1 FROM queues WHERE name = $4 AND paused) \
                 ORDER BY priority DESC, run_at, id LIMIT $5 \
                 FOR UPDATE SKIP LOCKED) \
             RETURNING {CLAIMED_COLUMNS}",
        pool_test(pool)
    )
}

/// The claim of one queue's jobs of both pools in one statement, so that
/// it commits whole in autocommit (see `claim::claim_plain`): CPU kinds
/// first, up to `$5`, then IO kinds up to `$6` and what is left of `$7`,
/// the queue's allowance, as the per-pool claims in turn do. Parameters:
/// now, lease end, worker, queue, CPU limit, IO limit, total limit.
pub fn claim_both_sql() -> String {
    let pick = |pool: Pool, limit: &str| {
        format!(
            "SELECT id FROM jobs \
               WHERE state = 'queued' AND queue = $4 AND {} AND run_at <= $1 \
                 AND NOT EXISTS (SELECT 1 FROM queues WHERE name = $4 AND paused) \
               ORDER BY priority DESC, run_at, id LIMIT {limit} \
               FOR UPDATE SKIP LOCKED",
            pool_test(pool)
        )
    };
    format!(
        "WITH cpu AS ({}), io AS ({}) \
         UPDATE jobs SET state = 'running', attempts = {NEXT_ATTEMPT}, started_at = $1, \
             finished_at = NULL, lease_until = $2, worker = $3 \
             WHERE id IN (SELECT id FROM cpu UNION ALL SELECT id FROM io) \
             RETURNING {CLAIMED_COLUMNS}",
        pick(Pool::Cpu, "$5"),
        pick(Pool::Io, "LEAST($6, $7 - (SELECT count(*) FROM cpu))")
    )
}

/// [`claim_both_sql`], built once: it is asked for at every claim.
pub(super) static CLAIM_BOTH_SQL: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(claim_both_sql);

/// [`complete_sql`], built once: it is asked for at every batch.
static COMPLETE_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(complete_sql);

/// A claimed row ([`CLAIMED_COLUMNS`]). A column the driver cannot read
/// (text that is not UTF-8, on a database whose encoding is `SQL_ASCII`;
/// `parents` with two dimensions, which the parents trigger lets through
/// as `unnest` and `ANY` flatten it) is named in `undecodable`, so the
/// dispatcher settles the job `dead` and goes on: a panic here stopped
/// the daemon, and every daemon that claimed the row after it.
fn claimed_from_pg_row(r: &postgres::Row) -> Claimed {
    let mut undecodable: Option<String> = None;
    let mut fault = |column: &str, e: postgres::Error| {
        let why = std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
        undecodable.get_or_insert_with(|| format!("the job's {column} cannot be read: {why}"));
    };
    let mut text = |index: usize, column: &str| -> String {
        r.try_get(index).unwrap_or_else(|e| {
            fault(column, e);
            "(unreadable)".to_string()
        })
    };
    let queue = text(1, "queue");
    let kind = text(2, "kind");
    let payload = text(3, "payload");
    let limit_key = r.try_get(10).unwrap_or_else(|e| {
        fault("limit_key", e);
        None
    });
    let parents = r
        .try_get::<_, Option<Vec<i64>>>(11)
        .unwrap_or_else(|e| {
            fault("parents", e);
            None
        })
        .unwrap_or_default();
    Claimed {
        id: r.get(0),
        queue,
        kind,
        payload,
        priority: r.get(4),
        run_at: r.get(5),
        max_attempts: r.get(6),
        timeout_ms: r.get(7),
        attempts: r.get(8),
        started_at: r.get(9),
        limit_key,
        undecodable,
        parents,
        callback_for: r.get(12),
        snoozes: r.get(13),
        inputs: None,
    }
}

/// Writes the blocks services asked for (see [`crate::job::KeyBlock`])
/// with the outcomes that applied; a key's block only ever lengthens.
fn write_blocks(
    tx: &mut postgres::Transaction<'_>,
    statements: &mut Statements,
    completions: &[Completion],
    applied: &[Applied],
) -> std::result::Result<(), postgres::Error> {
    for (c, a) in completions.iter().zip(applied) {
        let (Some(block), Applied::Done) = (&c.block, a) else {
            continue;
        };
        let Some(until) = block.until else { continue };
        let statement = statements.get(
            tx,
            "INSERT INTO limit_keys (key, blocked_until, blocked_for_ms, blocked_status, \
               closed_until, updated_at) VALUES ($1, $2, $3, $4, $2, $5) \
             ON CONFLICT (key) DO UPDATE SET \
               blocked_until = GREATEST(COALESCE(limit_keys.blocked_until, 0), EXCLUDED.blocked_until), \
               blocked_for_ms = EXCLUDED.blocked_for_ms, blocked_status = EXCLUDED.blocked_status, \
               closed_until = GREATEST(limit_keys.closed_until, EXCLUDED.blocked_until), \
               updated_at = EXCLUDED.updated_at",
        )?;
        tx.execute(
            &statement,
            &[
                &block.key,
                &until,
                &(until - c.finished_at),
                &i64::from(block.status),
                &c.finished_at,
            ],
        )?;
    }
    Ok(())
}

/// The fenced update of a batch of outcomes (see `complete_in`), public so
/// that a test can `EXPLAIN` the very statement.
///
/// Each outcome finds its job by primary key and nothing else. Joined
/// plainly, with the fence `jobs.state = 'running'` in the join, the
/// planner may drive the join from the partial index `jobs_running`: after
/// an `ANALYZE` that saw no running job (autovacuum's, at an idle moment)
/// it takes that index for one row and loops over the batch for each of
/// its rows, 512 × 512 comparisons twice per batch (measured: 200 ms a
/// batch, 3 500 jobs/s instead of 36 000). The lookup is a lateral
/// subquery by id alone, and the update compares the state with the one
/// the lookup read (`m.was`, `running`), which no partial index matches;
/// a concurrent change of the row still fails the fence on recheck.
pub fn complete_sql() -> String {
    format!(
            "WITH c AS ( \
           SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], \
             $5::bigint[], $6::bigint[], $7::text[], $8::text[], $9::bool[], $10::bool[], \
             $11::bigint[]) \
             WITH ORDINALITY AS c(id, worker, attempt, state, finished_at, run_at, result, \
               last_error, release, snooze, started_at, n)), \
         m AS ( \
           SELECT DISTINCT ON (c.id) c.*, j.state AS was, \
             (j.cancel_requested AND c.state <> 'succeeded') AS cancel, j.batch \
             FROM c CROSS JOIN LATERAL ( \
               SELECT state, worker, attempts, started_at, cancel_requested, batch FROM jobs \
               WHERE jobs.id = c.id OFFSET 0) j \
             WHERE j.state = 'running' AND j.worker = c.worker AND j.attempts = c.attempt \
               AND j.started_at = c.started_at \
           ORDER BY c.id, c.n), \
         locked AS ( \
           SELECT 1 FROM batches WHERE name IN (SELECT m.batch FROM m WHERE m.batch IS NOT NULL) \
           ORDER BY name FOR NO KEY UPDATE), \
         marked AS (SELECT set_config('jobd.batches_counted', 'on', true) AS v), \
         u AS ( \
         UPDATE jobs SET state = CASE WHEN m.cancel THEN 'cancelled' ELSE m.state END, \
           finished_at = CASE WHEN m.release AND NOT m.cancel THEN jobs.finished_at ELSE m.finished_at END, \
           lease_until = NULL, \
           run_at = CASE WHEN m.cancel THEN jobs.run_at ELSE COALESCE(m.run_at, jobs.run_at) END, \
           result = CASE WHEN m.state = 'succeeded' THEN m.result::jsonb ELSE jobs.result END, \
           last_error = CASE WHEN m.cancel THEN '{CANCELLED_ERROR}' \
             WHEN m.release THEN jobs.last_error ELSE m.last_error END, \
           attempts = jobs.attempts - CASE WHEN m.release AND NOT m.cancel THEN 1 ELSE 0 END, \
           snoozes = jobs.snoozes + CASE WHEN m.snooze AND NOT m.cancel THEN 1 ELSE 0 END, \
           run_id = CASE WHEN m.state = 'succeeded' THEN nextval('job_attempts_id_seq') \
             ELSE jobs.run_id END \
         FROM m WHERE jobs.id = m.id AND jobs.state = m.was AND jobs.worker = m.worker \
           AND jobs.attempts = m.attempt AND jobs.started_at = m.started_at \
           AND (SELECT count(*) FROM locked) >= 0 \
           AND (SELECT v FROM marked) = 'on' \
         RETURNING m.n, jobs.queue, jobs.kind, jobs.state, jobs.batch), \
         counted AS ( \
           UPDATE batches SET succeeded = batches.succeeded + x.s, dead = batches.dead + x.d, \
             cancelled = batches.cancelled + x.k \
           FROM (SELECT batch, count(*) FILTER (WHERE state = 'succeeded') AS s, \
               count(*) FILTER (WHERE state = 'dead') AS d, \
               count(*) FILTER (WHERE state = 'cancelled') AS k \
             FROM u WHERE batch IS NOT NULL GROUP BY batch) AS x \
           WHERE batches.name = x.batch AND x.s + x.d + x.k > 0) \
         SELECT n, queue, kind, state FROM u"
            )
}

/// Writes a batch of outcomes inside an open transaction with two
/// statements whatever its size: one fenced `UPDATE … FROM unnest(…)` (by
/// state, worker, attempt and the claim's start, since a release or a
/// snooze gives the attempt number back; a late outcome after a rescue, or a second
/// one for the same attempt, changes nothing), which gives a success its
/// place `run_id`, and one `INSERT … SELECT unnest(…)` of the
/// `job_attempts` rows of the others that applied.
// Long: the whole completion transaction (fenced updates, cancel checks, attempt rows) in one place, as the hot path is easier to reason about whole.
fn complete_in(
    tx: &mut postgres::Transaction<'_>,
    statements: &mut Statements,
    completions: &[Completion],
) -> std::result::Result<Vec<Applied>, postgres::Error> {
    if completions.is_empty() {
        return Ok(Vec::new());
    }
    let n = completions.len();
    let (mut ids, mut workers, mut attempts, mut states) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let mut snoozes = Vec::with_capacity(n);
    let mut starts = Vec::with_capacity(n);
    let (mut finished, mut run_ats, mut results, mut errors, mut releases) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for c in completions {
        let (state, run_at, result, release) = match &c.transition {
            Transition::Succeed { result } => ("succeeded", None, result.clone(), false),
            Transition::Requeue { run_at } => ("queued", Some(*run_at), None, false),
            Transition::Release => ("queued", None, None, true),
            Transition::Snooze { run_at } => ("queued", Some(*run_at), None, true),
            Transition::Dead => ("dead", None, None, false),
            Transition::Cancel => ("cancelled", None, None, false),
        };
        ids.push(c.id);
        workers.push(c.worker.as_str());
        attempts.push(c.attempt);
        states.push(state);
        finished.push(c.finished_at);
        run_ats.push(run_at);
        results.push(result);
        errors.push(match c.transition {
            Transition::Succeed { .. } => None,
            _ => c.error.clone(),
        });
        releases.push(release);
        snoozes.push(matches!(c.transition, Transition::Snooze { .. }));
        starts.push(c.started_at);
    }
    // One row per job even if the batch holds two outcomes for it: of
    // those that pass the fence, the first in the batch is written; the
    // rest are stale.
    // The rows of the batches these jobs belong to are locked first, in
    // name order (`locked`, run once before the update as an init plan):
    // two daemons ending jobs of two batches in opposite orders deadlocked.
    // Their outcomes are counted here, one update per batch (`counted`),
    // not by the trigger once per job (each a new version of one hot row:
    // a 100 000-job batch ran at 68 % of plain jobs); `marked` tells the
    // trigger, for the rest of the transaction, that a running job's end
    // is counted already (a child its end cancels is still counted by
    // the trigger).
    // A job an operator asked to cancel ends cancelled whatever its attempt
    // ended in, except a success (the work happened): the flag is read here,
    // in the fenced write, so a cancel that lands after the daemon last
    // looked is honoured too.
    let statement = statements.get(tx, &COMPLETE_SQL)?;
    let moved = tx.query(
        &statement,
        &[
            &ids, &workers, &attempts, &states, &finished, &run_ats, &results, &errors, &releases,
            &snoozes, &starts,
        ],
    )?;
    // Ordinalities count from 1.
    let mut applied: Vec<Option<(String, String, String)>> = vec![None; n];
    for row in &moved {
        let at: i64 = row.get(0);
        applied[(at - 1) as usize] = Some((row.get(1), row.get(2), row.get(3)));
    }
    let mut runs = Vec::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    for (c, applied) in completions.iter().zip(&applied) {
        let Some((queue, kind, state)) = applied else {
            // Read before this batch's records go in, so a second outcome
            // for one attempt within the batch stays stale.
            // An attempt number recurs (a snooze or an interrupted attempt does
            // not count): this very outcome's record first, then a cancel's.
            let recorded: Option<String> = tx
                .query_opt(
                    "SELECT outcome FROM job_runs WHERE job_id = $1 AND attempt = $2 \
                     AND worker = $3 AND outcome <> 'rescued' \
                         ORDER BY outcome = $4 DESC, outcome = 'cancelled' DESC LIMIT 1",
                    &[&c.id, &c.attempt, &c.worker, &c.outcome.as_str()],
                )?
                .map(|r| r.get(0));
            out.push(crate::store::shared::recorded_as(c, recorded.as_deref()));
            continue;
        };
        let overridden = cancelled_instead(c, state);
        // A success is its job row (`run_id`); the rest get rows.
        if state == "succeeded" {
            out.push(Applied::Done);
            continue;
        }
        runs.push(RunRow {
            job_id: c.id,
            attempt: c.attempt,
            worker: &c.worker,
            queue,
            kind,
            started_at: c.started_at,
            finished_at: c.finished_at,
            outcome: if overridden {
                RunOutcome::Cancelled
            } else {
                c.outcome
            },
            error: c.error.as_deref(),
        });
        out.push(if overridden {
            Applied::Cancelled
        } else {
            Applied::Done
        });
    }
    insert_runs(tx, statements, &runs)?;
    write_blocks(tx, statements, completions, &out)?;
    Ok(out)
}

/// The columns of a whole job, with `jsonb` read back as text.
const JOB_COLUMNS: &str = "id, queue, kind, payload::text, priority, run_at, max_attempts, \
     timeout_ms, unique_key, state, attempts, created_at, started_at, finished_at, lease_until, \
     worker, last_error, result::text, cancel_requested, limit_key, progress::text";

/// What a claim returns of each job it takes (see [`Claimed`]).
const CLAIMED_COLUMNS: &str = "id, queue, kind, payload::text, priority, run_at, max_attempts, \
     timeout_ms, attempts, started_at, limit_key, parents, callback_for, snoozes";

/// The columns of an attempt record.
const RUN_COLUMNS: &str =
    "id, job_id, queue, kind, attempt, worker, started_at, finished_at, outcome, error, duration_ms";

/// The order of `job_runs` in PostgreSQL's words.
const RUN_ORDER: crate::store::shared::RunOrder = crate::store::shared::RunOrder {
    greatest: "GREATEST",
    null_text: "NULL::text",
    pruned: "0",
    duration: "LEAST(GREATEST(finished_at::numeric - started_at, 0), 9223372036854775807)::bigint",
};

/// How many dead jobs one `retry --dead` transaction takes.
const BULK_RETRY_BATCH: i64 = crate::store::shared::BULK_RETRY_BATCH as i64;

/// How often a batch of `retry --dead` is tried again when a client took one
/// of its unique keys while it ran; each race needs a fresh insert of that
/// very key, so more than a few in a row means something else is wrong.
const RETRY_DEAD_RACES: u32 = 3;

/// jsonb text as compact JSON, the way SQLite stores what clients wrote
/// (jsonb spaces it out and orders keys its own way; only the spacing can
/// be undone).
fn compact(text: String) -> String {
    serde_json::from_str::<serde_json::Value>(&text)
        .map(|v| v.to_string())
        .unwrap_or(text)
}

fn job_from_row(r: &postgres::Row) -> Job {
    let state: String = r.get(9);
    Job {
        id: r.get(0),
        queue: r.get(1),
        kind: r.get(2),
        payload: compact(r.get(3)),
        priority: r.get(4),
        run_at: r.get(5),
        max_attempts: r.get(6),
        timeout_ms: r.get(7),
        unique_key: r.get(8),
        // The CHECK rule admits only the five states.
        state: state.parse().unwrap_or(JobState::Dead),
        attempts: r.get(10),
        created_at: r.get(11),
        started_at: r.get(12),
        finished_at: r.get(13),
        lease_until: r.get(14),
        worker: r.get(15),
        last_error: r.get(16),
        result: r.get::<_, Option<String>>(17).map(compact),
        cancel_requested: r.get(18),
        limit_key: r.get(19),
        progress: r.get(20),
    }
}

fn run_from_row(r: &postgres::Row) -> JobRun {
    let outcome: String = r.get(8);
    let started_at = r.get::<_, Option<i64>>(6).unwrap_or(0);
    JobRun {
        id: r.get(0),
        job_id: r.get(1),
        queue: r.get(2),
        kind: r.get(3),
        attempt: r.get(4),
        // A succeeded job row an operator wrote by hand may lack these.
        worker: r.get::<_, Option<String>>(5).unwrap_or_default(),
        started_at,
        finished_at: r.get::<_, Option<i64>>(7).unwrap_or(started_at),
        // The CHECK rule admits only the known outcomes.
        outcome: outcome.parse().unwrap_or(RunOutcome::Dead),
        error: r.get(9),
        duration_ms: r.get::<_, Option<i64>>(10).unwrap_or(0),
    }
}

/// Schedules, backlog, history and stats.
impl PgStore {
    fn schedules_and_reads_error(
        &self,
        op: &'static str,
    ) -> impl Fn(postgres::Error) -> StoreError {
        self.failing(op)
    }

    fn these_or_queued(&mut self, queues: Option<&[String]>) -> Result<Vec<String>> {
        match queues {
            Some(q) => Ok(q.to_vec()),
            None => crate::store::contract::Queue::queued_queues(self),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_claim_spells_the_cpu_kinds_as_the_ready_index_does() {
        assert_eq!(
            cpu_kind_test(),
            "(kind IN ('checksum', 'compress', 'exec'))"
        );
        assert!(schema::MIGRATIONS[0].contains(&format!("(queue, {}, priority", cpu_kind_test())));
        assert!(
            schema::MIGRATIONS[5].contains(&format!("limit_key, {}, priority", cpu_kind_test()))
        );
        assert!(schema::MIGRATIONS[6]
            .contains(&format!("WHERE state = 'queued' AND {}", cpu_kind_test())));
    }
}
