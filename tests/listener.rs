//! The metrics and dashboard listener against hostile clients, over real
//! loopback sockets to the real binary: huge declared bodies, bodies and
//! heads that never finish, a thousand idle connections, descriptors run
//! out, oversized heads, foreign `Host` names, password guessing and a
//! payload too large for a page. After each, `/healthz` must still answer.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{free_port, wait_for, Daemon, Home, PATIENCE};

/// How long a client here waits for an answer before calling the listener
/// blocked. Generous: a listener that answers does so in milliseconds; one
/// that is blocked never does.
const ANSWER: Duration = Duration::from_secs(5);

struct Served {
    home: Home,
    daemon: Daemon,
    addr: String,
}

/// A daemon serving `metrics.listen` on a free port; `metrics` goes into
/// the `[metrics]` section.
fn served(metrics: &str) -> Served {
    served_with(metrics, |home| home.daemon())
}

fn served_with(metrics: &str, start: impl FnOnce(&Home) -> Daemon) -> Served {
    let port = free_port();
    let home = Home::with_config(&format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\n{metrics}\n[daemon]\nshutdown_grace = \"100ms\"\n"
    ));
    let migrated = home.cmd(&["migrate"]).env("DASH_TOKEN", "s3cret").output();
    assert!(migrated.unwrap().status.success());
    let daemon = start(&home);
    Served {
        home,
        daemon,
        addr: format!("127.0.0.1:{port}"),
    }
}

/// Sends `request` as raw bytes and reads the answer until the server
/// closes or `ANSWER` passes; returns what came back (maybe nothing).
fn raw(addr: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(ANSWER)).unwrap();
    // The server may answer and close before reading all of it.
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status code of a raw answer; 0 when there was none.
fn status(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// `GET path` with `Connection: close` and these extra header lines.
fn get(addr: &str, path: &str, headers: &str) -> String {
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}\r\n")
            .as_bytes(),
    )
}

fn healthz(addr: &str) -> String {
    get(addr, "/healthz", "")
}

fn assert_healthy(s: &Served, after: &str) {
    let answer = healthz(&s.addr);
    assert_eq!(
        status(&answer),
        200,
        "/healthz after {after}: {answer:?}\n{}",
        s.daemon.log()
    );
}

/// The daemon's thread count, from /proc.
fn threads(pid: i32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

#[test]
fn listener_survives_a_huge_content_length() {
    let s = served("");
    for request in [
        "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n",
        "POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\ntoken=a",
        "POST /jobs/1/retry HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999\r\n\r\n",
    ] {
        let answer = raw(&s.addr, request.as_bytes());
        assert_eq!(status(&answer), 413, "{request:?} → {answer:?}");
        assert!(answer.contains("larger than 8192 bytes"), "{answer}");
        assert_healthy(&s, request);
    }
    // A length no integer holds is a malformed head.
    let request = "POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551616\r\n\r\n";
    let answer = raw(&s.addr, request.as_bytes());
    assert!(matches!(status(&answer), 400 | 413 | 431), "{answer:?}");
    assert_healthy(&s, request);
    // A chunked body that grows past the cap is cut off the same way.
    let mut stream = TcpStream::connect(&s.addr).unwrap();
    stream.set_read_timeout(Some(ANSWER)).unwrap();
    stream
        .write_all(b"POST /login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let chunk = format!("1000\r\n{}\r\n", "a".repeat(0x1000));
    for _ in 0..4 {
        if stream.write_all(chunk.as_bytes()).is_err() {
            break;
        }
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert_eq!(status(&String::from_utf8_lossy(&answer)), 413);
    assert_healthy(&s, "a chunked flood");
    assert!(!s.daemon.log().contains("panic"), "{}", s.daemon.log());
}

#[test]
fn a_client_stalled_in_its_body_blocks_no_one_and_is_dropped() {
    let s = served("");
    let mut stalled = TcpStream::connect(&s.addr).unwrap();
    stalled
        .write_all(b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\ntoken=")
        .unwrap();
    // Others are served meanwhile: the probe and a page.
    assert_healthy(&s, "a stalled body");
    assert_eq!(status(&get(&s.addr, "/", "")), 200);
    assert_eq!(status(&get(&s.addr, "/metrics", "")), 200);
    // The stalled client gets 408 once its body is late, then the close.
    stalled.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut answer = Vec::new();
    let _ = stalled.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(status(&answer), 408, "{answer:?}");
    assert!(answer.contains("did not arrive within 10s"), "{answer}");
}

#[test]
fn a_client_slow_to_send_its_head_is_dropped() {
    let s = served("");
    let mut slow = TcpStream::connect(&s.addr).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut idle = TcpStream::connect(&s.addr).unwrap();
    assert_healthy(&s, "a slow head");
    // Both are closed by the server (EOF or reset), not left open forever.
    for stream in [&mut slow, &mut idle] {
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut rest = Vec::new();
        let closed = stream.read_to_end(&mut rest);
        assert!(
            closed.is_ok()
                || closed
                    .as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "still open after {PATIENCE:?}: {closed:?}"
        );
    }
}

#[test]
fn a_thousand_idle_clients_leave_healthz_answering() {
    raise_own_file_limit(4096);
    let s = served("");
    let before = threads(s.daemon.pid());
    let mut clients = Vec::new();
    for i in 0..1000 {
        let mut stream = TcpStream::connect(&s.addr).expect("connect");
        // Some send half a head, some nothing at all.
        if i % 2 == 0 {
            let _ = stream.write_all(b"GET /jobs HTTP/1.1\r\nHost: x\r\n");
        }
        clients.push(stream);
    }
    assert_healthy(&s, "1000 idle clients");
    assert_eq!(status(&get(&s.addr, "/jobs", "")), 200);
    // Not a thread per connection.
    let during = threads(s.daemon.pid());
    assert!(
        during < before + 16,
        "{during} threads with 1000 clients, {before} before"
    );
    drop(clients);
    assert_healthy(&s, "the clients left");
}

/// Raises this test process's soft limit on open files (the test opens
/// many connections).
fn raise_own_file_limit(want: u64) {
    // SAFETY: getrlimit/setrlimit write only the struct given.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max.min(want.max(limit.rlim_cur));
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
}

#[test]
fn the_port_keeps_listening_when_descriptors_run_out() {
    raise_own_file_limit(4096);
    // The daemon gets 100 descriptors, hard limit included, so it cannot
    // raise them: 300 connections exhaust them.
    let s = served_with("", |home| {
        use std::os::unix::process::CommandExt;
        let mut cmd = home.cmd(&["run"]);
        // SAFETY: setrlimit is async-signal-safe; nothing else runs here.
        unsafe {
            cmd.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: 100,
                    rlim_max: 100,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let log = home.path().join("daemon.log");
        home.spawn_daemon(cmd, &log, &log)
    });
    let clients: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(&s.addr).expect("the kernel queues the connection"))
        .collect();
    s.daemon.wait_log("metrics.accept_failed");
    drop(clients);
    // Accepting resumed: the probe is answered again.
    let healthy = wait_for(PATIENCE, || {
        (status(&healthz(&s.addr)) == 200).then_some(())
    });
    assert!(
        healthy.is_some(),
        "/healthz never answered again:\n{}",
        s.daemon.log()
    );
    // The jobs went on meanwhile.
    let ids = s.home.insert(&format!(
        "('noop', '{{}}', 'default', 0, {}, 1, NULL)",
        common::NOW
    ));
    s.home.wait_state(ids[0], "succeeded");
}

#[test]
fn oversized_targets_heads_and_header_counts_are_refused() {
    let s = served("");
    let long_url = format!("/jobs?queue={}", "q".repeat(5000));
    let answer = get(&s.addr, &long_url, "");
    assert_eq!(status(&answer), 414, "{answer:?}");
    let many: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
    let answer = get(&s.addr, "/", &many);
    assert_eq!(status(&answer), 431, "{answer:?}");
    let huge = format!("X-Big: {}\r\n", "b".repeat(20_000));
    let answer = get(&s.addr, "/", &huge);
    assert!(matches!(status(&answer), 431 | 0), "{answer:?}");
    let answer = raw(
        &s.addr,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
    );
    assert!(matches!(status(&answer), 400 | 0), "{answer:?}");
    assert_healthy(&s, "oversized requests");
}

#[test]
fn pages_answer_only_their_own_host_names() {
    let s = served("allowed_hosts = [\"jobs.internal\"]\n");
    let with_host = |host: &str, path: &str| {
        raw(
            &s.addr,
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
    };
    let answer = with_host("evil.example", "/");
    assert_eq!(status(&answer), 421, "{answer:?}");
    assert!(answer.contains("metrics.allowed_hosts"), "{answer}");
    assert_eq!(status(&with_host("evil.example:80", "/jobs/1")), 421);
    // Prometheus and the supervisor are not browsers.
    assert_eq!(status(&with_host("evil.example", "/metrics")), 200);
    assert_eq!(status(&with_host("evil.example", "/healthz")), 200);
    for host in [
        "127.0.0.1",
        &s.addr,
        "localhost:1",
        "jobs.internal",
        "JOBS.internal.",
        "[::1]:9",
    ] {
        assert_eq!(status(&with_host(host, "/")), 200, "Host {host}");
    }
}

#[test]
fn with_a_token_every_page_needs_the_login_and_logins_are_limited() {
    let s = served_with("dashboard_token_env = \"DASH_TOKEN\"\n", |home| {
        let log = home.path().join("daemon.log");
        home.daemon_with_env(&log, &log, &[("DASH_TOKEN", "s3cret")])
    });
    for path in ["/", "/jobs", "/jobs/1", "/jobs/1/payload"] {
        let answer = get(&s.addr, path, "");
        assert_eq!(status(&answer), 303, "{path}: {answer:?}");
        assert!(
            answer.contains("location: /login") || answer.contains("Location: /login"),
            "{answer}"
        );
    }
    assert_eq!(status(&get(&s.addr, "/metrics", "")), 200);
    assert_eq!(status(&get(&s.addr, "/login", "")), 200);
    assert_eq!(
        status(&get(&s.addr, "/", "Authorization: Bearer s3cret\r\n")),
        200
    );
    let login = |token: &str| {
        let body = format!("token={token}");
        raw(
            &s.addr,
            format!(
                "POST /login HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
    };
    for _ in 0..5 {
        assert_eq!(status(&login("guess")), 403);
    }
    let limited = login("guess");
    assert_eq!(status(&limited), 429, "{limited:?}");
    // The right token waits out the window too: guessing gains nothing.
    assert_eq!(status(&login("s3cret")), 429);
    let line = s.daemon.wait_log("dashboard.login_failed");
    assert!(line.contains("client=127.0.0.1"), "{line}");
    assert_eq!(s.daemon.log().matches("dashboard.login_failed").count(), 5);
    s.daemon.wait_log("dashboard.login_limited");
    // A bearer token is held to the same limit: refused from an address
    // that is held back, the right one too (wrong ones went uncounted, so
    // a script could guess on past the login page's limit).
    assert_eq!(
        status(&get(&s.addr, "/", "Authorization: Bearer s3cret\r\n")),
        429
    );
}

/// Wrong bearer tokens count as failed logins, logged, up to the limit.
#[test]
fn wrong_bearer_tokens_are_failed_logins_and_limited() {
    let s = served_with("dashboard_token_env = \"DASH_TOKEN\"\n", |home| {
        let log = home.path().join("daemon.log");
        home.daemon_with_env(&log, &log, &[("DASH_TOKEN", "s3cret")])
    });
    for _ in 0..5 {
        let answer = get(&s.addr, "/", "Authorization: Bearer guess\r\n");
        assert_eq!(status(&answer), 303, "{answer:?}");
    }
    let limited = get(&s.addr, "/", "Authorization: Bearer guess\r\n");
    assert_eq!(status(&limited), 429, "{limited:?}");
    let line = s.daemon.wait_log("dashboard.login_failed");
    assert!(line.contains("via=bearer"), "{line}");
    assert_eq!(s.daemon.log().matches("dashboard.login_failed").count(), 5);
}

#[test]
fn a_huge_payload_shows_its_first_64_kib_and_downloads_whole() {
    let s = served("");
    // Under limits.max_payload_bytes (1 MiB), far over a page's share.
    let big = "x".repeat(900 * 1024);
    let payload = format!("{{\"sleep_ms\":0,\"note\":\"{big}\"}}");
    let ids = s.home.insert(&format!(
        "('noop', '{payload}', 'default', 0, {}, 1, NULL)",
        common::NOW
    ));
    // noop knows no `note`: the job goes dead, which gives it an error.
    s.home.wait_state(ids[0], "dead");
    let page = get(&s.addr, &format!("/jobs/{}", ids[0]), "");
    assert_eq!(status(&page), 200);
    assert!(page.len() < 100 * 1024, "the page is {} bytes", page.len());
    assert!(
        page.contains(&format!("href=\"/jobs/{}/payload\"", ids[0])),
        "no download link"
    );
    assert!(
        page.contains(&format!("of {} bytes", payload.len())),
        "the page says how much is left out"
    );
    let mut stream = TcpStream::connect(&s.addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        stream,
        "GET /jobs/{}/payload HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        ids[0]
    )
    .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(status(&answer), 200);
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-disposition: attachment"),
        "{}",
        &answer[..500]
    );
    assert!(
        answer.ends_with(&payload),
        "the download is the whole payload"
    );
    let error = get(&s.addr, &format!("/jobs/{}/error", ids[0]), "");
    assert!(
        error.ends_with("unknown field `note`, expected `sleep_ms` at line 1 column 20"),
        "{error}"
    );
    assert_eq!(
        status(&get(&s.addr, &format!("/jobs/{}/result", ids[0]), "")),
        404
    );
    assert_eq!(status(&get(&s.addr, "/jobs/999/payload", "")), 404);
}

/// HEAD is answered as GET without a body (health checkers and load
/// balancers probe with it; it got 405 everywhere and 404 on `/healthz`),
/// and a 405 says what is allowed.
#[test]
fn head_is_get_without_a_body_and_a_405_names_the_allowed_methods() {
    let s = served("");
    for path in ["/healthz", "/metrics", "/"] {
        let answer = raw(
            &s.addr,
            format!("HEAD {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!(status(&answer), 200, "{path}: {answer:?}");
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        assert!(body.is_empty(), "{path}: a body came with HEAD: {body:?}");
    }
    let answer = raw(
        &s.addr,
        b"OPTIONS / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&answer), 405, "{answer:?}");
    assert!(
        answer.to_lowercase().contains("allow: get, head, post"),
        "{answer}"
    );
    let answer = raw(
        &s.addr,
        b"POST /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(status(&answer), 405, "{answer:?}");
    assert!(
        answer.to_lowercase().contains("allow: get, head\r\n"),
        "{answer}"
    );
    // A job list's filter that means nothing is said, not dropped.
    for query in ["state=nonsense", "before=-1", "before=99999999999999999999"] {
        let answer = get(&s.addr, &format!("/jobs?{query}"), "");
        assert_eq!(status(&answer), 400, "{query}: {answer:?}");
    }
    assert_eq!(status(&get(&s.addr, "/jobs?state=&before=", "")), 200);
}
