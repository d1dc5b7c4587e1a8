//! Writes attempt outcomes in batches (group commit) and says what happened
//! in the log.
//!
//! Outcomes that arrive while the dispatcher is busy wait here and are
//! written together in its next write (one short transaction, shared with
//! the next claim). The backlog is bounded by the pool size, because a slot
//! is reused only after its outcome is written — that is the back-pressure.
//! When a write fails (locked for longer than the busy timeout, disk full)
//! the outcomes stay, `db.busy` / `db.error` says so and what jobd does next,
//! and the write is tried again after [`WRITE_RETRY`]; the fence decides,
//! once it lands, whether each outcome still holds.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::daemon::pool::threads::Finished;
use crate::daemon::state::Counters;
use crate::event;
use crate::job::{Completion, RunOutcome, Transition};
use crate::metrics::Metrics;
use crate::store::{Applied, StoreError};

/// How long a finished attempt may wait for others to share its write. Well
/// under anything an operator can see, long enough that a busy pool's
/// outcomes go out in batches rather than one transaction each.
pub const GROUP_COMMIT_WINDOW: Duration = Duration::from_millis(1);

/// The pause between attempts to write outcomes after a failed write: long
/// enough for a stuck writer elsewhere to finish, short against the lease.
pub const WRITE_RETRY: Duration = Duration::from_millis(250);

/// The outcomes waiting to be written.
#[derive(Debug, Default)]
pub struct Completer {
    pending: Vec<Completion>,
    /// (queue, kind) of each pending outcome, for the log and the limits.
    meta: Vec<(String, String)>,
    /// When the oldest pending outcome arrived.
    first_at: Option<Instant>,
    failing_since: Option<Instant>,
    retry_at: Option<Instant>,
    /// The Prometheus collectors, when `metrics.listen` is set.
    metrics: Option<Arc<Metrics>>,
    /// The blocks this daemon set, by key: (until, length) in epoch ms, for
    /// the backoff of a service that names no time and for `key.unblocked`.
    blocks: std::collections::HashMap<String, (i64, i64)>,
}

/// A block's length when the service names none: 1 s, doubled while the
/// key keeps being blocked within 5 minutes of its last block, at most 5
/// minutes.
const BLOCK_FIRST: i64 = 1_000;
const BLOCK_MAX: i64 = 300_000;

/// An outcome that was written (or found stale).
#[derive(Debug)]
pub struct Written {
    /// The job.
    pub id: i64,
    /// The attempt the outcome was of.
    pub attempt: i64,
    /// Its queue.
    pub queue: String,
    /// Whether the fence held.
    pub applied: Applied,
    /// The job went back to `queued` (a retry, a snooze, an attempt given
    /// back): it is ready again now or later, and no watcher says so.
    pub requeued: bool,
}

impl Completer {
    /// A completer with nothing pending that counts outcomes into `metrics`.
    pub fn new(metrics: Option<Arc<Metrics>>) -> Completer {
        Completer {
            metrics,
            ..Completer::default()
        }
    }

    /// Queues an outcome for the next write.
    pub fn push(&mut self, finished: Finished) {
        self.first_at.get_or_insert_with(Instant::now);
        let mut completion = finished.completion;
        if let Some(block) = completion.block.as_mut() {
            let now = completion.finished_at;
            let until = block.until.unwrap_or_else(|| {
                let length = match self.blocks.get(&block.key) {
                    Some(&(until, length)) if until > now - BLOCK_MAX => {
                        (length.abs() * 2).clamp(BLOCK_FIRST, BLOCK_MAX)
                    }
                    _ => BLOCK_FIRST,
                };
                now + length
            });
            block.until = Some(until);
            // The job itself comes back no sooner than its key opens.
            if let crate::job::Transition::Requeue { run_at } = &mut completion.transition {
                *run_at = (*run_at).max(until);
            }
            let known = self.blocks.get(&block.key).map_or(0, |b| b.0);
            self.blocks
                .insert(block.key.clone(), (until.max(known), until - now));
        }
        self.pending.push(completion);
        self.meta.push((finished.queue, finished.kind));
    }

    /// The keys whose block (set by this daemon) has ended by `now`
    /// (epoch ms), forgotten as they are returned; the dispatcher logs
    /// `key.unblocked` for each. A key stays remembered for the backoff
    /// until its block is 5 minutes old.
    pub fn unblocked(&mut self, now: i64) -> Vec<String> {
        let mut ended = Vec::new();
        self.blocks.retain(|key, (until, length)| {
            if *length > 0 && *until <= now {
                ended.push(key.clone());
                // Kept, with its length, for the backoff; a negative
                // length marks it told.
                *length = -*length;
            }
            *until > now - BLOCK_MAX
        });
        ended
    }

    /// When the next block this daemon set ends, for the dispatcher's wait.
    pub fn next_unblock(&self) -> Option<i64> {
        self.blocks
            .values()
            .filter(|(_, length)| *length > 0)
            .map(|(until, _)| *until)
            .min()
    }

    /// Outcomes waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// True while the last write of outcomes failed.
    pub fn failing(&self) -> bool {
        self.failing_since.is_some()
    }

    /// True when there is something to write and no back-off holds it.
    pub fn ready(&self, now: Instant) -> bool {
        !self.pending.is_empty() && self.retry_at.is_none_or(|t| now >= t)
    }

    /// True when the batch should be written now rather than wait for more:
    /// no other attempt is still running (nothing more will come soon), or
    /// the oldest outcome has waited [`GROUP_COMMIT_WINDOW`].
    pub fn due(&self, now: Instant, still_running: usize) -> bool {
        self.ready(now)
            && (still_running == 0
                || self
                    .first_at
                    .is_some_and(|t| now >= t + GROUP_COMMIT_WINDOW))
    }

    /// When the pending batch must be written at the latest (or tried again
    /// after a failure).
    pub fn deadline(&self) -> Option<Instant> {
        if self.pending.is_empty() {
            return None;
        }
        let window = self.first_at.map(|t| t + GROUP_COMMIT_WINDOW);
        match (window, self.retry_at) {
            (Some(w), Some(r)) => Some(w.max(r)),
            (w, r) => w.or(r),
        }
    }

    /// The outcomes to write now.
    pub fn batch(&self, now: Instant) -> &[Completion] {
        if self.ready(now) {
            &self.pending
        } else {
            &[]
        }
    }

    /// Records that the batch was written with these results, logs each
    /// job's event and empties the batch.
    pub fn written(&mut self, applied: &[Applied], counters: &Counters) -> Vec<Written> {
        if let Some(since) = self.failing_since.take() {
            event!(
                Info,
                "db.recovered",
                outcomes = applied.len(),
                failing_for_ms = since.elapsed().as_millis() as u64
            );
        }
        self.retry_at = None;
        self.first_at = None;
        let mut out = Vec::with_capacity(applied.len());
        for ((completion, (queue, kind)), &applied) in
            self.pending.drain(..).zip(self.meta.drain(..)).zip(applied)
        {
            match applied {
                Applied::Done => {
                    log_outcome(&completion, &queue, &kind, counters, self.metrics.as_deref())
                }
                Applied::Cancelled => log_cancelled_instead(&completion, &queue, &kind, self.metrics.as_deref()),
                Applied::Stale => event!(
                    Warn,
                    "job.stale",
                    id = completion.id,
                    kind = kind.as_str(),
                    queue = queue.as_str(),
                    attempt = completion.attempt,
                    outcome = completion.outcome.as_str(),
                    detail = "outcome discarded: the job was taken back from this daemon before it was written"
                ),
            }
            out.push(Written {
                id: completion.id,
                attempt: completion.attempt,
                queue,
                applied,
                requeued: !matches!(
                    completion.transition,
                    Transition::Succeed { .. } | Transition::Dead | Transition::Cancel
                ),
            });
        }
        out
    }

    /// Records a failed write: the outcomes stay and are tried again.
    pub fn failed(&mut self, error: &StoreError, now: Instant) {
        let first = self.failing_since.is_none();
        self.failing_since.get_or_insert(now);
        self.retry_at = Some(now + WRITE_RETRY);
        // One line when trouble starts, then one per retry only at debug,
        // so a locked database does not flood the journal.
        let level = if first {
            crate::store::event_level(error)
        } else {
            log::Level::Debug
        };
        let name = crate::store::event_name(error);
        log::log!(
            target: crate::logging::TARGET,
            level,
            op = "write outcomes",
            error:% = error,
            outcomes = self.pending.len(),
            action = "keeping the outcomes and trying again every 250ms until written or the leases lapse";
            "{}", name
        );
    }
}

/// A delay as the log shows it (docs/reference.md: `next_run_in=4s`): whole seconds
/// from a second up, so the value needs no quotes; milliseconds below.
fn short_duration(ms: u64) -> String {
    let rounded = if ms >= 1_000 {
        Duration::from_secs((ms + 500) / 1_000)
    } else {
        Duration::from_millis(ms)
    };
    humantime::format_duration(rounded)
        .to_string()
        .replace(' ', "")
}

/// An attempt that ended after an operator asked to cancel its job: the
/// store wrote `cancelled` instead of the retry, timeout or failure the
/// attempt asked for. Counted and logged as a cancel (as a cancel noticed
/// while running is), with what the attempt itself ended in.
fn log_cancelled_instead(c: &Completion, queue: &str, kind: &str, metrics: Option<&Metrics>) {
    let duration_ms = c.finished_at.saturating_sub(c.started_at);
    if let Some(metrics) = metrics {
        metrics.attempt(
            kind,
            RunOutcome::Cancelled.as_str(),
            duration_ms.max(0) as f64 / 1000.0,
        );
    }
    event!(
        Info,
        "job.cancelled",
        id = c.id,
        kind = kind,
        queue = queue,
        attempt = c.attempt,
        duration_ms = duration_ms,
        attempt_outcome = c.outcome.as_str(),
        error = c.error.as_deref().unwrap_or(""),
        detail = "an operator asked to cancel the job while this attempt ran; it ends cancelled, not retried"
    );
}

// Long: one arm per outcome, each with its own log line and counters.
/// Epoch ms as the log lines' own time format (`2026-11-24T12:00:00.123Z`).
fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

fn log_outcome(
    c: &Completion,
    queue: &str,
    kind: &str,
    counters: &Counters,
    metrics: Option<&Metrics>,
) {
    let duration_ms = c.finished_at.saturating_sub(c.started_at);
    if let Some(metrics) = metrics {
        metrics.attempt(kind, c.outcome.as_str(), duration_ms.max(0) as f64 / 1000.0);
    }
    let error = c.error.as_deref().unwrap_or("");
    let next_run_in = |run_at: i64| short_duration((run_at - c.finished_at).max(0) as u64);
    match (&c.outcome, &c.transition) {
        (RunOutcome::Succeeded, transition) => {
            counters.done.fetch_add(1, Ordering::Relaxed);
            // An http job's line carries its status (docs/reference.md's example).
            let status = match transition {
                Transition::Succeed { result: Some(r) } if kind == "http" => {
                    serde_json::from_str::<serde_json::Value>(r)
                        .ok()
                        .and_then(|v| v["status"].as_u64())
                }
                _ => None,
            };
            match status {
                Some(status) => event!(
                    Info,
                    "job.succeeded",
                    id = c.id,
                    kind = kind,
                    queue = queue,
                    attempt = c.attempt,
                    duration_ms = duration_ms,
                    status = status
                ),
                None => event!(
                    Info,
                    "job.succeeded",
                    id = c.id,
                    kind = kind,
                    queue = queue,
                    attempt = c.attempt,
                    duration_ms = duration_ms
                ),
            }
        }
        (RunOutcome::Retry, Transition::Requeue { run_at }) => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            event!(
                Warn,
                "job.retry",
                id = c.id,
                kind = kind,
                queue = queue,
                attempt = c.attempt,
                error = error,
                next_run_in = next_run_in(*run_at)
            );
        }
        (RunOutcome::Timeout, Transition::Requeue { run_at }) => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            event!(
                Warn,
                "job.timeout",
                id = c.id,
                kind = kind,
                queue = queue,
                attempt = c.attempt,
                error = error,
                next_run_in = next_run_in(*run_at)
            );
        }
        (RunOutcome::Cancelled, _) => event!(
            Info,
            "job.cancelled",
            id = c.id,
            kind = kind,
            queue = queue,
            attempt = c.attempt,
            duration_ms = duration_ms
        ),
        (RunOutcome::Snoozed, Transition::Snooze { run_at }) => event!(
            Info,
            "job.snoozed",
            id = c.id,
            kind = kind,
            queue = queue,
            attempt = c.attempt,
            next_run_in = next_run_in(*run_at),
            detail = "its handler put it off; the attempt does not count"
        ),
        (RunOutcome::Interrupted, _) => event!(
            Info,
            "job.interrupted",
            id = c.id,
            kind = kind,
            queue = queue,
            attempt = c.attempt,
            detail = "back to queued; the attempt does not count"
        ),
        _ => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            event!(
                Error,
                "job.dead",
                id = c.id,
                kind = kind,
                queue = queue,
                attempt = c.attempt,
                outcome = c.outcome.as_str(),
                error = error
            );
        }
    }
    if let Some(block) = &c.block {
        event!(
            Warn,
            "key.blocked",
            key = block.key,
            until = rfc3339(block.until.unwrap_or(c.finished_at)),
            status = block.status,
            id = c.id,
            kind = kind,
            queue = queue,
            detail = "no job of the key starts on any daemon until then"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::short_duration;

    #[test]
    fn delays_read_like_the_spec_and_need_no_quotes() {
        assert_eq!(short_duration(4_012), "4s");
        assert_eq!(short_duration(250), "250ms");
        assert_eq!(short_duration(3_600_000), "1h");
        assert_eq!(short_duration(5_430_000), "1h30m30s");
    }
}
