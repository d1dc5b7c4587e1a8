//! [`crate::store::Schedules`] on PostgreSQL.

use crate::job::NewJob;
use crate::store::contract::Schedules;
use crate::store::contract::{CronRow, Enqueued, Result};
use crate::store::postgres::*;

impl Schedules for PgStore {
    fn cron_start(&mut self, name: &str, slot: i64) -> Result<Option<i64>> {
        self.revive()?;
        self.cron_start_impl(name, slot)
    }

    fn cron_enqueue(
        &mut self,
        name: &str,
        slot: i64,
        job: &NewJob,
        now: i64,
    ) -> Result<Option<Enqueued>> {
        self.revive()?;
        self.cron_enqueue_impl(name, slot, job, now)
    }

    fn cron_rows(&mut self) -> Result<Vec<CronRow>> {
        self.revive()?;
        self.cron_rows_impl()
    }
}
