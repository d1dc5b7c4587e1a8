//! Helpers shared by the benchmarks: a fresh store, filling it, and the raw
//! claim + complete loop that is the yardstick for the daemon.

#![allow(dead_code)] // each benchmark uses a different part

pub mod bare;

use jobd::store::prelude::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jobd::job::{now_ms, Attempt, NewJob};
use jobd::store::{Claim, ClaimRequest, OpenMode, SqliteStore, Store};

pub const BATCH: usize = 64;
pub const WORKER: &str = "bench:1:1";

/// The daemon the figures are of: this build's, or `JOBD_BENCH_BIN` (an
/// earlier build, to compare two builds in alternating runs).
pub fn jobd_program() -> PathBuf {
    std::env::var_os("JOBD_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_jobd").into())
}

pub fn open(path: &Path) -> SqliteStore {
    let mut s = SqliteStore::open(path, Duration::from_secs(5), OpenMode::Create).unwrap();
    s.migrate().unwrap();
    s
}

pub fn fill(store: &mut SqliteStore, n: usize) {
    fill_with(store, n, &NewJob::new("noop"));
}

/// Claims and completes `count` jobs in batches of 64; returns jobs/s, and
/// the rates of the claims and the completions alone.
pub fn claim_complete(store: &mut SqliteStore, count: usize) -> (f64, f64, f64) {
    let requests = [ClaimRequest::any("default", BATCH)];
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
                keys: &jobd::keys::NO_KEYS,
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

/// Inserts `n` copies of `job` in batches.
pub fn fill_with(store: &mut SqliteStore, n: usize, job: &NewJob) {
    let batch: Vec<NewJob> = (0..10_000.min(n)).map(|_| job.clone()).collect();
    let mut left = n;
    while left > 0 {
        let take = left.min(batch.len());
        store.enqueue(&batch[..take], now_ms()).unwrap();
        left -= take;
    }
}

/// A real HTTP/1.1 server on 127.0.0.1 that answers every request with 200
/// after `delay`: one thread per connection, keep-alive, and a listen
/// backlog of 4096 (std's 128 drops SYNs when a thousand clients connect at
/// once, which then wait a second for the retransmit — that measured the
/// server, not jobd). Returns its base URL.
pub fn slow_http_server(delay: Duration) -> String {
    use std::io::{BufRead, BufReader, Write};
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor this function owns; the
    // address structure is fully initialised before use.
    let listener = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        addr.sin_port = 0;
        let rc = libc::bind(
            fd,
            &addr as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(rc, 0);
        assert_eq!(libc::listen(fd, 4096), 0);
        std::net::TcpListener::from_raw_fd(fd)
    };
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut stream = stream;
                    loop {
                        // Read one request head (the benchmark sends no body).
                        let mut line = String::new();
                        let mut blank = false;
                        while let Ok(n) = reader.read_line(&mut line) {
                            if n == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                blank = true;
                                break;
                            }
                            line.clear();
                        }
                        if !blank {
                            return;
                        }
                        std::thread::sleep(delay);
                        let reply = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if stream.write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                    }
                })
                .unwrap();
        }
    });
    format!("http://127.0.0.1:{port}")
}

#[derive(Clone)]
struct CountingSmtp(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl mailin_embedded::Handler for CountingSmtp {
    fn data_end(&mut self) -> mailin_embedded::Response {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        mailin_embedded::response::OK
    }
}

/// A real SMTP server on 127.0.0.1 (mailin-embedded) that accepts
/// everything; returns its port.
pub fn smtp_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut server = mailin_embedded::Server::new(CountingSmtp(Default::default()));
    server.with_num_threads(16).with_tcp_listener(listener);
    std::thread::spawn(move || {
        let _ = server.serve();
    });
    port
}

/// A release `jobd run` process with its config and log in `dir`.
pub struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Daemon {
    /// A daemon with 8 pool threads; see [`Daemon::start_with`].
    pub fn start(dir: &Path, extra: &str) -> Daemon {
        Daemon::start_with(dir, 8, extra)
    }

    /// A daemon with `threads` pool threads; `extra` goes into `[log]` and
    /// may open further sections.
    pub fn start_with(dir: &Path, threads: usize, extra: &str) -> Daemon {
        let config = dir.join("bench.toml");
        std::fs::write(
            &config,
            format!(
                "[database]\npath = \"{}\"\n[pool]\nthreads = {threads}\n[log]\nfile = \"{}\"\n{extra}\n",
                dir.join("bench.db").display(),
                dir.join("bench.log").display()
            ),
        )
        .unwrap();
        let child = Command::new(jobd_program())
            .arg("--config")
            .arg(&config)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Daemon {
            child,
            dir: dir.to_path_buf(),
        }
    }

    /// Its pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for its `daemon.started` line.
    pub fn wait_started(&self) {
        let log = self.dir.join("bench.log");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("daemon.started")
        {
            assert!(Instant::now() < deadline, "daemon did not start");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM and wait.
    pub fn stop(mut self) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        self.child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A panicking benchmark must not leave a daemon behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh, migrated `bench.db` in `dir` (an old one and its log removed).
pub fn fresh(dir: &Path) -> SqliteStore {
    for name in ["bench.db", "bench.db-wal", "bench.db-shm", "bench.log"] {
        std::fs::remove_file(dir.join(name)).ok();
    }
    open(&dir.join("bench.db"))
}

/// One integer from a query (0 for NULL).
pub fn query_i64(store: &mut SqliteStore, sql: &str) -> i64 {
    store
        .connection()
        .query_row(sql, [], |r| r.get::<_, Option<i64>>(0))
        .unwrap()
        .unwrap_or(0)
}

/// The median.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The `q` quantile of sorted values.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Inserts `n` noop jobs 20 ms apart and returns the sorted latencies from
/// each insert's commit to the job leaving `queued`, in ms (either backend).
pub fn pickup(store: &mut impl Store, n: usize) -> Vec<f64> {
    pickup_keyed(store, n, None)
}

/// [`pickup`] with each job keyed `{key}{i % 1000}` when `key` is given.
pub fn pickup_keyed(store: &mut impl Store, n: usize, key: Option<&str>) -> Vec<f64> {
    let mut observed = Vec::new();
    for i in 0..n {
        let mut job = NewJob::new("noop");
        job.limit_key = key.map(|k| format!("{k}{}", i % 1_000));
        let inserted = store.enqueue(std::slice::from_ref(&job), now_ms()).unwrap();
        let committed = Instant::now();
        let id = inserted[0].id();
        while store.job(id).unwrap().map(|j| j.state) == Some(jobd::job::JobState::Queued) {
            std::thread::sleep(Duration::from_micros(50));
        }
        observed.push(committed.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(20));
    }
    observed.sort_by(|a, b| a.partial_cmp(b).unwrap());
    observed
}
