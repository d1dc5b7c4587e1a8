//! CPU pool benchmarks.
//!
//! `cargo bench --bench cpu` prints:
//! - pool overhead: 2 000 `checksum` jobs of a 1 KiB file and 2 000 `exec`
//!   jobs of a handler that exits at once (`/bin/true`), one at a time
//!   through a [`ProcessPool`] of release `jobd` workers, against the same
//!   kind run in this process (the work itself) and against a fresh worker
//!   process per job (`max_jobs_per_worker = 1`): p50 and p99 per job;
//! - scaling: `checksum` (sha256) of 16 files of 64 MiB with 1 and with 2
//!   workers (best of three rounds after a warm-up), and the throughput ratio;
//! - isolation: a release `jobd run` with both workers saturated by
//!   `checksum` jobs of 64 MiB files, and `noop` jobs inserted 20 ms apart
//!   into the same queue: pickup latency, against the same without CPU load.
//!
//! - warm: a Python handler that does nothing (through `jobs/jobd.py`), warm
//!   against one-shot: per job one at a time, and 10 000 jobs with two
//!   workers.
//!
//! `BENCH_ONLY=overhead,warm,scaling,isolation` picks parts. Figures vary with the
//! machine's load; compare within one run.

mod common;

use jobd::store::prelude::*;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{fresh, percentile, pickup, query_i64, Daemon};
use crossbeam_channel::Receiver;
use jobd::config::{ExecConfig, FileConfig, HandlerConfig, HandlerMode, RetryConfig};
use jobd::daemon::executor::{Control, Task};
use jobd::daemon::pool::frame::Setup;
use jobd::daemon::pool::processes::{ProcessPool, Settings, WorkerPids, CPU_NICE};
use jobd::daemon::pool::threads::Finished;
use jobd::job::{now_ms, Claimed, NewJob};
use jobd::kinds::{Context, Registry};

const JOBS: usize = 2_000;
const BIG: usize = 64 << 20;
const BIG_FILES: usize = 16;

struct Bench {
    file: FileConfig,
    exec: ExecConfig,
    registry: Registry,
}

impl Bench {
    fn new(dir: &Path) -> Bench {
        let root = dir.join("root");
        let handlers = dir.join("handlers");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&handlers).unwrap();
        let _ = std::fs::remove_file(handlers.join("true"));
        // A copy: handlers must be regular files, not links.
        std::fs::copy("/bin/true", handlers.join("true")).unwrap();
        std::fs::write(root.join("small"), vec![7u8; 1024]).unwrap();
        let file = FileConfig {
            roots: vec![root],
            ..FileConfig::default()
        };
        // A Python handler that does nothing, through jobd.py: warm under
        // one name, one-shot under the other.
        std::fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/jobs/jobd.py"),
            handlers.join("jobd.py"),
        )
        .unwrap();
        for name in ["py_warm", "py_once"] {
            let path = handlers.join(name);
            std::fs::write(
                &path,
                "#!/usr/bin/env python3\nimport jobd\njobd.serve(lambda args, ctx: None)\n",
            )
            .unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let mut exec = ExecConfig {
            dir: handlers,
            ..ExecConfig::default()
        };
        exec.handlers.insert(
            "py_warm".into(),
            HandlerConfig {
                mode: HandlerMode::Persistent,
                max_jobs: u64::MAX,
                ..HandlerConfig::default()
            },
        );
        let registry = Registry::cpu(&file, &exec);
        Bench {
            file,
            exec,
            registry,
        }
    }

    fn pool(&self, workers: usize, max_jobs: u64) -> (ProcessPool, Receiver<Finished>) {
        let (done_tx, done) = crossbeam_channel::unbounded();
        let settings = Settings {
            program: env!("CARGO_BIN_EXE_jobd").into(),
            setup: Setup {
                file: self.file.clone(),
                exec: self.exec.clone(),
                memory_limit: 1 << 30,
                nice: CPU_NICE,
            },
            max_jobs,
        };
        let pool =
            ProcessPool::new(workers, settings, done_tx, Arc::new(WorkerPids::default())).unwrap();
        (pool, done)
    }

    fn task(&self, id: i64, kind: &str, payload: &str) -> Task {
        Task {
            job: Claimed {
                id,
                queue: "default".into(),
                kind: kind.into(),
                payload: payload.into(),
                priority: 0,
                run_at: 0,
                max_attempts: None,
                timeout_ms: None,
                attempts: 1,
                started_at: 0,
                limit_key: None,
                undecodable: None,
                parents: Vec::new(),
                callback_for: None,
                snoozes: 0,
                inputs: None,
            },
            kind: Arc::clone(self.registry.get(kind).unwrap()),
            worker: Arc::from("bench"),
            started_at: 0,
            timeout: Duration::from_secs(600),
            max_attempts: 1,
            retry: Arc::new(RetryConfig::default()),
            control: Control::new(),
        }
    }

    /// The kind run in this process, one job at a time: the work itself.
    fn in_process(&self, kind: &str, payload: &str) -> Vec<f64> {
        let kind = self.registry.get(kind).unwrap();
        let cancel = std::sync::atomic::AtomicBool::new(false);
        (0..JOBS)
            .map(|i| {
                let ctx = Context {
                    id: i as i64,
                    attempt: 1,
                    queue: "default",
                    deadline: Instant::now() + Duration::from_secs(600),
                    cancel: &cancel,
                    spawned: None,
                    inputs: None,
                    report: None,
                };
                let t = Instant::now();
                kind.run(&ctx, payload).unwrap();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect()
    }

    /// `n` jobs submitted at once to `workers` workers: jobs per second.
    fn drain(&self, workers: usize, n: usize, kind: &str, payload: &str) -> f64 {
        let (pool, done) = self.pool(workers, u64::MAX);
        // One job per worker first, so start-up is not in the figure.
        for i in 0..workers {
            pool.submit(self.task(i as i64, kind, payload));
        }
        for _ in 0..workers {
            done.recv().unwrap();
        }
        let t = Instant::now();
        for i in 0..n {
            pool.submit(self.task(i as i64, kind, payload));
        }
        for _ in 0..n {
            let f = done.recv().unwrap();
            assert_eq!(f.completion.outcome, jobd::job::RunOutcome::Succeeded);
        }
        let rate = n as f64 / t.elapsed().as_secs_f64();
        pool.shutdown();
        rate
    }

    /// Through the pool, one job at a time (submit, wait for the answer).
    fn through_pool(&self, max_jobs: u64, kind: &str, payload: &str) -> Vec<f64> {
        self.through_pool_n(max_jobs, kind, payload, JOBS)
    }

    /// [`Bench::through_pool`] for `n` jobs.
    fn through_pool_n(&self, max_jobs: u64, kind: &str, payload: &str, n: usize) -> Vec<f64> {
        let (pool, done) = self.pool(1, max_jobs);
        let times = (0..n)
            .map(|i| {
                let t = Instant::now();
                pool.submit(self.task(i as i64, kind, payload));
                let finished = done.recv().unwrap();
                assert_eq!(
                    finished.completion.outcome,
                    jobd::job::RunOutcome::Succeeded,
                    "{:?}",
                    finished.completion.error
                );
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        pool.shutdown();
        times
    }
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

/// Some bytes for the big files (content does not matter to sha256's speed).
fn big_content() -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..BIG)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn write_big_files(root: &Path) {
    if (0..BIG_FILES).all(|i| {
        std::fs::metadata(root.join(format!("big{i}"))).is_ok_and(|m| m.len() == BIG as u64)
    }) {
        return;
    }
    let content = big_content();
    for i in 0..BIG_FILES {
        std::fs::write(root.join(format!("big{i}")), &content).unwrap();
    }
}

fn main() {
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let wants = |part: &str| only.is_empty() || only.split(',').any(|p| p == part);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let bench = Bench::new(dir);
    let root = bench.file.roots[0].clone();

    if wants("overhead") {
        for (kind, payload) in [
            ("checksum", r#"{"path":"small"}"#),
            ("exec", r#"{"handler":"true"}"#),
        ] {
            let work = sorted(bench.in_process(kind, payload));
            let pooled = sorted(bench.through_pool(u64::MAX, kind, payload));
            let fresh = sorted(bench.through_pool(1, kind, payload));
            let (w50, p50, f50) = (
                percentile(&work, 0.5),
                percentile(&pooled, 0.5),
                percentile(&fresh, 0.5),
            );
            println!(
                "overhead, {JOBS} {kind} jobs ({payload}) one at a time: the work in-process p50 {w50:.3} ms; \
                 through the prefork pool p50 {p50:.3} ms, p99 {:.3} ms → overhead p50 {:.3} ms; \
                 a fresh worker process per job p50 {f50:.3} ms, p99 {:.3} ms → overhead p50 {:.3} ms",
                percentile(&pooled, 0.99),
                p50 - w50,
                percentile(&fresh, 0.99),
                f50 - w50,
            );
        }
    }

    if wants("warm") {
        // A Python handler that does nothing: warm (one process per worker)
        // against one-shot (an interpreter per job), one job at a time, and
        // the pool's own cost for a job with no process (`checksum` of 1 KiB).
        let base = sorted(bench.through_pool(u64::MAX, "checksum", r#"{"path":"small"}"#));
        let work = sorted(bench.in_process("checksum", r#"{"path":"small"}"#));
        let warm = sorted(bench.through_pool(u64::MAX, "exec", r#"{"handler":"py_warm"}"#));
        let once = sorted(bench.through_pool_n(u64::MAX, "exec", r#"{"handler":"py_once"}"#, 200));
        let pool_cost = percentile(&base, 0.5) - percentile(&work, 0.5);
        println!(
            "warm, a Python handler doing nothing through one worker: warm p50 {:.3} ms, p99 {:.3} ms \
             ({:.3} ms beyond the pool's own {pool_cost:.3} ms); one-shot p50 {:.1} ms, p99 {:.1} ms \
             ({:.0} × the warm one)",
            percentile(&warm, 0.5),
            percentile(&warm, 0.99),
            percentile(&warm, 0.5) - pool_cost,
            percentile(&once, 0.5),
            percentile(&once, 0.99),
            percentile(&once, 0.5) / percentile(&warm, 0.5),
        );
        let warm_rate = bench.drain(2, 10_000, "exec", r#"{"handler":"py_warm"}"#);
        let once_rate = bench.drain(2, 500, "exec", r#"{"handler":"py_once"}"#);
        println!(
            "warm, 10 000 jobs of that handler with cpu.workers = 2: {warm_rate:.0} jobs/s \
             (one-shot, 500 jobs: {once_rate:.0} jobs/s)"
        );
    }

    if wants("scaling") {
        write_big_files(&root);
        let mut rates = Vec::new();
        for workers in [1, 2] {
            let (pool, done) = bench.pool(workers, u64::MAX);
            // Round 0 warms the page cache and the workers; then the best of
            // three, since a shared machine only ever slows a round down.
            let mut best = f64::INFINITY;
            for round in 0..4 {
                let t = Instant::now();
                for i in 0..BIG_FILES {
                    let payload = format!(r#"{{"path":"big{i}","algorithm":"sha256"}}"#);
                    pool.submit(bench.task(i as i64, "checksum", &payload));
                }
                for _ in 0..BIG_FILES {
                    let f = done.recv().unwrap();
                    assert_eq!(f.completion.outcome, jobd::job::RunOutcome::Succeeded);
                }
                if round > 0 {
                    best = best.min(t.elapsed().as_secs_f64());
                }
            }
            let rate = (BIG_FILES * BIG) as f64 / best / (1 << 20) as f64;
            rates.push(rate);
            println!(
                "scaling, sha256 of {BIG_FILES} × 64 MiB with cpu.workers = {workers}: best of 3 {best:.3} s, {rate:.0} MiB/s"
            );
            pool.shutdown();
        }
        println!(
            "scaling ratio 2 workers / 1 worker: {:.2}",
            rates[1] / rates[0]
        );
    }

    if wants("isolation") {
        write_big_files(&root);
        let extra = format!(
            "[cpu]\nworkers = 2\n[file]\nroots = [\"{}\"]\n",
            root.display()
        );
        for loaded in [false, true] {
            let mut store = fresh(dir);
            let daemon = Daemon::start_with(dir, 8, &extra);
            daemon.wait_started();
            std::thread::sleep(Duration::from_millis(500));
            if loaded {
                let jobs: Vec<NewJob> = (0..400)
                    .map(|i| {
                        let mut job = NewJob::new("checksum");
                        job.payload = format!(r#"{{"path":"big{}"}}"#, i % BIG_FILES);
                        job
                    })
                    .collect();
                store.enqueue(&jobs, now_ms()).unwrap();
                while query_i64(
                    &mut store,
                    "SELECT count(*) FROM jobs WHERE kind = 'checksum' AND state = 'running'",
                ) < 2
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            let observed = pickup(&mut store, 300);
            let still = query_i64(
                &mut store,
                "SELECT count(*) FROM jobs WHERE kind = 'checksum' AND state = 'running'",
            );
            let done = query_i64(
                &mut store,
                "SELECT count(*) FROM jobs WHERE kind = 'checksum' AND state = 'succeeded'",
            );
            println!(
                "isolation, 300 noop jobs 20 ms apart {}: pickup p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms{}",
                if loaded {
                    "with both CPU workers busy hashing 64 MiB files"
                } else {
                    "with the CPU pool idle"
                },
                percentile(&observed, 0.5),
                percentile(&observed, 0.99),
                observed[observed.len() - 1],
                if loaded {
                    format!(" ({done} checksum jobs finished meanwhile, {still} still running at the end)")
                } else {
                    String::new()
                }
            );
            daemon.stop();
        }
    }
}
