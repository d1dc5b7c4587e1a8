//! The dashboard over real HTTP from a running daemon: every page, paging
//! and filters, long-running jobs flagged, credentials redacted, and
//! database values rendered inert.

mod common;

use common::{free_port, wait_for, Home, NOW, PATIENCE};

struct Dash {
    home: Home,
    base: String,
}

/// A home whose dashboard listens on a free port; `metrics` goes into the
/// `[metrics]` section, `extra` after it.
fn dash(metrics: &str, extra: &str) -> Dash {
    let port = free_port();
    let home = Home::with_config(&format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\nlong_running = \"300ms\"\n{metrics}\
         [daemon]\nshutdown_grace = \"100ms\"\n{extra}"
    ));
    // Loading the config needs the token's variable when one is named.
    let migrated = home.cmd(&["migrate"]).env("DASH_TOKEN", "unused").output();
    assert!(migrated.unwrap().status.success());
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
    let d = dash("", "");
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
    // Each chart spans the hour in 60 one-minute slots of 8 px, whatever
    // the data (one minute of data drew one bar across the whole chart).
    for svg in page.split("<svg").skip(1) {
        let svg = &svg[..svg.find("</svg>").unwrap()];
        let rects = svg.matches("<rect").count();
        assert!(rects <= 120, "{svg}");
        assert_eq!(svg.matches("width=\"7.0\"").count(), rects, "{svg}");
    }
    // And the way in for a token holder is on every page.
    assert!(
        page.contains("<a id=\"login\" href=\"/login\">log in</a>"),
        "{page}"
    );
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
    assert!(
        page.contains("This daemon: IO pool 1 of 16 busy, CPU pool 0 of"),
        "{page}"
    );
    assert!(page.contains("http-equiv=\"refresh\""));
    daemon.stop();
}

#[test]
fn the_job_list_pages_and_filters() {
    let d = dash("", "");
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
    let d = dash("", "[retry]\nbackoff_base = \"10ms\"\n");
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
    let d = dash("", "");
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

/// An HTTP client that shows redirects instead of following them.
fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().redirects(0).build()
}

/// POSTs a form: (status, body, headers of interest).
fn post(
    url: &str,
    auth: Option<&str>,
    cookie: Option<&str>,
    form: &[(&str, &str)],
) -> (u16, String, Option<String>, Option<String>) {
    let mut request = agent().post(url);
    if let Some(auth) = auth {
        request = request.set("Authorization", auth);
    }
    if let Some(cookie) = cookie {
        request = request.set("Cookie", cookie);
    }
    let response = match request.send_form(form) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("POST {url}: {e}"),
    };
    let location = response.header("Location").map(str::to_string);
    let cookie = response.header("Set-Cookie").map(str::to_string);
    (
        response.status(),
        response.into_string().unwrap(),
        location,
        cookie,
    )
}

#[test]
fn without_a_token_the_dashboard_is_read_only() {
    let d = dash("", "");
    let id = d.home.insert_job("bogus", "{}", "1", "NULL");
    let _daemon = d.home.daemon();
    d.home.wait_state(id, "dead");
    let page = d.page(&format!("/jobs/{id}"));
    assert!(!page.contains("method=\"post\""), "no buttons: {page}");
    let (status, body, _, _) = post(&format!("{}/jobs/{id}/retry", d.base), None, None, &[]);
    assert_eq!(status, 403);
    assert!(
        body.contains("read-only: set metrics.dashboard_token"),
        "{body}"
    );
    // Not even with a made-up bearer token.
    let (status, _, _, _) = post(
        &format!("{}/jobs/{id}/retry", d.base),
        Some("Bearer guess"),
        None,
        &[],
    );
    assert_eq!(status, 403);
    assert_eq!(d.get("/login").0, 403);
    assert_eq!(d.home.state(id), "dead");
}

#[test]
fn actions_need_the_token_and_a_session_needs_its_csrf_token() {
    const TOKEN: &str = "dash-token-8d1e";
    let d = dash("dashboard_token_env = \"DASH_TOKEN\"\n", "");
    let dead = d.home.insert_job("bogus", "{}", "1", "NULL");
    let long = d
        .home
        .insert_job("noop", r#"{"sleep_ms":60000}"#, "1", "NULL");
    let log = d.home.path().join("daemon.log");
    let _daemon = d.home.daemon_with_env(&log, &log, &[("DASH_TOKEN", TOKEN)]);
    d.home.wait_state(dead, "dead");
    d.home.wait_state(long, "running");
    let url = |p: &str| format!("{}{p}", d.base);

    // Anonymous and wrong tokens are refused; nothing changes.
    let (status, _, _, _) = post(&url(&format!("/jobs/{dead}/retry")), None, None, &[]);
    assert_eq!(status, 401);
    let (status, _, _, _) = post(
        &url(&format!("/jobs/{dead}/retry")),
        Some("Bearer nope"),
        None,
        &[],
    );
    assert_eq!(status, 401);
    assert_eq!(
        d.home.query_i64(&format!(
            "SELECT count(*) FROM job_runs WHERE job_id = {dead}"
        )),
        1
    );

    // The bearer token works for scripts, without a CSRF token.
    let bearer = format!("Bearer {TOKEN}");
    let (status, _, location, _) = post(&url("/queues/mail/pause"), Some(&bearer), None, &[]);
    assert_eq!((status, location.as_deref()), (303, Some("/")));
    assert_eq!(
        d.home
            .query_i64("SELECT paused FROM queues WHERE name = 'mail'"),
        1
    );
    let (status, _, _, _) = post(&url("/queues/mail/resume"), Some(&bearer), None, &[]);
    assert_eq!(status, 303);
    // A name no job could have is refused, and nothing is written (the
    // dashboard paused a NUL, control bytes, 3 000 characters).
    let before = d.home.query_i64("SELECT count(*) FROM queues");
    for name in ["%00", "a%01b", &"x".repeat(3_000)] {
        let (status, _, _, _) = post(
            &url(&format!("/queues/{name}/pause")),
            Some(&bearer),
            None,
            &[],
        );
        assert_eq!(status, 400, "{}", &name[..name.len().min(20)]);
    }
    assert_eq!(d.home.query_i64("SELECT count(*) FROM queues"), before);
    assert_eq!(
        d.home
            .query_i64("SELECT paused FROM queues WHERE name = 'mail'"),
        0
    );
    let (status, _, _, _) = post(
        &url(&format!("/jobs/{dead}/retry")),
        Some(&bearer),
        None,
        &[],
    );
    assert_eq!(status, 303);
    d.home.wait_count(
        &format!("SELECT count(*) FROM job_runs WHERE job_id = {dead}"),
        2,
    );

    // The login form sets a session cookie; its forms carry a CSRF token.
    let (status, body, _, _) = post(&url("/login"), None, None, &[("token", "wrong")]);
    assert_eq!(status, 403);
    assert!(body.contains("not the one configured"));
    let (status, _, _, set_cookie) = post(&url("/login"), None, None, &[("token", TOKEN)]);
    assert_eq!(status, 303);
    let set_cookie = set_cookie.expect("a session cookie");
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let page = agent()
        .get(&url(&format!("/jobs/{long}")))
        .set("Cookie", &cookie)
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a cancel button with a CSRF token")
        .to_string();
    assert!(
        page.contains(&format!("action=\"/jobs/{long}/cancel\"")),
        "{page}"
    );
    // A cross-site form would carry the cookie but not the CSRF token.
    let (status, body, _, _) = post(
        &url(&format!("/jobs/{long}/cancel")),
        None,
        Some(&cookie),
        &[],
    );
    assert_eq!(status, 403, "{body}");
    let (status, _, _, _) = post(
        &url(&format!("/jobs/{long}/cancel")),
        None,
        Some(&cookie),
        &[("csrf", "f00")],
    );
    assert_eq!(status, 403);
    assert_eq!(d.home.state(long), "running");
    let (status, _, location, _) = post(
        &url(&format!("/jobs/{long}/cancel")),
        None,
        Some(&cookie),
        &[("csrf", &csrf)],
    );
    assert_eq!((status, location), (303, Some(format!("/jobs/{long}"))));
    d.home.wait_state(long, "cancelled");

    // After logging out the cookie is worth nothing.
    let (status, _, _, _) = post(&url("/logout"), None, Some(&cookie), &[("csrf", &csrf)]);
    assert_eq!(status, 303);
    let (status, _, _, _) = post(
        &url("/queues/mail/pause"),
        None,
        Some(&cookie),
        &[("csrf", &csrf)],
    );
    assert_eq!(status, 401);
    let listed = std::fs::read_to_string(&log).unwrap();
    assert!(!listed.contains(TOKEN), "the token was logged");
    assert!(
        listed.contains("dashboard.action action=pause queue=mail"),
        "{listed}"
    );
    // Results in words, not Rust's Debug form.
    assert!(
        listed.contains(&format!(
            "dashboard.action action=cancel id={long} result=\"cancel requested\""
        )),
        "{listed}"
    );
    assert!(!listed.contains("Some("), "{listed}");
}

/// Two daemons on one database: A serves the dashboard and queue "a", B runs
/// queue "b". A's attempts chart counts B's attempts, read from the
/// database rather than from A's own counters.
#[test]
fn the_dashboard_charts_every_daemons_attempts() {
    let port = free_port();
    for backend in common::homes_with(
        "fleetchart",
        &format!(
            "[daemon]\nqueues = [\"a\"]\nlease = \"1s\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"
        ),
    ) {
        let a = &backend.home;
        let b = backend.another("[daemon]\nqueues = [\"b\"]\n");
        a.ok(&["migrate"]);
        let dashboard = a.daemon_logging_to("a.log");
        let worker = b.daemon_logging_to("b.log");
        let chart = || -> Option<String> {
            let page = ureq::get(&format!("http://127.0.0.1:{port}/"))
                .call()
                .ok()?
                .into_string()
                .ok()?;
            Some(
                page.split("<svg")
                    .nth(1)?
                    .split("</svg>")
                    .next()?
                    .to_string(),
            )
        };
        // Bar heights of the attempts chart (the first), once it has bars:
        // two samples, so the attempts below fall between samples.
        let bars = |svg: &str| -> Vec<f64> {
            svg.split("<rect")
                .skip(1)
                .filter_map(|r| r.split("height=\"").nth(1)?.split('"').next()?.parse().ok())
                .collect()
        };
        wait_for(PATIENCE, || chart().filter(|svg| !bars(svg).is_empty()))
            .expect("the chart has its first bar");
        backend.insert_many(30, "kind, queue", "'noop', 'b'");
        backend.wait_value(
            "SELECT count(*) FROM jobs WHERE state = 'succeeded';",
            "30",
            "B ran its jobs",
        );
        wait_for(PATIENCE, || {
            chart().filter(|svg| bars(svg).iter().any(|h| *h > 0.0))
        })
        .unwrap_or_else(|| {
            panic!(
                "{}: A's chart does not count B's attempts: {:?}",
                backend.name,
                chart()
            )
        });
        dashboard.stop();
        worker.stop();
        assert_eq!(
            backend.value("SELECT count(DISTINCT worker) FROM job_runs;"),
            "1",
            "{}: only B ran jobs",
            backend.name
        );
    }
}

/// The attempts chart's figures from the overview: (attempts, failed)
/// summed over its bars, from their titles; None before its first bar.
fn charted(port: u16) -> Option<(u64, u64)> {
    let page = ureq::get(&format!("http://127.0.0.1:{port}/"))
        .call()
        .ok()?
        .into_string()
        .ok()?;
    let svg = page.split("<svg").nth(1)?.split("</svg>").next()?;
    let mut bars = 0;
    let (mut attempts, mut failed) = (0, 0);
    for title in svg.split("<title>").skip(1) {
        // "14:05 UTC: 3 attempts, 1 failed"
        let figures = title.split("</title>").next()?.split(": ").nth(1)?;
        let mut words = figures.split(' ');
        attempts += words.next()?.parse::<u64>().ok()?;
        failed += words.nth(1)?.parse::<u64>().ok()?;
        bars += 1;
    }
    (bars > 0).then_some((attempts, failed))
}

/// On PostgreSQL an attempt takes its place (from a sequence) before its
/// transaction commits. The chart counts one that commits after a later
/// attempt was counted, once, and never a place whose transaction rolled
/// back. (SQLite takes places in commit order.)
#[test]
fn the_chart_counts_an_attempt_that_commits_after_a_later_one() {
    let port = free_port();
    for backend in common::homes_with(
        "latechart",
        &format!(
            "[daemon]\nqueues = [\"a\"]\nlease = \"1s\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"
        ),
    ) {
        let Some(schema) = &backend.schema else {
            continue;
        };
        backend.home.ok(&["migrate"]);
        // Jobs of a queue the daemon does not serve: the attempts below are
        // written by SQL clients, as by other daemons.
        schema
            .psql("INSERT INTO jobs (kind, queue) SELECT 'noop', 'b' FROM generate_series(1, 3);")
            .unwrap();
        let attempt = |job: i64, error: &str| common::pg::failed_attempt(job, "b", error);
        let daemon = backend.home.daemon_logging_to("d.log");
        let shows = |want: (u64, u64), what: &str| {
            wait_for(PATIENCE, || charted(port).filter(|got| *got == want)).unwrap_or_else(|| {
                panic!("{what}: the chart shows {:?}, not {want:?}", charted(port))
            });
        };
        shows((0, 0), "before any attempt");
        schema.psql(&attempt(1, "first")).unwrap();
        shows((1, 1), "one attempt");
        // The late one takes its place, then a later one commits and is
        // counted, then the late one commits.
        let mut client = postgres::Client::connect(&schema.url(), postgres::NoTls).unwrap();
        let mut late = client.transaction().unwrap();
        late.batch_execute(&attempt(2, "late")).unwrap();
        schema.psql(&attempt(3, "later")).unwrap();
        shows((2, 2), "the later attempt");
        late.commit().unwrap();
        shows((3, 3), "the attempt that committed after a later one");
        // A place whose transaction rolls back stays empty: nothing is
        // counted for it, and what follows is counted once.
        let mut gone = client.transaction().unwrap();
        gone.batch_execute(&attempt(2, "rolled back")).unwrap();
        gone.rollback().unwrap();
        schema.psql(&attempt(3, "after the rollback")).unwrap();
        shows((4, 4), "after a rolled-back attempt");
        daemon.stop();
    }
}

#[test]
fn a_job_page_shows_its_flow_as_a_tree_and_a_batch_page_its_progress() {
    let d = dash("", "");
    let enqueue = |args: &[&str]| -> String {
        let mut all = vec!["enqueue"];
        all.extend_from_slice(args);
        d.home.ok(&all).trim().to_string()
    };
    // A (an hour from now) → B → C, and A → D; a batch "a<b>" of two jobs
    // with a callback.
    let a = enqueue(&["noop", "--delay", "1h"]);
    let b = enqueue(&["noop", "--after", &a]);
    let c = enqueue(&["noop", "--after", &b]);
    let e = enqueue(&["noop", "--after", &a]);
    enqueue(&["noop", "--batch", "a<b>", "--delay", "1h"]);
    enqueue(&["noop", "--batch", "a<b>", "--delay", "1h"]);
    let callback = enqueue(&["noop", "--batch-callback", "a<b>"]);
    let _daemon = d.home.daemon();
    let page = d.page(&format!("/jobs/{a}"));
    let flow = &page[page.find("<ul id=\"flow\">").expect("a flow section")..];
    let tree = format!(
        "<li><strong><a href=\"/jobs/{a}\">{a}</a> <span class=\"\">queued</span></strong>\
         <ul><li><a href=\"/jobs/{b}\">{b}</a> <span class=\"\">waiting</span>\
         <ul><li><a href=\"/jobs/{c}\">{c}</a> <span class=\"\">waiting</span></li></ul></li>\
         <li><a href=\"/jobs/{e}\">{e}</a> <span class=\"\">waiting</span></li></ul></li></ul>"
    );
    assert!(
        flow.starts_with(&format!("<ul id=\"flow\">{tree}")),
        "{flow}"
    );
    let page = d.page(&format!("/jobs/{c}"));
    assert!(
        page.contains(&format!("<li>waits for <a href=\"/jobs/{b}\">{b}</a>")),
        "{page}"
    );
    let page = d.page(&format!("/jobs/{callback}"));
    assert!(
        page.contains("<th>callback of</th><td><a href=\"/batches/a%3Cb%3E\">a&lt;b&gt;</a>"),
        "{page}"
    );
    let page = d.page("/batches/a%3Cb%3E");
    assert!(page.contains("<h1>Batch a&lt;b&gt;</h1>"), "{page}");
    assert!(
        page.contains("value=\"0\"></progress> 0.0 % ended"),
        "{page}"
    );
    assert!(page.contains("<th>queued</th><td>2</td>"), "{page}");
    assert!(
        page.contains(&format!(
            "<th>sealed</th><td>yes, callback <a href=\"/jobs/{callback}\">{callback}</a>"
        )),
        "{page}"
    );
    let (status, body, _) = d.get("/batches/nothing");
    assert_eq!(status, 404, "{body}");
    if let Some(dom) = common::browser::dump_dom(&format!("{}/jobs/{a}", d.base)) {
        assert!(
            dom.contains(&format!("<a href=\"/jobs/{c}\">{c}</a>")),
            "{dom}"
        );
    }
}
