//! [`crate::store::Admin`] on PostgreSQL.

use crate::store::contract::Admin;
use crate::store::contract::{BulkRetry, CancelResult, PruneCutoffs, Pruned, Result, RetryResult};
use crate::store::postgres::*;

impl Admin for PgStore {
    fn migrate(&mut self) -> Result<(i64, i64)> {
        self.revive()?;
        PgStore::migrate(self)
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
        PgStore::cancel(self, ids, now)
    }

    fn retry(&mut self, ids: &[i64], now: i64) -> Result<Vec<RetryResult>> {
        self.revive()?;
        PgStore::retry(self, ids, now)
    }

    fn retry_dead(&mut self, queue: Option<&str>, now: i64) -> Result<BulkRetry> {
        self.revive()?;
        PgStore::retry_dead(self, queue, now)
    }

    fn prune_batch(&mut self, cutoffs: &PruneCutoffs, batch: usize) -> Result<Pruned> {
        self.revive()?;
        PgStore::prune_batch(self, cutoffs, batch)
    }

    fn set_paused(&mut self, queues: &[String], paused: bool, now: i64) -> Result<()> {
        self.revive()?;
        PgStore::set_paused(self, queues, paused, now)
    }
}
