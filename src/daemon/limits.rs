//! Per-queue limits on top of the pool size (docs/reference.md): `concurrency` (jobs of
//! the queue running at once in this daemon) and `rate` (a token bucket), and
//! the fair split of free slots across queues that [`QueueLimits::plan`]
//! turns into claim requests.
//!
//! The clock is passed in, so tests drive time by hand.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::config::{QueueConfig, Rate};
use crate::store::ClaimRequest;

/// A token bucket: `count` tokens per `per`, holding at most `count`, so a
/// queue idle for a while may burst one period's worth and no more.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: Rate,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: Rate, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: f64::from(rate.count),
            rate,
            last: now,
        }
    }

    fn capacity(&self) -> f64 {
        f64::from(self.rate.count)
    }

    fn per_second(&self) -> f64 {
        f64::from(self.rate.count) / self.rate.per.as_secs_f64().max(1e-9)
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second()).min(self.capacity());
        self.last = now;
    }

    /// Whole tokens available now.
    pub fn available(&mut self, now: Instant) -> usize {
        self.refill(now);
        self.tokens.floor().max(0.0) as usize
    }

    /// Spends `n` tokens.
    pub fn take(&mut self, n: usize, now: Instant) {
        self.refill(now);
        self.tokens -= n as f64;
    }

    /// How long until one whole token is available.
    pub fn next_token_in(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.per_second())
        }
    }

    /// Keeps the tokens (clamped to the new capacity) under a new rate.
    fn set_rate(&mut self, rate: Rate, now: Instant) {
        self.refill(now);
        self.rate = rate;
        self.tokens = self.tokens.min(self.capacity());
    }
}

#[derive(Debug, Default)]
struct QueueState {
    concurrency: Option<usize>,
    bucket: Option<TokenBucket>,
    running: usize,
    /// A fair queue's rotation: the key served last.
    fair: Option<String>,
    /// The queue's limits when they count across the fleet.
    fleet: Option<crate::keys::Limit>,
}

/// The limits of every queue and this daemon's running count per queue.
#[derive(Debug, Default)]
pub struct QueueLimits {
    queues: HashMap<String, QueueState>,
    /// Rotates the queue that is served first, so that when slots are
    /// scarce no queue is always last.
    turn: usize,
}

impl QueueLimits {
    /// Limits from the `[queues.NAME]` sections.
    pub fn new(config: &BTreeMap<String, QueueConfig>, now: Instant) -> QueueLimits {
        let mut limits = QueueLimits::default();
        limits.reload(config, now);
        limits
    }

    /// Applies new limits without forgetting what runs or the tokens spent.
    pub fn reload(&mut self, config: &BTreeMap<String, QueueConfig>, now: Instant) {
        for (name, state) in self.queues.iter_mut() {
            state.concurrency = None;
            state.fleet = None;
            if config.get(name).is_none_or(|q| !q.fair) {
                state.fair = None;
            }
            if config.get(name).is_none_or(|q| q.rate.is_none()) {
                state.bucket = None;
            }
        }
        for (name, queue) in config {
            let state = self.queues.entry(name.clone()).or_default();
            state.concurrency = queue.concurrency;
            state.fleet = queue.fleet.then(|| crate::keys::Limit {
                concurrency: queue.concurrency.map(|c| c.min(u32::MAX as usize) as u32),
                rate: queue.rate.map(|r| crate::keys::KeyRate {
                    count: r.count,
                    per: r.per,
                }),
            });
            if queue.fair {
                state.fair.get_or_insert_with(String::new);
            }
            state.bucket = queue.rate.map(|rate| match state.bucket.take() {
                Some(mut bucket) => {
                    bucket.set_rate(rate, now);
                    bucket
                }
                None => TokenBucket::new(rate, now),
            });
        }
        self.queues.retain(|_, s| {
            s.running > 0 || s.concurrency.is_some() || s.bucket.is_some() || s.fair.is_some()
        });
    }

    /// Moves each fair queue's rotation past the keys a claim served:
    /// `keys` are the claimed jobs' (queue, key); the queue's cursor
    /// becomes the last of them in rotation order from where it was.
    pub fn served(&mut self, keys: &[(&str, &str)]) {
        for (name, state) in self.queues.iter_mut() {
            let Some(cursor) = state.fair.as_mut() else {
                continue;
            };
            let mine = keys.iter().filter(|(q, _)| q == name).map(|(_, k)| *k);
            let after = mine.clone().filter(|k| *k > cursor.as_str()).max();
            let wrapped = mine.filter(|k| *k <= cursor.as_str()).max();
            if let Some(last) = wrapped.or(after) {
                *cursor = last.to_string();
            }
        }
    }

    /// Whether `queue` has a concurrency limit, here or across the fleet:
    /// a job of it that ends frees a place no watcher announces.
    pub fn limited(&self, queue: &str) -> bool {
        self.queues
            .get(queue)
            .is_some_and(|s| s.concurrency.is_some() || s.fleet.is_some())
    }

    /// How many more jobs `queue` may start now.
    pub fn allowance(&mut self, queue: &str, now: Instant) -> usize {
        let Some(state) = self.queues.get_mut(queue) else {
            return usize::MAX;
        };
        let by_concurrency = state
            .concurrency
            .map_or(usize::MAX, |c| c.saturating_sub(state.running));
        let by_rate = state
            .bucket
            .as_mut()
            .map_or(usize::MAX, |b| b.available(now));
        by_concurrency.min(by_rate)
    }

    /// Records `n` jobs of `queue` started.
    pub fn started(&mut self, queue: &str, n: usize, now: Instant) {
        let state = self.queues.entry(queue.to_string()).or_default();
        state.running += n;
        if let Some(bucket) = state.bucket.as_mut() {
            bucket.take(n, now);
        }
    }

    /// Records one job of `queue` finished.
    pub fn finished(&mut self, queue: &str) {
        if let Some(state) = self.queues.get_mut(queue) {
            state.running = state.running.saturating_sub(1);
        }
    }

    /// When the first of `queues` held back only by its rate gets a token.
    pub fn next_token(&mut self, queues: &[String], now: Instant) -> Option<Instant> {
        queues
            .iter()
            .filter_map(|q| {
                let state = self.queues.get_mut(q)?;
                let concurrency_ok = state.concurrency.is_none_or(|c| state.running < c);
                let bucket = state.bucket.as_mut()?;
                concurrency_ok.then(|| now + bucket.next_token_in(now))
            })
            .min()
    }

    /// Splits each pool's free slots across `queues`, one slot at a time
    /// in turn, each queue capped by its allowance (shared by both pools:
    /// the request's `limit`). Queues offered nothing are left out. The
    /// first queue served rotates from one call to the next.
    pub fn plan(&mut self, free: Free, queues: &[String], now: Instant) -> Vec<ClaimRequest> {
        if queues.is_empty() || free.total() == 0 {
            return Vec::new();
        }
        let start = self.turn % queues.len();
        self.turn = self.turn.wrapping_add(1);
        let order: Vec<&String> = queues[start..].iter().chain(&queues[..start]).collect();
        let caps: Vec<usize> = order.iter().map(|q| self.allowance(q, now)).collect();
        let cpu = split(free.cpu, &caps);
        let io = split(free.io, &caps);
        order
            .into_iter()
            .enumerate()
            .map(|(i, queue)| ClaimRequest {
                queue: queue.clone(),
                limit: caps[i].min(cpu[i] + io[i]),
                cpu: cpu[i],
                io: io[i],
                fair_after: self.queues.get(queue).and_then(|s| s.fair.clone()),
                fleet: self.queues.get(queue).and_then(|s| s.fleet),
            })
            .filter(|r| r.limit > 0)
            .collect()
    }
}

/// Free slots per pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Free {
    /// CPU worker processes with nothing to do.
    pub cpu: usize,
    /// IO slots (threads plus prefetch) not holding a job.
    pub io: usize,
}

impl Free {
    /// Both pools together.
    pub fn total(self) -> usize {
        self.cpu + self.io
    }
}

/// Deals `free` slots round-robin to queues capped at `caps`.
fn split(free: usize, caps: &[usize]) -> Vec<usize> {
    let mut caps = caps.to_vec();
    let mut given = vec![0usize; caps.len()];
    let mut left = free;
    while left > 0 {
        let mut gave = false;
        for (n, cap) in given.iter_mut().zip(caps.iter_mut()) {
            if left == 0 {
                break;
            }
            if *cap > 0 {
                *cap -= 1;
                *n += 1;
                left -= 1;
                gave = true;
            }
        }
        if !gave {
            break;
        }
    }
    given
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(count: u32, per_ms: u64) -> Rate {
        Rate {
            count,
            per: Duration::from_millis(per_ms),
        }
    }

    fn config(entries: &[(&str, Option<usize>, Option<Rate>)]) -> BTreeMap<String, QueueConfig> {
        entries
            .iter()
            .map(|(name, concurrency, rate)| {
                (
                    name.to_string(),
                    QueueConfig {
                        concurrency: *concurrency,
                        rate: *rate,
                        fair: false,
                        fleet: false,
                    },
                )
            })
            .collect()
    }

    fn io(n: usize) -> Free {
        Free { cpu: 0, io: n }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_bucket_bursts_one_period_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(rate(10, 1_000), t0);
        assert_eq!(b.available(t0), 10);
        b.take(10, t0);
        assert_eq!(b.available(t0), 0);
        assert_eq!(b.next_token_in(t0), Duration::from_millis(100));
        assert_eq!(b.available(t0 + Duration::from_millis(350)), 3);
        assert_eq!(b.available(t0 + Duration::from_secs(60)), 10);
    }

    #[test]
    fn free_slots_are_split_fairly_and_capped_by_concurrency() {
        let t0 = Instant::now();
        let mut l = QueueLimits::new(&config(&[("mail", Some(1), None)]), t0);
        let plan = l.plan(io(8), &names(&["a", "b", "mail"]), t0);
        let total: usize = plan.iter().map(|r| r.limit).sum();
        assert_eq!(total, 8);
        let mail = plan.iter().find(|r| r.queue == "mail").unwrap();
        assert_eq!(mail.limit, 1);
        for r in &plan {
            if r.queue != "mail" {
                assert!(r.limit >= 3, "{plan:?}");
            }
        }
        l.started("mail", 1, t0);
        let plan = l.plan(io(8), &names(&["mail"]), t0);
        assert!(plan.is_empty());
        l.finished("mail");
        assert_eq!(l.plan(io(8), &names(&["mail"]), t0)[0].limit, 1);
    }

    #[test]
    fn both_pools_get_offers_within_one_shared_allowance() {
        let t0 = Instant::now();
        let mut l = QueueLimits::new(&config(&[("mail", Some(3), None)]), t0);
        let free = Free { cpu: 2, io: 8 };
        let plan = l.plan(free, &names(&["a", "mail"]), t0);
        let a = plan.iter().find(|r| r.queue == "a").unwrap();
        let mail = plan.iter().find(|r| r.queue == "mail").unwrap();
        assert_eq!((a.cpu, a.io), (1, 5));
        assert_eq!((mail.cpu, mail.io, mail.limit), (1, 3, 3));
        let plan = l.plan(Free { cpu: 2, io: 0 }, &names(&["mail"]), t0);
        assert_eq!((plan[0].cpu, plan[0].io, plan[0].limit), (2, 0, 2));
    }

    #[test]
    fn the_first_queue_served_rotates_when_slots_are_scarce() {
        let t0 = Instant::now();
        let mut l = QueueLimits::default();
        let q = names(&["a", "b", "c"]);
        let firsts: Vec<String> = (0..3)
            .map(|_| l.plan(io(1), &q, t0)[0].queue.clone())
            .collect();
        assert_eq!(firsts, names(&["a", "b", "c"]));
    }

    #[test]
    fn rate_limits_hold_back_and_say_when_to_look_again() {
        let t0 = Instant::now();
        let mut l = QueueLimits::new(&config(&[("api", None, Some(rate(2, 1_000)))]), t0);
        let q = names(&["api"]);
        assert_eq!(l.plan(io(8), &q, t0)[0].limit, 2);
        l.started("api", 2, t0);
        assert!(l.plan(io(8), &q, t0).is_empty());
        assert_eq!(l.next_token(&q, t0), Some(t0 + Duration::from_millis(500)));
        l.finished("api");
        l.finished("api");
        // A reload keeps the spent tokens rather than handing out a new burst.
        l.reload(&config(&[("api", None, Some(rate(5, 1_000)))]), t0);
        assert!(l.plan(io(8), &q, t0).is_empty());
    }

    #[test]
    fn a_fair_queues_rotation_moves_past_the_keys_served_and_wraps() {
        let t0 = Instant::now();
        let mut fair = config(&[("api", None, None)]);
        fair.get_mut("api").unwrap().fair = true;
        let mut l = QueueLimits::new(&fair, t0);
        let after = |l: &mut QueueLimits| {
            let plan = l.plan(io(8), &names(&["api", "other"]), t0);
            plan.into_iter()
                .find(|r| r.queue == "api")
                .unwrap()
                .fair_after
        };
        assert_eq!(after(&mut l), Some(String::new()));
        l.served(&[("api", "k:b"), ("other", "k:z"), ("api", "k:a")]);
        assert_eq!(after(&mut l), Some("k:b".into()));
        // From b the rotation went on to c, then round to a: a was last.
        l.served(&[("api", "k:c"), ("api", "k:a")]);
        assert_eq!(after(&mut l), Some("k:a".into()));
        // A queue that is not fair has no rotation; a reload keeps it.
        l.reload(&fair, t0);
        assert_eq!(after(&mut l), Some("k:a".into()));
        l.reload(&config(&[("api", None, None)]), t0);
        assert_eq!(after(&mut l), None);
    }
}
