//! Life under systemd: the notifications of the real daemon on a real unix
//! datagram socket set as `NOTIFY_SOCKET`, as systemd would see them.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::{Home, PATIENCE};

/// The socket systemd would listen on, and what arrived on it.
struct Systemd {
    socket: UnixDatagram,
    seen: Vec<String>,
}

impl Systemd {
    fn bind(home: &Home) -> (Systemd, String) {
        let path = home.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let systemd = Systemd {
            socket,
            seen: Vec::new(),
        };
        (systemd, path.to_str().unwrap().to_string())
    }

    /// Waits for a message holding the line `needle` (or, ending in `*`,
    /// a line starting so); returns the message.
    fn wait_for(&mut self, needle: &str) -> String {
        let matches = |m: &str| {
            m.lines().any(|l| match needle.strip_suffix('*') {
                Some(prefix) => l.starts_with(prefix),
                None => l == needle,
            })
        };
        if let Some(i) = self.seen.iter().position(|m| matches(m)) {
            return self.seen.remove(i);
        }
        let deadline = Instant::now() + PATIENCE;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                if matches(&message) {
                    return message;
                }
                self.seen.push(message);
            }
        }
        panic!("systemd never got {needle:?}; it got {:?}", self.seen);
    }
}

#[test]
fn the_daemon_tells_systemd_ready_status_watchdog_reloading_and_stopping() {
    let home = Home::with_config("[daemon]\nlease = \"1s\"\nshutdown_grace = \"200ms\"\n");
    home.migrate();
    home.insert_job("noop", r#"{"sleep_ms":60000}"#, "1", "NULL");
    let (mut systemd, socket) = Systemd::bind(&home);
    let log = home.path().join("daemon.log");
    let daemon = home.daemon_with_env(
        &log,
        &log,
        &[("NOTIFY_SOCKET", &socket), ("WATCHDOG_USEC", "400000")],
    );

    let ready = systemd.wait_for("READY=1");
    assert!(
        ready.contains("STATUS=0 running, 1 queued, lag "),
        "{ready}"
    );
    // Pinged from the dispatcher loop every half interval, idle or not.
    for _ in 0..3 {
        systemd.wait_for("WATCHDOG=1");
    }
    // The heartbeat's status line, once the job runs.
    systemd.wait_for("STATUS=1 running, 0 queued, lag 0.0s");

    daemon.signal(libc::SIGHUP);
    let reloading = systemd.wait_for("RELOADING=1");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    systemd.wait_for("READY=1");

    daemon.signal(libc::SIGTERM);
    let stopping = systemd.wait_for("STOPPING=1");
    assert!(stopping.contains("STATUS=draining 1 jobs"), "{stopping}");
    let (code, log) = daemon.wait_exit();
    assert_eq!(code, 0, "{log}");
}

#[test]
fn a_watchdog_meant_for_another_process_is_not_pinged() {
    let home = Home::with_config("[daemon]\nlease = \"1s\"\n");
    home.migrate();
    let (mut systemd, socket) = Systemd::bind(&home);
    let log = home.path().join("daemon.log");
    // WATCHDOG_PID names another process: the watchdog is not ours.
    let daemon = home.daemon_with_env(
        &log,
        &log,
        &[
            ("NOTIFY_SOCKET", &socket),
            ("WATCHDOG_USEC", "100000"),
            ("WATCHDOG_PID", "1"),
        ],
    );
    systemd.wait_for("READY=1");
    // Two heartbeats (a third of the lease apart) span several would-be
    // watchdog intervals of 50 ms.
    for _ in 0..2 {
        systemd.wait_for("STATUS=0 running, 0 queued*");
    }
    daemon.stop();
    systemd.wait_for("STOPPING=1");
    assert!(
        !systemd.seen.iter().any(|m| m.contains("WATCHDOG=1")),
        "{:?}",
        systemd.seen
    );
}

/// `systemd-analyze`, when this machine has it.
fn systemd_analyze() -> Option<&'static str> {
    let found = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("systemd-analyze is not installed: the unit file is not checked here");
    }
    found.then_some("systemd-analyze")
}

#[test]
fn the_unit_file_verifies_and_its_exposure_is_at_most_1_5() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let unit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/jobd.service");
    // verify insists that ExecStart's binary exists: point it at this build.
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(text.contains("ExecStart=/usr/bin/jobd "), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("jobd.service");
    std::fs::write(&copy, text.replace("/usr/bin/jobd", common::JOBD)).unwrap();
    let verify = std::process::Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && !complaints.contains("jobd.service"),
        "systemd-analyze verify: {complaints}"
    );

    let security = std::process::Command::new(analyze)
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = report
        .lines()
        .find_map(|l| l.split("Overall exposure level for jobd.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure figure in:\n{report}"));
    assert!(exposure <= 1.5, "exposure {exposure} > 1.5:\n{report}");
}

#[test]
fn under_journald_lines_carry_no_timestamp_of_their_own() {
    let home = Home::new();
    home.migrate();
    let log = home.path().join("journal.log");
    let daemon = home.daemon_with_env(&log, &log, &[("JOURNAL_STREAM", "8:12345")]);
    let line = daemon.wait_log("daemon.started");
    assert!(line.starts_with("INFO  daemon.started version="), "{line}");
    daemon.stop();
    let plain = home.path().join("plain.log");
    let daemon = home.daemon_with_env(&plain, &plain, &[]);
    let line = daemon.wait_log("daemon.started");
    assert!(
        line.starts_with("20") && line.contains("Z INFO  daemon.started"),
        "{line}"
    );
    daemon.stop();
}

/// Regression: while draining, the heartbeat's usual line overwrote
/// `STATUS=draining 1 jobs` within seconds. Every status sent after the stop
/// says draining.
#[test]
fn the_status_says_draining_until_the_daemon_exits() {
    let home = Home::with_config("[daemon]\nlease = \"1s\"\nshutdown_grace = \"3s\"\n");
    home.migrate();
    home.insert_job("noop", r#"{"sleep_ms":60000}"#, "1", "NULL");
    let (mut systemd, socket) = Systemd::bind(&home);
    let log = home.path().join("daemon.log");
    let daemon = home.daemon_with_env(&log, &log, &[("NOTIFY_SOCKET", &socket)]);
    systemd.wait_for("STATUS=1 running, 0 queued*");
    daemon.signal(libc::SIGTERM);
    systemd.wait_for("STOPPING=1");
    systemd.seen.clear();
    // Heartbeats come every lease / 3 while the 3 s grace runs out.
    let beat = systemd.wait_for("STATUS=draining 1 jobs");
    assert!(!beat.contains("STOPPING"), "{beat:?}");
    let (code, log) = daemon.wait_exit();
    assert_eq!(code, 0, "{log}");
    let mut buf = [0u8; 4096];
    systemd.socket.set_nonblocking(true).unwrap();
    while let Ok(n) = systemd.socket.recv(&mut buf) {
        systemd
            .seen
            .push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        systemd.seen.iter().all(|m| !m.contains("running, ")),
        "a usual status line after the stop: {:?}",
        systemd.seen
    );
}
