//! The claim on SQLite: [`claim_in`] runs the keyed claim
//! ([`crate::store::keyed`]) when keys are in play, else the plain one; and
//! the keyed claim's row operations. The claim holds the write lock, so
//! counting a key's running jobs and taking them cannot interleave with
//! another daemon's claim.

use std::collections::HashMap;

use rusqlite::params;

use crate::job::{Claimed, Pool};
use crate::store::contract::Claim;
use crate::store::keyed::{
    parse_starts, starts_text, Candidate, KeyHints, KeyState, KeyedRows, RateWrite,
};
use crate::store::shared::NEXT_ATTEMPT;
use crate::store::sqlite::*;
use schema::cpu_kind_test;

/// A keyed claim's view of one SQLite write transaction.
pub(super) struct Keyed<'a, 'c>(pub(super) &'a rusqlite::Transaction<'c>);

/// A list of keys as one JSON parameter, read back with `json_each`.
fn json_list(keys: &[String]) -> String {
    serde_json::to_string(keys).unwrap_or_else(|_| "[]".into())
}

/// What a job's key is derived from when it has none of its own: an http
/// job's URL, an exec job's handler.
const SOURCE_COLUMN: &str = "CASE WHEN limit_key IS NULL AND kind = 'http' \
     AND json_type(payload, '$.url') = 'text' THEN json_extract(payload, '$.url') \
     WHEN limit_key IS NULL AND kind = 'exec' \
     AND json_type(payload, '$.handler') = 'text' THEN json_extract(payload, '$.handler') END";

/// A candidate row: id, kind, limit_key, the source column, priority.
fn candidate(r: &rusqlite::Row<'_>) -> rusqlite::Result<Candidate> {
    Ok(Candidate {
        id: r.get(0)?,
        kind: text(r, 1)?,
        key: opt_text(r, 2)?,
        source: opt_text(r, 3)?,
        priority: r.get(4)?,
    })
}

impl Keyed<'_, '_> {
    /// Up to `n` keys with queued jobs in `queue`, in key order after
    /// `after`: a loose scan of `jobs_ready_key`, one seek per key.
    fn keys_after(&mut self, queue: &str, after: &str, n: usize) -> rusqlite::Result<Vec<String>> {
        self.0
            .prepare_cached(
                "WITH RECURSIVE k(key) AS ( \
                   SELECT (SELECT min(limit_key) FROM jobs \
                           WHERE state = 'queued' AND queue = ?1 AND limit_key > ?2) \
                   UNION ALL \
                   SELECT (SELECT min(limit_key) FROM jobs \
                           WHERE state = 'queued' AND queue = ?1 AND limit_key > k.key) \
                   FROM k WHERE k.key IS NOT NULL LIMIT ?3) \
                 SELECT key FROM k WHERE key IS NOT NULL",
            )?
            .query_map(params![queue, after, n as i64 + 1], |r| text(r, 0))?
            .collect()
    }
}

impl KeyedRows for Keyed<'_, '_> {
    type Error = rusqlite::Error;

    fn key_hints(&mut self, now: i64, count_running: bool) -> rusqlite::Result<KeyHints> {
        let closed = self
            .0
            .prepare_cached("SELECT key FROM limit_keys WHERE closed_until > ?1")?
            .query_map([now], |r| text(r, 0))?
            .collect::<rusqlite::Result<_>>()?;
        let running = if count_running {
            self.0
                .prepare_cached(
                    "SELECT limit_key, count(*) FROM jobs INDEXED BY jobs_running_key \
                     WHERE state = 'running' AND limit_key IS NOT NULL GROUP BY limit_key",
                )?
                .query_map([], |r| Ok((text(r, 0)?, r.get::<_, i64>(1)? as u64)))?
                .collect::<rusqlite::Result<_>>()?
        } else {
            HashMap::new()
        };
        Ok(KeyHints { closed, running })
    }

    fn running_in_queues(&mut self, queues: &[String]) -> rusqlite::Result<HashMap<String, u64>> {
        self.0
            .prepare_cached(
                "SELECT queue, count(*) FROM jobs INDEXED BY jobs_running \
                 WHERE state = 'running' AND queue IN (SELECT value FROM json_each(?1)) \
                 GROUP BY queue",
            )?
            .query_map([json_list(queues)], |r| {
                Ok((text(r, 0)?, r.get::<_, i64>(1)? as u64))
            })?
            .collect()
    }

    fn candidates(
        &mut self,
        queue: &str,
        pool: Pool,
        now: i64,
        window: usize,
        skip: &[String],
    ) -> rusqlite::Result<Vec<Candidate>> {
        // As the plain claim: the pool test and the window are literal
        // text, so the ready index serves the scan and the statement is
        // prepared once per pool and window.
        let leave_out = if skip.is_empty() {
            ""
        } else {
            "AND (limit_key IS NULL OR limit_key NOT IN (SELECT value FROM json_each(?3)))"
        };
        let sql = format!(
            "SELECT id, kind, limit_key, {SOURCE_COLUMN}, priority \
             FROM jobs WHERE state = 'queued' AND queue = ?1 AND {} = {} AND run_at <= ?2 \
               AND NOT EXISTS (SELECT 1 FROM queues WHERE name = ?1 AND paused = 1) {leave_out} \
             ORDER BY priority DESC, run_at, id LIMIT {window}",
            cpu_kind_test(),
            i32::from(pool == Pool::Cpu)
        );
        let mut stmt = self.0.prepare_cached(&sql)?;
        if skip.is_empty() {
            stmt.query_map(params![queue, now], candidate)?.collect()
        } else {
            stmt.query_map(params![queue, now, json_list(skip)], candidate)?
                .collect()
        }
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
    ) -> rusqlite::Result<Vec<Candidate>> {
        // One statement per key: in-process, so no round trips to save.
        let mut out = Vec::new();
        let mut seen = 0;
        let mut from = after.to_string();
        // Keys with only scheduled jobs are passed over, a bounded number.
        let mut budget = keys * 4;
        while seen < keys && budget > 0 {
            let asked = (keys - seen).min(budget);
            let next = self.keys_after(queue, &from, asked)?;
            budget -= next.len().min(budget);
            for key in next.iter().filter(|k| !skip.contains(k)) {
                let heads = self.heads(queue, pool, now, key, per_key)?;
                seen += usize::from(!heads.is_empty());
                out.extend(heads);
            }
            match next.last() {
                Some(last) if next.len() == asked => from = last.clone(),
                _ => break,
            }
        }
        Ok(out)
    }

    fn heads(
        &mut self,
        queue: &str,
        pool: Pool,
        now: i64,
        key: &str,
        n: usize,
    ) -> rusqlite::Result<Vec<Candidate>> {
        let sql = format!(
            "SELECT id, kind, limit_key, {SOURCE_COLUMN}, priority \
             FROM jobs INDEXED BY jobs_ready_key \
             WHERE state = 'queued' AND queue = ?1 AND limit_key = ?3 AND {} = {} \
               AND run_at <= ?2 \
               AND NOT EXISTS (SELECT 1 FROM queues WHERE name = ?1 AND paused = 1) \
             ORDER BY priority DESC, run_at, id LIMIT {n}",
            cpu_kind_test(),
            i32::from(pool == Pool::Cpu)
        );
        self.0
            .prepare_cached(&sql)?
            .query_map(params![queue, now, key], candidate)?
            .collect()
    }

    fn unkeyed(
        &mut self,
        queue: &str,
        pool: Pool,
        now: i64,
        look: usize,
        n: usize,
    ) -> rusqlite::Result<Vec<Candidate>> {
        let sql = format!(
            "SELECT * FROM ( \
               SELECT id, kind, limit_key, {SOURCE_COLUMN}, priority \
               FROM jobs WHERE state = 'queued' AND queue = ?1 AND {} = {} AND run_at <= ?2 \
                 AND NOT EXISTS (SELECT 1 FROM queues WHERE name = ?1 AND paused = 1) \
               ORDER BY priority DESC, run_at, id LIMIT {look}) \
             WHERE limit_key IS NULL LIMIT {n}",
            cpu_kind_test(),
            i32::from(pool == Pool::Cpu)
        );
        self.0
            .prepare_cached(&sql)?
            .query_map(params![queue, now], candidate)?
            .collect()
    }

    fn lock_keys(
        &mut self,
        keys: &[String],
        _now: i64,
    ) -> rusqlite::Result<HashMap<String, KeyState>> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        // The write lock is held: rows and counts are exact.
        let mut states: HashMap<String, KeyState> = self
            .0
            .prepare_cached(
                "SELECT key, starts, blocked_until FROM limit_keys \
                 WHERE key IN (SELECT value FROM json_each(?1))",
            )?
            .query_map([json_list(keys)], |r| {
                Ok((
                    text(r, 0)?,
                    KeyState {
                        starts: parse_starts(opt_text(r, 1)?),
                        blocked_until: r.get(2)?,
                        running: 0,
                    },
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let running = self
            .0
            .prepare_cached(
                "SELECT limit_key, count(*) FROM jobs INDEXED BY jobs_running_key \
                 WHERE state = 'running' AND limit_key IS NOT NULL \
                   AND limit_key IN (SELECT value FROM json_each(?1)) GROUP BY limit_key",
            )?
            .query_map([json_list(keys)], |r| {
                Ok((text(r, 0)?, r.get::<_, i64>(1)? as u64))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for (key, n) in running {
            states.entry(key).or_default().running = n;
        }
        Ok(states)
    }

    fn take(
        &mut self,
        claim: &Claim<'_>,
        started_at: i64,
        jobs: &[(i64, Option<String>)],
    ) -> rusqlite::Result<Vec<Claimed>> {
        // Derived keys first, then one statement takes every chosen job.
        let keyed: Vec<(i64, String)> = jobs
            .iter()
            .filter_map(|(id, key)| Some((*id, key.clone()?)))
            .collect();
        if !keyed.is_empty() {
            self.set_keys(&keyed)?;
        }
        let ids: Vec<i64> = jobs.iter().map(|(id, _)| *id).collect();
        let ids = serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into());
        self.0
            .prepare_cached(&format!(
                "UPDATE jobs SET state = 'running', attempts = {NEXT_ATTEMPT}, started_at = ?1, \
                 finished_at = NULL, lease_until = ?2, worker = ?3 \
                 WHERE id IN (SELECT value FROM json_each(?4)) AND state = 'queued' \
                 RETURNING {CLAIMED_COLUMNS}"
            ))?
            .query_map(
                params![started_at, claim.lease_until, claim.worker, ids],
                claimed_from_row,
            )?
            .collect()
    }

    fn set_keys(&mut self, keyed: &[(i64, String)]) -> rusqlite::Result<()> {
        let mut stmt = self.0.prepare_cached(
            "UPDATE jobs SET limit_key = ?2 WHERE id = ?1 AND state = 'queued' AND limit_key IS NULL",
        )?;
        for (id, key) in keyed {
            stmt.execute(params![id, key])?;
        }
        Ok(())
    }

    fn save_rates(&mut self, rates: &[RateWrite], now: i64) -> rusqlite::Result<()> {
        let mut stmt = self.0.prepare_cached(
            "INSERT INTO limit_keys (key, starts, closed_until, updated_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (key) DO UPDATE SET starts = excluded.starts, \
               closed_until = max(excluded.closed_until, coalesce(blocked_until, 0)), \
               updated_at = excluded.updated_at",
        )?;
        for r in rates {
            stmt.execute(params![r.key, starts_text(&r.starts), r.next_start_at, now])?;
        }
        Ok(())
    }
}

/// Claims inside an open transaction (see [`crate::store::Queue::claim`]).
pub(super) fn claim_in(
    tx: &rusqlite::Transaction<'_>,
    claim: &Claim<'_>,
    seen: &crate::store::keyed::KeysSeen,
) -> rusqlite::Result<Vec<Claimed>> {
    let mut jobs = match crate::store::keyed::FleetQueues::lock(&mut Keyed(tx), claim)? {
        None => claim_unlocked(tx, claim, seen)?,
        Some(fleet) => {
            let capped = Claim {
                requests: &fleet.requests,
                ..*claim
            };
            let jobs = claim_unlocked(tx, &capped, seen)?;
            if fleet.record(&mut Keyed(tx), &jobs)? {
                seen.forget();
            }
            jobs
        }
    };
    crate::store::flows::attach_parents(&mut jobs, |ids| {
        tx.prepare_cached(
            "SELECT id, kind, state, result, last_error FROM jobs \
             WHERE id IN (SELECT value FROM json_each(?1))",
        )?
        .query_map([serde_json::to_string(ids).unwrap_or_default()], |r| {
            Ok(crate::store::flows::ParentOutcome {
                id: r.get(0)?,
                kind: text(r, 1)?,
                state: text(r, 2)?,
                result: opt_text(r, 3)?.and_then(|t| serde_json::from_str(&t).ok()),
                error: opt_text(r, 4)?,
            })
        })?
        .collect()
    })?;
    crate::store::flows::attach_batches(&mut jobs, |name| {
        tx.prepare_cached(
            "SELECT name, total, succeeded, dead, cancelled FROM batches WHERE name = ?1",
        )?
        .query_row([name], |r| {
            Ok(crate::store::flows::BatchCounts {
                name: text(r, 0)?,
                total: r.get(1)?,
                succeeded: r.get(2)?,
                dead: r.get(3)?,
                cancelled: r.get(4)?,
            })
        })
        .optional()
    })?;
    Ok(jobs)
}

/// [`claim_in`] once the fleet-wide queue limits are applied.
fn claim_unlocked(
    tx: &rusqlite::Transaction<'_>,
    claim: &Claim<'_>,
    seen: &crate::store::keyed::KeysSeen,
) -> rusqlite::Result<Vec<Claimed>> {
    if let Some(jobs) = crate::store::keyed::claim_keyed(&mut Keyed(tx), claim, seen)? {
        return Ok(jobs);
    }
    crate::store::shared::claim_by_plan(claim.requests, |queue, pool, limit| {
        claim_pool(tx, claim, queue, pool, limit)
    })
}
