//! [`crate::store::Admin`] on PostgreSQL.

use crate::store::contract::Admin;
use crate::store::contract::{BulkRetry, CancelResult, PruneCutoffs, Pruned, Result, RetryResult};
use crate::store::postgres::*;
use crate::store::shared::{
    cancel_each, prune_by_state, retry_dead_in_batches, retry_each, revive_descendants, JobEdits,
    CANCELLED_BEFORE_RUN,
};

impl Admin for PgStore {
    fn migrate(&mut self) -> Result<(i64, i64)> {
        self.revive()?;
        // Creates or upgrades the schema; returns the versions before and
        // after. Each step runs in one transaction holding an advisory lock, so
        // two daemons starting together do not both apply it.
        let before = self.schema_version()?;
        if before > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                database: redact_url(&self.url),
                found: before,
                supported: SCHEMA_VERSION,
            });
        }
        let fail = self.failing("migrate");
        let mut tx = self.client.transaction().map_err(&fail)?;
        // jobd's own lock number; released at commit.
        tx.execute("SELECT pg_advisory_xact_lock(7310242001)", &[])
            .map_err(&fail)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS jobd_schema (version BIGINT NOT NULL);
             INSERT INTO jobd_schema (version) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM jobd_schema);",
        )
        .map_err(&fail)?;
        let current: i64 = tx
            .query_one("SELECT version FROM jobd_schema", &[])
            .map_err(&fail)?
            .get(0);
        for (i, step) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
            tx.batch_execute(step).map_err(&fail)?;
            tx.execute("UPDATE jobd_schema SET version = $1", &[&(i as i64 + 1)])
                .map_err(&fail)?;
        }
        tx.commit().map_err(&fail)?;
        // What this call found under the lock: a daemon that waited for
        // another's migration found it done, and says so.
        Ok((current.min(SCHEMA_VERSION), SCHEMA_VERSION))
    }

    fn database_id(&mut self) -> Result<String> {
        self.revive()?;
        let fail = self.failing("read the database id");
        Ok(self
            .client
            .query_one("SELECT value FROM meta WHERE key = 'database_id'", &[])
            .map_err(&fail)?
            .get(0))
    }

    fn cancel(&mut self, ids: &[i64], now: i64) -> Result<Vec<CancelResult>> {
        self.revive()?;
        let fail = self.failing("cancel");
        let mut tx = self.client.transaction().map_err(&fail)?;
        let out = cancel_each(&mut Edits(&mut tx), ids, now).map_err(&fail)?;
        tx.commit().map_err(&fail)?;
        Ok(out)
    }

    fn retry(&mut self, ids: &[i64], now: i64) -> Result<Vec<RetryResult>> {
        self.revive()?;
        let fail = self.failing("retry");
        let mut tx = self.client.transaction().map_err(&fail)?;
        let out = retry_each(&mut Edits(&mut tx), ids, now).map_err(&fail)?;
        tx.commit().map_err(&fail)?;
        Ok(out)
    }

    fn retry_dead(&mut self, queue: Option<&str>, now: i64) -> Result<BulkRetry> {
        self.revive()?;
        let fail = self.failing("retry dead jobs");
        let client = &mut self.client;
        retry_dead_in_batches(|after| {
            let mut tx = client.transaction()?;
            let found: Vec<(i64, Option<i64>)> = tx
                .query(
                    "SELECT id, seq_pos FROM jobs WHERE state = 'dead' AND id > $1 \
                     AND ($2::text IS NULL OR queue = $2) ORDER BY id LIMIT $3",
                    &[&after, &queue, &BULK_RETRY_BATCH],
                )?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let ids: Vec<i64> = found.iter().map(|(id, _)| *id).collect();
            // Members of sequences go back one statement each, in their
            // lines' order: the trigger that puts a member back in its line
            // runs after its statement, and with all of them queued by one
            // statement each would go behind the others.
            let plain: Vec<i64> = found
                .iter()
                .filter(|(_, pos)| pos.is_none())
                .map(|(id, _)| *id)
                .collect();
            let mut members: Vec<(i64, i64)> = found
                .iter()
                .filter_map(|(id, pos)| pos.map(|p| (p, *id)))
                .collect();
            members.sort_unstable();
            // A key goes to the oldest of the batch's dead jobs that carry
            // it (as SQLite's UPDATE OR IGNORE in id order does), and only
            // when no live job holds it: one statement sees the table as it
            // was before it ran, so twins within the batch must be ruled
            // out by the statement itself or the unique index refuses the
            // whole batch.
            let requeue = "UPDATE jobs SET state = 'queued', attempts = 0, run_at = $2, \
                 started_at = NULL, finished_at = NULL, lease_until = NULL, cancel_requested = false \
                 WHERE id = ANY($1) AND state = 'dead' AND (unique_key IS NULL OR ( \
                   NOT EXISTS (SELECT 1 FROM jobs AS other WHERE other.unique_key = jobs.unique_key \
                     AND other.state IN ('queued', 'running', 'waiting')) \
                   AND NOT EXISTS (SELECT 1 FROM jobs AS twin WHERE twin.unique_key = jobs.unique_key \
                     AND twin.id = ANY($1) AND twin.state = 'dead' AND twin.id < jobs.id))) \
                 RETURNING id";
            let mut tries = 0;
            let queued = loop {
                // A client that enqueues one of these keys while the
                // statement runs makes it fail on the index; the next try
                // sees that job as the holder.
                let mut attempt = tx.savepoint("requeue")?;
                match attempt.query(requeue, &[&plain, &now]) {
                    Ok(rows) => {
                        attempt.commit()?;
                        break rows.iter().map(|r| r.get(0)).collect::<Vec<i64>>();
                    }
                    // Dropping the savepoint rolls it back.
                    Err(e)
                        if e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION)
                            && tries < RETRY_DEAD_RACES =>
                    {
                        tries += 1;
                    }
                    Err(e) => return Err(e),
                }
            };
            let mut queued = queued;
            for (_, id) in members {
                let back = tx.query_opt(
                    "UPDATE jobs SET state = 'queued', attempts = 0, run_at = $2, \
                     started_at = NULL, finished_at = NULL, lease_until = NULL, \
                     cancel_requested = false \
                     WHERE id = $1 AND state = 'dead' AND (unique_key IS NULL OR NOT EXISTS ( \
                       SELECT 1 FROM jobs AS other WHERE other.unique_key = jobs.unique_key \
                       AND other.state IN ('queued', 'running', 'waiting'))) \
                     RETURNING id",
                    &[&id, &now],
                )?;
                queued.extend(back.map(|r| r.get::<_, i64>(0)));
            }
            // The children their end cancelled wait again, as for `retry`.
            for &id in &queued {
                revive_descendants(&mut Edits(&mut tx), id)?;
            }
            tx.commit()?;
            Ok((ids, queued.len() as u64))
        })
        .map_err(fail)
    }

    fn prune_batch(&mut self, cutoffs: &PruneCutoffs, batch: usize) -> Result<Pruned> {
        self.revive()?;
        let fail = self.failing("prune");
        let mut tx = self.client.transaction().map_err(&fail)?;
        let pruned = prune_by_state(cutoffs, batch, |state, cutoff, left| {
            let ids: Vec<i64> = tx
                .query(
                    &format!(
                        // A job that others still wait for (a dead member
                        // halting its sequence) is kept: deleting it would
                        // let them go.
                        "SELECT id FROM jobs WHERE state = '{state}' AND finished_at < $1 \
                         AND NOT (has_children AND EXISTS (SELECT 1 FROM job_deps d \
                           JOIN jobs c ON c.id = d.child WHERE d.parent = jobs.id \
                           AND NOT d.met AND NOT d.cut AND c.state = 'waiting')) \
                         LIMIT $2 FOR UPDATE"
                    ),
                    &[&cutoff, &left],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            // Asked again once they are locked, in a statement that sees
            // what committed meanwhile: a client that made a job wait for
            // one of them held it locked until it committed.
            let deleted: Vec<i64> = tx
                .query(
                    "DELETE FROM jobs WHERE id = ANY($1) AND state = $2 \
                     AND NOT (has_children AND EXISTS (SELECT 1 FROM job_deps d \
                       JOIN jobs c ON c.id = d.child WHERE d.parent = jobs.id \
                       AND NOT d.met AND NOT d.cut AND c.state = 'waiting')) \
                     RETURNING id",
                    &[&ids, &state],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            // A succeeded job's success is its own row: one attempt more.
            let successes = if state == "succeeded" {
                deleted.len() as u64
            } else {
                0
            };
            let runs = successes
                + tx.execute(
                    "DELETE FROM job_attempts WHERE job_id = ANY($1)",
                    &[&deleted],
                )?;
            Ok((
                ids.len(),
                Pruned {
                    jobs: deleted.len() as u64,
                    runs,
                },
            ))
        })
        .map_err(&fail)?;
        tx.commit().map_err(&fail)?;
        Ok(pruned)
    }

    fn seal_batch(&mut self, name: &str) -> Result<bool> {
        self.revive()?;
        let fail = self.failing("seal a batch");
        let mut tx = self.client.transaction().map_err(&fail)?;
        // The batch's advisory lock before its row, as every sealer takes
        // them (see schema version 15).
        tx.execute(
            "SELECT pg_advisory_xact_lock(jobd_batch_lock($1))",
            &[&name],
        )
        .map_err(&fail)?;
        tx.execute(
            "INSERT INTO batches (name) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&name],
        )
        .map_err(&fail)?;
        let sealed = tx
            .execute(
                "UPDATE batches SET sealed = true WHERE name = $1 AND NOT sealed",
                &[&name],
            )
            .map_err(&fail)?;
        tx.commit().map_err(&fail)?;
        Ok(sealed == 1)
    }

    fn set_paused(&mut self, queues: &[String], paused: bool, now: i64) -> Result<()> {
        self.revive()?;
        // Pauses or resumes queues.
        let fail = self.failing("pause");
        let mut tx = self.client.transaction().map_err(&fail)?;
        for queue in queues {
            tx.execute(
                "INSERT INTO queues (name, paused, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET paused = EXCLUDED.paused, updated_at = EXCLUDED.updated_at",
                &[queue, &paused, &now],
            )
            .map_err(&fail)?;
        }
        tx.commit().map_err(&fail)?;
        Ok(())
    }
}

/// The row operations of cancel and retry in one PostgreSQL transaction.
struct Edits<'a, 'c>(&'a mut postgres::Transaction<'c>);

impl JobEdits for Edits<'_, '_> {
    type Error = postgres::Error;

    fn cancel_queued(&mut self, id: i64, now: i64) -> std::result::Result<bool, postgres::Error> {
        let n = self.0.execute(
            "UPDATE jobs SET state = 'cancelled', finished_at = $2, last_error = $3 \
             WHERE id = $1 AND state IN ('queued', 'waiting')",
            &[&id, &now, &CANCELLED_BEFORE_RUN],
        )?;
        Ok(n == 1)
    }

    fn request_cancel(&mut self, id: i64) -> std::result::Result<bool, postgres::Error> {
        let n = self.0.execute(
            "UPDATE jobs SET cancel_requested = true WHERE id = $1 AND state = 'running'",
            &[&id],
        )?;
        Ok(n == 1)
    }

    fn state(&mut self, id: i64) -> std::result::Result<Option<JobState>, postgres::Error> {
        Ok(self
            .0
            .query_opt("SELECT state FROM jobs WHERE id = $1", &[&id])?
            .and_then(|r| r.get::<_, String>(0).parse().ok()))
    }

    fn key_holder(&mut self, id: i64) -> std::result::Result<Option<i64>, postgres::Error> {
        Ok(self
            .0
            .query_opt(
                "SELECT other.id FROM jobs AS this JOIN jobs AS other \
                 ON other.unique_key = this.unique_key \
                 WHERE this.id = $1 AND other.state IN ('queued', 'running', 'waiting')",
                &[&id],
            )?
            .map(|r| r.get(0)))
    }

    fn requeue(&mut self, id: i64, now: i64) -> std::result::Result<(), postgres::Error> {
        self.0.execute(
            // A job in a flow is put back to waiting by the schema's
            // trigger `jobs_flow_requeued` when it still waits.
            "UPDATE jobs SET state = 'queued', attempts = 0, run_at = $2, started_at = NULL, \
             finished_at = NULL, lease_until = NULL, cancel_requested = false \
             WHERE id = $1 AND state IN ('dead', 'cancelled')",
            &[&id, &now],
        )?;
        Ok(())
    }

    fn ended_parent(
        &mut self,
        id: i64,
    ) -> std::result::Result<Option<(i64, JobState)>, postgres::Error> {
        Ok(self
            .0
            .query_opt(
                // A parent that is dead or cancelled now (whether its end
                // cancelled this job or an operator had before).
                "SELECT j.id, j.state FROM job_deps d JOIN jobs j ON j.id = d.parent \
                 JOIN jobs c ON c.id = d.child \
                 WHERE d.child = $1 AND NOT d.seq AND NOT d.met AND NOT c.run_always \
                   AND j.state IN ('dead', 'cancelled') ORDER BY j.id LIMIT 1",
                &[&id],
            )?
            .and_then(|r| Some((r.get(0), r.get::<_, String>(1).parse().ok()?))))
    }

    fn revive_children(
        &mut self,
        parents: &[i64],
    ) -> std::result::Result<Vec<i64>, postgres::Error> {
        let freed: Vec<i64> = self
            .0
            .query(
                "WITH freed AS (UPDATE job_deps SET cut = false \
                   WHERE cut AND parent = ANY($1) RETURNING child) \
                 SELECT j.id FROM jobs j WHERE j.id IN (SELECT child FROM freed) \
                 ORDER BY j.seq_pos NULLS FIRST, j.id",
                &[&parents],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect();
        // One statement a child, in their sequences' order: the trigger that
        // puts a revived member back in its line runs after each, seeing
        // the ones before it back and the ones after it not yet (as SQLite
        // runs it row by row), so they keep their order. A child whose key
        // another job (or a twin revived just before) holds stays
        // cancelled.
        let mut revived = Vec::with_capacity(freed.len());
        for child in freed {
            let row = self.0.query_opt(
                "UPDATE jobs SET state = 'waiting', finished_at = NULL, last_error = NULL \
                 WHERE id = $1 AND state = 'cancelled' \
                   AND NOT EXISTS (SELECT 1 FROM job_deps d JOIN jobs p ON p.id = d.parent \
                     WHERE d.child = jobs.id AND NOT d.seq AND NOT d.met \
                       AND p.state IN ('dead', 'cancelled')) \
                   AND (unique_key IS NULL OR NOT EXISTS (SELECT 1 FROM jobs AS other \
                     WHERE other.unique_key = jobs.unique_key \
                       AND other.state IN ('queued', 'running', 'waiting'))) \
                 RETURNING id",
                &[&child],
            )?;
            if let Some(row) = row {
                revived.push(row.get(0));
            }
        }
        Ok(revived)
    }
}
