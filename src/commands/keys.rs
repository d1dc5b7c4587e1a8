//! `jobd keys`: the job keys running, blocked or held by their limits on
//! every daemon of the database, read against this config's `[keys.*]`.

use std::io::Write;

use crate::commands::cli::KeysArgs;
use crate::commands::output::{stdout_error, table};
use crate::config::Config;
use crate::error::Result;
use crate::job::now_ms;
use crate::keys::{KeyHold, KEY_COLUMNS};
use crate::store::Store;

/// Runs `jobd keys`: a table (or JSON) of the keys with jobs running and
/// those closed now; a sentence when there are none.
pub fn keys(
    config: &Config,
    store: &mut dyn Store,
    args: KeysArgs,
    out: &mut dyn Write,
) -> Result<()> {
    let rules = config.key_rules();
    let now = now_ms();
    let keys = store.keys(now, true)?;
    if args.json {
        let list: Vec<serde_json::Value> = keys
            .iter()
            .map(|a| {
                let status = rules.status(a, now);
                let limit = status.limit;
                let (until, http_status) = match status.hold {
                    KeyHold::Blocked { until, status } => (Some(until), Some(status)),
                    KeyHold::Rate { until } => (Some(until), None),
                    _ => (None, None),
                };
                serde_json::json!({
                    "key": a.key,
                    "limits": status.limits,
                    "running": a.running,
                    "concurrency": limit.and_then(|l| l.concurrency),
                    "ready": a.ready,
                    "ready_counted_up_to": crate::keys::READY_COUNTED,
                    "rate": limit.and_then(|l| l.rate).map(|r| serde_json::json!({
                        "count": r.count,
                        "per_ms": r.per.as_millis() as u64,
                        "recent_starts": status.recent_starts,
                    })),
                    "state": status.hold.word(),
                    "until": until,
                    "status": http_status,
                })
            })
            .collect();
        serde_json::to_writer_pretty(&mut *out, &list).map_err(|e| stdout_error(e.into()))?;
        return writeln!(out).map_err(stdout_error);
    }
    if keys.is_empty() {
        return writeln!(
            out,
            "no job key has jobs running, is blocked or is held by its rate in {}",
            store.name()
        )
        .map_err(stdout_error);
    }
    let mut rows = vec![KEY_COLUMNS.map(String::from).to_vec()];
    rows.extend(keys.iter().map(|a| rules.row(a, now)));
    table(out, &rows)
}
