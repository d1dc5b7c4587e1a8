//! The claim on PostgreSQL: [`claim_in`] runs the keyed claim
//! ([`crate::store::keyed`]) when keys are in play, else the plain one; and
//! the keyed claim's row operations. Candidates are read `FOR UPDATE SKIP
//! LOCKED`, as the plain claim reads them; the limited keys among them are
//! then read and their running jobs counted after the keys' advisory lock,
//! so two daemons claiming one key count one after the other (READ
//! COMMITTED: the count after the lock sees what the other committed).

use std::collections::HashMap;

use crate::job::{Claimed, Pool};
use crate::store::contract::Claim;
use crate::store::keyed::{
    parse_starts, starts_text, Candidate, KeyHints, KeyState, KeyedRows, RateWrite,
};
use crate::store::postgres::*;
use crate::store::shared::NEXT_ATTEMPT;

/// A keyed claim's view of one PostgreSQL transaction.
pub(super) struct Keyed<'a, 'c> {
    pub(super) tx: &'a mut postgres::Transaction<'c>,
    pub(super) statements: &'a mut Statements,
    /// Whether this transaction plans without sorts (see `sort_off`).
    pub(super) sort_off: bool,
}

impl Keyed<'_, '_> {
    /// A fair claim's scans must use `jobs_ready_key`; on a table whose
    /// statistics are stale (a backlog inserted seconds ago, before
    /// autovacuum analyzed it) the planner guesses one row for every
    /// index and picks `jobs_ready`, then filters 20 000 rows of another
    /// key per claim (measured: a fair claim took 10 ms instead of 0.3).
    /// Ordering by the key index's columns, with the key as a range so
    /// the order is not trivially met, and no sorts allowed for the rest
    /// of this transaction, leaves the key index as the only cheap plan.
    /// A plan that still needs a sort is then costed past the JIT's
    /// threshold, and compiling it took 250 ms a claim: JIT goes too.
    fn sort_off(&mut self) -> std::result::Result<(), postgres::Error> {
        if !self.sort_off {
            self.tx
                .batch_execute("SET LOCAL enable_sort = off; SET LOCAL jit = off")?;
            self.sort_off = true;
        }
        Ok(())
    }

    fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> std::result::Result<Vec<postgres::Row>, postgres::Error> {
        let statement = self.statements.get(self.tx, sql)?;
        self.tx.query(&statement, params)
    }
}

/// What a job's key is derived from when it has none of its own: an http
/// job's URL, an exec job's handler.
const SOURCE_COLUMN: &str = "CASE WHEN limit_key IS NULL AND kind = 'http' \
     AND jsonb_typeof(payload -> 'url') = 'string' THEN payload ->> 'url' \
     WHEN limit_key IS NULL AND kind = 'exec' \
     AND jsonb_typeof(payload -> 'handler') = 'string' THEN payload ->> 'handler' END";

/// A candidate row: id, kind, limit_key, the source column, priority.
fn candidate(r: &postgres::Row) -> Candidate {
    Candidate {
        id: r.get(0),
        kind: r.get(1),
        key: r.get(2),
        source: r.get(3),
        priority: r.get(4),
    }
}

impl KeyedRows for Keyed<'_, '_> {
    type Error = postgres::Error;

    fn key_hints(
        &mut self,
        now: i64,
        count_running: bool,
    ) -> std::result::Result<KeyHints, postgres::Error> {
        // A function: see schema version 9 for why.
        let mut hints = KeyHints::default();
        for r in self.query(
            "SELECT out_key, out_running FROM jobd_key_hints($1, $2)",
            &[&now, &count_running],
        )? {
            match r.get::<_, Option<i64>>(1) {
                None => hints.closed.push(r.get(0)),
                Some(n) => {
                    hints.running.insert(r.get(0), n as u64);
                }
            }
        }
        Ok(hints)
    }

    fn candidates(
        &mut self,
        queue: &str,
        pool: Pool,
        now: i64,
        window: usize,
        skip: &[String],
    ) -> std::result::Result<Vec<Candidate>, postgres::Error> {
        let sql = format!(
            "SELECT id, kind, limit_key, {SOURCE_COLUMN}, priority \
             FROM jobs WHERE state = 'queued' AND queue = $1 AND {} AND run_at <= $2 \
               AND NOT EXISTS (SELECT 1 FROM queues WHERE name = $1 AND paused) \
               AND (limit_key IS NULL OR limit_key <> ALL($3)) \
             ORDER BY priority DESC, run_at, id LIMIT $4 \
             FOR UPDATE SKIP LOCKED",
            pool_test(pool)
        );
        Ok(self
            .query(&sql, &[&queue, &now, &skip, &(window as i64)])?
            .iter()
            .map(candidate)
            .collect())
    }

    fn key_heads(
        &mut self,
        queue: &str,
        pool: Pool,
        now: i64,
        after: &str,
        skip: &[String],
        keys: usize,
        per_key: usize,
    ) -> std::result::Result<Vec<Candidate>, postgres::Error> {
        self.sort_off()?;
        // The loose scan finds the next keys (one index seek each), and a
        // lateral scan per key reads its first jobs: one round trip.
        let sql = format!(
            "WITH RECURSIVE k(key) AS ( \
               SELECT (SELECT limit_key FROM jobs \
                       WHERE state = 'queued' AND queue = $1 AND limit_key > $2 \
                       ORDER BY queue, limit_key LIMIT 1) \
               UNION ALL \
               SELECT (SELECT limit_key FROM jobs \
                       WHERE state = 'queued' AND queue = $1 AND limit_key > k.key \
                       ORDER BY queue, limit_key LIMIT 1) \
               FROM k WHERE k.key IS NOT NULL) \
             SELECT j.* FROM (SELECT key FROM k WHERE key IS NOT NULL AND key <> ALL($3) \
                              LIMIT $4) ks \
             CROSS JOIN LATERAL ( \
               SELECT id, kind, limit_key, {SOURCE_COLUMN}, priority FROM jobs \
               WHERE state = 'queued' AND queue = $1 AND {} AND run_at <= $5 \
                 AND {ONE_KEY} \
                 AND NOT EXISTS (SELECT 1 FROM queues WHERE name = $1 AND paused) \
               ORDER BY queue, limit_key, {cpu}, priority DESC, run_at, id LIMIT $6 \
               FOR UPDATE SKIP LOCKED) j",
            pool_test(pool),
            ONE_KEY = "limit_key >= ks.key AND limit_key <= ks.key",
            cpu = cpu_kind_test(),
        );
        Ok(self
            .query(
                &sql,
                &[
                    &queue,
                    &after,
                    &skip,
                    &(keys as i64),
                    &now,
                    &(per_key as i64),
                ],
            )?
            .iter()
            .map(candidate)
            .collect())
    }

    fn heads(
        &mut self,
        queue: &str,
        pool: Pool,
        now: i64,
        key: &str,
        n: usize,
    ) -> std::result::Result<Vec<Candidate>, postgres::Error> {
        self.sort_off()?;
        // The key as a range: see sort_off.
        let sql = format!(
            "SELECT id, kind, limit_key, {SOURCE_COLUMN}, priority \
             FROM jobs WHERE state = 'queued' AND queue = $1 AND {} AND run_at <= $2 \
               AND limit_key >= $3 AND limit_key <= $3 \
               AND NOT EXISTS (SELECT 1 FROM queues WHERE name = $1 AND paused) \
             ORDER BY queue, limit_key, {cpu}, priority DESC, run_at, id LIMIT $4 \
             FOR UPDATE SKIP LOCKED",
            pool_test(pool),
            cpu = cpu_kind_test(),
        );
        Ok(self
            .query(&sql, &[&queue, &now, &key, &(n as i64)])?
            .iter()
            .map(candidate)
            .collect())
    }

    fn unkeyed(
        &mut self,
        queue: &str,
        pool: Pool,
        now: i64,
        look: usize,
        n: usize,
    ) -> std::result::Result<Vec<Candidate>, postgres::Error> {
        // The queue's first `look` ready jobs by the claim's own index,
        // unlocked; those without a key are then locked (their state
        // checked again under the lock).
        let sql = format!(
            "SELECT id, kind, limit_key, {SOURCE_COLUMN}, priority FROM jobs \
             WHERE id IN (SELECT id FROM jobs \
                          WHERE state = 'queued' AND queue = $1 AND {} AND run_at <= $2 \
                            AND NOT EXISTS (SELECT 1 FROM queues WHERE name = $1 AND paused) \
                          ORDER BY priority DESC, run_at, id LIMIT $3) \
               AND state = 'queued' AND limit_key IS NULL \
             ORDER BY priority DESC, run_at, id LIMIT $4 \
             FOR UPDATE SKIP LOCKED",
            pool_test(pool)
        );
        Ok(self
            .query(&sql, &[&queue, &now, &(look as i64), &(n as i64)])?
            .iter()
            .map(candidate)
            .collect())
    }

    fn running_in_queues(
        &mut self,
        queues: &[String],
    ) -> std::result::Result<HashMap<String, u64>, postgres::Error> {
        Ok(self
            .query(
                "SELECT queue, count(*) FROM jobs WHERE state = 'running' AND queue = ANY($1) \
                 GROUP BY queue",
                &[&queues],
            )?
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
            .collect())
    }

    fn lock_keys(
        &mut self,
        keys: &[String],
        _now: i64,
    ) -> std::result::Result<HashMap<String, KeyState>, postgres::Error> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        // One lock for every limited claim of this schema, held to the
        // commit: claims that count keys' running jobs and starts take
        // turns, as SQLite's writer lock makes them. Locking each key's
        // row instead (FOR UPDATE, in key order) was exact too, but a
        // claim locked up to 512 rows, and that was nine tenths of a
        // keyed claim's time with 10 000 keys (pg_stat_activity samples).
        // The function takes the lock, then reads (schema version 9).
        Ok(self
            .query(
                "SELECT out_key, out_starts, out_blocked_until, out_running \
                 FROM jobd_lock_keys($1)",
                &[&keys],
            )?
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    KeyState {
                        starts: parse_starts(r.get(1)),
                        blocked_until: r.get(2),
                        running: r.get::<_, i64>(3) as u64,
                    },
                )
            })
            .collect())
    }

    fn take(
        &mut self,
        claim: &Claim<'_>,
        started_at: i64,
        jobs: &[(i64, Option<String>)],
    ) -> std::result::Result<Vec<Claimed>, postgres::Error> {
        let returning: Vec<String> = CLAIMED_COLUMNS
            .split(", ")
            .map(|c| format!("jobs.{c}"))
            .collect();
        // By id alone: these are candidates this transaction read `FOR
        // UPDATE` as queued, so they still are. A `state = 'queued'` here
        // would let the planner drive the join from a ready index, which
        // an `ANALYZE` of an empty queue takes for one row: every queued
        // job compared with every taken one (see `complete_sql`).
        let sql = format!(
            "UPDATE jobs SET state = 'running', attempts = {NEXT_ATTEMPT}, started_at = $1, \
             finished_at = NULL, lease_until = $2, worker = $3, \
             limit_key = COALESCE(k.key, jobs.limit_key) \
             FROM unnest($4::bigint[], $5::text[]) AS k(id, key) \
             WHERE jobs.id = k.id RETURNING {}",
            returning.join(", ")
        );
        let ids: Vec<i64> = jobs.iter().map(|(id, _)| *id).collect();
        let keys: Vec<Option<&str>> = jobs.iter().map(|(_, k)| k.as_deref()).collect();
        Ok(self
            .query(
                &sql,
                &[&started_at, &claim.lease_until, &claim.worker, &ids, &keys],
            )?
            .iter()
            .map(claimed_from_pg_row)
            .collect())
    }

    /// By id, as `take` (the jobs are this transaction's locked candidates).
    fn set_keys(&mut self, keyed: &[(i64, String)]) -> std::result::Result<(), postgres::Error> {
        let ids: Vec<i64> = keyed.iter().map(|(id, _)| *id).collect();
        let keys: Vec<&str> = keyed.iter().map(|(_, k)| k.as_str()).collect();
        self.query(
            "UPDATE jobs SET limit_key = k.key FROM unnest($1::bigint[], $2::text[]) AS k(id, key) \
             WHERE jobs.id = k.id AND jobs.limit_key IS NULL",
            &[&ids, &keys],
        )?;
        Ok(())
    }

    fn save_rates(
        &mut self,
        rates: &[RateWrite],
        now: i64,
    ) -> std::result::Result<(), postgres::Error> {
        let keys: Vec<&str> = rates.iter().map(|r| r.key.as_str()).collect();
        let starts: Vec<String> = rates.iter().map(|r| starts_text(&r.starts)).collect();
        let next: Vec<i64> = rates.iter().map(|r| r.next_start_at).collect();
        self.query(
            "INSERT INTO limit_keys (key, starts, closed_until, updated_at) \
             SELECT k.key, k.starts, k.next, $4 FROM unnest($1::text[], $2::text[], $3::bigint[]) \
               AS k(key, starts, next) ORDER BY k.key \
             ON CONFLICT (key) DO UPDATE SET starts = EXCLUDED.starts, \
               closed_until = GREATEST(EXCLUDED.closed_until, COALESCE(limit_keys.blocked_until, 0)), \
               updated_at = EXCLUDED.updated_at",
            &[&keys, &starts, &next, &now],
        )?;
        Ok(())
    }
}

/// Claims inside an open transaction (see [`PgStore::claim`]).
pub(super) fn claim_in(
    tx: &mut postgres::Transaction<'_>,
    statements: &mut Statements,
    claim: &Claim<'_>,
    seen: &crate::store::keyed::KeysSeen,
) -> std::result::Result<Vec<Claimed>, postgres::Error> {
    let mut rows = Keyed {
        tx: &mut *tx,
        statements: &mut *statements,
        sort_off: false,
    };
    let mut jobs = match crate::store::keyed::FleetQueues::lock(&mut rows, claim)? {
        None => claim_unlocked(tx, statements, claim, seen)?,
        Some(fleet) => {
            let capped = Claim {
                requests: &fleet.requests,
                ..*claim
            };
            let jobs = claim_unlocked(tx, statements, &capped, seen)?;
            let mut rows = Keyed {
                tx: &mut *tx,
                statements: &mut *statements,
                sort_off: false,
            };
            if fleet.record(&mut rows, &jobs)? {
                seen.forget();
            }
            jobs
        }
    };
    attach_flows(tx, &mut jobs)?;
    Ok(jobs)
}

/// A claim that needs no transaction of its own: one queue, no `[keys]`,
/// no fair or fleet-limited queue, no key known to be closed. Its one
/// statement (both pools together, [`claim_both_sql`]) then commits whole
/// or not at all in autocommit, which spares the round trips of `BEGIN`
/// and `COMMIT` between an insert and its pickup. Claims of several
/// queues take a transaction: statements committed one by one could
/// commit the first and fail the second, leaving jobs claimed that the
/// daemon never got. `None`: the claim needs [`claim_in`].
pub(super) fn claim_plain(
    client: &mut postgres::Client,
    statements: &mut Statements,
    claim: &Claim<'_>,
    seen: &crate::store::keyed::KeysSeen,
) -> Option<std::result::Result<Vec<Claimed>, postgres::Error>> {
    let mut asked = claim
        .requests
        .iter()
        .filter(|r| r.limit > 0 && (r.cpu > 0 || r.io > 0));
    let request = asked.next();
    let plain = claim.keys.is_empty()
        && seen.none_closed(claim.now)
        && asked.next().is_none()
        && request.is_none_or(|r| r.fair_after.is_none() && r.fleet.is_none());
    if !plain {
        return None;
    }
    let Some(request) = request else {
        return Some(Ok(Vec::new()));
    };
    Some((|| {
        let (cpu, io) = (
            request.cpu.min(request.limit),
            request.io.min(request.limit),
        );
        // One pool asked: one statement of `claim_planned` already.
        let mut jobs = if cpu == 0 || io == 0 {
            claim_planned(client, statements, claim)?
        } else {
            let statement = statements.get(client, &CLAIM_BOTH_SQL)?;
            let rows = client.query(
                &statement,
                &[
                    &claim.now,
                    &claim.lease_until,
                    &claim.worker,
                    &request.queue,
                    &(cpu as i64),
                    &(io as i64),
                    &(request.limit as i64),
                ],
            )?;
            let (mut jobs, mut io_jobs): (Vec<Claimed>, Vec<Claimed>) = rows
                .iter()
                .map(claimed_from_pg_row)
                .partition(|j| Pool::of_kind(&j.kind) == Pool::Cpu);
            crate::store::shared::in_claim_order(&mut jobs);
            crate::store::shared::in_claim_order(&mut io_jobs);
            jobs.append(&mut io_jobs);
            jobs
        };
        // Read after the claim committed: a failure here is a reply lost
        // after the commit, which `reconcile` takes care of.
        attach_flows(client, &mut jobs)?;
        Ok(jobs)
    })())
}

/// What a claimed job of a flow is given: its parents' outcomes and its
/// batch's counts (read after the claim; both only grow towards final).
fn attach_flows(
    tx: &mut impl postgres::GenericClient,
    jobs: &mut [Claimed],
) -> std::result::Result<(), postgres::Error> {
    crate::store::flows::attach_parents(jobs, |ids| {
        Ok(tx
            .query(
                "SELECT id, kind, state, result::text, last_error FROM jobs WHERE id = ANY($1)",
                &[&ids],
            )?
            .iter()
            .map(|r| crate::store::flows::ParentOutcome {
                id: r.get(0),
                kind: r.get(1),
                state: r.get(2),
                result: r
                    .get::<_, Option<String>>(3)
                    .and_then(|t| serde_json::from_str(&t).ok()),
                error: r.get(4),
            })
            .collect())
    })?;
    crate::store::flows::attach_batches(jobs, |name| {
        Ok(tx
            .query_opt(
                "SELECT name, total, succeeded, dead, cancelled FROM batches WHERE name = $1",
                &[&name],
            )?
            .map(|r| crate::store::flows::BatchCounts {
                name: r.get(0),
                total: r.get(1),
                succeeded: r.get(2),
                dead: r.get(3),
                cancelled: r.get(4),
            }))
    })
}

/// [`claim_in`] once the fleet-wide queue limits are applied.
fn claim_unlocked(
    tx: &mut postgres::Transaction<'_>,
    statements: &mut Statements,
    claim: &Claim<'_>,
    seen: &crate::store::keyed::KeysSeen,
) -> std::result::Result<Vec<Claimed>, postgres::Error> {
    let mut keyed = Keyed {
        tx,
        statements,
        sort_off: false,
    };
    if let Some(jobs) = crate::store::keyed::claim_keyed(&mut keyed, claim, seen)? {
        return Ok(jobs);
    }
    claim_planned(tx, statements, claim)
}

/// The plain claim: [`claim_sql`] once per queue and pool the claim asks of.
fn claim_planned(
    client: &mut impl postgres::GenericClient,
    statements: &mut Statements,
    claim: &Claim<'_>,
) -> std::result::Result<Vec<Claimed>, postgres::Error> {
    crate::store::shared::claim_by_plan(claim.requests, |queue, pool, limit| {
        let statement = statements.get(client, &claim_sql(pool))?;
        let rows = client.query(
            &statement,
            &[
                &claim.now,
                &claim.lease_until,
                &claim.worker,
                &queue,
                &(limit as i64),
            ],
        )?;
        Ok(rows.iter().map(claimed_from_pg_row).collect())
    })
}
