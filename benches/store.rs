//! Store benchmarks: the raw limits the daemon is measured against.
//!
//! `cargo bench --bench store` prints:
//! - bulk enqueue through the real `jobd enqueue --file` (release binary);
//! - claim a batch of 64 + complete the batch (with its `job_runs` rows) in a
//!   tight loop with no pool, with 10 000 and with 1 000 000 jobs queued.
//!
//! Figures vary with the machine's load; compare within one run.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::{claim_complete, fill, open};

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
    // `enqueue` never creates the database; `migrate` does, untimed.
    let migrated = Command::new(env!("CARGO_BIN_EXE_jobd"))
        .arg("--config")
        .arg(&config)
        .arg("migrate")
        .output()
        .unwrap();
    assert!(migrated.status.success());
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
