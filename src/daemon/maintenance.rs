//! Background upkeep on its own thread and connection, so none of it delays
//! the dispatcher's pickup: the heartbeat in `workers`, taking back jobs
//! whose lease ran out (from any daemon), forgetting daemons that stopped
//! heartbeating, the pruner, and the periodic `stats` log line.
//!
//! The start-up rescue of same-host daemons that died lives here too
//! ([`rescue_dead_neighbours`]); the daemon calls it once before it claims.
//! So does the watch on the SQLite file ([`guard_file`]), on a thread of
//! its own that nothing else can hold up.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::config::Config;
use crate::daemon::state::DaemonState;
use crate::event;
use crate::job::now_ms;
use crate::os::procfs;
use crate::store::sqlite::guard::{FileGuard, Part};
use crate::store::{
    PruneCutoffs, Pruned, RescueScope, Rescued, RunCounter, Store, StoreError, WorkerInfo,
};

/// How often a daemon refreshes its `workers` row ("every few seconds").
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// A `workers` row whose heartbeat is older than this many heartbeats (and
/// older than the lease) belongs to a daemon that is gone.
const STALE_HEARTBEATS: u32 = 12;

/// How old a `workers` row's heartbeat must be before its daemon counts as
/// gone, for daemons holding leases of `lease`.
pub fn stale_after(lease: Duration) -> Duration {
    (HEARTBEAT * STALE_HEARTBEATS).max(lease)
}

/// How often the pruner looks for old jobs. Retention is counted in days,
/// so once a minute keeps the table tidy without measurable cost.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Final jobs deleted per transaction: small, so a client inserting with a
/// one-second busy timeout never waits on the pruner.
pub const PRUNE_BATCH: usize = 500;

/// The pause between prune batches, leaving the write lock to others.
const PRUNE_PAUSE: Duration = Duration::from_millis(5);

/// The cut-offs `retention.*` give at `now`.
pub fn retention_cutoffs(config: &Config, now: i64) -> PruneCutoffs {
    let before = |d: Duration| Some(now - d.as_millis() as i64);
    PruneCutoffs {
        succeeded: before(config.retention.succeeded),
        dead: before(config.retention.dead),
        cancelled: before(config.retention.cancelled),
    }
}

/// Deletes everything older than the cut-offs, one small batch per
/// transaction, pausing `pause` between batches.
pub fn prune_all(
    store: &mut dyn Store,
    cutoffs: &PruneCutoffs,
    pause: Duration,
) -> Result<Pruned, StoreError> {
    let mut total = Pruned::default();
    loop {
        let pruned = store.prune_batch(cutoffs, PRUNE_BATCH)?;
        total.jobs += pruned.jobs;
        total.runs += pruned.runs;
        if pruned.jobs < PRUNE_BATCH as u64 {
            return Ok(total);
        }
        std::thread::sleep(pause);
    }
}

/// Logs one `job.rescued` line per job taken back.
pub fn log_rescued(rescued: &[Rescued]) {
    for job in rescued {
        event!(
            Warn,
            "job.rescued",
            id = job.id,
            kind = job.kind.as_str(),
            queue = job.queue.as_str(),
            attempt = job.attempt,
            lost_worker = job.worker.as_str(),
            state = job.state.as_str()
        );
    }
}

/// At start-up: takes back at once the jobs of daemons on this host whose
/// process is gone (or whose pid now belongs to another process), and
/// removes their `workers` rows. Returns the rescued jobs.
pub fn rescue_dead_neighbours(
    store: &mut dyn Store,
    host: &str,
    me: &str,
    default_max_attempts: u32,
) -> Result<Vec<Rescued>, StoreError> {
    let dead: Vec<String> = store
        .workers()?
        .into_iter()
        .filter(|w| w.host == host && w.id != me && !procfs::daemon_alive(w.pid, w.started_at))
        .map(|w| w.id)
        .collect();
    if dead.is_empty() {
        return Ok(Vec::new());
    }
    let rescued = store.rescue(RescueScope::Workers(&dead), now_ms(), default_max_attempts)?;
    for id in &dead {
        store.deregister_worker(id)?;
    }
    Ok(rescued)
}

/// Attempts by every daemon since this one started, counted from
/// `job_runs` at each beat for the dashboard's throughput chart (None
/// until the database first answers).
type Fleet = Option<RunCounter>;

/// The maintenance thread's state.
pub struct Maintenance {
    /// Its own connection.
    pub store: Box<dyn Store + Send>,
    /// The configuration at start-up.
    pub config: Config,
    /// This daemon's worker id.
    pub worker: Arc<str>,
    /// Its row in `workers` as registered at start, written again if a
    /// client deletes it.
    pub registration: WorkerInfo,
    /// Its operations that are failing now.
    pub streaks: Streaks,
    /// What the daemon shows of itself: counters, pools, history.
    pub state: Arc<DaemonState>,
    /// Closed or sent to when the daemon stops.
    pub stop: Receiver<()>,
}

/// This thread's database operations that are failing, and since when:
/// a streak is logged when it starts (`db.busy`/`db.error`) and when it
/// ends (`db.recovered`), not at every beat while an outage lasts.
#[derive(Default)]
pub struct Streaks(HashMap<&'static str, Instant>);

impl Streaks {
    fn failed(&mut self, op: &'static str, e: &StoreError, action: &str) {
        if let std::collections::hash_map::Entry::Vacant(v) = self.0.entry(op) {
            crate::store::log_trouble(op, e, action);
            v.insert(Instant::now());
        }
    }

    fn ok(&mut self, op: &'static str) {
        if let Some(since) = self.0.remove(op) {
            event!(
                Info,
                "db.recovered",
                op = op,
                failing_for_ms = since.elapsed().as_millis() as u64
            );
        }
    }
}

impl Maintenance {
    /// Runs until `stop` fires.
    pub fn run(mut self) {
        let lease = self.config.daemon.lease;
        let beat = HEARTBEAT.min(lease / 3).max(Duration::from_millis(100));
        let now = Instant::now();
        let mut next_beat = now + beat;
        let mut next_prune = now;
        let mut next_stats = now + self.config.daemon.stats_interval;
        let mut last_stats = LastStats {
            at: now,
            usage: procfs::usage("self").unwrap_or_default(),
            done: 0,
            failed: 0,
        };
        // Made at the first sample (`record`): a daemon without a
        // dashboard never reads the attempts.
        let mut fleet: Fleet = None;
        loop {
            let until = next_beat.min(next_prune).min(next_stats);
            match self.stop.recv_deadline(until) {
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            let now = Instant::now();
            if now >= next_beat {
                next_beat = now + beat;
                self.beat(&mut fleet);
            }
            if now >= next_prune {
                next_prune = now + PRUNE_EVERY;
                self.prune();
            }
            if now >= next_stats {
                next_stats = now + self.config.daemon.stats_interval;
                last_stats = self.stats_line(last_stats);
            }
        }
    }

    /// Heartbeat, expired-lease rescue, stale `workers` rows, and the
    /// systemd status line.
    fn beat(&mut self, fleet: &mut Fleet) {
        let now = now_ms();
        let running = self.state.running.load(Ordering::Relaxed) as i64;
        let notify = self.state.notifier.enabled();
        let sample = self.config.metrics.listen.is_some();
        if notify || sample {
            if let Ok(backlog) = crate::store::active_backlog(
                self.store.as_mut(),
                self.config.daemon.named_queues(),
                now,
            ) {
                if notify {
                    // While draining, the stop's own line stays true: the
                    // heartbeat only updates its count.
                    let line = if self.state.draining.load(Ordering::Relaxed) {
                        format!("draining {running} jobs")
                    } else {
                        crate::os::notify::status_line(
                            running as u64,
                            backlog.ready,
                            backlog.lag_ms(now),
                        )
                    };
                    self.state.notifier.status(&line);
                }
                if sample {
                    self.record(fleet, now, backlog.lag_ms(now));
                }
            }
        }
        let handlers = self.state.cpu_pids.warm_handlers();
        let beat = self.store.heartbeat(&self.worker, now, running, &handlers);
        if beat.is_ok() {
            self.streaks.ok("heartbeat");
        }
        match beat {
            Ok(true) => {}
            // Without its row no other daemon sees this one, and after a
            // crash the restart would not know its jobs' holder is gone.
            Ok(false) => {
                let row = WorkerInfo {
                    heartbeat_at: now,
                    running,
                    handlers,
                    ..self.registration.clone()
                };
                match self.store.register_worker(&row) {
                    Ok(()) => {
                        self.streaks.ok("register");
                        event!(
                            Warn,
                            "worker.restored",
                            worker = &*self.worker,
                            detail = "this daemon's row in workers was gone (deleted by a client); written again"
                        )
                    }
                    Err(e) => self
                        .streaks
                        .failed("register", &e, "trying again at the next beat"),
                }
            }
            Err(e) => self
                .streaks
                .failed("heartbeat", &e, "trying again at the next beat"),
        }
        match self.store.rescue(
            RescueScope::ExpiredLeasesOfOthers(&self.worker),
            now,
            self.config.retry.max_attempts,
        ) {
            Ok(rescued) => {
                self.streaks.ok("rescue expired leases");
                log_rescued(&rescued)
            }
            Err(e) => {
                self.streaks
                    .failed("rescue expired leases", &e, "trying again at the next beat")
            }
        }
        let cutoff = now - stale_after(self.config.daemon.lease).as_millis() as i64;
        if let Ok(workers) = self.store.workers() {
            for w in workers
                .iter()
                .filter(|w| w.heartbeat_at < cutoff && *w.id != *self.worker)
            {
                if self.store.deregister_worker(&w.id).is_ok() {
                    event!(
                        Info,
                        "worker.forgotten",
                        worker = w.id.as_str(),
                        last_heartbeat_ms_ago = now.saturating_sub(w.heartbeat_at)
                    );
                }
            }
        }
    }

    /// Adds a sample to the dashboard's history, dropping the oldest past
    /// an hour's worth. Attempts are counted from `job_runs`, so the chart
    /// shows every daemon's work, not only this one's.
    fn record(&mut self, fleet: &mut Fleet, now: i64, lag_ms: i64) {
        if fleet.is_none() {
            *fleet = RunCounter::from_now(self.store.as_mut()).ok();
        }
        // A failed read leaves the totals as they were: a flat step.
        let (done, failed) = match fleet {
            Some(counter) => {
                let _ = counter.count(self.store.as_mut());
                (counter.succeeded, counter.failed)
            }
            None => (0, 0),
        };
        let sample = crate::daemon::state::Sample {
            at: now,
            done,
            failed,
            lag_ms,
        };
        if let Ok(mut history) = self.state.history.lock() {
            history.push_back(sample);
            while history.len() > crate::daemon::state::HISTORY {
                history.pop_front();
            }
        }
    }

    fn prune(&mut self) {
        let cutoffs = retention_cutoffs(&self.config, now_ms());
        match prune_all(self.store.as_mut(), &cutoffs, PRUNE_PAUSE) {
            Ok(p) if p.jobs > 0 => event!(Info, "pruned", jobs = p.jobs, runs = p.runs),
            Ok(_) => {}
            Err(e) => crate::store::log_trouble("prune", &e, "trying again in a minute"),
        }
    }

    fn stats_line(&mut self, last: LastStats) -> LastStats {
        let now = now_ms();
        let backlog = crate::store::active_backlog(
            self.store.as_mut(),
            self.config.daemon.named_queues(),
            now,
        );
        let usage = procfs::usage("self").unwrap_or_default();
        let wall = last.at.elapsed().as_secs_f64().max(1e-3);
        let cpu_pct = (usage.cpu.saturating_sub(last.usage.cpu)).as_secs_f64() / wall * 100.0;
        let counters = &self.state.counters;
        let done = counters.done.load(Ordering::Relaxed);
        let failed = counters.failed.load(Ordering::Relaxed);
        let workers_rss = procfs::rss_with_children(&self.state.cpu_pids.list());
        let rss_mib = format!("{:.1}", usage.rss_bytes as f64 / (1 << 20) as f64);
        let cpu_pct = format!("{cpu_pct:.2}");
        let workers_rss_mib = format!("{:.1}", workers_rss as f64 / (1 << 20) as f64);
        let running = self.state.running.load(Ordering::Relaxed);
        match backlog {
            Ok(backlog) => event!(
                Info,
                "stats",
                ready = backlog.ready,
                running = running,
                lag_ms = backlog.lag_ms(now),
                done = done - last.done,
                failed = failed - last.failed,
                rss_mib:% = rss_mib,
                cpu_pct:% = cpu_pct,
                threads = usage.threads,
                cpu_workers_rss_mib:% = workers_rss_mib
            ),
            // Not `ready=0 lag_ms=0`: an all-clear while the database
            // cannot be read (its own line says why).
            Err(e) => event!(
                Info,
                "stats",
                backlog_unknown = e.to_string(),
                running = running,
                done = done - last.done,
                failed = failed - last.failed,
                rss_mib:% = rss_mib,
                cpu_pct:% = cpu_pct,
                threads = usage.threads,
                cpu_workers_rss_mib:% = workers_rss_mib
            ),
        }
        LastStats {
            at: Instant::now(),
            usage,
            done,
            failed,
        }
    }
}

/// What the previous `stats` line saw, for the differences the next one
/// reports.
struct LastStats {
    at: Instant,
    usage: procfs::Usage,
    done: u64,
    failed: u64,
}

/// How often the SQLite file and its companions are looked at: a write
/// the daemon makes after one of them was replaced may harm the file now
/// at the path, so the window stays short (three `stat` calls a turn).
const FILE_CHECK: Duration = Duration::from_millis(100);

/// Watches the SQLite file the daemon opened until `stop` fires. When the
/// file, its log or its index is deleted or replaced, the daemon stops at
/// once with status 1, without closing the database (a close writes the
/// log into the file and deletes the log by name, which may be the new
/// file's): its jobs are rescued when it starts again on the file the path
/// names, as after a `kill -9`. For a replaced file the log it wrote is
/// first emptied into the old file, so the new one does not read it.
pub fn guard_file(guard: FileGuard, stop: Receiver<()>) {
    loop {
        match stop.recv_timeout(FILE_CHECK) {
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let Some(changed) = guard.check() else {
            continue;
        };
        let emptied = match changed.part {
            Part::Database => guard.empty_log().err(),
            Part::Companion => None,
        };
        event!(
            Error,
            "db.replaced",
            detail = format!(
                "{}; jobd stops now without writing to it again and is rescued when it starts on the file the path names",
                changed.detail
            )
        );
        if let Some(e) = emptied {
            event!(
                Error,
                "db.replaced",
                detail = format!("the old file's write-ahead log could not be emptied ({e}); delete it before jobd starts again")
            );
        }
        crate::logging::flush();
        std::process::exit(1);
    }
}
