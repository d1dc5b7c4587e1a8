//! `jobd migrate`: creates or upgrades the schema; with `--from
//! sqlite:PATH` it then moves a SQLite file's queued jobs into the
//! PostgreSQL database of the config (docs/postgresql.md, "Moving queued
//! jobs from a SQLite file").
//!
//! The move is safe to interrupt and run again: PostgreSQL records each
//! moved job by source and id in the same transaction as its insert, and
//! the SQLite file marks it moved (`cancelled`, with a `last_error` naming
//! its new id) right after. A job is never queued in both databases for
//! longer than one batch, and never inserted twice.

use crate::store::{Admin, Fleet, Reads, Schedules};
use std::io::{IsTerminal, Write};
use std::path::Path;

use crate::commands::cli::MigrateArgs;
use crate::commands::open::open_or_create;
use crate::commands::output::stdout_error;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::job::{now_ms, JobState};
use crate::store::postgres::{redact_url, PgStore};
use crate::store::{Moved, OpenMode, RescueScope, SqliteStore};

/// Queued jobs per transaction pair: short writes on both databases.
const MOVE_BATCH: usize = 1_000;

/// How many refused jobs the final error names.
const NAMED_REFUSALS: usize = 5;

/// Runs `jobd migrate [--from sqlite:PATH]`.
pub fn migrate(config: &Config, args: MigrateArgs, out: &mut dyn Write) -> Result<()> {
    if args.from.is_some() && config.database.url.is_none() {
        return Err(Error::Usage(format!(
            "jobd migrate --from moves jobs into PostgreSQL, but {} names the SQLite file {} \
             (database.path); set database.url to the PostgreSQL database instead",
            config.source.display(),
            config.database.path.display()
        )));
    }
    let (store, (before, after)) = open_or_create(config)?;
    let name = store.name();
    if before == after {
        writeln!(out, "database {name} is at schema version {after}")
    } else {
        writeln!(
            out,
            "database {name} migrated from schema version {before} to {after}"
        )
    }
    .map_err(stdout_error)?;
    match (args.from, &config.database.url) {
        (Some(source), Some(url)) => move_from_sqlite(config, &source, url, out),
        _ => Ok(()),
    }
}

/// Moves the queued jobs, paused queues and cron slots of the SQLite file
/// `source` into the PostgreSQL database at `url`.
// Long: the move's steps in order (rescue, refuse a live daemon, copy jobs, pauses and slots, report), each depending on the one before.
fn move_from_sqlite(config: &Config, source: &Path, url: &str, out: &mut dyn Write) -> Result<()> {
    let mut from = SqliteStore::open(source, config.database.busy_timeout, OpenMode::Existing)?;
    let mut to = PgStore::open_current(url, config.database.busy_timeout)?;
    let target = redact_url(url);
    let max_attempts = config.retry.max_attempts;

    // Jobs held by a running daemon cannot move; those of daemons that are
    // gone go back to queued first, as a daemon's start-up would do.
    let host = crate::os::procfs::host_name();
    let rescued =
        crate::daemon::maintenance::rescue_dead_neighbours(&mut from, &host, "", max_attempts)?
            .len();
    let now = now_ms();
    let stale = crate::daemon::maintenance::stale_after(config.daemon.lease).as_millis() as i64;
    if let Some(w) = from
        .workers()?
        .into_iter()
        .find(|w| now.saturating_sub(w.heartbeat_at) < stale)
    {
        return Err(Error::Failed(format!(
            "{} is in use by the daemon {} (last heartbeat {}s ago): stop it first (its shutdown \
             puts its running jobs back to queued), then run this again",
            source.display(),
            w.id,
            now.saturating_sub(w.heartbeat_at) / 1000
        )));
    }
    let rescued = rescued
        + from
            .rescue(RescueScope::ExpiredLeases, now, max_attempts)?
            .len();
    // Read once: nothing below changes a job's state before the move.
    let counts = from.job_counts()?;
    let in_state = |wanted: JobState| -> u64 {
        counts
            .iter()
            .filter(|(_, state, _)| *state == wanted)
            .map(|(_, _, n)| n)
            .sum()
    };
    let running = in_state(JobState::Running);
    if running > 0 {
        return Err(Error::Failed(format!(
            "{running} jobs in {} are still running under the lease of a daemon that stopped \
             heartbeating; run this again once the lease (daemon.lease) has run out",
            source.display()
        )));
    }

    let paused = from.paused_queues()?;
    if !paused.is_empty() {
        to.set_paused(&paused, true, now)?;
    }
    let schedules = from.cron_rows()?;
    to.import_cron(&schedules)?;

    // The file by host and full path: the same file always has the same
    // name, so a second run skips what the first moved.
    let canonical = std::fs::canonicalize(source).map_err(|e| Error::Io {
        what: format!("cannot resolve {}", source.display()),
        source: e,
    })?;
    let source_key = format!("sqlite:{host}:{}", canonical.display());
    let total = in_state(JobState::Queued);
    let progress = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} jobs  {per_sec}  eta {eta}",
            )
            .expect("the template is valid"),
        );
        bar
    });
    let (mut moved, mut duplicates) = (0u64, 0u64);
    let mut refused: Vec<String> = Vec::new();
    let mut after = 0;
    loop {
        let jobs = from.queued_after(after, MOVE_BATCH)?;
        let Some(last) = jobs.last() else {
            break;
        };
        after = last.id;
        let outcomes = to.import_queued(&source_key, &jobs, now_ms())?;
        from.close_moved(&outcomes, &target, now_ms())
            .map_err(|e| {
                Error::Failed(format!(
                    "{e} ({} jobs are in {target} but still queued in {}: stop nothing, run this \
                 again and it marks them without moving them twice)",
                    outcomes.len(),
                    source.display()
                ))
            })?;
        for (id, outcome) in &outcomes {
            match outcome {
                Moved::To(_) => moved += 1,
                Moved::Duplicate => duplicates += 1,
                Moved::Refused(why) => refused.push(format!("job {id}: {why}")),
            }
        }
        if let Some(bar) = &progress {
            bar.inc(jobs.len() as u64);
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    writeln!(
        out,
        "moved {moved} queued jobs from {} to {target}; {duplicates} already there by unique_key; \
         {rescued} running jobs of stopped daemons put back to queued first; {} paused queues \
         and {} cron schedules carried over",
        source.display(),
        paused.len(),
        schedules.iter().filter(|r| r.last_slot.is_some()).count()
    )
    .map_err(stdout_error)?;
    if refused.is_empty() {
        return Ok(());
    }
    let more = refused.len().saturating_sub(NAMED_REFUSALS);
    let more = if more > 0 {
        format!("; and {more} more")
    } else {
        String::new()
    };
    Err(Error::Failed(format!(
        "{} jobs could not be moved and stay queued in {}: {}{more}",
        refused.len(),
        source.display(),
        refused[..refused.len().min(NAMED_REFUSALS)].join("; ")
    )))
}
