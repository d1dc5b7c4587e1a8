//! [`crate::store::Admin`] on PostgreSQL.

use crate::store::contract::Admin;
use crate::store::contract::{BulkRetry, CancelResult, PruneCutoffs, Pruned, Result, RetryResult};
use crate::store::postgres::*;

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
        Ok((before, SCHEMA_VERSION))
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
        // Cancels jobs: queued ones at once, running ones by request.
        let fail = self.failing("cancel");
        let mut tx = self.client.transaction().map_err(&fail)?;
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            let queued = tx
                .execute(
                    "UPDATE jobs SET state = 'cancelled', finished_at = $2, \
                     last_error = 'cancelled by an operator before it ran' \
                     WHERE id = $1 AND state = 'queued'",
                    &[&id, &now],
                )
                .map_err(&fail)?;
            if queued == 1 {
                out.push(CancelResult::Cancelled);
                continue;
            }
            let running = tx
                .execute(
                    "UPDATE jobs SET cancel_requested = true WHERE id = $1 AND state = 'running'",
                    &[&id],
                )
                .map_err(&fail)?;
            if running == 1 {
                out.push(CancelResult::Requested);
                continue;
            }
            let state = tx
                .query_opt("SELECT state FROM jobs WHERE id = $1", &[&id])
                .map_err(&fail)?
                .map(|r| r.get::<_, String>(0));
            out.push(match state.and_then(|s| s.parse().ok()) {
                Some(state) => CancelResult::AlreadyFinal(state),
                None => CancelResult::NotFound,
            });
        }
        tx.commit().map_err(&fail)?;
        Ok(out)
    }

    fn retry(&mut self, ids: &[i64], now: i64) -> Result<Vec<RetryResult>> {
        self.revive()?;
        // Puts dead or cancelled jobs back to `queued` with attempts reset.
        let fail = self.failing("retry");
        let mut tx = self.client.transaction().map_err(&fail)?;
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            let state: Option<JobState> = tx
                .query_opt("SELECT state FROM jobs WHERE id = $1", &[&id])
                .map_err(&fail)?
                .and_then(|r| r.get::<_, String>(0).parse().ok());
            let Some(state) = state else {
                out.push(RetryResult::NotFound);
                continue;
            };
            if !matches!(state, JobState::Dead | JobState::Cancelled) {
                out.push(RetryResult::WrongState(state));
                continue;
            }
            let holder = tx
                .query_opt(
                    "SELECT other.id FROM jobs AS this JOIN jobs AS other \
                     ON other.unique_key = this.unique_key \
                     WHERE this.id = $1 AND other.state IN ('queued', 'running')",
                    &[&id],
                )
                .map_err(&fail)?;
            if let Some(holder) = holder {
                out.push(RetryResult::UniqueKeyTaken(holder.get(0)));
                continue;
            }
            tx.execute(
                "UPDATE jobs SET state = 'queued', attempts = 0, run_at = $2, started_at = NULL, \
                 finished_at = NULL, lease_until = NULL, cancel_requested = false \
                 WHERE id = $1 AND state IN ('dead', 'cancelled')",
                &[&id, &now],
            )
            .map_err(&fail)?;
            out.push(RetryResult::Queued);
        }
        tx.commit().map_err(&fail)?;
        Ok(out)
    }

    fn retry_dead(&mut self, queue: Option<&str>, now: i64) -> Result<BulkRetry> {
        self.revive()?;
        // Puts every dead job (of one queue, or all) back to `queued`, in
        // batches; a job whose unique key is taken stays dead.
        let fail = self.failing("retry dead jobs");
        let mut total = BulkRetry::default();
        let mut after = 0i64;
        loop {
            let mut tx = self.client.transaction().map_err(&fail)?;
            let ids: Vec<i64> = tx
                .query(
                    "SELECT id FROM jobs WHERE state = 'dead' AND id > $1 \
                     AND ($2::text IS NULL OR queue = $2) ORDER BY id LIMIT $3",
                    &[&after, &queue, &BULK_RETRY_BATCH],
                )
                .map_err(&fail)?
                .iter()
                .map(|r| r.get(0))
                .collect();
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
                     AND other.state IN ('queued', 'running')) \
                   AND NOT EXISTS (SELECT 1 FROM jobs AS twin WHERE twin.unique_key = jobs.unique_key \
                     AND twin.id = ANY($1) AND twin.state = 'dead' AND twin.id < jobs.id)))";
            let mut tries = 0;
            let queued = loop {
                // A client that enqueues one of these keys while the
                // statement runs makes it fail on the index; the next try
                // sees that job as the holder.
                let mut attempt = tx.savepoint("requeue").map_err(&fail)?;
                match attempt.execute(requeue, &[&ids, &now]) {
                    Ok(n) => {
                        attempt.commit().map_err(&fail)?;
                        break n;
                    }
                    // Dropping the savepoint rolls it back.
                    Err(e)
                        if e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION)
                            && tries < RETRY_DEAD_RACES =>
                    {
                        tries += 1;
                    }
                    Err(e) => return Err(fail(e)),
                }
            };
            tx.commit().map_err(&fail)?;
            total.queued += queued;
            total.skipped_unique += ids.len() as u64 - queued;
            match ids.last() {
                Some(&last) if ids.len() as i64 == BULK_RETRY_BATCH => after = last,
                _ => return Ok(total),
            }
        }
    }

    fn prune_batch(&mut self, cutoffs: &PruneCutoffs, batch: usize) -> Result<Pruned> {
        self.revive()?;
        // Deletes up to `batch` final jobs older than their cutoff, with
        // their attempt records.
        let fail = self.failing("prune");
        let mut tx = self.client.transaction().map_err(&fail)?;
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
            // A literal state, so the planner uses its partial index.
            let ids: Vec<i64> = tx
                .query(
                    &format!(
                        "SELECT id FROM jobs WHERE state = '{state}' AND finished_at < $1 LIMIT $2"
                    ),
                    &[&cutoff, &left],
                )
                .map_err(&fail)?
                .iter()
                .map(|r| r.get(0))
                .collect();
            pruned.runs += tx
                .execute("DELETE FROM job_runs WHERE job_id = ANY($1)", &[&ids])
                .map_err(&fail)?;
            pruned.jobs += tx
                .execute(
                    "DELETE FROM jobs WHERE id = ANY($1) AND state = $2",
                    &[&ids, &state],
                )
                .map_err(&fail)?;
            left -= ids.len() as i64;
        }
        tx.commit().map_err(&fail)?;
        Ok(pruned)
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
