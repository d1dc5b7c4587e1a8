//! The store's contract: the [`Store`] trait every other part of jobd uses
//! and the plain values it speaks in (epoch milliseconds, ids, JSON text;
//! never a connection). Both backends implement it; this file imports
//! neither, so they can build on it.

use std::path::Path;

use crossbeam_channel::Receiver;
use serde::Serialize;

use crate::job::{Claimed, Completion, HandlerProcess, Job, JobState, NewJob, Pool, RunOutcome};
use crate::store::error::StoreError;

/// The store's result type.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Attempts counted from `job_runs` (see [`crate::store::Reads::tally_runs_after`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunTally {
    /// The newest run id seen (the `after_id` given when there were none).
    pub last_id: i64,
    /// Attempts that succeeded.
    pub succeeded: u64,
    /// Attempts that failed: retried, timed out or dead.
    pub failed: u64,
    /// Attempts of any outcome (places taken after `after_id`, up to
    /// `last_id`: fewer than the places between means some are empty).
    pub places: u64,
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
    /// A fair queue ([`crate::config::QueueConfig::fair`]): the claim
    /// rotates across its job keys, starting after this one (`""`: from
    /// the first). None: claim order alone.
    pub fair_after: Option<String>,
    /// A fleet-wide queue limit ([`crate::config::QueueConfig::fleet`]):
    /// the queue's running jobs and starts on every daemon count against
    /// it, checked in the claim's own transaction. None: per daemon only.
    pub fleet: Option<crate::keys::Limit>,
}

impl ClaimRequest {
    /// Up to `limit` jobs of `queue`, of either pool.
    pub fn any(queue: impl Into<String>, limit: usize) -> ClaimRequest {
        ClaimRequest {
            queue: queue.into(),
            limit,
            cpu: limit,
            io: limit,
            fair_after: None,
            fleet: None,
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
    /// The keyed limits, fleet-wide ([`crate::keys::NO_KEYS`] for none).
    pub keys: &'a crate::keys::KeyRules,
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

/// A job's place in its flow ([`Reads::relatives`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Relatives {
    /// The jobs it waits for, in id order: id and state.
    pub parents: Vec<(i64, String)>,
    /// The jobs that wait for it, in id order: id and state.
    pub children: Vec<(i64, String)>,
    /// Whether it runs once its parents ended, whatever their outcome.
    pub run_always: bool,
    /// The batch it belongs to.
    pub batch: Option<String>,
    /// The batch it is the callback of.
    pub callback_for: Option<String>,
    /// Its sequence.
    pub sequence: Option<String>,
}

/// A batch as `jobd batch` shows it ([`Reads::batch`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BatchInfo {
    /// Its counters (`total` final once sealed).
    #[serde(flatten)]
    pub counts: crate::store::flows::BatchCounts,
    /// No job joins it any more.
    pub sealed: bool,
    /// Its callback: id and state.
    pub callback: Option<(i64, String)>,
    /// When its row was made (epoch ms).
    pub created_at: i64,
    /// When its jobs had all ended, once sealed (epoch ms).
    pub finished_at: Option<i64>,
    /// Its jobs by state, counted now.
    pub states: std::collections::BTreeMap<String, i64>,
}

/// How many children [`Reads::relatives`] lists.
pub const RELATIVES_SHOWN: i64 = 1000;

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
    /// It was cancelled because this ancestor ended so: retry that one.
    ParentEnded(i64, JobState),
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
    /// The warm handler processes its CPU workers keep, as of its latest
    /// heartbeat.
    pub handlers: Vec<HandlerProcess>,
}

/// The `workers.handlers` column's JSON for `handlers`.
pub(crate) fn handlers_json(handlers: &[HandlerProcess]) -> String {
    serde_json::to_string(handlers).unwrap_or_else(|_| "[]".into())
}

/// The handlers in a `workers.handlers` column; a value that is not
/// what jobd writes reads as none.
pub(crate) fn handlers_from_json(json: Option<&str>) -> Vec<HandlerProcess> {
    json.and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_default()
}

/// At most this many running jobs' progress is read for `jobd tail`.
pub const PROGRESS_SHOWN: i64 = 1_000;

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
        self.oldest_ready
            .map_or(0, |t| now.saturating_sub(t).max(0))
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

/// What one write step ([`Queue::complete_and_claim`]) did.
#[derive(Debug)]
pub enum Stepped {
    /// Outcomes and claim in one transaction: both happened or neither, and
    /// the claim saw the outcomes (a child a success released, a slot a key
    /// freed).
    Together(Result<(Vec<Applied>, Vec<Claimed>)>),
    /// Outcomes and claim in two transactions side by side: either may
    /// fail alone, and the claim did not see the outcomes, so what they
    /// released is claimed by the next one.
    Apart {
        /// The outcomes' fate, in the order given.
        applied: Result<Vec<Applied>>,
        /// The jobs claimed.
        claimed: Result<Vec<Claimed>>,
    },
}

impl Stepped {
    /// The outcomes' part of the step.
    pub fn outcomes(self) -> Result<Vec<Applied>> {
        match self {
            Stepped::Together(done) => done.map(|(applied, _)| applied),
            Stepped::Apart { applied, .. } => applied,
        }
    }
}

/// The dispatcher's turn: enqueue, claim for free slots, write outcomes,
/// keep leases, and notice new work and cancel requests.
pub trait Queue {
    /// Inserts jobs in one transaction. A job whose `unique_key` is held by a
    /// queued or running job is not inserted and reports that job's id.
    fn enqueue(&mut self, jobs: &[NewJob], now: i64) -> Result<Vec<Enqueued>>;

    /// Atomically takes up to `limit` ready jobs from each requested queue
    /// (highest priority, then oldest `run_at`, then lowest id), skipping
    /// paused queues, and marks them running under `worker`.
    fn claim(&mut self, claim: &Claim<'_>) -> Result<Vec<Claimed>>;

    /// Writes a batch of attempt outcomes in one transaction, each fenced by
    /// state, worker and attempt, with an attempt in `job_runs` for each
    /// that applied (a success is its job row).
    fn complete(&mut self, completions: &[Completion]) -> Result<Vec<Applied>>;

    /// Writes outcomes and claims: the daemon's group commit, one turn of
    /// its loop. SQLite does both in one transaction, so each turn costs one
    /// write lock instead of two. PostgreSQL writes the outcomes on a second
    /// connection while this one claims, so a turn keeps two server backends
    /// busy instead of one ([`Stepped::Apart`]). Either part may be empty.
    fn complete_and_claim(&mut self, completions: &[Completion], claim: &Claim<'_>) -> Stepped {
        Stepped::Together(
            self.complete(completions)
                .and_then(|applied| Ok((applied, self.claim(claim)?))),
        )
    }

    /// A number that changes whenever another connection commits (SQLite's
    /// `PRAGMA data_version`): cheap enough to ask every poll interval.
    fn change_counter(&mut self) -> Result<i64>;

    /// Starts telling the daemon of other writers' commits, each message a
    /// hint to look (confirmed with [`crate::store::Queue::change_counter`]): SQLite
    /// watches its `-wal` file, which every commit appends to; PostgreSQL
    /// LISTENs for the insert trigger's NOTIFY, only for inserts into
    /// `queues` when given. None when no watch could start (logged): the
    /// daemon's poll then finds new work. Call it once the schema is in
    /// place (a new SQLite file has no `-wal` before its first write).
    fn watch_commits(&self, queues: Option<&[String]>) -> Option<Receiver<()>>;

    /// This connection now serves a daemon's dispatcher. PostgreSQL then
    /// commits claims, lease renewals and progress without waiting for the
    /// WAL flush; outcomes and cron's slots still wait. A claim or renewal
    /// a server crash undoes is a job that runs again or a lease that ends
    /// sooner, which at-least-once delivery allows, and an outcome's flush
    /// makes every earlier write of the session durable first.
    fn serve_dispatcher(&mut self) -> Result<()> {
        Ok(())
    }

    /// How many jobs per pool thread a claim may take ahead of free threads
    /// while jobs are short enough to start within the daemon's prefetch
    /// wait. On SQLite 15: a pool of 8 then claims up to 128 jobs per
    /// transaction instead of 8 (measured on the store alone, 64 per
    /// transaction ran at ~55 000 jobs/s and 128 at ~74 000, with no gain
    /// past that, and longer write transactions would hold up SQL clients).
    fn claim_ahead(&self) -> usize {
        15
    }

    /// Whether each message of [`Queue::watch_commits`] is itself a
    /// committed insert (PostgreSQL's NOTIFY is delivered only after the
    /// commit), so the daemon claims at once without asking the change
    /// counter first. SQLite's `-wal` event comes before the commit shows.
    fn wakes_are_commits(&self) -> bool {
        false
    }

    /// Whether the jobs a flow releases when an outcome is written (a
    /// dependent, a batch's callback, a sequence's next job) are announced
    /// through [`Queue::watch_commits`] like inserts, to this daemon too:
    /// PostgreSQL's flow triggers NOTIFY their queues. SQLite's watch does
    /// not see the daemon's own commits, so after outcomes no claim of the
    /// same transaction saw, the daemon looks itself.
    fn announces_releases(&self) -> bool {
        false
    }

    /// Extends the leases of `ids` held by `worker`; returns how many were.
    fn renew_leases(&mut self, worker: &str, ids: &[i64], lease_until: i64) -> Result<usize>;

    /// Writes the latest progress of running jobs `worker` holds, each as
    /// (id, attempt, fraction, note); a job no longer in that attempt is
    /// left alone.
    fn set_progress(&mut self, worker: &str, reports: &[(i64, i64, f64, String)]) -> Result<()>;

    /// The running jobs of `worker` that an operator asked to cancel.
    fn cancel_requests(&mut self, worker: &str) -> Result<Vec<i64>>;

    /// Every attempt the database says `worker` runs now, so that a daemon
    /// can find the ones it does not know it holds (a claim whose reply was
    /// lost with the connection).
    fn held_by(&mut self, worker: &str) -> Result<Vec<Held>>;

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
}

/// The periodic schedules' slots (`cron` table): each slot enqueued once.
pub trait Schedules {
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
}

/// The daemons sharing the database: registration, heartbeats, and the
/// rescue of jobs whose daemon died or whose lease ran out.
pub trait Fleet {
    /// Takes back running jobs from lost holders: to `queued`, or to `dead`
    /// when they have no attempts left (`default_max_attempts` stands in for a
    /// NULL `max_attempts`). Writes a `rescued` run for each.
    fn rescue(
        &mut self,
        scope: RescueScope<'_>,
        now: i64,
        default_max_attempts: u32,
    ) -> Result<Vec<Rescued>>;

    /// Records a daemon in `workers` (replacing a row with the same id).
    fn register_worker(&mut self, worker: &WorkerInfo) -> Result<()>;

    /// Refreshes a daemon's heartbeat and running count; false when the
    /// daemon has no row (a client deleted it), which it then writes again.
    fn heartbeat(
        &mut self,
        worker: &str,
        now: i64,
        running: i64,
        handlers: &[HandlerProcess],
    ) -> Result<bool>;

    /// Removes a daemon's row.
    fn deregister_worker(&mut self, worker: &str) -> Result<()>;

    /// Every row of `workers`.
    fn workers(&mut self) -> Result<Vec<WorkerInfo>>;

    /// Builds `jobs_ready_key`, the index fair claims scan key by key, if
    /// it is missing; true when this call built it. Only daemons with a
    /// fair queue ask: every keyed job's claim pays for its upkeep.
    fn ensure_key_index(&mut self) -> Result<bool>;
}

/// What operators change: the schema, cancel, retry, prune, pause.
pub trait Admin {
    /// Creates or upgrades the schema; returns the version before and after.
    fn migrate(&mut self) -> Result<(i64, i64)>;

    /// This database's random id, drawn when its schema was made (the
    /// `meta` table): jobs carry it in their `Idempotency-Key` and
    /// `Message-ID` so that two databases' job 7 are never taken for one.
    fn database_id(&mut self) -> Result<String>;

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

    /// Seals batch `name` (making it if it has no row yet): no job joins
    /// it after this, and it finishes once its jobs have ended. False if it
    /// was sealed already.
    fn seal_batch(&mut self, name: &str) -> Result<bool>;
}

/// What the CLI, the dashboard and the metrics read; changes nothing.
pub trait Reads {
    /// The database as logs and messages name it: the file's path, or the
    /// URL with its password redacted.
    fn name(&self) -> String;

    /// The SQLite file, to check that `database.path` still names it; None
    /// on PostgreSQL.
    fn file(&self) -> Option<&Path>;

    /// Ready jobs and the oldest ready `run_at` in these queues (all when
    /// None), for the daemon's `stats` line.
    fn backlog(&mut self, queues: Option<&[String]>, now: i64) -> Result<Backlog>;

    /// How many jobs each queue has in each state, for metrics. Counts every
    /// row: meant for a scrape every few seconds, not for every turn.
    fn job_counts(&mut self) -> Result<Vec<(String, JobState, u64)>>;

    /// The queues that are paused now.
    fn paused_queues(&mut self) -> Result<Vec<String>>;

    /// One job.
    fn job(&mut self, id: i64) -> Result<Option<Job>>;

    /// A job's attempts, oldest first.
    fn runs(&mut self, job_id: i64) -> Result<Vec<JobRun>>;

    /// A batch's row and its jobs counted by state now; None if no job or
    /// callback ever named it.
    fn batch(&mut self, name: &str) -> Result<Option<BatchInfo>>;

    /// The jobs a job waits for and those that wait for it, by id, with
    /// their states (`pruned` for a parent no longer in the table); at
    /// most [`RELATIVES_SHOWN`] children.
    fn relatives(&mut self, job_id: i64) -> Result<Relatives>;

    /// Jobs matching the filter, newest first.
    fn list(&mut self, filter: &ListFilter) -> Result<Vec<Job>>;

    /// The id of the newest `job_runs` row (0 when none).
    fn last_run_id(&mut self) -> Result<i64>;

    /// The attempts every daemon recorded after run `after_id`: how many
    /// succeeded and how many failed (`retry`, `timeout`, `dead`), and the
    /// newest id, to count from next time.
    fn tally_runs_after(&mut self, after_id: i64) -> Result<RunTally>;

    /// The places after `after_id` and up to `upto` that hold no attempt
    /// (taken by a transaction not yet committed or rolled back), as
    /// ranges of first and last place, in order.
    fn empty_places(&mut self, after_id: i64, upto: i64) -> Result<Vec<(i64, i64)>>;

    /// At most `limit` runs written after `after_id`, oldest first.
    fn runs_after(&mut self, after_id: i64, limit: usize) -> Result<Vec<JobRun>>;

    /// The attempts whose places are among `ids`, in order (those written
    /// since a follower saw a later place: see [`crate::store::RunFollower`]).
    fn runs_among(&mut self, ids: &[i64]) -> Result<Vec<JobRun>>;

    /// The running jobs whose handler has reported progress (at most
    /// [`crate::store::PROGRESS_SHOWN`], by id), for `jobd tail`; see
    /// [`Job::running_progress`] for whether it is this attempt's.
    fn running_with_progress(&mut self) -> Result<Vec<Job>>;

    /// Per-queue figures and the live daemons.
    fn stats(&mut self, now: i64) -> Result<Stats>;

    /// The keys with jobs running and those no job may start under at
    /// `now` (blocked, or held by their rate), by key, for `jobd keys`, the
    /// dashboard and the metrics: as many as run or are closed, each with
    /// its ready jobs counted up to [`crate::keys::READY_COUNTED`] when
    /// `count_ready` (the metrics do without).
    fn keys(&mut self, now: i64, count_ready: bool) -> Result<Vec<crate::keys::KeyActivity>>;
}

/// The queue store. Every method is one short transaction or one read.
///
/// It is the five roles together, each caller taking the role it uses:
/// [`Queue`] (the dispatcher), [`Schedules`] (cron), [`Fleet`] (start-up and
/// maintenance), [`Admin`] and [`Reads`] (the CLI and the web pages).
pub trait Store: Queue + Schedules + Fleet + Admin + Reads {}

impl<T: Queue + Schedules + Fleet + Admin + Reads + ?Sized> Store for T {}

/// What opening a database may do: create it, or only open one that
/// exists with the current schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Create the file if needed; the caller migrates (daemon, enqueue, migrate).
    Create,
    /// The file must exist with the current schema (read and admin commands, the
    /// daemon's second connection and the web pages').
    Existing,
}
