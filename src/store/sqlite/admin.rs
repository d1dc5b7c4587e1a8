//! [`crate::store::Admin`] on SQLite.

use crate::job::JobState;
use crate::store::contract::Admin;
use crate::store::contract::{BulkRetry, CancelResult, PruneCutoffs, Pruned, Result, RetryResult};
use crate::store::shared::BULK_RETRY_BATCH;
use crate::store::sqlite::*;
use rusqlite::{params, OptionalExtension};
use schema::SCHEMA_VERSION;

impl Admin for SqliteStore {
    fn migrate(&mut self) -> Result<(i64, i64)> {
        self.migrate_to(SCHEMA_VERSION)
    }

    fn cancel(&mut self, ids: &[i64], now: i64) -> Result<Vec<CancelResult>> {
        self.write("cancel", |tx| {
            let mut out = Vec::with_capacity(ids.len());
            for &id in ids {
                let queued = tx
                    .prepare_cached(
                        "UPDATE jobs SET state = 'cancelled', finished_at = ?2, \
                         last_error = 'cancelled by an operator before it ran' \
                         WHERE id = ?1 AND state = 'queued'",
                    )?
                    .execute(params![id, now])?;
                if queued == 1 {
                    out.push(CancelResult::Cancelled);
                    continue;
                }
                let running = tx
                    .prepare_cached(
                        "UPDATE jobs SET cancel_requested = 1 WHERE id = ?1 AND state = 'running'",
                    )?
                    .execute([id])?;
                if running == 1 {
                    out.push(CancelResult::Requested);
                    continue;
                }
                out.push(match state_of(tx, id)? {
                    Some(state) => CancelResult::AlreadyFinal(state),
                    None => CancelResult::NotFound,
                });
            }
            Ok(out)
        })
    }

    fn retry(&mut self, ids: &[i64], now: i64) -> Result<Vec<RetryResult>> {
        self.write("retry", |tx| {
            let mut out = Vec::with_capacity(ids.len());
            for &id in ids {
                let state = match state_of(tx, id)? {
                    None => {
                        out.push(RetryResult::NotFound);
                        continue;
                    }
                    Some(state) => state,
                };
                if !matches!(state, JobState::Dead | JobState::Cancelled) {
                    out.push(RetryResult::WrongState(state));
                    continue;
                }
                let holder: Option<i64> = tx
                    .query_row(
                        "SELECT other.id FROM jobs AS this JOIN jobs AS other \
                         ON other.unique_key = this.unique_key \
                         WHERE this.id = ?1 AND (other.state = 'queued' OR other.state = 'running')",
                        [id],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(holder) = holder {
                    out.push(RetryResult::UniqueKeyTaken(holder));
                    continue;
                }
                tx.prepare_cached(
                    "UPDATE jobs SET state = 'queued', attempts = 0, run_at = ?2, started_at = NULL, \
                     finished_at = NULL, lease_until = NULL, cancel_requested = 0 \
                     WHERE id = ?1 AND (state = 'dead' OR state = 'cancelled')",
                )?
                .execute(params![id, now])?;
                out.push(RetryResult::Queued);
            }
            Ok(out)
        })
    }

    fn retry_dead(&mut self, queue: Option<&str>, now: i64) -> Result<BulkRetry> {
        let mut total = BulkRetry::default();
        let mut after = 0i64;
        loop {
            let (ids, queued) = self.write("retry dead jobs", |tx| {
                let ids: Vec<i64> = tx
                    .prepare_cached(
                        "SELECT id FROM jobs WHERE state = 'dead' AND id > ?1 \
                         AND (?2 IS NULL OR queue = ?2) ORDER BY id LIMIT ?3",
                    )?
                    .query_map(params![after, queue, BULK_RETRY_BATCH as i64], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                // OR IGNORE leaves a job dead when its unique_key is taken.
                let mut stmt = tx.prepare_cached(
                    "UPDATE OR IGNORE jobs SET state = 'queued', attempts = 0, run_at = ?2, \
                     started_at = NULL, finished_at = NULL, lease_until = NULL, cancel_requested = 0 \
                     WHERE id = ?1 AND state = 'dead'",
                )?;
                let mut queued = 0u64;
                for id in &ids {
                    queued += stmt.execute(params![id, now])? as u64;
                }
                Ok((ids, queued))
            })?;
            total.queued += queued;
            total.skipped_unique += ids.len() as u64 - queued;
            match ids.last() {
                Some(&last) if ids.len() == BULK_RETRY_BATCH => after = last,
                _ => return Ok(total),
            }
        }
    }

    fn prune_batch(&mut self, cutoffs: &PruneCutoffs, batch: usize) -> Result<Pruned> {
        self.write("prune", |tx| {
            let mut pruned = Pruned::default();
            let mut left = batch as i64;
            for (state, cutoff) in [
                ("succeeded", cutoffs.succeeded),
                ("dead", cutoffs.dead),
                ("cancelled", cutoffs.cancelled),
            ] {
                let Some(cutoff) = cutoff else { continue };
                if left <= 0 {
                    break;
                }
                // The state is a literal so the query planner can use its
                // partial index (a bound parameter would not prove it).
                let ids: Vec<i64> = tx
                    .prepare_cached(&format!(
                        "SELECT id FROM jobs INDEXED BY jobs_{state} \
                         WHERE state = '{state}' AND finished_at < ?1 LIMIT ?2"
                    ))?
                    .query_map(params![cutoff, left], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                let mut runs = tx.prepare_cached("DELETE FROM job_runs WHERE job_id = ?1")?;
                let mut jobs =
                    tx.prepare_cached("DELETE FROM jobs WHERE id = ?1 AND state = ?2")?;
                for id in &ids {
                    pruned.runs += runs.execute([id])? as u64;
                    pruned.jobs += jobs.execute(params![id, state])? as u64;
                }
                left -= ids.len() as i64;
            }
            Ok(pruned)
        })
    }

    fn set_paused(&mut self, queues: &[String], paused: bool, now: i64) -> Result<()> {
        self.write("pause", |tx| {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO queues (name, paused, updated_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, \
                 updated_at = excluded.updated_at",
            )?;
            for queue in queues {
                stmt.execute(params![queue, paused as i64, now])?;
            }
            Ok(())
        })
    }

    fn database_id(&mut self) -> Result<String> {
        self.conn
            .prepare_cached("SELECT value FROM meta WHERE key = 'database_id'")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(|e| self.err("read the database id", e))
    }
}
