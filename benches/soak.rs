//! The PostgreSQL soak (not in CI): no decay under a steady load. One
//! release daemon works noop jobs that a producer thread inserts at a fixed
//! rate (every 10 ms, one `INSERT … SELECT generate_series`), with
//! autovacuum on and `[retention]` at 2 minutes so the pruner deletes
//! finished jobs and their runs; every sample period one line: jobs/s
//! finished, pickup p50/p99 of those jobs (`started_at − run_at`), the
//! queued backlog, the sizes of `jobs`, `job_runs` and their indexes,
//! their dead tuples and autovacuum counts. At the end a verdict: first
//! against last quarter of throughput and pickup p99, and each relation's
//! largest size against its size after the first 10 minutes.
//!
//! `cargo bench --bench soak`. Knobs: `JOBD_SOAK_SECS` (3600),
//! `JOBD_SOAK_RATE` (jobs/s; by default half of the rate one daemon drains
//! 50 000 queued noop jobs at, measured first on a fresh schema),
//! `JOBD_SOAK_SAMPLE_SECS` (60), and `JOBD_SOAK_SQL`: statements run on the
//! soak's fresh schema after the migrations (to try table settings by
//! hand, or to reset the shipped ones: `ALTER TABLE jobs RESET (…)`), and
//! `JOBD_SOAK_RETAINED` (0): that many finished jobs, and their runs,
//! kept for the whole run, as days of retention would keep them.
//!
//! The machine's server runs with `autovacuum = off` (CI relies on it);
//! the soak turns it on with `ALTER SYSTEM` for its own duration and resets
//! it when it ends, panics or gets SIGINT/SIGTERM. It prints the restore
//! command first, for a `kill -9`.

use jobd::store::postgres::PgStore;
use jobd::store::prelude::*;
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The machine's server, trust authentication.
const PG_URL: &str = "postgres://root@127.0.0.1:5432/test";
/// How long finished jobs and their runs are kept: short enough that the
/// tables stay small, long enough that a sample's window (the last period,
/// 2 s back) is never pruned before it is read.
const RETENTION: &str = "2m";
/// The producer's tick.
const TICK: Duration = Duration::from_millis(10);
/// The relations whose sizes each line shows (all of them go into the
/// verdict).
const SHOWN: [&str; 8] = [
    "jobs",
    "job_attempts",
    "jobs_ready",
    "jobs_pkey",
    "jobs_running",
    "jobs_succeeded",
    "jobs_run",
    "job_attempts_pkey",
];

fn env_num(name: &str) -> Option<f64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number"))
    })
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn connect(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).expect("connect to 127.0.0.1:5432")
}

/// Server-wide autovacuum on while this lives; reset to the server's file
/// setting (`off` here) when dropped.
struct AutovacuumOn;

impl AutovacuumOn {
    fn start() -> AutovacuumOn {
        eprintln!(
            "soak: autovacuum on for the run; if the soak is killed, restore it with\n  \
             psql -h 127.0.0.1 -d test -c 'ALTER SYSTEM RESET autovacuum' -c 'SELECT pg_reload_conf()'"
        );
        let mut c = connect(PG_URL);
        // ALTER SYSTEM refuses a transaction block: one statement each.
        c.batch_execute("ALTER SYSTEM SET autovacuum = on").unwrap();
        c.batch_execute("SELECT pg_reload_conf()").unwrap();
        AutovacuumOn
    }
}

impl Drop for AutovacuumOn {
    fn drop(&mut self) {
        match postgres::Client::connect(PG_URL, postgres::NoTls) {
            Ok(mut c) => {
                let reset = c
                    .batch_execute("ALTER SYSTEM RESET autovacuum")
                    .and_then(|_| c.batch_execute("SELECT pg_reload_conf()"));
                // The reload is asynchronous; a fresh session sees it.
                std::thread::sleep(Duration::from_millis(200));
                let now = connect(PG_URL)
                    .query_one("SHOW autovacuum", &[])
                    .map(|r| r.get::<_, String>(0));
                match (reset, now) {
                    (Ok(()), Ok(v)) => eprintln!("soak: autovacuum reset (now {v})"),
                    (r, v) => eprintln!("soak: RESTORING AUTOVACUUM FAILED: {r:?} {v:?}"),
                }
            }
            Err(e) => eprintln!("soak: RESTORING AUTOVACUUM FAILED: {e}"),
        }
    }
}

/// A fresh, migrated schema, dropped at the end.
struct Schema {
    name: String,
}

impl Schema {
    fn fresh(tag: &str) -> Schema {
        let name = format!("jobd_soak_{tag}_{}", std::process::id());
        connect(PG_URL)
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name};"
            ))
            .unwrap();
        let schema = Schema { name };
        Admin::migrate(&mut PgStore::connect(&schema.url(), Duration::from_secs(5)).unwrap())
            .unwrap();
        schema
    }

    /// The URL of the database, this schema first on the path.
    fn url(&self) -> String {
        format!("{PG_URL}?options=-c%20search_path%3D{}", self.name)
    }

    fn client(&self) -> postgres::Client {
        connect(&self.url())
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(PG_URL, postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
        }
    }
}

/// A release `jobd run` on `schema`: 8 pool threads, 1 CPU worker, `warn`
/// logging, `[retention]` of [`RETENTION`] for every final state.
struct Daemon(Child);

impl Daemon {
    fn start(dir: &tempfile::TempDir, schema: &Schema) -> Daemon {
        let config = dir.path().join(format!("{}.toml", schema.name));
        let log = dir.path().join(format!("{}.log", schema.name));
        std::fs::write(
            &config,
            format!(
                "[database]\nurl = \"{}\"\n[pool]\nthreads = 8\n[cpu]\nworkers = 1\n\
                 [log]\nlevel = \"warn\"\nfile = \"{}\"\n\
                 [retention]\nsucceeded = \"{RETENTION}\"\ndead = \"{RETENTION}\"\ncancelled = \"{RETENTION}\"\n",
                schema.url(),
                log.display()
            ),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_jobd"))
            .arg("--config")
            .arg(&config)
            .arg("run")
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Daemon(child)
    }

    fn stop(mut self) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scalar(c: &mut postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[])
        .unwrap()
        .get::<_, Option<i64>>(0)
        .unwrap_or(0)
}

/// Jobs per second of one daemon draining 50 000 queued noop jobs (first
/// start to last finish, from `job_runs`), on a fresh schema.
fn max_rate(dir: &tempfile::TempDir) -> f64 {
    const JOBS: i64 = 50_000;
    let schema = Schema::fresh("max");
    let mut c = schema.client();
    c.batch_execute(&format!(
        "INSERT INTO jobs(kind) SELECT 'noop' FROM generate_series(1, {JOBS}); ANALYZE jobs;"
    ))
    .unwrap();
    let daemon = Daemon::start(dir, &schema);
    let deadline = Instant::now() + Duration::from_secs(300);
    while scalar(&mut c, "SELECT count(*) FROM job_runs") < JOBS {
        assert!(Instant::now() < deadline, "the drain stalled");
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon.stop();
    let span = scalar(
        &mut c,
        "SELECT max(finished_at) - min(started_at) FROM job_runs",
    )
    .max(1);
    JOBS as f64 / (span as f64 / 1000.0)
}

/// Inserts `n` succeeded jobs (each its own attempt record), finished a day from now so
/// that no cut-off of the run reaches them: the bulk of a table that keeps
/// days of finished jobs (`retention.succeeded` is 7 days by default),
/// vacuumed and analyzed as an old table would be.
fn retain(c: &mut postgres::Client, n: i64) {
    let t = Instant::now();
    c.batch_execute(&format!(
        "INSERT INTO jobs(kind, state, attempts, worker, started_at, finished_at, run_id) \
           SELECT 'noop', 'succeeded', 1, 'soak', t, t, nextval('job_attempts_id_seq') \
           FROM generate_series(1, {n}), \
             (SELECT (extract(epoch FROM now()) * 1000)::bigint + 86400000 AS t) day;"
    ))
    .unwrap();
    c.batch_execute("VACUUM (ANALYZE) jobs").unwrap();
    c.batch_execute("VACUUM (ANALYZE) job_attempts").unwrap();
    println!(
        "soak: {n} finished jobs retained for the whole run (inserted and vacuumed in {:.0} s)",
        t.elapsed().as_secs_f64()
    );
}

/// Inserts `rate` jobs/s in small batches until `stop`; returns the count.
fn produce(url: String, rate: f64, stop: Arc<AtomicBool>) -> u64 {
    let mut c = connect(&url);
    let insert = c
        .prepare("INSERT INTO jobs(kind) SELECT 'noop' FROM generate_series(1, $1::int)")
        .unwrap();
    let started = Instant::now();
    let mut inserted: u64 = 0;
    let mut next = started;
    while !stop.load(Ordering::Relaxed) {
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        if due > inserted {
            let n = (due - inserted) as i32;
            c.execute(&insert, &[&n]).unwrap();
            inserted += n as u64;
        }
        next += TICK;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    inserted
}

/// One sample line's figures.
struct Sample {
    at: Duration,
    rate: f64,
    p50: f64,
    p99: f64,
    backlog: i64,
    sizes: BTreeMap<String, i64>,
}

fn mib(bytes: i64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = v.fold((0.0, 0), |(s, n), x| (s + x, n + 1));
    sum / n.max(1) as f64
}

/// Reads one sample of the window `[from, to)` (epoch ms, finish times).
fn sample(c: &mut postgres::Client, schema: &str, at: Duration, from: i64, to: i64) -> Sample {
    let row = c
        .query_one(
            "SELECT count(*), \
               coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY started_at - run_at), 0), \
               coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY started_at - run_at), 0) \
             FROM jobs WHERE state = 'succeeded' AND finished_at >= $1 AND finished_at < $2",
            &[&from, &to],
        )
        .unwrap();
    let finished: i64 = row.get(0);
    let backlog = scalar(c, "SELECT count(*) FROM jobs WHERE state = 'queued'");
    let mut sizes = BTreeMap::new();
    for r in c
        .query(
            "SELECT c.relname::text, pg_relation_size(c.oid) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND (c.relname IN ('jobs', 'job_attempts') OR c.oid IN \
               (SELECT indexrelid FROM pg_index WHERE indrelid IN \
                 ('jobs'::regclass, 'job_attempts'::regclass)))",
            &[&schema],
        )
        .unwrap()
    {
        sizes.insert(r.get::<_, String>(0), r.get::<_, i64>(1));
    }
    let mut stats = String::new();
    for r in c
        .query(
            "SELECT relname::text, n_dead_tup, autovacuum_count, \
               coalesce(to_char(last_autovacuum, 'HH24:MI:SS'), '-') \
             FROM pg_stat_user_tables WHERE schemaname = $1 \
               AND relname IN ('jobs', 'job_attempts') ORDER BY relname DESC",
            &[&schema],
        )
        .unwrap()
    {
        stats.push_str(&format!(
            " {}:dead {} av {}@{}",
            r.get::<_, String>(0),
            r.get::<_, i64>(1),
            r.get::<_, i64>(2),
            r.get::<_, String>(3)
        ));
    }
    let s = Sample {
        at,
        rate: finished as f64 / ((to - from) as f64 / 1000.0),
        p50: row.get(1),
        p99: row.get(2),
        backlog,
        sizes,
    };
    let shown: Vec<String> = SHOWN
        .iter()
        .map(|n| format!("{:.2}", mib(*s.sizes.get(*n).unwrap_or(&0))))
        .collect();
    println!(
        "{:>5.1} {:>7.0} {:>6.1} {:>7.1} {:>7} | {} |{stats}",
        at.as_secs_f64() / 60.0,
        s.rate,
        s.p50,
        s.p99,
        s.backlog,
        shown.join(" ")
    );
    s
}

/// First against last quarter, and sizes against the one after 10 minutes
/// (or halfway, for a run shorter than 20 minutes).
fn verdict(samples: &[Sample]) {
    let n = samples.len();
    if n < 4 {
        println!("verdict: too few samples ({n}) for quarters");
        return;
    }
    let q = n / 4;
    let (first, last) = (&samples[..q], &samples[n - q..]);
    let trend = |name: &str, f: &dyn Fn(&Sample) -> f64, unit: &str| {
        let a = mean(first.iter().map(f));
        let b = mean(last.iter().map(f));
        println!(
            "verdict: {name:<12} first quarter {a:>8.1} {unit}, last quarter {b:>8.1} {unit} ({:+.1} %)",
            100.0 * (b - a) / a.max(f64::MIN_POSITIVE)
        );
    };
    trend("throughput", &|s| s.rate, "jobs/s");
    trend("pickup p99", &|s| s.p99, "ms");
    trend("pickup p50", &|s| s.p50, "ms");
    trend("backlog", &|s| s.backlog as f64, "jobs");
    let settle = Duration::from_secs(600).min(samples[n - 1].at / 2);
    let base_at = samples.iter().position(|s| s.at >= settle).unwrap_or(q);
    let base = &samples[base_at];
    println!(
        "verdict: sizes, largest after {:.0} min against the size then:",
        base.at.as_secs_f64() / 60.0
    );
    for (name, &at_base) in &base.sizes {
        let after = &samples[base_at..];
        let max = after
            .iter()
            .map(|s| *s.sizes.get(name).unwrap_or(&0))
            .max()
            .unwrap_or(0);
        let end = *samples[n - 1].sizes.get(name).unwrap_or(&0);
        // Bounded: never more than a quarter (or 1 MiB) above the size the
        // load had settled at.
        let bounded = max as f64 <= 1.25 * at_base as f64 || max - at_base <= 1 << 20;
        println!(
            "verdict:   {name:<20} {:>9.2} MiB then, max {:>9.2} MiB ({:+6.1} %), end {:>9.2} MiB: {}",
            mib(at_base),
            mib(max),
            100.0 * (max - at_base) as f64 / (at_base.max(1)) as f64,
            mib(end),
            if bounded { "bounded" } else { "GROWING" }
        );
    }
}

fn main() {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).unwrap();
    }
    let secs = env_num("JOBD_SOAK_SECS").unwrap_or(3600.0);
    let period = Duration::from_secs_f64(env_num("JOBD_SOAK_SAMPLE_SECS").unwrap_or(60.0));
    let dir = tempfile::tempdir().unwrap();
    let _autovacuum = AutovacuumOn::start();

    let rate = match env_num("JOBD_SOAK_RATE") {
        Some(r) => r,
        None => {
            let max = max_rate(&dir);
            println!(
                "soak: one daemon drains 50 000 queued noop jobs at {max:.0} jobs/s; half of it"
            );
            max / 2.0
        }
    };
    let schema = Schema::fresh("run");
    let mut c = schema.client();
    if let Ok(sql) = std::env::var("JOBD_SOAK_SQL") {
        println!("soak: JOBD_SOAK_SQL: {sql}");
        c.batch_execute(&sql).unwrap();
    }
    let retained = env_num("JOBD_SOAK_RETAINED").unwrap_or(0.0) as i64;
    if retained > 0 {
        retain(&mut c, retained);
    }
    for r in c
        .query(
            "SELECT relname::text, coalesce(array_to_string(reloptions, ', '), 'defaults') \
             FROM pg_class WHERE oid IN ('jobs'::regclass, 'job_attempts'::regclass) ORDER BY 1 DESC",
            &[],
        )
        .unwrap()
    {
        println!(
            "soak: {} options: {}",
            r.get::<_, String>(0),
            r.get::<_, String>(1)
        );
    }
    println!(
        "soak: {rate:.0} jobs/s for {secs:.0} s, a sample every {:.0} s, retention {RETENTION}, \
         autovacuum on (server settings otherwise as found)",
        period.as_secs_f64()
    );
    let daemon = Daemon::start(&dir, &schema);
    let producer = {
        let (url, stop) = (schema.url(), Arc::clone(&stop));
        std::thread::spawn(move || produce(url, rate, stop))
    };
    println!(
        "  min  done/s  p50ms   p99ms backlog | MiB: {} | n_dead_tup, autovacuum count@last",
        SHOWN.join(" ")
    );
    let started = Instant::now();
    // A window ends 2 s before its sample, so that jobs finished in it
    // have committed.
    const LAG: i64 = 2_000;
    let mut from = now_ms() - LAG;
    let mut samples = Vec::new();
    let mut next = started + period;
    while !stop.load(Ordering::Relaxed) && !producer.is_finished() {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let to = now_ms() - LAG;
        samples.push(sample(&mut c, &schema.name, started.elapsed(), from, to));
        from = to;
        next += period;
        if started.elapsed().as_secs_f64() >= secs {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let inserted = producer.join().expect("the producer failed");
    daemon.stop();
    println!(
        "soak: {inserted} jobs inserted in {:.0} s ({:.0} jobs/s)",
        started.elapsed().as_secs_f64(),
        inserted as f64 / started.elapsed().as_secs_f64()
    );
    verdict(&samples);
}
