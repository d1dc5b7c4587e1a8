//! [`crate::store::Fleet`] on SQLite.

use crate::job::HandlerProcess;
use crate::job::JobState;
use crate::store::contract::Fleet;
use crate::store::contract::{handlers_json, RescueScope, Rescued, Result, WorkerInfo};
use crate::store::shared::{NO_CLAIM, RESCUED_WORKER as WORKER};
use crate::store::sqlite::*;
use rusqlite::{params, params_from_iter};

impl Fleet for SqliteStore {
    fn rescue(
        &mut self,
        scope: RescueScope<'_>,
        now: i64,
        default_max_attempts: u32,
    ) -> Result<Vec<Rescued>> {
        self.write("rescue", |tx| {
            let (filter, args): (String, Vec<rusqlite::types::Value>) = match scope {
                RescueScope::ExpiredLeases => (
                    format!("(lease_until < ?3 OR {NO_CLAIM})"),
                    vec![rusqlite::types::Value::Integer(now)],
                ),
                RescueScope::ExpiredLeasesOfOthers(me) => (
                    format!("((lease_until < ?3 AND worker IS NOT ?4) OR {NO_CLAIM})"),
                    vec![
                        rusqlite::types::Value::Integer(now),
                        rusqlite::types::Value::Text(me.to_string()),
                    ],
                ),
                RescueScope::Workers([]) => return Ok(Vec::new()),
                RescueScope::Workers(workers) => (
                    format!(
                        "worker IN ({})",
                        (0..workers.len())
                            .map(|i| format!("?{}", i + 3))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    workers
                        .iter()
                        .map(|w| rusqlite::types::Value::Text(w.clone()))
                        .collect(),
                ),
            };
            let reason = scope.reason();
            let sql = format!(
                "UPDATE jobs SET \
                   state = CASE WHEN attempts >= COALESCE(max_attempts, ?2) THEN 'dead' ELSE 'queued' END, \
                   finished_at = ?1, lease_until = NULL, \
                   last_error = 'attempt ' || attempts || ' was lost: worker ' || {WORKER} || ' {reason}' \
                 WHERE state = 'running' AND {filter} \
                 RETURNING id, kind, queue, attempts, {WORKER}, state, started_at"
            );
            let mut all: Vec<rusqlite::types::Value> = vec![
                rusqlite::types::Value::Integer(now),
                rusqlite::types::Value::Integer(i64::from(default_max_attempts)),
            ];
            all.extend(args);
            let mut rescued = Vec::new();
            let mut lost = Vec::new();
            {
                let mut stmt = tx.prepare(&sql)?;
                let mut rows = stmt.query(params_from_iter(all.iter()))?;
                while let Some(row) = rows.next()? {
                    let state: String = row.get(5)?;
                    let job = Rescued {
                        id: row.get(0)?,
                        kind: text(row, 1)?,
                        queue: text(row, 2)?,
                        attempt: row.get(3)?,
                        worker: text(row, 4)?,
                        state: if state == "dead" {
                            JobState::Dead
                        } else {
                            JobState::Queued
                        },
                    };
                    let started: Option<i64> = row.get(6)?;
                    lost.push(started.unwrap_or(now));
                    rescued.push(job);
                }
            }
            crate::store::shared::with_rescue_runs(&rescued, &lost, reason, now, |runs| insert_runs(tx, runs))?;
            Ok(rescued)
        })
    }

    fn register_worker(&mut self, w: &WorkerInfo) -> Result<()> {
        self.write("register worker", |tx| {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO workers (id, host, pid, version, started_at, heartbeat_at, \
                 queues, running) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                w.id,
                w.host,
                w.pid,
                w.version,
                w.started_at,
                w.heartbeat_at,
                w.queues,
                w.running
            ])?;
            Ok(())
        })
    }

    fn heartbeat(
        &mut self,
        worker: &str,
        now: i64,
        running: i64,
        handlers: &[HandlerProcess],
    ) -> Result<bool> {
        let handlers = handlers_json(handlers);
        self.write("heartbeat", |tx| {
            let updated = tx
                .prepare_cached(
                    "UPDATE workers SET heartbeat_at = ?2, running = ?3, handlers = ?4 WHERE id = ?1",
                )?
                .execute(params![worker, now, running, handlers])?;
            Ok(updated > 0)
        })
    }

    fn deregister_worker(&mut self, worker: &str) -> Result<()> {
        self.write("deregister worker", |tx| {
            tx.prepare_cached("DELETE FROM workers WHERE id = ?1")?
                .execute([worker])?;
            Ok(())
        })
    }

    fn ensure_key_index(&mut self) -> Result<bool> {
        let found: i64 = self
            .conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'jobs_ready_key'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err("look for the key index", e))?;
        if found > 0 {
            return Ok(false);
        }
        let sql = crate::store::sqlite::schema::ready_key_index();
        self.write("build the key index", |tx| tx.execute_batch(&sql))?;
        Ok(true)
    }

    fn workers(&mut self) -> Result<Vec<WorkerInfo>> {
        let result: rusqlite::Result<Vec<WorkerInfo>> = (|| {
            self.conn
                .prepare_cached(
                    "SELECT id, host, pid, version, started_at, heartbeat_at, queues, \
                     (SELECT count(*) FROM jobs WHERE state = 'running' AND worker = workers.id), \
                 handlers FROM workers ORDER BY id",
                )?
                .query_map([], worker_from_row)?
                .collect()
        })();
        result.map_err(|e| self.err("read workers", e))
    }
}
