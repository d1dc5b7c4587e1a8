//! Runs one attempt of one job on a pool thread: calls the kind with the
//! deadline and cancel flag, catches a panic so that it fails the attempt and
//! never the daemon, and turns the answer into a [`Completion`] (succeeded,
//! retry with backoff, timeout, dead, cancelled).
//!
//! The executor does not touch the database; the dispatcher writes the
//! completion, fenced by worker and attempt.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::RetryConfig;
use crate::daemon::retry;
use crate::job::{now_ms, Attempt, Claimed, Completion, KeyBlock};
use crate::kinds::{Context, JobError, Kind};

const RUNNING: u8 = 0;
const FINISHED: u8 = 1;
const ABANDONED: u8 = 2;

/// What the dispatcher and the thread running a job share about it.
#[derive(Debug, Default)]
pub struct Control {
    /// Raised to ask the job to stop (an operator's cancel).
    pub cancel: AtomicBool,
    /// Who gets to report the attempt: the thread when it finishes, or the
    /// dispatcher when the job overran its deadline. Exactly one wins.
    state: AtomicU8,
    /// The latest progress its handler reported and the dispatcher has not
    /// written yet: the fraction and the note.
    progress: std::sync::Mutex<Option<(f64, String)>>,
    /// Set by the first report.
    reports: std::sync::atomic::AtomicBool,
    /// When a thread or worker process started the job. The deadline
    /// runs from here, not from the claim: a job claimed ahead of a free
    /// thread waits without using its time.
    begun: std::sync::OnceLock<Instant>,
}

impl Control {
    /// Keeps a progress report for the dispatcher to write (the latest
    /// one wins: reports between two writes are not all kept).
    pub fn report_progress(&self, fraction: f64, note: String) {
        if let Ok(mut progress) = self.progress.lock() {
            *progress = Some((fraction, note));
        }
        self.reports.store(true, Ordering::Relaxed);
    }

    /// Whether its handler has reported progress at all: the dispatcher
    /// then looks for more every time it may write them (200 ms), not
    /// only at its next poll.
    pub fn reports_progress(&self) -> bool {
        self.reports.load(Ordering::Relaxed)
    }

    /// The progress reported since the last call, if any.
    pub fn take_progress(&self) -> Option<(f64, String)> {
        self.progress.lock().ok().and_then(|mut p| p.take())
    }

    /// A fresh control for a job that is about to run.
    pub fn new() -> Arc<Control> {
        Arc::new(Control::default())
    }

    /// Marks the job started now (the first call wins) and returns when
    /// it started.
    pub fn begin(&self) -> Instant {
        *self.begun.get_or_init(Instant::now)
    }

    /// When the job was started, None while it waits for a thread.
    pub fn begun(&self) -> Option<Instant> {
        self.begun.get().copied()
    }

    /// The running thread claims the right to report; false when the
    /// dispatcher gave up on the job first.
    pub fn finish(&self) -> bool {
        self.state
            .compare_exchange(RUNNING, FINISHED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// True once the dispatcher gave up on the job.
    pub fn is_abandoned(&self) -> bool {
        self.state.load(Ordering::Acquire) == ABANDONED
    }

    /// The dispatcher gives up on an overrunning job; false when the thread
    /// finished first. Also raises the cancel flag so a cooperative kind stops.
    pub fn abandon(&self) -> bool {
        let won = self
            .state
            .compare_exchange(RUNNING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if won {
            self.cancel.store(true, Ordering::Relaxed);
        }
        won
    }
}

/// One attempt, ready to run.
pub struct Task {
    /// The claimed job (state `running`, `attempts` = this attempt).
    pub job: Claimed,
    /// Its kind.
    pub kind: Arc<dyn Kind>,
    /// This daemon's worker id, for the fence.
    pub worker: Arc<str>,
    /// When the attempt started (epoch ms), as the claim recorded it.
    pub started_at: i64,
    /// The attempt's timeout: its deadline is this long after a thread
    /// or worker process starts it ([`Task::begin`]).
    pub timeout: Duration,
    /// The job's attempt limit in force.
    pub max_attempts: i64,
    /// Backoff settings.
    pub retry: Arc<RetryConfig>,
    /// Shared with the dispatcher.
    pub control: Arc<Control>,
}

impl Task {
    /// Marks the attempt started now and returns its deadline.
    pub fn begin(&self) -> Instant {
        self.control.begin() + self.timeout
    }

    /// Who ran this attempt, ending now.
    pub fn attempt(&self, finished_at: i64) -> Attempt {
        Attempt::new(
            self.job.id,
            &self.worker,
            self.job.attempts,
            self.started_at,
            finished_at,
        )
    }

    /// The completion for this attempt having run past its deadline.
    pub fn timed_out(&self, finished_at: i64) -> Completion {
        timed_out(
            self.attempt(finished_at),
            self.timeout,
            self.max_attempts,
            &self.retry,
        )
    }
}

/// The completion for an attempt that ran past its deadline: a transient
/// failure, retried with backoff while attempts are left. Used by the
/// executor and by the dispatcher when a job overruns.
pub fn timed_out(
    attempt: Attempt,
    timeout: Duration,
    max_attempts: i64,
    retry: &RetryConfig,
) -> Completion {
    let error = format!("timed out after {} ms", timeout.as_millis());
    let finished_at = attempt.finished_at;
    let retry_at = (attempt.attempt < max_attempts)
        .then(|| finished_at + retry::backoff_jittered(retry, attempt.attempt).as_millis() as i64);
    attempt.timed_out(error, retry_at)
}

/// Runs one attempt to its end and returns its completion. Never panics.
pub fn execute(task: &Task) -> Completion {
    let ctx = Context {
        id: task.job.id,
        attempt: task.job.attempts,
        queue: &task.job.queue,
        deadline: task.begin(),
        cancel: &task.control.cancel,
        spawned: None,
        inputs: task.job.inputs.as_deref(),
        report: None,
    };
    let answer = run_kind(&*task.kind, &ctx, &task.job.payload);
    settle(task, answer, now_ms(), fastrand::f64())
}

/// Calls `kind` for one attempt, turning a panic into a transient error.
/// Used on the IO threads and in the CPU worker processes alike.
pub fn run_kind(
    kind: &dyn Kind,
    ctx: &Context<'_>,
    payload: &str,
) -> Result<Option<String>, JobError> {
    // A job cancelled while it waited for a thread does not start.
    panic::catch_unwind(AssertUnwindSafe(|| {
        ctx.check()?;
        kind.run(ctx, payload)
    }))
    .unwrap_or_else(|panic| {
        Err(JobError::transient(format!(
            "the {} handler panicked: {}",
            kind.name(),
            crate::logging::panic_message(&*panic)
        )))
    })
}

/// Turns a kind's answer into the completion to write. Pure apart from its
/// inputs: `now` ends the attempt, `unit` in `[0, 1)` picks the jitter.
pub fn settle(
    task: &Task,
    answer: Result<Option<String>, JobError>,
    now: i64,
    unit: f64,
) -> Completion {
    let attempts_left = task.job.attempts < task.max_attempts;
    let attempt = task.attempt(now);
    match answer {
        Ok(result) => attempt.succeeded(result),
        Err(JobError::Cancelled) => attempt.cancelled(),
        Err(JobError::Snoozed { until }) => {
            let max = task.retry.max_snoozes;
            if task.job.snoozes >= i64::from(max) {
                attempt.dead(format!(
                    "its handler put it off {} times, the most retry.max_snoozes allows ({max})",
                    task.job.snoozes
                ))
            } else {
                let delay = until.saturating_sub(now).max(0);
                attempt.snoozed(
                    until.max(now),
                    format!("snoozed for {} ms by its handler", delay),
                )
            }
        }
        Err(JobError::TimedOut) => task.timed_out(now),
        Err(JobError::Permanent { message }) => attempt.dead(message),
        Err(JobError::Blocked {
            message,
            status,
            retry_at,
        }) => {
            let mut done = transient(task, attempt, message, retry_at, attempts_left, now, unit);
            // The key is closed until the block ends (the completer sets a
            // backoff when the service named no time), so the key's other
            // jobs wait instead of spending their attempts on it.
            done.block = key_of(&task.job).map(|key| KeyBlock {
                key,
                until: retry_at.map(|t| t.max(now)),
                status,
            });
            done
        }
        Err(JobError::Transient { message, retry_at }) => {
            transient(task, attempt, message, retry_at, attempts_left, now, unit)
        }
    }
}

/// A transient failure: retried after the backoff (or `retry_at`), dead
/// when no attempts are left.
fn transient(
    task: &Task,
    attempt: Attempt,
    message: String,
    retry_at: Option<i64>,
    attempts_left: bool,
    now: i64,
    unit: f64,
) -> Completion {
    if !attempts_left {
        return attempt.dead(format!(
            "{message} (gave up after {} attempts)",
            task.job.attempts
        ));
    }
    let backoff = retry::backoff(&task.retry, task.job.attempts, unit);
    let run_at = retry_at.unwrap_or(now + backoff.as_millis() as i64);
    attempt.retry(message, run_at.max(now))
}

/// The key a job's block closes: its own, else the one derived from an
/// http job's URL.
fn key_of(job: &Claimed) -> Option<String> {
    if let Some(key) = &job.limit_key {
        return Some(key.clone());
    }
    let payload: serde_json::Value = serde_json::from_str(&job.payload).ok()?;
    crate::keys::host_key(payload.get("url")?.as_str()?)
}

/// A task for unit tests: job `id` of `kind` with `payload`, on attempt
/// `attempts` of `max_attempts`, and a 250 ms timeout.
#[cfg(test)]
pub(crate) fn test_task(
    id: i64,
    kind: Arc<dyn Kind>,
    payload: &str,
    attempts: i64,
    max_attempts: i64,
) -> Task {
    Task {
        job: Claimed {
            id,
            queue: "default".into(),
            kind: kind.name().into(),
            payload: payload.into(),
            priority: 0,
            run_at: 0,
            max_attempts: None,
            timeout_ms: None,
            attempts,
            started_at: 1_000,
            limit_key: None,
            undecodable: None,
            parents: Vec::new(),
            callback_for: None,
            snoozes: 0,
            inputs: None,
        },
        kind,
        worker: Arc::from("w"),
        started_at: 1_000,
        timeout: Duration::from_millis(250),
        max_attempts,
        retry: Arc::new(RetryConfig {
            max_attempts: 20,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            max_snoozes: 100,
        }),
        control: Control::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{RunOutcome, Transition};

    struct Panics;
    impl Kind for Panics {
        fn name(&self) -> &'static str {
            "panics"
        }
        fn run(&self, _: &Context<'_>, _: &str) -> Result<Option<String>, JobError> {
            panic!("boom at {}", 42)
        }
    }

    fn task(kind: Arc<dyn Kind>, attempts: i64, max_attempts: i64) -> Task {
        test_task(7, kind, "{}", attempts, max_attempts)
    }

    #[test]
    fn a_panic_fails_the_attempt_with_its_message() {
        let done = execute(&task(Arc::new(Panics), 1, 3));
        assert_eq!(done.outcome, RunOutcome::Retry);
        assert_eq!(
            done.error.as_deref(),
            Some("the panics handler panicked: boom at 42")
        );
    }

    #[test]
    fn transient_errors_back_off_until_attempts_run_out() {
        let t = task(Arc::new(crate::kinds::Noop), 2, 3);
        let done = settle(&t, Err(JobError::transient("refused")), 10_000, 0.5);
        assert_eq!(done.transition, Transition::Requeue { run_at: 12_000 });
        let t = task(Arc::new(crate::kinds::Noop), 3, 3);
        let done = settle(&t, Err(JobError::transient("refused")), 10_000, 0.5);
        assert_eq!(done.transition, Transition::Dead);
        assert_eq!(
            done.error.as_deref(),
            Some("refused (gave up after 3 attempts)")
        );
    }

    #[test]
    fn retry_after_overrides_the_backoff_and_timeouts_name_the_limit() {
        let t = task(Arc::new(crate::kinds::Noop), 1, 3);
        let answer = Err(JobError::Transient {
            message: "429".into(),
            retry_at: Some(99_000),
        });
        let done = settle(&t, answer, 10_000, 0.5);
        assert_eq!(done.transition, Transition::Requeue { run_at: 99_000 });
        let done = settle(&t, Err(JobError::TimedOut), 10_000, 0.5);
        assert_eq!(done.outcome, RunOutcome::Timeout);
        assert_eq!(done.error.as_deref(), Some("timed out after 250 ms"));
        let done = settle(&t, Err(JobError::permanent("bad")), 10_000, 0.5);
        assert_eq!(done.transition, Transition::Dead);
    }

    #[test]
    fn only_one_of_thread_and_dispatcher_reports_an_attempt() {
        let c = Control::new();
        assert!(c.abandon());
        assert!(!c.finish());
        assert!(c.cancel.load(Ordering::Relaxed));
        let c = Control::new();
        assert!(c.finish());
        assert!(!c.abandon());
    }
}
