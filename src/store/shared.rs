//! What both backends do the same way, written once: the control flow of a
//! claim by plan, of a rescue with its attempt rows, of cancel and retry
//! (over [`JobEdits`], each backend's row operations), of `retry --dead` and
//! prune in batches, and the assembly of `stats` from each backend's rows;
//! the SQL that is the same on both (`?1`/`$1` swapped in); small helpers.

use std::collections::BTreeMap;

use crate::job::{Claimed, Completion, JobState, Pool, RunOutcome};
use crate::store::contract::{
    Applied, BulkRetry, CancelResult, ClaimRequest, PruneCutoffs, Pruned, QueueStats, Rescued,
    RetryResult, Stats, WorkerInfo,
};

/// A claim's new attempt count. A client may write any `attempts` ≥ 0:
/// at the largest integer `attempts + 1` failed every claim that met the
/// row (out of range on PostgreSQL, a REAL refused by SQLite's STRICT
/// table), so one row stopped its queue on every daemon. It stays there.
/// Below zero (SQLite stores it under `PRAGMA ignore_check_constraints`)
/// `attempts + 1` failed the claim's CHECK the same way: the attempt is
/// counted as the first.
pub(crate) const NEXT_ATTEMPT: &str = "CASE WHEN jobs.attempts < 0 THEN 1 \
     WHEN jobs.attempts < 9223372036854775807 THEN jobs.attempts + 1 ELSE jobs.attempts END";
/// A running row no claim wrote: a claim sets a lease and a start, a
/// client writing `state = 'running'` by hand may not. The rescue takes
/// such a row back whoever it names (a lease that never expires would
/// hold it for good, and a holder cannot fence an outcome on a start it
/// does not have), and a daemon does not count it among the jobs it holds.
pub(crate) const NO_CLAIM: &str = "lease_until IS NULL OR started_at IS NULL";

/// The worker a rescue names: a hand-written running row may have none.
pub(crate) const RESCUED_WORKER: &str = "COALESCE(worker, '(none)')";

/// SQL over the attempts in the order of `job_runs`, the same on both
/// backends but for the name of the two-argument maximum (`max` on SQLite,
/// `GREATEST` on PostgreSQL) and parameters (`?1`/`$1`). That order is
/// two ranges: `job_attempts.id` (the attempts that did not succeed) and
/// `jobs.run_id` (the successes, indexed by `jobs_run`). Readers that
/// follow it read both ranges directly: the view `job_runs` joins them
/// for everyone else, but a range or a `max()` through a union is not
/// always pushed into both arms.
pub(crate) struct RunOrder {
    /// `max` or `GREATEST`.
    pub(crate) greatest: &'static str,
    /// A NULL of type text in a select list.
    pub(crate) null_text: &'static str,
    /// The newest place the pruner has deleted, as SQL (`0` where places
    /// come from a sequence, which never goes back).
    pub(crate) pruned: &'static str,
    /// A succeeded job's duration, `finished_at - started_at` but never
    /// below 0 and never past the largest integer, whatever a client wrote
    /// into the two (on SQLite the difference of two extremes became a
    /// REAL no reader could take; on PostgreSQL it failed the whole read,
    /// and `tail` stopped).
    pub(crate) duration: &'static str,
}

impl RunOrder {
    /// The newest place in the order (0 when there is none), counting
    /// those the pruner deleted: the next attempt takes a place after it.
    pub(crate) fn last_sql(&self) -> String {
        format!(
            "SELECT {}(COALESCE((SELECT max(id) FROM job_attempts), 0), \
               COALESCE((SELECT max(run_id) FROM jobs WHERE run_id IS NOT NULL), 0), {})",
            self.greatest, self.pruned
        )
    }

    /// The columns of a success as a `job_runs` row, from its job row.
    pub(crate) fn success_columns(&self) -> String {
        format!(
            "run_id, id, queue, kind, attempts, worker, started_at, finished_at, \
             'succeeded', {}, {}",
            self.null_text, self.duration
        )
    }

    /// The attempts after place `after`, in order, at most `limit`, as
    /// rows of `columns` (the `job_runs` columns, in the store's order).
    /// Only a succeeded job's place is an attempt (here, in `among_sql`
    /// and in `empty_sql`; `tally_sql` counts new places, each taken by the
    /// very statement that writes the success): a job that SQL moved out of
    /// `succeeded` before the schema's `jobs_success_kept` trigger (which
    /// now moves such a success into `job_attempts`) kept its `run_id`.
    pub(crate) fn after_sql(&self, columns: &str, after: &str, limit: &str) -> String {
        format!(
            "SELECT * FROM (SELECT {columns} FROM job_attempts WHERE id > {after} \
               ORDER BY id LIMIT {limit}) AS a \
             UNION ALL \
             SELECT * FROM (SELECT {} FROM jobs WHERE run_id > {after} \
               AND state = 'succeeded' ORDER BY run_id LIMIT {limit}) AS s \
             ORDER BY 1 LIMIT {limit}",
            self.success_columns()
        )
    }

    /// The attempts whose places pass the backend's tests `attempt_in` (of
    /// `job_attempts.id`) and `success_in` (of `jobs.run_id`), in order.
    pub(crate) fn among_sql(&self, columns: &str, attempt_in: &str, success_in: &str) -> String {
        format!(
            "SELECT {columns} FROM job_attempts WHERE {attempt_in} \
             UNION ALL \
             SELECT {} FROM jobs WHERE {success_in} AND state = 'succeeded' \
             ORDER BY 1",
            self.success_columns()
        )
    }

    /// [`crate::store::Reads::tally_runs_after`]: a range of each part.
    pub(crate) fn tally_sql(&self, after: &str) -> String {
        format!(
            "SELECT COALESCE(max(id), {after}), \
               count(*) FILTER (WHERE outcome = 'succeeded'), \
               count(*) FILTER (WHERE outcome IN ('retry', 'timeout', 'dead')), \
               count(*) \
             FROM (SELECT id, outcome FROM job_attempts WHERE id > {after} \
               UNION ALL SELECT run_id, 'succeeded' FROM jobs WHERE run_id > {after}) AS r"
        )
    }

    /// [`crate::store::Reads::empty_places`]: each run of places between
    /// two taken ones (or `after` and the first), as its first and last.
    pub(crate) fn empty_sql(&self, after: &str, upto: &str) -> String {
        format!(
            "SELECT prev + 1, id - 1 FROM \
               (SELECT id, lag(id, 1, {after}) OVER (ORDER BY id) AS prev FROM \
                 (SELECT id FROM job_attempts WHERE id > {after} AND id <= {upto} \
                  UNION ALL SELECT run_id FROM jobs WHERE run_id > {after} AND run_id <= {upto} \
                    AND state = 'succeeded') \
                 AS r) AS g \
             WHERE id > prev + 1 ORDER BY 1"
        )
    }

    /// The queue and duration of the newest `sample` attempts (by place)
    /// that ended since `since`, for the percentiles of `stats`.
    pub(crate) fn recent_durations_sql(&self, since: &str, sample: &str) -> String {
        let last = self.last_sql();
        format!(
            "SELECT queue, duration_ms FROM job_attempts \
               WHERE id > ({last}) - {sample} AND finished_at >= {since} \
             UNION ALL \
             SELECT queue, {} FROM jobs \
               WHERE run_id > ({last}) - {sample} AND finished_at >= {since}",
            self.duration
        )
    }
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

/// The queues that hold queued jobs, by a loose index scan: one index seek
/// per distinct queue, so the cost does not grow with the number of queued
/// jobs (a `DISTINCT` reads every one). The same text on both backends.
///
/// Each seek is `ORDER BY … LIMIT 1`, never `min()`: PostgreSQL plans a
/// prepared statement once, and `min()` planned while the table was empty
/// stays an aggregate over every queued row for the life of the connection
/// (a daemon started before its jobs arrived read them all, heap included,
/// on every claim: 4 000 jobs/s instead of 13 000). An ordered `LIMIT 1`
/// has no plan but the index seek.
pub(crate) const QUEUED_QUEUES_SQL: &str = "WITH RECURSIVE q(name) AS ( \
       SELECT (SELECT queue FROM jobs WHERE state = 'queued' ORDER BY queue LIMIT 1) \
       UNION ALL \
       SELECT (SELECT queue FROM jobs WHERE state = 'queued' AND queue > q.name \
               ORDER BY queue LIMIT 1) \
       FROM q WHERE q.name IS NOT NULL) \
     SELECT name FROM q WHERE name IS NOT NULL";

/// The earliest `run_at` after `after` (a placeholder) among the queued jobs
/// that `within` selects (one queue's part of one pool): a loose scan over
/// their distinct priorities and one index seek each, since the ready index
/// orders `run_at` within a priority. Each backend spells its placeholders
/// and its pool test. Seeks are ordered `LIMIT 1`s, as in
/// [`QUEUED_QUEUES_SQL`].
pub(crate) fn next_run_at_sql(within: &str, after: &str) -> String {
    format!(
        "WITH RECURSIVE p(pr) AS ( \
           SELECT (SELECT priority FROM jobs WHERE {within} ORDER BY priority DESC LIMIT 1) \
           UNION ALL \
           SELECT (SELECT priority FROM jobs WHERE {within} AND priority < p.pr \
                   ORDER BY priority DESC LIMIT 1) \
           FROM p WHERE p.pr IS NOT NULL) \
         SELECT min((SELECT run_at FROM jobs \
                     WHERE {within} AND priority = p.pr AND run_at > {after} \
                     ORDER BY run_at LIMIT 1)) \
         FROM p WHERE p.pr IS NOT NULL"
    )
}

/// When the next closed key opens after `?1`/`$1` (see
/// [`crate::store::keyed`]): the dispatcher wakes then, as for a job's
/// `run_at`.
pub(crate) const KEY_OPENS_SQL: &str =
    "SELECT min(closed_until) FROM limit_keys WHERE closed_until > ?1";
/// [`KEY_OPENS_SQL`] with PostgreSQL's placeholder.
pub(crate) const KEY_OPENS_SQL_PG: &str =
    "SELECT min(closed_until) FROM limit_keys WHERE closed_until > $1";

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

/// `last_error` of a queued job an operator cancelled.
pub(crate) const CANCELLED_BEFORE_RUN: &str = "cancelled by an operator before it ran";

/// The row operations that `cancel` and `retry` are made of, inside one
/// transaction of either backend; [`cancel_each`] and [`retry_each`] hold
/// the decisions, so both backends answer alike.
pub(crate) trait JobEdits {
    /// The driver's error.
    type Error;
    /// Cancels job `id` if it is queued (with [`CANCELLED_BEFORE_RUN`]);
    /// true if it was.
    fn cancel_queued(&mut self, id: i64, now: i64) -> Result<bool, Self::Error>;
    /// Sets `cancel_requested` on job `id` if it is running; true if it was.
    fn request_cancel(&mut self, id: i64) -> Result<bool, Self::Error>;
    /// The state of job `id`, None when there is no such job.
    fn state(&mut self, id: i64) -> Result<Option<JobState>, Self::Error>;
    /// The queued or running job that holds job `id`'s unique key.
    fn key_holder(&mut self, id: i64) -> Result<Option<i64>, Self::Error>;
    /// Puts the dead or cancelled job `id` back to `queued` at `now`, its
    /// attempts reset (to `waiting` while parents it waits for have not
    /// succeeded).
    fn requeue(&mut self, id: i64, now: i64) -> Result<(), Self::Error>;
    /// The dead or cancelled parent whose end cancelled job `id`, if any.
    fn ended_parent(&mut self, id: i64) -> Result<Option<(i64, JobState)>, Self::Error>;
    /// Undoes what the end of the jobs `parents` did to their children:
    /// each child their end cancelled waits again, unless another parent's
    /// end still holds it; the ids of those children.
    fn revive_children(&mut self, parents: &[i64]) -> Result<Vec<i64>, Self::Error>;
}

/// `retry` of a parent: the children its end cancelled wait again, and
/// their children likewise, level by level (a query per level, so a child
/// that another ended parent still holds stops the walk there).
pub(crate) fn revive_descendants<T: JobEdits>(rows: &mut T, id: i64) -> Result<(), T::Error> {
    let mut level = vec![id];
    while !level.is_empty() {
        level = rows.revive_children(&level)?;
    }
    Ok(())
}

/// `cancel` on either backend: a queued job is cancelled at once, a running
/// one by request (its holder stops it), a finished one is left as it is.
pub(crate) fn cancel_each<T: JobEdits>(
    rows: &mut T,
    ids: &[i64],
    now: i64,
) -> Result<Vec<CancelResult>, T::Error> {
    let mut out = Vec::with_capacity(ids.len());
    for &id in ids {
        out.push(if rows.cancel_queued(id, now)? {
            CancelResult::Cancelled
        } else if rows.request_cancel(id)? {
            CancelResult::Requested
        } else {
            match rows.state(id)? {
                Some(state) => CancelResult::AlreadyFinal(state),
                None => CancelResult::NotFound,
            }
        });
    }
    Ok(out)
}

/// `retry` on either backend: only a dead or cancelled job goes back to
/// `queued`, not while another job holds its unique key, and not while a
/// parent whose end cancelled it is still dead or cancelled.
pub(crate) fn retry_each<T: JobEdits>(
    rows: &mut T,
    ids: &[i64],
    now: i64,
) -> Result<Vec<RetryResult>, T::Error> {
    let mut out = Vec::with_capacity(ids.len());
    for &id in ids {
        out.push(match rows.state(id)? {
            None => RetryResult::NotFound,
            Some(state) if !matches!(state, JobState::Dead | JobState::Cancelled) => {
                RetryResult::WrongState(state)
            }
            Some(_) => match (rows.ended_parent(id)?, rows.key_holder(id)?) {
                (Some(ended), _) => {
                    // Name the ancestor whose end started it: the one to retry.
                    let (mut parent, mut state) = ended;
                    while let Some(further) = rows.ended_parent(parent)? {
                        (parent, state) = further;
                    }
                    RetryResult::ParentEnded(parent, state)
                }
                (None, Some(holder)) => RetryResult::UniqueKeyTaken(holder),
                (None, None) => {
                    rows.requeue(id, now)?;
                    revive_descendants(rows, id)?;
                    RetryResult::Queued
                }
            },
        });
    }
    Ok(out)
}

/// `retry --dead` on either backend: `batch(after)` requeues, in one short
/// transaction, up to [`BULK_RETRY_BATCH`] dead jobs with ids above `after`
/// and returns their ids and how many it requeued (a job whose unique key
/// is taken stays dead); batches run until one comes back short.
pub(crate) fn retry_dead_in_batches<E>(
    mut batch: impl FnMut(i64) -> Result<(Vec<i64>, u64), E>,
) -> Result<BulkRetry, E> {
    let mut total = BulkRetry::default();
    let mut after = 0i64;
    loop {
        let (ids, queued) = batch(after)?;
        total.queued += queued;
        total.skipped_unique += ids.len() as u64 - queued;
        match ids.last() {
            Some(&last) if ids.len() == BULK_RETRY_BATCH => after = last,
            _ => return Ok(total),
        }
    }
}

/// One prune batch on either backend: up to `batch` final jobs, succeeded
/// first, then dead, then cancelled, each state with its own cutoff.
/// `delete(state, cutoff, left)` deletes up to `left` jobs of `state`
/// finished before `cutoff`, with their attempt records, and returns how
/// many it found and what it deleted. `state` is a literal the backend
/// writes into its SQL, so the planner uses the state's partial index.
pub(crate) fn prune_by_state<E>(
    cutoffs: &PruneCutoffs,
    batch: usize,
    mut delete: impl FnMut(&'static str, i64, i64) -> Result<(usize, Pruned), E>,
) -> Result<Pruned, E> {
    let mut pruned = Pruned::default();
    let mut left = batch as i64;
    for (state, cutoff) in [
        ("succeeded", cutoffs.succeeded),
        ("dead", cutoffs.dead),
        ("cancelled", cutoffs.cancelled),
    ] {
        let Some(cutoff) = cutoff else { continue };
        if left <= 0 {
            break;
        }
        let (found, deleted) = delete(state, cutoff, left)?;
        pruned.jobs += deleted.jobs;
        pruned.runs += deleted.runs;
        left -= found as i64;
    }
    Ok(pruned)
}

/// The figures of `jobd stats`, assembled from each backend's rows (the SQL
/// differs, what is made of it does not). Every queue named by any row gets
/// an entry; durations become p50/p95 at the end.
pub(crate) struct StatsBuilder {
    now: i64,
    queues: BTreeMap<String, QueueStats>,
    durations: BTreeMap<String, Vec<i64>>,
}

impl StatsBuilder {
    /// The last minute and hour, for the finished counts and durations.
    pub(crate) const MINUTE: i64 = 60_000;
    pub(crate) const HOUR: i64 = 3_600_000;

    pub(crate) fn new(now: i64) -> StatsBuilder {
        StatsBuilder {
            now,
            queues: BTreeMap::new(),
            durations: BTreeMap::new(),
        }
    }

    fn queue(&mut self, name: String) -> &mut QueueStats {
        self.queues
            .entry(name.clone())
            .or_insert_with(|| QueueStats {
                queue: name,
                ..QueueStats::default()
            })
    }

    /// A queue's queued jobs: ready, scheduled, and the oldest ready `run_at`.
    pub(crate) fn queued(&mut self, name: String, ready: i64, scheduled: i64, oldest: Option<i64>) {
        let now = self.now;
        let q = self.queue(name);
        q.ready = ready as u64;
        q.scheduled = scheduled as u64;
        q.lag_ms = oldest.map_or(0, |oldest| now.saturating_sub(oldest).max(0));
    }

    /// A queue's running jobs.
    pub(crate) fn running(&mut self, name: String, count: i64) {
        self.queue(name).running = count as u64;
    }

    /// A queue's jobs that reached `state` (`succeeded` or `dead`) in the
    /// last minute and the last hour.
    pub(crate) fn finished(&mut self, state: &str, name: String, minute: i64, hour: i64) {
        let q = self.queue(name);
        let (m, h) = match state {
            "succeeded" => (&mut q.succeeded_1m, &mut q.succeeded_1h),
            _ => (&mut q.dead_1m, &mut q.dead_1h),
        };
        (*m, *h) = (minute as u64, hour as u64);
    }

    /// One attempt's duration in a queue, from the last hour's sample.
    pub(crate) fn duration(&mut self, name: String, ms: i64) {
        self.durations.entry(name).or_default().push(ms);
    }

    /// A queue's row in `queues`.
    pub(crate) fn paused(&mut self, name: String, paused: bool) {
        self.queue(name).paused = paused;
    }

    /// The stats, with the live daemons.
    pub(crate) fn finish(mut self, workers: Vec<WorkerInfo>) -> Stats {
        for (name, mut values) in std::mem::take(&mut self.durations) {
            values.sort_unstable();
            let q = self.queue(name);
            q.p50_ms = percentile(&values, 0.50);
            q.p95_ms = percentile(&values, 0.95);
        }
        Stats {
            now: self.now,
            queues: self.queues.into_values().collect(),
            workers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_spends_one_batch_across_the_states_in_order_and_skips_those_kept_forever() {
        let cutoffs = PruneCutoffs {
            succeeded: Some(10),
            dead: None,
            cancelled: Some(30),
        };
        let mut asked = Vec::new();
        let pruned = prune_by_state::<()>(&cutoffs, 5, |state, cutoff, left| {
            asked.push((state, cutoff, left));
            let found = if state == "succeeded" { 3 } else { 2 };
            Ok((
                found,
                Pruned {
                    jobs: found as u64,
                    runs: 2 * found as u64,
                },
            ))
        })
        .unwrap();
        assert_eq!(asked, vec![("succeeded", 10, 5), ("cancelled", 30, 2)]);
        assert_eq!((pruned.jobs, pruned.runs), (5, 10));
        // A batch the first state fills asks no more.
        let mut asked = 0;
        prune_by_state::<()>(&cutoffs, 3, |_, _, left| {
            asked += 1;
            Ok((left as usize, Pruned::default()))
        })
        .unwrap();
        assert_eq!(asked, 1);
    }

    #[test]
    fn retry_dead_goes_on_after_full_batches_and_counts_what_stayed_dead() {
        let mut afters = Vec::new();
        let total = retry_dead_in_batches::<()>(|after| {
            afters.push(after);
            let n = if afters.len() < 3 {
                BULK_RETRY_BATCH
            } else {
                7
            };
            let ids: Vec<i64> = (after + 1..=after + n as i64).collect();
            Ok((ids, n as u64 - 1))
        })
        .unwrap();
        let full = BULK_RETRY_BATCH as i64;
        assert_eq!(afters, vec![0, full, 2 * full]);
        assert_eq!(total.queued, 2 * (BULK_RETRY_BATCH as u64 - 1) + 6);
        assert_eq!(total.skipped_unique, 3);
    }

    /// Cancel and retry over an in-memory table: what each answers is
    /// decided once, here, for both backends.
    #[derive(Default)]
    struct Table {
        state: BTreeMap<i64, JobState>,
        holder: BTreeMap<i64, i64>,
        requeued: Vec<i64>,
    }

    impl JobEdits for Table {
        type Error = ();
        fn cancel_queued(&mut self, id: i64, _now: i64) -> Result<bool, ()> {
            let queued = self.state.get(&id) == Some(&JobState::Queued);
            if queued {
                self.state.insert(id, JobState::Cancelled);
            }
            Ok(queued)
        }
        fn request_cancel(&mut self, id: i64) -> Result<bool, ()> {
            Ok(self.state.get(&id) == Some(&JobState::Running))
        }
        fn state(&mut self, id: i64) -> Result<Option<JobState>, ()> {
            Ok(self.state.get(&id).copied())
        }
        fn key_holder(&mut self, id: i64) -> Result<Option<i64>, ()> {
            Ok(self.holder.get(&id).copied())
        }
        fn requeue(&mut self, id: i64, _now: i64) -> Result<(), ()> {
            self.requeued.push(id);
            Ok(())
        }
        fn ended_parent(&mut self, _id: i64) -> Result<Option<(i64, JobState)>, ()> {
            Ok(None)
        }
        fn revive_children(&mut self, _parents: &[i64]) -> Result<Vec<i64>, ()> {
            Ok(Vec::new())
        }
    }

    #[test]
    fn cancel_and_retry_answer_each_id_by_its_state() {
        let mut t = Table::default();
        for (id, state) in [
            (1, JobState::Queued),
            (2, JobState::Running),
            (3, JobState::Succeeded),
            (4, JobState::Dead),
            (5, JobState::Dead),
        ] {
            t.state.insert(id, state);
        }
        t.holder.insert(5, 9);
        assert_eq!(
            cancel_each(&mut t, &[1, 2, 3, 8], 0).unwrap(),
            vec![
                CancelResult::Cancelled,
                CancelResult::Requested,
                CancelResult::AlreadyFinal(JobState::Succeeded),
                CancelResult::NotFound
            ]
        );
        assert_eq!(
            retry_each(&mut t, &[1, 2, 4, 5, 8], 0).unwrap(),
            vec![
                RetryResult::Queued,
                RetryResult::WrongState(JobState::Running),
                RetryResult::Queued,
                RetryResult::UniqueKeyTaken(9),
                RetryResult::NotFound
            ]
        );
        assert_eq!(t.requeued, vec![1, 4], "only dead or cancelled, keys free");
    }

    #[test]
    fn stats_take_lag_from_the_oldest_ready_job_and_percentiles_from_durations() {
        let mut stats = StatsBuilder::new(10_000);
        stats.queued("mail".into(), 2, 1, Some(7_500));
        stats.queued("idle".into(), 0, 3, None);
        stats.running("mail".into(), 4);
        stats.finished("succeeded", "mail".into(), 1, 5);
        stats.finished("dead", "mail".into(), 0, 2);
        for ms in [30, 10, 20, 40] {
            stats.duration("mail".into(), ms);
        }
        stats.paused("held".into(), true);
        let s = stats.finish(Vec::new());
        let names: Vec<&str> = s.queues.iter().map(|q| q.queue.as_str()).collect();
        assert_eq!(names, vec!["held", "idle", "mail"], "every queue, by name");
        let mail = &s.queues[2];
        assert_eq!(
            (mail.ready, mail.scheduled, mail.running, mail.lag_ms),
            (2, 1, 4, 2_500)
        );
        assert_eq!(
            (
                mail.succeeded_1m,
                mail.succeeded_1h,
                mail.dead_1m,
                mail.dead_1h
            ),
            (1, 5, 0, 2)
        );
        assert_eq!((mail.p50_ms, mail.p95_ms), (Some(20), Some(40)));
        assert_eq!(s.queues[1].lag_ms, 0, "nothing ready, no lag");
        assert!(s.queues[0].paused);
    }
}
