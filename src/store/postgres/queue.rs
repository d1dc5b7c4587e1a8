//! [`crate::store::Queue`] on PostgreSQL.

use crate::job::{Claimed, Completion, NewJob, Pool};
use crate::store::contract::Queue;
use crate::store::contract::{Applied, Claim, Enqueued, Held, Result};
use crate::store::postgres::*;

impl Queue for PgStore {
    fn enqueue(&mut self, jobs: &[NewJob], now: i64) -> Result<Vec<Enqueued>> {
        self.revive()?;
        PgStore::enqueue(self, jobs, now)
    }

    fn claim(&mut self, claim: &Claim<'_>) -> Result<Vec<Claimed>> {
        self.revive()?;
        if claim.requests.iter().all(|r| r.limit == 0) {
            return Ok(Vec::new());
        }
        PgStore::claim(self, claim)
    }

    fn complete(&mut self, completions: &[Completion]) -> Result<Vec<Applied>> {
        self.revive()?;
        if completions.is_empty() {
            return Ok(Vec::new());
        }
        PgStore::complete(self, completions)
    }

    fn complete_and_claim(
        &mut self,
        completions: &[Completion],
        claim: &Claim<'_>,
    ) -> Result<(Vec<Applied>, Vec<Claimed>)> {
        self.revive()?;
        PgStore::complete_and_claim(self, completions, claim)
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
        match wake::listen(&self.url, queues.map(<[String]>::to_vec)) {
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

    fn renew_leases(&mut self, worker: &str, ids: &[i64], lease_until: i64) -> Result<usize> {
        self.revive()?;
        PgStore::renew_leases(self, worker, ids, lease_until)
    }

    fn cancel_requests(&mut self, worker: &str) -> Result<Vec<i64>> {
        self.revive()?;
        PgStore::cancel_requests(self, worker)
    }

    fn held_by(&mut self, worker: &str) -> Result<Vec<Held>> {
        self.revive()?;
        let fail = self.failing("read the jobs this daemon holds");
        Ok(self
            .client
            .query(
                "SELECT id, attempts, queue, kind, started_at FROM jobs \
                 WHERE state = 'running' AND worker = $1",
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
        self.queued_queues_impl()
    }

    fn next_run_at(
        &mut self,
        queues: Option<&[String]>,
        pools: &[Pool],
        after: i64,
    ) -> Result<Option<i64>> {
        self.revive()?;
        self.next_run_at_impl(queues, pools, after)
    }
}
