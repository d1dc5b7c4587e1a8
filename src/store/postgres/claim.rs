//! The claim on PostgreSQL: [`claim_in`] runs the keyed claim
//! ([`crate::store::keyed`]) when keys are in play, else the plain one; and
//! the keyed claim's row operations. Candidates are read `FOR UPDATE SKIP
//! LOCKED`, as the plain claim reads them; the `limit_keys` rows of the limited keys among them
//! are locked in key order before their running jobs are counted, so two
//! daemons claiming one key count one after the other (READ COMMITTED: the
//! count after the lock sees what the other committed).

use std::collections::HashMap;

use crate::job::{Claimed, Pool};
use crate::store::contract::Claim;
use crate::store::keyed::{parse_starts, starts_text, Candidate, KeyState, KeyedRows, RateWrite};
use crate::store::postgres::*;

/// A keyed claim's view of one PostgreSQL transaction.
pub(super) struct Keyed<'a, 'c> {
    pub(super) tx: &'a mut postgres::Transaction<'c>,
    pub(super) statements: &'a mut Statements,
}

impl Keyed<'_, '_> {
    fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> std::result::Result<Vec<postgres::Row>, postgres::Error> {
        let statement = self.statements.get(self.tx, sql)?;
        self.tx.query(&statement, params)
    }
}

impl KeyedRows for Keyed<'_, '_> {
    type Error = postgres::Error;

    fn closed_keys(&mut self, now: i64) -> std::result::Result<Vec<String>, postgres::Error> {
        Ok(self
            .query(
                "SELECT key FROM limit_keys WHERE closed_until > $1",
                &[&now],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn running_by_key(
        &mut self,
        keys: Option<&[String]>,
    ) -> std::result::Result<HashMap<String, u64>, postgres::Error> {
        let rows = match keys {
            None => self.query(
                "SELECT limit_key, count(*) FROM jobs \
                 WHERE state = 'running' AND limit_key IS NOT NULL GROUP BY limit_key",
                &[],
            )?,
            Some(keys) => self.query(
                "SELECT limit_key, count(*) FROM jobs \
                 WHERE state = 'running' AND limit_key = ANY($1) GROUP BY limit_key",
                &[&keys],
            )?,
        };
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
            .collect())
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
            "SELECT id, kind, limit_key, \
               CASE WHEN limit_key IS NULL AND kind = 'http' \
                 AND jsonb_typeof(payload -> 'url') = 'string' THEN payload ->> 'url' END \
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
            .map(|r| Candidate {
                id: r.get(0),
                kind: r.get(1),
                key: r.get(2),
                url: r.get(3),
            })
            .collect())
    }

    fn lock_keys(
        &mut self,
        keys: &[String],
        now: i64,
    ) -> std::result::Result<HashMap<String, KeyState>, postgres::Error> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        // Rows are created in key order and locked in key order, so two
        // claims over overlapping keys wait for each other, never in a
        // circle.
        self.query(
            "INSERT INTO limit_keys (key, updated_at) \
             SELECT k, $2 FROM unnest($1::text[]) AS k ORDER BY k ON CONFLICT DO NOTHING",
            &[&keys, &now],
        )?;
        Ok(self
            .query(
                "SELECT key, starts, blocked_until FROM limit_keys WHERE key = ANY($1) \
                 ORDER BY key FOR UPDATE",
                &[&keys],
            )?
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    KeyState {
                        starts: parse_starts(r.get(1)),
                        blocked_until: r.get(2),
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
        let sql = format!(
            "UPDATE jobs SET state = 'running', attempts = jobs.attempts + 1, started_at = $1, \
             finished_at = NULL, lease_until = $2, worker = $3, \
             limit_key = COALESCE(k.key, jobs.limit_key) \
             FROM unnest($4::bigint[], $5::text[]) AS k(id, key) \
             WHERE jobs.id = k.id AND jobs.state = 'queued' RETURNING {}",
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

    fn set_keys(&mut self, keyed: &[(i64, String)]) -> std::result::Result<(), postgres::Error> {
        let ids: Vec<i64> = keyed.iter().map(|(id, _)| *id).collect();
        let keys: Vec<&str> = keyed.iter().map(|(_, k)| k.as_str()).collect();
        self.query(
            "UPDATE jobs SET limit_key = k.key FROM unnest($1::bigint[], $2::text[]) AS k(id, key) \
             WHERE jobs.id = k.id AND jobs.state = 'queued' AND jobs.limit_key IS NULL",
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
    let mut keyed = Keyed { tx, statements };
    if let Some(jobs) = crate::store::keyed::claim_keyed(&mut keyed, claim, seen)? {
        return Ok(jobs);
    }
    crate::store::shared::claim_by_plan(claim.requests, |queue, pool, limit| {
        let statement = statements.get(tx, &claim_sql(pool))?;
        let rows = tx.query(
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
