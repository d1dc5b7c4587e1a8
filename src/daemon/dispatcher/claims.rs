//! Claiming for the free slots: how many each pool has (with the jobs
//! claimed ahead, see [`super::slots`]), which queues to serve, and handing
//! each claimed job to its pool.

use crate::daemon::executor::{Control, Task};
use crate::daemon::limits::Free;
use crate::daemon::pool::threads::Finished;
use crate::job::{Attempt, Claimed, Pool};
use crate::store::StoreError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::daemon::dispatcher::*;

impl Dispatcher {
    /// Slots not held by a job. IO: one per thread, plus as many
    /// prefetched jobs per thread as finish within [`PREFETCH_WAIT`] at the
    /// running average duration (none until jobs have run, none for long
    /// jobs). CPU: one per worker, never more: CPU jobs are long, and a job
    /// waiting for a worker would only age under its lease.
    pub(super) fn free_slots(&self) -> Free {
        let held_io = self.in_flight.len() - self.held_cpu;
        Free {
            cpu: self.cpu_size().saturating_sub(self.held_cpu),
            io: slots(
                self.pool.size(),
                self.avg_duration,
                self.store.claim_ahead(),
            )
            .saturating_sub(held_io),
        }
    }

    pub(super) fn can_claim(&self, now: Instant) -> bool {
        self.claimable(self.free_slots()) > 0 && self.can_claim_at(now)
    }

    /// Of `slots`, those worth a claim: the slots of pools not known to be
    /// dry ([`Dispatcher::dry`]).
    pub(super) fn claimable(&self, slots: Free) -> usize {
        let of = |dry: bool, n: usize| if dry { 0 } else { n };
        of(self.dry.cpu, slots.cpu) + of(self.dry.io, slots.io)
    }

    /// Something may have made jobs ready for either pool (a wake, a due
    /// time, a schedule, outcomes that release jobs): the next turn claims.
    pub(super) fn look_again(&mut self) {
        self.maybe_ready = true;
        self.dry = Dry::default();
    }

    /// Not draining and not backing off after a failed claim.
    pub(super) fn can_claim_at(&self, now: Instant) -> bool {
        self.draining.is_none() && self.claim_retry_at.is_none_or(|t| now >= t)
    }

    /// The queues to claim from now.
    pub(super) fn queues_to_serve(&mut self) -> Result<Vec<String>, StoreError> {
        match self.config.daemon.named_queues() {
            Some(named) => Ok(named.to_vec()),
            None => self.store.queued_queues(),
        }
    }

    /// Starts one claimed job, or settles it at once when it cannot run.
    pub(super) fn dispatch(&mut self, job: Claimed, now: i64, now_i: Instant) {
        self.limits.started(&job.queue, 1, now_i);
        let started_at = job.started_at;
        let control = Control::new();
        let reject = |reason: String| Finished {
            completion: Attempt::new(job.id, &self.worker, job.attempts, started_at, now)
                .dead(reason),
            queue: job.queue.clone(),
            kind: job.kind.clone(),
            elapsed: Duration::ZERO,
        };
        let pool = Pool::of_kind(&job.kind);
        if let Some(fault) = &job.undecodable {
            let finished = reject(fault.clone());
            return self.settled(job, control, finished);
        }
        let kind = match self.registry.get(&job.kind) {
            Some(kind) => Arc::clone(kind),
            None => {
                let finished = reject(format!(
                    "unknown kind {:?} (this jobd runs: {})",
                    job.kind,
                    self.registry.names().join(", ")
                ));
                return self.settled(job, control, finished);
            }
        };
        let max_bytes = self.config.limits.max_payload_bytes;
        if job.payload.len() as u64 > max_bytes {
            let finished = reject(format!(
                "payload is {} bytes, over limits.max_payload_bytes ({max_bytes})",
                job.payload.len()
            ));
            return self.settled(job, control, finished);
        }
        let timeout = match job.timeout_ms {
            Some(ms) => Duration::from_millis(ms.max(1) as u64),
            None => self
                .config
                .timeouts
                .for_kind(&job.kind)
                .unwrap_or(self.config.timeouts.noop),
        };
        let max_attempts = job.effective_max_attempts(self.config.retry.max_attempts);
        self.hold(
            job.id,
            InFlight {
                pool,
                queue: job.queue.clone(),
                kind: job.kind.clone(),
                attempt: job.attempts,
                started_at,
                timeout,
                max_attempts,
                control: Arc::clone(&control),
                reported: false,
                keyed: job.limit_key.is_some(),
            },
        );
        self.unreported += 1;
        let task = Task {
            kind,
            worker: Arc::clone(&self.worker),
            started_at,
            timeout,
            max_attempts,
            retry: Arc::clone(&self.retry),
            control,
            job,
        };
        match (pool, &self.cpu) {
            (Pool::Cpu, Some(cpu)) => cpu.submit(task),
            _ => self.pool.submit(task),
        }
    }
}
