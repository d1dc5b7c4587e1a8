//! [`crate::store::Admin`] on SQLite.

use crate::job::JobState;
use crate::store::contract::Admin;
use crate::store::contract::{BulkRetry, CancelResult, PruneCutoffs, Pruned, Result, RetryResult};
use crate::store::shared::{
    cancel_each, prune_by_state, retry_dead_in_batches, retry_each, revive_descendants, JobEdits,
    BULK_RETRY_BATCH, CANCELLED_BEFORE_RUN,
};
use crate::store::sqlite::*;
use rusqlite::{params, OptionalExtension};
use schema::SCHEMA_VERSION;

impl Admin for SqliteStore {
    fn migrate(&mut self) -> Result<(i64, i64)> {
        self.migrate_to(SCHEMA_VERSION)
    }

    fn cancel(&mut self, ids: &[i64], now: i64) -> Result<Vec<CancelResult>> {
        self.write("cancel", |tx| cancel_each(&mut Edits(tx), ids, now))
    }

    fn retry(&mut self, ids: &[i64], now: i64) -> Result<Vec<RetryResult>> {
        self.write("retry", |tx| retry_each(&mut Edits(tx), ids, now))
    }

    fn retry_dead(&mut self, queue: Option<&str>, now: i64) -> Result<BulkRetry> {
        retry_dead_in_batches(|after| {
            self.write("retry dead jobs", |tx| {
                let found: Vec<(i64, Option<i64>)> = tx
                    .prepare_cached(
                        "SELECT id, seq_pos FROM jobs WHERE state = 'dead' AND id > ?1 \
                         AND (?2 IS NULL OR queue = ?2) ORDER BY id LIMIT ?3",
                    )?
                    .query_map(params![after, queue, BULK_RETRY_BATCH as i64], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                let ids: Vec<i64> = found.iter().map(|(id, _)| *id).collect();
                // Members of one sequence go back in their line's order (the
                // trigger puts each behind the line's last live member).
                let mut order = found.clone();
                order.sort_by_key(|(id, pos)| (pos.is_some(), *pos, *id));
                // OR IGNORE leaves a job dead when its unique_key is taken.
                let mut stmt = tx.prepare_cached(
                    "UPDATE OR IGNORE jobs SET state = 'queued', attempts = 0, run_at = ?2, \
                     started_at = NULL, finished_at = NULL, lease_until = NULL, cancel_requested = 0 \
                     WHERE id = ?1 AND state = 'dead'",
                )?;
                let mut queued = 0u64;
                let mut parents = Vec::new();
                for (id, _) in &order {
                    if stmt.execute(params![id, now])? == 1 {
                        queued += 1;
                        parents.push(*id);
                    }
                }
                drop(stmt);
                for id in parents {
                    revive_descendants(&mut Edits(tx), id)?;
                }
                Ok((ids, queued))
            })
        })
    }

    fn prune_batch(&mut self, cutoffs: &PruneCutoffs, batch: usize) -> Result<Pruned> {
        self.write("prune", |tx| {
            prune_by_state(cutoffs, batch, |state, cutoff, left| {
                let ids: Vec<i64> = tx
                    .prepare_cached(&format!(
                        // A job that others still wait for (a dead member
                        // halting its sequence) is kept: deleting it would
                        // let them go.
                        "SELECT id FROM jobs INDEXED BY jobs_{state} \
                         WHERE state = '{state}' AND finished_at < ?1 \
                         AND NOT (has_children = 1 AND EXISTS (SELECT 1 FROM job_deps d \
                           JOIN jobs c ON c.id = d.child WHERE d.parent = jobs.id \
                           AND d.met = 0 AND d.cut = 0 AND c.state = 'waiting')) LIMIT ?2"
                    ))?
                    .query_map(params![cutoff, left], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                if !ids.is_empty() {
                    // The newest place stays taken, pruned or not: places
                    // are the newest plus one (see `PLACES_PRUNED`).
                    static MARK: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
                        format!(
                            "INSERT INTO meta (key, value) VALUES ('{}', CAST(({}) AS TEXT)) \
                             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                            crate::store::sqlite::schema::PLACES_PRUNED,
                            super::RUN_ORDER.last_sql()
                        )
                    });
                    tx.prepare_cached(&MARK)?.execute([])?;
                }
                let mut runs = tx.prepare_cached("DELETE FROM job_attempts WHERE job_id = ?1")?;
                let mut jobs =
                    tx.prepare_cached("DELETE FROM jobs WHERE id = ?1 AND state = ?2")?;
                let mut pruned = Pruned::default();
                for id in &ids {
                    pruned.runs += runs.execute([id])? as u64;
                    let gone = jobs.execute(params![id, state])? as u64;
                    pruned.jobs += gone;
                    // A succeeded job's success is its own row.
                    if state == "succeeded" {
                        pruned.runs += gone;
                    }
                }
                Ok((ids.len(), pruned))
            })
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

    fn seal_batch(&mut self, name: &str) -> Result<bool> {
        self.write("seal a batch", |tx| {
            tx.prepare_cached("INSERT OR IGNORE INTO batches (name) VALUES (?1)")?
                .execute([name])?;
            Ok(tx
                .prepare_cached("UPDATE batches SET sealed = 1 WHERE name = ?1 AND sealed = 0")?
                .execute([name])?
                == 1)
        })
    }

    fn database_id(&mut self) -> Result<String> {
        self.conn
            .prepare_cached("SELECT value FROM meta WHERE key = 'database_id'")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(|e| self.err("read the database id", e))
    }
}

/// The row operations of cancel and retry in one SQLite transaction.
struct Edits<'a, 'c>(&'a rusqlite::Transaction<'c>);

impl JobEdits for Edits<'_, '_> {
    type Error = rusqlite::Error;

    fn cancel_queued(&mut self, id: i64, now: i64) -> rusqlite::Result<bool> {
        let n = self
            .0
            .prepare_cached(
                "UPDATE jobs SET state = 'cancelled', finished_at = ?2, last_error = ?3 \
                 WHERE id = ?1 AND (state = 'queued' OR state = 'waiting')",
            )?
            .execute(params![id, now, CANCELLED_BEFORE_RUN])?;
        Ok(n == 1)
    }

    fn request_cancel(&mut self, id: i64) -> rusqlite::Result<bool> {
        let n = self
            .0
            .prepare_cached(
                "UPDATE jobs SET cancel_requested = 1 WHERE id = ?1 AND state = 'running'",
            )?
            .execute([id])?;
        Ok(n == 1)
    }

    fn state(&mut self, id: i64) -> rusqlite::Result<Option<JobState>> {
        state_of(self.0, id)
    }

    fn key_holder(&mut self, id: i64) -> rusqlite::Result<Option<i64>> {
        self.0
            .query_row(
                "SELECT other.id FROM jobs AS this JOIN jobs AS other \
                 ON other.unique_key = this.unique_key \
                 WHERE this.id = ?1 AND (other.state = 'queued' OR other.state = 'running' \
                   OR other.state = 'waiting')",
                [id],
                |r| r.get(0),
            )
            .optional()
    }

    fn requeue(&mut self, id: i64, now: i64) -> rusqlite::Result<()> {
        self.0
            .prepare_cached(
                // A job in a flow is put back to waiting by the schema's
                // trigger `jobs_flow_requeued` when it still waits.
                "UPDATE jobs SET state = 'queued', attempts = 0, run_at = ?2, started_at = NULL, \
                 finished_at = NULL, lease_until = NULL, cancel_requested = 0 \
                 WHERE id = ?1 AND (state = 'dead' OR state = 'cancelled')",
            )?
            .execute(params![id, now])?;
        Ok(())
    }

    fn ended_parent(&mut self, id: i64) -> rusqlite::Result<Option<(i64, JobState)>> {
        self.0
            .prepare_cached(
                // A parent that is dead or cancelled now (whether its end
                // cancelled this job or an operator had before).
                "SELECT j.id, j.state FROM job_deps d JOIN jobs j ON j.id = d.parent \
                 JOIN jobs c ON c.id = d.child \
                 WHERE d.child = ?1 AND d.seq = 0 AND d.met = 0 AND c.run_always = 0 \
                   AND (j.state = 'dead' OR j.state = 'cancelled') ORDER BY j.id LIMIT 1",
            )?
            .query_row([id], |r| Ok((r.get(0)?, text(r, 1)?)))
            .optional()?
            .map(|(parent, state): (i64, String)| {
                let state = state.parse().map_err(|e: crate::job::UnknownState| {
                    rusqlite::Error::FromSqlConversionFailure(
                        1,
                        rusqlite::types::Type::Text,
                        Box::new(e),
                    )
                })?;
                Ok((parent, state))
            })
            .transpose()
    }

    fn revive_children(&mut self, parents: &[i64]) -> rusqlite::Result<Vec<i64>> {
        let parents = serde_json::to_string(parents).unwrap_or_else(|_| "[]".into());
        let children: Vec<i64> = self
            .0
            .prepare_cached(
                "UPDATE job_deps SET cut = 0 \
                 WHERE cut = 1 AND parent IN (SELECT value FROM json_each(?1)) RETURNING child",
            )?
            .query_map([&parents], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let children = serde_json::to_string(&children).unwrap_or_else(|_| "[]".into());
        self.0
            .prepare_cached(
                // OR IGNORE: a child whose unique key another job took
                // meanwhile stays cancelled (it can be retried by itself
                // once the key is free) instead of failing this retry.
                "UPDATE OR IGNORE jobs SET state = 'waiting', finished_at = NULL, last_error = NULL \
                 WHERE id IN (SELECT value FROM json_each(?1)) AND state = 'cancelled' \
                   AND NOT EXISTS (SELECT 1 FROM job_deps d JOIN jobs p ON p.id = d.parent \
                     WHERE d.child = jobs.id AND d.seq = 0 AND d.met = 0 \
                       AND (p.state = 'dead' OR p.state = 'cancelled')) \
                 RETURNING id",
            )?
            .query_map([&children], |r| r.get(0))?
            .collect()
    }
}
