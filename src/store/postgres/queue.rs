//! [`crate::store::Queue`] on PostgreSQL.

use crate::job::{Claimed, Completion, NewJob, Pool};
use crate::store::contract::Queue;
use crate::store::contract::{Applied, Claim, Enqueued, Held, Result, Stepped};
use crate::store::postgres::*;
use claim::claim_in;

impl Queue for PgStore {
    fn enqueue(&mut self, jobs: &[NewJob], now: i64) -> Result<Vec<Enqueued>> {
        self.revive()?;
        // Inserts jobs in one transaction, each de-duplicated on its
        // `unique_key` against queued and running jobs.
        let fail = self.failing("enqueue");
        let mut tx = self.client.transaction().map_err(&fail)?;
        let out = insert_jobs(&mut tx, &mut self.statements, jobs, now).map_err(&fail)?;
        tx.commit().map_err(&fail)?;
        Ok(out)
    }

    fn claim(&mut self, claim: &Claim<'_>) -> Result<Vec<Claimed>> {
        self.revive()?;
        if claim.requests.iter().all(|r| r.limit == 0) {
            return Ok(Vec::new());
        }
        // Claims ready jobs for `claim`'s requests in one transaction. Rows
        // another claimer has locked are skipped, never waited for, so many
        // daemons claim side by side and never take the same attempt.
        let fail = self.failing("claim");
        if let Some(jobs) = claim::claim_plain(
            &mut self.client,
            &mut self.statements,
            claim,
            &self.keys_seen,
        ) {
            return jobs.map_err(&fail);
        }
        let mut tx = self.client.transaction().map_err(&fail)?;
        let jobs =
            claim_in(&mut tx, &mut self.statements, claim, &self.keys_seen).map_err(&fail)?;
        tx.commit().map_err(&fail)?;
        Ok(jobs)
    }

    fn complete(&mut self, completions: &[Completion]) -> Result<Vec<Applied>> {
        self.revive()?;
        if completions.is_empty() {
            return Ok(Vec::new());
        }
        // Writes attempt outcomes in one transaction, each fenced by state,
        // worker and attempt (a late outcome after a rescue changes nothing),
        // with an attempt record for each that applied (see `complete_in`).
        let fail = self.failing("complete");
        let mut tx = self.client.transaction().map_err(&fail)?;
        if self.dispatching {
            tx.batch_execute(FLUSHED).map_err(&fail)?;
        }
        let applied = complete_in(&mut tx, &mut self.statements, completions).map_err(&fail)?;
        tx.commit().map_err(&fail)?;
        if completions.iter().any(|c| c.block.is_some()) {
            self.keys_seen.forget();
        }
        Ok(applied)
    }

    fn complete_and_claim(&mut self, completions: &[Completion], claim: &Claim<'_>) -> Stepped {
        let claiming = claim.requests.iter().any(|r| r.limit > 0);
        if completions.is_empty() {
            return Stepped::Together(self.claim(claim).map(|jobs| (Vec::new(), jobs)));
        }
        // Outcomes alone have nothing to overlap, and a block must be seen
        // by the claim after it: one transaction, as on SQLite.
        if !claiming || completions.iter().any(|c| c.block.is_some()) {
            return Stepped::Together(self.together(completions, claim));
        }
        let Some(mut writer) = self.outcome_writer() else {
            return Stepped::Together(self.together(completions, claim));
        };
        // The outcomes go out on the second session while this one claims:
        // each part is a fenced transaction of its own, the outcomes still
        // one group commit.
        let step = std::thread::scope(|scope| {
            let written = std::thread::Builder::new()
                .name("jobd-outcomes".into())
                .spawn_scoped(scope, || writer.complete(completions))
                .ok()?;
            let claimed = self.claim(claim);
            Some((written.join(), claimed))
        });
        let Some((applied, claimed)) = step else {
            // No thread to be had (a tasks limit reached): this step on
            // one session, as one transaction, rather than a panic.
            self.outcomes = Some(writer);
            return Stepped::Together(self.together(completions, claim));
        };
        // A session that is gone and could not be opened again is dropped:
        // outcomes then share this session's step until a new one opens
        // (every step would otherwise knock at a server refusing it).
        if writer.client.is_closed() {
            self.outcomes_retry = Some(std::time::Instant::now() + OUTCOMES_RETRY);
        } else {
            self.outcomes = Some(writer);
        }
        let applied = applied.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        Stepped::Apart { applied, claimed }
    }

    fn change_counter(&mut self) -> Result<i64> {
        self.revive()?;
        // Moves on every write anywhere in the cluster: a cheap "look
        // again" signal; LISTEN/NOTIFY is the precise one.
        let fail = self.failing("read the change counter");
        Ok(self
            .client
            .query_one("SELECT (pg_current_wal_lsn() - '0/0')::bigint", &[])
            .map_err(&fail)?
            .get(0))
    }

    fn watch_commits(&self, queues: Option<&[String]>) -> Option<crossbeam_channel::Receiver<()>> {
        let listening = std::sync::Arc::clone(&self.listening);
        match wake::listen_flagged(&self.url, queues.map(<[String]>::to_vec), listening) {
            Ok(rx) => Some(rx),
            Err(e) => {
                crate::store::error::log_trouble(
                    "listen for new jobs",
                    &e,
                    "new work is noticed by polling",
                );
                None
            }
        }
    }

    fn wakes_are_commits(&self) -> bool {
        true
    }

    fn announces_releases(&self) -> bool {
        // Not while the LISTEN connection is lost: NOTIFYs are not kept.
        self.listening.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn claim_ahead(&self) -> usize {
        // Each step costs round trips and a WAL flush, so bigger ones pay:
        // with 8 threads, 512 jobs per claim drained 1.2–2× faster than
        // 128, with a third less server CPU per job.
        63
    }

    fn serve_dispatcher(&mut self) -> Result<()> {
        self.revive()?;
        self.dispatching = true;
        let fail = self.failing("connect");
        self.client.batch_execute(UNFLUSHED).map_err(&fail)
    }

    fn renew_leases(&mut self, worker: &str, ids: &[i64], lease_until: i64) -> Result<usize> {
        self.revive()?;
        // Extends the leases of `ids` held by `worker`; returns how many were.
        if ids.is_empty() {
            return Ok(0);
        }
        let fail = self.failing("renew leases");
        let renewed = self
            .client
            .execute(
                "UPDATE jobs SET lease_until = $1 \
                 WHERE id = ANY($2) AND state = 'running' AND worker = $3",
                &[&lease_until, &ids, &worker],
            )
            .map_err(&fail)?;
        Ok(renewed as usize)
    }

    fn set_progress(&mut self, worker: &str, reports: &[(i64, i64, f64, String)]) -> Result<()> {
        if reports.is_empty() {
            return Ok(());
        }
        self.revive()?;
        let fail = self.failing("write progress");
        let ids: Vec<i64> = reports.iter().map(|r| r.0).collect();
        let attempts: Vec<i64> = reports.iter().map(|r| r.1).collect();
        let fractions: Vec<f64> = reports.iter().map(|r| r.2).collect();
        let notes: Vec<&str> = reports.iter().map(|r| r.3.as_str()).collect();
        self.client
            .execute(
                "UPDATE jobs SET progress = jsonb_build_object('attempt', r.attempt, \
                   'fraction', r.fraction, 'note', r.note) \
                 FROM unnest($1::bigint[], $2::bigint[], $3::float8[], $4::text[]) \
                   AS r(id, attempt, fraction, note) \
                 WHERE jobs.id = r.id AND jobs.state = 'running' AND jobs.worker = $5 \
                   AND jobs.attempts = r.attempt",
                &[&ids, &attempts, &fractions, &notes, &worker],
            )
            .map_err(&fail)?;
        Ok(())
    }

    fn cancel_requests(&mut self, worker: &str) -> Result<Vec<i64>> {
        self.revive()?;
        // Running jobs of `worker` that an operator asked to cancel.
        let fail = self.failing("read cancel requests");
        Ok(self
            .client
            .query(
                "SELECT id FROM jobs WHERE state = 'running' AND worker = $1 AND cancel_requested",
                &[&worker],
            )
            .map_err(&fail)?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn held_by(&mut self, worker: &str) -> Result<Vec<Held>> {
        self.revive()?;
        let fail = self.failing("read the jobs this daemon holds");
        Ok(self
            .client
            .query(
                "SELECT id, attempts, queue, kind, started_at FROM jobs \
                 WHERE state = 'running' AND worker = $1 AND started_at IS NOT NULL AND lease_until IS NOT NULL",
                &[&worker],
            )
            .map_err(&fail)?
            .iter()
            .map(|r| Held {
                id: r.get(0),
                attempt: r.get(1),
                queue: r.get(2),
                kind: r.get(3),
                started_at: r.get::<_, Option<i64>>(4).unwrap_or(0),
            })
            .collect())
    }

    fn queued_queues(&mut self) -> Result<Vec<String>> {
        self.revive()?;
        let fail = self.schedules_and_reads_error("read queues");
        let statement = self
            .statements
            .get(&mut self.client, queued_queues_sql())
            .map_err(&fail)?;
        Ok(self
            .client
            // A DISTINCT here read every queued row on every claim.
            .query(&statement, &[])
            .map_err(&fail)?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn next_run_at(
        &mut self,
        queues: Option<&[String]>,
        pools: &[Pool],
        after: i64,
    ) -> Result<Option<i64>> {
        self.revive()?;
        let queues = self.these_or_queued(queues)?;
        let fail = self.schedules_and_reads_error("read next run_at");
        let mut next: Option<i64> = None;
        for queue in &queues {
            for &pool in pools {
                let statement = self
                    .statements
                    .get(&mut self.client, &next_run_at_sql(pool))
                    .map_err(&fail)?;
                let at: Option<i64> = self
                    .client
                    .query_one(&statement, &[queue, &after])
                    .map_err(&fail)?
                    .get(0);
                next = crate::store::shared::earliest(next, at);
            }
        }
        // A key that opens again (its rate's next start, a block's end)
        // may let a waiting job start then.
        if self.keys_seen.none_closed(after) {
            return Ok(next);
        }
        let opens: Option<i64> = self
            .client
            .query_one(crate::store::shared::KEY_OPENS_SQL_PG, &[&after])
            .map_err(&fail)?
            .get(0);
        Ok(crate::store::shared::earliest(next, opens))
    }
}

impl PgStore {
    /// Outcomes, then the claim, in one transaction on this session.
    fn together(
        &mut self,
        completions: &[Completion],
        claim: &Claim<'_>,
    ) -> Result<(Vec<Applied>, Vec<Claimed>)> {
        self.revive()?;
        let fail = self.failing("complete and claim");
        let mut tx = self.client.transaction().map_err(&fail)?;
        if self.dispatching {
            tx.batch_execute(FLUSHED).map_err(&fail)?;
        }
        let applied = complete_in(&mut tx, &mut self.statements, completions).map_err(&fail)?;
        if completions.iter().any(|c| c.block.is_some()) {
            self.keys_seen.forget();
        }
        let jobs =
            claim_in(&mut tx, &mut self.statements, claim, &self.keys_seen).map_err(&fail)?;
        tx.commit().map_err(&fail)?;
        Ok((applied, jobs))
    }
}
