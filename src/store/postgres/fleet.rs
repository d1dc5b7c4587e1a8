//! [`crate::store::Fleet`] on PostgreSQL.

use crate::store::contract::Fleet;
use crate::store::contract::{RescueScope, Rescued, Result, WorkerInfo};
use crate::store::postgres::*;

impl Fleet for PgStore {
    fn rescue(
        &mut self,
        scope: RescueScope<'_>,
        now: i64,
        default_max_attempts: u32,
    ) -> Result<Vec<Rescued>> {
        self.revive()?;
        PgStore::rescue(self, scope, now, default_max_attempts)
    }

    fn register_worker(&mut self, worker: &WorkerInfo) -> Result<()> {
        self.revive()?;
        PgStore::register_worker(self, worker)
    }

    fn heartbeat(&mut self, worker: &str, now: i64, running: i64) -> Result<()> {
        self.revive()?;
        PgStore::heartbeat(self, worker, now, running)
    }

    fn deregister_worker(&mut self, worker: &str) -> Result<()> {
        self.revive()?;
        PgStore::deregister_worker(self, worker)
    }

    fn workers(&mut self) -> Result<Vec<WorkerInfo>> {
        self.revive()?;
        PgStore::workers(self)
    }
}
