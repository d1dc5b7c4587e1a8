//! [`crate::store::Fleet`] on PostgreSQL.

use crate::job::HandlerProcess;
use crate::store::contract::Fleet;
use crate::store::contract::{
    handlers_from_json, handlers_json, RescueScope, Rescued, Result, WorkerInfo,
};
use crate::store::postgres::*;
use crate::store::shared::{NO_CLAIM, RESCUED_WORKER as WORKER};

impl Fleet for PgStore {
    fn rescue(
        &mut self,
        scope: RescueScope<'_>,
        now: i64,
        default_max_attempts: u32,
    ) -> Result<Vec<Rescued>> {
        self.revive()?;
        // Takes back running jobs whose holder is lost: to `queued`, or `dead`
        // when no attempts are left, with a `rescued` attempt record naming the
        // lost worker. Rows another transaction holds are left for next time.
        let filter = match scope {
            RescueScope::ExpiredLeases => format!("(lease_until < $3 OR {NO_CLAIM})"),
            RescueScope::ExpiredLeasesOfOthers(_) => {
                format!("((lease_until < $3 AND worker IS DISTINCT FROM $4) OR {NO_CLAIM})")
            }
            RescueScope::Workers([]) => return Ok(Vec::new()),
            RescueScope::Workers(_) => "worker = ANY($3)".to_string(),
        };
        let reason = scope.reason();
        let workers: Vec<String> = match scope {
            RescueScope::Workers(w) => w.to_vec(),
            RescueScope::ExpiredLeases | RescueScope::ExpiredLeasesOfOthers(_) => Vec::new(),
        };
        let fail = self.failing("rescue");
        let mut tx = self.client.transaction().map_err(&fail)?;
        let sql = format!(
            "UPDATE jobs SET \
               state = CASE WHEN attempts >= COALESCE(max_attempts, $2) THEN 'dead' ELSE 'queued' END, \
               finished_at = $1, lease_until = NULL, \
               last_error = 'attempt ' || attempts || ' was lost: worker ' || {WORKER} || ' {reason}' \
             WHERE id IN (SELECT id FROM jobs WHERE state = 'running' AND {filter} FOR UPDATE SKIP LOCKED) \
             RETURNING id, kind, queue, attempts, {WORKER}, state, COALESCE(started_at, $1)"
        );
        let max = i64::from(default_max_attempts);
        let rows = match scope {
            RescueScope::ExpiredLeases => tx.query(&sql, &[&now, &max, &now]),
            RescueScope::ExpiredLeasesOfOthers(me) => tx.query(&sql, &[&now, &max, &now, &me]),
            RescueScope::Workers(_) => tx.query(&sql, &[&now, &max, &workers]),
        }
        .map_err(&fail)?;
        let mut rescued = Vec::with_capacity(rows.len());
        let mut lost = Vec::with_capacity(rows.len());
        for r in &rows {
            let state: String = r.get(5);
            rescued.push(Rescued {
                id: r.get(0),
                kind: r.get(1),
                queue: r.get(2),
                attempt: r.get(3),
                worker: r.get(4),
                state: if state == "dead" {
                    JobState::Dead
                } else {
                    JobState::Queued
                },
            });
            let started: i64 = r.get(6);
            lost.push(started);
        }
        crate::store::shared::with_rescue_runs(&rescued, &lost, reason, now, |runs| {
            insert_runs(&mut tx, &mut self.statements, runs)
        })
        .map_err(&fail)?;
        tx.commit().map_err(&fail)?;
        Ok(rescued)
    }

    fn register_worker(&mut self, w: &WorkerInfo) -> Result<()> {
        self.revive()?;
        // Records a daemon (or replaces its row).
        let fail = self.failing("register worker");
        self.client
            .execute(
                "INSERT INTO workers (id, host, pid, version, started_at, heartbeat_at, queues, running) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (id) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid, \
                   version = EXCLUDED.version, started_at = EXCLUDED.started_at, \
                   heartbeat_at = EXCLUDED.heartbeat_at, queues = EXCLUDED.queues, running = EXCLUDED.running",
                &[&w.id, &w.host, &w.pid, &w.version, &w.started_at, &w.heartbeat_at, &w.queues, &w.running],
            )
            .map_err(&fail)?;
        Ok(())
    }

    fn heartbeat(
        &mut self,
        worker: &str,
        now: i64,
        running: i64,
        handlers: &[HandlerProcess],
    ) -> Result<bool> {
        self.revive()?;
        // A daemon's heartbeat.
        let fail = self.failing("heartbeat");
        let handlers = handlers_json(handlers);
        let updated = self
            .client
            .execute(
                "UPDATE workers SET heartbeat_at = $2, running = $3, handlers = $4::text::jsonb \
                 WHERE id = $1",
                &[&worker, &now, &running, &handlers],
            )
            .map_err(&fail)?;
        Ok(updated > 0)
    }

    fn deregister_worker(&mut self, worker: &str) -> Result<()> {
        self.revive()?;
        // Forgets a daemon.
        let fail = self.failing("deregister worker");
        self.client
            .execute("DELETE FROM workers WHERE id = $1", &[&worker])
            .map_err(&fail)?;
        Ok(())
    }

    fn ensure_key_index(&mut self) -> Result<bool> {
        self.revive()?;
        let fail = self.failing("build the key index");
        let exists = |client: &mut postgres::Client| -> std::result::Result<bool, postgres::Error> {
            Ok(client
                .query_one("SELECT to_regclass('jobs_ready_key') IS NOT NULL", &[])?
                .get(0))
        };
        if exists(&mut self.client).map_err(&fail)? {
            return Ok(false);
        }
        let sql = format!(
            "CREATE INDEX IF NOT EXISTS jobs_ready_key ON jobs \
             (queue, limit_key, {}, priority DESC, run_at, id) \
             WHERE state = 'queued' AND limit_key IS NOT NULL",
            cpu_kind_test()
        );
        match self.client.batch_execute(&sql) {
            Ok(()) => Ok(true),
            // Another daemon built it at the same moment.
            Err(_) if exists(&mut self.client).unwrap_or(false) => Ok(false),
            Err(e) => Err(fail(e)),
        }
    }

    fn workers(&mut self) -> Result<Vec<WorkerInfo>> {
        self.revive()?;
        // The registered daemons.
        let fail = self.failing("read workers");
        let rows = self
            .client
            .query(
                "SELECT id, host, pid, version, started_at, heartbeat_at, queues, \
                 (SELECT count(*) FROM jobs WHERE state = 'running' AND worker = workers.id), \
                 handlers::text FROM workers ORDER BY id",
                &[],
            )
            .map_err(&fail)?;
        Ok(rows
            .iter()
            .map(|r| WorkerInfo {
                id: r.get(0),
                host: r.get(1),
                pid: r.get(2),
                version: r.get(3),
                started_at: r.get(4),
                heartbeat_at: r.get(5),
                queues: r.get(6),
                running: r.get(7),
                handlers: handlers_from_json(r.get::<_, Option<String>>(8).as_deref()),
            })
            .collect())
    }
}
