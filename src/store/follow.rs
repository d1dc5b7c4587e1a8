//! Following attempts as they are written (`jobd tail`): each read takes
//! the places after the newest one seen, and looks again for a while at
//! the places it skipped. On PostgreSQL an attempt takes its place (an id
//! from a sequence) inside the statement that writes it, before its
//! transaction commits, so two daemons' outcomes, or a daemon's outcomes
//! and a rescue, can show in another order than their places: reading only
//! after the newest place seen would miss the one that committed last. On
//! SQLite places are taken in commit order and none is ever skipped.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

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

/// Where a reader of the attempts stands: the newest place seen, and the
/// places before it not seen yet, with when they were skipped.
#[derive(Debug)]
pub struct RunFollower {
    last: i64,
    skipped: BTreeMap<i64, Instant>,
    /// The last read stopped at its limit: more may be waiting.
    behind: bool,
}

impl RunFollower {
    /// Follows from now: attempts already written are not read, but the
    /// places below the newest one that are still empty (taken by a
    /// transaction that has not committed yet) are looked for.
    pub fn from_now(store: &mut dyn Store) -> Result<RunFollower> {
        let last = store.last_run_id()?;
        let mut follower = RunFollower::after(last);
        let from = (last - START_BACK).max(0);
        let written: std::collections::HashSet<i64> = (store
            .runs_after(from, START_BACK as usize)?)
        .iter()
        .map(|run| run.id)
        .collect();
        let now = Instant::now();
        for id in (from + 1..last).filter(|id| !written.contains(id)) {
            follower.skipped.insert(id, now);
        }
        Ok(follower)
    }

    /// Follows the attempts after place `last`.
    fn after(last: i64) -> RunFollower {
        RunFollower {
            last,
            skipped: BTreeMap::new(),
            behind: false,
        }
    }

    /// The attempts written since the last read: those that filled skipped
    /// places first, then at most `limit` after the newest place seen, in
    /// order.
    pub fn next(&mut self, store: &mut dyn Store, limit: usize) -> Result<Vec<JobRun>> {
        let now = Instant::now();
        self.skipped
            .retain(|_, since| now.duration_since(*since) < LATE_FOR);
        let mut runs = if self.skipped.is_empty() {
            Vec::new()
        } else {
            let ids: Vec<i64> = self.skipped.keys().copied().collect();
            store.runs_among(&ids)?
        };
        for run in &runs {
            self.skipped.remove(&run.id);
        }
        let after = store.runs_after(self.last, limit)?;
        for run in &after {
            // Nothing was written before the first place: a jump from 0
            // (a new or emptied table on PostgreSQL, whose sequence goes
            // on) skips nothing.
            if self.last > 0 {
                let from = (self.last + 1).max(run.id - SKIPPED_MAX as i64);
                self.skipped.extend((from..run.id).map(|id| (id, now)));
            }
            self.last = run.id;
        }
        // The newest skipped places are the likeliest to be written yet.
        while self.skipped.len() > SKIPPED_MAX {
            self.skipped.pop_first();
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
