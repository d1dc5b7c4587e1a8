//! What both backends do the same way, written once: the control flow of a
//! claim by plan and of a rescue with its attempt rows, the SQL that is the
//! same on both (`?1`/`$1` swapped in), and small helpers over the rows.

use crate::job::{Claimed, Completion, Pool, RunOutcome};
use crate::store::contract::{Applied, ClaimRequest, Rescued};

/// The SQL of [`crate::store::Reads::tally_runs_after`], the same on both backends
/// (`?1`/`$1` swapped in): a range scan of the primary key over the new rows.
pub(crate) fn tally_runs_sql(after: &str) -> String {
    format!(
        "SELECT COALESCE(max(id), {after}), \
           count(*) FILTER (WHERE outcome = 'succeeded'), \
           count(*) FILTER (WHERE outcome IN ('retry', 'timeout', 'dead')) \
         FROM job_runs WHERE id > {after}"
    )
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
