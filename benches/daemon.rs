//! Daemon benchmarks: the real release `jobd run` process against a real
//! SQLite file, measured from the outside.
//!
//! `cargo bench --bench daemon` prints:
//! - `bare`: the yardstick, a bare claim-64 + complete-64 loop in Rust
//!   (rusqlite, a fresh file, WAL, `synchronous = NORMAL` and
//!   `temp_store = MEMORY` as jobd sets them; a minimal `jobs` table with
//!   the contract's columns and the ready index
//!   `(queue, priority DESC, run_at, id) WHERE state = 'queued'`, a
//!   `job_runs` table, no triggers; each batch one transaction claiming 64
//!   with one `UPDATE … WHERE id IN (SELECT … LIMIT 64) RETURNING`, then one
//!   completing them, a fenced `UPDATE` by id, state, worker and attempts
//!   and a `job_runs` insert each), over 100 000 jobs (see common/bare.rs);
//! - `raw`: jobd's own store loop, the same through `SqliteStore::claim` and
//!   `complete` on jobd's schema, and its share of `bare`; the two
//!   alternate, three times each, and their medians are shown;
//! - end-to-end `noop` throughput with `pool.threads = 8`: 100 000 jobs
//!   inserted before start, first `started_at` to last `finished_at`, with
//!   `log.level = "info"` (a line per job, to a file) and `"warn"`, and
//!   their shares of `bare` and `raw`;
//! - the same with 1 000 000 queued against 10 000 queued;
//! - `http`: 1 000 jobs against a local server answering after 50 ms with
//!   64 threads, and 10 000 against 200 ms with 1 000 threads;
//! - `email`: 1 000 messages to a local SMTP server;
//! - idle cost over `BENCH_IDLE_SECS` (default 60) seconds: CPU and RSS;
//! - pickup latency after that idle time: 500 jobs inserted by this process
//!   20 ms apart, each watched until it leaves `queued`.
//!
//! `BENCH_ONLY=bisect` (never in the default run) measures the steps from
//! the bare loop to jobd's store, each adding one of jobd's pieces (its
//! columns, CHECKs, indexes, triggers, statements), alternated, median of
//! three (`BENCH_REPS`), in jobs per second of the loop thread's CPU time,
//! with each step's share of the gap.
//!
//! Figures vary with the machine's load; compare within one run.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{fresh, median, percentile, pickup, query_i64, Daemon};

use jobd::job::NewJob;
use jobd::store::SqliteStore;

/// Waits until `runs` attempts are written; polls cheaply (the store's
/// newest place in the order of `job_runs`: two index seeks).
fn wait_runs(store: &mut SqliteStore, runs: i64) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while jobd::store::Reads::last_run_id(store).unwrap() < runs {
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
    let wants_explicitly = |name: &str| only.split(',').any(|o| o == name);
    let wants = |name: &str| only.is_empty() || wants_explicitly(name);
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();

    // The yardstick and jobd's store loop, alternated.
    let (mut bare_rates, mut raw_rates) = (Vec::new(), Vec::new());
    if wants("bare") || wants("raw") {
        let pragmas = std::env::var("BENCH_PRAGMAS").unwrap_or_default();
        for _ in 0..3 {
            if wants("bare") {
                bare_rates.push(common::bare::bare(&dir.join("bare.db"), 100_000).wall);
            }
            if wants("raw") {
                let mut store = fresh(dir);
                store.connection().execute_batch(&pragmas).unwrap();
                common::fill(&mut store, 100_000);
                let (total, claims, completes) = common::claim_complete(&mut store, 100_000);
                println!("  raw: claims alone {claims:.0}/s, completions alone {completes:.0}/s");
                raw_rates.push(total);
            }
        }
    }
    let bare = (!bare_rates.is_empty()).then(|| median(bare_rates.clone()));
    let raw = (!raw_rates.is_empty()).then(|| median(raw_rates.clone()));
    if let Some(bare) = bare {
        println!("bare loop (the yardstick): {bare:>7.0} jobs/s (median of {bare_rates:.0?})");
    }
    if let Some(raw) = raw {
        let share = bare.map_or(String::new(), |b| {
            format!("; raw/bare {:.0} %", raw / b * 100.0)
        });
        println!("raw store limit (jobd's store loop): {raw:>7.0} jobs/s (median of {raw_rates:.0?}{share})");
    }

    if wants_explicitly("bisect") {
        // Jobs per second of CPU time (this thread's): steadier than the
        // wall clock on a machine other work shares.
        let steps = common::bare::steps();
        let reps: usize = std::env::var("BENCH_REPS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3);
        let mut rates = vec![Vec::new(); steps.len() + 1];
        for _ in 0..reps {
            for (i, step) in steps.iter().enumerate() {
                rates[i].push(common::bare::run_step(step, &dir.join("step.db"), 100_000).cpu);
            }
            let mut store = fresh(dir);
            common::fill(&mut store, 100_000);
            let cpu = common::bare::thread_cpu();
            common::claim_complete(&mut store, 100_000);
            rates[steps.len()].push(100_000.0 / (common::bare::thread_cpu() - cpu).as_secs_f64());
        }
        let medians: Vec<f64> = rates.iter().map(|r| median(r.clone())).collect();
        let (first, last) = (medians[0], medians[medians.len() - 1]);
        // The gap in time per job, so the shares add up.
        let gap = 1.0 / last - 1.0 / first;
        println!(
            "bisect, bare loop → jobd's store loop (jobs per CPU second, median of {reps}; \
             share of the gap in CPU time per job):"
        );
        let names = steps
            .iter()
            .map(|s| s.name)
            .chain(["+ jobd's store code (SqliteStore::claim, complete)"]);
        for (i, name) in names.enumerate() {
            let share = if i == 0 {
                String::new()
            } else {
                format!(
                    "{:>5.1} %",
                    (1.0 / medians[i] - 1.0 / medians[i - 1]) / gap * 100.0
                )
            };
            println!(
                "  {i:>2} {name:<52} {:>7.0}  {share:>7}   {:.0?}",
                medians[i], rates[i]
            );
        }
    }

    if wants("throughput") {
        let raw = raw.unwrap_or_else(|| {
            let mut store = fresh(dir);
            common::fill(&mut store, 100_000);
            let (raw, _, _) = common::claim_complete(&mut store, 100_000);
            println!(
                "raw store limit (claim 64 + complete 64, one thread, no pool): {raw:>7.0} jobs/s"
            );
            raw
        });
        for level in ["info", "warn"] {
            let rates: Vec<f64> = (0..3)
                .map(|_| drain(dir, 100_000, 0, 100_000, &format!("level = \"{level}\"\n")))
                .collect();
            let rate = median(rates.clone());
            let of_bare = bare.map_or(String::new(), |b| {
                format!(", end-to-end/bare {:.0} %", rate / b * 100.0)
            });
            println!(
                "end-to-end noop, 100 000 pre-inserted, pool.threads = 8, log.level = {level}: {rate:>7.0} jobs/s \
                 (median of {rates:.0?}; end-to-end/raw {:.0} %{of_bare})",
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
            while jobd::store::Reads::last_run_id(&mut store).unwrap() < jobs as i64 {
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
