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
//!
//! Here: the loop ([`Dispatcher::run`]) and the state it keeps; `claims.rs`
//! fills free slots, `outcomes.rs` writes finished attempts (the write
//! step), `leases.rs` keeps the held jobs' deadlines, cancels and leases,
//! `wake.rs` decides when the loop turns, `control.rs` answers stop and
//! reload.

mod claims;
mod control;
mod leases;
mod outcomes;
mod wake;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::config::{Config, RetryConfig};
use crate::daemon::completer::Completer;
use crate::daemon::executor::Control;
use crate::daemon::limits::QueueLimits;
use crate::daemon::pool::frame::Setup;
use crate::daemon::pool::processes::{self, ProcessPool, CPU_NICE, KILL_GRACE};
use crate::daemon::pool::threads::{Finished, ThreadPool};
use crate::daemon::state::DaemonState;
use crate::job::{now_ms, Attempt, Pool};
use crate::kinds::Registry;
use crate::os::signals::Request;
use crate::store::Store;

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

/// A daemon serving a fair queue makes sure the index its fair claims
/// scan exists (at start and on each reload): the first one builds it,
/// logging `db.index_created`.
pub fn ensure_key_index(store: &mut dyn Store, config: &Config) -> crate::store::Result<()> {
    if config.queues.values().any(|q| q.fair) && store.ensure_key_index()? {
        crate::event!(
            Info,
            "db.index_created",
            name = "jobs_ready_key",
            reason = "a fair queue"
        );
    }
    Ok(())
}

/// The slots of a pool of `threads` when attempts take `avg_duration`
/// seconds on average: one per thread, plus as many prefetched jobs per
/// thread as finish within [`PREFETCH_WAIT`], at most `ahead` (the
/// store's [`crate::store::Queue::claim_ahead`]).
pub fn slots(threads: usize, avg_duration: f64, ahead: usize) -> usize {
    let per_thread = (PREFETCH_WAIT.as_secs_f64() / avg_duration.max(1e-9)).floor();
    threads + threads * (per_thread as usize).min(ahead)
}

/// The weight of the newest attempt in the running average of durations.
const DURATION_WEIGHT: f64 = 0.1;

/// When to look first, once more, after a wake-up, confirmed or not (see
/// `Dispatcher::on_wake`; `daemon.poll_interval` if that is shorter): one
/// read of the change counter. Later looks come at twice the previous
/// gap, until the gap would pass [`WATCHED_POLL`]: a
/// writer with `synchronous = FULL` appends its frames (the wake-up), then
/// waits for its fsync before the commit shows, and an fsync on a busy
/// disk takes tens of milliseconds, more than any fixed wait worth
/// spinning for.
pub const WAKE_RECHECK: Duration = Duration::from_millis(20);

/// How often to re-read `data_version` after a wake-up. Short enough that
/// pickup adds well under a millisecond, long enough not to spin a core.
pub const CONFIRM_STEP: Duration = Duration::from_micros(100);

/// How long to keep confirming after a wake-up before deciding it was not a
/// commit (an own write, a checkpoint). Measured here: the commit shows
/// within about 1 ms of the event.
pub const CONFIRM_WINDOW: Duration = Duration::from_millis(3);

/// The poll period while the commit watcher runs. Every commit to a WAL
/// database appends to the `-wal` file, so the watcher sees them all and
/// each wake-up gets its looks again ([`WAKE_RECHECK`]); this slower poll
/// is only a safety net, and it keeps an idle daemon's CPU near zero.
pub const WATCHED_POLL: Duration = Duration::from_secs(1);

/// How long to wait before claiming again after a claim failed.
const CLAIM_RETRY: Duration = Duration::from_millis(250);

/// How long to keep trying to write the last outcomes when stopping.
const FINAL_FLUSH: Duration = Duration::from_secs(10);

/// Re-reads the configuration on SIGHUP and applies what the dispatcher does
/// not own (the log settings); an error is one readable sentence.
pub type Reload = Box<dyn FnMut() -> Result<Config, String> + Send>;

/// What a dispatcher is built from: its connection, the config, the
/// daemon's id and kinds, and the channels and state it shares with the
/// rest of the daemon.
pub struct DispatcherSetup {
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
    timeout: Duration,
    max_attempts: i64,
    control: Arc<Control>,
    /// The outcome is with the completer (or the job never reached a thread).
    reported: bool,
    /// It counts under a key: its end frees a slot of that key, which no
    /// watcher announces.
    keyed: bool,
}

/// Which pools are known to have no ready job ([`Dispatcher::dry`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Dry {
    cpu: bool,
    io: bool,
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
    /// The keyed limits, enforced by the store in each claim, fleet-wide.
    keys: crate::keys::KeyRules,
    /// The store's change counter when last read.
    data_version: i64,
    /// There may be ready jobs a claim would find.
    maybe_ready: bool,
    /// Pools whose last claim came up short: as of that claim, none of
    /// their jobs was ready. Their free slots alone start no claim until
    /// something may have made jobs ready ([`Dispatcher::look_again`]);
    /// a claim for the other pool still asks for them. (An idle CPU pool
    /// otherwise added a claim to every turn of an IO drain, splitting
    /// each batch of outcomes in two.)
    dry: Dry,
    /// The earliest future `run_at` known (epoch ms).
    next_due: Option<i64>,
    /// When a rate-limited queue gets its next token.
    next_token: Option<Instant>,
    /// Operators may have flagged running jobs for cancellation.
    check_cancels: bool,
    last_write: Instant,
    next_poll: Instant,
    /// After a wake-up: when to read the change counter again, and the
    /// gap before the look after that ([`WAKE_RECHECK`]).
    recheck: Option<(Instant, Duration)>,
    next_renew: Instant,
    /// When the handlers' progress is written next.
    next_progress: Instant,
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
    pub fn new(setup: DispatcherSetup) -> std::io::Result<Dispatcher> {
        let (done_tx, done) = crossbeam_channel::unbounded();
        let pool = ThreadPool::new(setup.config.pool.threads, done_tx.clone())?;
        let cpu = ProcessPool::new(
            setup.config.cpu.workers,
            cpu_settings(&setup.config, &setup.worker_program),
            done_tx,
            Arc::clone(&setup.state.cpu_pids),
        )?;
        let now = Instant::now();
        let limits = QueueLimits::new(&setup.config.queues, now);
        Ok(Dispatcher {
            retry: Arc::new(setup.config.retry.clone()),
            store: setup.store,
            worker: setup.worker,
            registry: setup.registry,
            pool,
            cpu: Some(cpu),
            worker_program: setup.worker_program,
            done,
            requests: setup.requests,
            watched: setup.wake.is_some(),
            wake: setup.wake.unwrap_or_else(crossbeam_channel::never),
            reload: setup.reload,
            state: setup.state,
            in_flight: HashMap::new(),
            held_cpu: 0,
            unreported: 0,
            completer: Completer::new(setup.metrics),
            limits,
            keys: setup.config.key_rules(),
            data_version: 0,
            maybe_ready: true,
            dry: Dry::default(),
            next_due: None,
            next_token: None,
            check_cancels: true,
            last_write: now,
            next_poll: now,
            recheck: None,
            next_renew: now + setup.config.daemon.lease / 3,
            next_progress: now,
            claim_retry_at: None,
            next_renew_failed: None,
            draining: None,
            stop_now: false,
            writes: 0,
            claimed: 0,
            // Unknown until jobs ran: assume long, so no prefetch.
            avg_duration: f64::INFINITY,
            cron: crate::daemon::cron::Cron::new(crate::daemon::cron::schedules(&setup.config)),
            config: setup.config,
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
            self.write_progress(now);
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
            for key in self.completer.unblocked(now_ms()) {
                crate::event!(Info, "key.unblocked", key = key);
            }
            self.publish_counts();
            self.wait();
        }
    }

    /// Enqueues the periodic jobs that are due (one short transaction each).
    fn run_cron(&mut self) {
        let now = now_ms();
        if self.cron.due(now) && self.cron.run_due(self.store.as_mut(), now) > 0 {
            self.look_again();
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
}

/// When the dispatcher gives up on a job that has not reported. A CPU
/// job's supervisor kills it at the deadline, which may take `KILL_GRACE`.
/// The deadline runs from when a thread started the job; one still
/// waiting for a thread cannot overrun before `now` plus its timeout, the
/// soonest the dispatcher needs to look again.
fn overrun_at(entry: &InFlight, now: Instant) -> Instant {
    let deadline = entry.control.begun().unwrap_or(now) + entry.timeout;
    match entry.pool {
        Pool::Io => deadline + OVERRUN_GRACE,
        Pool::Cpu => deadline + KILL_GRACE + OVERRUN_GRACE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_shrinks_as_jobs_get_longer_and_stops_past_the_wait() {
        let ahead = 15;
        assert_eq!(slots(8, f64::INFINITY, ahead), 8);
        assert_eq!(slots(8, 0.010, ahead), 8);
        assert_eq!(slots(8, 0.005, ahead), 16);
        assert_eq!(slots(8, 0.001, ahead), 8 + 8 * 5);
        assert_eq!(slots(8, 0.000_01, ahead), 8 + 8 * ahead);
        assert_eq!(slots(8, 0.0, ahead), 8 + 8 * ahead);
        assert_eq!(slots(8, 0.0, 63), 8 * 64);
    }
}
