//! [`crate::store::Reads`] on PostgreSQL.

use crate::job::{Job, JobState};
use crate::store::contract::{
    Backlog, BatchInfo, JobRun, ListFilter, Relatives, Result, RunTally, Stats, RELATIVES_SHOWN,
};
use crate::store::contract::{Fleet, Reads};
use crate::store::postgres::*;
use crate::store::shared::StatsBuilder;

impl Reads for PgStore {
    fn name(&self) -> String {
        redact_url(&self.url)
    }

    fn file(&self) -> Option<&std::path::Path> {
        None
    }

    fn backlog(&mut self, queues: Option<&[String]>, now: i64) -> Result<Backlog> {
        self.revive()?;
        let queues = self.these_or_queued(queues)?;
        let fail = self.schedules_and_reads_error("read backlog");
        let row = self
            .client
            .query_one(
                "SELECT count(*), min(run_at) FROM jobs \
                 WHERE state = 'queued' AND queue = ANY($1) AND run_at <= $2",
                &[&queues, &now],
            )
            .map_err(&fail)?;
        Ok(Backlog {
            ready: row.get::<_, i64>(0) as u64,
            oldest_ready: row.get(1),
        })
    }

    fn job_counts(&mut self) -> Result<Vec<(String, JobState, u64)>> {
        self.revive()?;
        let fail = self.schedules_and_reads_error("count jobs");
        Ok(self
            .client
            .query(
                "SELECT queue, state, count(*) FROM jobs GROUP BY queue, state",
                &[],
            )
            .map_err(&fail)?
            .iter()
            .filter_map(|r| {
                let state: String = r.get(1);
                Some((r.get(0), state.parse().ok()?, r.get::<_, i64>(2) as u64))
            })
            .collect())
    }

    fn keys(&mut self, now: i64, count_ready: bool) -> Result<Vec<crate::keys::KeyActivity>> {
        let queues = if count_ready {
            crate::store::contract::Queue::queued_queues(self)?
        } else {
            Vec::new()
        };
        self.revive()?;
        let fail = self.failing("read keys");
        let mut tx = self.client.transaction().map_err(&fail)?;
        let running = crate::store::keyed::KeyedRows::key_hints(
            &mut crate::store::postgres::claim::Keyed {
                tx: &mut tx,
                statements: &mut self.statements,
                sort_off: false,
            },
            now,
            true,
        )
        .map_err(&fail)?
        .running;
        let names: Vec<&str> = running.keys().map(String::as_str).collect();
        let rows = tx
            .query(
                &crate::store::keyed::limit_key_rows_sql("$1", "= ANY($2)"),
                &[&now, &names],
            )
            .map_err(&fail)?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect();
        let ready_sql = crate::store::keyed::key_ready_sql('$');
        let keys = crate::store::keyed::key_activity(running, rows, &queues, |queue, key| {
            tx.query_one(&ready_sql, &[&queue, &key, &now])
                .map(|r| r.get(0))
        })
        .map_err(&fail)?;
        tx.commit().map_err(&fail)?;
        Ok(keys)
    }

    fn paused_queues(&mut self) -> Result<Vec<String>> {
        self.revive()?;
        // The paused queues.
        let fail = self.failing("read queues");
        Ok(self
            .client
            .query("SELECT name FROM queues WHERE paused ORDER BY name", &[])
            .map_err(&fail)?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn job(&mut self, id: i64) -> Result<Option<Job>> {
        self.revive()?;
        // One job.
        let fail = self.failing("read job");
        Ok(self
            .client
            .query_opt(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"),
                &[&id],
            )
            .map_err(&fail)?
            .as_ref()
            .map(job_from_row))
    }

    fn runs(&mut self, job_id: i64) -> Result<Vec<JobRun>> {
        self.revive()?;
        // A job's attempt records, in order.
        let fail = self.failing("read job runs");
        Ok(self
            .client
            .query(
                &format!(
                    // A job marked succeeded by hand has no place: not an attempt.
                    "SELECT {RUN_COLUMNS} FROM job_runs WHERE job_id = $1 AND id IS NOT NULL \
                     ORDER BY attempt, id"
                ),
                &[&job_id],
            )
            .map_err(&fail)?
            .iter()
            .map(run_from_row)
            .collect())
    }

    fn batch(&mut self, name: &str) -> Result<Option<BatchInfo>> {
        self.revive()?;
        let fail = self.failing("read a batch");
        let Some(mut info) = self
            .client
            .query_opt(
                "SELECT b.name, b.total, b.succeeded, b.dead, b.cancelled, b.sealed, \
                   b.callback_id, j.state, b.created_at, b.finished_at \
                 FROM batches b LEFT JOIN jobs j ON j.id = b.callback_id WHERE b.name = $1",
                &[&name],
            )
            .map_err(&fail)?
            .map(|r| BatchInfo {
                counts: crate::store::flows::BatchCounts {
                    name: r.get(0),
                    total: r.get(1),
                    succeeded: r.get(2),
                    dead: r.get(3),
                    cancelled: r.get(4),
                },
                sealed: r.get(5),
                callback: r
                    .get::<_, Option<i64>>(6)
                    .map(|id| (id, r.get::<_, Option<String>>(7).unwrap_or("pruned".into()))),
                created_at: r.get(8),
                finished_at: r.get(9),
                states: Default::default(),
            })
        else {
            return Ok(None);
        };
        info.states = self
            .client
            .query(
                "SELECT state, count(*) FROM jobs WHERE batch = $1 GROUP BY state",
                &[&name],
            )
            .map_err(&fail)?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        Ok(Some(info))
    }

    fn relatives(&mut self, job_id: i64) -> Result<Relatives> {
        self.revive()?;
        let fail = self.failing("read a job's parents and children");
        let pairs = |rows: Vec<postgres::Row>| -> Vec<(i64, String)> {
            rows.iter().map(|r| (r.get(0), r.get(1))).collect()
        };
        let mut relatives = Relatives {
            parents: pairs(
                self.client
                    .query(
                        "SELECT d.parent, coalesce(j.state, 'pruned') FROM job_deps d \
                         LEFT JOIN jobs j ON j.id = d.parent WHERE d.child = $1 ORDER BY d.parent",
                        &[&job_id],
                    )
                    .map_err(&fail)?,
            ),
            children: pairs(
                self.client
                    .query(
                        "SELECT d.child, j.state FROM job_deps d JOIN jobs j ON j.id = d.child \
                         WHERE d.parent = $1 ORDER BY d.child LIMIT $2",
                        &[&job_id, &RELATIVES_SHOWN],
                    )
                    .map_err(&fail)?,
            ),
            ..Relatives::default()
        };
        if let Some(r) = self
            .client
            .query_opt(
                "SELECT run_always, batch, callback_for, sequence FROM jobs WHERE id = $1",
                &[&job_id],
            )
            .map_err(&fail)?
        {
            relatives.run_always = r.get(0);
            relatives.batch = r.get(1);
            relatives.callback_for = r.get(2);
            relatives.sequence = r.get(3);
        }
        Ok(relatives)
    }

    fn list(&mut self, filter: &ListFilter) -> Result<Vec<Job>> {
        self.revive()?;
        // Jobs matching `filter`, newest first.
        let fail = self.failing("list jobs");
        let state = filter.state.map(|s| s.as_str());
        Ok(self
            .client
            .query(
                &format!(
                    "SELECT {JOB_COLUMNS} FROM jobs \
                     WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR queue = $2) \
                       AND ($3::text IS NULL OR kind = $3) AND ($5::bigint IS NULL OR id < $5) \
                     ORDER BY id DESC LIMIT $4"
                ),
                &[
                    &state,
                    &filter.queue,
                    &filter.kind,
                    &(filter.limit as i64),
                    &filter.before,
                ],
            )
            .map_err(&fail)?
            .iter()
            .map(job_from_row)
            .collect())
    }

    fn last_run_id(&mut self) -> Result<i64> {
        self.revive()?;
        let fail = self.schedules_and_reads_error("read job runs");
        Ok(self
            .client
            .query_one(&RUN_ORDER.last_sql(), &[])
            .map_err(&fail)?
            .get(0))
    }

    fn tally_runs_after(&mut self, after_id: i64) -> Result<RunTally> {
        self.revive()?;
        let fail = self.failing("read job runs");
        let statement = self
            .statements
            .get(&mut self.client, &RUN_ORDER.tally_sql("$1"))
            .map_err(&fail)?;
        let row = self
            .client
            .query_one(&statement, &[&after_id])
            .map_err(&fail)?;
        Ok(RunTally {
            last_id: row.get(0),
            succeeded: row.get::<_, i64>(1) as u64,
            failed: row.get::<_, i64>(2) as u64,
            places: row.get::<_, i64>(3) as u64,
        })
    }

    fn empty_places(&mut self, after_id: i64, upto: i64) -> Result<Vec<(i64, i64)>> {
        self.revive()?;
        let fail = self.failing("read job runs");
        let statement = self
            .statements
            .get(&mut self.client, &RUN_ORDER.empty_sql("$1", "$2"))
            .map_err(&fail)?;
        Ok(self
            .client
            .query(&statement, &[&after_id, &upto])
            .map_err(&fail)?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect())
    }

    fn running_with_progress(&mut self) -> Result<Vec<Job>> {
        self.revive()?;
        let fail = self.schedules_and_reads_error("read progress");
        Ok(self
            .client
            .query(
                &format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'running' \
                     AND progress IS NOT NULL ORDER BY id LIMIT $1"
                ),
                &[&crate::store::contract::PROGRESS_SHOWN],
            )
            .map_err(&fail)?
            .iter()
            .map(job_from_row)
            .collect())
    }

    fn runs_after(&mut self, after_id: i64, limit: usize) -> Result<Vec<JobRun>> {
        self.query_runs(
            &RUN_ORDER.after_sql(RUN_COLUMNS, "$1", "$2"),
            &[&after_id, &(limit as i64)],
        )
    }

    fn runs_among(&mut self, ids: &[i64]) -> Result<Vec<JobRun>> {
        self.query_runs(
            &RUN_ORDER.among_sql(RUN_COLUMNS, "id = ANY($1)", "run_id = ANY($1)"),
            &[&ids],
        )
    }

    // Long: one query per part of the `stats` answer, in one read transaction so the parts agree.
    fn stats(&mut self, now: i64) -> Result<Stats> {
        self.revive()?;
        let (minute, hour) = (StatsBuilder::MINUTE, StatsBuilder::HOUR);
        let fail = self.schedules_and_reads_error("read stats");
        let mut stats = StatsBuilder::new(now);
        // One snapshot for every figure.
        let mut tx = self
            .client
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(&fail)?;
        for r in tx
            .query(
                "SELECT queue, count(*) FILTER (WHERE run_at <= $1), count(*) FILTER (WHERE run_at > $1), \
                   min(run_at) FILTER (WHERE run_at <= $1) \
                 FROM jobs WHERE state = 'queued' GROUP BY queue",
                &[&now],
            )
            .map_err(&fail)?
        {
            stats.queued(r.get(0), r.get(1), r.get(2), r.get(3));
        }
        for r in tx
            .query(
                "SELECT queue, count(*) FROM jobs WHERE state = 'running' GROUP BY queue",
                &[],
            )
            .map_err(&fail)?
        {
            stats.running(r.get(0), r.get(1));
        }
        for state in ["succeeded", "dead"] {
            for r in tx
                .query(
                    &format!(
                        "SELECT queue, count(*) FILTER (WHERE finished_at >= $2), count(*) FROM jobs \
                         WHERE state = '{state}' AND finished_at >= $1 GROUP BY queue"
                    ),
                    &[&(now - hour), &(now - minute)],
                )
                .map_err(&fail)?
            {
                stats.finished(state, r.get(0), r.get(1), r.get(2));
            }
        }
        for r in tx
            .query(
                &RUN_ORDER.recent_durations_sql("$1", "$2"),
                &[
                    &(now - hour),
                    &(crate::store::shared::PERCENTILE_SAMPLE as i64),
                ],
            )
            .map_err(&fail)?
        {
            stats.duration(r.get(0), r.get(1));
        }
        for r in tx
            .query("SELECT name, paused FROM queues", &[])
            .map_err(&fail)?
        {
            stats.paused(r.get(0), r.get(1));
        }
        tx.commit().map_err(&fail)?;
        Ok(stats.finish(self.workers()?))
    }
}

impl PgStore {
    /// The attempts a query of [`RUN_ORDER`] answers, for `runs_after` and
    /// `runs_among`.
    fn query_runs(
        &mut self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<JobRun>> {
        self.revive()?;
        let fail = self.schedules_and_reads_error("read job runs");
        Ok(self
            .client
            .query(sql, params)
            .map_err(&fail)?
            .iter()
            .map(run_from_row)
            .collect())
    }
}
