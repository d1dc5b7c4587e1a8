//! Following attempts as they are written (`jobd tail`, and counting them
//! for the dashboard's chart): each read takes
//! the places after the newest one seen, and looks again for a while at
//! the places it skipped. On PostgreSQL an attempt takes its place (an id
//! from a sequence) inside the statement that writes it, before its
//! transaction commits, so two daemons' outcomes, or a daemon's outcomes
//! and a rescue, can show in another order than their places: reading only
//! after the newest place seen would miss the one that committed last. On
//! SQLite places are taken in commit order and none is ever skipped.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::job::RunOutcome;
use crate::store::contract::{JobRun, Result, Store};

/// How long a skipped place is looked for. Its transaction commits right
/// after the statement that took it; a place still empty after this
/// belongs to a transaction that rolled back (a sequence never gives a
/// number back).
pub const LATE_FOR: Duration = Duration::from_secs(30);

/// At most this many skipped places are looked for at once (a rolled-back
/// batch of outcomes leaves one per outcome).
pub const SKIPPED_MAX: usize = 10_000;

/// How far back from the newest place a follower that starts looks for
/// places not yet written: a batch of outcomes in flight takes at most
/// 512 places per daemon.
pub const START_BACK: i64 = 4_096;

/// Places a reader skipped, each with when: looked for until
/// [`LATE_FOR`], at most [`SKIPPED_MAX`] (the newest, the likeliest to be
/// written yet).
#[derive(Debug, Default)]
struct Skipped(BTreeMap<i64, Instant>);

impl Skipped {
    /// Forgets the places skipped longer ago than [`LATE_FOR`].
    fn expire(&mut self, now: Instant) {
        self.0
            .retain(|_, since| now.duration_since(*since) < LATE_FOR);
    }

    /// The places to look for, in order.
    fn places(&self) -> Vec<i64> {
        self.0.keys().copied().collect()
    }

    /// Places `first..=last`, skipped at `now`.
    fn add(&mut self, first: i64, last: i64, now: Instant) {
        let first = first.max(last - SKIPPED_MAX as i64 + 1);
        self.0.extend((first..=last).map(|id| (id, now)));
        while self.0.len() > SKIPPED_MAX {
            self.0.pop_first();
        }
    }

    /// The empty places after `after` and up to `upto`, from the store.
    fn add_empty(
        &mut self,
        store: &mut dyn Store,
        after: i64,
        upto: i64,
        now: Instant,
    ) -> Result<()> {
        for (first, last) in store.empty_places(after, upto)? {
            self.add(first, last, now);
        }
        Ok(())
    }

    /// Whether `place` was looked for, and is no longer.
    fn found(&mut self, place: i64) -> bool {
        self.0.remove(&place).is_some()
    }
}

/// Where a reader of the attempts stands: the newest place seen, and the
/// places before it not seen yet.
#[derive(Debug)]
pub struct RunFollower {
    last: i64,
    skipped: Skipped,
    /// The last read stopped at its limit: more may be waiting.
    behind: bool,
}

impl RunFollower {
    /// Follows from now: attempts already written are not read, but the
    /// places below the newest one that are still empty (taken by a
    /// transaction that has not committed yet) are looked for.
    pub fn from_now(store: &mut dyn Store) -> Result<RunFollower> {
        let last = store.last_run_id()?;
        let mut skipped = Skipped::default();
        skipped.add_empty(store, (last - START_BACK).max(0), last, Instant::now())?;
        Ok(RunFollower {
            last,
            skipped,
            behind: false,
        })
    }

    /// The attempts written since the last read: those that filled skipped
    /// places first, then at most `limit` after the newest place seen, in
    /// order.
    pub fn next(&mut self, store: &mut dyn Store, limit: usize) -> Result<Vec<JobRun>> {
        let now = Instant::now();
        self.skipped.expire(now);
        let mut runs = if self.skipped.0.is_empty() {
            Vec::new()
        } else {
            store.runs_among(&self.skipped.places())?
        };
        for run in &runs {
            self.skipped.found(run.id);
        }
        let after = store.runs_after(self.last, limit)?;
        for run in &after {
            // Nothing was written before the first place: a jump from 0
            // (a new or emptied table on PostgreSQL, whose sequence goes
            // on) skips nothing.
            if self.last > 0 && run.id > self.last + 1 {
                self.skipped.add(self.last + 1, run.id - 1, now);
            }
            self.last = run.id;
        }
        self.behind = after.len() >= limit;
        runs.extend(after);
        Ok(runs)
    }

    /// Whether the last read stopped at its limit (read again at once).
    pub fn behind(&self) -> bool {
        self.behind
    }
}

/// Attempts counted as they are written, by every daemon (the
/// dashboard's chart): like a [`RunFollower`], each read counts the places
/// after the newest one counted and looks again for a while at the places
/// it skipped, but by count, without reading the rows of a fleet that may
/// write tens of thousands a second. So an attempt that commits after a
/// later one was counted is counted when it commits, and none twice.
#[derive(Debug)]
pub struct RunCounter {
    last: i64,
    skipped: Skipped,
    /// Attempts that succeeded since the counter started.
    pub succeeded: u64,
    /// Attempts that failed (retried, timed out or dead) since it started.
    pub failed: u64,
}

impl RunCounter {
    /// Counts from now, looking for the places below the newest one that
    /// are still empty, as [`RunFollower::from_now`] does.
    pub fn from_now(store: &mut dyn Store) -> Result<RunCounter> {
        let follower = RunFollower::from_now(store)?;
        Ok(RunCounter {
            last: follower.last,
            skipped: follower.skipped,
            succeeded: 0,
            failed: 0,
        })
    }

    /// Adds the attempts written since the last count. After an error the
    /// counts stand as they were, or lack at most the late attempts of the
    /// places the count could not list.
    pub fn count(&mut self, store: &mut dyn Store) -> Result<()> {
        let now = Instant::now();
        self.skipped.expire(now);
        if !self.skipped.0.is_empty() {
            for run in store.runs_among(&self.skipped.places())? {
                if self.skipped.found(run.id) {
                    match run.outcome {
                        RunOutcome::Succeeded => self.succeeded += 1,
                        RunOutcome::Retry | RunOutcome::Timeout | RunOutcome::Dead => {
                            self.failed += 1
                        }
                        _ => {}
                    }
                }
            }
        }
        let after = self.last;
        let tally = store.tally_runs_after(after)?;
        self.succeeded += tally.succeeded;
        self.failed += tally.failed;
        self.last = tally.last_id;
        // As for a follower, a jump from 0 skips nothing.
        if after > 0 && tally.places < (tally.last_id - after) as u64 {
            self.skipped.add_empty(store, after, tally.last_id, now)?;
        }
        Ok(())
    }
}
