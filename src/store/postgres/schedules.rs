//! [`crate::store::Schedules`] on PostgreSQL.

use crate::job::NewJob;
use crate::store::contract::Schedules;
use crate::store::contract::{CronRow, Enqueued, Result};
use crate::store::postgres::*;

impl Schedules for PgStore {
    fn cron_start(&mut self, name: &str, slot: i64) -> Result<Option<i64>> {
        self.revive()?;
        let fail = self.schedules_and_reads_error("start a periodic schedule");
        let mut tx = self.client.transaction().map_err(&fail)?;
        tx.execute(
            "INSERT INTO cron (name, last_slot) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&name, &slot],
        )
        .map_err(&fail)?;
        let last: Option<i64> = tx
            .query_one("SELECT last_slot FROM cron WHERE name = $1", &[&name])
            .map_err(&fail)?
            .get(0);
        tx.commit().map_err(&fail)?;
        Ok(last)
    }

    fn cron_enqueue(
        &mut self,
        name: &str,
        slot: i64,
        job: &NewJob,
        now: i64,
    ) -> Result<Option<Enqueued>> {
        self.revive()?;
        let fail = self.schedules_and_reads_error("enqueue a periodic job");
        let mut tx = self.client.transaction().map_err(&fail)?;
        if self.dispatching {
            // A slot undone by a server crash would never run: the
            // schedule has moved past it.
            tx.batch_execute(FLUSHED).map_err(&fail)?;
        }
        tx.execute(
            "INSERT INTO cron (name, last_slot) VALUES ($1, NULL) ON CONFLICT (name) DO NOTHING",
            &[&name],
        )
        .map_err(&fail)?;
        let moved = tx
            .execute(
                "UPDATE cron SET last_slot = $2 WHERE name = $1 AND (last_slot IS NULL OR last_slot < $2)",
                &[&name, &slot],
            )
            .map_err(&fail)?;
        if moved == 0 {
            // Another daemon enqueued this slot (or a later one).
            return Ok(None);
        }
        let enqueued = insert_jobs(
            &mut tx,
            &mut self.statements,
            std::slice::from_ref(job),
            now,
        )
        .map_err(&fail)?[0];
        tx.execute(
            "UPDATE cron SET last_job_id = $2 WHERE name = $1",
            &[&name, &enqueued.id()],
        )
        .map_err(&fail)?;
        tx.commit().map_err(&fail)?;
        Ok(Some(enqueued))
    }

    fn cron_rows(&mut self) -> Result<Vec<CronRow>> {
        self.revive()?;
        let fail = self.schedules_and_reads_error("read periodic schedules");
        Ok(self
            .client
            .query(
                "SELECT cron.name, cron.last_slot, cron.last_job_id, jobs.state \
                 FROM cron LEFT JOIN jobs ON jobs.id = cron.last_job_id ORDER BY cron.name",
                &[],
            )
            .map_err(&fail)?
            .iter()
            .map(|r| CronRow {
                name: r.get(0),
                last_slot: r.get(1),
                last_job_id: r.get(2),
                last_job_state: r.get::<_, Option<String>>(3).and_then(|s| s.parse().ok()),
            })
            .collect())
    }
}
