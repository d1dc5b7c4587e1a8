//! `/metrics` and `/healthz` of the real daemon over real HTTP: scraped
//! while jobs run, parsed as Prometheus text, and checked against the
//! database; health that follows the database; a taken port stops start-up.

mod common;

use std::collections::BTreeMap;

use common::{free_port, Home, NOW};

fn home_listening() -> (Home, String) {
    let port = free_port();
    let home = Home::with_config(&format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\n[daemon]\nshutdown_grace = \"100ms\"\n"
    ));
    home.migrate();
    (home, format!("http://127.0.0.1:{port}"))
}

/// GET `url`: (status, body).
fn get(url: &str) -> (u16, String) {
    match ureq::get(url).call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

/// Prometheus text → `name{label="value",…}` (labels sorted) → value.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("a sample line");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
        let key = match series.split_once('{') {
            Some((name, labels)) => {
                let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                labels.sort_unstable();
                format!("{name}{{{}}}", labels.join(","))
            }
            None => series.to_string(),
        };
        assert!(out.insert(key, value).is_none(), "a series twice: {line}");
    }
    out
}

fn scrape(base: &str) -> BTreeMap<String, f64> {
    let (status, body) = get(&format!("{base}/metrics"));
    assert_eq!(status, 200, "{body}");
    parse(&body)
}

fn value(metrics: &BTreeMap<String, f64>, key: &str) -> f64 {
    *metrics
        .get(key)
        .unwrap_or_else(|| panic!("no {key} in {metrics:#?}"))
}

#[test]
fn metrics_scraped_while_jobs_run_match_the_database() {
    let (home, base) = home_listening();
    // One long job holds an IO slot while we scrape; a paused queue keeps
    // two ready jobs waiting, five seconds late; a typo'd kind goes dead.
    let long = home.insert_job("noop", r#"{"sleep_ms":60000}"#, "1", "NULL");
    let rows: Vec<String> = (0..20)
        .map(|_| format!("('noop', '{{}}', 'default', 0, {NOW}, 1, NULL)"))
        .collect();
    let quick = home.insert(&rows.join(", "));
    home.sqlite3("INSERT INTO queues(name, paused) VALUES ('held', 1);")
        .succeeds();
    home.insert(&format!(
        "('noop', '{{}}', 'held', 0, {NOW} - 5000, 1, NULL), ('noop', '{{}}', 'held', 0, {NOW} - 5000, 1, NULL)"
    ));
    home.insert_job("nope", "{}", "1", "NULL");
    let daemon = home.daemon();
    home.wait_state(long, "running");
    for id in &quick {
        home.wait_state(*id, "succeeded");
    }
    home.wait_count(
        "SELECT count(*) FROM jobs WHERE kind = 'nope' AND state = 'dead'",
        1,
    );

    let m = scrape(&base);
    let count = |state: &str, queue: &str| {
        home.query_i64(&format!(
            "SELECT count(*) FROM jobs WHERE state = '{state}' AND queue = '{queue}'"
        )) as f64
    };
    for (queue, state) in [
        ("default", "succeeded"),
        ("default", "running"),
        ("default", "dead"),
        ("held", "queued"),
    ] {
        assert_eq!(
            value(
                &m,
                &format!(r#"jobd_jobs{{queue="{queue}",state="{state}"}}"#)
            ),
            count(state, queue),
            "{queue} {state}"
        );
    }
    assert_eq!(
        value(&m, r#"jobd_jobs{queue="default",state="running"}"#),
        1.0
    );
    assert_eq!(value(&m, r#"jobd_queue_paused{queue="held"}"#), 1.0);
    assert_eq!(value(&m, r#"jobd_queue_paused{queue="default"}"#), 0.0);
    assert_eq!(
        value(
            &m,
            r#"jobd_attempts_total{kind="noop",outcome="succeeded"}"#
        ),
        20.0
    );
    assert_eq!(
        value(&m, r#"jobd_attempt_duration_seconds_count{kind="noop"}"#),
        20.0
    );
    // An unknown kind is counted as "other": clients cannot grow the labels.
    assert_eq!(
        value(&m, r#"jobd_attempts_total{kind="other",outcome="dead"}"#),
        1.0
    );
    assert_eq!(value(&m, r#"jobd_queue_ready{queue="held"}"#), 2.0);
    assert!(value(&m, r#"jobd_queue_lag_seconds{queue="held"}"#) >= 5.0);
    assert_eq!(value(&m, r#"jobd_pool_busy{pool="io"}"#), 1.0);
    assert_eq!(value(&m, r#"jobd_pool_size{pool="io"}"#), 16.0);
    assert_eq!(value(&m, r#"jobd_pool_busy{pool="cpu"}"#), 0.0);
    assert!(value(&m, r#"jobd_pool_size{pool="cpu"}"#) >= 1.0);
    assert!(value(&m, "jobd_process_resident_memory_bytes") > 1e6);
    assert!(value(&m, "jobd_process_open_fds") >= 3.0);
    assert!(value(&m, "jobd_cpu_workers_resident_memory_bytes") > 1e6);
    assert_eq!(
        value(
            &m,
            &format!(r#"jobd_info{{version="{}"}}"#, env!("CARGO_PKG_VERSION"))
        ),
        1.0
    );
    daemon.stop();
}

#[test]
fn healthz_answers_and_other_paths_are_refused() {
    // A file deleted or replaced under the daemon stops it (faults.rs).
    let (home, base) = home_listening();
    let daemon = home.daemon();
    assert_eq!(get(&format!("{base}/healthz")), (200, "ok\n".to_string()));
    assert_eq!(get(&format!("{base}/nothing")).0, 404);
    let post = ureq::post(&format!("{base}/metrics")).call();
    assert!(matches!(post, Err(ureq::Error::Status(405, _))), "{post:?}");
    daemon.stop();
}

#[test]
fn a_taken_metrics_port_stops_start_up_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let home = Home::with_config(&format!("[metrics]\nlisten = \"{addr}\"\n"));
    home.migrate();
    let run = home.jobd(&["run"]);
    assert_eq!(run.code(), 1, "{}", run.stderr());
    assert!(
        run.stderr()
            .starts_with(&format!("jobd: cannot listen on metrics.listen {addr}: ")),
        "{}",
        run.stderr()
    );
    // Nothing was registered or taken back.
    assert_eq!(home.query_i64("SELECT count(*) FROM workers"), 0);
}

/// `/healthz`, `/metrics` and the dashboard's pages read the daemon's
/// database on either backend.
#[test]
fn metrics_health_and_the_dashboard_read_either_backend() {
    let port = common::free_port();
    for backend in common::homes_with(
        "dash",
        &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    ) {
        metrics_health_and_pages(&backend, port);
    }
}

fn metrics_health_and_pages(backend: &common::BackendHome, port: u16) {
    let home = &backend.home;
    home.ok(&["migrate"]);
    let ok = backend.value("INSERT INTO jobs(kind) VALUES ('noop') RETURNING id;");
    let dead = backend.value("INSERT INTO jobs(kind) VALUES ('nope') RETURNING id;");
    let daemon = home.daemon_logging_to("d.log");
    common::wait_for(common::PATIENCE, || {
        (backend.value("SELECT count(*) FROM jobs WHERE state IN ('succeeded', 'dead');") == "2")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("{}: both jobs finish", backend.name));
    let get = |path: &str| -> (u16, String) {
        match ureq::get(&format!("http://127.0.0.1:{port}{path}")).call() {
            Ok(r) => (r.status(), r.into_string().unwrap()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
            Err(e) => panic!("{path}: {e}"),
        }
    };
    let (status, body) = get("/healthz");
    assert_eq!(status, 200, "{body}");
    let (status, metrics) = get("/metrics");
    assert_eq!(status, 200, "{metrics}");
    for line in [
        r#"jobd_jobs{queue="default",state="succeeded"} 1"#,
        r#"jobd_jobs{queue="default",state="dead"} 1"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "no {line} in {metrics}");
    }
    let (status, page) = get("/");
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("default"), "{page}");
    let (status, page) = get(&format!("/jobs/{dead}"));
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("unknown kind"), "{page}");
    let (status, page) = get("/jobs?state=succeeded");
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(&format!("/jobs/{ok}")), "{page}");
    daemon.stop();
}
