//! The commands that change things: `retry`, `cancel`, `prune`, `pause`,
//! `resume`, `migrate`, and `check-config`.

use std::io::Write;
use std::time::Duration;

use crate::commands::cli::{CancelArgs, PruneArgs, QueueNames, RetryArgs};
use crate::commands::output::stdout_error;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::job::now_ms;
use crate::store::{CancelResult, PruneCutoffs, RetryResult, Store};

/// Turns a list of per-id failures into the command's error (exit 1), after
/// the successes were printed.
fn failures(failed: Vec<String>) -> Result<()> {
    // The first few, and how many more: 50 000 unknown ids made one line
    // of 1.35 MB.
    const SHOWN: usize = 10;
    match failed.len() {
        0 => Ok(()),
        n if n <= SHOWN => Err(Error::Failed(failed.join("; "))),
        n => Err(Error::Failed(format!(
            "{}; and {} more",
            failed[..SHOWN].join("; "),
            n - SHOWN
        ))),
    }
}

/// Runs `jobd retry`.
pub fn retry(store: &mut dyn Store, args: RetryArgs, out: &mut dyn Write) -> Result<()> {
    let now = now_ms();
    if args.dead {
        let done = store.retry_dead(args.queue.as_deref(), now)?;
        let scope = args
            .queue
            .map(|q| format!(" of queue {}", crate::fmt::terminal_safe(&q)))
            .unwrap_or_default();
        writeln!(out, "queued {} dead jobs{scope} again", done.queued).map_err(stdout_error)?;
        if done.skipped_unique > 0 {
            writeln!(
                out,
                "left {} dead: another queued or running job holds their unique_key",
                done.skipped_unique
            )
            .map_err(stdout_error)?;
        }
        return Ok(());
    }
    let results = store.retry(&args.ids, now)?;
    let mut failed = Vec::new();
    for (id, result) in args.ids.iter().zip(results) {
        match result {
            RetryResult::Queued => writeln!(out, "job {id} queued again").map_err(stdout_error)?,
            RetryResult::WrongState(state) => failed.push(format!(
                "job {id} is {state}; only dead or cancelled jobs can be retried"
            )),
            RetryResult::UniqueKeyTaken(other) => failed.push(format!(
                "job {id} cannot be retried: job {other} holds its unique_key"
            )),
            RetryResult::ParentEnded(parent, state) => failed.push(format!(
                "job {id} cannot be retried: it depends on job {parent}, which is {state}; retry job {parent}"
            )),
            RetryResult::NotFound => failed.push(format!("job {id} does not exist")),
        }
    }
    failures(failed)
}

/// Runs `jobd cancel`.
pub fn cancel(store: &mut dyn Store, args: CancelArgs, out: &mut dyn Write) -> Result<()> {
    let results = store.cancel(&args.ids, now_ms())?;
    let mut failed = Vec::new();
    for (id, result) in args.ids.iter().zip(results) {
        match result {
            CancelResult::Cancelled => writeln!(out, "job {id} cancelled").map_err(stdout_error)?,
            CancelResult::Requested => writeln!(
                out,
                "job {id} is running; cancel requested, its daemon will stop it"
            )
            .map_err(stdout_error)?,
            CancelResult::AlreadyFinal(state) => {
                failed.push(format!("job {id} already {state}; nothing to cancel"))
            }
            CancelResult::NotFound => failed.push(format!("job {id} does not exist")),
        }
    }
    failures(failed)
}

/// Runs `jobd prune`.
pub fn prune(
    config: &Config,
    store: &mut dyn Store,
    args: PruneArgs,
    out: &mut dyn Write,
) -> Result<()> {
    let now = now_ms();
    let cutoffs = match args.older_than {
        Some(age) => {
            // The age is at most 100 years (`--older-than`'s parser).
            let cutoff = Some(now.saturating_sub(age.as_millis() as i64));
            PruneCutoffs {
                succeeded: cutoff,
                dead: cutoff,
                cancelled: cutoff,
            }
        }
        None => crate::daemon::maintenance::retention_cutoffs(config, now),
    };
    // Batches back to back: an operator asked for it now.
    let pruned = crate::daemon::maintenance::prune_all(store, &cutoffs, Duration::ZERO)?;
    let (jobs, runs) = (pruned.jobs, pruned.runs);
    writeln!(out, "pruned {jobs} jobs and {runs} attempt records").map_err(stdout_error)
}

/// Runs `jobd pause` (`paused = true`) or `jobd resume`.
pub fn set_paused(
    config: &Config,
    store: &mut dyn Store,
    args: QueueNames,
    paused: bool,
    out: &mut dyn Write,
) -> Result<()> {
    if let Some(q) = args.queues.iter().find(|q| q.trim().is_empty()) {
        return Err(Error::Usage(format!("queue name {q:?} is empty")));
    }
    // A paused queue stays on the dashboard and in stats until resumed: a
    // typo would leave a phantom one there and the real queue running. A
    // resume is held to the same names (it wrote a row for any name, and
    // said "resumed" of a queue that never was).
    if !args.create {
        let already = store.paused_queues()?;
        for q in &args.queues {
            let named = config.daemon.queues.contains(q)
                || config.queues.contains_key(q)
                || config.cron.values().any(|c| &c.queue == q);
            let known = named
                || already.contains(q)
                || !store
                    .list(&crate::store::ListFilter {
                        queue: Some(q.clone()),
                        limit: 1,
                        ..Default::default()
                    })?
                    .is_empty();
            if !known {
                let q = crate::fmt::terminal_safe(q);
                return Err(Error::Usage(if paused {
                    format!("queue {q} has no jobs and the config does not name it; check the name, or pass --create to pause it before its first job")
                } else {
                    format!("queue {q} is not paused, has no jobs and the config does not name it; check the name")
                }));
            }
        }
    }
    store.set_paused(&args.queues, paused, now_ms())?;
    let verb = if paused { "paused" } else { "resumed" };
    for q in &args.queues {
        writeln!(out, "{verb} queue {}", crate::fmt::terminal_safe(q)).map_err(stdout_error)?;
    }
    Ok(())
}

/// Runs `jobd check-config`.
pub fn check_config(config: &Config, out: &mut dyn Write) -> Result<()> {
    if config.source.exists() {
        writeln!(
            out,
            "# {} is valid; effective values:",
            config.source.display()
        )
    } else {
        writeln!(
            out,
            "# {} does not exist: the built-in defaults apply; effective values:",
            config.source.display()
        )
    }
    .map_err(stdout_error)?;
    for (key, detail) in config.warnings() {
        writeln!(out, "# warning: {key} {detail}").map_err(stdout_error)?;
    }
    // A cron entry's payload is shown like a job's: credentials redacted.
    let redaction = crate::kinds::Redaction::new(&config.http);
    let mut shown = config.clone();
    for entry in shown.cron.values_mut() {
        let text = redaction.payload(&entry.kind, &entry.payload.to_string());
        if let Ok(value) = serde_json::from_str(&text) {
            entry.payload = value;
        }
    }
    write!(out, "{}", shown.to_toml()).map_err(stdout_error)
}
