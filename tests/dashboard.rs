//! The dashboard over real HTTP from a running daemon: every page, paging
//! and filters, long-running jobs flagged, credentials redacted, and
//! database values rendered inert.

mod common;

use common::{wait_for, Home, NOW, PATIENCE};

struct Dash {
    home: Home,
    base: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn dash(extra: &str) -> Dash {
    let port = free_port();
    let home = Home::with_config(&format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\nlong_running = \"300ms\"\n\
         [daemon]\nshutdown_grace = \"100ms\"\n{extra}"
    ));
    home.migrate();
    Dash {
        home,
        base: format!("http://127.0.0.1:{port}"),
    }
}

impl Dash {
    /// GET `path`: (status, body, content-security-policy).
    fn get(&self, path: &str) -> (u16, String, String) {
        let url = format!("{}{path}", self.base);
        let response = match ureq::get(&url).call() {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("GET {url}: {e}"),
        };
        let csp = response
            .header("Content-Security-Policy")
            .unwrap_or("")
            .to_string();
        (response.status(), response.into_string().unwrap(), csp)
    }

    fn page(&self, path: &str) -> String {
        let (status, body, csp) = self.get(path);
        assert_eq!(status, 200, "{path}: {body}");
        assert!(csp.starts_with("default-src 'none'"), "{path}: CSP {csp:?}");
        body
    }
}

fn rows(values: &[String]) -> String {
    values.join(", ")
}

#[test]
fn the_overview_shows_queues_long_running_jobs_daemons_and_charts() {
    let d = dash("");
    let mut values = vec![
        format!("('noop', '{{\"sleep_ms\":60000}}', 'slow', 0, {NOW}, 1, NULL)"),
        format!("('bogus', '{{}}', 'mail', 0, {NOW}, 1, NULL)"),
        format!("('noop', '{{}}', 'later', 0, {NOW} + 3600000, 1, NULL)"),
    ];
    values.extend((0..5).map(|_| format!("('noop', '{{}}', 'default', 0, {NOW}, 1, NULL)")));
    let ids = d.home.insert(&rows(&values));
    d.home.ok(&["pause", "mail"]);
    let daemon = d.home.daemon();
    d.home.wait_state(ids[0], "running");
    for id in &ids[3..] {
        d.home.wait_state(*id, "succeeded");
    }
    // The long job shows up once it has run past the 300 ms threshold.
    let page = wait_for(PATIENCE, || {
        let page = d.page("/");
        page.contains("<table id=\"long-running\">").then_some(page)
    })
    .expect("the long-running job is flagged");
    assert!(
        page.contains(&format!("<a href=\"/jobs/{0}\">{0}</a>", ids[0])),
        "{page}"
    );
    for queue in ["default", "slow", "mail", "later"] {
        assert!(
            page.contains(&format!("data-queue=\"{queue}\"")),
            "{queue}: {page}"
        );
    }
    // default: 5 succeeded in the last hour; later: 1 scheduled; slow: 1 running.
    assert!(
        page.contains("<td class=\"n ok\">5</td>"),
        "succeeded count: {page}"
    );
    assert!(
        page.contains("<span class=\"warn\">paused</span>"),
        "{page}"
    );
    assert!(page.contains("<h2>Daemons</h2>"));
    let worker = d.home.text("SELECT id FROM workers;");
    assert!(page.contains(&worker), "{page}");
    assert_eq!(page.matches("<svg").count(), 2, "two charts");
    assert!(page.contains("http-equiv=\"refresh\""));
    daemon.stop();
}

#[test]
fn the_job_list_pages_and_filters() {
    let d = dash("");
    let values: Vec<String> = (0..120)
        .map(|i| {
            let queue = if i % 2 == 0 { "even" } else { "odd" };
            format!("('noop', '{{}}', '{queue}', 0, {NOW} + 3600000, 1, NULL)")
        })
        .collect();
    let ids = d.home.insert(&rows(&values));
    let _daemon = d.home.daemon();
    let first = d.page("/jobs");
    assert_eq!(first.matches("<tr><td><a href=\"/jobs/").count(), 50);
    assert!(
        first.contains(&format!("/jobs/{}\"", ids[119])),
        "newest first"
    );
    let next = first
        .split("<a id=\"next\" href=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a link to older jobs")
        .replace("&amp;", "&");
    let second = d.page(&next);
    assert!(second.contains(&format!("/jobs/{}\"", ids[69])), "{next}");
    assert!(!second.contains(&format!("/jobs/{}\"", ids[70])), "{next}");
    let odd = d.page("/jobs?queue=odd&state=queued");
    assert_eq!(odd.matches("<td>odd</td>").count(), 50);
    assert!(!odd.contains("<td>even</td>"));
    let none = d.page("/jobs?state=dead");
    assert!(none.contains("No jobs match."));
}

#[test]
fn a_job_page_shows_its_history_with_credentials_redacted() {
    let d = dash("[retry]\nbackoff_base = \"10ms\"\n");
    let id = d.home.insert_job(
        "http",
        r#"{"url":"http://127.0.0.1:9/x","headers":{"Authorization":"Bearer top-secret-42","X-Trace":"t"}}"#,
        "2",
        "NULL",
    );
    let daemon = d.home.daemon();
    d.home.wait_state(id, "dead");
    daemon.stop();
    // A second daemon (its own log, so its start is waited for).
    let _daemon = d.home.daemon_logging_to("second.log");
    let page = d.page(&format!("/jobs/{id}"));
    assert!(!page.contains("top-secret-42"), "{page}");
    assert!(
        page.contains("&quot;Authorization&quot;: &quot;[redacted]&quot;"),
        "{page}"
    );
    assert!(page.contains("X-Trace"));
    assert_eq!(page.matches("<td>retry</td>").count(), 1, "{page}");
    assert_eq!(page.matches("<td>dead</td>").count(), 1, "{page}");
    assert!(page.contains("<pre id=\"last-error\">"));
    let (status, body, _) = d.get("/jobs/999999");
    assert_eq!(status, 404);
    assert!(body.contains("There is no job 999999."));
    assert_eq!(d.get("/jobs/abc").0, 404);
    assert_eq!(d.get("/nowhere").0, 404);
}

#[test]
fn markup_from_the_database_renders_inert() {
    let d = dash("");
    let evil = "<script>alert(1)</script>";
    let id = d.home.insert_job(
        evil,
        &format!(r#"{{"note":"{evil}","img":"<img src=x onerror=alert(2)>"}}"#),
        "1",
        "NULL",
    );
    d.home
        .sqlite3(&format!(
            "INSERT INTO jobs(kind, queue, payload) VALUES ('noop', '{evil}', '{{}}');"
        ))
        .succeeds();
    let _daemon = d.home.daemon();
    d.home.wait_state(id, "dead");
    for path in [
        "/".to_string(),
        "/jobs".into(),
        format!("/jobs/{id}"),
        format!("/jobs?queue={}", "%3Cscript%3E"),
    ] {
        let page = d.page(&path);
        assert!(
            !page.contains("<script"),
            "{path} carries a live script tag:\n{page}"
        );
        assert!(!page.contains("<img"), "{path} carries a live img tag");
    }
    let job = d.page(&format!("/jobs/{id}"));
    assert!(
        job.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{job}"
    );
    // The error names the unknown kind, itself markup: escaped too.
    assert!(job.contains("unknown kind &quot;&lt;script&gt;"), "{job}");
}
