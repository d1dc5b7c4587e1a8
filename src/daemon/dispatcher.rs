//! The dispatcher: the one loop that owns the daemon's database connection.
//!
//! Each turn it collects finished attempts from the pool, writes them and
//! claims new work in one short transaction ([`crate::store::Queue::complete_and_claim`],
//! the group commit), and hands the claimed jobs to the pool. It claims no
//! more than there are free slots, split fairly across the queues it serves
//! and capped by their `concurrency` and `rate` ([`QueueLimits`]). A slot is
//! free again only once its outcome is written, which bounds the backlog of
//! unwritten outcomes by the pool size.
//!
//! Between turns it sleeps until something happens: an attempt finishes, a
//! signal arrives, another process commits (inotify on the `-wal` file, see
//! [`crate::store::sqlite::wake`]), the poll interval passes, a scheduled `run_at` or a
//! rate token comes due, a lease needs renewing, or a job overruns.
//!
//! It never runs a job or does a job's IO itself; its only blocking calls are
//! its own short transactions.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};

use crate::config::{Config, RetryConfig};
use crate::daemon::completer::Completer;
use crate::daemon::executor::{self, Control, Task};
use crate::daemon::limits::{Free, QueueLimits};
use crate::daemon::pool::frame::Setup;
use crate::daemon::pool::processes::{self, ProcessPool, CPU_NICE, KILL_GRACE};
use crate::daemon::pool::threads::{Finished, ThreadPool};
use crate::daemon::state::DaemonState;
use crate::event;
use crate::job::{now_ms, Attempt, Claimed, Pool};
use crate::kinds::Registry;
use crate::os::signals::Request;
use crate::store::{Claim, Store, StoreError};

/// How long past its deadline a job may run before the dispatcher gives up
/// on it, writes `timed out` and replaces its thread. IO kinds stop at their
/// deadline by themselves; this catches one that does not.
pub const OVERRUN_GRACE: Duration = Duration::from_secs(1);

/// A wake-up this soon after the dispatcher's own commit is taken for the
/// echo of that commit, not for another writer (the poll interval still
/// catches a writer that committed in the same moment).
const ECHO_WINDOW: Duration = Duration::from_millis(2);

/// How long a job claimed ahead of a free thread (prefetched) may expect
/// to wait for one. Below anything an operator notices, and it keeps a
/// daemon from sitting on work another daemon could start.
pub const PREFETCH_WAIT: Duration = Duration::from_millis(5);

/// The most jobs claimed ahead per thread. While jobs are short each
/// thread's slot is joined by up to this many more, filled by the same claim
/// and waiting in the pool's channel, so a pool of 8 claims up to 128 jobs
/// per transaction instead of 8: measured on the store alone, 64 per
/// transaction run at ~55 000 jobs/s and 128 at ~74 000, with no gain past
/// that.
pub const PREFETCH_PER_THREAD: usize = 15;

/// The slots of a pool of `threads` when attempts take `avg_duration`
/// seconds on average: one per thread, plus as many prefetched jobs per
/// thread as finish within [`PREFETCH_WAIT`], at most
/// [`PREFETCH_PER_THREAD`].
pub fn slots(threads: usize, avg_duration: f64) -> usize {
    let per_thread = (PREFETCH_WAIT.as_secs_f64() / avg_duration.max(1e-9)).floor();
    threads + threads * (per_thread as usize).min(PREFETCH_PER_THREAD)
}

/// The weight of the newest attempt in the running average of durations.
const DURATION_WEIGHT: f64 = 0.1;

/// How often to re-read `data_version` after a wake-up. Short enough that
/// pickup adds well under a millisecond, long enough not to spin a core.
pub const CONFIRM_STEP: Duration = Duration::from_micros(100);

/// How long to keep confirming after a wake-up before deciding it was not a
/// commit (an own write, a checkpoint). Measured here: the commit shows
/// within about 1 ms of the event.
pub const CONFIRM_WINDOW: Duration = Duration::from_millis(3);

/// The poll period while the commit watcher runs. Every commit to a WAL
/// database appends to the `-wal` file, so the watcher sees them all and
/// each wake-up that is not confirmed at once gets a poll one
/// `daemon.poll_interval` later; this slower poll is only a safety net, and
/// it keeps an idle daemon's CPU near zero.
pub const WATCHED_POLL: Duration = Duration::from_secs(1);

/// How long to wait before claiming again after a claim failed.
const CLAIM_RETRY: Duration = Duration::from_millis(250);

/// How long to keep trying to write the last outcomes when stopping.
const FINAL_FLUSH: Duration = Duration::from_secs(10);

/// Re-reads the configuration on SIGHUP and applies what the dispatcher does
/// not own (the log settings); an error is one readable sentence.
pub type Reload = Box<dyn FnMut() -> Result<Config, String> + Send>;

/// What the dispatcher needs from the outside.
pub struct Parts {
    /// Its own connection.
    pub store: Box<dyn Store + Send>,
    /// The validated configuration.
    pub config: Config,
    /// This daemon's worker id.
    pub worker: Arc<str>,
    /// The kinds it runs.
    pub registry: Registry,
    /// Operator requests (signals in the daemon; a test sends its own).
    pub requests: Receiver<Request>,
    /// Commit wake-ups, when a watcher could be set up.
    pub wake: Option<Receiver<()>>,
    /// How to re-read the configuration.
    pub reload: Reload,
    /// What the daemon shows of itself (counters, pools, health).
    pub state: Arc<DaemonState>,
    /// The Prometheus collectors, when `metrics.listen` is set.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// The `jobd` binary the CPU workers are started from.
    pub worker_program: std::path::PathBuf,
}

/// How the CPU workers are started under `config`.
fn cpu_settings(config: &Config, program: &std::path::Path) -> processes::Settings {
    processes::Settings {
        program: program.to_path_buf(),
        setup: Setup {
            file: config.file.clone(),
            exec: config.exec.clone(),
            memory_limit: config.cpu.memory_limit,
            nice: CPU_NICE,
        },
        max_jobs: config.cpu.max_jobs_per_worker,
    }
}

/// A job this daemon holds until its outcome is written.
struct InFlight {
    pool: Pool,
    queue: String,
    kind: String,
    attempt: i64,
    started_at: i64,
    deadline: Instant,
    timeout: Duration,
    max_attempts: i64,
    control: Arc<Control>,
    /// The outcome is with the completer (or the job never reached a thread).
    reported: bool,
}

impl InFlight {
    fn attempt(&self, id: i64, worker: &str, finished_at: i64) -> Attempt {
        Attempt::new(id, worker, self.attempt, self.started_at, finished_at)
    }

    fn finished(&self, completion: crate::job::Completion) -> Finished {
        Finished {
            completion,
            queue: self.queue.clone(),
            kind: self.kind.clone(),
            elapsed: Duration::ZERO,
        }
    }
}

/// How the dispatcher's run ended.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Write transactions (outcomes and claims together).
    pub writes: u64,
    /// Jobs claimed.
    pub claimed: u64,
    /// Jobs that were interrupted and put back to `queued`.
    pub requeued: usize,
    /// Jobs whose outcome could not be written before exit (left running for
    /// the next start's rescue).
    pub unwritten: usize,
}

/// The loop's state.
pub struct Dispatcher {
    store: Box<dyn Store + Send>,
    config: Config,
    worker: Arc<str>,
    registry: Registry,
    retry: Arc<RetryConfig>,
    pool: ThreadPool,
    cpu: Option<ProcessPool>,
    worker_program: std::path::PathBuf,
    done: Receiver<Finished>,
    requests: Receiver<Request>,
    wake: Receiver<()>,
    /// A commit watcher feeds `wake`.
    watched: bool,
    reload: Reload,
    state: Arc<DaemonState>,
    /// Held jobs by (id, attempt): a daemon that wakes from a stall past its
    /// lease may hold a stale attempt and the job's next attempt at once,
    /// and the end of the one must not release the other.
    in_flight: HashMap<(i64, i64), InFlight>,
    /// In-flight jobs of the CPU pool (the rest are the IO pool's).
    held_cpu: usize,
    /// In-flight jobs whose attempt has not reported yet.
    unreported: usize,
    completer: Completer,
    limits: QueueLimits,
    /// The store's change counter when last read.
    data_version: i64,
    /// There may be ready jobs a claim would find.
    maybe_ready: bool,
    /// The earliest future `run_at` known (epoch ms).
    next_due: Option<i64>,
    /// When a rate-limited queue gets its next token.
    next_token: Option<Instant>,
    /// Operators may have flagged running jobs for cancellation.
    check_cancels: bool,
    last_write: Instant,
    next_poll: Instant,
    next_renew: Instant,
    claim_retry_at: Option<Instant>,
    /// When lease renewal last failed, while it keeps failing.
    next_renew_failed: Option<Instant>,
    /// Set by the first stop request: the drain deadline.
    draining: Option<Instant>,
    stop_now: bool,
    writes: u64,
    claimed: u64,
    /// Running average of IO attempt durations (seconds), for the prefetch.
    avg_duration: f64,
    /// The periodic schedules (`[cron.*]`).
    cron: crate::daemon::cron::Cron,
}

impl Dispatcher {
    /// Builds the dispatcher and starts its thread pool.
    pub fn new(parts: Parts) -> std::io::Result<Dispatcher> {
        let (done_tx, done) = crossbeam_channel::unbounded();
        let pool = ThreadPool::new(parts.config.pool.threads, done_tx.clone())?;
        let cpu = ProcessPool::new(
            parts.config.cpu.workers,
            cpu_settings(&parts.config, &parts.worker_program),
            done_tx,
            Arc::clone(&parts.state.cpu_pids),
        )?;
        let now = Instant::now();
        let limits = QueueLimits::new(&parts.config.queues, now);
        Ok(Dispatcher {
            retry: Arc::new(parts.config.retry.clone()),
            store: parts.store,
            worker: parts.worker,
            registry: parts.registry,
            pool,
            cpu: Some(cpu),
            worker_program: parts.worker_program,
            done,
            requests: parts.requests,
            watched: parts.wake.is_some(),
            wake: parts.wake.unwrap_or_else(crossbeam_channel::never),
            reload: parts.reload,
            state: parts.state,
            in_flight: HashMap::new(),
            held_cpu: 0,
            unreported: 0,
            completer: Completer::new(parts.metrics),
            limits,
            data_version: 0,
            maybe_ready: true,
            next_due: None,
            next_token: None,
            check_cancels: true,
            last_write: now,
            next_poll: now,
            next_renew: now + parts.config.daemon.lease / 3,
            claim_retry_at: None,
            next_renew_failed: None,
            draining: None,
            stop_now: false,
            writes: 0,
            claimed: 0,
            // Unknown until jobs ran: assume long, so no prefetch.
            avg_duration: f64::INFINITY,
            cron: crate::daemon::cron::Cron::new(crate::daemon::cron::schedules(&parts.config)),
            config: parts.config,
        })
    }

    /// Runs until a stop request has been honoured; returns what was left.
    pub fn run(&mut self) -> Summary {
        // A line per job would be a write per job; this thread's lines go
        // out once per turn instead, before it sleeps.
        crate::logging::batch_this_thread();
        self.data_version = self.store.change_counter().unwrap_or(0);
        loop {
            self.state
                .last_turn
                .store(now_ms().max(0) as u64, Ordering::Relaxed);
            self.collect();
            let now = Instant::now();
            self.check_overruns(now);
            if self.check_cancels {
                self.apply_cancels();
            }
            if now >= self.next_renew {
                self.renew_leases(now);
            }
            if let Some(until) = self.draining {
                if self.in_flight.is_empty() {
                    self.stop_cpu_pool();
                    return Summary {
                        writes: self.writes,
                        claimed: self.claimed,
                        ..Summary::default()
                    };
                }
                if self.stop_now || now >= until {
                    let summary = self.interrupt();
                    self.stop_cpu_pool();
                    return summary;
                }
            }
            if self.draining.is_none() {
                self.run_cron();
            }
            self.write_step(now);
            self.publish_counts();
            self.wait();
        }
    }

    /// Enqueues the periodic jobs that are due (one short transaction each).
    fn run_cron(&mut self) {
        let now = now_ms();
        if self.cron.due(now) && self.cron.run_due(self.store.as_mut(), now) > 0 {
            self.maybe_ready = true;
        }
    }

    /// What the heartbeat, the `stats` line and the metrics read.
    fn publish_counts(&self) {
        let state = &self.state;
        let held = self.in_flight.len() as u64;
        let cpu = self.held_cpu as u64;
        state.running.store(held, Ordering::Relaxed);
        state.io_busy.store(held - cpu, Ordering::Relaxed);
        state.cpu_busy.store(cpu, Ordering::Relaxed);
        state
            .io_size
            .store(self.pool.size() as u64, Ordering::Relaxed);
        state
            .cpu_size
            .store(self.cpu_size() as u64, Ordering::Relaxed);
    }

    /// Retires the CPU workers; those still running a job (given up on by
    /// now) are killed.
    fn stop_cpu_pool(&mut self) {
        if let Some(cpu) = self.cpu.take() {
            cpu.shutdown();
        }
    }

    fn cpu_size(&self) -> usize {
        self.cpu.as_ref().map_or(0, ProcessPool::size)
    }

    /// Keeps a job until its outcome is written.
    fn hold(&mut self, id: i64, entry: InFlight) {
        if entry.pool == Pool::Cpu {
            self.held_cpu += 1;
        }
        if let Some(old) = self.in_flight.insert((id, entry.attempt), entry) {
            if old.pool == Pool::Cpu {
                self.held_cpu -= 1;
            }
        }
    }

    /// Lets an attempt go once its outcome is written.
    fn release(&mut self, id: i64, attempt: i64) {
        if let Some(entry) = self.in_flight.remove(&(id, attempt)) {
            if entry.pool == Pool::Cpu {
                self.held_cpu -= 1;
            }
        }
    }

    /// Gives the connection back (the daemon deregisters with it).
    pub fn into_store(self) -> Box<dyn Store + Send> {
        self.store
    }

    /// Slots not held by a job. IO: one per thread, plus as many
    /// prefetched jobs per thread as finish within [`PREFETCH_WAIT`] at the
    /// running average duration (none until jobs have run, none for long
    /// jobs). CPU: one per worker, never more: CPU jobs are long, and a job
    /// waiting for a worker would only age under its lease.
    fn free_slots(&self) -> Free {
        let held_io = self.in_flight.len() - self.held_cpu;
        Free {
            cpu: self.cpu_size().saturating_sub(self.held_cpu),
            io: slots(self.pool.size(), self.avg_duration).saturating_sub(held_io),
        }
    }

    fn can_claim(&self, now: Instant) -> bool {
        self.free_slots().total() > 0 && self.can_claim_at(now)
    }

    /// Not draining and not backing off after a failed claim.
    fn can_claim_at(&self, now: Instant) -> bool {
        self.draining.is_none() && self.claim_retry_at.is_none_or(|t| now >= t)
    }

    /// Moves every finished attempt into the completer.
    fn collect(&mut self) {
        while let Ok(finished) = self.done.try_recv() {
            self.on_finished(finished);
        }
    }

    fn on_finished(&mut self, finished: Finished) {
        if Pool::of_kind(&finished.kind) == Pool::Io {
            let took = finished.elapsed.as_secs_f64();
            self.avg_duration = if self.avg_duration.is_finite() {
                self.avg_duration + DURATION_WEIGHT * (took - self.avg_duration)
            } else {
                took
            };
        }
        let key = (finished.completion.id, finished.completion.attempt);
        if let Some(entry) = self.in_flight.get_mut(&key) {
            if !entry.reported {
                entry.reported = true;
                self.unreported -= 1;
            }
        }
        self.completer.push(finished);
    }

    /// The queues to claim from now.
    fn queues_to_serve(&mut self) -> Result<Vec<String>, StoreError> {
        match self.config.daemon.named_queues() {
            Some(named) => Ok(named.to_vec()),
            None => self.store.queued_queues(),
        }
    }

    /// One transaction: write the waiting outcomes and claim for the free
    /// slots, then hand the claimed jobs out.
    fn write_step(&mut self, now_i: Instant) {
        let due = self.next_due.is_some_and(|t| now_ms() >= t)
            || self.next_token.is_some_and(|t| now_i >= t);
        if due {
            self.maybe_ready = true;
            self.next_due = None;
            self.next_token = None;
        }
        let flush = self.flush_due(now_i);
        // Outcomes written in this transaction free their slots for the
        // claim that follows in the same transaction.
        let mut slots = self.free_slots();
        if flush {
            for entry in self.in_flight.values().filter(|e| e.reported) {
                match entry.pool {
                    Pool::Cpu => slots.cpu += 1,
                    Pool::Io => slots.io += 1,
                }
            }
        }
        let claiming = self.maybe_ready && slots.total() > 0 && self.can_claim_at(now_i);
        let mut queues = Vec::new();
        let mut requests = Vec::new();
        if claiming {
            match self.queues_to_serve() {
                Ok(q) => queues = q,
                Err(e) => {
                    self.store_failed(&e);
                    return self.claim_failed(&e, now_i);
                }
            }
            requests = self.limits.plan(slots, &queues, now_i);
        }
        // A queue held back by its own limit may take the slots this write
        // frees; other queues already had them offered in this claim.
        let held_back = claiming && queues.iter().any(|q| self.limits.allowance(q, now_i) == 0);
        if !flush && requests.is_empty() {
            if claiming {
                self.maybe_ready = false;
                self.next_token = self.limits.next_token(&queues, now_i);
                self.refresh_next_due(&queues, &Pool::ALL);
            }
            return;
        }
        let now = now_ms();
        let lease = self.config.daemon.lease.as_millis() as i64;
        let claim = Claim {
            worker: &self.worker,
            now,
            lease_until: now + lease,
            requests: &requests,
        };
        let result = self
            .store
            .complete_and_claim(self.completer.batch(now_i), &claim);
        match result {
            Ok((applied, jobs)) => {
                if self.state.failing_since.swap(0, Ordering::Relaxed) != 0 {
                    // A failed claim may have committed with its reply
                    // lost: look for such jobs now, not a lease later.
                    self.next_renew = now_i;
                }
                self.last_write = Instant::now();
                self.writes += 1;
                self.claimed += jobs.len() as u64;
                self.claim_retry_at = None;
                if !applied.is_empty() {
                    for written in self.completer.written(&applied, &self.state.counters) {
                        self.release(written.id, written.attempt);
                        self.limits.finished(&written.queue);
                    }
                    // Slots came free without a claim to use them.
                    if requests.is_empty() {
                        self.maybe_ready = true;
                    }
                }
                if !requests.is_empty() {
                    // Per queue: jobs of each pool, and in all.
                    let mut got: HashMap<&str, (usize, usize)> = HashMap::new();
                    for job in &jobs {
                        let n = got.entry(job.queue.as_str()).or_default();
                        match Pool::of_kind(&job.kind) {
                            Pool::Cpu => n.0 += 1,
                            Pool::Io => n.1 += 1,
                        }
                    }
                    // A request that got all it asked of a pool, or all the
                    // queue allows, may have left ready jobs behind.
                    let full = requests.iter().any(|r| {
                        let (cpu, io) = got.get(r.queue.as_str()).copied().unwrap_or_default();
                        (r.cpu > 0 && cpu >= r.cpu)
                            || (r.io > 0 && io >= r.io)
                            || cpu + io >= r.limit
                    });
                    self.maybe_ready = full || (!applied.is_empty() && held_back);
                    for job in jobs {
                        self.dispatch(job, now, now_i);
                    }
                    if !full {
                        self.next_token = self.limits.next_token(&queues, now_i);
                        // Only the pools this claim asked of came up short.
                        // A pool with no free slot was not asked; when its
                        // slots come free it claims, and if that comes up
                        // short it looks ahead itself. (On PostgreSQL the IO
                        // look-ahead was a quarter of the server's work in a
                        // drain where only the idle CPU pool came up short.)
                        let asked: Vec<Pool> = Pool::ALL
                            .into_iter()
                            .filter(|&pool| requests.iter().any(|r| r.for_pool(pool) > 0))
                            .collect();
                        self.refresh_next_due(&queues, &asked);
                    }
                }
            }
            Err(e) => {
                self.store_failed(&e);
                if self.completer.ready(now_i) {
                    self.completer.failed(&e, now_i);
                }
                if !requests.is_empty() {
                    self.claim_failed(&e, now_i);
                }
            }
        }
    }

    /// Whether the waiting outcomes should be written now.
    fn flush_due(&self, now: Instant) -> bool {
        self.draining.is_some() && self.completer.ready(now)
            || self.completer.due(now, self.unreported)
    }

    /// Notes a failed store operation for `/healthz`.
    fn store_failed(&self, e: &StoreError) {
        let now = now_ms().max(1) as u64;
        let _ =
            self.state
                .failing_since
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        if let Ok(mut last) = self.state.last_failure.lock() {
            *last = e.to_string();
        }
    }

    fn claim_failed(&mut self, e: &StoreError, now: Instant) {
        // One line when trouble starts, not one every 250 ms while it lasts.
        let first = self.claim_retry_at.is_none();
        self.claim_retry_at = Some(now + CLAIM_RETRY);
        if !first {
            return;
        }
        crate::store::log_trouble("claim", e, "claiming again in 250ms; running jobs go on");
    }

    fn refresh_next_due(&mut self, queues: &[String], pools: &[Pool]) {
        match self.store.next_run_at(Some(queues), pools, now_ms()) {
            Ok(next) => self.next_due = next,
            Err(e) => {
                crate::store::log_trouble(
                    "read next run_at",
                    &e,
                    "falling back to the poll interval",
                );
                self.next_due = None;
            }
        }
    }

    /// Starts one claimed job, or settles it at once when it cannot run.
    fn dispatch(&mut self, job: Claimed, now: i64, now_i: Instant) {
        self.limits.started(&job.queue, 1, now_i);
        let started_at = job.started_at;
        let control = Control::new();
        let reject = |reason: String| Finished {
            completion: Attempt::new(job.id, &self.worker, job.attempts, started_at, now)
                .dead(reason),
            queue: job.queue.clone(),
            kind: job.kind.clone(),
            elapsed: Duration::ZERO,
        };
        let pool = Pool::of_kind(&job.kind);
        if let Some(fault) = &job.undecodable {
            let finished = reject(fault.clone());
            return self.settled(job, control, finished);
        }
        let kind = match self.registry.get(&job.kind) {
            Some(kind) => Arc::clone(kind),
            None => {
                let finished = reject(format!(
                    "unknown kind {:?} (this jobd runs: {})",
                    job.kind,
                    self.registry.names().join(", ")
                ));
                return self.settled(job, control, finished);
            }
        };
        let max_bytes = self.config.limits.max_payload_bytes;
        if job.payload.len() as u64 > max_bytes {
            let finished = reject(format!(
                "payload is {} bytes, over limits.max_payload_bytes ({max_bytes})",
                job.payload.len()
            ));
            return self.settled(job, control, finished);
        }
        let timeout = match job.timeout_ms {
            Some(ms) => Duration::from_millis(ms.max(1) as u64),
            None => self
                .config
                .timeouts
                .for_kind(&job.kind)
                .unwrap_or(self.config.timeouts.noop),
        };
        let deadline = now_i + timeout;
        let max_attempts = job.effective_max_attempts(self.config.retry.max_attempts);
        self.hold(
            job.id,
            InFlight {
                pool,
                queue: job.queue.clone(),
                kind: job.kind.clone(),
                attempt: job.attempts,
                started_at,
                deadline,
                timeout,
                max_attempts,
                control: Arc::clone(&control),
                reported: false,
            },
        );
        self.unreported += 1;
        let task = Task {
            kind,
            worker: Arc::clone(&self.worker),
            started_at,
            deadline,
            timeout,
            max_attempts,
            retry: Arc::clone(&self.retry),
            control,
            job,
        };
        match (pool, &self.cpu) {
            (Pool::Cpu, Some(cpu)) => cpu.submit(task),
            _ => self.pool.submit(task),
        }
    }

    fn settled(&mut self, job: Claimed, control: Arc<Control>, finished: Finished) {
        self.hold(
            job.id,
            InFlight {
                pool: Pool::of_kind(&job.kind),
                queue: job.queue,
                kind: job.kind,
                attempt: job.attempts,
                started_at: finished.completion.started_at,
                deadline: Instant::now(),
                timeout: Duration::ZERO,
                max_attempts: 0,
                control,
                reported: true,
            },
        );
        self.completer.push(finished);
    }

    /// Gives up on jobs that ran well past their deadline: `timed out`, and a
    /// fresh thread in place of the stuck one. (A CPU job is killed at its
    /// deadline by its supervisor; this only catches one whose supervisor
    /// did not report, and the cancel flag raised here makes it kill.)
    fn check_overruns(&mut self, now: Instant) {
        let mut replaced = 0;
        for (&(id, _), entry) in self.in_flight.iter_mut() {
            if entry.reported || now < overrun_at(entry) {
                continue;
            }
            if !entry.control.abandon() {
                // It finished in this very moment; its outcome is on the way.
                continue;
            }
            entry.reported = true;
            self.unreported -= 1;
            event!(
                Warn,
                "job.overrun",
                id = id,
                kind = entry.kind.as_str(),
                queue = entry.queue.as_str(),
                attempt = entry.attempt,
                detail = "still running past its deadline; its thread is given up and replaced"
            );
            let completion = executor::timed_out(
                entry.attempt(id, &self.worker, now_ms()),
                entry.timeout,
                entry.max_attempts,
                &self.retry,
            );
            self.completer.push(entry.finished(completion));
            if entry.pool == Pool::Io {
                replaced += 1;
            }
        }
        for _ in 0..replaced {
            if let Err(e) = self.pool.replace_stuck() {
                event!(Error, "pool.error", error:% = e, action = "running with one thread fewer");
            }
        }
    }

    fn apply_cancels(&mut self) {
        self.check_cancels = false;
        if self.in_flight.values().all(|e| e.reported) {
            return;
        }
        match self.store.cancel_requests(&self.worker) {
            Ok(ids) => {
                for id in ids {
                    for (_, entry) in self.in_flight.iter().filter(|((held, _), _)| *held == id) {
                        entry.control.cancel.store(true, Ordering::Relaxed);
                    }
                }
            }
            Err(e) => crate::store::log_trouble(
                "read cancel requests",
                &e,
                "looking again at the next change",
            ),
        }
    }

    fn renew_leases(&mut self, now: Instant) {
        let lease = self.config.daemon.lease;
        self.next_renew = now + lease / 3;
        // A fresh look at cancel requests too, in case a change went unseen.
        self.check_cancels = true;
        self.reconcile();
        let mut ids: Vec<i64> = self.in_flight.keys().map(|&(id, _)| id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return;
        }
        let until = now_ms() + lease.as_millis() as i64;
        match self.store.renew_leases(&self.worker, &ids, until) {
            Ok(renewed) if renewed < ids.len() => {
                self.next_renew_failed = None;
                event!(
                    Warn,
                    "lease.lost",
                    held = ids.len(),
                    renewed = renewed,
                    detail = "some jobs were taken back from this daemon; their outcomes will be discarded"
                );
            }
            Ok(_) => self.next_renew_failed = None,
            Err(e) => {
                self.store_failed(&e);
                // A renewal due sooner than usual marks a failing streak;
                // log only its first failure.
                let first = self.next_renew_failed.is_none();
                self.next_renew_failed = Some(now);
                self.next_renew = now + CLAIM_RETRY;
                if first {
                    crate::store::log_trouble("renew leases", &e, "trying again every 250ms");
                }
            }
        }
    }

    /// Gives back, without counting the attempt, what the database says
    /// this daemon runs but it does not hold: a claim that committed while
    /// its reply was lost with the connection. Left alone such a job would
    /// wait out its lease under a live daemon and lose that attempt.
    fn reconcile(&mut self) {
        let held = match self.store.held_by(&self.worker) {
            Ok(held) => held,
            Err(e) => {
                self.store_failed(&e);
                return;
            }
        };
        let now = now_ms();
        let now_i = Instant::now();
        for job in held {
            if self.in_flight.contains_key(&(job.id, job.attempt)) {
                continue;
            }
            event!(
                Warn,
                "job.orphaned",
                id = job.id,
                kind = job.kind.as_str(),
                queue = job.queue.as_str(),
                attempt = job.attempt,
                detail = "the database says this daemon runs it, but its claim never reached it (a reply lost with the connection); given back without counting the attempt"
            );
            self.limits.started(&job.queue, 1, now_i);
            let completion =
                Attempt::new(job.id, &self.worker, job.attempt, job.started_at, now).interrupted();
            let finished = Finished {
                completion,
                queue: job.queue.clone(),
                kind: job.kind.clone(),
                elapsed: Duration::ZERO,
            };
            self.hold(
                job.id,
                InFlight {
                    pool: Pool::of_kind(&job.kind),
                    queue: job.queue,
                    kind: job.kind,
                    attempt: job.attempt,
                    started_at: job.started_at,
                    deadline: now_i,
                    timeout: Duration::ZERO,
                    max_attempts: 0,
                    control: Control::new(),
                    reported: true,
                },
            );
            self.completer.push(finished);
        }
    }

    /// Reads the change counter; true (and work to look for) when another
    /// connection committed.
    fn changed(&mut self) -> bool {
        match self.store.change_counter() {
            Ok(v) if v != self.data_version => {
                self.data_version = v;
                self.maybe_ready = true;
                self.check_cancels = true;
                true
            }
            Ok(_) => false,
            Err(e) => {
                crate::store::log_trouble(
                    "read data_version",
                    &e,
                    "looking again at the next poll",
                );
                false
            }
        }
    }

    /// The period of the fallback poll.
    fn poll_period(&self) -> Duration {
        let interval = self.config.daemon.poll_interval;
        if self.watched {
            interval.max(WATCHED_POLL)
        } else {
            interval
        }
    }

    /// A commit file changed: confirm the commit, which becomes visible a
    /// little after the write that woke us.
    fn on_wake(&mut self) {
        if self.changed() {
            return;
        }
        // Whatever the write was, look once more a poll interval from now.
        let recheck = Instant::now() + self.config.daemon.poll_interval;
        self.next_poll = self.next_poll.min(recheck);
        if self.last_write.elapsed() < ECHO_WINDOW {
            return;
        }
        let until = Instant::now() + CONFIRM_WINDOW;
        while Instant::now() < until {
            if !self.done.is_empty() || !self.requests.is_empty() {
                return;
            }
            std::thread::sleep(CONFIRM_STEP);
            if self.changed() {
                return;
            }
        }
    }

    /// Sleeps until the next thing to do.
    fn wait(&mut self) {
        let now = Instant::now();
        // Pinged from this loop, so a loop that stops turning stops the
        // pings and systemd restarts the service.
        let next_ping = self.state.notifier.watchdog(now);
        if (self.maybe_ready && self.can_claim(now)) || self.flush_due(now) {
            return;
        }
        if now >= self.next_poll {
            self.next_poll = now + self.poll_period();
            if self.changed() {
                return;
            }
        }
        let mut until = self.next_poll.min(self.next_renew);
        if self.draining.is_none() && self.free_slots().total() > 0 {
            if let Some(due) = self.next_due {
                let ms = (due - now_ms()).max(0) as u64;
                until = until.min(now + Duration::from_millis(ms));
            }
            if let Some(token) = self.next_token {
                until = until.min(token);
            }
        }
        if self.draining.is_none() {
            if let Some(due) = self.cron.next_due() {
                let ms = (due - now_ms()).max(0) as u64;
                until = until.min(now + Duration::from_millis(ms));
            }
        }
        for entry in self.in_flight.values().filter(|e| !e.reported) {
            until = until.min(overrun_at(entry));
        }
        for t in [
            self.completer.deadline(),
            self.claim_retry_at,
            self.draining,
            next_ping,
        ]
        .into_iter()
        .flatten()
        {
            until = until.min(t);
        }
        let timeout = until.saturating_duration_since(now);
        crate::logging::flush();
        select! {
            recv(self.done) -> finished => {
                if let Ok(finished) = finished {
                    self.on_finished(finished);
                }
            }
            recv(self.requests) -> request => match request {
                Ok(request) => self.on_request(request),
                // Nobody can ask any more: treat as a stop request.
                Err(_) => {
                    self.requests = crossbeam_channel::never();
                    self.on_request(Request::Stop);
                }
            },
            recv(self.wake) -> woke => match woke {
                Ok(()) => self.on_wake(),
                Err(_) => {
                    // The watcher stopped: polling alone from now on.
                    self.wake = crossbeam_channel::never();
                    self.watched = false;
                }
            },
            default(timeout) => {}
        }
    }

    fn on_request(&mut self, request: Request) {
        match request {
            Request::Stop if self.draining.is_none() => {
                let grace = self.config.daemon.shutdown_grace;
                self.draining = Some(Instant::now() + grace);
                self.state.draining.store(true, Ordering::Relaxed);
                self.state.notifier.stopping(&format!(
                    "draining {} jobs, at most {}",
                    self.in_flight.len(),
                    humantime::format_duration(grace)
                ));
                event!(
                    Info,
                    "daemon.draining",
                    running = self.in_flight.len(),
                    grace:% = humantime::format_duration(grace),
                    detail = "no new claims; a second signal stops at once"
                );
            }
            Request::Stop => self.stop_now = true,
            Request::Reload => {
                self.state.notifier.reloading();
                match (self.reload)() {
                    Ok(config) => self.apply(config),
                    Err(error) => event!(
                        Error,
                        "config.invalid",
                        error = error.as_str(),
                        action = "keeping the running configuration"
                    ),
                }
                // Ready again either way: the old configuration runs on.
                self.state.notifier.ready(&format!(
                    "{} running, configuration reloaded",
                    self.in_flight.len()
                ));
            }
        }
    }

    /// Applies a reloaded configuration: pool size, queue limits and rates,
    /// timeouts, retries and intervals. The database and queue set stay as
    /// they were at start-up.
    fn apply(&mut self, mut config: Config) {
        let threads = config.pool.threads;
        if let Err(e) = self.pool.resize(threads) {
            event!(Error, "pool.error", pool = "io", error:% = e, action = "keeping the old pool size");
        }
        if let Some(cpu) = self.cpu.as_mut() {
            // Memory limit and recycling apply to workers started from now.
            cpu.set_settings(cpu_settings(&config, &self.worker_program));
            if let Err(e) = cpu.resize(config.cpu.workers) {
                event!(Error, "pool.error", pool = "cpu", error:% = e, action = "keeping the old pool size");
            }
        }
        self.limits.reload(&config.queues, Instant::now());
        // Schedules added start, removed ones stop (their rows stay).
        self.cron = crate::daemon::cron::Cron::new(crate::daemon::cron::schedules(&config));
        self.retry = Arc::new(config.retry.clone());
        config.database = self.config.database.clone();
        config.daemon.queues = self.config.daemon.queues.clone();
        self.config = config;
        self.maybe_ready = true;
        event!(
            Info,
            "config.reloaded",
            threads = threads,
            cpu_workers = self.cpu_size(),
            level = format!("{:?}", self.config.log.level).to_lowercase(),
            queues_limited = self.config.queues.len()
        );
    }

    /// Stops now: running jobs go back to `queued` without counting the
    /// attempt; finished ones are written as they ended.
    fn interrupt(&mut self) -> Summary {
        self.collect();
        let now = now_ms();
        let mut requeued = 0;
        for (&(id, _), entry) in self.in_flight.iter_mut() {
            if entry.reported || !entry.control.abandon() {
                continue;
            }
            entry.reported = true;
            self.unreported -= 1;
            requeued += 1;
            let completion = entry.attempt(id, &self.worker, now).interrupted();
            self.completer.push(entry.finished(completion));
        }
        // Outcomes that raced in while we interrupted.
        self.collect();
        let give_up = Instant::now() + FINAL_FLUSH;
        while !self.completer.is_empty() && Instant::now() < give_up {
            let now_i = Instant::now();
            if !self.completer.ready(now_i) {
                std::thread::sleep(CONFIRM_STEP.max(Duration::from_millis(10)));
                continue;
            }
            let claim = Claim {
                worker: &self.worker,
                now,
                lease_until: now,
                requests: &[],
            };
            match self
                .store
                .complete_and_claim(self.completer.batch(now_i), &claim)
            {
                Ok((applied, _)) => {
                    self.completer.written(&applied, &self.state.counters);
                }
                Err(e) => self.completer.failed(&e, now_i),
            }
        }
        Summary {
            writes: self.writes,
            claimed: self.claimed,
            requeued,
            unwritten: self.completer.len(),
        }
    }
}

/// When the dispatcher gives up on a job that has not reported. A CPU
/// job's supervisor kills it at the deadline, which may take `KILL_GRACE`.
fn overrun_at(entry: &InFlight) -> Instant {
    match entry.pool {
        Pool::Io => entry.deadline + OVERRUN_GRACE,
        Pool::Cpu => entry.deadline + KILL_GRACE + OVERRUN_GRACE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_shrinks_as_jobs_get_longer_and_stops_past_the_wait() {
        assert_eq!(slots(8, f64::INFINITY), 8);
        assert_eq!(slots(8, 0.010), 8);
        assert_eq!(slots(8, 0.005), 16);
        assert_eq!(slots(8, 0.001), 8 + 8 * 5);
        assert_eq!(slots(8, 0.000_01), 8 + 8 * PREFETCH_PER_THREAD);
        assert_eq!(slots(8, 0.0), 8 + 8 * PREFETCH_PER_THREAD);
    }
}
