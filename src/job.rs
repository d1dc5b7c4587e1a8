//! A job and its lifecycle: the five states, who moves a job out of each,
//! what one attempt can end in, and the transitions the store may apply.
//!
//! ```text
//! queued ──claim──▶ running ──ok──────────────────▶ succeeded
//!   │                 │ ────transient error, attempts left──▶ queued (run_at = backoff)
//!   │                 │ ────permanent error / no attempts left──▶ dead
//!   │                 │ ────lease expired / holder gone──▶ queued (or dead if no attempts left)
//!   │                 │ ────shutdown drain ran out──▶ queued (attempt not counted)
//!   │                 └───cancel_requested──▶ cancelled
//!   └──cancel──▶ cancelled
//! dead / cancelled ──jobd retry──▶ queued (attempts reset to 0)
//! ```
//!
//! This module owns no SQL: the store applies [`Completion`]s, each built by a
//! named constructor that sets the run outcome and the next state together, so
//! a caller cannot ask for an incoherent pair (a `retry` run that ends `dead`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The state of a job. Only the store changes it, and every change checks the
/// current state in the same statement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Held until the jobs it waits for let it go (docs/reference.md,
    /// "Flows"): left by its last parent's success (→ queued), a parent's
    /// death or cancellation (→ cancelled), or `jobd cancel`.
    Waiting,
    /// Waiting to run at or after `run_at`. Left by a daemon's claim
    /// (→ running) or by `jobd cancel` (→ cancelled).
    Queued,
    /// Held by one daemon under a lease. Left by that daemon's completer
    /// (→ succeeded / queued / dead / cancelled) or by any daemon's rescue when
    /// the lease runs out (→ queued / dead).
    Running,
    /// Finished. Left only by the pruner, which deletes it.
    Succeeded,
    /// Failed for good. Left by `jobd retry` (→ queued) or the pruner.
    Dead,
    /// Cancelled by an operator. Left by `jobd retry` (→ queued) or the pruner.
    Cancelled,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 6] = [
        JobState::Waiting,
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Dead,
        JobState::Cancelled,
    ];

    /// The name stored in the `state` column.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Waiting => "waiting",
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    /// True for the states a job never leaves by itself.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Dead | JobState::Cancelled
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a state name that is not one of the six.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown job state {0:?} (expected waiting, queued, running, succeeded, dead or cancelled)"
)]
pub struct UnknownState(pub String);

impl FromStr for JobState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

/// A job as stored, every column of the `jobs` table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Job {
    /// The job's id.
    pub id: i64,
    /// Named queue; limits and rates are per queue.
    pub queue: String,
    /// Which handler runs it (`noop`, `http`, …).
    pub kind: String,
    /// The kind's arguments as JSON text, as the user wrote it.
    pub payload: String,
    /// Higher runs first within a queue.
    pub priority: i64,
    /// Not before this time (epoch ms).
    pub run_at: i64,
    /// NULL: the config's `retry.max_attempts`.
    pub max_attempts: Option<i64>,
    /// NULL: the kind's default timeout.
    pub timeout_ms: Option<i64>,
    /// At most one queued or running job per key.
    pub unique_key: Option<String>,
    /// The key its `[keys.*]` limits apply to (see [`crate::keys`]).
    pub limit_key: Option<String>,
    /// Where the job is in its lifecycle.
    pub state: JobState,
    /// Attempts started so far.
    pub attempts: i64,
    /// When it was inserted (epoch ms).
    pub created_at: i64,
    /// When the latest attempt started (epoch ms).
    pub started_at: Option<i64>,
    /// When the latest attempt ended (epoch ms).
    pub finished_at: Option<i64>,
    /// While running: the holder must renew before this (epoch ms).
    pub lease_until: Option<i64>,
    /// The daemon that holds or last held it.
    pub worker: Option<String>,
    /// One readable sentence: what failed and why.
    pub last_error: Option<String>,
    /// What the job produced, as JSON text.
    pub result: Option<String>,
    /// Set by `jobd cancel` on a running job.
    pub cancel_requested: bool,
    /// Its handler's latest progress report, JSON text `{"attempt",
    /// "fraction", "note"}`.
    pub progress: Option<String>,
}

impl Job {
    /// Its handler's progress in the attempt running now: the fraction
    /// (0 to 1) and the note.
    pub fn running_progress(&self) -> Option<(f64, String)> {
        if self.state != JobState::Running {
            return None;
        }
        let value: serde_json::Value = serde_json::from_str(self.progress.as_deref()?).ok()?;
        if value.get("attempt")?.as_i64()? != self.attempts {
            return None;
        }
        let fraction = value.get("fraction")?.as_f64()?;
        let note = value.get("note").and_then(|n| n.as_str()).unwrap_or("");
        Some((fraction, note.to_string()))
    }

    /// The attempt limit in force: the job's own, else the configured default.
    pub fn effective_max_attempts(&self, default: u32) -> i64 {
        self.max_attempts.unwrap_or(i64::from(default))
    }
}

/// A job as a claim hands it out: what running it takes and nothing more.
/// A claim returns only these columns (not the error, result or key of an
/// earlier attempt), which made claims ~30 % cheaper than returning whole
/// rows; [`Job`] is the whole row, for the commands that show it.
#[derive(Clone, Debug, PartialEq)]
pub struct Claimed {
    /// The job's id.
    pub id: i64,
    /// Its queue.
    pub queue: String,
    /// Its kind.
    pub kind: String,
    /// Its payload, as stored.
    pub payload: String,
    /// Its priority.
    pub priority: i64,
    /// When it was due.
    pub run_at: i64,
    /// Its own attempt limit, if it has one.
    pub max_attempts: Option<i64>,
    /// Its own timeout, if it has one.
    pub timeout_ms: Option<i64>,
    /// Attempts started, this one included.
    pub attempts: i64,
    /// When this attempt started (the claim's clock, epoch ms).
    pub started_at: i64,
    /// The key the claim counted it under (its own or the derived one).
    pub limit_key: Option<String>,
    /// Why the row cannot be run as stored (a column that is not UTF-8,
    /// shown escaped above): the dispatcher makes it `dead` with this as
    /// `last_error` instead of running it.
    pub undecodable: Option<String>,
    /// The jobs it waited for (docs/reference.md, "Flows").
    pub parents: Vec<i64>,
    /// The batch it is the callback of.
    pub callback_for: Option<String>,
    /// How many times its handler put it off so far.
    pub snoozes: i64,
    /// What its flow hands it, as JSON text: `{"parents": [outcome, …]}`
    /// (see [`crate::store::ParentOutcome`]) or, for a batch's callback,
    /// `{"batch": counts}` ([`crate::store::BatchCounts`]); None outside a
    /// flow.
    pub inputs: Option<String>,
}

impl Claimed {
    /// The attempt limit in force: the job's own, else the configured default.
    pub fn effective_max_attempts(&self, default: u32) -> i64 {
        self.max_attempts.unwrap_or(i64::from(default))
    }
}

/// A job to insert. Everything but `kind` has the schema's default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewJob {
    /// Which handler runs it.
    pub kind: String,
    /// The kind's arguments: JSON text of an object.
    #[serde(default = "empty_object", deserialize_with = "payload_text")]
    pub payload: String,
    /// Named queue.
    #[serde(default = "default_queue")]
    pub queue: String,
    /// Higher runs first within a queue.
    #[serde(default)]
    pub priority: i64,
    /// Not before this time (epoch ms); None: now.
    #[serde(default)]
    pub run_at: Option<i64>,
    /// None: the configured default.
    #[serde(default)]
    pub max_attempts: Option<i64>,
    /// None: the kind's default.
    #[serde(default)]
    pub timeout_ms: Option<i64>,
    /// De-duplication key.
    #[serde(default)]
    pub unique_key: Option<String>,
    /// The key its `[keys.*]` limits apply to; None: derived, if the kind
    /// has a derived key.
    #[serde(default)]
    pub limit_key: Option<String>,
    /// The jobs it waits for (docs/reference.md, "Flows"); empty: none.
    #[serde(default)]
    pub parents: Vec<i64>,
    /// Runs once its parents have ended, whatever their outcome.
    #[serde(default)]
    pub run_always: bool,
    /// The batch it belongs to.
    #[serde(default)]
    pub batch: Option<String>,
    /// The batch it is the callback of: it waits for the batch's jobs,
    /// and inserting it seals the batch.
    #[serde(default)]
    pub callback_for: Option<String>,
    /// Its sequence: jobs sharing one run one at a time, in id order.
    #[serde(default)]
    pub sequence: Option<String>,
}

/// The pool that runs a job, decided by its kind alone so that a claim can
/// ask for one pool's jobs (docs/reference.md): CPU kinds run in the worker
/// processes, every other kind (unknown ones too, which fail on the first
/// claim) on the IO threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pool {
    /// The IO thread pool (`pool.threads`).
    Io,
    /// The CPU worker processes (`cpu.workers`).
    Cpu,
}

/// The catalogue of the kinds this build runs, each with the pool it runs
/// on: the one list the others come from. Config checks cron kinds against
/// it, `jobd enqueue` its kind, the dispatcher picks a pool by it, and both
/// stores build the claim's "runs on the CPU pool" test from it. The
/// migrations, which are history and never change, spell that test too
/// (their ready index); tests on both backends hold the spellings together,
/// so a new CPU kind fails them until a migration rebuilds the index.
pub const KINDS: [(&str, Pool); 7] = [
    ("email", Pool::Io),
    ("http", Pool::Io),
    ("file", Pool::Io),
    ("noop", Pool::Io),
    ("checksum", Pool::Cpu),
    ("compress", Pool::Cpu),
    ("exec", Pool::Cpu),
];

/// The names of [`KINDS`], in its order: what `jobd enqueue`, a cron
/// entry and the kinds' "unknown kind" answer check a kind against.
pub const KIND_NAMES: [&str; KINDS.len()] = {
    let mut names = [""; KINDS.len()];
    let mut i = 0;
    while i < KINDS.len() {
        names[i] = KINDS[i].0;
        i += 1;
    }
    names
};

/// Whether `name` can name an `exec` handler: a plain file name in the
/// handlers folder (letters, digits, `_` and `-`), never a path. What a
/// job's payload and a config's `[exec.handlers.NAME]` are both held to.
pub fn is_handler_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

const fn cpu_kind_count() -> usize {
    let (mut n, mut i) = (0, 0);
    while i < KINDS.len() {
        if matches!(KINDS[i].1, Pool::Cpu) {
            n += 1;
        }
        i += 1;
    }
    n
}

/// The kinds of [`KINDS`] that run on the CPU pool, in its order.
pub const CPU_KINDS: [&str; cpu_kind_count()] = {
    let mut names = [""; cpu_kind_count()];
    let (mut n, mut i) = (0, 0);
    while i < KINDS.len() {
        if matches!(KINDS[i].1, Pool::Cpu) {
            names[n] = KINDS[i].0;
            n += 1;
        }
        i += 1;
    }
    names
};

impl Pool {
    /// Both pools, in the order a claim serves them: the scarce CPU slots
    /// first.
    pub const ALL: [Pool; 2] = [Pool::Cpu, Pool::Io];

    /// The pool that runs `kind`.
    pub fn of_kind(kind: &str) -> Pool {
        if CPU_KINDS.contains(&kind) {
            Pool::Cpu
        } else {
            Pool::Io
        }
    }

    /// The pool's name in log lines and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Pool::Io => "io",
            Pool::Cpu => "cpu",
        }
    }
}

/// The queue a job goes to when none is named.
pub const DEFAULT_QUEUE: &str = "default";

fn default_queue() -> String {
    DEFAULT_QUEUE.to_string()
}

fn empty_object() -> String {
    "{}".to_string()
}

/// Accepts a payload given as a JSON object and keeps it as compact text, so
/// bulk import stores exactly what the line said without a second parse.
fn payload_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let raw: Box<serde_json::value::RawValue> = Deserialize::deserialize(d)?;
    let text = raw.get();
    if !text.starts_with('{') {
        return Err(serde::de::Error::custom(format!(
            "payload must be a JSON object, got {}",
            json_type_name(text)
        )));
    }
    Ok(text.to_string())
}

/// A short name for the JSON type of `text`, for error messages.
pub fn json_type_name(text: &str) -> &'static str {
    match text.trim_start().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't') | Some(b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

impl NewJob {
    /// A job of `kind` with an empty payload and every default.
    pub fn new(kind: impl Into<String>) -> NewJob {
        NewJob {
            kind: kind.into(),
            payload: empty_object(),
            queue: default_queue(),
            priority: 0,
            run_at: None,
            max_attempts: None,
            timeout_ms: None,
            unique_key: None,
            limit_key: None,
            parents: Vec::new(),
            run_always: false,
            batch: None,
            callback_for: None,
            sequence: None,
        }
    }

    /// Checks what the database's CHECK rules would reject, so the CLI can
    /// name the field before touching the database.
    pub fn validate(&self) -> Result<(), String> {
        if self.kind.is_empty() {
            return Err("kind must not be empty".into());
        }
        if self.queue.is_empty() {
            return Err("queue must not be empty".into());
        }
        // What the database would refuse at insert, said here by field, so
        // that a bulk import refuses the file before writing any of it.
        for (field, value) in [
            ("batch", &self.batch),
            ("callback_for", &self.callback_for),
            ("sequence", &self.sequence),
        ] {
            if value.as_deref() == Some("") {
                return Err(format!("{field} must not be empty (leave it out for none)"));
            }
        }
        if let Some(batch) = &self.callback_for {
            if !self.parents.is_empty() {
                return Err(format!(
                    "the callback of batch {batch:?} takes no parents (it runs once the batch has ended)"
                ));
            }
            if self.batch.as_ref() == Some(batch) {
                return Err(format!(
                    "the callback of batch {batch:?} cannot be a member of it"
                ));
            }
        }
        for (field, value) in [
            ("kind", Some(&self.kind)),
            ("queue", Some(&self.queue)),
            ("unique_key", self.unique_key.as_ref()),
            ("limit_key", self.limit_key.as_ref()),
            ("batch", self.batch.as_ref()),
            ("callback_for", self.callback_for.as_ref()),
            ("sequence", self.sequence.as_ref()),
        ] {
            if value.is_some_and(|v| v.contains('\0')) {
                return Err(format!(
                    "{field} contains a NUL character, which cannot be stored"
                ));
            }
        }
        match serde_json::from_str::<serde_json::Value>(&self.payload) {
            Ok(serde_json::Value::Object(ref fields)) if has_nul(fields) => {
                return Err(
                    "payload contains a NUL character (\\u0000), which PostgreSQL cannot store"
                        .into(),
                )
            }
            Ok(serde_json::Value::Object(_)) => {}
            Ok(_) => {
                return Err(format!(
                    "payload must be a JSON object, got {}",
                    json_type_name(&self.payload)
                ))
            }
            Err(e) => return Err(format!("payload is not valid JSON: {e}")),
        }
        if let Some(n) = self.max_attempts {
            if n < 1 {
                return Err(format!("max_attempts must be at least 1 (got {n})"));
            }
        }
        if let Some(n) = self.timeout_ms {
            if n < 1 {
                return Err(format!("timeout_ms must be at least 1 (got {n})"));
            }
        }
        if let Some(key) = &self.limit_key {
            if key.is_empty() {
                return Err("limit_key must not be empty (leave it out for none)".into());
            }
            if key.len() > crate::keys::MAX_KEY_BYTES {
                return Err(format!(
                    "limit_key is {} bytes, more than {}",
                    key.len(),
                    crate::keys::MAX_KEY_BYTES
                ));
            }
            if key.starts_with(crate::keys::RESERVED_PREFIX) {
                return Err(format!(
                    "limit_key {key:?} starts with {:?}, which jobd keeps for its own keys",
                    crate::keys::RESERVED_PREFIX
                ));
            }
        }
        Ok(())
    }
}

/// Whether a JSON object holds a NUL character in a key or a string.
fn has_nul(fields: &serde_json::Map<String, serde_json::Value>) -> bool {
    fn value(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::String(s) => s.contains('\0'),
            serde_json::Value::Array(items) => items.iter().any(value),
            serde_json::Value::Object(fields) => has_nul(fields),
            _ => false,
        }
    }
    fields.iter().any(|(k, v)| k.contains('\0') || value(v))
}

/// What one attempt ended in, as written to `job_runs.outcome`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunOutcome {
    /// The job did its work.
    Succeeded,
    /// A transient error; the job was queued again.
    Retry,
    /// A permanent error, or no attempts left.
    Dead,
    /// The deadline passed.
    Timeout,
    /// The lease ran out or the holder died; another daemon took it back.
    Rescued,
    /// The daemon shut down before it finished; the attempt does not count.
    Interrupted,
    /// An operator cancelled it while it ran.
    Cancelled,
    /// Its handler asked to run again later; the attempt does not count.
    Snoozed,
}

impl RunOutcome {
    /// Every outcome.
    pub const ALL: [RunOutcome; 8] = [
        RunOutcome::Succeeded,
        RunOutcome::Retry,
        RunOutcome::Dead,
        RunOutcome::Timeout,
        RunOutcome::Rescued,
        RunOutcome::Interrupted,
        RunOutcome::Cancelled,
        RunOutcome::Snoozed,
    ];

    /// The name stored in `job_runs.outcome`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Succeeded => "succeeded",
            RunOutcome::Retry => "retry",
            RunOutcome::Dead => "dead",
            RunOutcome::Timeout => "timeout",
            RunOutcome::Rescued => "rescued",
            RunOutcome::Interrupted => "interrupted",
            RunOutcome::Cancelled => "cancelled",
            RunOutcome::Snoozed => "snoozed",
        }
    }
}

impl fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunOutcome {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunOutcome::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| format!("unknown run outcome {s:?}"))
    }
}

/// Where a running job goes when its attempt is written.
#[derive(Clone, Debug, PartialEq)]
pub enum Transition {
    /// → succeeded, with the job's result (JSON text).
    Succeed {
        /// JSON text, or None when the kind produced nothing.
        result: Option<String>,
    },
    /// → queued at `run_at`; the attempt counts.
    Requeue {
        /// When to try again (epoch ms).
        run_at: i64,
    },
    /// → queued now; the attempt does not count (`attempts - 1`).
    Release,
    /// → queued at `run_at`; the attempt does not count, the job's
    /// `snoozes` does.
    Snooze {
        /// When to run again (epoch ms).
        run_at: i64,
    },
    /// → dead.
    Dead,
    /// → cancelled.
    Cancel,
}

/// The outcome of one attempt, fenced by worker and attempt number: the store
/// applies it only while the job is still `running` under that worker and
/// that attempt, so a late writer changes nothing.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// The job.
    pub id: i64,
    /// The daemon that ran the attempt.
    pub worker: String,
    /// The attempt number (the job's `attempts` when it was claimed).
    pub attempt: i64,
    /// When the attempt started (epoch ms).
    pub started_at: i64,
    /// When it ended (epoch ms).
    pub finished_at: i64,
    /// What goes into `job_runs.outcome`.
    pub outcome: RunOutcome,
    /// The job's next state.
    pub transition: Transition,
    /// One readable sentence, for failures.
    pub error: Option<String>,
    /// A block the service asked for on the job's key, written with the
    /// outcome.
    pub block: Option<KeyBlock>,
}

/// A remote service's "slow down" (an HTTP 429 or 503): no job of `key`
/// starts on any daemon until the block ends.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyBlock {
    /// The key to close.
    pub key: String,
    /// Until when, as the service said (`Retry-After`, epoch ms); None: a
    /// backoff from 1 s that doubles while the key keeps being blocked, up
    /// to 5 minutes.
    pub until: Option<i64>,
    /// The status the service answered.
    pub status: u16,
}

/// Who ran an attempt and when: the common part of every [`Completion`].
#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    /// The job.
    pub id: i64,
    /// The daemon that ran it.
    pub worker: String,
    /// The attempt number.
    pub attempt: i64,
    /// When it started (epoch ms).
    pub started_at: i64,
    /// When it ended (epoch ms).
    pub finished_at: i64,
}

impl Attempt {
    /// Attempt `attempt` of job `id` by `worker`, from `started_at` to
    /// `finished_at`. The end is never put before the start: the wall clock
    /// may step back while a job runs, and a negative duration helps nobody.
    pub fn new(id: i64, worker: &str, attempt: i64, started_at: i64, finished_at: i64) -> Attempt {
        Attempt {
            id,
            worker: worker.to_string(),
            attempt,
            started_at,
            finished_at: finished_at.max(started_at),
        }
    }

    fn complete(
        self,
        outcome: RunOutcome,
        transition: Transition,
        error: Option<String>,
    ) -> Completion {
        let transition = match transition {
            Transition::Succeed { result } => Transition::Succeed {
                result: result.map(storable_json),
            },
            other => other,
        };
        let error = error.map(storable);
        Completion {
            id: self.id,
            worker: self.worker,
            attempt: self.attempt,
            started_at: self.started_at,
            finished_at: self.finished_at,
            outcome,
            transition,
            error,
            block: None,
        }
    }

    /// The job did its work.
    pub fn succeeded(self, result: Option<String>) -> Completion {
        self.complete(RunOutcome::Succeeded, Transition::Succeed { result }, None)
    }

    /// A transient error with attempts left: queued again at `run_at`.
    pub fn retry(self, error: String, run_at: i64) -> Completion {
        self.complete(
            RunOutcome::Retry,
            Transition::Requeue { run_at },
            Some(error),
        )
    }

    /// A permanent error, or a transient one with no attempts left.
    pub fn dead(self, error: String) -> Completion {
        self.complete(RunOutcome::Dead, Transition::Dead, Some(error))
    }

    /// The deadline passed: queued again at `run_at`, or dead when `run_at`
    /// is None (no attempts left).
    pub fn timed_out(self, error: String, run_at: Option<i64>) -> Completion {
        let transition = match run_at {
            Some(run_at) => Transition::Requeue { run_at },
            None => Transition::Dead,
        };
        self.complete(RunOutcome::Timeout, transition, Some(error))
    }

    /// An operator cancelled the running job.
    pub fn cancelled(self) -> Completion {
        self.complete(
            RunOutcome::Cancelled,
            Transition::Cancel,
            Some("cancelled by an operator while running".to_string()),
        )
    }

    /// Its handler asked to run again at `run_at`: back to queued, the
    /// attempt not counted.
    pub fn snoozed(self, run_at: i64, message: String) -> Completion {
        self.complete(
            RunOutcome::Snoozed,
            Transition::Snooze { run_at },
            Some(message),
        )
    }

    /// Shutdown ran out of grace: back to queued, the attempt not counted.
    pub fn interrupted(self) -> Completion {
        self.complete(
            RunOutcome::Interrupted,
            Transition::Release,
            Some("interrupted by daemon shutdown; will run again".to_string()),
        )
    }
}

/// Text as both backends store it: PostgreSQL's `text` and `jsonb` cannot
/// hold the character NUL (a response body or a handler's stderr may, and
/// one refused outcome failed its whole batch, again and again), so it
/// becomes U+FFFD, on SQLite too, so that both keep the same.
pub fn storable(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    }
}

/// JSON text whose strings hold no NUL (written `\u0000`), as
/// [`storable`]: the rare result that has one is parsed, mended and
/// written again; any other is left as it is.
pub fn storable_json(json: String) -> String {
    fn mend(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::String(s) if s.contains('\0') => {
                *s = storable(std::mem::take(s));
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(mend),
            serde_json::Value::Object(fields) => {
                for (key, mut item) in std::mem::take(fields) {
                    mend(&mut item);
                    fields.insert(storable(key), item);
                }
            }
            _ => {}
        }
    }
    let json = storable(json);
    if !json.contains("\\u0000") {
        return json;
    }
    match serde_json::from_str::<serde_json::Value>(&json) {
        Ok(mut value) => {
            mend(&mut value);
            serde_json::to_string(&value).unwrap_or(json)
        }
        Err(_) => json,
    }
}

/// The current time as epoch milliseconds.
pub fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// A warm handler process (docs/reference.md, "Warm handlers"), as a
/// daemon reports it in its heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HandlerProcess {
    /// The handler's name (its file in `exec.dir`).
    pub name: String,
    /// Its process id.
    pub pid: i64,
    /// Jobs it has served.
    pub jobs: u64,
    /// Its resident memory with its children's, in bytes, when the
    /// heartbeat was written.
    pub rss_bytes: u64,
    /// When it was started (epoch ms).
    pub started_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_names() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>().unwrap(), state);
        }
        let err = "done".parse::<JobState>().unwrap_err().to_string();
        assert!(err.contains("\"done\""), "{err}");
    }

    #[test]
    fn new_job_from_a_line_keeps_the_payload_text() {
        let job: NewJob =
            serde_json::from_str(r#"{"kind":"noop","payload":{"sleep_ms": 5},"priority":3}"#)
                .unwrap();
        assert_eq!(job.payload, r#"{"sleep_ms": 5}"#);
        assert_eq!(job.priority, 3);
        assert_eq!(job.queue, "default");
        let err = serde_json::from_str::<NewJob>(r#"{"kind":"noop","payload":[1]}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("payload must be a JSON object, got an array"),
            "{err}"
        );
        let err = serde_json::from_str::<NewJob>(r#"{"kind":"noop","prio":1}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `prio`"), "{err}");
    }

    #[test]
    fn validate_names_the_field_at_fault() {
        let mut job = NewJob::new("noop");
        assert!(job.validate().is_ok());
        job.max_attempts = Some(0);
        assert!(job.validate().unwrap_err().contains("max_attempts"));
        job.max_attempts = None;
        job.timeout_ms = Some(-5);
        assert!(job.validate().unwrap_err().contains("timeout_ms"));
        job.timeout_ms = None;
        job.payload = "[]".into();
        assert!(job.validate().unwrap_err().contains("payload"));
        job.payload = "{}".into();
        job.kind = String::new();
        assert!(job.validate().unwrap_err().contains("kind"));
    }
}
