//! The command line (docs/reference.md): clap definitions only. What each command does
//! lives in [`crate::commands`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::job::JobState;

/// jobd: a background job worker daemon on a SQLite queue.
#[derive(Debug, Parser)]
#[command(name = "jobd", version, about, max_term_width = 100)]
pub struct Cli {
    /// The config file [default: ./config.toml].
    #[arg(long, global = true, value_name = "PATH", env = "JOBD_CONFIG")]
    pub config: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (what systemd starts).
    Run,
    /// Add a job (or many with --file) and print its id.
    Enqueue(Box<EnqueueArgs>),
    /// Show a table of jobs, newest first.
    List(ListArgs),
    /// Show one job with its payload, result and attempt history.
    Show(ShowArgs),
    /// Per-queue counts, lag and durations, and the live daemons.
    Stats(StatsArgs),
    /// Follow attempts as they finish, one line each.
    Tail(TailArgs),
    /// Put dead or cancelled jobs back to queued.
    Retry(RetryArgs),
    /// Cancel jobs: queued ones at once, running ones by request.
    Cancel(CancelArgs),
    /// Delete finished jobs older than the retention (what the daemon does in the background).
    Prune(PruneArgs),
    /// Stop claiming from queues (running jobs finish; enqueueing still works).
    Pause(QueueNames),
    /// Start claiming from paused queues again.
    Resume(QueueNames),
    /// The periodic schedules: expression, next time, last job and its state.
    Cron,
    /// The job keys running, blocked or held by their limits, on every daemon.
    Keys(KeysArgs),
    /// A batch's progress: its jobs by state, its seal and its callback.
    Batch(BatchArgs),
    /// The warm handler processes of every daemon: name, pid, jobs served, memory, start.
    Handlers(HandlersArgs),
    /// Create or upgrade the database schema and exit; with --from, then move the queued jobs of a SQLite file into the PostgreSQL database of the config.
    Migrate(MigrateArgs),
    /// Load and validate the config, print the effective values.
    CheckConfig,
}

/// `jobd enqueue`
#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// The job kind: email, http, file, noop, checksum, compress or exec.
    #[arg(required_unless_present = "file")]
    pub kind: Option<String>,

    /// The payload, a JSON object; `-` reads it from stdin [default: {}].
    pub payload: Option<String>,

    /// Import many jobs from a JSON-lines file (`-` for stdin), one object per line:
    /// {"kind": "noop", "payload": {...}, "queue": "...", "priority": 0, "run_at": MS,
    /// "max_attempts": N, "timeout_ms": N, "unique_key": "...", "limit_key": "..."}.
    #[arg(long, value_name = "JSONL", conflicts_with_all = ["kind", "payload", "queue", "priority", "delay", "at", "max_attempts", "timeout", "unique_key", "key", "wait"])]
    pub file: Option<PathBuf>,

    /// The queue.
    #[arg(long, short)]
    pub queue: Option<String>,

    /// Higher runs first within a queue.
    #[arg(long, short, allow_negative_numbers = true)]
    pub priority: Option<i64>,

    /// Run no sooner than this from now (e.g. 30s, 5m, 2h; at most 100 years).
    #[arg(long, value_parser = parse_delay, conflicts_with = "at", allow_hyphen_values = true)]
    pub delay: Option<Duration>,

    /// Run no sooner than this time (RFC 3339, e.g. 2026-12-01T09:00:00Z).
    #[arg(long, value_parser = parse_time)]
    pub at: Option<i64>,

    /// Attempts before the job is dead [default: retry.max_attempts].
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    pub max_attempts: Option<i64>,

    /// The job's deadline (e.g. 30s, at least 1ms) [default: the kind's, from the timeouts section].
    #[arg(long, value_parser = parse_timeout, allow_hyphen_values = true)]
    pub timeout: Option<Duration>,

    /// At most one queued or running job with this key; a duplicate prints the existing id.
    #[arg(long)]
    pub unique_key: Option<String>,

    /// The key its [keys.*] limits apply to (e.g. customer:42) [default: derived from the kind: an http job's host].
    #[arg(long)]
    pub key: Option<String>,

    /// Wait for these jobs to succeed before running (ids, comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "ID[,ID…]")]
    pub after: Vec<i64>,

    /// With --after: run once those jobs have ended, whatever their outcome.
    #[arg(long, requires = "after")]
    pub always: bool,

    /// Add the job to this batch (refused once the batch is sealed).
    #[arg(long, value_name = "NAME")]
    pub batch: Option<String>,

    /// Make the job this batch's callback: it runs once every job of the
    /// batch has ended, and adding it seals the batch.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["after", "batch"])]
    pub batch_callback: Option<String>,

    /// Run it after every earlier job of this sequence, one at a time.
    #[arg(long, value_name = "KEY")]
    pub sequence: Option<String>,

    /// Follow the job to its end; exit 0 only if it succeeded.
    #[arg(long)]
    pub wait: bool,
}

/// `jobd list`
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only jobs in this state.
    #[arg(long, value_parser = parse_state)]
    pub state: Option<JobState>,
    /// Only jobs of this queue.
    #[arg(long, short)]
    pub queue: Option<String>,
    /// Only jobs of this kind.
    #[arg(long, short)]
    pub kind: Option<String>,
    /// At most this many.
    #[arg(long, short = 'n', default_value_t = 50)]
    pub limit: usize,
    /// One JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `jobd show`
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The job's id.
    pub id: i64,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `jobd stats`
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Redraw every second until interrupted.
    #[arg(long)]
    pub watch: bool,
}

/// `jobd keys`
#[derive(Debug, Args)]
pub struct KeysArgs {
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `jobd batch`
#[derive(Debug, Args)]
pub struct BatchArgs {
    /// The batch's name.
    pub name: String,
    /// Seal it first: no job joins it after this (a batch without a callback).
    #[arg(long)]
    pub seal: bool,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `jobd handlers`
#[derive(Debug, Args)]
pub struct HandlersArgs {
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `jobd tail`
#[derive(Debug, Args)]
pub struct TailArgs {
    /// Only attempts of this queue.
    #[arg(long, short)]
    pub queue: Option<String>,
    /// Only attempts of this kind.
    #[arg(long, short)]
    pub kind: Option<String>,
}

/// `jobd retry`
#[derive(Debug, Args)]
pub struct RetryArgs {
    /// The jobs to retry.
    #[arg(required_unless_present = "dead", conflicts_with = "dead")]
    pub ids: Vec<i64>,
    /// Retry every dead job (of --queue, if given).
    #[arg(long)]
    pub dead: bool,
    /// With --dead: only this queue.
    #[arg(long, short, requires = "dead")]
    pub queue: Option<String>,
}

/// `jobd cancel`
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The jobs to cancel.
    #[arg(required = true)]
    pub ids: Vec<i64>,
}

/// `jobd prune`
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Delete finished jobs older than this (e.g. 7d) [default: the retention section].
    #[arg(long, value_parser = parse_age)]
    pub older_than: Option<Duration>,
}

/// `jobd migrate`
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Move the queued jobs (ready, scheduled and awaiting retry), paused queues and cron
    /// slots of this SQLite file into the PostgreSQL database that `database.url` names.
    /// Stop the daemons on the file first. Safe to run again: no job moves twice.
    #[arg(long, value_name = "sqlite:PATH", value_parser = parse_source)]
    pub from: Option<PathBuf>,
}

/// `jobd pause` / `jobd resume`
#[derive(Debug, Args)]
pub struct QueueNames {
    /// The queues.
    #[arg(required = true)]
    pub queues: Vec<String>,
    /// pause: also a queue that has no jobs yet and that the config does
    /// not name (without it, such a name is taken for a typo).
    #[arg(long)]
    pub create: bool,
}

fn parse_source(s: &str) -> Result<PathBuf, String> {
    match s.strip_prefix("sqlite:") {
        Some(path) if !path.is_empty() => Ok(PathBuf::from(path)),
        _ => Err("expected sqlite:PATH, the SQLite file to move queued jobs from".into()),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::config::duration_str::parse_unbounded(s)
}

/// The longest `--delay`: far beyond any real schedule, and far from the
/// millisecond arithmetic's limit (an unbounded delay overflowed `run_at`
/// into the past, so the job ran at once).
pub const MAX_DELAY: Duration = crate::config::MAX_DURATION;

fn parse_delay(s: &str) -> Result<Duration, String> {
    if s.trim_start().starts_with('-') {
        return Err(
            "a delay cannot be negative: give how long from now (e.g. 5m), or a time with --at"
                .into(),
        );
    }
    let delay = parse_duration(s)?;
    if delay > MAX_DELAY {
        return Err(format!(
            "is longer than the longest delay, 100 years (got {s:?}); for a fixed time use --at"
        ));
    }
    Ok(delay)
}

/// An age to prune at: at most 100 years, like a delay. (An age past the
/// millisecond arithmetic's limit wrapped the cutoff into the future, and
/// `prune` deleted every finished job, those that had just ended too.)
fn parse_age(s: &str) -> Result<Duration, String> {
    if s.trim_start().starts_with('-') {
        return Err("an age cannot be negative (e.g. 7d)".into());
    }
    let age = parse_duration(s)?;
    if age > MAX_DELAY {
        return Err(format!("is longer than 100 years (got {s:?})"));
    }
    Ok(age)
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    if s.trim_start().starts_with('-') {
        return Err("a timeout cannot be negative (e.g. 30s)".into());
    }
    let timeout = parse_duration(s)?;
    if timeout < Duration::from_millis(1) {
        // Stored in whole milliseconds: "0s" or "250us" would silently
        // become 1 ms.
        return Err(format!("must be at least 1ms (got {s:?})"));
    }
    if timeout > MAX_DELAY {
        return Err(format!("is longer than 100 years (got {s:?})"));
    }
    Ok(timeout)
}

fn parse_time(s: &str) -> Result<i64, String> {
    let t = chrono::DateTime::parse_from_rfc3339(s)
        .map_err(|e| format!("must be an RFC 3339 time like 2026-12-01T09:00:00Z ({e})"))?;
    // chrono reads a leap second (23:59:60) as the next second's first
    // instant; jobd's clock, like the database's, never shows one.
    if t.timestamp_subsec_nanos() >= 1_000_000_000 {
        return Err(format!(
            "is a leap second ({s}); give the second before or after it"
        ));
    }
    Ok(t.timestamp_millis())
}

fn parse_state(s: &str) -> Result<JobState, String> {
    s.parse()
        .map_err(|e: crate::job::UnknownState| e.to_string())
}
