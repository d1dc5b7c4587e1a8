//! Keyed limits across the fleet (docs/reference.md, "Keyed limits"): three
//! real daemons on one database, on SQLite and on PostgreSQL, calling a
//! real HTTP server on 127.0.0.1 that records, per key, how many requests
//! it holds at once and when each arrived.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{HttpServer, Reply};

/// Per path: requests in flight now, the most at once, arrivals.
#[derive(Default)]
struct Load {
    now: usize,
    most: usize,
    arrivals: usize,
}

/// A server whose `/slow/*` paths answer after 100 ms and record their
/// load per path; other paths answer at once.
fn recording_server() -> (HttpServer, Arc<Mutex<HashMap<String, Load>>>) {
    let loads: Arc<Mutex<HashMap<String, Load>>> = Arc::default();
    let seen = Arc::clone(&loads);
    let server = HttpServer::start(move |request, _| {
        let path = request.url.clone();
        {
            let mut loads = seen.lock().unwrap();
            let load = loads.entry(path.clone()).or_default();
            load.now += 1;
            load.most = load.most.max(load.now);
            load.arrivals += 1;
        }
        if path.starts_with("/slow") {
            std::thread::sleep(Duration::from_millis(100));
        }
        seen.lock().unwrap().get_mut(&path).unwrap().now -= 1;
        Reply::new(200, "ok")
    });
    (server, loads)
}

const LIMITS: &str = "[pool]\nthreads = 8\n[daemon]\nshutdown_grace = \"200ms\"\n\
    [keys.one-at-a-time]\nmatch = \"customer:slow*\"\nconcurrency = 2\n\
    [keys.paced]\nmatch = \"customer:paced\"\nrate = \"10/s\"\n";

/// `n` http jobs to `url` with `key` (SQL NULL for none), as VALUES rows.
fn jobs(n: usize, url: &str, key: &str) -> Vec<String> {
    (0..n)
        .map(|_| format!("('http', '{{\"url\":\"{url}\",\"method\":\"POST\"}}', {key})"))
        .collect()
}

/// Three daemons share one database: a key with `concurrency = 2` never has
/// more than two requests at the server at once (and does reach two), a
/// second key of the same section has its own two, a key with `rate =
/// "10/s"` starts its jobs at ten a second after its burst of ten, and
/// unkeyed jobs are not held up.
#[test]
fn a_keys_concurrency_and_rate_hold_across_three_daemons() {
    for backend in common::homes_with("keys", LIMITS) {
        let (server, loads) = recording_server();
        let home = &backend.home;
        home.ok(&["migrate"]);
        let mut rows = jobs(24, &format!("{}/slow/a", server.base), "'customer:slow-a'");
        rows.extend(jobs(
            24,
            &format!("{}/slow/b", server.base),
            "'customer:slow-b'",
        ));
        rows.extend(jobs(
            40,
            &format!("{}/paced", server.base),
            "'customer:paced'",
        ));
        rows.extend(jobs(40, &format!("{}/slow/free", server.base), "NULL"));
        backend.value(&format!(
            "INSERT INTO jobs (kind, payload, limit_key) VALUES {};",
            rows.join(", ")
        ));
        let daemons = [
            home.daemon_logging_to("a.log"),
            backend.another(LIMITS).daemon_logging_to("b.log"),
            backend.another(LIMITS).daemon_logging_to("c.log"),
        ];
        backend.wait_value(
            "SELECT count(*) FROM jobs WHERE state = 'succeeded';",
            "128",
            "every job ran",
        );
        for daemon in daemons {
            daemon.stop();
        }
        let loads = loads.lock().unwrap();
        for path in ["/slow/a", "/slow/b"] {
            let load = &loads[path];
            assert_eq!(load.arrivals, 24, "{}: {path}", backend.name);
            assert_eq!(
                load.most, 2,
                "{}: {path} had {} requests at once (limit 2)",
                backend.name, load.most
            );
        }
        // Three daemons of eight threads each would run far more at once.
        assert!(
            loads["/slow/free"].most > 2,
            "{}: unkeyed jobs were held up",
            backend.name
        );
        assert_eq!(
            backend.count("SELECT count(DISTINCT worker) FROM job_runs;"),
            3,
            "{}: all three daemons ran jobs",
            backend.name
        );

        // The rate: the claims' own clock (job_runs.started_at).
        let starts: Vec<i64> = backend
            .value(
                "SELECT r.started_at FROM job_runs r JOIN jobs j ON j.id = r.job_id \
                 WHERE j.limit_key = 'customer:paced' ORDER BY r.started_at;",
            )
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        assert_eq!(starts.len(), 40, "{}", backend.name);
        // A burst of ten, then one every 100 ms: the thirty after the burst
        // take at least 2.9 s, and no second after the burst holds more
        // than ten starts, plus one a late claim carried over.
        let span = starts[39] - starts[0];
        assert!(
            span >= 2_900,
            "{}: 40 starts in {span} ms at 10/s",
            backend.name
        );
        for (i, &s) in starts.iter().enumerate().skip(10) {
            let within = starts[i..].iter().take_while(|&&t| t < s + 1_000).count();
            assert!(
                within <= 11,
                "{}: {within} starts in the second from {s}: {starts:?}",
                backend.name
            );
        }
    }
}

/// A daemon killed with SIGKILL while it holds a key's whole concurrency
/// gives the slots back when its jobs are rescued: another daemon then runs
/// the key's waiting job (a dead daemon holds no capacity past its lease).
/// The held jobs have one attempt, so the rescue makes them dead rather
/// than queued again ahead of the waiting one.
#[test]
fn a_killed_daemons_key_slots_come_back_when_its_jobs_are_rescued() {
    let limits = "[daemon]\nlease = \"1s\"\nshutdown_grace = \"100ms\"\n\
        [keys.pair]\nmatch = \"customer:*\"\nconcurrency = 2\n";
    for backend in common::homes_with("keyrescue", limits) {
        let home = &backend.home;
        home.ok(&["migrate"]);
        backend.value(
            "INSERT INTO jobs (kind, payload, limit_key, priority, max_attempts) VALUES \
             ('noop', '{\"sleep_ms\":600000}', 'customer:1', 1, 1), \
             ('noop', '{\"sleep_ms\":600000}', 'customer:1', 1, 1), \
             ('noop', '{}', 'customer:1', 0, NULL);",
        );
        let a = home.daemon_logging_to("a.log");
        backend.wait_value(
            "SELECT count(*) FROM jobs WHERE state = 'running';",
            "2",
            "the first daemon holds the key's two slots",
        );
        assert_eq!(
            backend.value("SELECT state FROM jobs WHERE priority = 0;"),
            "queued",
            "{}: the third job of the key waits",
            backend.name
        );
        a.kill9();
        let b = backend.another(limits).daemon_logging_to("b.log");
        backend.wait_value(
            "SELECT state FROM jobs WHERE priority = 0;",
            "succeeded",
            "the waiting job ran once the dead daemon's slots came back",
        );
        b.stop();
        assert_eq!(
            backend.count("SELECT count(*) FROM job_runs WHERE outcome = 'rescued';"),
            2,
            "{}: both held jobs were rescued",
            backend.name
        );
    }
}
