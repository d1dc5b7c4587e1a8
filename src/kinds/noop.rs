//! `noop` (docs/reference.md): sleeps `sleep_ms`, then succeeds. For smoke tests,
//! health checks and benchmarks; it honours its deadline and cancel flag like
//! every other kind.

use std::time::Duration;

use serde::Deserialize;

use crate::kinds::kind::{parse_payload, Context, JobError, Kind};

/// The `noop` kind.
#[derive(Debug, Default)]
pub struct Noop;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    #[serde(default)]
    sleep_ms: u64,
}

impl Kind for Noop {
    fn name(&self) -> &'static str {
        "noop"
    }

    fn run(&self, ctx: &Context<'_>, payload: &str) -> Result<Option<String>, JobError> {
        let args: Payload = parse_payload(payload)?;
        if args.sleep_ms > 0 {
            ctx.sleep(Duration::from_millis(args.sleep_ms))?;
        }
        Ok(None)
    }
}

/// Checks a payload without running the job: the fields and their types
/// (for `[cron.*]` entries at start-up).
pub(crate) fn check(payload: &str) -> Result<(), JobError> {
    parse_payload::<Payload>(payload).map(drop)
}
