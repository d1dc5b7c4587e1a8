//! [`crate::store::Reads`] on PostgreSQL.

use crate::job::{Job, JobState};
use crate::store::contract::Reads;
use crate::store::contract::{Backlog, JobRun, ListFilter, Result, RunTally, Stats};
use crate::store::postgres::*;

impl Reads for PgStore {
    fn name(&self) -> String {
        redact_url(&self.url)
    }

    fn file(&self) -> Option<&std::path::Path> {
        None
    }

    fn backlog(&mut self, queues: Option<&[String]>, now: i64) -> Result<Backlog> {
        self.revive()?;
        self.backlog_impl(queues, now)
    }

    fn job_counts(&mut self) -> Result<Vec<(String, JobState, u64)>> {
        self.revive()?;
        self.job_counts_impl()
    }

    fn paused_queues(&mut self) -> Result<Vec<String>> {
        self.revive()?;
        PgStore::paused_queues(self)
    }

    fn job(&mut self, id: i64) -> Result<Option<Job>> {
        self.revive()?;
        PgStore::job(self, id)
    }

    fn runs(&mut self, job_id: i64) -> Result<Vec<JobRun>> {
        self.revive()?;
        PgStore::runs(self, job_id)
    }

    fn list(&mut self, filter: &ListFilter) -> Result<Vec<Job>> {
        self.revive()?;
        PgStore::list(self, filter)
    }

    fn last_run_id(&mut self) -> Result<i64> {
        self.revive()?;
        self.last_run_id_impl()
    }

    fn tally_runs_after(&mut self, after_id: i64) -> Result<RunTally> {
        self.revive()?;
        let fail = self.failing("read job runs");
        let statement = self
            .statements
            .get(
                &mut self.client,
                &crate::store::shared::tally_runs_sql("$1"),
            )
            .map_err(&fail)?;
        let row = self
            .client
            .query_one(&statement, &[&after_id])
            .map_err(&fail)?;
        Ok(RunTally {
            last_id: row.get(0),
            succeeded: row.get::<_, i64>(1) as u64,
            failed: row.get::<_, i64>(2) as u64,
        })
    }

    fn runs_after(&mut self, after_id: i64, limit: usize) -> Result<Vec<JobRun>> {
        self.revive()?;
        self.runs_after_impl(after_id, limit)
    }

    fn stats(&mut self, now: i64) -> Result<Stats> {
        self.revive()?;
        self.stats_impl(now)
    }
}
