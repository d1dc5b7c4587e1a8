//! `jobd handlers`: the warm handler processes every live daemon's CPU
//! workers keep (docs/reference.md, "Warm handlers"), as the daemons' last
//! heartbeats reported them.

use std::io::Write;

use crate::commands::cli::HandlersArgs;
use crate::commands::output::{stdout_error, table, time};
use crate::error::Result;
use crate::store::{HandlerProcess, Store};

/// One handler process and the daemon that keeps it, for `--json`.
#[derive(serde::Serialize)]
struct Row<'a> {
    daemon: &'a str,
    #[serde(flatten)]
    handler: &'a HandlerProcess,
}

/// Runs `jobd handlers`.
pub fn handlers(store: &mut dyn Store, args: HandlersArgs, out: &mut dyn Write) -> Result<()> {
    let workers = store.workers()?;
    let rows: Vec<Row<'_>> = workers
        .iter()
        .flat_map(|w| {
            w.handlers.iter().map(|handler| Row {
                daemon: &w.id,
                handler,
            })
        })
        .collect();
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &rows).map_err(|e| stdout_error(e.into()))?;
        return writeln!(out).map_err(stdout_error);
    }
    if rows.is_empty() {
        return writeln!(
            out,
            "no warm handler is running (a handler runs warm with mode = \"persistent\" in [exec.handlers.NAME])"
        )
        .map_err(stdout_error);
    }
    let mut lines = vec![["HANDLER", "PID", "JOBS", "RSS", "STARTED", "DAEMON"]
        .map(String::from)
        .to_vec()];
    for row in &rows {
        let h = row.handler;
        lines.push(vec![
            h.name.clone(),
            h.pid.to_string(),
            h.jobs.to_string(),
            mebibytes(h.rss_bytes),
            time(h.started_at),
            row.daemon.to_string(),
        ]);
    }
    table(out, &lines)
}

/// `bytes` in MiB with one decimal, as `ps` users read memory.
fn mebibytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
