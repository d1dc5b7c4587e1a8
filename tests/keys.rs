//! Keyed limits across the fleet (docs/reference.md, "Keyed limits"): three
//! real daemons on one database, on SQLite and on PostgreSQL, calling a
//! real HTTP server on 127.0.0.1 that records, per key, how many requests
//! it holds at once and when each arrived.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Per path: requests in flight now, the most at once, arrivals.
#[derive(Default)]
struct Load {
    now: usize,
    most: usize,
    arrivals: usize,
    times: Vec<std::time::Instant>,
}

/// What the recording server saw: per path, load and arrivals.
type Loads = Arc<Mutex<HashMap<String, Load>>>;

/// A plain HTTP/1.1 server on 127.0.0.1, one thread per connection and one
/// request per connection, whose `/slow/*` paths answer after 100 ms; it
/// records each path's load. (Written on std rather than tiny_http, which
/// left some of two dozen simultaneous connections unread.)
fn recording_server() -> (String, Loads) {
    answering_server(|_, _| "200 OK".to_string())
}

/// [`recording_server`] whose status line (and any headers after it) for
/// a request is `answer(path, arrivals at that path before it)`; each
/// arrival's time is recorded too.
fn answering_server(
    answer: impl Fn(&str, usize) -> String + Send + Sync + 'static,
) -> (String, Loads) {
    let answer = Arc::new(answer);
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let loads: Loads = Arc::default();
    let seen = Arc::clone(&loads);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let seen = Arc::clone(&seen);
            let answer = Arc::clone(&answer);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    return;
                }
                let path = line.split(' ').nth(1).unwrap_or("").to_string();
                let mut length = 0usize;
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                        break;
                    }
                    if let Some((name, value)) = header.split_once(':') {
                        if name.eq_ignore_ascii_case("content-length") {
                            length = value.trim().parse().unwrap_or(0);
                        }
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let before = {
                    let mut loads = seen.lock().unwrap();
                    let load = loads.entry(path.clone()).or_default();
                    load.now += 1;
                    load.most = load.most.max(load.now);
                    load.arrivals += 1;
                    load.times.push(std::time::Instant::now());
                    load.arrivals - 1
                };
                let status = answer(&path, before);
                if path.starts_with("/slow") {
                    std::thread::sleep(Duration::from_millis(100));
                }
                seen.lock().unwrap().get_mut(&path).unwrap().now -= 1;
                let _ = stream.write_all(
                    format!(
                        "HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                    )
                    .as_bytes(),
                );
            });
        }
    });
    (base, loads)
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
/// "10/s"` never starts more than ten jobs in any one second, and unkeyed
/// jobs are not held up.
#[test]
fn a_keys_concurrency_and_rate_hold_across_three_daemons() {
    for backend in common::homes_with("keys", LIMITS) {
        let (base, loads) = recording_server();
        let home = &backend.home;
        home.ok(&["migrate"]);
        let mut rows = jobs(24, &format!("{}/slow/a", base), "'customer:slow-a'");
        rows.extend(jobs(24, &format!("{}/slow/b", base), "'customer:slow-b'"));
        rows.extend(jobs(40, &format!("{}/paced", base), "'customer:paced'"));
        rows.extend(jobs(40, &format!("{}/slow/free", base), "NULL"));
        backend.value(&format!(
            "INSERT INTO jobs (kind, payload, limit_key) VALUES {};",
            rows.join(", ")
        ));
        let daemons = [
            home.daemon_logging_to("a.log"),
            backend.another(LIMITS).daemon_logging_to("b.log"),
            backend.another(LIMITS).daemon_logging_to("c.log"),
        ];
        let done = common::wait_for(common::PATIENCE, || {
            (backend.count("SELECT count(*) FROM jobs WHERE state = 'succeeded';") == 128)
                .then_some(())
        });
        if done.is_none() {
            let logs: Vec<String> = daemons.iter().map(|d| d.log()).collect();
            panic!(
                "{}: not every job ran: {}\nserver saw {} requests to /paced\nleft: {}\nkeys: {}\nnow: {}\n{}",
                backend.name,
                backend.states(),
                loads.lock().unwrap().get("/paced").map_or(0, |l| l.arrivals),
                backend.value(
                    "SELECT id, state, limit_key, run_at, attempts, worker FROM jobs \
                     WHERE state <> 'succeeded' ORDER BY id;"
                ),
                backend.value("SELECT * FROM limit_keys;"),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis(),
                logs.join("\n----\n")
            );
        }
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
        // At most ten in any one-second window, bursts included: the
        // 31st start comes at least three seconds after the first.
        let span = starts[39] - starts[0];
        assert!(
            span >= 3_000,
            "{}: 40 starts in {span} ms at 10/s",
            backend.name
        );
        for (i, &s) in starts.iter().enumerate() {
            let within = starts[i..].iter().take_while(|&&t| t < s + 1_000).count();
            assert!(
                within <= 10,
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

/// A service answers key A's first request with 429 and `Retry-After: 2`:
/// no request of A reaches it for two seconds from any of three daemons,
/// key B's requests go on meanwhile, and every A job then succeeds: the one
/// the service refused on its second attempt, the others on their first,
/// having spent none on the block (`key.blocked`, then `key.unblocked`).
#[test]
fn a_429_blocks_its_key_on_every_daemon_and_its_other_jobs_spend_no_attempt() {
    let limits = "[pool]\nthreads = 4\n[daemon]\nshutdown_grace = \"200ms\"\n\
        [keys.one]\nmatch = \"svc:a\"\nconcurrency = 1\n";
    for backend in common::homes_with("keyblock", limits) {
        let (base, loads) = answering_server(|path, before| match (path, before) {
            ("/a", 0) => "429 Too Many Requests\r\nRetry-After: 2".to_string(),
            _ => "200 OK".to_string(),
        });
        let home = &backend.home;
        home.ok(&["migrate"]);
        let mut rows = jobs(6, &format!("{base}/a"), "'svc:a'");
        rows.extend(jobs(60, &format!("{base}/slow/b"), "'svc:b'"));
        backend.value(&format!(
            "INSERT INTO jobs (kind, payload, limit_key) VALUES {};",
            rows.join(", ")
        ));
        let daemons = [
            home.daemon_logging_to("a.log"),
            backend.another(limits).daemon_logging_to("b.log"),
            backend.another(limits).daemon_logging_to("c.log"),
        ];
        backend.wait_value(
            "SELECT count(*) FROM jobs WHERE state = 'succeeded';",
            "66",
            "every job ran",
        );
        let logs: String = daemons.into_iter().map(|d| d.stop()).collect();
        let loads = loads.lock().unwrap();
        let a = &loads["/a"].times;
        assert_eq!(
            a.len(),
            7,
            "{}: six jobs and the one blocked attempt",
            backend.name
        );
        let blocked_at = a[0];
        let next = a[1].duration_since(blocked_at);
        assert!(
            next >= Duration::from_millis(1_900),
            "{}: key A was called again {next:?} after its 429 (Retry-After: 2)",
            backend.name
        );
        let b_during = loads["/slow/b"]
            .times
            .iter()
            .filter(|t| **t > blocked_at && **t < a[1])
            .count();
        assert!(
            b_during >= 10,
            "{}: key B sent {b_during} during A's block",
            backend.name
        );
        assert_eq!(
            backend.value(
                "SELECT attempts || ':' || count(*) FROM jobs WHERE limit_key = 'svc:a' \
                 GROUP BY attempts ORDER BY attempts;"
            ),
            "1:5\n2:1",
            "{}: only the refused job spent a second attempt",
            backend.name
        );
        assert_eq!(
            backend.count("SELECT count(*) FROM job_runs WHERE outcome = 'retry';"),
            1,
            "{}",
            backend.name
        );
        assert!(
            logs.contains("key.blocked key=svc:a"),
            "{}: {logs}",
            backend.name
        );
        assert!(logs.contains("status=429"), "{}: {logs}", backend.name);
        assert!(
            logs.contains("key.unblocked key=svc:a"),
            "{}: {logs}",
            backend.name
        );
    }
}

/// Bad keys and bad key limits, from every door: an empty key is refused by
/// the database even under `INSERT OR IGNORE` and by `jobd enqueue --key`,
/// an over-long key by the CLI, and a `[keys]` section with a broken glob,
/// no limit or a zero concurrency stops the config naming its key.
#[test]
fn bad_keys_and_bad_key_limits_are_refused_naming_what_is_wrong() {
    let home = common::Home::new();
    home.migrate();
    home.sqlite3("INSERT OR IGNORE INTO jobs(kind, limit_key) VALUES ('noop', '');")
        .fails(1, "limit_key_not_empty");
    home.jobd(&["enqueue", "noop", "--key", ""])
        .fails(2, "limit_key must not be empty");
    let long = "k".repeat(201);
    home.jobd(&["enqueue", "noop", "--key", &long])
        .fails(2, "limit_key is 201 bytes, more than 200");
    home.jobd(&["enqueue", "noop", "--key", "jobd:queue:default"])
        .fails(
            2,
            "starts with \"jobd:\", which jobd keeps for its own keys",
        );
    assert_eq!(home.query_i64("SELECT count(*) FROM jobs"), 0);
    for (section, says) in [
        (
            "match = \"customer:[\"\nconcurrency = 1",
            "keys.bad.match is not a glob",
        ),
        (
            "match = \"customer:*\"",
            "keys.bad sets neither concurrency nor rate",
        ),
        (
            "match = \"customer:*\"\nconcurrency = 0",
            "keys.bad.concurrency must be at least 1",
        ),
        (
            "match = \"\"\nconcurrency = 1",
            "keys.bad.match must be a glob",
        ),
        (
            "match = \"c\"\nrate = \"20000/s\"",
            "keys.bad.rate allows 20000 starts per period",
        ),
    ] {
        home.write_config(&format!("[keys.bad]\n{section}\n"));
        home.jobd(&["check-config"]).fails(1, says);
    }
    home.write_config("[http]\nblock_on = [429, 99]\n");
    home.jobd(&["check-config"])
        .fails(1, "http.block_on lists 99, which is not an HTTP status");
}

/// A fair queue: 20 000 jobs of key A, then 50 of key B while A drains:
/// B's jobs take turns with A's, so all of them start while only a few
/// hundred more of A's do, long before A is done (claim order would run
/// every A job first). How soon in milliseconds is a benchmark's figure
/// (`cargo bench --bench postgres`), not a timed assertion here.
#[test]
fn a_fair_queue_starts_a_small_keys_jobs_while_a_big_key_drains() {
    let config = "[pool]\nthreads = 8\n[queues.default]\nfair = true\n\
        [daemon]\nshutdown_grace = \"100ms\"\n";
    for backend in common::homes_with("fair", config) {
        let home = &backend.home;
        home.ok(&["migrate"]);
        let daemon = home.daemon_logging_to("d.log");
        backend.insert_many(
            20_000,
            "kind, payload, limit_key",
            "'noop', '{\"sleep_ms\":1}', 'customer:a'",
        );
        common::wait_for(common::PATIENCE, || {
            (backend.count("SELECT count(*) FROM jobs WHERE state = 'succeeded';") >= 200)
                .then_some(())
        })
        .expect("key A drains");
        backend.insert_many(50, "kind, payload, limit_key", "'noop', '{}', 'customer:b'");
        backend.wait_value(
            "SELECT count(*) FROM jobs WHERE limit_key = 'customer:b' AND state = 'succeeded';",
            "50",
            "key B's jobs ran",
        );
        // A's jobs started from B's insert to B's last start: a claim's
        // worth or two with fairness; every one of A's without.
        let b_last = "(SELECT max(started_at) FROM jobs WHERE limit_key = 'customer:b')";
        let a_meanwhile = backend.count(&format!(
            "SELECT count(*) FROM jobs WHERE limit_key = 'customer:a' \
             AND started_at >= (SELECT min(created_at) FROM jobs WHERE limit_key = 'customer:b') \
             AND started_at <= {b_last};"
        ));
        let a_left = backend.count(&format!(
            "SELECT count(*) FROM jobs WHERE limit_key = 'customer:a' \
             AND (started_at IS NULL OR started_at > {b_last});"
        ));
        daemon.stop();
        eprintln!(
            "{}: {a_meanwhile} of A's jobs started while B's 50 waited",
            backend.name
        );
        assert!(
            a_meanwhile <= 500,
            "{}: {a_meanwhile} of A's jobs started while B's 50 waited",
            backend.name
        );
        assert!(
            a_left > 1_000,
            "{}: A had drained ({a_left} left)",
            backend.name
        );
    }
}

/// `jobd keys` shows, on every backend, the keys with jobs running and
/// the keys no job may start under, each with its limits and why: a key
/// at its concurrency (`full`, its queued jobs counted), a key held by its
/// rate until its next start, and a key a service blocked (with the
/// status); a sentence when there are none, and the same as JSON. The
/// metrics count them per section, and the dashboard's keys page shows
/// them in chromium, a key with markup in it inert.
#[test]
fn jobd_keys_the_metrics_and_the_keys_page_show_full_rate_held_and_blocked_keys() {
    let port = common::free_port();
    let limits = format!(
        "[pool]\nthreads = 4\n[daemon]\nshutdown_grace = \"100ms\"\n\
         [metrics]\nlisten = \"127.0.0.1:{port}\"\n\
         [keys.one]\nmatch = \"svc:*\"\nconcurrency = 1\n\
         [keys.paced]\nmatch = \"paced:*\"\nrate = \"1/h\"\n"
    );
    for backend in common::homes_with("keylist", &limits) {
        let (base, _loads) =
            answering_server(|_, _| "429 Too Many Requests\r\nRetry-After: 3600".to_string());
        let home = &backend.home;
        home.ok(&["migrate"]);
        let none = home.ok(&["keys"]);
        assert!(none.starts_with("no job key has jobs running"), "{none}");
        backend.value(&format!(
            "INSERT INTO jobs (kind, payload, limit_key) VALUES \
             ('noop', '{{\"sleep_ms\":60000}}', 'svc:busy'), ('noop', '{{}}', 'svc:busy'), \
             ('noop', '{{}}', 'svc:busy'), ('noop', '{{}}', 'svc:busy'), \
             ('noop', '{{}}', 'paced:p'), ('noop', '{{}}', 'paced:p'), \
             ('http', '{{\"url\":\"{base}/a\"}}', 'svc:a'), \
             ('noop', '{{\"sleep_ms\":60000}}', 'svc:<i>x</i>');"
        ));
        let daemon = home.daemon_logging_to("d.log");
        backend.wait_value(
            "SELECT count(*) FROM jobs WHERE (limit_key = 'svc:busy' AND state = 'running') \
             OR (limit_key = 'paced:p' AND state = 'succeeded') \
             OR (limit_key = 'svc:a' AND attempts = 1 AND state = 'queued') \
             OR (limit_key = 'svc:<i>x</i>' AND state = 'running');",
            "4",
            "one busy job running, one paced job done, the 429 answered",
        );
        let table = home.ok(&["keys"]);
        let line = |key: &str| {
            table
                .lines()
                .find(|l| l.starts_with(&format!("{key} ")))
                .unwrap_or_else(|| panic!("{}: no line for {key}:\n{table}", backend.name))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert!(table.starts_with("KEY"), "{table}");
        assert_eq!(
            line("svc:busy"),
            "svc:busy one 1/1 3 - full",
            "{}",
            backend.name
        );
        let paced = line("paced:p");
        assert!(
            paced.starts_with("paced:p paced 0 1 1/1 per 1h 0m rate: next start at "),
            "{}: {paced}",
            backend.name
        );
        let blocked = line("svc:a");
        assert!(
            blocked.starts_with("svc:a one 0/1 0 - blocked until ") && blocked.ends_with("(429)"),
            "{}: {blocked}",
            backend.name
        );
        let json: serde_json::Value = serde_json::from_str(&home.ok(&["keys", "--json"])).unwrap();
        let states: Vec<(String, String)> = json
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    k["key"].as_str().unwrap().into(),
                    k["state"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert_eq!(
            states,
            [
                ("paced:p", "rate"),
                ("svc:<i>x</i>", "full"),
                ("svc:a", "blocked"),
                ("svc:busy", "full")
            ]
            .map(|(k, s)| (k.to_string(), s.to_string()))
            .to_vec(),
            "{}",
            backend.name
        );
        let a = &json[2];
        assert_eq!(
            (a["status"].as_i64(), a["limits"][0].as_str()),
            (Some(429), Some("one"))
        );
        assert!(a["until"].as_i64().unwrap() > jobd::job::now_ms() + 3_500_000);

        let base = format!("http://127.0.0.1:{port}");
        let metrics = ureq::get(&format!("{base}/metrics"))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        for series in [
            "jobd_key_running{limit=\"one\"} 2",
            "jobd_key_running{limit=\"paced\"} 0",
            "jobd_keys_held{limit=\"one\",state=\"blocked\"} 1",
            "jobd_keys_held{limit=\"one\",state=\"full\"} 2",
            "jobd_keys_held{limit=\"one\",state=\"rate\"} 0",
            "jobd_keys_held{limit=\"paced\",state=\"rate\"} 1",
        ] {
            assert!(
                metrics.contains(series),
                "{}: no {series} in\n{metrics}",
                backend.name
            );
        }
        assert!(!metrics.contains("svc:busy"), "no series per key");

        let page = ureq::get(&format!("{base}/keys"))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        assert!(
            page.contains("<td class=\"\">svc:&lt;i&gt;x&lt;/i&gt;</td>"),
            "{page}"
        );
        assert!(!page.contains("<i>"), "a key's markup is inert: {page}");
        if let Some(dom) = common::browser::dump_dom(&format!("{base}/keys")) {
            for (key, state) in [
                ("svc:busy", "full"),
                ("svc:a", "blocked"),
                ("paced:p", "rate"),
            ] {
                assert!(
                    dom.contains(&format!("data-key=\"{key}\" data-state=\"{state}\"")),
                    "{}: {key} {state} in\n{dom}",
                    backend.name
                );
            }
            assert!(dom.contains("blocked until "), "{dom}");
        }
        daemon.stop();
    }
}

/// `[queues.NAME] fleet = true`: three daemons share the queue's
/// `concurrency = 2`, so the server never holds more than two of its
/// requests at once (each daemon alone would allow two).
#[test]
fn a_fleet_wide_queue_concurrency_holds_across_three_daemons() {
    let config = "[pool]\nthreads = 4\n[daemon]\nshutdown_grace = \"200ms\"\n\
        [queues.api]\nconcurrency = 2\nfleet = true\n";
    for backend in common::homes_with("fleetq", config) {
        let (base, loads) = recording_server();
        let home = &backend.home;
        home.ok(&["migrate"]);
        let daemons = [
            home.daemon_logging_to("a.log"),
            backend.another(config).daemon_logging_to("b.log"),
            backend.another(config).daemon_logging_to("c.log"),
        ];
        // All three are up and idle when the jobs arrive, so each would
        // take two at once if the limit were per daemon.
        backend.wait_value("SELECT count(*) FROM workers;", "3", "three daemons");
        let rows: Vec<String> = (0..18)
            .map(|_| format!("('http', '{{\"url\":\"{base}/slow/q\"}}', 'api')"))
            .collect();
        backend.value(&format!(
            "INSERT INTO jobs (kind, payload, queue) VALUES {};",
            rows.join(", ")
        ));
        backend.wait_value(
            "SELECT count(*) FROM jobs WHERE state = 'succeeded';",
            "18",
            "every job ran",
        );
        let logs: String = daemons.into_iter().map(|d| d.stop()).collect();
        let most = loads.lock().unwrap()["/slow/q"].most;
        assert_eq!(most, 2, "{}: {most} requests at once\n{logs}", backend.name);
    }
}

/// A SIGHUP that raises a key's concurrency mid-drain: one request at a
/// time at the server before, three at once after, never more. The same
/// reload makes the queue fair, and the daemon builds the key index.
#[test]
fn a_reload_changes_a_keys_limit_mid_drain() {
    let limits = |n: usize| {
        format!(
            "[pool]\nthreads = 6\n[daemon]\nshutdown_grace = \"200ms\"\n\
             [keys.svc]\nmatch = \"svc:*\"\nconcurrency = {n}\n"
        )
    };
    for backend in common::homes_with("keyreload", &limits(1)) {
        let (base, loads) = recording_server();
        let home = &backend.home;
        home.ok(&["migrate"]);
        let rows = jobs(40, &format!("{base}/slow/s"), "'svc:s'");
        backend.value(&format!(
            "INSERT INTO jobs (kind, payload, limit_key) VALUES {};",
            rows.join(", ")
        ));
        let daemon = home.daemon_logging_to("d.log");
        backend.wait_value(
            "SELECT count(*) >= 5 FROM jobs WHERE state = 'succeeded';",
            if backend.schema.is_some() { "t" } else { "1" },
            "five jobs one at a time",
        );
        // The most at once so far (reset: from here on the new limit may
        // apply at any moment).
        let before = std::mem::take(&mut loads.lock().unwrap().get_mut("/slow/s").unwrap().most);
        backend.rewrite_config(&format!("{}[queues.default]\nfair = true\n", limits(3)));
        daemon.signal(libc::SIGHUP);
        daemon.wait_log("config.reloaded");
        assert!(
            daemon
                .log()
                .contains("db.index_created name=jobs_ready_key"),
            "{}: {}",
            backend.name,
            daemon.log()
        );
        backend.wait_value(
            "SELECT count(*) FROM jobs WHERE state = 'succeeded';",
            "40",
            "every job ran",
        );
        let logs = daemon.stop();
        let after = loads.lock().unwrap()["/slow/s"].most;
        assert_eq!(before, 1, "{}: before the reload\n{logs}", backend.name);
        assert_eq!(after, 3, "{}: after the reload\n{logs}", backend.name);
    }
}

/// A daemon restarted while a service's block holds its key: the new one
/// reads the block from the database, so the service hears nothing of
/// that key until the block ends, and then every job of it succeeds.
#[test]
fn a_block_outlives_a_restart_of_the_daemon() {
    let config = "[pool]\nthreads = 4\n[daemon]\nshutdown_grace = \"200ms\"\n\
        [keys.one]\nmatch = \"svc:a\"\nconcurrency = 1\n";
    for backend in common::homes_with("keyrestart", config) {
        let (base, loads) = answering_server(|path, before| match (path, before) {
            ("/a", 0) => "429 Too Many Requests\r\nRetry-After: 3".to_string(),
            _ => "200 OK".to_string(),
        });
        let home = &backend.home;
        home.ok(&["migrate"]);
        let rows = jobs(4, &format!("{base}/a"), "'svc:a'");
        backend.value(&format!(
            "INSERT INTO jobs (kind, payload, limit_key) VALUES {};",
            rows.join(", ")
        ));
        let first = home.daemon_logging_to("a.log");
        first.wait_log("key.blocked key=svc:a");
        let first_log = first.stop();
        let second = home.daemon_logging_to("b.log");
        backend.wait_value(
            "SELECT count(*) FROM jobs WHERE state = 'succeeded';",
            "4",
            "every job ran after the block",
        );
        let logs = first_log + &second.stop();
        let times = loads.lock().unwrap()["/a"].times.clone();
        let next = times[1].duration_since(times[0]);
        assert!(
            next >= Duration::from_millis(2_900),
            "{}: svc:a was called again {next:?} after its 429 (Retry-After: 3)\n{logs}",
            backend.name
        );
        assert_eq!(
            times.len(),
            5,
            "{}: four jobs and the refused attempt",
            backend.name
        );
    }
}
