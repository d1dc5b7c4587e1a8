//! Flows as both backends keep them (docs/reference.md, "Flows"): what a
//! child is handed of its parents when it is claimed. The rules that move
//! jobs between `waiting`, `queued` and `cancelled` live in each backend's
//! schema as triggers, so that a client's plain SQL obeys them too; `retry`
//! of a parent is in `shared.rs` ([`crate::store::shared::revive_descendants`]).

use serde::Serialize;

use crate::job::Claimed;

/// How one parent of a claimed job ended, as the child sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ParentOutcome {
    /// The parent's id.
    pub id: i64,
    /// Its kind.
    pub kind: String,
    /// Its state: `succeeded`, or for a child that runs whatever its
    /// parents' outcome, `dead` or `cancelled` too.
    pub state: String,
    /// Its result, as stored.
    pub result: Option<serde_json::Value>,
    /// Its `last_error`.
    pub error: Option<String>,
}

/// A batch's counters, as its callback sees them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BatchCounts {
    /// The batch's name.
    pub name: String,
    /// Its jobs.
    pub total: i64,
    /// Those that succeeded.
    pub succeeded: i64,
    /// Those that ended dead.
    pub dead: i64,
    /// Those cancelled.
    pub cancelled: i64,
}

/// Gives each claimed batch callback its `inputs`: its batch's counters,
/// read by `batch`.
pub(crate) fn attach_batches<E>(
    jobs: &mut [Claimed],
    mut batch: impl FnMut(&str) -> Result<Option<BatchCounts>, E>,
) -> Result<(), E> {
    for job in jobs.iter_mut() {
        if let Some(name) = &job.callback_for {
            let counts = batch(name)?.unwrap_or_else(|| BatchCounts {
                name: name.clone(),
                ..BatchCounts::default()
            });
            job.inputs = serde_json::to_string(&serde_json::json!({ "batch": counts })).ok();
        }
    }
    Ok(())
}

/// Gives each claimed job with parents its `inputs`: the outcomes of those
/// parents still in the table (`outcomes` reads them by id, in one query
/// for the whole claim), in the order the job names them.
pub(crate) fn attach_parents<E>(
    jobs: &mut [Claimed],
    outcomes: impl FnOnce(&[i64]) -> Result<Vec<ParentOutcome>, E>,
) -> Result<(), E> {
    let mut wanted: Vec<i64> = jobs
        .iter()
        .flat_map(|j| j.parents.iter().copied())
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    wanted.sort_unstable();
    wanted.dedup();
    let found = outcomes(&wanted)?;
    for job in jobs.iter_mut().filter(|j| !j.parents.is_empty()) {
        let parents: Vec<&ParentOutcome> = job
            .parents
            .iter()
            .filter_map(|id| found.iter().find(|o| o.id == *id))
            .collect();
        job.inputs = serde_json::to_string(&serde_json::json!({ "parents": parents })).ok();
    }
    Ok(())
}
