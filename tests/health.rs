//! `/healthz` tells the truth about a daemon that still turns but can no
//! longer do its work: writes that keep failing. (A database file deleted
//! or replaced under it stops the daemon: `faults.rs`.)

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{free_port, wait_for, Home, PATIENCE};

fn home_listening(busy_timeout: &str) -> (Home, String) {
    let port = free_port();
    let home = Home::new();
    let config = format!(
        "[database]\npath = \"{}\"\nbusy_timeout = \"{busy_timeout}\"\n\
         [metrics]\nlisten = \"127.0.0.1:{port}\"\n[daemon]\nshutdown_grace = \"100ms\"\n",
        home.db().display()
    );
    std::fs::write(home.config(), config).unwrap();
    home.migrate();
    (home, format!("http://127.0.0.1:{port}/healthz"))
}

/// GET `url`: (status, body).
fn get(url: &str) -> (u16, String) {
    match ureq::get(url).call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

/// Waits for a 503 whose body contains `needle`; returns the body.
fn wait_unhealthy(url: &str, needle: &str) -> String {
    let mut last = (0, String::new());
    let found = wait_for(PATIENCE, || {
        last = get(url);
        (last.0 == 503 && last.1.contains(needle)).then(|| last.1.clone())
    });
    found.unwrap_or_else(|| panic!("no 503 with {needle:?}; last answer {last:?}"))
}

/// Regression: with every write failing (a lock held by a client past the
/// busy timeout, a corrupt file), the loop still turned and `/healthz` said
/// ok while no outcome could be written.
#[test]
fn healthz_says_when_writes_keep_failing() {
    let (home, url) = home_listening("50ms");
    let id = home.insert_job("noop", r#"{"sleep_ms": 1500}"#, "NULL", "NULL");
    let daemon = home.daemon();
    home.wait_state(id, "running");
    // A client holds the write lock while the job finishes.
    let mut client = Command::new(common::sqlite3_bin())
        .arg(home.db())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = client.stdin.as_mut().unwrap();
    stdin.write_all(b"BEGIN EXCLUSIVE;\n").unwrap();
    stdin.flush().unwrap();
    let body = wait_unhealthy(&url, "outcome writes have failed for");
    assert!(body.contains("locked") || body.contains("busy"), "{body}");
    // Once the lock goes, the outcome is written and health comes back.
    stdin.write_all(b"COMMIT;\n.quit\n").unwrap();
    stdin.flush().unwrap();
    client.wait().unwrap();
    home.wait_state(id, "succeeded");
    let back = wait_for(PATIENCE, || (get(&url).0 == 200).then_some(()));
    assert!(back.is_some(), "{:?}", get(&url));
    daemon.stop();
}
