//! The two backends side by side, in one run: `noop` throughput with one,
//! two and three release daemons on one database (50 000 jobs inserted
//! before the first starts; first start to last finish, from `job_runs`),
//! and pickup latency on an idle daemon (300 jobs inserted 20 ms apart,
//! each watched until it leaves `queued`): through LISTEN/NOTIFY on
//! PostgreSQL, through the `-wal` watch on SQLite; then the keyed figures
//! ([`keyed_figures`]), flows ([`flow_figures`]), and jobd against
//! graphile-worker on PostgreSQL ([`speed_figures`]: jobs/s with one and
//! two processes, CPU and WAL per job, pickup; graphile-worker only when
//! `npm` is found). `JOBD_BENCH=keys`, `JOBD_BENCH=flows`,
//! `JOBD_BENCH=pickup` or `JOBD_BENCH=speed` runs only those; `JOBD_BENCH=speed
//! JOBD_SPEED_ROUNDS=1` is the quick comparison.
//!
//! `cargo bench --bench postgres` (needs the machine's server at
//! 127.0.0.1:5432, database `test`; each run works in a schema of its own,
//! dropped at the end, and SQLite in a temporary folder).

mod common;

use jobd::store::prelude::*;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{median, percentile, pickup_keyed};
use jobd::store::postgres::PgStore;
use jobd::store::{OpenMode, SqliteStore};

const JOBS: i64 = 50_000;
const PICKUPS: usize = 300;
/// The machine's server, trust authentication.
const PG_URL: &str = "postgres://root@127.0.0.1:5432/test";

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

/// One database of either backend, fresh for one measurement.
enum Database {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Database {
    fn sqlite(dir: &tempfile::TempDir, tag: &str) -> Database {
        let path = dir.path().join(format!("{tag}.db"));
        Admin::migrate(
            &mut SqliteStore::open(&path, Duration::from_secs(5), OpenMode::Create).unwrap(),
        )
        .unwrap();
        Database::Sqlite(path)
    }

    fn postgres(tag: &str) -> Database {
        let schema = format!("jobd_bench_{tag}_{}", std::process::id());
        psql(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};"
        ));
        let db = Database::Postgres(schema);
        Admin::migrate(&mut db.pg()).unwrap();
        db
    }

    fn name(&self) -> &'static str {
        match self {
            Database::Sqlite(_) => "SQLite",
            Database::Postgres(_) => "PostgreSQL",
        }
    }

    /// The URL of a PostgreSQL database, its schema first on the path.
    fn url(&self) -> String {
        let Database::Postgres(schema) = self else {
            unreachable!()
        };
        format!("{PG_URL}?options=-c%20search_path%3D{schema}")
    }

    fn pg(&self) -> PgStore {
        PgStore::connect(&self.url(), Duration::from_secs(5)).unwrap()
    }

    fn sqlite_store(&self) -> SqliteStore {
        let Database::Sqlite(path) = self else {
            unreachable!()
        };
        SqliteStore::open(path, Duration::from_secs(5), OpenMode::Existing).unwrap()
    }

    /// The `[database]` line of a daemon's config.
    fn config_line(&self) -> String {
        match self {
            Database::Sqlite(path) => format!("path = \"{}\"", path.display()),
            Database::Postgres(_) => format!("url = \"{}\"", self.url()),
        }
    }

    /// Runs statements, answering nothing.
    fn exec(&self, sql: &str) {
        match self {
            Database::Sqlite(_) => self.sqlite_store().connection().execute_batch(sql).unwrap(),
            Database::Postgres(schema) => {
                psql(&format!("SET search_path = {schema}; {sql}"));
            }
        }
    }

    /// Every row of a one-column query, a line each.
    fn text(&self, sql: &str) -> String {
        match self {
            Database::Sqlite(_) => {
                let mut store = self.sqlite_store();
                let mut stmt = store.connection().prepare(sql).unwrap();
                let rows: Vec<String> = stmt
                    .query_map([], |r| r.get::<_, i64>(0))
                    .unwrap()
                    .map(|v| v.unwrap().to_string())
                    .collect();
                rows.join("\n")
            }
            Database::Postgres(schema) => psql(&format!("SET search_path = {schema}; {sql}")),
        }
    }

    /// One integer from a query (0 for NULL).
    fn scalar(&self, sql: &str) -> i64 {
        match self {
            Database::Sqlite(_) => self
                .sqlite_store()
                .connection()
                .query_row(sql, [], |r| r.get::<_, Option<i64>>(0))
                .unwrap()
                .unwrap_or(0),
            Database::Postgres(schema) => psql(&format!("SET search_path = {schema}; {sql}"))
                .lines()
                .last()
                .unwrap_or("0")
                .parse()
                .unwrap_or(0),
        }
    }

    /// Inserts `n` noop jobs; with `keys`, spread over that many limit
    /// keys (`k0`, `k1`, …).
    fn insert_noops(&self, n: i64, keys: Option<i64>) {
        let key = match keys {
            Some(k) => format!("'k' || (i % {k})"),
            None => "NULL".to_string(),
        };
        self.insert(n, "'{}'", &key);
    }

    /// Inserts `n` noop jobs of key `key` sleeping `sleep_ms` each.
    fn insert_key(&self, n: i64, key: &str, sleep_ms: u32) {
        self.insert(
            n,
            &format!("'{{\"sleep_ms\":{sleep_ms}}}'"),
            &format!("'{key}'"),
        );
    }

    /// Inserts `n` noop jobs with `payload` and `key` (SQL over `i`, 1 to
    /// `n`) in one statement.
    fn insert(&self, n: i64, payload: &str, key: &str) {
        let sql = format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) \
             INSERT INTO jobs(kind, payload, limit_key) SELECT 'noop', {payload}, {key} FROM n"
        );
        match self {
            Database::Sqlite(_) => {
                self.sqlite_store()
                    .connection()
                    .execute_batch(&format!("{sql};"))
                    .unwrap();
            }
            Database::Postgres(_) => {
                self.scalar(&format!("{sql}; SELECT 0;"));
            }
        }
    }

    fn pickup(&self, n: usize, key: Option<&str>) -> Vec<f64> {
        match self {
            Database::Sqlite(_) => pickup_keyed(&mut self.sqlite_store(), n, key),
            Database::Postgres(_) => pickup_keyed(&mut self.pg(), n, key),
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Database::Postgres(schema) = self {
            psql(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE;"));
        }
    }
}

/// Starts daemon `n` on `db` with 8 pool threads and 1 CPU worker (and
/// `extra` config), logging at `info`; returns it with its log file.
fn daemon(dir: &tempfile::TempDir, db: &Database, n: usize, extra: &str) -> (Child, PathBuf) {
    daemon_at(dir, db, n, "info", extra, &[])
}

/// [`daemon`] logging at `level`, with `env` added to its environment.
fn daemon_at(
    dir: &tempfile::TempDir,
    db: &Database,
    n: usize,
    level: &str,
    extra: &str,
    env: &[(&str, &std::ffi::OsStr)],
) -> (Child, PathBuf) {
    let config = dir.path().join(format!("d{n}.toml"));
    let log = dir.path().join(format!("d{n}-{}.log", db.name()));
    std::fs::remove_file(&log).ok();
    std::fs::write(
        &config,
        format!(
            "[database]\n{}\n[pool]\nthreads = 8\n[cpu]\nworkers = 1\n[log]\nlevel = \"{level}\"\nfile = \"{}\"\n{extra}",
            db.config_line(),
            log.display()
        ),
    )
    .unwrap();
    let child = Command::new(common::jobd_program())
        .arg("--config")
        .arg(&config)
        .arg("run")
        .envs(env.iter().copied())
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (child, log)
}

fn wait_started(log: &PathBuf) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains("daemon.started")
    {
        assert!(Instant::now() < deadline, "daemon did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn stop(daemons: Vec<(Child, PathBuf)>) {
    for (d, _) in &daemons {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
    }
    for (mut d, _) in daemons {
        let _ = d.wait();
    }
}

/// The config of a daemon whose keys `k*` run at most 4 at once.
const KEYS_K: &str = "[keys.k]\nmatch = \"k*\"\nconcurrency = 4\n";

/// Jobs per second of `daemons` daemons draining `JOBS` noop jobs; with
/// `keys`, spread over that many keys, each limited to 4 at once.
fn throughput(dir: &tempfile::TempDir, db: &Database, daemons: usize, keys: Option<i64>) -> f64 {
    db.insert_noops(JOBS, keys);
    drain_rate(
        dir,
        db,
        daemons,
        if keys.is_some() { KEYS_K } else { "" },
        JOBS,
    )
}

/// Jobs per second of `daemons` daemons (config `extra`) over the first
/// `count` jobs they finish: first start to last finish of those runs.
fn drain_rate(
    dir: &tempfile::TempDir,
    db: &Database,
    daemons: usize,
    extra: &str,
    count: i64,
) -> f64 {
    let running: Vec<_> = (0..daemons).map(|i| daemon(dir, db, i, extra)).collect();
    let deadline = Instant::now() + Duration::from_secs(600);
    while db.scalar("SELECT count(*) FROM job_runs") < count {
        assert!(Instant::now() < deadline, "stalled");
        std::thread::sleep(Duration::from_millis(50));
    }
    stop(running);
    let span = db
        .scalar(&format!(
            "SELECT max(finished_at) - min(started_at) FROM \
             (SELECT started_at, finished_at FROM job_runs ORDER BY id LIMIT {count}) r"
        ))
        .max(1);
    count as f64 / (span as f64 / 1000.0)
}

/// The keyed figures of issue 19, on both backends: a drain with keys
/// against one without, the claim staying an
/// index range scan under a deep backlog (the first 20 000 jobs of
/// 1 000 000 queued over 10 000 keys against the same of 20 000 queued),
/// pickup with keys in use, and a fair queue's small key starting while a
/// big one drains (20 000 jobs of key A sleeping 1 ms, then 50 of key B:
/// B's waits from insert to start).
fn keyed_figures(dir: &tempfile::TempDir) {
    // Keyed limits: the same drain over 1 000 keys of concurrency 4, beside
    // a run without keys (issue target: at least half of it).
    for (plain_db, keyed_db) in [
        (
            Database::sqlite(dir, "plain"),
            Database::sqlite(dir, "keyed"),
        ),
        (Database::postgres("plain"), Database::postgres("keyed")),
    ] {
        let plain = throughput(dir, &plain_db, 1, None);
        let keyed = throughput(dir, &keyed_db, 1, Some(1_000));
        let db = keyed_db;
        println!(
            "{:<10} 1 daemon, {JOBS} noop jobs over 1 000 keys (concurrency = 4 each): {keyed:>6.0} jobs/s, \
             without keys {plain:>6.0} ({:.0} %)",
            db.name(),
            100.0 * keyed / plain
        );
    }
    const DRAINED: i64 = 20_000;
    for (small, deep) in [
        (
            Database::sqlite(dir, "small"),
            Database::sqlite(dir, "deep"),
        ),
        (Database::postgres("small"), Database::postgres("deep")),
    ] {
        small.insert_noops(DRAINED, Some(10_000));
        deep.insert_noops(1_000_000, Some(10_000));
        if let Database::Postgres(_) = deep {
            // As an operator's table would be by then: analyzed.
            deep.scalar("ANALYZE jobs; SELECT 0;");
            small.scalar("ANALYZE jobs; SELECT 0;");
        }
        let shallow = drain_rate(dir, &small, 1, KEYS_K, DRAINED);
        let backlog = drain_rate(dir, &deep, 1, KEYS_K, DRAINED);
        println!(
            "{:<10} 1 daemon, first {DRAINED} noop jobs over 10 000 keys (concurrency = 4 each): \
             1 000 000 queued {backlog:>6.0} jobs/s, {DRAINED} queued {shallow:>6.0} ({:.0} %)",
            deep.name(),
            100.0 * backlog / shallow
        );
    }
    for db in [
        Database::sqlite(dir, "kpickup"),
        Database::postgres("kpickup"),
    ] {
        let (child, log) = daemon(dir, &db, 8, KEYS_K);
        wait_started(&log);
        let plain = db.pickup(PICKUPS, None);
        let keyed = db.pickup(PICKUPS, Some("k"));
        stop(vec![(child, log)]);
        println!(
            "{:<10} pickup with [keys] in force, {PICKUPS} jobs 20 ms apart: keyed p50 {:.2} ms \
             p99 {:.2} ms; unkeyed p50 {:.2} ms p99 {:.2} ms",
            db.name(),
            percentile(&keyed, 0.5),
            percentile(&keyed, 0.99),
            percentile(&plain, 0.5),
            percentile(&plain, 0.99),
        );
    }
    for db in [Database::sqlite(dir, "fair"), Database::postgres("fair")] {
        let (child, log) = daemon(dir, &db, 7, "[queues.default]\nfair = true\n");
        wait_started(&log);
        db.insert_key(20_000, "customer:a", 1);
        while db.scalar("SELECT count(*) FROM job_runs") < 200 {
            std::thread::sleep(Duration::from_millis(5));
        }
        db.insert_key(50, "customer:b", 0);
        let deadline = Instant::now() + Duration::from_secs(120);
        while db.scalar(
            "SELECT count(*) FROM jobs WHERE limit_key = 'customer:b' AND started_at IS NOT NULL",
        ) < 50
        {
            assert!(Instant::now() < deadline, "B never started");
            std::thread::sleep(Duration::from_millis(5));
        }
        let left = db.scalar(
            "SELECT count(*) FROM jobs WHERE limit_key = 'customer:a' AND state = 'queued'",
        );
        stop(vec![(child, log)]);
        let mut waits: Vec<f64> = (1..=50)
            .map(|rank| {
                db.scalar(&format!(
                    "SELECT started_at - created_at FROM jobs WHERE limit_key = 'customer:b' \
                     ORDER BY 1 LIMIT 1 OFFSET {}",
                    rank - 1
                )) as f64
            })
            .collect();
        waits.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "{:<10} fair queue, 20 000 jobs of key A (1 ms each) then 50 of key B: B waited \
             p50 {:.0} ms, p99 {:.0} ms; A had {left} jobs left",
            db.name(),
            percentile(&waits, 0.5),
            percentile(&waits, 0.99),
        );
    }
}

/// Waits until `sql` (one integer) reaches `want`.
fn wait_count(db: &Database, sql: &str, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while db.scalar(sql) < want {
        assert!(Instant::now() < deadline, "stalled: {sql}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The flow figures of issue 20, on both backends: a chain of 10 000 jobs
/// (each waiting for the one before) with the delay from a parent's finish
/// to its child's start, and a batch of 100 000 jobs with one callback
/// against the same 100 000 jobs with no batch, with the delay from the
/// batch's last finish to the callback's start.
fn flow_figures(dir: &tempfile::TempDir) {
    const CHAIN: i64 = 10_000;
    const FAN: i64 = 100_000;
    for backend in ["sqlite", "postgres"] {
        let fresh = |tag: &str| match backend {
            "sqlite" => Database::sqlite(dir, tag),
            _ => Database::postgres(tag),
        };
        // A chain, written in one statement: job i waits for job i - 1.
        let db = fresh("chain");
        let parent = match db {
            Database::Sqlite(_) => "CASE WHEN i = 1 THEN NULL ELSE json_array(i - 1) END",
            Database::Postgres(_) => "CASE WHEN i = 1 THEN NULL ELSE ARRAY[i - 1]::bigint[] END",
        };
        db.exec(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {CHAIN}) \
             INSERT INTO jobs(kind, parents) SELECT 'noop', {parent} FROM n;"
        ));
        let running = vec![daemon(dir, &db, 20, "")];
        wait_count(&db, "SELECT count(*) FROM job_runs", CHAIN);
        stop(running);
        let span = db
            .scalar("SELECT max(finished_at) - min(started_at) FROM jobs")
            .max(1);
        let gaps = db.text(
            "SELECT c.started_at - p.finished_at FROM jobs c JOIN jobs p ON p.id = c.id - 1 \
             ORDER BY 1",
        );
        let mut gaps: Vec<f64> = gaps.lines().filter_map(|l| l.trim().parse().ok()).collect();
        gaps.sort_by(f64::total_cmp);
        println!(
            "{:<10} chain of {CHAIN} jobs, each after the one before: {:>6.0} jobs/s; \
             parent's finish to child's start p50 {:.0} ms, p99 {:.0} ms",
            db.name(),
            CHAIN as f64 / (span as f64 / 1000.0),
            percentile(&gaps, 0.5),
            percentile(&gaps, 0.99)
        );
        // Fan-out and fan-in: a batch with one callback, against no batch.
        let plain = fresh("fan_plain");
        plain.insert(FAN, "'{}'", "NULL");
        let plain_rate = drain_rate(dir, &plain, 1, "", FAN);
        let db = fresh("fan_batch");
        db.exec(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {FAN}) \
             INSERT INTO jobs(kind, batch) SELECT 'noop', 'fan' FROM n; \
             INSERT INTO jobs(kind, callback_for) VALUES ('noop', 'fan');"
        ));
        let running = vec![daemon(dir, &db, 21, "")];
        wait_count(
            &db,
            "SELECT count(*) FROM jobs WHERE callback_for = 'fan' AND state = 'succeeded'",
            1,
        );
        stop(running);
        let span = db
            .scalar("SELECT max(finished_at) - min(started_at) FROM jobs WHERE batch = 'fan'")
            .max(1);
        let batch_rate = FAN as f64 / (span as f64 / 1000.0);
        let callback = db.scalar(
            "SELECT (SELECT started_at FROM jobs WHERE callback_for = 'fan') \
                    - (SELECT max(finished_at) FROM jobs WHERE batch = 'fan')",
        );
        println!(
            "{:<10} batch of {FAN} jobs and a callback: {batch_rate:>6.0} jobs/s, the same without \
             a batch {plain_rate:>6.0} ({:.0} %); callback started {callback} ms after the last job",
            db.name(),
            100.0 * batch_rate / plain_rate
        );
    }
}

/// What one drain cost, per job: see [`speed_figures`].
#[derive(Clone, Copy)]
struct Drain {
    rate: f64,
    worker_us: f64,
    server_us: f64,
    wal: f64,
    insert_wal: f64,
}

/// CPU time so far, in clock ticks, of worker process trees and of the
/// PostgreSQL server.
struct Cpu {
    workers: u64,
    server: u64,
}

impl Cpu {
    /// Reads /proc: the trees under `workers` (each process's utime, stime,
    /// cutime and cstime, so that threads and children, reaped or not,
    /// count), and every process whose comm starts with `postgres` (the
    /// same four, so that backends and autovacuum workers that exit during
    /// the run still count, through the postmaster) except the backend
    /// `exclude` (the benchmark's own connection).
    fn now(workers: &[u32], exclude: u32) -> Cpu {
        let mut procs = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid … utime(14) stime cutime cstime(17)
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let comm = stat[open + 1..close].to_string();
            let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
            let ppid: u32 = fields[1].parse().unwrap_or(0);
            let ticks: u64 = fields[11..15]
                .iter()
                .map(|f| f.parse::<u64>().unwrap_or(0))
                .sum();
            procs.push((pid, ppid, comm, ticks));
        }
        let mut tree: Vec<u32> = workers.to_vec();
        let mut i = 0;
        while i < tree.len() {
            let parent = tree[i];
            tree.extend(procs.iter().filter(|p| p.1 == parent).map(|p| p.0));
            i += 1;
        }
        Cpu {
            workers: procs
                .iter()
                .filter(|p| tree.contains(&p.0))
                .map(|p| p.3)
                .sum(),
            server: procs
                .iter()
                .filter(|p| p.2.starts_with("postgres") && p.0 != exclude)
                .map(|p| p.3)
                .sum(),
        }
    }
}

/// Microseconds in a clock tick.
fn tick_us() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    1e6 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// A connection of the benchmark's own (its backend's CPU is left out).
fn client(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).unwrap()
}

/// When the jobs of a drain arrive: all queued before the workers start,
/// or all at once while they idle.
#[derive(Clone, Copy, PartialEq)]
enum Arrival {
    Backlog,
    Burst,
}

/// Measures one drain of `jobs` jobs: `insert` (statements run in one
/// transaction on `client`, the last answering
/// `pg_current_wal_insert_lsn()`) queues them all, and `start` starts the
/// workers, waits until they are ready (before their first claim for
/// jobd, just after it for graphile-worker) and answers their pids: first
/// `start` then `insert` for a burst, and the clock runs from the insert's
/// commit; the other way round for a backlog, from ready. It stops when
/// `left` (the smallest id of a job not done yet from `$1` on, polled
/// every 10 ms from the last id it answered: each poll reads only what was
/// done since the one before) answers no row. CPU is read at the same two
/// moments; WAL from the insert's end (its own from its start) to the end.
fn measure(
    client: &mut postgres::Client,
    arrival: Arrival,
    start: &mut dyn FnMut() -> Vec<u32>,
    insert: &str,
    left: &str,
    jobs: i64,
) -> Drain {
    let mut pids = Vec::new();
    if arrival == Arrival::Burst {
        pids = start();
    }
    // Each run starts after a checkpoint, so that all pay for the first
    // write of a page after one alike (full-page images).
    client.batch_execute("CHECKPOINT").unwrap();
    let me = client
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get::<_, i32>(0) as u32;
    let before_insert: String = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .unwrap()
        .get(0);
    let left = client.prepare(left).unwrap();
    let inserted = client.simple_query(insert).unwrap();
    if arrival == Arrival::Backlog {
        pids = start();
    }
    let started = Instant::now();
    let cpu_before = Cpu::now(&pids, me);
    let after_insert = inserted
        .iter()
        .filter_map(|m| match m {
            postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        })
        .last()
        .expect("the insert's last statement answers pg_current_wal_insert_lsn()");
    let deadline = started + Duration::from_secs(600);
    let mut cursor = 0i64;
    while let Some(row) = client.query_opt(&left, &[&cursor]).unwrap() {
        cursor = row.get(0);
        assert!(Instant::now() < deadline, "stalled");
        std::thread::sleep(Duration::from_millis(10));
    }
    let elapsed = started.elapsed();
    let cpu_after = Cpu::now(&pids, me);
    let wal = client
        .query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), $1::text::pg_lsn)::bigint, \
                    pg_wal_lsn_diff($1::text::pg_lsn, $2::text::pg_lsn)::bigint",
            &[&after_insert, &before_insert],
        )
        .unwrap();
    let per_job = |ticks: u64| ticks as f64 * tick_us() / jobs as f64;
    Drain {
        rate: jobs as f64 / elapsed.as_secs_f64(),
        worker_us: per_job(cpu_after.workers - cpu_before.workers),
        server_us: per_job(cpu_after.server - cpu_before.server),
        wal: wal.get::<_, i64>(0) as f64 / jobs as f64,
        insert_wal: wal.get::<_, i64>(1) as f64 / jobs as f64,
    }
}

/// Starts daemon `n` on `db` as the speed figures run it (8 pool threads,
/// 1 CPU worker, `log.level = "warn"`) and waits for its `READY=1` (the
/// database open and both pools running), sent to a notify socket of the
/// benchmark's as it is to systemd's.
fn ready_daemon(dir: &tempfile::TempDir, db: &Database, n: usize) -> (Child, PathBuf) {
    let socket = dir.path().join(format!("d{n}.notify"));
    std::fs::remove_file(&socket).ok();
    let listener = std::os::unix::net::UnixDatagram::bind(&socket).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let daemon = daemon_at(
        dir,
        db,
        n,
        "warn",
        "",
        &[("NOTIFY_SOCKET", socket.as_os_str())],
    );
    let mut buf = [0u8; 4096];
    loop {
        let got = listener.recv(&mut buf).expect("no READY=1 within 30 s");
        if String::from_utf8_lossy(&buf[..got]).contains("READY=1") {
            break;
        }
    }
    // Later notifications find no socket; the daemon ignores that.
    std::fs::remove_file(&socket).ok();
    daemon
}

/// `procs` jobd daemons draining `jobs` noop jobs on one fresh schema.
fn jobd_drain(dir: &tempfile::TempDir, arrival: Arrival, procs: usize, jobs: i64) -> Drain {
    let db = Database::postgres(&format!("speed{procs}"));
    let mut running = Vec::new();
    let drain = measure(
        &mut client(&db.url()),
        arrival,
        &mut || {
            running = (0..procs).map(|i| ready_daemon(dir, &db, 30 + i)).collect();
            running.iter().map(|(c, _)| c.id()).collect()
        },
        &format!(
            "INSERT INTO jobs(kind, payload) SELECT 'noop', '{{}}' FROM generate_series(1, {jobs}); \
             SELECT pg_current_wal_insert_lsn()::text"
        ),
        "SELECT id FROM jobs WHERE id >= $1 AND state IN ('queued', 'running') \
         ORDER BY id LIMIT 1",
        jobs,
    );
    stop(running);
    assert_eq!(
        db.scalar("SELECT count(*) FROM jobs WHERE state = 'succeeded'"),
        jobs
    );
    drain
}

/// A graphile-worker schema of its own, dropped at the end.
struct GraphileSchema(String);

impl GraphileSchema {
    fn new(tag: &str) -> GraphileSchema {
        let schema = format!("jobd_bench_gw_{tag}_{}", std::process::id());
        psql(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE;"));
        GraphileSchema(schema)
    }
}

impl Drop for GraphileSchema {
    fn drop(&mut self) {
        psql(&format!("DROP SCHEMA IF EXISTS {} CASCADE;", self.0));
    }
}

/// graphile-worker, installed by npm from `benches/graphile/package-lock.json`
/// into `target/graphile-worker` (or `JOBD_GRAPHILE_DIR`) once, and run as
/// `node worker.mjs` (`benches/graphile/worker.mjs`: the perfTest settings).
struct Graphile {
    dir: PathBuf,
    version: String,
}

impl Graphile {
    /// Installs it unless the same lock file was installed before; the
    /// error says why it cannot run.
    fn install() -> Result<Graphile, String> {
        for tool in ["npm", "node"] {
            match Command::new(tool).arg("--version").output() {
                Ok(out) if out.status.success() => {}
                _ => return Err(format!("`{tool}` not found on PATH")),
            }
        }
        let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/graphile");
        let dir = std::env::var_os("JOBD_GRAPHILE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/graphile-worker")
            });
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let lock = std::fs::read(source.join("package-lock.json")).unwrap();
        let marker = dir.join("installed.lock");
        if std::fs::read(&marker).ok() != Some(lock.clone()) {
            for file in ["package.json", "package-lock.json"] {
                std::fs::copy(source.join(file), dir.join(file)).unwrap();
            }
            let out = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir)
                .output()
                .map_err(|e| format!("npm ci: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "`npm ci` in {} failed: {}",
                    dir.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            std::fs::write(&marker, &lock).unwrap();
        }
        std::fs::copy(source.join("worker.mjs"), dir.join("worker.mjs")).unwrap();
        let package: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.join("node_modules/graphile-worker/package.json"))
                .map_err(|e| format!("graphile-worker not installed: {e}"))?,
        )
        .unwrap();
        Ok(Graphile {
            version: package["version"].as_str().unwrap_or("?").to_string(),
            dir,
        })
    }

    /// Starts worker process `n` on `schema` (migrating it) and waits for
    /// its "ready".
    fn start(&self, dir: &tempfile::TempDir, schema: &str, n: usize) -> Child {
        let log = dir.path().join(format!("gw{n}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut child = Command::new("node")
            .arg(self.dir.join("worker.mjs"))
            .args([PG_URL, schema])
            // As perfTest/run.js: no log line per job.
            .env("NO_LOG_SUCCESS", "1")
            .current_dir(dir.path())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.lines().any(|l| l == "ready") {
                return child;
            }
            if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
                let _ = child.kill();
                panic!("graphile-worker did not start:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGTERM (graphile-worker's graceful shutdown) and wait.
    fn stop(workers: Vec<Child>) {
        for w in &workers {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(w.id() as i32, libc::SIGTERM) };
        }
        for mut w in workers {
            let deadline = Instant::now() + Duration::from_secs(10);
            while w.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = w.kill();
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// `procs` worker processes draining `jobs` noop jobs on one fresh
    /// schema, queued as perfTest/init.js queues them (`add_jobs`; for a
    /// backlog, into a schema a worker started and stopped has migrated).
    fn drain(&self, dir: &tempfile::TempDir, arrival: Arrival, procs: usize, jobs: i64) -> Drain {
        let schema = GraphileSchema::new(&format!("speed{procs}"));
        let s = &schema.0;
        if arrival == Arrival::Backlog {
            Graphile::stop(vec![self.start(dir, s, 0)]);
        }
        let mut workers = Vec::new();
        let drain = measure(
            &mut client(PG_URL),
            arrival,
            &mut || {
                workers = (0..procs).map(|i| self.start(dir, s, i)).collect();
                workers.iter().map(Child::id).collect()
            },
            &format!(
                "SELECT count(*) FROM {s}.add_jobs(array(SELECT json_populate_record(null::{s}.job_spec, \
                 json_build_object('identifier', 'noop', 'payload', '{{}}'::json)) \
                 FROM generate_series(1, {jobs}))); \
                 SELECT pg_current_wal_insert_lsn()::text"
            ),
            // Finished jobs are deleted; a failed one would stay (and stall).
            &format!("SELECT id FROM {s}._private_jobs WHERE id >= $1 ORDER BY id LIMIT 1"),
            jobs,
        );
        Graphile::stop(workers);
        drain
    }

    /// Pickup as [`pickup_keyed`] measures it for jobd: `n` jobs added 20 ms
    /// apart (`add_job`), each watched from its commit until it is locked
    /// by a worker (or already gone).
    fn pickup(&self, dir: &tempfile::TempDir, n: usize) -> Vec<f64> {
        let schema = GraphileSchema::new("pickup");
        let s = &schema.0;
        let worker = self.start(dir, s, 9);
        let mut client = client(PG_URL);
        let add = client
            .prepare(&format!("SELECT (({s}.add_job('noop', '{{}}'::json))).id"))
            .unwrap();
        let locked = client
            .prepare(&format!(
                "SELECT locked_at IS NOT NULL FROM {s}._private_jobs WHERE id = $1"
            ))
            .unwrap();
        let mut observed = Vec::new();
        for _ in 0..n {
            let id: i64 = client.query_one(&add, &[]).unwrap().get(0);
            let committed = Instant::now();
            while let Some(row) = client.query_opt(&locked, &[&id]).unwrap() {
                if row.get::<_, bool>(0) {
                    break;
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            observed.push(committed.elapsed().as_secs_f64() * 1000.0);
            std::thread::sleep(Duration::from_millis(20));
        }
        Graphile::stop(vec![worker]);
        observed.sort_by(f64::total_cmp);
        observed
    }
}

/// A positive number from the environment, else `default`.
fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

/// jobd against graphile-worker on the same server, in one run (issue
/// "Speed"): `JOBD_SPEED_ROUNDS` rounds (3) of graphile-worker and jobd
/// alternating (who goes first alternates too), each draining
/// `JOBD_SPEED_JOBS` (50 000) trivial jobs with one process and with two on
/// one schema, the jobs arriving two ways (a backlog queued before the
/// workers start, a burst queued in one transaction while they idle); the
/// medians of each figure, and pickup. graphile-worker runs when `npm` and
/// `node` are found (see [`Graphile`]), with the settings of its own
/// perfTest in batching mode (`benches/graphile/worker.mjs`); jobd as
/// [`ready_daemon`]. Each run is a fresh schema, after a CHECKPOINT.
///
/// What is timed ([`measure`]): from the workers' ready (backlog) or the
/// insert's commit (burst) until no job is left (graphile-worker: no row in
/// `_private_jobs`, as it deletes finished jobs; jobd: none `queued` or
/// `running`), polled every 10 ms. So process start-up and migrations are
/// out, and wake-up, the last completions' commits and the poll's 10 ms are
/// in, alike for both. CPU is per job, of the worker processes (their
/// trees, node's threads included) and of every `postgres` process but the
/// benchmark's own backend; WAL per job is the advance of
/// `pg_current_wal_insert_lsn()` over the run (`pg_current_wal_lsn()` is
/// where WAL was written out to, which lags), the insert's shown apart.
/// Both are server-wide: another session's load counts (the load average
/// is printed first).
fn speed_figures(dir: &tempfile::TempDir) {
    let rounds = env_number("JOBD_SPEED_ROUNDS", 3);
    let jobs = env_number("JOBD_SPEED_JOBS", JOBS as usize) as i64;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "speed: {rounds} round(s) of {jobs} noop jobs; load average {}",
        load.split(' ').take(3).collect::<Vec<_>>().join(" ")
    );
    let graphile = match Graphile::install() {
        Ok(g) => Some(g),
        Err(why) => {
            println!("graphile-worker skipped: {why}");
            None
        }
    };
    let gw_name = |procs: usize| {
        format!(
            "graphile-worker {} x{procs}",
            graphile.as_ref().map_or("", |g| g.version.as_str())
        )
    };
    // (name, processes) → one Drain a round.
    let mut runs: Vec<(String, usize, Vec<Drain>)> = Vec::new();
    let mut record = |name: String, procs: usize, d: Drain| {
        println!(
            "  {name:<36} {:>7.0} jobs/s, CPU {:>5.1} + {:>5.1} us/job, WAL {:>5.0} B/job (insert {:.0})",
            d.rate, d.worker_us, d.server_us, d.wal, d.insert_wal
        );
        match runs.iter_mut().find(|r| r.0 == name) {
            Some(r) => r.2.push(d),
            None => runs.push((name, procs, vec![d])),
        }
    };
    for round in 0..rounds {
        for (arrival, label) in [(Arrival::Backlog, "backlog"), (Arrival::Burst, "burst")] {
            for procs in [1, 2] {
                // graphile-worker first in even rounds, jobd first in odd ones.
                for jobd_turn in [round % 2 == 1, round % 2 == 0] {
                    if jobd_turn {
                        let d = jobd_drain(dir, arrival, procs, jobs);
                        record(format!("{label}: jobd x{procs}"), procs, d);
                    } else if let Some(g) = &graphile {
                        let d = g.drain(dir, arrival, procs, jobs);
                        record(format!("{label}: {}", gw_name(procs)), procs, d);
                    }
                }
            }
        }
    }
    let med = |ds: &[Drain], f: fn(&Drain) -> f64| median(ds.iter().map(f).collect());
    println!(
        "speed, medians of {rounds} round(s), {jobs} noop jobs, to queue empty from ready (backlog) or from the insert (burst):\n\
         {:<36} {:>7} {:>13} {:>13} {:>9} {:>12}",
        "system", "jobs/s", "worker us/job", "server us/job", "WAL B/job", "insert B/job"
    );
    for (name, _, ds) in &runs {
        println!(
            "{name:<36} {:>7.0} {:>13.1} {:>13.1} {:>9.0} {:>12.0}",
            med(ds, |d| d.rate),
            med(ds, |d| d.worker_us),
            med(ds, |d| d.server_us),
            med(ds, |d| d.wal),
            med(ds, |d| d.insert_wal),
        );
    }
    if graphile.is_some() {
        let rate = |name: &str| med(&runs.iter().find(|r| r.0 == name).unwrap().2, |d| d.rate);
        for label in ["backlog", "burst"] {
            println!(
                "{label}: jobd / graphile-worker jobs/s: 1 process {:.2}, 2 processes {:.2} (target >= 2)",
                rate(&format!("{label}: jobd x1")) / rate(&format!("{label}: {}", gw_name(1))),
                rate(&format!("{label}: jobd x2")) / rate(&format!("{label}: {}", gw_name(2))),
            );
        }
    }
    let db = Database::postgres("speed_pickup");
    let daemon = ready_daemon(dir, &db, 39);
    let observed = db.pickup(PICKUPS, None);
    stop(vec![daemon]);
    let line = |name: &str, observed: &[f64]| {
        println!(
            "{name:<36} pickup, {PICKUPS} jobs 20 ms apart: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            percentile(observed, 0.5),
            percentile(observed, 0.99),
            observed[observed.len() - 1]
        )
    };
    line("jobd (target 1 / 3 ms)", &observed);
    if let Some(g) = &graphile {
        line(&gw_name(1), &g.pickup(dir, PICKUPS));
    }
}

/// Pickup on an idle daemon of either backend: 300 jobs inserted 20 ms
/// apart, each watched until it leaves `queued` (`JOBD_BENCH=pickup`
/// runs only this).
fn pickup_figures(dir: &tempfile::TempDir) {
    // JOBD_BENCH_BACKEND=postgres (or sqlite): that backend only.
    let only = std::env::var("JOBD_BENCH_BACKEND").unwrap_or_default();
    for db in [
        (only != "postgres").then(|| Database::sqlite(dir, "pickup")),
        (only != "sqlite").then(|| Database::postgres("pickup")),
    ]
    .into_iter()
    .flatten()
    {
        let (child, log) = daemon(dir, &db, 9, "");
        wait_started(&log);
        let observed = db.pickup(PICKUPS, None);
        stop(vec![(child, log)]);
        println!(
            "{:<10} pickup, {PICKUPS} jobs 20 ms apart: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            db.name(),
            percentile(&observed, 0.5),
            percentile(&observed, 0.99),
            observed[observed.len() - 1]
        );
    }
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    // JOBD_BENCH=keys or flows: only those figures.
    match std::env::var("JOBD_BENCH").as_deref() {
        Ok("keys") => return keyed_figures(&dir),
        Ok("flows") => return flow_figures(&dir),
        Ok("speed") => return speed_figures(&dir),
        Ok("pickup") => return pickup_figures(&dir),
        _ => {}
    }
    for n in 1..=3 {
        for db in [
            Database::sqlite(&dir, &format!("t{n}")),
            Database::postgres(&format!("t{n}")),
        ] {
            println!(
                "{:<10} {n} daemon(s), pool.threads = 8, {JOBS} noop jobs: {:>6.0} jobs/s",
                db.name(),
                throughput(&dir, &db, n, None)
            );
        }
    }
    pickup_figures(&dir);
    keyed_figures(&dir);
    flow_figures(&dir);
    speed_figures(&dir);
}
