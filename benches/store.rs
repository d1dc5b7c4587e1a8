//! Store benchmarks: the raw limits the daemon is measured against.
//!
//! `cargo bench --bench store` prints:
//! - bulk enqueue through the real `jobd enqueue --file` (release binary);
//! - claim a batch of 64 + complete the batch (with its `job_runs` rows) in a
//!   tight loop with no pool, with 10 000 and with 1 000 000 jobs queued.
//!
//! Figures vary with the machine's load; compare within one run.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use jobd::job::{now_ms, Attempt, NewJob};
use jobd::store::{Claim, ClaimRequest, OpenMode, SqliteStore, Store};

const BATCH: usize = 64;
const WORKER: &str = "bench:1:1";

fn open(path: &Path) -> SqliteStore {
    let mut s = SqliteStore::open(path, Duration::from_secs(5), OpenMode::Create).unwrap();
    s.migrate().unwrap();
    s
}

fn fill(store: &mut SqliteStore, n: usize) {
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
fn claim_complete(store: &mut SqliteStore, count: usize) -> (f64, f64, f64) {
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

fn bulk_enqueue(dir: &Path, lines: usize) -> f64 {
    let file = dir.join("jobs.jsonl");
    std::fs::write(
        &file,
        "{\"kind\":\"noop\",\"payload\":{\"sleep_ms\":0}}\n".repeat(lines),
    )
    .unwrap();
    let config = dir.join("bulk.toml");
    std::fs::write(
        &config,
        format!("[database]\npath = \"{}\"\n", dir.join("bulk.db").display()),
    )
    .unwrap();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_jobd"))
        .arg("--config")
        .arg(&config)
        .args(["enqueue", "--file"])
        .arg(&file)
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    print!("    jobd says: {}", String::from_utf8_lossy(&out.stdout));
    lines as f64 / elapsed.as_secs_f64()
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not run us.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();

    println!("bulk enqueue, `jobd enqueue --file` with 500 000 lines (process start to exit):");
    for _ in 0..3 {
        std::fs::remove_file(dir.path().join("bulk.db")).ok();
        std::fs::remove_file(dir.path().join("bulk.db-wal")).ok();
        println!("  {:>9.0} jobs/s", bulk_enqueue(dir.path(), 500_000));
    }

    println!("claim 64 + complete 64 (fenced UPDATE + job_runs row each), synchronous=NORMAL:");
    let small = dir.path().join("small.db");
    let mut s = open(&small);
    let mut small_rates = Vec::new();
    for _ in 0..5 {
        fill(&mut s, 10_000);
        small_rates.push(claim_complete(&mut s, 10_000));
    }
    let large = dir.path().join("large.db");
    let mut l = open(&large);
    fill(&mut l, 1_000_000);
    let mut large_rates = Vec::new();
    for _ in 0..5 {
        large_rates.push(claim_complete(&mut l, 10_000));
    }
    let median = |v: &mut Vec<(f64, f64, f64)>| {
        v.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
        v[v.len() / 2]
    };
    let (a, b) = (median(&mut small_rates), median(&mut large_rates));
    for (label, (total, claims, completes)) in [("10 000 queued:   ", a), ("1 000 000 queued:", b)]
    {
        println!(
            "  {label} {total:>7.0} jobs/s (claims alone {claims:.0}/s, completions alone {completes:.0}/s; median of 5 runs of 10 000)"
        );
    }
    println!("  ratio 1M/10k: {:.2}", b.0 / a.0);
}
