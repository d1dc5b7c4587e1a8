//! The queue store: the only place that speaks SQL.
//!
//! [`Store`] is the narrow interface every other part of jobd uses: the CLI
//! commands, the dispatcher, the completer and maintenance. [`SqliteStore`] is
//! the embedded implementation; a PostgreSQL one (docs/reference.md) sits behind the same
//! trait, which is why the trait speaks only in plain values (epoch
//! milliseconds, ids, JSON text) and never hands out a connection.
//!
//! Every state change names the state it expects in its `WHERE` clause; a
//! change that touches no row lost a race and is reported as such (for example
//! [`Applied::Stale`]), never as an error.

mod error;
pub mod postgres;
mod schema;
mod sqlite;
pub mod wake;

pub use error::{event_name, log_trouble, StoreError};
pub use schema::{CPU_KIND_TEST, SCHEMA_VERSION};
pub use sqlite::{OpenMode, SqliteStore};

use std::path::PathBuf;

use serde::Serialize;

use crate::job::{Claimed, Completion, Job, JobState, NewJob, Pool, RunOutcome};

/// The store's result type.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Attempts counted from `job_runs` (see [`Store::tally_runs_after`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunTally {
    /// The newest run id seen (the `after_id` given when there were none).
    pub last_id: i64,
    /// Attempts that succeeded.
    pub succeeded: u64,
    /// Attempts that failed: retried, timed out or dead.
    pub failed: u64,
}

/// The SQL of [`Store::tally_runs_after`], the same on both backends
/// (`?1`/`$1` swapped in): a range scan of the primary key over the new rows.
pub(crate) fn tally_runs_sql(after: &str) -> String {
    format!(
        "SELECT COALESCE(max(id), {after}), \
           count(*) FILTER (WHERE outcome = 'succeeded'), \
           count(*) FILTER (WHERE outcome IN ('retry', 'timeout', 'dead')) \
         FROM job_runs WHERE id > {after}"
    )
}

/// Where one moved job went (`jobd migrate --from`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Moved {
    /// Inserted as this job.
    To(i64),
    /// Not inserted: the target already holds a queued or running job with
    /// the same `unique_key`, which stands for it.
    Duplicate,
    /// The target refused the row (what it said); nothing was written.
    Refused(String),
}

/// The outcome of inserting one job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "id", rename_all = "lowercase")]
pub enum Enqueued {
    /// A new row with this id.
    Inserted(i64),
    /// Its `unique_key` is held by this queued or running job; nothing inserted.
    Duplicate(i64),
}

impl Enqueued {
    /// The id of the job that now stands for the request.
    pub fn id(self) -> i64 {
        match self {
            Enqueued::Inserted(id) | Enqueued::Duplicate(id) => id,
        }
    }
}

/// How many jobs to claim from one queue, per pool: a claim asks each pool
/// only for the jobs it has slots for, so jobs of a busy pool never hold up
/// the other pool's jobs queued behind them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimRequest {
    /// The queue.
    pub queue: String,
    /// At most this many of the queue's jobs in all (its allowance).
    pub limit: usize,
    /// At most this many jobs of CPU kinds (claimed first).
    pub cpu: usize,
    /// At most this many jobs of IO kinds.
    pub io: usize,
}

impl ClaimRequest {
    /// Up to `limit` jobs of `queue`, of either pool.
    pub fn any(queue: impl Into<String>, limit: usize) -> ClaimRequest {
        ClaimRequest {
            queue: queue.into(),
            limit,
            cpu: limit,
            io: limit,
        }
    }

    /// The most jobs of `pool` this request takes.
    pub fn for_pool(&self, pool: Pool) -> usize {
        match pool {
            Pool::Cpu => self.cpu,
            Pool::Io => self.io,
        }
    }
}

/// A claim: which daemon takes jobs, when, and for how long.
#[derive(Clone, Debug)]
pub struct Claim<'a> {
    /// The daemon's worker id.
    pub worker: &'a str,
    /// The claim's clock (epoch ms): jobs with `run_at <= now` are ready.
    pub now: i64,
    /// The lease's end (epoch ms).
    pub lease_until: i64,
    /// Per-queue limits, in the order to serve them.
    pub requests: &'a [ClaimRequest],
}

/// Whether a fenced write took effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The job was still running under this worker and attempt.
    Done,
    /// Someone else moved the job first (rescue, another daemon): nothing changed.
    Stale,
    /// The fence held, but an operator had asked to cancel the job: it ended
    /// `cancelled` instead of what the attempt asked for (a retry, a
    /// timeout, dead, released), with a `cancelled` attempt record. A
    /// success is never turned into this: the work happened.
    Cancelled,
}

/// What a completion the fence turned away really was, from the attempt
/// record of the same job, attempt and worker (`recorded`: its outcome, if
/// there is one). A completion whose commit went through but whose reply
/// was lost with the connection is sent again by the completer: the record
/// with its outcome (or `cancelled`, where a cancel turned it) shows it is
/// written, not taken back. A `rescued` record is another holder's doing.
pub(crate) fn recorded_as(c: &Completion, recorded: Option<&str>) -> Applied {
    match recorded {
        Some(outcome) if outcome == c.outcome.as_str() => Applied::Done,
        Some("cancelled") if c.outcome != RunOutcome::Succeeded => Applied::Cancelled,
        _ => Applied::Stale,
    }
}

/// `last_error` of a job whose attempt ended after a cancel request.
pub(crate) const CANCELLED_ERROR: &str = "cancelled by an operator while running";

/// True when the store wrote `cancelled` (`state`, as the fenced update
/// returned it) for a completion that asked for something else: the cancel
/// request won over the attempt's outcome.
pub(crate) fn cancelled_instead(c: &Completion, state: &str) -> bool {
    state == "cancelled" && c.transition != crate::job::Transition::Cancel
}

/// Which running jobs to take back.
#[derive(Clone, Debug)]
pub enum RescueScope<'a> {
    /// Jobs whose lease ended before `now`.
    ExpiredLeases,
    /// Jobs whose lease ended before `now`, but for those of this worker:
    /// a daemon renews and reconciles its own (a daemon paused past its
    /// lease must not take back, on waking, the jobs it still runs).
    ExpiredLeasesOfOthers(&'a str),
    /// Every running job of these workers (known to be gone).
    Workers(&'a [String]),
}

/// An attempt a worker holds, as the database has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// The job.
    pub id: i64,
    /// Its attempt.
    pub attempt: i64,
    /// Its queue.
    pub queue: String,
    /// Its kind.
    pub kind: String,
    /// When the attempt started.
    pub started_at: i64,
}

impl RescueScope<'_> {
    /// Why the holder of a job in this scope counts as lost: the end of the
    /// sentence that `last_error` and the `rescued` attempt record carry.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            RescueScope::ExpiredLeases | RescueScope::ExpiredLeasesOfOthers(_) => {
                "stopped renewing its lease"
            }
            RescueScope::Workers(_) => "is gone (its process no longer runs)",
        }
    }
}

/// Builds the `rescued` attempt records of `rescued` jobs (the lost attempt
/// of job `i` started at `started[i]`) and hands them to `insert`, the
/// store's one `job_runs` insert: the same records on both backends.
pub(crate) fn with_rescue_runs<T>(
    rescued: &[Rescued],
    started: &[i64],
    reason: &str,
    now: i64,
    insert: impl FnOnce(&[RunRow<'_>]) -> T,
) -> T {
    let errors: Vec<String> = rescued
        .iter()
        .map(|job| {
            format!(
                "attempt {} was lost: worker {} {reason}",
                job.attempt, job.worker
            )
        })
        .collect();
    let runs: Vec<RunRow<'_>> = rescued
        .iter()
        .zip(started)
        .zip(&errors)
        .map(|((job, &started_at), error)| RunRow {
            job_id: job.id,
            attempt: job.attempt,
            worker: &job.worker,
            queue: &job.queue,
            kind: &job.kind,
            started_at,
            finished_at: now,
            outcome: RunOutcome::Rescued,
            error: Some(error),
        })
        .collect();
    insert(&runs)
}

/// A running job taken back from a lost holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rescued {
    /// The job.
    pub id: i64,
    /// The job's kind.
    pub kind: String,
    /// The job's queue.
    pub queue: String,
    /// The attempt that was lost.
    pub attempt: i64,
    /// The lost holder.
    pub worker: String,
    /// `queued` or `dead` (no attempts left).
    pub state: JobState,
}

/// What `cancel` did to one job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelResult {
    /// It was queued and is now cancelled.
    Cancelled,
    /// It is running; its daemon will stop it.
    Requested,
    /// It had already finished in this state.
    AlreadyFinal(JobState),
    /// No such job.
    NotFound,
}

/// What `retry` did to one job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryResult {
    /// It is queued again.
    Queued,
    /// It is not dead or cancelled.
    WrongState(JobState),
    /// Its unique_key is held by this queued or running job.
    UniqueKeyTaken(i64),
    /// No such job.
    NotFound,
}

/// What `retry --dead` did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BulkRetry {
    /// Jobs queued again.
    pub queued: u64,
    /// Dead jobs left dead because another active job holds their unique_key.
    pub skipped_unique: u64,
}

/// Cut-off times (epoch ms) for pruning: final jobs that finished before
/// them go. None keeps that state forever.
#[derive(Clone, Copy, Debug, Default)]
pub struct PruneCutoffs {
    /// For succeeded jobs.
    pub succeeded: Option<i64>,
    /// For dead jobs.
    pub dead: Option<i64>,
    /// For cancelled jobs.
    pub cancelled: Option<i64>,
}

/// How many rows one prune pass deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Pruned {
    /// Rows from `jobs`.
    pub jobs: u64,
    /// Rows from `job_runs`.
    pub runs: u64,
}

/// A filter for `list`.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// Only this state.
    pub state: Option<JobState>,
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// At most this many, newest first.
    pub limit: usize,
    /// Only ids below this one (the next page of a newest-first list).
    pub before: Option<i64>,
}

/// One row of `job_runs`: an attempt that ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobRun {
    /// The row's id, increasing in the order rows were written.
    pub id: i64,
    /// The job.
    pub job_id: i64,
    /// The job's queue.
    pub queue: String,
    /// The job's kind.
    pub kind: String,
    /// The attempt number.
    pub attempt: i64,
    /// The daemon that ran it.
    pub worker: String,
    /// When it started (epoch ms).
    pub started_at: i64,
    /// When it ended (epoch ms).
    pub finished_at: i64,
    /// What it ended in.
    pub outcome: RunOutcome,
    /// Why it failed.
    pub error: Option<String>,
    /// `finished_at - started_at`.
    pub duration_ms: i64,
}

/// One queue's figures for `jobd stats`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct QueueStats {
    /// The queue.
    pub queue: String,
    /// Paused in the `queues` table.
    pub paused: bool,
    /// Queued with `run_at <= now`.
    pub ready: u64,
    /// Queued with `run_at > now`.
    pub scheduled: u64,
    /// Running.
    pub running: u64,
    /// Succeeded in the last minute.
    pub succeeded_1m: u64,
    /// Succeeded in the last hour.
    pub succeeded_1h: u64,
    /// Went dead in the last minute.
    pub dead_1m: u64,
    /// Went dead in the last hour.
    pub dead_1h: u64,
    /// `now - oldest ready run_at`, 0 when nothing is ready.
    pub lag_ms: i64,
    /// Median attempt duration over the last hour.
    pub p50_ms: Option<i64>,
    /// 95th percentile attempt duration over the last hour.
    pub p95_ms: Option<i64>,
}

/// A running daemon, from the `workers` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkerInfo {
    /// `host:pid:start`.
    pub id: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: i64,
    /// jobd version.
    pub version: String,
    /// When it started (epoch ms).
    pub started_at: i64,
    /// Its latest heartbeat (epoch ms).
    pub heartbeat_at: i64,
    /// The queues it serves, comma-separated.
    pub queues: String,
    /// Jobs the database says it holds now (state `running` under its
    /// name: running, or claimed ahead for a thread about to be free),
    /// counted as the queues' running column is, not the figure of its
    /// last heartbeat (which lagged by up to a beat: a daemon showed 128
    /// running beside queues all at 0).
    pub running: i64,
}

/// Runs a claim's plan on either backend: for each request, each pool (the
/// scarce CPU slots first) gets at most what it asked for and what the
/// queue's allowance still leaves. `take(queue, pool, limit)` claims and
/// returns the jobs, in claim order.
pub(crate) fn claim_by_plan<E>(
    requests: &[ClaimRequest],
    mut take: impl FnMut(&str, Pool, usize) -> std::result::Result<Vec<Claimed>, E>,
) -> std::result::Result<Vec<Claimed>, E> {
    let mut jobs = Vec::new();
    for request in requests.iter().filter(|r| r.limit > 0) {
        let mut left = request.limit;
        for pool in Pool::ALL {
            let limit = request.for_pool(pool).min(left);
            if limit == 0 {
                continue;
            }
            let mut got = take(&request.queue, pool, limit)?;
            left -= got.len();
            in_claim_order(&mut got);
            jobs.append(&mut got);
        }
    }
    Ok(jobs)
}

/// Opens the existing, current database `db` names, on either backend:
/// what every reader uses (CLI commands, the metrics listener), so nothing
/// but `jobd migrate` and `jobd run` ever creates a file in the wrong place
/// or upgrades a schema.
pub fn open_existing(db: &crate::config::DatabaseConfig) -> Result<Box<dyn Store>> {
    if let Some(url) = &db.url {
        return Ok(Box::new(postgres::PgStore::open_current(
            url,
            db.busy_timeout,
        )?));
    }
    Ok(Box::new(SqliteStore::open(
        &db.path,
        db.busy_timeout,
        OpenMode::Existing,
    )?))
}

/// The backlog a daemon is behind on: of `queues` (every queue with
/// queued jobs when None), those not paused. A paused queue waits by an
/// operator's choice, so its jobs count neither as ready nor as lag in the
/// `stats` line, systemd's STATUS or the dashboard's chart; `jobd stats`
/// and the per-queue metrics still show it.
pub fn active_backlog<S: Store + ?Sized>(
    store: &mut S,
    queues: Option<&[String]>,
    now: i64,
) -> Result<Backlog> {
    let paused = store.paused_queues()?;
    if paused.is_empty() {
        return store.backlog(queues, now);
    }
    let served = match queues {
        Some(named) => named.to_vec(),
        None => store.queued_queues()?,
    };
    let active: Vec<String> = served.into_iter().filter(|q| !paused.contains(q)).collect();
    if active.is_empty() {
        return Ok(Backlog::default());
    }
    store.backlog(Some(&active), now)
}

/// The queues that hold queued jobs, by a loose index scan: one index seek
/// per distinct queue, so the cost does not grow with the number of queued
/// jobs (a `DISTINCT` reads every one). The same text on both backends.
pub(crate) const QUEUED_QUEUES_SQL: &str = "WITH RECURSIVE q(name) AS ( \
       SELECT (SELECT min(queue) FROM jobs WHERE state = 'queued') \
       UNION ALL \
       SELECT (SELECT min(queue) FROM jobs WHERE state = 'queued' AND queue > q.name) \
       FROM q WHERE q.name IS NOT NULL) \
     SELECT name FROM q WHERE name IS NOT NULL";

/// The earliest `run_at` after `after` (a placeholder) among the queued jobs
/// that `within` selects (one queue's part of one pool): a loose scan over
/// their distinct priorities and one index seek each, since the ready index
/// orders `run_at` within a priority. Each backend spells its placeholders
/// and its pool test.
pub(crate) fn next_run_at_sql(within: &str, after: &str) -> String {
    format!(
        "WITH RECURSIVE p(pr) AS ( \
           SELECT (SELECT max(priority) FROM jobs WHERE {within}) \
           UNION ALL \
           SELECT (SELECT max(priority) FROM jobs WHERE {within} AND priority < p.pr) \
           FROM p WHERE p.pr IS NOT NULL) \
         SELECT min((SELECT min(run_at) FROM jobs \
                     WHERE {within} AND priority = p.pr AND run_at > {after})) \
         FROM p WHERE p.pr IS NOT NULL"
    )
}

/// The earlier of two optional times.
pub(crate) fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    a.into_iter().chain(b).min()
}

/// One `job_runs` row to write (completions and rescues, both backends).
pub(crate) struct RunRow<'a> {
    pub(crate) job_id: i64,
    pub(crate) attempt: i64,
    pub(crate) worker: &'a str,
    pub(crate) queue: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) started_at: i64,
    pub(crate) finished_at: i64,
    pub(crate) outcome: RunOutcome,
    pub(crate) error: Option<&'a str>,
}

/// Rows per `retry --dead` transaction: keeps each write short.
pub(crate) const BULK_RETRY_BATCH: usize = 1_000;

/// Attempt durations sampled for p50/p95 per stats call: the most recent ones
/// of the last hour, so stats stays fast when the hour held millions of runs.
pub(crate) const PERCENTILE_SAMPLE: usize = 100_000;

/// The value at quantile `q` of sorted `values`, by the nearest-rank method
/// (always a value that occurred).
pub(crate) fn percentile(sorted: &[i64], q: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Sorts claimed jobs into claim order (priority, then `run_at`, then id):
/// `UPDATE … RETURNING` gives rows in no particular order on either backend.
pub(crate) fn in_claim_order(jobs: &mut [Claimed]) {
    jobs.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(a.run_at.cmp(&b.run_at))
            .then(a.id.cmp(&b.id))
    });
}

/// A periodic schedule's row in `cron`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CronRow {
    /// The `[cron.NAME]` section's name.
    pub name: String,
    /// The last slot enqueued (epoch ms).
    pub last_slot: Option<i64>,
    /// The job enqueued for it.
    pub last_job_id: Option<i64>,
    /// That job's state now (None once pruned).
    pub last_job_state: Option<JobState>,
}

/// What waits to run, for the daemon's `stats` line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Backlog {
    /// Queued jobs with `run_at <= now`.
    pub ready: u64,
    /// The oldest ready `run_at` (epoch ms).
    pub oldest_ready: Option<i64>,
}

impl Backlog {
    /// `now - oldest ready run_at`, 0 when nothing is ready.
    pub fn lag_ms(&self, now: i64) -> i64 {
        self.oldest_ready.map_or(0, |t| (now - t).max(0))
    }
}

/// Everything `jobd stats` shows.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Stats {
    /// When the figures were taken (epoch ms).
    pub now: i64,
    /// One entry per queue that has jobs, recent runs or a `queues` row.
    pub queues: Vec<QueueStats>,
    /// The live daemons.
    pub workers: Vec<WorkerInfo>,
}

/// The queue store. Every method is one short transaction or one read.
pub trait Store {
    /// Creates or upgrades the schema; returns the version before and after.
    fn migrate(&mut self) -> Result<(i64, i64)>;

    /// Inserts jobs in one transaction. A job whose `unique_key` is held by a
    /// queued or running job is not inserted and reports that job's id.
    fn enqueue(&mut self, jobs: &[NewJob], now: i64) -> Result<Vec<Enqueued>>;

    /// Atomically takes up to `limit` ready jobs from each requested queue
    /// (highest priority, then oldest `run_at`, then lowest id), skipping
    /// paused queues, and marks them running under `worker`.
    fn claim(&mut self, claim: &Claim<'_>) -> Result<Vec<Claimed>>;

    /// Writes a batch of attempt outcomes in one transaction, each fenced by
    /// state, worker and attempt, with a `job_runs` row for each that applied.
    fn complete(&mut self, completions: &[Completion]) -> Result<Vec<Applied>>;

    /// Writes outcomes and then claims, as one transaction where the backend
    /// can: the daemon's group commit, so each turn of its loop costs one
    /// write lock instead of two. Either part may be empty.
    fn complete_and_claim(
        &mut self,
        completions: &[Completion],
        claim: &Claim<'_>,
    ) -> Result<(Vec<Applied>, Vec<Claimed>)> {
        let applied = self.complete(completions)?;
        let jobs = self.claim(claim)?;
        Ok((applied, jobs))
    }

    /// A number that changes whenever another connection commits (SQLite's
    /// `PRAGMA data_version`): cheap enough to ask every poll interval.
    fn change_counter(&mut self) -> Result<i64>;

    /// This database's random id, drawn when its schema was made (the
    /// `meta` table): jobs carry it in their `Idempotency-Key` and
    /// `Message-ID` so that two databases' job 7 are never taken for one.
    fn database_id(&mut self) -> Result<String>;

    /// A file that is written on every commit, for a watcher to wake on
    /// (SQLite's `-wal` file); None when the backend has no such file.
    fn commit_file(&self) -> Option<PathBuf>;

    /// Ready jobs and the oldest ready `run_at` in these queues (all when
    /// None), for the daemon's `stats` line.
    fn backlog(&mut self, queues: Option<&[String]>, now: i64) -> Result<Backlog>;

    /// Makes sure periodic schedule `name` has its `cron` row; a new row
    /// starts at `slot`, and nothing is enqueued for it. Returns the row's
    /// last slot.
    fn cron_start(&mut self, name: &str, slot: i64) -> Result<Option<i64>>;

    /// Enqueues `job` for slot `slot` of schedule `name` unless a daemon
    /// already did: one transaction moves `cron.last_slot` forward to
    /// `slot` only if it is behind (compare-and-set), inserts the job and
    /// records its id. None when the slot was taken.
    fn cron_enqueue(
        &mut self,
        name: &str,
        slot: i64,
        job: &NewJob,
        now: i64,
    ) -> Result<Option<Enqueued>>;

    /// Every `cron` row, with the state of its last job.
    fn cron_rows(&mut self) -> Result<Vec<CronRow>>;

    /// How many jobs each queue has in each state, for metrics. Counts every
    /// row: meant for a scrape every few seconds, not for every turn.
    fn job_counts(&mut self) -> Result<Vec<(String, JobState, u64)>>;

    /// Extends the leases of `ids` held by `worker`; returns how many were.
    fn renew_leases(&mut self, worker: &str, ids: &[i64], lease_until: i64) -> Result<usize>;

    /// The running jobs of `worker` that an operator asked to cancel.
    fn cancel_requests(&mut self, worker: &str) -> Result<Vec<i64>>;

    /// Every attempt the database says `worker` runs now, so that a daemon
    /// can find the ones it does not know it holds (a claim whose reply was
    /// lost with the connection).
    fn held_by(&mut self, worker: &str) -> Result<Vec<Held>>;

    /// Takes back running jobs from lost holders: to `queued`, or to `dead`
    /// when they have no attempts left (`default_max_attempts` stands in for a
    /// NULL `max_attempts`). Writes a `rescued` run for each.
    fn rescue(
        &mut self,
        scope: RescueScope<'_>,
        now: i64,
        default_max_attempts: u32,
    ) -> Result<Vec<Rescued>>;

    /// Cancels queued jobs at once and flags running ones.
    fn cancel(&mut self, ids: &[i64], now: i64) -> Result<Vec<CancelResult>>;

    /// Puts dead or cancelled jobs back to `queued` with attempts reset.
    fn retry(&mut self, ids: &[i64], now: i64) -> Result<Vec<RetryResult>>;

    /// Puts every dead job (of one queue, or all) back to `queued`.
    fn retry_dead(&mut self, queue: Option<&str>, now: i64) -> Result<BulkRetry>;

    /// Deletes at most `batch` final jobs older than the cut-offs, with their
    /// runs, in one short transaction. Call until it returns fewer than `batch`.
    fn prune_batch(&mut self, cutoffs: &PruneCutoffs, batch: usize) -> Result<Pruned>;

    /// Pauses or resumes queues.
    fn set_paused(&mut self, queues: &[String], paused: bool, now: i64) -> Result<()>;

    /// The queues that are paused now.
    fn paused_queues(&mut self) -> Result<Vec<String>>;

    /// The distinct queues that hold queued jobs (ready or scheduled).
    fn queued_queues(&mut self) -> Result<Vec<String>>;

    /// The earliest `run_at` later than `after` of a queued job of these
    /// pools in these queues (all when None): when a daemon with nothing
    /// ready wakes next.
    fn next_run_at(
        &mut self,
        queues: Option<&[String]>,
        pools: &[Pool],
        after: i64,
    ) -> Result<Option<i64>>;

    /// One job.
    fn job(&mut self, id: i64) -> Result<Option<Job>>;

    /// A job's attempts, oldest first.
    fn runs(&mut self, job_id: i64) -> Result<Vec<JobRun>>;

    /// Jobs matching the filter, newest first.
    fn list(&mut self, filter: &ListFilter) -> Result<Vec<Job>>;

    /// The id of the newest `job_runs` row (0 when none).
    fn last_run_id(&mut self) -> Result<i64>;

    /// The attempts every daemon recorded after run `after_id`: how many
    /// succeeded and how many failed (`retry`, `timeout`, `dead`), and the
    /// newest id, to count from next time.
    fn tally_runs_after(&mut self, after_id: i64) -> Result<RunTally>;

    /// At most `limit` runs written after `after_id`, oldest first.
    fn runs_after(&mut self, after_id: i64, limit: usize) -> Result<Vec<JobRun>>;

    /// Per-queue figures and the live daemons.
    fn stats(&mut self, now: i64) -> Result<Stats>;

    /// Records a daemon in `workers` (replacing a row with the same id).
    fn register_worker(&mut self, worker: &WorkerInfo) -> Result<()>;

    /// Refreshes a daemon's heartbeat and running count.
    fn heartbeat(&mut self, worker: &str, now: i64, running: i64) -> Result<()>;

    /// Removes a daemon's row.
    fn deregister_worker(&mut self, worker: &str) -> Result<()>;

    /// Every row of `workers`.
    fn workers(&mut self) -> Result<Vec<WorkerInfo>>;
}
