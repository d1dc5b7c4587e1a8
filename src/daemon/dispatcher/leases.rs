//! The jobs this daemon holds: deadlines overrun, cancels asked for by an
//! operator, leases renewed before they run out, and stopping them.

use crate::daemon::executor::{self};
use crate::event;
use crate::job::{now_ms, Pool};
use crate::store::Claim;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::daemon::dispatcher::*;

/// How often the progress handlers report is written.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

impl Dispatcher {
    /// Gives up on jobs that ran well past their deadline: `timed out`, and a
    /// fresh thread in place of the stuck one. (A CPU job is killed at its
    /// deadline by its supervisor; this only catches one whose supervisor
    /// did not report, and the cancel flag raised here makes it kill.)
    pub(super) fn check_overruns(&mut self, now: Instant) {
        let mut replaced = 0;
        for (&(id, _), entry) in self.in_flight.iter_mut() {
            if entry.reported || now < overrun_at(entry, now) {
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

    pub(super) fn apply_cancels(&mut self) {
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

    /// Writes the progress the running jobs' handlers reported since the
    /// last write, at most every [`PROGRESS_EVERY`].
    pub(super) fn write_progress(&mut self, now: Instant) {
        if now < self.next_progress {
            return;
        }
        self.next_progress = now + PROGRESS_EVERY;
        let reports: Vec<(i64, i64, f64, String)> = self
            .in_flight
            .iter()
            .filter(|(_, entry)| !entry.reported)
            .filter_map(|(&(id, _), entry)| {
                let (fraction, note) = entry.control.take_progress()?;
                // A NUL would fail every report of the write on PostgreSQL.
                Some((id, entry.attempt, fraction, crate::job::storable(note)))
            })
            .collect();
        if let Err(e) = self.store.set_progress(&self.worker, &reports) {
            crate::store::log_trouble("write progress", &e, "writing the next reports");
        }
    }

    pub(super) fn renew_leases(&mut self, now: Instant) {
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

    /// Stops now: running jobs go back to `queued` without counting the
    /// attempt; finished ones are written as they ended.
    pub(super) fn interrupt(&mut self) -> Summary {
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
                keys: &crate::keys::NO_KEYS,
            };
            match self
                .store
                .complete_and_claim(self.completer.batch(now_i), &claim)
                .outcomes()
            {
                Ok(applied) => {
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
