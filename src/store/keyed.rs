//! The keyed claim, written once for both backends (docs/reference.md,
//! "Keyed limits"): inside the claim's own transaction, the candidates of
//! each queue and pool are read in claim order, keyed (their own
//! `limit_key`, else the key derived from their kind), and taken only
//! while their key's fleet-wide concurrency and rate allow and no block
//! holds it. Each backend supplies the row operations ([`KeyedRows`]).
//! Also here: the fair claim's rotation ([`fair_candidates`]) and the
//! assembly of `Reads::keys` ([`key_activity`]), the keys `jobd keys`,
//! the dashboard and the metrics show.
//!
//! Exactness: on SQLite the claim holds the write lock throughout. On
//! PostgreSQL a claim with limited keys takes one transaction-level
//! advisory lock (per schema) before it reads their rows and counts their
//! running jobs, so two daemons' limited claims count one after the other
//! and neither overshoots.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::job::{Claimed, Pool};
use crate::keys::{KeyRules, Limit};
use crate::store::contract::{Claim, ClaimRequest};

/// One job a keyed claim may take.
#[derive(Clone, Debug)]
pub(crate) struct Candidate {
    pub(crate) id: i64,
    pub(crate) kind: String,
    /// Its `limit_key` as stored.
    pub(crate) key: Option<String>,
    /// What its key is derived from when it has none of its own: an http
    /// job's URL, an exec job's handler.
    pub(crate) source: Option<String>,
    /// Its priority (fair claims order by it first).
    pub(crate) priority: i64,
}

/// A key's row in `limit_keys`, as the claim needs it.
#[derive(Clone, Debug, Default)]
pub(crate) struct KeyState {
    /// The key's recent starts (epoch ms, ascending), for its rate.
    pub(crate) starts: Vec<i64>,
    /// No job of the key starts before this (a service's block).
    pub(crate) blocked_until: Option<i64>,
    /// The key's running jobs on every daemon.
    pub(crate) running: u64,
}

/// What a keyed claim reads before its candidates: the keys closed now
/// (blocked, or waiting for their rate) and, when counted, the running
/// jobs per key. A snapshot that keeps jobs of closed and full keys out
/// of the candidates; the exact counts are read under the keys' lock.
#[derive(Debug, Default)]
pub(crate) struct KeyHints {
    pub(crate) closed: Vec<String>,
    pub(crate) running: HashMap<String, u64>,
}

/// A key's rate state to write back after a claim.
pub(crate) struct RateWrite {
    pub(crate) key: String,
    /// The starts of the last period, ascending.
    pub(crate) starts: Vec<i64>,
    /// When the rate lets the next job of the key start.
    pub(crate) next_start_at: i64,
}

/// A key's recent starts as stored in `limit_keys.starts` (a JSON array of
/// epoch ms); jobd writes it, and anything else reads as no starts.
pub(crate) fn parse_starts(text: Option<String>) -> Vec<i64> {
    let mut starts: Vec<i64> = text
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    starts.sort_unstable();
    starts
}

/// [`parse_starts`]'s inverse.
pub(crate) fn starts_text(starts: &[i64]) -> String {
    serde_json::to_string(starts).unwrap_or_else(|_| "[]".into())
}

/// The row operations of a keyed claim, inside the claim's transaction.
pub(crate) trait KeyedRows {
    /// The driver's error.
    type Error;
    /// The keys closed now (`closed_until > now`) and, with
    /// `count_running`, the running jobs of every key: one read.
    fn key_hints(&mut self, now: i64, count_running: bool) -> Result<KeyHints, Self::Error>;
    /// Up to `window` ready jobs of `queue` on `pool` in claim order,
    /// leaving out jobs whose stored key is in `skip` (paused queues give
    /// none).
    fn candidates(
        &mut self,
        queue: &str,
        pool: Pool,
        now: i64,
        window: usize,
        skip: &[String],
    ) -> Result<Vec<Candidate>, Self::Error>;
    /// The first `per_key` ready jobs (claim order) of each of the next
    /// `keys` keys of `queue` on `pool` after `after` in key order that
    /// have one, passing over `skip`: a loose scan of `jobs_ready_key`, one
    /// seek per key. In key order, then claim order.
    #[allow(clippy::too_many_arguments)]
    fn key_heads(
        &mut self,
        queue: &str,
        pool: Pool,
        now: i64,
        after: &str,
        skip: &[String],
        keys: usize,
        per_key: usize,
    ) -> Result<Vec<Candidate>, Self::Error>;
    /// Up to `n` ready jobs of `queue` on `pool` with key `key`, in claim
    /// order.
    fn heads(
        &mut self,
        queue: &str,
        pool: Pool,
        now: i64,
        key: &str,
        n: usize,
    ) -> Result<Vec<Candidate>, Self::Error>;
    /// Up to `n` jobs without a key among the first `look` ready jobs of
    /// `queue` on `pool` (claim order): no index finds jobs without a key
    /// past a backlog of keyed ones, so a fair claim looks only this far.
    fn unkeyed(
        &mut self,
        queue: &str,
        pool: Pool,
        now: i64,
        look: usize,
        n: usize,
    ) -> Result<Vec<Candidate>, Self::Error>;
    /// The rows of `keys` (sorted) and their running jobs, read under a
    /// lock held for the rest of the transaction that makes limited
    /// claims take turns (SQLite: its write lock; PostgreSQL: one
    /// advisory lock per schema). A key without a row may be left out.
    fn lock_keys(
        &mut self,
        keys: &[String],
        now: i64,
    ) -> Result<HashMap<String, KeyState>, Self::Error>;
    /// Marks `jobs` running as a plain claim does, started at `started_at`
    /// (the time their keys' rates were judged at), writing each one's key
    /// where given (a derived key).
    fn take(
        &mut self,
        claim: &Claim<'_>,
        started_at: i64,
        jobs: &[(i64, Option<String>)],
    ) -> Result<Vec<Claimed>, Self::Error>;
    /// Writes derived keys into jobs left queued, so that later claims
    /// leave them out by key instead of deriving again.
    fn set_keys(&mut self, keyed: &[(i64, String)]) -> Result<(), Self::Error>;
    /// Writes keys' rate state.
    fn save_rates(&mut self, rates: &[RateWrite], now: i64) -> Result<(), Self::Error>;
    /// The running jobs of each of `queues` on every daemon.
    fn running_in_queues(&mut self, queues: &[String])
        -> Result<HashMap<String, u64>, Self::Error>;
}

/// What a store last saw of `limit_keys`, so that a daemon with no
/// `[keys]` of its own does not read the table on every claim: "no key is
/// closed" is trusted for [`KeysSeen::TRUST_MS`] of the claims' clock,
/// and forgotten as soon as this store writes a block. A block another
/// daemon writes is honoured here within that time; with key limits
/// configured every claim reads the table.
#[derive(Debug, Default)]
pub(crate) struct KeysSeen {
    /// Until when (epoch ms) no key is known to be closed; 0: look.
    none_closed_until: std::sync::atomic::AtomicI64,
}

impl KeysSeen {
    pub(crate) const TRUST_MS: i64 = 100;

    /// True when no key was closed at the last look, not long ago.
    pub(crate) fn none_closed(&self, now: i64) -> bool {
        now < self
            .none_closed_until
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn saw(&self, closed: bool, now: i64) {
        let until = if closed { 0 } else { now + Self::TRUST_MS };
        self.none_closed_until
            .store(until, std::sync::atomic::Ordering::Relaxed);
    }

    /// This store wrote a block: look again at the next claim.
    pub(crate) fn forget(&self) {
        self.none_closed_until
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How many candidates a claim for `limit` jobs reads: enough that the
/// jobs of keys at their limit (not yet known to be closed) do not stop it.
fn window(limit: usize) -> usize {
    (limit * 4 + 8).min(512)
}

/// The keyed claim; None when no key limit is configured and no key is
/// closed, so the caller runs its plain claim (the fast path, unchanged).
// Long: one decision per candidate in claim order with the state it updates; split, the exactness argument would be spread over several functions.
pub(crate) fn claim_keyed<R: KeyedRows>(
    rows: &mut R,
    claim: &Claim<'_>,
    seen: &KeysSeen,
) -> Result<Option<Vec<Claimed>>, R::Error> {
    let rules: &KeyRules = claim.keys;
    let now = claim.now;
    let fair = claim.requests.iter().any(|r| r.fair_after.is_some());
    let trusted = rules.is_empty() && seen.none_closed(now);
    if trusted && !fair {
        return Ok(None);
    }
    // A fair queue on a daemon without [keys] rotates on every claim, but
    // trusts "no key is closed" like the plain claim does.
    let hints = if trusted {
        KeyHints::default()
    } else {
        let hints = rows.key_hints(now, !rules.is_empty())?;
        seen.saw(!hints.closed.is_empty(), now);
        hints
    };
    if rules.is_empty() && hints.closed.is_empty() && !fair {
        return Ok(None);
    }
    // Keys no job may start under in this claim: closed ones, and those
    // at their concurrency (a snapshot; the exact count comes below).
    let mut skip: BTreeSet<String> = hints.closed.into_iter().collect();
    for (key, running) in hints.running {
        let full = rules
            .limit_of(&key)
            .and_then(|l| l.concurrency)
            .is_some_and(|c| running >= u64::from(c));
        if full {
            skip.insert(key);
        }
    }
    let mut limits: HashMap<String, Option<Limit>> = HashMap::new();
    let jobs = crate::store::shared::claim_by_plan(claim.requests, |queue, pool, limit| {
        let request = claim.requests.iter().find(|r| r.queue == queue);
        let mut candidates = match request.and_then(|r| r.fair_after.as_deref()) {
            Some(after) => fair_candidates(rows, queue, pool, now, limit, after, &skip)?,
            None => {
                let skipped: Vec<String> = skip.iter().cloned().collect();
                rows.candidates(queue, pool, now, window(limit), &skipped)?
            }
        };
        let mut derived = vec![false; candidates.len()];
        for (c, derived) in candidates.iter_mut().zip(&mut derived) {
            if c.key.is_none() {
                c.key = rules.derived_key(&c.kind, c.source.as_deref());
                *derived = c.key.is_some();
            }
        }
        let limited: Vec<String> = candidates
            .iter()
            .filter_map(|c| c.key.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|k| {
                limits
                    .entry(k.clone())
                    .or_insert_with(|| rules.limit_of(k))
                    .is_some()
            })
            .collect();
        let mut states = rows.lock_keys(&limited, now)?;
        // The clock for the keys' rates, read once their rows are locked
        // (SQLite: the write lock): a time read before waiting for the lock
        // may be older than starts another claim recorded meanwhile, and a
        // window judged at that older time lets too many in.
        let now = now.max(crate::job::now_ms());
        let mut taken: Vec<(i64, Option<String>)> = Vec::new();
        let mut keyed_later: Vec<(i64, String)> = Vec::new();
        let mut rates: BTreeMap<String, RateWrite> = BTreeMap::new();
        for (c, derived) in candidates.iter().zip(derived) {
            if taken.len() == limit {
                break;
            }
            let write_key = derived.then(|| c.key.clone()).flatten();
            let Some(key) = &c.key else {
                taken.push((c.id, None));
                continue;
            };
            let state = states.entry(key.clone()).or_default();
            let blocked = state.blocked_until.is_some_and(|until| until > now);
            let allowed = !blocked
                && !skip.contains(key)
                && match limits.get(key).copied().flatten() {
                    None => true,
                    Some(limit) => {
                        let room = limit
                            .concurrency
                            .is_none_or(|c| state.running < u64::from(c));
                        let fits = room
                            && limit
                                .rate
                                .is_none_or(|rate| rate.admit(&mut state.starts, now));
                        if fits {
                            if let Some(rate) = limit.rate {
                                rates.insert(
                                    key.clone(),
                                    RateWrite {
                                        key: key.clone(),
                                        starts: state.starts.clone(),
                                        next_start_at: rate.next_start_at(&state.starts),
                                    },
                                );
                            }
                            state.running += 1;
                        }
                        fits
                    }
                };
            if allowed {
                taken.push((c.id, write_key));
            } else {
                // Closed for the rest of this claim; a derived key is
                // written so the next claims leave the job out by key.
                skip.insert(key.clone());
                if let Some(key) = write_key {
                    keyed_later.push((c.id, key));
                }
            }
        }
        let rates: Vec<RateWrite> = rates.into_values().collect();
        if !rates.is_empty() {
            rows.save_rates(&rates, now)?;
        }
        if !keyed_later.is_empty() {
            rows.set_keys(&keyed_later)?;
        }
        if taken.is_empty() {
            return Ok(Vec::new());
        }
        rows.take(claim, now, &taken)
    })?;
    Ok(Some(jobs))
}

/// The key under which a fleet-wide queue limit keeps its rate state and
/// its lock in `limit_keys` (keys starting `jobd:` are jobd's own).
pub(crate) fn queue_key(queue: &str) -> String {
    format!("{}queue:{queue}", crate::keys::RESERVED_PREFIX)
}

/// The fleet-wide queue limits of a claim ([`ClaimRequest::fleet`]),
/// applied before the claim takes anything: under the keys' lock, each
/// such queue's row in `limit_keys` is read, its
/// running jobs on every daemon counted and its recent starts read, and
/// its request capped to what is left; [`FleetQueues::record`] then
/// writes the starts the claim made. Exact for the same reason keyed
/// limits are: the lock (SQLite: the write lock) orders the claimers.
pub(crate) struct FleetQueues {
    /// The claim's requests, fleet-limited ones capped.
    pub(crate) requests: Vec<ClaimRequest>,
    /// Per rate-limited queue: its key, rate and starts as locked.
    rates: Vec<(String, String, crate::keys::KeyRate, Vec<i64>)>,
    /// The clock the caps were judged at (read after locking).
    now: i64,
}

impl FleetQueues {
    /// Locks and caps; None when no request is limited fleet-wide.
    pub(crate) fn lock<R: KeyedRows>(
        rows: &mut R,
        claim: &Claim<'_>,
    ) -> Result<Option<FleetQueues>, R::Error> {
        let queues: BTreeSet<&str> = claim
            .requests
            .iter()
            .filter(|r| r.fleet.is_some())
            .map(|r| r.queue.as_str())
            .collect();
        if queues.is_empty() {
            return Ok(None);
        }
        let keys: Vec<String> = queues.iter().map(|q| queue_key(q)).collect();
        let mut states = rows.lock_keys(&keys, claim.now)?;
        // As for key rates: judged at a clock read once the rows are locked.
        let now = claim.now.max(crate::job::now_ms());
        let names: Vec<String> = queues.iter().map(|q| q.to_string()).collect();
        let running = rows.running_in_queues(&names)?;
        let mut requests = claim.requests.to_vec();
        let mut rates = Vec::new();
        for request in requests.iter_mut() {
            let Some(limit) = request.fleet else { continue };
            let mut cap = request.limit;
            if let Some(c) = limit.concurrency {
                let busy = running.get(&request.queue).copied().unwrap_or(0);
                cap = cap.min(u64::from(c).saturating_sub(busy) as usize);
            }
            if let Some(rate) = limit.rate {
                let key = queue_key(&request.queue);
                let starts = states.remove(&key).map(|s| s.starts).unwrap_or_default();
                // What the window lets in now: admit on a copy until full.
                let mut trial = starts.clone();
                let mut room = 0;
                while room < cap && rate.admit(&mut trial, now) {
                    room += 1;
                }
                cap = room;
                rates.push((request.queue.clone(), key, rate, starts));
            }
            request.limit = cap;
        }
        Ok(Some(FleetQueues {
            requests,
            rates,
            now,
        }))
    }

    /// Records the starts of `jobs` (the claim's result) in the rate
    /// state of their fleet-limited queues; true when one of them is now
    /// closed until its next start (the caller's [`KeysSeen`] must then
    /// look, so the dispatcher wakes when it opens).
    pub(crate) fn record<R: KeyedRows>(
        self,
        rows: &mut R,
        jobs: &[Claimed],
    ) -> Result<bool, R::Error> {
        let mut writes = Vec::new();
        for (queue, key, rate, mut starts) in self.rates {
            let n = jobs.iter().filter(|j| j.queue == queue).count();
            if n == 0 {
                continue;
            }
            for _ in 0..n {
                rate.admit(&mut starts, self.now);
            }
            writes.push(RateWrite {
                key,
                next_start_at: rate.next_start_at(&starts),
                starts,
            });
        }
        if writes.is_empty() {
            return Ok(false);
        }
        rows.save_rates(&writes, self.now)?;
        Ok(writes.iter().any(|w| w.next_start_at > self.now))
    }
}

/// A fair queue's candidates: the queue's keys in rotation from `after`
/// (the key served last), one ready job of each, then more of each while
/// the claim would come up short, taken one key at a time round after
/// round, with the jobs that have no key as one more key at the end; then
/// by priority, the rotation kept within a priority. Keys in `skip` (closed
/// or at their limit) are passed over. At most `window(limit)` keys are
/// visited, so a claim costs the same however many keys wait.
fn fair_candidates<R: KeyedRows>(
    rows: &mut R,
    queue: &str,
    pool: Pool,
    now: i64,
    limit: usize,
    after: &str,
    skip: &BTreeSet<String>,
) -> Result<Vec<Candidate>, R::Error> {
    let want = window(limit);
    let skip: Vec<String> = skip.iter().cloned().collect();
    // The rotation's groups: each key's first `per_key` jobs from the
    // cursor on, round to the first key, then the jobs without a key.
    let pass = |rows: &mut R, per_key: usize| -> Result<Vec<Vec<Candidate>>, R::Error> {
        let mut jobs = rows.key_heads(queue, pool, now, after, &skip, want, per_key)?;
        let keys_seen = jobs
            .iter()
            .filter_map(|c| c.key.as_deref())
            .collect::<BTreeSet<_>>()
            .len();
        if keys_seen < want && !after.is_empty() {
            let rest = rows.key_heads(queue, pool, now, "", &skip, want - keys_seen, per_key)?;
            jobs.extend(
                rest.into_iter()
                    .filter(|c| c.key.as_deref().is_some_and(|k| k <= after)),
            );
        }
        let mut groups: Vec<Vec<Candidate>> = Vec::new();
        for c in jobs {
            match groups.last_mut() {
                Some(group) if group[0].key == c.key => group.push(c),
                _ => groups.push(vec![c]),
            }
        }
        groups.push(rows.unkeyed(queue, pool, now, want, per_key)?);
        Ok(groups)
    };
    let mut heads = pass(rows, 1)?;
    // Fewer keys than the claim wants: their next jobs fill it (the
    // rotation still comes first), so a fair claim is not a short one.
    if heads.len() <= limit && limit > 1 {
        heads = pass(rows, limit)?;
    }
    let rounds = heads.iter().map(Vec::len).max().unwrap_or(0);
    let mut out: Vec<Candidate> = Vec::new();
    for round in 0..rounds {
        for group in &heads {
            if let Some(c) = group.get(round) {
                out.push(c.clone());
            }
        }
    }
    // Priority first; within a priority the rotation's order (stable).
    out.sort_by_key(|c| std::cmp::Reverse(c.priority));
    Ok(out)
}

/// The SQL of [`crate::store::Reads::keys`] for a key's ready jobs in one
/// queue, counted up to [`crate::keys::READY_COUNTED`]; `p` is the
/// placeholder sigil (`?` or `$`) for queue, key, now.
pub(crate) fn key_ready_sql(p: char) -> String {
    format!(
        "SELECT count(*) FROM (SELECT 1 FROM jobs WHERE state = 'queued' AND queue = {p}1 \
           AND limit_key = {p}2 AND run_at <= {p}3 LIMIT {}) t",
        crate::keys::READY_COUNTED
    )
}

/// A `limit_keys` row as [`crate::store::Reads::keys`] reads it: key,
/// starts, blocked_until, blocked_status, closed_until.
pub(crate) type LimitKeyRow = (String, Option<String>, Option<i64>, Option<i64>, i64);

/// The SQL of [`crate::store::Reads::keys`] for its `limit_keys` rows:
/// those closed at `now` (a placeholder) and those of the running keys
/// (`in_running`: the backend's test of `key` against that list). Two
/// halves, each one index lookup.
pub(crate) fn limit_key_rows_sql(now: &str, in_running: &str) -> String {
    let columns = "key, starts, blocked_until, blocked_status, closed_until";
    format!(
        "SELECT {columns} FROM limit_keys WHERE closed_until > {now} \
         UNION ALL \
         SELECT {columns} FROM limit_keys WHERE key {in_running} AND closed_until <= {now}"
    )
}

/// Puts [`crate::store::Reads::keys`] together from each backend's rows:
/// the keys with running jobs (`running`) and the `limit_keys` rows of
/// those keys and of every key closed now (`rows`, already read), each
/// key's ready jobs counted over `queues` by `ready` (none: not counted).
/// By key.
pub(crate) fn key_activity<E>(
    running: HashMap<String, u64>,
    rows: Vec<LimitKeyRow>,
    queues: &[String],
    mut ready: impl FnMut(&str, &str) -> Result<i64, E>,
) -> Result<Vec<crate::keys::KeyActivity>, E> {
    let mut keys: BTreeMap<String, crate::keys::KeyActivity> = BTreeMap::new();
    for (key, n) in running {
        keys.entry(key).or_default().running = n;
    }
    for (key, starts, blocked_until, blocked_status, closed_until) in rows {
        let a = keys.entry(key).or_default();
        a.starts = parse_starts(starts);
        a.blocked = blocked_until.map(|until| (until, blocked_status.unwrap_or(0)));
        a.closed_until = closed_until;
    }
    for (key, a) in keys.iter_mut() {
        a.key = key.clone();
        let mut n = 0;
        for queue in queues {
            n += ready(queue, key)?.max(0) as u64;
        }
        a.ready = n.min(crate::keys::READY_COUNTED);
    }
    Ok(keys.into_values().collect())
}
