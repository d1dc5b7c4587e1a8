//! Daemon benchmarks: the real release `jobd run` process against a real
//! SQLite file, measured from the outside.
//!
//! `cargo bench --bench daemon` prints:
//! - the raw store limit (claim 64 + complete 64 in a tight loop), measured
//!   in the same run as the yardstick;
//! - end-to-end `noop` throughput with `pool.threads = 8`: 100 000 jobs
//!   inserted before start, first `started_at` to last `finished_at`, with
//!   `log.level = "info"` (a line per job, to a file) and `"warn"`;
//! - the same with 1 000 000 queued against 10 000 queued;
//! - `http`: 1 000 jobs against a local server answering after 50 ms with
//!   64 threads, and 10 000 against 200 ms with 1 000 threads;
//! - `email`: 1 000 messages to a local SMTP server;
//! - idle cost over `BENCH_IDLE_SECS` (default 60) seconds: CPU and RSS;
//! - pickup latency after that idle time: 500 jobs inserted by this process
//!   20 ms apart, each watched until it leaves `queued`.
//!
//! Figures vary with the machine's load; compare within one run.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{fresh, median, percentile, pickup, query_i64, Daemon};

use jobd::job::NewJob;
use jobd::store::SqliteStore;

/// Waits until `runs` attempts are written; polls cheaply (max rowid).
fn wait_runs(store: &mut SqliteStore, runs: i64) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while query_i64(store, "SELECT max(id) FROM job_runs") < runs {
        assert!(Instant::now() < deadline, "the daemon stalled");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Jobs per second between the end of run `from` and the end of run `to`
/// (run ids count attempts in the order they were written).
fn rate_between(store: &mut SqliteStore, from: i64, to: i64) -> f64 {
    let t0 = if from == 0 {
        query_i64(store, "SELECT min(started_at) FROM job_runs")
    } else {
        query_i64(
            store,
            &format!("SELECT finished_at FROM job_runs WHERE id = {from}"),
        )
    };
    let t1 = query_i64(
        store,
        &format!("SELECT finished_at FROM job_runs WHERE id = {to}"),
    );
    (to - from) as f64 / ((t1 - t0).max(1) as f64 / 1000.0)
}

/// Pre-inserts `queued` noop jobs, runs a daemon until `measure` of them are
/// done, and returns jobs/s over runs `skip..measure`.
fn drain(dir: &Path, queued: usize, skip: i64, measure: i64, extra: &str) -> f64 {
    let mut store = fresh(dir);
    common::fill(&mut store, queued);
    let daemon = Daemon::start(dir, extra);
    wait_runs(&mut store, measure);
    let rate = rate_between(&mut store, skip, measure);
    daemon.stop();
    rate
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let wants = |name: &str| only.is_empty() || only.split(',').any(|o| o == name);
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();

    if wants("raw") {
        let pragmas = std::env::var("BENCH_PRAGMAS").unwrap_or_default();
        let rates: Vec<f64> = (0..3)
            .map(|_| {
                let mut store = fresh(dir);
                store.connection().execute_batch(&pragmas).unwrap();
                common::fill(&mut store, 100_000);
                let (total, claims, completes) = common::claim_complete(&mut store, 100_000);
                println!("  claims alone {claims:.0}/s, completions alone {completes:.0}/s");
                total
            })
            .collect();
        println!(
            "raw store limit: {:.0} jobs/s (median of {rates:.0?})",
            median(rates.clone())
        );
    }

    if wants("throughput") {
        let mut store = fresh(dir);
        common::fill(&mut store, 100_000);
        let (raw, _, _) = common::claim_complete(&mut store, 100_000);
        println!(
            "raw store limit (claim 64 + complete 64, one thread, no pool): {raw:>7.0} jobs/s"
        );
        drop(store);
        for level in ["info", "warn"] {
            let rates: Vec<f64> = (0..3)
                .map(|_| drain(dir, 100_000, 0, 100_000, &format!("level = \"{level}\"\n")))
                .collect();
            let rate = median(rates.clone());
            println!(
                "end-to-end noop, 100 000 pre-inserted, pool.threads = 8, log.level = {level}: {rate:>7.0} jobs/s \
                 (median of {rates:.0?}; {:.0} % of the raw limit)",
                rate / raw * 100.0
            );
        }
    }

    if wants("scale") {
        // Both measured in steady state: past the first 1 000 (10 000) runs,
        // while the daemon learns job durations and warms its caches.
        let small: Vec<f64> = (0..3)
            .map(|_| drain(dir, 10_000, 1_000, 10_000, "level = \"warn\"\n"))
            .collect();
        let large = drain(dir, 1_000_000, 10_000, 110_000, "level = \"warn\"\n");
        let small = median(small);
        println!(
            "end-to-end with 10 000 queued: {small:>7.0} jobs/s; with 1 000 000 queued: {large:>7.0} jobs/s (ratio {:.2})",
            large / small
        );
    }

    if wants("http") {
        for (threads, jobs, delay_ms) in [(64usize, 1_000usize, 50u64), (1_000, 10_000, 200)] {
            let base = common::slow_http_server(Duration::from_millis(delay_ms));
            let mut store = fresh(dir);
            let job = NewJob {
                payload: format!(r#"{{"url":"{base}/work"}}"#),
                ..NewJob::new("http")
            };
            common::fill_with(&mut store, jobs, &job);
            let daemon = Daemon::start_with(dir, threads, "level = \"warn\"\n");
            let pid = daemon.pid();
            let cpu_before = (
                jobd::os::procfs::usage(&pid.to_string())
                    .unwrap_or_default()
                    .cpu,
                jobd::os::procfs::usage("self").unwrap_or_default().cpu,
                Instant::now(),
            );
            let (mut max_threads, mut max_rss) = (0usize, 0u64);
            let deadline = Instant::now() + Duration::from_secs(600);
            while query_i64(&mut store, "SELECT max(id) FROM job_runs") < jobs as i64 {
                assert!(Instant::now() < deadline, "the daemon stalled");
                let io_threads = std::fs::read_dir(format!("/proc/{pid}/task"))
                    .map(|tasks| {
                        tasks
                            .flatten()
                            .filter(|t| {
                                std::fs::read_to_string(t.path().join("comm"))
                                    .is_ok_and(|c| c.starts_with("jobd-io-"))
                            })
                            .count()
                    })
                    .unwrap_or(0);
                max_threads = max_threads.max(io_threads);
                if let Some(u) = jobd::os::procfs::usage(&pid.to_string()) {
                    max_rss = max_rss.max(u.rss_bytes);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let rate = rate_between(&mut store, 0, jobs as i64);
            let ideal = threads as f64 * 1000.0 / delay_ms as f64;
            let ok = query_i64(
                &mut store,
                "SELECT count(*) FROM jobs WHERE state = 'succeeded'",
            );
            let avg = query_i64(
                &mut store,
                "SELECT CAST(avg(duration_ms) AS INTEGER) FROM job_runs",
            );
            let wall = cpu_before.2.elapsed().as_secs_f64();
            let daemon_cpu = jobd::os::procfs::usage(&pid.to_string())
                .unwrap_or_default()
                .cpu
                - cpu_before.0;
            let server_cpu = jobd::os::procfs::usage("self").unwrap_or_default().cpu - cpu_before.1;
            println!(
                "  average attempt {avg} ms; CPU over {wall:.1} s: daemon {:.0} %, benchmark + HTTP server {:.0} % (of one core)",
                daemon_cpu.as_secs_f64() / wall * 100.0,
                server_cpu.as_secs_f64() / wall * 100.0
            );
            println!(
                "http: {jobs} jobs, server answers after {delay_ms} ms, pool.threads = {threads}: {rate:.0} jobs/s \
                 ({:.0} % of the ideal {ideal:.0}); {ok} succeeded; at most {max_threads} job threads; peak RSS {:.1} MiB",
                rate / ideal * 100.0,
                max_rss as f64 / (1 << 20) as f64
            );
            daemon.stop();
        }
    }

    if wants("email") {
        let port = common::smtp_server();
        let email_threads: usize = std::env::var("BENCH_EMAIL_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(8);
        let mut store = fresh(dir);
        let job = NewJob {
            payload: r#"{"to":["a@example.com","b@example.com"],"subject":"bench","text":"hello"}"#
                .to_string(),
            ..NewJob::new("email")
        };
        common::fill_with(&mut store, 1_000, &job);
        let daemon = Daemon::start_with(
            dir,
            email_threads,
            &format!(
                "level = \"warn\"\n[email]\ntransport = \"smtp\"\n[email.smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n"
            ),
        );
        wait_runs(&mut store, 1_000);
        let rate = rate_between(&mut store, 0, 1_000);
        let ok = query_i64(
            &mut store,
            "SELECT count(*) FROM jobs WHERE state = 'succeeded'",
        );
        println!(
            "email: 1 000 messages to a local SMTP server (mailin-embedded), pool.threads = {email_threads}, pooled connections: {rate:.0} jobs/s; {ok} succeeded"
        );
        daemon.stop();
    }

    if wants("idle") {
        let idle_secs: u64 = std::env::var("BENCH_IDLE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60);
        let mut store = fresh(dir);
        let daemon = Daemon::start(dir, "");
        daemon.wait_started();
        std::thread::sleep(Duration::from_secs(2));
        let pid = daemon.pid().to_string();
        let before = jobd::os::procfs::usage(&pid).unwrap();
        std::thread::sleep(Duration::from_secs(idle_secs));
        let after = jobd::os::procfs::usage(&pid).unwrap();
        let cpu = (after.cpu - before.cpu).as_secs_f64() / idle_secs as f64 * 100.0;
        println!(
            "idle for {idle_secs} s: CPU {cpu:.2} % of one core, RSS {:.1} MiB, {} threads",
            after.rss_bytes as f64 / (1 << 20) as f64,
            after.threads
        );

        // Pickup: the daemon has now been idle for a while.
        let observed = pickup(&mut store, 500);
        let mut stamped = Vec::new();
        std::thread::sleep(Duration::from_millis(100));
        let rows: Vec<f64> = store
            .connection()
            .prepare("SELECT started_at - created_at FROM jobs ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get::<_, i64>(0))
            .unwrap()
            .map(|v| v.unwrap() as f64)
            .collect();
        stamped.extend(rows);
        stamped.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "pickup after idle, 500 jobs 20 ms apart: observed p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms \
             (commit → state left queued, watched every 50 µs); stamped started_at − created_at p50 {} ms, p99 {} ms",
            percentile(&observed, 0.5),
            percentile(&observed, 0.99),
            observed[observed.len() - 1],
            percentile(&stamped, 0.5),
            percentile(&stamped, 0.99),
        );
        daemon.stop();
    }
}
