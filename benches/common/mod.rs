//! Helpers shared by the benchmarks: a fresh store, filling it, and the raw
//! claim + complete loop that is the yardstick for the daemon.

#![allow(dead_code)] // each benchmark uses a different part

use std::path::Path;
use std::time::{Duration, Instant};

use jobd::job::{now_ms, Attempt, NewJob};
use jobd::store::{Claim, ClaimRequest, OpenMode, SqliteStore, Store};

pub const BATCH: usize = 64;
pub const WORKER: &str = "bench:1:1";

pub fn open(path: &Path) -> SqliteStore {
    let mut s = SqliteStore::open(path, Duration::from_secs(5), OpenMode::Create).unwrap();
    s.migrate().unwrap();
    s
}

pub fn fill(store: &mut SqliteStore, n: usize) {
    let job = NewJob::new("noop");
    let batch: Vec<NewJob> = (0..10_000).map(|_| job.clone()).collect();
    let mut left = n;
    while left > 0 {
        let take = left.min(batch.len());
        store.enqueue(&batch[..take], now_ms()).unwrap();
        left -= take;
    }
}

/// Claims and completes `count` jobs in batches of 64; returns jobs/s, and
/// the rates of the claims and the completions alone.
pub fn claim_complete(store: &mut SqliteStore, count: usize) -> (f64, f64, f64) {
    let requests = [ClaimRequest {
        queue: "default".into(),
        limit: BATCH,
    }];
    let started = Instant::now();
    let (mut claiming, mut completing) = (Duration::ZERO, Duration::ZERO);
    let mut done = 0;
    while done < count {
        let now = now_ms();
        let t = Instant::now();
        let jobs = store
            .claim(&Claim {
                worker: WORKER,
                now,
                lease_until: now + 30_000,
                requests: &requests,
            })
            .unwrap();
        claiming += t.elapsed();
        if jobs.is_empty() {
            break;
        }
        let completions: Vec<_> = jobs
            .iter()
            .map(|j| {
                Attempt {
                    id: j.id,
                    worker: WORKER.into(),
                    attempt: j.attempts,
                    started_at: now,
                    finished_at: now_ms(),
                }
                .succeeded(None)
            })
            .collect();
        let t = Instant::now();
        store.complete(&completions).unwrap();
        completing += t.elapsed();
        done += jobs.len();
    }
    let rate = |d: Duration| done as f64 / d.as_secs_f64();
    (rate(started.elapsed()), rate(claiming), rate(completing))
}
