//! [`crate::store::Reads`] on SQLite.

use crate::job::{Job, JobState};
use crate::store::contract::Reads;
use crate::store::contract::{
    Backlog, BatchInfo, JobRun, ListFilter, Relatives, Result, RunTally, Stats, RELATIVES_SHOWN,
};
use crate::store::shared::{earliest, StatsBuilder, PERCENTILE_SAMPLE};
use crate::store::sqlite::*;
use rusqlite::{params, OptionalExtension};
use std::path::Path;

impl Reads for SqliteStore {
    fn paused_queues(&mut self) -> Result<Vec<String>> {
        let result: rusqlite::Result<Vec<String>> = (|| {
            self.conn
                .prepare_cached("SELECT name FROM queues WHERE paused = 1 ORDER BY name")?
                .query_map([], |r| text(r, 0))?
                .collect()
        })();
        result.map_err(|e| self.err("read paused queues", e))
    }

    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn file(&self) -> Option<&Path> {
        Some(&self.path)
    }

    fn backlog(&mut self, queues: Option<&[String]>, now: i64) -> Result<Backlog> {
        let queues = self.these_or_queued(queues)?;
        let mut backlog = Backlog::default();
        for queue in &queues {
            let (ready, oldest): (i64, Option<i64>) = self
                .conn
                .prepare_cached(
                    "SELECT count(*), min(run_at) FROM jobs INDEXED BY jobs_ready \
                     WHERE state = 'queued' AND queue = ?1 AND run_at <= ?2",
                )
                .and_then(|mut s| s.query_row(params![queue, now], |r| Ok((r.get(0)?, r.get(1)?))))
                .map_err(|e| self.err("read backlog", e))?;
            backlog.ready += ready as u64;
            backlog.oldest_ready = earliest(backlog.oldest_ready, oldest);
        }
        Ok(backlog)
    }

    fn job_counts(&mut self) -> Result<Vec<(String, JobState, u64)>> {
        let result: rusqlite::Result<Vec<(String, JobState, u64)>> = (|| {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT queue, state, count(*) FROM jobs GROUP BY queue, state")?;
            let rows = stmt.query_map([], |r| {
                let state: String = r.get(1)?;
                let state = state.parse().map_err(|e: crate::job::UnknownState| {
                    rusqlite::Error::FromSqlConversionFailure(
                        1,
                        rusqlite::types::Type::Text,
                        Box::new(e),
                    )
                })?;
                Ok((text(r, 0)?, state, r.get::<_, i64>(2)? as u64))
            })?;
            rows.collect()
        })();
        result.map_err(|e| self.err("count jobs", e))
    }

    fn job(&mut self, id: i64) -> Result<Option<Job>> {
        let result = self
            .conn
            .prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"))
            .and_then(|mut s| s.query_row([id], job_from_row).optional());
        result.map_err(|e| self.err("read job", e))
    }

    fn runs(&mut self, job_id: i64) -> Result<Vec<JobRun>> {
        let result: rusqlite::Result<Vec<JobRun>> = (|| {
            self.conn
                .prepare_cached(&format!(
                    // A job marked succeeded by hand has no place: not an attempt.
                    "SELECT {RUN_COLUMNS} FROM job_runs WHERE job_id = ?1 AND id IS NOT NULL \
                     ORDER BY attempt, id"
                ))?
                .query_map([job_id], run_from_row)?
                .collect()
        })();
        result.map_err(|e| self.err("read job runs", e))
    }

    fn batch(&mut self, name: &str) -> Result<Option<BatchInfo>> {
        let result: rusqlite::Result<Option<BatchInfo>> = (|| {
            let Some(mut info) = self
                .conn
                .prepare_cached(
                    "SELECT b.name, b.total, b.succeeded, b.dead, b.cancelled, b.sealed, \
                       b.callback_id, j.state, b.created_at, b.finished_at \
                     FROM batches b LEFT JOIN jobs j ON j.id = b.callback_id WHERE b.name = ?1",
                )?
                .query_row([name], |r| {
                    Ok(BatchInfo {
                        counts: crate::store::flows::BatchCounts {
                            name: text(r, 0)?,
                            total: r.get(1)?,
                            succeeded: r.get(2)?,
                            dead: r.get(3)?,
                            cancelled: r.get(4)?,
                        },
                        sealed: r.get::<_, i64>(5)? == 1,
                        callback: match r.get::<_, Option<i64>>(6)? {
                            Some(id) => Some((id, opt_text(r, 7)?.unwrap_or("pruned".into()))),
                            None => None,
                        },
                        created_at: r.get(8)?,
                        finished_at: r.get(9)?,
                        states: Default::default(),
                    })
                })
                .optional()?
            else {
                return Ok(None);
            };
            info.states = self
                .conn
                .prepare_cached(
                    "SELECT state, count(*) FROM jobs INDEXED BY jobs_batch \
                     WHERE batch = ?1 GROUP BY state",
                )?
                .query_map([name], |r| Ok((text(r, 0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(Some(info))
        })();
        result.map_err(|e| self.err("read a batch", e))
    }

    fn relatives(&mut self, job_id: i64) -> Result<Relatives> {
        let result: rusqlite::Result<Relatives> = (|| {
            let pair = |r: &rusqlite::Row<'_>| Ok((r.get(0)?, text(r, 1)?));
            let mut relatives = Relatives {
                parents: self
                    .conn
                    .prepare_cached(
                        "SELECT d.parent, coalesce(j.state, 'pruned') FROM job_deps d \
                         LEFT JOIN jobs j ON j.id = d.parent WHERE d.child = ?1 ORDER BY d.parent",
                    )?
                    .query_map([job_id], pair)?
                    .collect::<rusqlite::Result<_>>()?,
                children: self
                    .conn
                    .prepare_cached(
                        "SELECT d.child, j.state FROM job_deps d JOIN jobs j ON j.id = d.child \
                         WHERE d.parent = ?1 ORDER BY d.child LIMIT ?2",
                    )?
                    .query_map(params![job_id, RELATIVES_SHOWN], pair)?
                    .collect::<rusqlite::Result<_>>()?,
                ..Relatives::default()
            };
            if let Some((always, batch, callback_for, sequence)) = self
                .conn
                .prepare_cached(
                    "SELECT run_always, batch, callback_for, sequence FROM jobs WHERE id = ?1",
                )?
                .query_row([job_id], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        opt_text(r, 1)?,
                        opt_text(r, 2)?,
                        opt_text(r, 3)?,
                    ))
                })
                .optional()?
            {
                relatives.run_always = always == 1;
                relatives.batch = batch;
                relatives.callback_for = callback_for;
                relatives.sequence = sequence;
            }
            Ok(relatives)
        })();
        result.map_err(|e| self.err("read a job's parents and children", e))
    }

    fn list(&mut self, filter: &ListFilter) -> Result<Vec<Job>> {
        let result: rusqlite::Result<Vec<Job>> = (|| {
            self.conn
                .prepare_cached(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs \
                     WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR queue = ?2) \
                       AND (?3 IS NULL OR kind = ?3) AND (?5 IS NULL OR id < ?5) \
                     ORDER BY id DESC LIMIT ?4"
                ))?
                .query_map(
                    params![
                        filter.state.map(|s| s.as_str()),
                        filter.queue,
                        filter.kind,
                        filter.limit as i64,
                        filter.before
                    ],
                    job_from_row,
                )?
                .collect()
        })();
        result.map_err(|e| self.err("list jobs", e))
    }

    fn last_run_id(&mut self) -> Result<i64> {
        let result = self.conn.query_row(&RUN_ORDER.last_sql(), [], |r| r.get(0));
        result.map_err(|e| self.err("read job runs", e))
    }

    fn tally_runs_after(&mut self, after_id: i64) -> Result<RunTally> {
        let result = self
            .conn
            .prepare_cached(&RUN_ORDER.tally_sql("?1"))
            .and_then(|mut s| {
                s.query_row([after_id], |r| {
                    Ok(RunTally {
                        last_id: r.get(0)?,
                        succeeded: r.get::<_, i64>(1)? as u64,
                        failed: r.get::<_, i64>(2)? as u64,
                        places: r.get::<_, i64>(3)? as u64,
                    })
                })
            });
        result.map_err(|e| self.err("read job runs", e))
    }

    fn empty_places(&mut self, after_id: i64, upto: i64) -> Result<Vec<(i64, i64)>> {
        let result: rusqlite::Result<Vec<(i64, i64)>> = (|| {
            self.conn
                .prepare_cached(&RUN_ORDER.empty_sql("?1", "?2"))?
                .query_map([after_id, upto], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })();
        result.map_err(|e| self.err("read job runs", e))
    }

    fn running_with_progress(&mut self) -> Result<Vec<Job>> {
        let result: rusqlite::Result<Vec<Job>> = (|| {
            self.conn
                .prepare_cached(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs INDEXED BY jobs_running \
                     WHERE state = 'running' AND progress IS NOT NULL ORDER BY id LIMIT ?1"
                ))?
                .query_map([crate::store::contract::PROGRESS_SHOWN], job_from_row)?
                .collect()
        })();
        result.map_err(|e| self.err("read progress", e))
    }

    fn runs_after(&mut self, after_id: i64, limit: usize) -> Result<Vec<JobRun>> {
        self.query_runs(
            &RUN_ORDER.after_sql(RUN_COLUMNS, "?1", "?2"),
            params![after_id, limit as i64],
        )
    }

    fn runs_among(&mut self, ids: &[i64]) -> Result<Vec<JobRun>> {
        let ids = serde_json::to_string(ids).unwrap_or_else(|_| "[]".into());
        self.query_runs(
            &RUN_ORDER.among_sql(
                RUN_COLUMNS,
                "id IN (SELECT value FROM json_each(?1))",
                "run_id IN (SELECT value FROM json_each(?1))",
            ),
            params![ids],
        )
    }

    // Long: one query per part of the `stats` answer, in one read transaction so the parts agree.
    fn keys(&mut self, now: i64, count_ready: bool) -> Result<Vec<crate::keys::KeyActivity>> {
        let queues = if count_ready {
            self.queued_queues()?
        } else {
            Vec::new()
        };
        let result: rusqlite::Result<Vec<crate::keys::KeyActivity>> = (|| {
            let tx = self.conn.transaction()?;
            let running = crate::store::keyed::KeyedRows::key_hints(
                &mut crate::store::sqlite::claim::Keyed(&tx),
                now,
                true,
            )?
            .running;
            let names: Vec<&str> = running.keys().map(String::as_str).collect();
            let names = serde_json::to_string(&names).unwrap_or_else(|_| "[]".into());
            let rows: Vec<crate::store::keyed::LimitKeyRow> = tx
                .prepare_cached(&crate::store::keyed::limit_key_rows_sql(
                    "?1",
                    "IN (SELECT value FROM json_each(?2))",
                ))?
                .query_map(params![now, names], |r| {
                    Ok((
                        text(r, 0)?,
                        opt_text(r, 1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                    ))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let ready_sql = crate::store::keyed::key_ready_sql('?');
            let keys = crate::store::keyed::key_activity(running, rows, &queues, |queue, key| {
                tx.prepare_cached(&ready_sql)?
                    .query_row(params![queue, key, now], |r| r.get(0))
            })?;
            tx.commit()?;
            Ok(keys)
        })();
        result.map_err(|e| self.err("read keys", e))
    }

    fn stats(&mut self, now: i64) -> Result<Stats> {
        let (minute, hour) = (StatsBuilder::MINUTE, StatsBuilder::HOUR);
        let result: rusqlite::Result<Stats> = (|| {
            let tx = self.conn.transaction()?;
            let mut stats = StatsBuilder::new(now);
            // The statements borrow the transaction until it commits.
            let workers = {
                let mut stmt = tx.prepare_cached(
                "SELECT queue, \
                   sum(run_at <= ?1), sum(run_at > ?1), min(CASE WHEN run_at <= ?1 THEN run_at END) \
                 FROM jobs WHERE state = 'queued' GROUP BY queue",
            )?;
                let mut rows = stmt.query([now])?;
                while let Some(r) = rows.next()? {
                    stats.queued(text(r, 0)?, r.get(1)?, r.get(2)?, r.get(3)?);
                }
                let mut stmt = tx.prepare_cached(
                    "SELECT queue, count(*) FROM jobs INDEXED BY jobs_running \
                 WHERE state = 'running' GROUP BY queue",
                )?;
                let mut rows = stmt.query([])?;
                while let Some(r) = rows.next()? {
                    stats.running(text(r, 0)?, r.get(1)?);
                }
                for state in ["succeeded", "dead"] {
                    let mut stmt = tx.prepare_cached(&format!(
                        "SELECT queue, sum(finished_at >= ?2), count(*) FROM jobs \
                     INDEXED BY jobs_{state} \
                     WHERE state = '{state}' AND finished_at >= ?1 GROUP BY queue"
                    ))?;
                    let mut rows = stmt.query([now - hour, now - minute])?;
                    while let Some(r) = rows.next()? {
                        stats.finished(state, text(r, 0)?, r.get(1)?, r.get(2)?);
                    }
                }
                // The newest attempts by their place in the order of
                // `job_runs`: a range of each of its two parts.
                let mut stmt = tx.prepare_cached(&RUN_ORDER.recent_durations_sql("?1", "?2"))?;
                let mut rows = stmt.query(params![now - hour, PERCENTILE_SAMPLE as i64])?;
                while let Some(r) = rows.next()? {
                    stats.duration(text(r, 0)?, r.get(1)?);
                }
                let mut stmt = tx.prepare_cached("SELECT name, paused FROM queues")?;
                let mut rows = stmt.query([])?;
                while let Some(r) = rows.next()? {
                    stats.paused(text(r, 0)?, r.get::<_, i64>(1)? != 0);
                }
                let workers = tx
                    .prepare_cached(
                        "SELECT id, host, pid, version, started_at, heartbeat_at, queues, \
                     (SELECT count(*) FROM jobs WHERE state = 'running' AND worker = workers.id), \
                 handlers FROM workers ORDER BY id",
                    )?
                    .query_map([], worker_from_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                workers
            };
            tx.commit()?;
            Ok(stats.finish(workers))
        })();
        result.map_err(|e| self.err("read stats", e))
    }
}

impl SqliteStore {
    /// The attempts a query of [`RUN_ORDER`] answers, for `runs_after` and
    /// `runs_among`.
    fn query_runs(&mut self, sql: &str, params: impl rusqlite::Params) -> Result<Vec<JobRun>> {
        let result: rusqlite::Result<Vec<JobRun>> = (|| {
            self.conn
                .prepare_cached(sql)?
                .query_map(params, run_from_row)?
                .collect()
        })();
        result.map_err(|e| self.err("read job runs", e))
    }
}
