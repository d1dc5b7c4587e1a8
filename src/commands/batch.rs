//! `jobd batch NAME`: a batch's progress (docs/reference.md, "Flows"), and
//! `--seal` for a batch that has no callback.

use std::io::Write;

use crate::commands::cli::BatchArgs;
use crate::commands::output::{stdout_error, time};
use crate::error::{Error, Result};
use crate::store::Store;

/// Runs `jobd batch`.
pub fn batch(store: &mut dyn Store, args: BatchArgs, out: &mut dyn Write) -> Result<()> {
    if args.seal && !store.seal_batch(&args.name)? {
        eprintln!(
            "batch {} was sealed already",
            crate::fmt::terminal_safe(&args.name)
        );
    }
    let info = store.batch(&args.name)?.ok_or_else(|| {
        Error::Failed(format!(
            "no job names batch {}",
            crate::fmt::terminal_safe(&args.name)
        ))
    })?;
    if args.json {
        let value = serde_json::to_value(&info).unwrap_or_default();
        serde_json::to_writer_pretty(&mut *out, &value).map_err(|e| stdout_error(e.into()))?;
        return writeln!(out).map_err(stdout_error);
    }
    let c = &info.counts;
    // Saturating: the counters are rows a client may have written.
    let jobs: i64 = info.states.values().fold(0, |a, &n| a.saturating_add(n));
    let ended = c
        .succeeded
        .saturating_add(c.dead)
        .saturating_add(c.cancelled);
    let open: Vec<String> = ["waiting", "queued", "running"]
        .iter()
        .filter_map(|s| info.states.get(*s).map(|n| format!("{n} {s}")))
        .collect();
    let w = |out: &mut dyn Write, key: &str, value: String| {
        writeln!(out, "  {key:<12}{value}").map_err(stdout_error)
    };
    writeln!(out, "batch {}", crate::fmt::terminal_safe(&c.name)).map_err(stdout_error)?;
    w(
        out,
        "sealed",
        match (info.sealed, &info.callback) {
            (true, Some((id, state))) => format!("yes, callback job {id} ({state})"),
            (true, None) => "yes, no callback".into(),
            (false, _) => {
                "no: jobs may still join (insert its callback, or jobd batch --seal)".into()
            }
        },
    )?;
    let total = if info.sealed { c.total } else { jobs };
    w(
        out,
        "jobs",
        format!(
            "{total}: {} succeeded, {} dead, {} cancelled{}",
            c.succeeded,
            c.dead,
            c.cancelled,
            if open.is_empty() {
                String::new()
            } else {
                format!(", {}", open.join(", "))
            }
        ),
    )?;
    if total > 0 {
        w(
            out,
            "ended",
            format!("{:.1} %", 100.0 * ended as f64 / total as f64),
        )?;
    }
    w(out, "created_at", time(info.created_at))?;
    w(
        out,
        "finished_at",
        info.finished_at.map(time).unwrap_or_else(|| "-".into()),
    )
}
