//! PostgreSQL benchmarks: `noop` throughput with one, two and three release
//! daemons on one database (50 000 jobs pre-inserted, first start to last
//! finish), and pickup latency through LISTEN/NOTIFY on an idle daemon.
//!
//! `cargo bench --bench postgres` (needs the machine's server at
//! 127.0.0.1:5432, database `test`; each run works in a schema of its own).
//! The SQLite figures of the same machine come from `--bench daemon`.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::percentile;
use jobd::job::{now_ms, NewJob};
use jobd::store::postgres::PgStore;
use jobd::store::Store;

const JOBS: i64 = 50_000;

fn psql(sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-d",
            "test",
            "-qAt",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

struct Run {
    schema: String,
    dir: tempfile::TempDir,
}

impl Run {
    fn new(tag: &str) -> Run {
        let schema = format!("jobd_bench_{tag}_{}", std::process::id());
        psql(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};"
        ));
        let run = Run {
            schema,
            dir: tempfile::tempdir().unwrap(),
        };
        Store::migrate(&mut PgStore::connect(&run.url()).unwrap()).unwrap();
        run
    }

    fn url(&self) -> String {
        format!(
            "postgres://root@127.0.0.1:5432/test?options=-c%20search_path%3D{}",
            self.schema
        )
    }

    fn q(&self, sql: &str) -> i64 {
        psql(&format!("SET search_path = {}; {sql}", self.schema))
            .lines()
            .last()
            .unwrap_or("0")
            .parse()
            .unwrap_or(0)
    }

    fn daemon(&self, n: usize) -> Child {
        let config = self.dir.path().join(format!("d{n}.toml"));
        std::fs::write(
            &config,
            format!(
                "[database]\nurl = \"{}\"\n[pool]\nthreads = 8\n[cpu]\nworkers = 1\n[log]\nlevel = \"warn\"\nfile = \"{}\"\n",
                self.url(),
                self.dir.path().join(format!("d{n}.log")).display()
            ),
        )
        .unwrap();
        Command::new(env!("CARGO_BIN_EXE_jobd"))
            .arg("--config")
            .arg(&config)
            .arg("run")
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        psql(&format!("DROP SCHEMA IF EXISTS {} CASCADE;", self.schema));
    }
}

fn stop(mut daemons: Vec<Child>) {
    for d in &daemons {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
    }
    for d in &mut daemons {
        let _ = d.wait();
    }
}

fn main() {
    for n in 1..=3 {
        let run = Run::new(&format!("t{n}"));
        run.q(&format!(
            "INSERT INTO jobs(kind) SELECT 'noop' FROM generate_series(1, {JOBS}); SELECT 0;"
        ));
        let daemons: Vec<Child> = (0..n).map(|i| run.daemon(i)).collect();
        let deadline = Instant::now() + Duration::from_secs(600);
        while run.q("SELECT count(*) FROM jobs WHERE state = 'succeeded';") < JOBS {
            assert!(Instant::now() < deadline, "stalled");
            std::thread::sleep(Duration::from_millis(100));
        }
        let span = run
            .q("SELECT max(finished_at) - min(started_at) FROM job_runs;")
            .max(1);
        stop(daemons);
        println!(
            "PostgreSQL, {n} daemon(s), pool.threads = 8, {JOBS} noop jobs: {:.0} jobs/s",
            JOBS as f64 / (span as f64 / 1000.0)
        );
    }

    let run = Run::new("pickup");
    let daemon = run.daemon(0);
    std::thread::sleep(Duration::from_secs(3));
    let mut store = PgStore::connect(&run.url()).unwrap();
    let mut observed = Vec::new();
    for _ in 0..300 {
        let id = store.enqueue(&[NewJob::new("noop")], now_ms()).unwrap()[0].id();
        let committed = Instant::now();
        loop {
            let state = Store::job(&mut store, id).unwrap().map(|j| j.state);
            if state != Some(jobd::job::JobState::Queued) {
                break;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        observed.push(committed.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(20));
    }
    stop(vec![daemon]);
    observed.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "PostgreSQL pickup via LISTEN/NOTIFY, 300 jobs 20 ms apart: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&observed, 0.5),
        percentile(&observed, 0.99),
        observed[observed.len() - 1]
    );
}
