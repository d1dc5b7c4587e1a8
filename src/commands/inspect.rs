//! The commands that read: `list`, `show`, `stats`, `tail`.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use crate::commands::cli::{ListArgs, ShowArgs, StatsArgs, TailArgs};
use crate::commands::output::stdout_error;
use crate::commands::output::{clip, millis, opt_time, table, terminal_safe, time};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::job::{now_ms, Job};
use crate::kinds::Redaction;
use crate::logging::quote;
use crate::store::{JobRun, ListFilter, Stats, Store};

/// How often `tail` looks for new attempts.
const TAIL_POLL: Duration = Duration::from_millis(100);
/// Attempts `tail` reads per look.
const TAIL_BATCH: usize = 1_000;
/// How often `stats --watch` redraws.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// Widest `last_error` shown in a table cell.
const ERROR_WIDTH: usize = 60;

/// A job as JSON, with payload and result as JSON values rather than text,
/// credentials in the payload and the error redacted.
fn job_json(job: &Job, redaction: &Redaction) -> serde_json::Value {
    fn embed(text: &str) -> serde_json::Value {
        serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_string()))
    }
    let mut value = serde_json::to_value(job).unwrap_or_default();
    value["payload"] = embed(&redaction.payload(&job.kind, &job.payload));
    if let Some(error) = &job.last_error {
        value["last_error"] = serde_json::Value::String(redaction.text(error));
    }
    value["result"] = job.result.as_deref().map(embed).unwrap_or_default();
    value
}

fn json_out(out: &mut dyn Write, value: &serde_json::Value) -> Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)
        .map_err(|e| stdout_error(std::io::Error::from(e)))?;
    writeln!(out).map_err(stdout_error)
}

/// Runs `jobd list`.
pub fn list(
    redaction: &Redaction,
    store: &mut dyn Store,
    args: ListArgs,
    out: &mut dyn Write,
) -> Result<()> {
    let jobs = store.list(&ListFilter {
        state: args.state,
        queue: args.queue,
        kind: args.kind,
        limit: args.limit,
        before: None,
    })?;
    if args.json {
        return json_out(
            out,
            &jobs.iter().map(|job| job_json(job, redaction)).collect(),
        );
    }
    let mut rows = vec![[
        "ID",
        "STATE",
        "QUEUE",
        "KIND",
        "PRI",
        "ATTEMPTS",
        "RUN_AT",
        "LAST_ERROR",
    ]
    .map(String::from)
    .to_vec()];
    for job in &jobs {
        rows.push(vec![
            job.id.to_string(),
            job.state.to_string(),
            job.queue.clone(),
            job.kind.clone(),
            job.priority.to_string(),
            job.attempts.to_string(),
            time(job.run_at),
            clip(
                &redaction.text(job.last_error.as_deref().unwrap_or("")),
                ERROR_WIDTH,
            ),
        ]);
    }
    table(out, &rows)
}

/// Runs `jobd cron`: each schedule of the config with its next time, and
/// the last slot enqueued with its job from the database; rows of
/// schedules no longer in the config are listed as removed.
pub fn cron(config: &Config, store: &mut dyn Store, out: &mut dyn Write) -> Result<()> {
    let rows = store.cron_rows()?;
    let now = now_ms();
    let mut table_rows = vec![[
        "NAME",
        "SCHEDULE",
        "TIMEZONE",
        "NEXT",
        "LAST_SLOT",
        "LAST_JOB",
        "STATE",
    ]
    .map(String::from)
    .to_vec()];
    let row_of = |name: &str| rows.iter().find(|r| r.name == name);
    let last = |name: &str, tz: &str| match row_of(name) {
        Some(r) => vec![
            r.last_slot.map_or("-".to_string(), |t| {
                crate::daemon::cron::format_local(t, tz)
            }),
            r.last_job_id.map_or("-".to_string(), |id| id.to_string()),
            r.last_job_state.map_or("-".to_string(), |s| s.to_string()),
        ],
        None => vec!["-".into(), "-".into(), "-".into()],
    };
    for schedule in crate::daemon::cron::schedules(config) {
        let next = schedule.next_after(now).map_or("-".to_string(), |t| {
            crate::daemon::cron::format_local(t, &schedule.timezone)
        });
        let mut row = vec![
            schedule.name.clone(),
            schedule.expression.clone(),
            schedule.timezone.clone(),
            next,
        ];
        row.extend(last(&schedule.name, &schedule.timezone));
        table_rows.push(row);
    }
    for r in rows.iter().filter(|r| !config.cron.contains_key(&r.name)) {
        let mut row = vec![
            r.name.clone(),
            "(removed from the config)".into(),
            "UTC".into(),
            "-".into(),
        ];
        row.extend(last(&r.name, "UTC"));
        table_rows.push(row);
    }
    if table_rows.len() == 1 {
        writeln!(
            out,
            "no periodic schedules ([cron.NAME] sections) in {}",
            config.source.display()
        )
        .map_err(stdout_error)?;
        return Ok(());
    }
    table(out, &table_rows)
}

/// Runs `jobd show`.
// Long: the `show` output section by section, in the order printed.
pub fn show(
    config: &Config,
    store: &mut dyn Store,
    args: ShowArgs,
    out: &mut dyn Write,
) -> Result<()> {
    let job = store
        .job(args.id)?
        .ok_or_else(|| Error::Failed(format!("job {} does not exist", args.id)))?;
    let mut runs = store.runs(job.id)?;
    let relatives = store.relatives(job.id)?;
    let redaction = Redaction::new(&config.http);
    for run in &mut runs {
        run.error = run.error.as_deref().map(|e| redaction.text(e));
    }
    let listed = |jobs: &[(i64, String)]| -> Vec<serde_json::Value> {
        jobs.iter()
            .map(|(id, state)| serde_json::json!({"id": id, "state": state}))
            .collect()
    };
    if args.json {
        let mut value = job_json(&job, &redaction);
        value["runs"] = serde_json::to_value(&runs).unwrap_or_default();
        value["parents"] = listed(&relatives.parents).into();
        value["children"] = listed(&relatives.children).into();
        value["run_always"] = relatives.run_always.into();
        value["batch"] = relatives.batch.clone().into();
        value["callback_for"] = relatives.callback_for.clone().into();
        value["sequence"] = relatives.sequence.clone().into();
        return json_out(out, &value);
    }
    let w = |out: &mut dyn Write, key: &str, value: String| {
        writeln!(out, "  {key:<17}{}", terminal_safe(&value)).map_err(stdout_error)
    };
    writeln!(out, "job {}", job.id).map_err(stdout_error)?;
    w(out, "state", job.state.to_string())?;
    if job.cancel_requested {
        w(out, "cancel_requested", "yes".into())?;
    }
    w(out, "queue", job.queue.clone())?;
    w(out, "kind", job.kind.clone())?;
    w(out, "priority", job.priority.to_string())?;
    w(
        out,
        "attempts",
        match job.max_attempts {
            Some(max) => format!("{} of {max}", job.attempts),
            None => format!(
                "{} of {} (retry.max_attempts)",
                job.attempts, config.retry.max_attempts
            ),
        },
    )?;
    w(
        out,
        "timeout",
        match (job.timeout_ms, config.timeouts.for_kind(&job.kind)) {
            (Some(ms), _) => millis(ms),
            (None, Some(d)) => format!("{} (timeouts.{})", millis(d.as_millis() as i64), job.kind),
            (None, None) => "-".into(),
        },
    )?;
    if let Some(key) = &job.unique_key {
        w(out, "unique_key", key.clone())?;
    }
    if let Some(key) = &job.limit_key {
        w(out, "limit_key", key.clone())?;
    }
    w(out, "created_at", time(job.created_at))?;
    w(out, "run_at", time(job.run_at))?;
    w(out, "started_at", opt_time(job.started_at))?;
    w(out, "finished_at", opt_time(job.finished_at))?;
    if job.lease_until.is_some() {
        w(out, "lease_until", opt_time(job.lease_until))?;
    }
    w(
        out,
        "worker",
        job.worker.clone().unwrap_or_else(|| "-".into()),
    )?;
    if let Some(error) = &job.last_error {
        w(out, "last_error", redaction.text(error))?;
    }
    if let Some((fraction, note)) = job.running_progress() {
        let note = if note.is_empty() {
            String::new()
        } else {
            format!(": {note}")
        };
        w(out, "progress", format!("{:.0} %{note}", fraction * 100.0))?;
    }
    let family = |jobs: &[(i64, String)]| {
        let each: Vec<String> = jobs
            .iter()
            .map(|(id, state)| format!("{id} {state}"))
            .collect();
        each.join(", ")
    };
    for (key, value) in [
        ("batch", &relatives.batch),
        ("callback_for", &relatives.callback_for),
        ("sequence", &relatives.sequence),
    ] {
        if let Some(value) = value {
            w(out, key, value.clone())?;
        }
    }
    if !relatives.parents.is_empty() {
        let always = if relatives.run_always {
            " (runs whatever their outcome)"
        } else {
            ""
        };
        w(
            out,
            "parents",
            format!("{}{always}", family(&relatives.parents)),
        )?;
    }
    if !relatives.children.is_empty() {
        let more = if relatives.children.len() as i64 == crate::store::RELATIVES_SHOWN {
            ", …"
        } else {
            ""
        };
        w(
            out,
            "children",
            format!("{}{more}", family(&relatives.children)),
        )?;
    }
    let pretty = |text: &str| {
        serde_json::from_str::<serde_json::Value>(text)
            .and_then(|v| serde_json::to_string_pretty(&v))
            .unwrap_or_else(|_| text.to_string())
    };
    writeln!(out, "payload").map_err(stdout_error)?;
    for line in pretty(&redaction.payload(&job.kind, &job.payload)).lines() {
        writeln!(out, "  {}", terminal_safe(line)).map_err(stdout_error)?;
    }
    if let Some(result) = &job.result {
        writeln!(out, "result").map_err(stdout_error)?;
        for line in pretty(result).lines() {
            writeln!(out, "  {}", terminal_safe(line)).map_err(stdout_error)?;
        }
    }
    writeln!(out, "attempts").map_err(stdout_error)?;
    if runs.is_empty() {
        return writeln!(out, "  (none yet)").map_err(stdout_error);
    }
    let mut rows = vec![["  #", "OUTCOME", "STARTED", "DURATION", "WORKER", "ERROR"]
        .map(String::from)
        .to_vec()];
    for run in &runs {
        rows.push(vec![
            format!("  {}", run.attempt),
            run.outcome.to_string(),
            time(run.started_at),
            millis(run.duration_ms),
            run.worker.clone(),
            run.error.clone().unwrap_or_default(),
        ]);
    }
    table(out, &rows)
}

fn stats_table(stats: &Stats, out: &mut dyn Write) -> Result<()> {
    let mut rows = vec![[
        "QUEUE",
        "READY",
        "SCHEDULED",
        "RUNNING",
        "OK/1M",
        "DEAD/1M",
        "OK/1H",
        "DEAD/1H",
        "LAG",
        "P50",
        "P95",
    ]
    .map(String::from)
    .to_vec()];
    for q in &stats.queues {
        let opt = |v: Option<i64>| v.map(millis).unwrap_or_else(|| "-".into());
        rows.push(vec![
            if q.paused {
                format!("{} (paused)", q.queue)
            } else {
                q.queue.clone()
            },
            q.ready.to_string(),
            q.scheduled.to_string(),
            q.running.to_string(),
            q.succeeded_1m.to_string(),
            q.dead_1m.to_string(),
            q.succeeded_1h.to_string(),
            q.dead_1h.to_string(),
            millis(q.lag_ms),
            opt(q.p50_ms),
            opt(q.p95_ms),
        ]);
    }
    if stats.queues.is_empty() {
        writeln!(out, "no queues yet").map_err(stdout_error)?;
    } else {
        table(out, &rows)?;
    }
    writeln!(out).map_err(stdout_error)?;
    if stats.workers.is_empty() {
        return writeln!(out, "no daemons running").map_err(stdout_error);
    }
    let mut rows = vec![
        ["DAEMON", "VERSION", "QUEUES", "RUNNING", "UP", "HEARTBEAT"]
            .map(String::from)
            .to_vec(),
    ];
    for w in &stats.workers {
        rows.push(vec![
            w.id.clone(),
            w.version.clone(),
            w.queues.clone(),
            w.running.to_string(),
            millis(stats.now.saturating_sub(w.started_at)),
            format!("{} ago", millis(stats.now.saturating_sub(w.heartbeat_at))),
        ]);
    }
    table(out, &rows)
}

/// Runs `jobd stats`.
pub fn stats(store: &mut dyn Store, args: StatsArgs, out: &mut dyn Write) -> Result<()> {
    let terminal = std::io::stdout().is_terminal();
    loop {
        let stats = store.stats(now_ms())?;
        if args.json {
            let line = serde_json::to_string(&stats).map_err(|e| stdout_error(e.into()))?;
            writeln!(out, "{line}").map_err(stdout_error)?;
        } else {
            if args.watch && terminal {
                // Home the cursor and clear, so the table redraws in place.
                write!(out, "\x1b[H\x1b[2J").map_err(stdout_error)?;
            }
            stats_table(&stats, out)?;
            if args.watch && !terminal {
                writeln!(out).map_err(stdout_error)?;
            }
        }
        out.flush().map_err(stdout_error)?;
        if !args.watch {
            return Ok(());
        }
        std::thread::sleep(WATCH_INTERVAL);
    }
}

/// One finished attempt as a `tail` line.
pub fn run_line(run: &JobRun, redaction: &Redaction) -> String {
    let mut line = format!(
        "{} {} job={} kind={} queue={} attempt={} duration_ms={} worker={}",
        time(run.finished_at),
        run.outcome,
        run.job_id,
        quote(&run.kind),
        quote(&run.queue),
        run.attempt,
        run.duration_ms,
        quote(&run.worker),
    );
    if let Some(error) = &run.error {
        line.push_str(&format!(" error={}", quote(&redaction.text(error))));
    }
    line
}

/// A running job's progress as a `tail` line, stamped `at`.
pub fn progress_line(job: &crate::job::Job, fraction: f64, note: &str, at: i64) -> String {
    let mut line = format!(
        "{} progress job={} kind={} queue={} attempt={} done={:.0}%",
        time(at),
        job.id,
        quote(&job.kind),
        quote(&job.queue),
        job.attempts,
        fraction * 100.0
    );
    if !note.is_empty() {
        line.push_str(&format!(" note={}", quote(note)));
    }
    line
}

/// Runs `jobd tail`: prints attempts written from now on, and each new
/// progress report of a running job. The filter is applied here rather
/// than in SQL so that every attempt read moves the follower on, whatever
/// matches.
pub fn tail(
    redaction: &Redaction,
    store: &mut dyn Store,
    args: TailArgs,
    out: &mut dyn Write,
) -> Result<()> {
    let mut follower = crate::store::RunFollower::from_now(store)?;
    // The progress last printed, by job: (attempt, fraction, note).
    let mut shown: std::collections::HashMap<i64, (i64, f64, String)> = Default::default();
    loop {
        let wanted_job = |queue: &str, kind: &str| {
            args.queue.as_ref().is_none_or(|q| q == queue)
                && args.kind.as_ref().is_none_or(|k| k == kind)
        };
        let running = store.running_with_progress()?;
        let now = crate::job::now_ms();
        let mut still = std::collections::HashMap::with_capacity(running.len());
        for job in &running {
            let Some((fraction, note)) = job.running_progress() else {
                continue;
            };
            let report = (job.attempts, fraction, note);
            if wanted_job(&job.queue, &job.kind) && shown.get(&job.id) != Some(&report) {
                let line = progress_line(job, report.1, &redaction.text(&report.2), now);
                writeln!(out, "{line}").map_err(stdout_error)?;
            }
            still.insert(job.id, report);
        }
        shown = still;
        let runs = follower.next(store, TAIL_BATCH)?;
        let wanted = runs.iter().filter(|run| wanted_job(&run.queue, &run.kind));
        for run in wanted {
            writeln!(out, "{}", run_line(run, redaction)).map_err(stdout_error)?;
        }
        out.flush().map_err(stdout_error)?;
        if !follower.behind() {
            std::thread::sleep(TAIL_POLL);
        }
    }
}
