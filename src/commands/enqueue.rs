//! `jobd enqueue`: one job from the arguments, or many from a JSON-lines file.
//!
//! A bulk import reads and checks every line before it writes anything
//! (what the database would refuse too: parents that do not exist, sealed
//! batches), so a bad line 90 000 does not leave 89 999 jobs behind; then
//! it inserts in
//! short transactions of [`BULK_BATCH`] rows, so a running daemon and other
//! clients keep getting the write lock between batches.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::time::{Duration, Instant};

use crate::commands::cli::EnqueueArgs;
use crate::commands::open::open;
use crate::commands::output::stdout_error;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::job::KIND_NAMES;
use crate::job::{now_ms, JobState, NewJob};
use crate::store::{Enqueued, Store};

/// Rows per bulk transaction: about 4 ms of writing, short enough that a
/// client with a one-second busy timeout never waits long.
const BULK_BATCH: usize = 2_000;

/// How often `--wait` looks at the job.
const WAIT_POLL: Duration = Duration::from_millis(50);

/// How many bad lines a failed import lists before it stops counting.
const BAD_LINES_SHOWN: usize = 5;

/// Runs `jobd enqueue`.
pub fn enqueue(config: &Config, args: EnqueueArgs, out: &mut dyn Write) -> Result<()> {
    if let Some(path) = &args.file {
        return bulk(config, path, out);
    }
    let kind = args.kind.clone().unwrap_or_default();
    let payload = match args.payload.as_deref() {
        None => "{}".to_string(),
        Some("-") => {
            // No more than a payload may be: an endless stdin (`/dev/zero`)
            // grew until the allocation failed.
            let limit = config.limits.max_payload_bytes;
            let mut text = String::new();
            std::io::stdin()
                .take(limit + 1)
                .read_to_string(&mut text)
                .map_err(|source| Error::Io {
                    what: "cannot read the payload from stdin".into(),
                    source,
                })?;
            if text.len() as u64 > limit {
                return Err(Error::Failed(format!(
                    "the payload on stdin is larger than limits.max_payload_bytes ({limit} bytes)"
                )));
            }
            text
        }
        Some(text) => text.to_string(),
    };
    let now = now_ms();
    let job = NewJob {
        kind,
        payload: payload.trim().to_string(),
        queue: args
            .queue
            .clone()
            .unwrap_or_else(|| crate::job::DEFAULT_QUEUE.to_string()),
        priority: args.priority.unwrap_or(0),
        run_at: args
            .at
            // The delay is bounded by the CLI (cli::MAX_DELAY), far below overflow.
            .or_else(|| args.delay.map(|d| now.saturating_add(d.as_millis() as i64))),
        max_attempts: args.max_attempts,
        timeout_ms: args.timeout.map(|d| d.as_millis().max(1) as i64),
        unique_key: args.unique_key.clone(),
        limit_key: args.key.clone(),
        parents: args.after.clone(),
        run_always: args.always,
        batch: args.batch.clone(),
        callback_for: args.batch_callback.clone(),
        sequence: args.sequence.clone(),
    };
    check(config, &job).map_err(Error::Usage)?;
    let mut store = open(config)?;
    // The database refuses a missing parent too (parents_exist); asking
    // first names it.
    for &parent in &job.parents {
        if store.job(parent)?.is_none() {
            return Err(Error::Usage(format!(
                "--after: job {parent} does not exist"
            )));
        }
    }
    let result = store.enqueue(std::slice::from_ref(&job), now)?[0];
    writeln!(out, "{}", result.id()).map_err(stdout_error)?;
    out.flush().map_err(stdout_error)?;
    if let Enqueued::Duplicate(id) = result {
        eprintln!(
            "job {id} with unique_key {:?} is already queued or running; nothing was enqueued",
            job.unique_key.as_deref().unwrap_or_default()
        );
    }
    if args.wait {
        return wait(store.as_mut(), result.id(), out);
    }
    Ok(())
}

/// What the CLI checks before writing, beyond the database's own rules: the
/// kind exists and the payload fits the limit.
fn check(config: &Config, job: &NewJob) -> Result<(), String> {
    job.validate()?;
    if !KIND_NAMES.contains(&job.kind.as_str()) {
        return Err(format!(
            "unknown kind {:?} (expected one of {})",
            job.kind,
            KIND_NAMES.join(", ")
        ));
    }
    if job.payload.len() as u64 > config.limits.max_payload_bytes {
        return Err(format!(
            "payload is {} bytes, more than limits.max_payload_bytes ({})",
            job.payload.len(),
            config.limits.max_payload_bytes
        ));
    }
    Ok(())
}

/// What a bulk line may hold beyond its payload (its other fields).
const MAX_LINE_EXTRA: u64 = 1 << 20;

/// The next line of `reader` without its line end, read no further than
/// `limit` + 1 bytes (a longer line comes back that long, for the caller
/// to refuse); None at the end.
fn read_line(reader: &mut dyn BufRead, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let read = reader.take(limit + 1).read_until(b'\n', &mut line)?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    Ok(Some(line))
}

/// The bad lines of a bulk file, found in two passes (the file's own
/// checks, then the database's): how many, and the first few by line.
#[derive(Default)]
struct BadLines {
    found: Vec<(usize, String)>,
    count: usize,
}

impl BadLines {
    fn add(&mut self, line: usize, fault: String) {
        self.count += 1;
        // The first few by line, whichever pass found them (a cap on how
        // many were kept dropped the database's finds when the file's own
        // had filled it, though their lines came first).
        self.found.push((line, fault));
        if self.found.len() > BAD_LINES_SHOWN {
            self.found.sort_by_key(|(line, _)| *line);
            self.found.truncate(BAD_LINES_SHOWN);
        }
    }

    /// The first few, in the file's order.
    fn shown(mut self) -> (Vec<String>, usize) {
        self.found.sort_by_key(|(line, _)| *line);
        let shown = (self.found.into_iter())
            .map(|(line, fault)| format!("line {line}: {fault}"))
            .collect();
        (shown, self.count)
    }
}

/// A line that joins, or gives a second callback to, a batch whose
/// callback an earlier line of the same file inserts (which seals it).
fn sealed_in_file(
    job: &NewJob,
    line: usize,
    sealed: &mut HashMap<String, usize>,
) -> Result<(), String> {
    if let Some(batch) = &job.batch {
        if let Some(at) = sealed.get(batch) {
            return Err(format!(
                "batch {batch:?} is sealed by its callback on line {at}: no job joins it after that"
            ));
        }
    }
    if let Some(batch) = &job.callback_for {
        if let Some(at) = sealed.insert(batch.clone(), line) {
            return Err(format!(
                "batch {batch:?} already has its callback, on line {at}"
            ));
        }
    }
    Ok(())
}

/// What only the database knows, read before anything is written: the
/// parents must exist, and a batch a line joins or gives its callback to
/// must not be sealed. (The database refused such a line at insert, after
/// the batches before it had been imported.)
fn check_against_the_database(
    store: &mut dyn Store,
    jobs: &[NewJob],
    lines: &[usize],
    bad: &mut BadLines,
) -> Result<()> {
    let mut parents: HashMap<i64, bool> = HashMap::new();
    let mut sealed: HashMap<String, bool> = HashMap::new();
    for (job, &line) in jobs.iter().zip(lines) {
        for &parent in &job.parents {
            let exists = match parents.get(&parent) {
                Some(&exists) => exists,
                None => {
                    let exists = store.job(parent)?.is_some();
                    parents.insert(parent, exists);
                    exists
                }
            };
            if !exists {
                bad.add(line, format!("parent job {parent} does not exist"));
            }
        }
        for (batch, callback) in [(&job.batch, false), (&job.callback_for, true)] {
            let Some(batch) = batch else { continue };
            let is_sealed = match sealed.get(batch) {
                Some(&s) => s,
                None => {
                    let s = store.batch(batch)?.is_some_and(|b| b.sealed);
                    sealed.insert(batch.clone(), s);
                    s
                }
            };
            if is_sealed && callback {
                bad.add(
                    line,
                    format!("batch {batch:?} already has its callback (it is sealed)"),
                );
            } else if is_sealed {
                bad.add(
                    line,
                    format!("batch {batch:?} is sealed: no job joins it any more"),
                );
            }
        }
    }
    Ok(())
}

/// Follows a job until it is final; Ok only if it succeeded.
fn wait(store: &mut dyn Store, id: i64, out: &mut dyn Write) -> Result<()> {
    loop {
        let job = store.job(id)?.ok_or_else(|| {
            Error::Failed(format!("job {id} disappeared while waiting (pruned?)"))
        })?;
        match job.state {
            JobState::Succeeded => {
                if let Some(result) = job.result {
                    writeln!(out, "{result}").map_err(stdout_error)?;
                }
                return Ok(());
            }
            JobState::Dead | JobState::Cancelled => {
                return Err(Error::Failed(format!(
                    "job {id} ended {}: {}",
                    job.state,
                    job.last_error.as_deref().unwrap_or("no error recorded")
                )))
            }
            JobState::Waiting | JobState::Queued | JobState::Running => {
                std::thread::sleep(WAIT_POLL)
            }
        }
    }
}

/// `jobd enqueue --file`: check every line, then insert in batches.
// Long: the import loop: read, check every line first, then write in batches with progress.
fn bulk(config: &Config, path: &std::path::Path, out: &mut dyn Write) -> Result<()> {
    let started = Instant::now();
    let name = path.display().to_string();
    let mut reader: Box<dyn BufRead> = if name == "-" {
        Box::new(BufReader::new(std::io::stdin()))
    } else {
        let file = std::fs::File::open(path).map_err(|source| Error::Io {
            what: format!("cannot open {name}"),
            source,
        })?;
        Box::new(BufReader::with_capacity(1 << 20, file))
    };
    let mut jobs = Vec::new();
    // The line of each job, for messages.
    let mut lines = Vec::new();
    let mut bad = BadLines::default();
    // Batches a callback in this file seals, with its line.
    let mut sealed_here: HashMap<String, usize> = HashMap::new();
    // A line holds one job: its payload and a little more. A longer one
    // (an endless `/dev/zero` has no line end) ends the reading there.
    let max_line = config
        .limits
        .max_payload_bytes
        .saturating_add(MAX_LINE_EXTRA);
    for number in 1.. {
        let Some(line) = read_line(&mut reader, max_line).map_err(|source| Error::Io {
            what: format!("cannot read {name} at line {number}"),
            source,
        })?
        else {
            break;
        };
        let Ok(line) = String::from_utf8(line) else {
            bad.add(number, "it is not UTF-8 text".into());
            continue;
        };
        if line.len() as u64 > max_line {
            return Err(Error::Failed(format!(
                "{name}: line {number} is longer than {max_line} bytes \
                 (limits.max_payload_bytes and {MAX_LINE_EXTRA} for the other fields); nothing was imported"
            )));
        }
        if line.trim().is_empty() {
            continue;
        }
        let parsed = serde_json::from_str::<NewJob>(&line)
            .map_err(|e| e.to_string())
            .and_then(|job| check(config, &job).map(|()| job))
            .and_then(|job| sealed_in_file(&job, number, &mut sealed_here).map(|()| job));
        match parsed {
            Ok(job) => {
                jobs.push(job);
                lines.push(number);
            }
            Err(e) => bad.add(number, e),
        }
    }
    let mut store = open(config)?;
    check_against_the_database(store.as_mut(), &jobs, &lines, &mut bad)?;
    if bad.count > 0 {
        let (bad, bad_count) = bad.shown();
        let more = bad_count.saturating_sub(bad.len());
        let more = if more > 0 {
            format!("; and {more} more")
        } else {
            String::new()
        };
        return Err(Error::Failed(format!(
            "{name} has {bad_count} bad line(s), nothing was imported: {}{more}",
            bad.join("; ")
        )));
    }

    let progress = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(jobs.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} jobs  {per_sec}  eta {eta}",
            )
            .expect("the template is valid"),
        );
        Some(bar)
    } else {
        None
    };
    let (mut inserted, mut duplicates) = (0u64, 0u64);
    // Ctrl-C or SIGTERM from here on ends the import between batches, said
    // with what was imported: killed mid-way, it left batches committed
    // without a word, and running it again imported them twice.
    let interrupted = crate::os::signals::interrupt_flag().map_err(|source| Error::Io {
        what: "cannot watch for Ctrl-C".into(),
        source,
    })?;
    for (batch, numbers) in jobs.chunks(BULK_BATCH).zip(lines.chunks(BULK_BATCH)) {
        if interrupted.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(bar) = &progress {
                bar.abandon();
            }
            return Err(Error::Failed(format!(
                "{name}: interrupted; the jobs of the lines before line {} ({} of {}) were imported, those from line {} on were not",
                numbers[0],
                inserted + duplicates,
                jobs.len(),
                numbers[0],
            )));
        }
        // What the checks above could not see coming (a parent pruned or a
        // batch sealed meanwhile): said with the lines it concerns.
        let results = store.enqueue(batch, now_ms()).map_err(|e| {
            Error::Failed(format!(
                "{name}, lines {} to {}: {e}; the jobs of the lines before them ({inserted} of {}) were imported, those from line {} on were not",
                numbers[0],
                numbers[numbers.len() - 1],
                jobs.len(),
                numbers[0],
            ))
        })?;
        for r in results {
            match r {
                Enqueued::Inserted(_) => inserted += 1,
                Enqueued::Duplicate(_) => duplicates += 1,
            }
        }
        if let Some(bar) = &progress {
            bar.inc(batch.len() as u64);
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    let elapsed = started.elapsed();
    writeln!(
        out,
        "enqueued {inserted} jobs ({duplicates} duplicates skipped) in {:.2}s, {:.0} jobs/s",
        elapsed.as_secs_f64(),
        jobs.len() as f64 / elapsed.as_secs_f64().max(1e-9)
    )
    .map_err(stdout_error)
}
