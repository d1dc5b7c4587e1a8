//! What every kind is: the [`Kind`] trait, the [`Context`] an attempt runs
//! in (deadline, cancel flag, id), the [`JobError`] it fails with, and the
//! helpers every kind uses to read its payload and name its side effects.

use serde::de::DeserializeOwned;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Why an attempt failed, classified where the failure was born.
#[derive(Clone, Debug, PartialEq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum JobError {
    /// Worth retrying: the next attempt may succeed (a refused connection, a
    /// 503). `retry_at` (epoch ms) overrides the backoff (`Retry-After`).
    #[error("{message}")]
    Transient {
        /// One readable sentence.
        message: String,
        /// When to try again, if the failure said so.
        retry_at: Option<i64>,
    },
    /// Retrying cannot help (a bad payload, a 404): the job goes `dead`.
    #[error("{message}")]
    Permanent {
        /// One readable sentence.
        message: String,
    },
    /// The service asked to slow down (a status of `http.block_on`): the
    /// job's key is blocked fleet-wide until `retry_at` (`Retry-After`,
    /// else a backoff) and the job waits for it, the attempt not counted.
    #[error("{message}")]
    Blocked {
        /// One readable sentence.
        message: String,
        /// The status the service answered.
        status: u16,
        /// When the service said to come back, if it did.
        retry_at: Option<i64>,
    },
    /// The attempt's deadline passed. A transient error; the executor words
    /// the message with the timeout.
    #[error("the deadline passed")]
    TimedOut,
    /// An operator cancelled the job while it ran.
    #[error("cancelled by an operator")]
    Cancelled,
    /// The handler asked to run the job again at `until` (epoch ms): not a
    /// failure, and the attempt does not count.
    #[error("snoozed")]
    Snoozed {
        /// When to run it again.
        until: i64,
    },
}

impl JobError {
    /// A transient error with no retry time of its own.
    pub fn transient(message: impl Into<String>) -> JobError {
        JobError::Transient {
            message: message.into(),
            retry_at: None,
        }
    }

    /// A permanent error.
    pub fn permanent(message: impl Into<String>) -> JobError {
        JobError::Permanent {
            message: message.into(),
        }
    }
}

/// A message a running handler sends before its outcome.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Report {
    /// How far along it is (0 to 1) and what it is doing.
    Progress {
        /// The fraction done, 0 to 1.
        fraction: f64,
        /// A short note ("resized").
        note: String,
    },
    /// A line for the daemon's log (`job.log`).
    Log(String),
}

/// What a kind knows about the attempt it runs.
pub struct Context<'a> {
    /// The job's id.
    pub id: i64,
    /// The attempt number (1 for the first).
    pub attempt: i64,
    /// The job's queue.
    pub queue: &'a str,
    /// The attempt must end by then.
    pub deadline: Instant,
    /// Set when an operator cancels the job or the daemon gives up on it.
    pub cancel: &'a AtomicBool,
    /// Told the process group of a process the attempt starts (an `exec`
    /// handler), so that a kill of the attempt reaches it. None where no
    /// one outside the attempt kills it (the IO threads).
    pub spawned: Option<&'a dyn Fn(i32)>,
    /// What the job's flow hands it (its parents' outcomes), as JSON text;
    /// None outside a flow.
    pub inputs: Option<&'a str>,
    /// Where the handler's messages go (progress, log lines); None: nowhere.
    pub report: Option<&'a dyn Fn(Report)>,
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("id", &self.id)
            .field("attempt", &self.attempt)
            .field("queue", &self.queue)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

/// How often a waiting kind looks at its cancel flag: well inside the
/// default 10 ms poll interval, so a cancel lands within about one interval.
pub const CANCEL_CHECK: Duration = Duration::from_millis(5);

impl Context<'_> {
    /// `Err` once the job is cancelled or its deadline passed.
    pub fn check(&self) -> Result<(), JobError> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(JobError::Cancelled)
        } else if Instant::now() >= self.deadline {
            Err(JobError::TimedOut)
        } else {
            Ok(())
        }
    }

    /// Time left before the deadline (zero once it passed).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Sleeps for `duration`, ending early with `Err` when the job is
    /// cancelled or the deadline comes first.
    pub fn sleep(&self, duration: Duration) -> Result<(), JobError> {
        let until = Instant::now() + duration;
        loop {
            self.check()?;
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            let step = (until - now).min(self.remaining()).min(CANCEL_CHECK);
            std::thread::sleep(step);
        }
    }
}

impl<'a> Context<'a> {
    /// Attempt 1 of job 1 in `default`, due in `within`, for tests.
    #[cfg(test)]
    pub(crate) fn for_test(cancel: &'a AtomicBool, within: Duration) -> Context<'a> {
        Context {
            id: 1,
            attempt: 1,
            queue: "default",
            deadline: Instant::now() + within,
            cancel,
            spawned: None,
            inputs: None,
            report: None,
        }
    }
}

/// One kind of job.
pub trait Kind: Send + Sync {
    /// The name in `jobs.kind`.
    fn name(&self) -> &'static str;

    /// Runs one attempt: parses `payload`, does the work before
    /// `ctx.deadline`, and returns the result as JSON text (None for none).
    fn run(&self, ctx: &Context<'_>, payload: &str) -> Result<Option<String>, JobError>;

    /// Told the database's id ([`crate::store::Admin::database_id`]) once
    /// the daemon has opened it, for kinds that name jobs to the outside
    /// world ([`job_token`]).
    fn identify(&self, _database_id: &str) {}

    /// The warm handler processes it keeps (`exec`'s persistent handlers).
    fn warm_handlers(&self) -> Vec<crate::job::HandlerProcess> {
        Vec::new()
    }
}

/// How a job is named to the outside world (`Idempotency-Key`,
/// `Message-ID`, mail file names): `jobd-<database id>-<job id>`, unique
/// across databases since ids never repeat within one; `jobd-<id>` where
/// no database id is known (a kind run outside a daemon).
pub fn job_token(database_id: Option<&str>, id: i64) -> String {
    match database_id {
        Some(db) => format!("jobd-{db}-{id}"),
        None => format!("jobd-{id}"),
    }
}

/// Parses a payload into a kind's arguments. A bad payload is a permanent
/// error naming the field and what was expected, e.g.
/// `payload field sleep_ms: invalid type: string "x", expected u64`.
pub fn parse_payload<T: DeserializeOwned>(payload: &str) -> Result<T, JobError> {
    // serde reads a struct from an array too; a payload is an object (docs/reference.md).
    if !payload.trim_start().starts_with('{') {
        return Err(JobError::permanent(format!(
            "payload: must be a JSON object, got {}",
            crate::job::json_type_name(payload.trim_start())
        )));
    }
    let mut de = serde_json::Deserializer::from_str(payload);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    match parsed {
        Ok(value) => Ok(value),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            Err(JobError::permanent(if path == "." || path.is_empty() {
                format!("payload: {inner}")
            } else {
                format!("payload field {path}: {inner}")
            }))
        }
    }
}
