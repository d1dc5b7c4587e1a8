//! Finished attempts to written outcomes: collecting them from the pools,
//! the write step that completes and claims in one transaction, what a
//! failed write or claim does, and reconciling with what the database says
//! this daemon holds.

use crate::daemon::executor::Control;
use crate::daemon::pool::threads::Finished;
use crate::event;
use crate::job::{now_ms, Attempt, Claimed, Pool};
use crate::store::{Claim, Stepped, StoreError};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::daemon::dispatcher::*;
use crate::store::{Applied, ClaimRequest};

impl Dispatcher {
    /// Moves every finished attempt into the completer.
    pub(super) fn collect(&mut self) {
        while let Ok(finished) = self.done.try_recv() {
            self.on_finished(finished);
        }
    }

    pub(super) fn on_finished(&mut self, finished: Finished) {
        if Pool::of_kind(&finished.kind) == Pool::Io {
            let took = finished.elapsed.as_secs_f64();
            self.avg_duration = if self.avg_duration.is_finite() {
                self.avg_duration + DURATION_WEIGHT * (took - self.avg_duration)
            } else {
                took
            };
        }
        let key = (finished.completion.id, finished.completion.attempt);
        if let Some(entry) = self.in_flight.get_mut(&key) {
            if !entry.reported {
                entry.reported = true;
                self.unreported -= 1;
            }
        }
        self.completer.push(finished);
    }

    /// One transaction: write the waiting outcomes and claim for the free
    /// slots, then hand the claimed jobs out.
    pub(super) fn write_step(&mut self, now_i: Instant) {
        let due = self.next_due.is_some_and(|t| now_ms() >= t)
            || self.next_token.is_some_and(|t| now_i >= t);
        if due {
            self.look_again();
            self.next_due = None;
            self.next_token = None;
        }
        let flush = self.flush_due(now_i);
        // Outcomes written in this transaction free their slots for the
        // claim that follows in the same transaction.
        let mut slots = self.free_slots();
        // Not while writes fail: outcomes written beside the claim (on
        // PostgreSQL) may fail while it succeeds, and each retry would
        // claim again for the same slots.
        if flush && !self.completer.failing() {
            for entry in self.in_flight.values().filter(|e| e.reported) {
                match entry.pool {
                    Pool::Cpu => slots.cpu += 1,
                    Pool::Io => slots.io += 1,
                }
            }
        }
        let claiming = self.maybe_ready && self.claimable(slots) > 0 && self.can_claim_at(now_i);
        let mut queues = Vec::new();
        let mut requests = Vec::new();
        if claiming {
            match self.queues_to_serve() {
                Ok(q) => queues = q,
                Err(e) => {
                    self.store_failed(&e);
                    return self.claim_failed(&e, now_i);
                }
            }
            requests = self.limits.plan(slots, &queues, now_i);
        }
        // A queue held back by its own limit may take the slots this write
        // frees; other queues already had them offered in this claim.
        let held_back = claiming && queues.iter().any(|q| self.limits.allowance(q, now_i) == 0);
        if !flush && requests.is_empty() {
            if claiming {
                // Nothing to claim now (limits): no claim is pending, so
                // none is failing either.
                self.claim_retry_at = None;
                self.maybe_ready = false;
                self.next_token = self.limits.next_token(&queues, now_i);
                self.refresh_next_due(&queues, &Pool::ALL);
            }
            return;
        }
        let now = now_ms();
        let lease = self.config.daemon.lease.as_millis() as i64;
        let claim = Claim {
            worker: &self.worker,
            now,
            lease_until: now + lease,
            requests: &requests,
            keys: &self.keys,
        };
        let stepped = self
            .store
            .complete_and_claim(self.completer.batch(now_i), &claim);
        let (applied, claimed) = match stepped {
            Stepped::Together(Ok((applied, jobs))) => {
                let step = Step::together(&requests, &queues, held_back);
                return self.wrote(applied, jobs, step, now, now_i);
            }
            Stepped::Together(Err(e)) => {
                self.store_failed(&e);
                if self.completer.ready(now_i) {
                    self.completer.failed(&e, now_i);
                }
                if !requests.is_empty() {
                    self.claim_failed(&e, now_i);
                }
                return;
            }
            Stepped::Apart { applied, claimed } => (applied, claimed),
        };
        // Two transactions: what committed is taken first, then what
        // failed is noted (so `/healthz` keeps saying so).
        let (applied, write_error) = match applied {
            Ok(applied) => (applied, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        let (jobs, claim_error, asked) = match claimed {
            Ok(jobs) => (jobs, None, &requests[..]),
            Err(e) => (Vec::new(), Some(e), &[][..]),
        };
        let step = Step {
            requests: asked,
            queues: &queues,
            held_back,
            claim_saw_outcomes: false,
            claim_failed: claim_error.is_some(),
            write_failed: write_error.is_some(),
        };
        self.wrote(applied, jobs, step, now, now_i);
        if let Some(e) = write_error {
            self.store_failed(&e);
            self.completer.failed(&e, now_i);
        }
        if let Some(e) = claim_error {
            self.store_failed(&e);
            self.claim_failed(&e, now_i);
        }
    }

    /// After a write step committed: frees the written outcomes' slots,
    /// hands out the claimed jobs, and notes whether ready jobs may be left
    /// behind (look again at once) or when to look next.
    fn wrote(
        &mut self,
        applied: Vec<Applied>,
        jobs: Vec<Claimed>,
        step: Step<'_>,
        now: i64,
        now_i: Instant,
    ) {
        let Step {
            requests,
            queues,
            held_back,
            claim_saw_outcomes,
            claim_failed,
            write_failed,
        } = step;
        // The claims' trouble ends with a claim that went through (a step
        // that claimed nothing says nothing about them), the writes' with
        // outcomes written.
        if !requests.is_empty() {
            self.claim_retry_at = None;
        }
        self.last_write = Instant::now();
        self.writes += 1;
        self.claimed += jobs.len() as u64;
        let applied_none = applied.is_empty();
        // The completer says `db.recovered` itself for outcomes it held.
        let recovery_said = !applied_none && self.completer.failing();
        // Outcomes that made jobs ready which nobody announces: a retry,
        // a freed place under a key's or a queue's concurrency limit.
        let mut unannounced = false;
        if !applied.is_empty() {
            for written in self.completer.written(&applied, &self.state.counters) {
                let keyed = (self.in_flight.get(&(written.id, written.attempt)))
                    .is_some_and(|entry| entry.keyed);
                unannounced |= written.requeued || keyed || self.limits.limited(&written.queue);
                self.release(written.id, written.attempt);
                self.limits.finished(&written.queue);
            }
            // Slots came free without a claim to use them.
            if requests.is_empty() {
                self.maybe_ready = true;
            }
        }
        if !requests.is_empty() {
            // The pools this claim asked of. A pool with no free slot was
            // not asked; when its slots come free it claims.
            let asked: Vec<Pool> = Pool::ALL
                .into_iter()
                .filter(|&pool| requests.iter().any(|r| r.for_pool(pool) > 0))
                .collect();
            let got = pools_full(requests, &jobs);
            // The pools that came up short and were not dry before.
            let mut dried = Vec::new();
            for &pool in &asked {
                let dry = !got.contains(&pool);
                let was = match pool {
                    Pool::Cpu => std::mem::replace(&mut self.dry.cpu, dry),
                    Pool::Io => std::mem::replace(&mut self.dry.io, dry),
                };
                if dry && !was {
                    dried.push(pool);
                }
            }
            let full = !got.is_empty();
            self.maybe_ready = full;
            // A queue its own limit held back may take the slots these
            // outcomes freed, whichever pool came up short.
            if !applied.is_empty() && held_back {
                self.look_again();
            }
            let served: Vec<(&str, &str)> = jobs
                .iter()
                .filter_map(|j| Some((j.queue.as_str(), j.limit_key.as_deref()?)))
                .collect();
            self.limits.served(&served);
            for job in jobs {
                self.dispatch(job, now, now_i);
            }
            if !full {
                self.next_token = self.limits.next_token(queues, now_i);
                // Only the pools this claim asked of came up short; one
                // not asked looks ahead itself if its own claim comes up
                // short. (On PostgreSQL the IO look-ahead was a quarter
                // of the server's work in a drain where only the idle CPU
                // pool came up short.)
                self.refresh_next_due(queues, &asked);
            } else if !dried.is_empty() {
                // The other pool came up full and claims again, but a
                // dry pool claims only at a wake or a due time: its next
                // job's time and its queues' next tokens, once per dry
                // spell (not at every step of a drain).
                let known = self.next_due;
                self.refresh_next_due(queues, &dried);
                self.next_due = match (known, self.next_due) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                self.next_token = self.limits.next_token(queues, now_i);
            }
        }
        // Outcomes no claim of theirs saw may have released jobs (a flow's
        // next job, a key's freed slot, a retry): the next claim looks,
        // for either pool. Where the store announces a flow's releases
        // (PostgreSQL's NOTIFY), only what it does not announce counts:
        // otherwise every turn of a drain claimed twice.
        let seen = claim_saw_outcomes && !requests.is_empty();
        if !applied_none && !seen && (unannounced || !self.store.announces_releases()) {
            self.look_again();
        }
        // The streak `/healthz` reports lasts while either part is in
        // trouble: a step that only wrote outcomes, or only claimed, or
        // whose other part failed, does not end it, and a failing claim
        // is logged once per streak, not after every outcome written.
        if !claim_failed
            && !write_failed
            && self.claim_retry_at.is_none()
            && !self.completer.failing()
        {
            let since = self.state.failing_since.swap(0, Ordering::Relaxed);
            if since != 0 {
                // A failed claim may have committed with its reply
                // lost: look for such jobs now, not a lease later.
                self.next_renew = now_i;
                if !recovery_said {
                    crate::event!(
                        Info,
                        "db.recovered",
                        failing_for_ms = (now as u64).saturating_sub(since)
                    );
                }
            }
        }
    }

    /// Whether the waiting outcomes should be written now.
    pub(super) fn flush_due(&self, now: Instant) -> bool {
        self.draining.is_some() && self.completer.ready(now)
            || self.completer.due(now, self.unreported)
    }

    /// Notes a failed store operation for `/healthz`.
    pub(super) fn store_failed(&self, e: &StoreError) {
        let now = now_ms().max(1) as u64;
        let _ =
            self.state
                .failing_since
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        if let Ok(mut last) = self.state.last_failure.lock() {
            *last = e.to_string();
        }
    }

    pub(super) fn claim_failed(&mut self, e: &StoreError, now: Instant) {
        // One line when trouble starts, not one every 250 ms while it lasts.
        let first = self.claim_retry_at.is_none();
        self.claim_retry_at = Some(now + CLAIM_RETRY);
        if !first {
            return;
        }
        crate::store::log_trouble("claim", e, "claiming again in 250ms; running jobs go on");
    }

    pub(super) fn settled(&mut self, job: Claimed, control: Arc<Control>, finished: Finished) {
        self.hold(
            job.id,
            InFlight {
                pool: Pool::of_kind(&job.kind),
                queue: job.queue,
                kind: job.kind,
                attempt: job.attempts,
                started_at: finished.completion.started_at,
                timeout: Duration::ZERO,
                max_attempts: 0,
                control,
                reported: true,
                keyed: job.limit_key.is_some(),
            },
        );
        self.completer.push(finished);
    }

    /// Gives back, without counting the attempt, what the database says
    /// this daemon runs but it does not hold: a claim that committed while
    /// its reply was lost with the connection. Left alone such a job would
    /// wait out its lease under a live daemon and lose that attempt.
    pub(super) fn reconcile(&mut self) {
        let held = match self.store.held_by(&self.worker) {
            Ok(held) => held,
            Err(e) => {
                self.store_failed(&e);
                return;
            }
        };
        let now = now_ms();
        let now_i = Instant::now();
        for job in held {
            if self.in_flight.contains_key(&(job.id, job.attempt)) {
                continue;
            }
            event!(
                Warn,
                "job.orphaned",
                id = job.id,
                kind = job.kind.as_str(),
                queue = job.queue.as_str(),
                attempt = job.attempt,
                detail = "the database says this daemon runs it, but its claim never reached it (a reply lost with the connection); given back without counting the attempt"
            );
            self.limits.started(&job.queue, 1, now_i);
            let completion =
                Attempt::new(job.id, &self.worker, job.attempt, job.started_at, now).interrupted();
            let finished = Finished {
                completion,
                queue: job.queue.clone(),
                kind: job.kind.clone(),
                elapsed: Duration::ZERO,
            };
            self.hold(
                job.id,
                InFlight {
                    pool: Pool::of_kind(&job.kind),
                    queue: job.queue,
                    kind: job.kind,
                    attempt: job.attempt,
                    started_at: job.started_at,
                    timeout: Duration::ZERO,
                    max_attempts: 0,
                    control: Control::new(),
                    reported: true,
                    keyed: false,
                },
            );
            self.completer.push(finished);
        }
    }
}

/// What a write step asked for, for [`Dispatcher::wrote`].
struct Step<'a> {
    /// The claim requests (none when the claim failed).
    requests: &'a [ClaimRequest],
    /// The queues served.
    queues: &'a [String],
    /// Whether a queue was held back by its own limit.
    held_back: bool,
    /// Whether the claim ran after the outcomes, in their transaction.
    claim_saw_outcomes: bool,
    /// Whether the claim failed while the outcomes were written (apart,
    /// on PostgreSQL).
    claim_failed: bool,
    /// Whether the outcomes' write failed while the claim went through.
    write_failed: bool,
}

impl<'a> Step<'a> {
    fn together(requests: &'a [ClaimRequest], queues: &'a [String], held_back: bool) -> Self {
        Step {
            requests,
            queues,
            held_back,
            claim_saw_outcomes: true,
            claim_failed: false,
            write_failed: false,
        }
    }
}

/// The pools for which a claim got all it asked, or all its queue allows,
/// for some queue: it may have left ready jobs of theirs behind. A pool it
/// asked of that is not among them came up short: none was ready.
fn pools_full(requests: &[ClaimRequest], jobs: &[Claimed]) -> Vec<Pool> {
    // Per queue: jobs of each pool.
    let mut got: HashMap<&str, (usize, usize)> = HashMap::new();
    for job in jobs {
        let n = got.entry(job.queue.as_str()).or_default();
        match Pool::of_kind(&job.kind) {
            Pool::Cpu => n.0 += 1,
            Pool::Io => n.1 += 1,
        }
    }
    let mut full = Vec::new();
    for r in requests {
        let (cpu, io) = got.get(r.queue.as_str()).copied().unwrap_or_default();
        // The queue's allowance ran out: either pool may have more.
        let capped = cpu + io >= r.limit;
        for (pool, asked, took) in [(Pool::Cpu, r.cpu, cpu), (Pool::Io, r.io, io)] {
            if asked > 0 && (took >= asked || capped) && !full.contains(&pool) {
                full.push(pool);
            }
        }
    }
    full
}
