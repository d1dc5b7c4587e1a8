//! [`crate::store::Queue`] on SQLite.

use crate::job::{Claimed, Completion, NewJob, Pool};
use crate::store::contract::Queue;
use crate::store::contract::{Applied, Claim, Enqueued, Held, Result, Stepped};
use crate::store::shared::earliest;
use crate::store::sqlite::*;
use claim::claim_in;
use crossbeam_channel::Receiver;
use rusqlite::params;
use schema::cpu_kind_test;

impl Queue for SqliteStore {
    fn enqueue(&mut self, jobs: &[NewJob], now: i64) -> Result<Vec<Enqueued>> {
        self.write("enqueue", |tx| {
            jobs.iter().map(|job| insert_in(tx, job, now)).collect()
        })
    }

    fn claim(&mut self, claim: &Claim<'_>) -> Result<Vec<Claimed>> {
        if claim.requests.iter().all(|r| r.limit == 0) {
            return Ok(Vec::new());
        }
        let seen = std::sync::Arc::clone(&self.keys_seen);
        self.write("claim", |tx| claim_in(tx, claim, &seen))
    }

    fn complete(&mut self, completions: &[Completion]) -> Result<Vec<Applied>> {
        if completions.is_empty() {
            return Ok(Vec::new());
        }
        if completions.iter().any(|c| c.block.is_some()) {
            self.keys_seen.forget();
        }
        self.write("complete", |tx| complete_in(tx, completions))
    }

    fn complete_and_claim(&mut self, completions: &[Completion], claim: &Claim<'_>) -> Stepped {
        let claiming = claim.requests.iter().any(|r| r.limit > 0);
        if completions.is_empty() && !claiming {
            return Stepped::Together(Ok((Vec::new(), Vec::new())));
        }
        // A block written here is seen by this claim.
        if completions.iter().any(|c| c.block.is_some()) {
            self.keys_seen.forget();
        }
        let seen = std::sync::Arc::clone(&self.keys_seen);
        Stepped::Together(self.write("complete and claim", |tx| {
            let applied = complete_in(tx, completions)?;
            let jobs = if claiming {
                claim_in(tx, claim, &seen)?
            } else {
                Vec::new()
            };
            Ok((applied, jobs))
        }))
    }

    fn renew_leases(&mut self, worker: &str, ids: &[i64], lease_until: i64) -> Result<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.write("renew leases", |tx| {
            let mut stmt = tx.prepare_cached(
                "UPDATE jobs SET lease_until = ?1 WHERE id = ?2 AND state = 'running' AND worker = ?3",
            )?;
            let mut renewed = 0;
            for id in ids {
                renewed += stmt.execute(params![lease_until, id, worker])?;
            }
            Ok(renewed)
        })
    }

    fn set_progress(&mut self, worker: &str, reports: &[(i64, i64, f64, String)]) -> Result<()> {
        if reports.is_empty() {
            return Ok(());
        }
        self.write("write progress", |tx| {
            let mut stmt = tx.prepare_cached(
                "UPDATE jobs SET progress = json_object('attempt', ?3, 'fraction', ?4, 'note', ?5) \
                 WHERE id = ?1 AND state = 'running' AND worker = ?2 AND attempts = ?3",
            )?;
            for (id, attempt, fraction, note) in reports {
                stmt.execute(params![id, worker, attempt, fraction, note])?;
            }
            Ok(())
        })
    }

    fn held_by(&mut self, worker: &str) -> Result<Vec<Held>> {
        let result: rusqlite::Result<Vec<Held>> = (|| {
            self.conn
                .prepare_cached(
                    "SELECT id, attempts, queue, kind, started_at FROM jobs INDEXED BY jobs_running \
                     WHERE state = 'running' AND worker = ?1 AND started_at IS NOT NULL AND lease_until IS NOT NULL",
                )?
                .query_map([worker], |r| {
                    Ok(Held {
                        id: r.get(0)?,
                        attempt: r.get(1)?,
                        queue: text(r, 2)?,
                        kind: text(r, 3)?,
                        started_at: r.get::<_, Option<i64>>(4)?.unwrap_or(0),
                    })
                })?
                .collect()
        })();
        result.map_err(|e| self.err("read the jobs this daemon holds", e))
    }

    fn cancel_requests(&mut self, worker: &str) -> Result<Vec<i64>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id FROM jobs INDEXED BY jobs_running \
                 WHERE state = 'running' AND worker = ?1 AND cancel_requested = 1",
            )
            .map_err(|e| self.err("read cancel requests", e))?;
        let ids = stmt
            .query_map([worker], |r| r.get(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<i64>>>());
        drop(stmt);
        ids.map_err(|e| self.err("read cancel requests", e))
    }

    fn queued_queues(&mut self) -> Result<Vec<String>> {
        let result: rusqlite::Result<Vec<Vec<u8>>> = (|| {
            self.conn
                .prepare_cached(crate::store::shared::QUEUED_QUEUES_SQL)?
                .query_map([], |r| Ok(r.get_ref(0)?.as_bytes()?.to_vec()))?
                .collect()
        })();
        let mut names = Vec::new();
        for bytes in result.map_err(|e| self.err("read queues", e))? {
            match String::from_utf8(bytes) {
                Ok(name) => names.push(name),
                Err(e) => self.bury_undecodable_queue(e.as_bytes())?,
            }
        }
        Ok(names)
    }

    fn next_run_at(
        &mut self,
        queues: Option<&[String]>,
        pools: &[Pool],
        after: i64,
    ) -> Result<Option<i64>> {
        let queues = self.these_or_queued(queues)?;
        let mut next: Option<i64> = None;
        for queue in &queues {
            for &pool in pools {
                let cpu = i32::from(pool == Pool::Cpu);
                let within = format!(
                    "state = 'queued' AND queue = ?1 AND {} = {cpu}",
                    cpu_kind_test()
                );
                let at: Option<i64> = self
                    .conn
                    .prepare_cached(&crate::store::shared::next_run_at_sql(&within, "?2"))
                    .and_then(|mut s| s.query_row(params![queue, after], |r| r.get(0)))
                    .map_err(|e| self.err("read next run_at", e))?;
                next = earliest(next, at);
            }
        }
        // A key that opens again (its rate's next start, a block's end)
        // may let a waiting job start then.
        if self.keys_seen.none_closed(after) {
            return Ok(next);
        }
        let opens: Option<i64> = self
            .conn
            .prepare_cached(crate::store::shared::KEY_OPENS_SQL)
            .and_then(|mut s| s.query_row([after], |r| r.get(0)))
            .map_err(|e| self.err("read next run_at", e))?;
        Ok(earliest(next, opens))
    }

    fn change_counter(&mut self) -> Result<i64> {
        self.data_version()
    }

    fn watch_commits(&self, _queues: Option<&[String]>) -> Option<Receiver<()>> {
        let file = wake::wal_path(&self.path);
        match wake::watch(&file) {
            Ok(rx) => Some(rx),
            Err(e) => {
                crate::event!(
                    Warn,
                    "pickup.fallback",
                    file:% = file.display(),
                    error:% = e,
                    detail = "cannot watch for commits; new work is noticed by polling"
                );
                None
            }
        }
    }
}
