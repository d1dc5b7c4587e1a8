//! [`crate::store::Schedules`] on SQLite.

use crate::job::NewJob;
use crate::store::contract::Schedules;
use crate::store::contract::{CronRow, Enqueued, Result};
use crate::store::sqlite::*;
use rusqlite::params;

impl Schedules for SqliteStore {
    fn cron_start(&mut self, name: &str, slot: i64) -> Result<Option<i64>> {
        self.write("start a periodic schedule", |tx| {
            tx.prepare_cached("INSERT OR IGNORE INTO cron(name, last_slot) VALUES (?1, ?2)")?
                .execute(params![name, slot])?;
            tx.prepare_cached("SELECT last_slot FROM cron WHERE name = ?1")?
                .query_row([name], |r| r.get(0))
        })
    }

    fn cron_enqueue(
        &mut self,
        name: &str,
        slot: i64,
        job: &NewJob,
        now: i64,
    ) -> Result<Option<Enqueued>> {
        self.write("enqueue a periodic job", |tx| {
            tx.prepare_cached("INSERT OR IGNORE INTO cron(name, last_slot) VALUES (?1, NULL)")?
                .execute([name])?;
            let moved = tx
                .prepare_cached(
                    "UPDATE cron SET last_slot = ?2 \
                     WHERE name = ?1 AND (last_slot IS NULL OR last_slot < ?2)",
                )?
                .execute(params![name, slot])?;
            if moved == 0 {
                // Another daemon enqueued this slot (or a later one).
                return Ok(None);
            }
            let enqueued = insert_in(tx, job, now)?;
            tx.prepare_cached("UPDATE cron SET last_job_id = ?2 WHERE name = ?1")?
                .execute(params![name, enqueued.id()])?;
            Ok(Some(enqueued))
        })
    }

    fn cron_rows(&mut self) -> Result<Vec<CronRow>> {
        let result: rusqlite::Result<Vec<CronRow>> = (|| {
            let mut stmt = self.conn.prepare_cached(
                "SELECT cron.name, cron.last_slot, cron.last_job_id, jobs.state \
                 FROM cron LEFT JOIN jobs ON jobs.id = cron.last_job_id ORDER BY cron.name",
            )?;
            let rows = stmt.query_map([], |r| {
                let state: Option<String> = r.get(3)?;
                Ok(CronRow {
                    name: text(r, 0)?,
                    last_slot: r.get(1)?,
                    last_job_id: r.get(2)?,
                    last_job_state: state.and_then(|s| s.parse().ok()),
                })
            })?;
            rows.collect()
        })();
        result.map_err(|e| self.err("read periodic schedules", e))
    }
}
