//! The web dashboard (docs/reference.md), served by the metrics listener: an
//! overview of the queues with charts of the last hour, the live daemons
//! and long-running jobs, a paged job list and a page per job.
//!
//! Pages are rendered on the server as plain HTML with an embedded style
//! sheet and SVG charts: no script, no build step, nothing fetched from
//! elsewhere. Every value that comes from the database is HTML-escaped
//! ([`escape`]): payloads, errors and even queue names are user input.
//! Payloads are shown with credential headers redacted.
//!
//! This module only renders; the listener ([`crate::metrics`]) routes
//! requests and reads the store on its own connection with short, limited
//! queries, so the dashboard never holds up the dispatcher.

use std::fmt::Write as _;

use crate::daemon::state::Sample;
use crate::fmt::{millis, time};
use crate::job::{Job, JobState};
use crate::kinds::Redaction;
use crate::store::{JobRun, Stats};

/// Jobs per page of the job list.
pub const PAGE: usize = 50;

/// This daemon's pools: busy slots and size of each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pools {
    /// IO jobs held now.
    pub io_busy: u64,
    /// IO threads.
    pub io_size: u64,
    /// CPU jobs held now.
    pub cpu_busy: u64,
    /// CPU worker processes.
    pub cpu_size: u64,
}

/// HTML-escapes text for an element or a quoted attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `text` percent-encoded but for the unreserved characters: a query
/// value or a path segment.
fn query_value(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}\
header{background:#1d2330;color:#fff;padding:10px 20px;display:flex;gap:20px;align-items:baseline}\
header a{color:#cfe0ff;text-decoration:none}main{padding:16px 20px}\
table{border-collapse:collapse;background:#fff;margin:8px 0 20px;min-width:50%}\
th,td{padding:5px 10px;border-bottom:1px solid #e3e6ea;text-align:left;vertical-align:top}\
th{background:#eef1f5}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.warn{color:#a33c00;font-weight:600}.dead{color:#b00020}.ok{color:#17733a}\
pre{background:#fff;border:1px solid #e3e6ea;padding:10px;overflow:auto;max-width:100ch;white-space:pre-wrap}\
.charts{display:flex;gap:24px;flex-wrap:wrap}figure{margin:0;background:#fff;padding:8px;border:1px solid #e3e6ea}\
figcaption{font-size:12px;color:#555}";

/// A whole page around `body`; `refresh` reloads it every few seconds.
pub fn page(title: &str, refresh: bool, body: &str) -> String {
    let refresh = if refresh {
        "<meta http-equiv=\"refresh\" content=\"5\">"
    } else {
        ""
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">{refresh}\
         <title>{} · jobd</title><style>{STYLE}</style></head><body>\
         <header><strong>jobd</strong><a href=\"/\">overview</a><a href=\"/jobs\">jobs</a>\
         <a href=\"/jobs?state=dead\">dead</a><a href=\"/keys\">keys</a><a href=\"/metrics\">metrics</a>\
         <a id=\"login\" href=\"/login\">log in</a></header>\
         <main>{body}</main></body></html>",
        escape(title)
    )
}

fn opt_ms(ms: Option<i64>) -> String {
    ms.map_or("-".to_string(), millis)
}

fn state_class(state: JobState) -> &'static str {
    match state {
        JobState::Succeeded => "ok",
        JobState::Dead => "dead",
        _ => "",
    }
}

/// A job's flow as the job page shows it: its parents, and its descendants
/// as an indented tree (depth first, at most [`Flow::SHOWN`] of them).
#[derive(Debug, Default)]
pub struct Flow {
    /// The job's parents and children, batch and sequence.
    pub relatives: crate::store::Relatives,
    /// Its descendants: depth (1 for a child), id, state.
    pub descendants: Vec<(usize, i64, String)>,
}

impl Flow {
    /// How many descendants the tree shows.
    pub const SHOWN: usize = 100;
}

fn batch_link(name: &str) -> String {
    format!(
        "<a href=\"/batches/{}\">{}</a>",
        query_value(name),
        escape(name)
    )
}

fn job_link(id: i64, state: &str) -> String {
    format!(
        "<a href=\"/jobs/{id}\">{id}</a> <span class=\"{}\">{}</span>",
        state.parse().map(state_class).unwrap_or(""),
        escape(state)
    )
}

/// The job page's flow section: empty for a job outside any flow.
fn flow_tree(job: &Job, flow: &Flow) -> String {
    let r = &flow.relatives;
    if r.parents.is_empty() && flow.descendants.is_empty() {
        return String::new();
    }
    let mut b = String::from("<h2>Flow</h2><ul id=\"flow\">");
    if !r.parents.is_empty() {
        let parents: Vec<String> = r.parents.iter().map(|(id, s)| job_link(*id, s)).collect();
        let _ = write!(
            b,
            "<li>waits for {}{}</li>",
            parents.join(", "),
            if r.run_always {
                " (runs whatever their outcome)"
            } else {
                ""
            }
        );
    }
    let _ = write!(
        b,
        "<li><strong>{}</strong>",
        job_link(job.id, job.state.as_str())
    );
    let mut depth = 0;
    for (d, id, state) in &flow.descendants {
        while depth < *d {
            b.push_str("<ul>");
            depth += 1;
        }
        while depth > *d {
            b.push_str("</li></ul>");
            depth -= 1;
        }
        if depth == *d && !b.ends_with("<ul>") {
            b.push_str("</li>");
        }
        let _ = write!(b, "<li>{}", job_link(*id, state));
    }
    while depth > 0 {
        b.push_str("</li></ul>");
        depth -= 1;
    }
    b.push_str("</li></ul>");
    if flow.descendants.len() >= Flow::SHOWN {
        let _ = write!(b, "<p>The first {} descendants.</p>", Flow::SHOWN);
    }
    b
}

/// A batch: its progress, counts and callback.
pub fn batch(info: &crate::store::BatchInfo) -> String {
    let c = &info.counts;
    let jobs: i64 = info.states.values().sum();
    let total = if info.sealed { c.total } else { jobs };
    let ended = c.succeeded + c.dead + c.cancelled;
    let percent = if total > 0 {
        100.0 * ended as f64 / total as f64
    } else {
        100.0
    };
    let mut b = format!(
        "<h1>Batch {}</h1><p><progress id=\"batch-progress\" max=\"100\" value=\"{percent:.0}\"></progress> \
         {percent:.1} % ended</p><table id=\"batch\">",
        escape(&c.name)
    );
    let mut row = |k: &str, v: String| {
        let _ = write!(b, "<tr><th>{k}</th><td>{v}</td></tr>");
    };
    row("jobs", total.to_string());
    row("succeeded", c.succeeded.to_string());
    row("dead", c.dead.to_string());
    row("cancelled", c.cancelled.to_string());
    for state in ["waiting", "queued", "running"] {
        row(
            state,
            info.states.get(state).copied().unwrap_or(0).to_string(),
        );
    }
    row(
        "sealed",
        match (info.sealed, &info.callback) {
            (true, Some((id, state))) => format!("yes, callback {}", job_link(*id, state)),
            (true, None) => "yes, no callback".into(),
            (false, _) => "no".into(),
        },
    );
    row("created", time(info.created_at));
    row("finished", info.finished_at.map_or("-".into(), time));
    b.push_str("</table>");
    page(&format!("batch {}", c.name), info.finished_at.is_none(), &b)
}

/// The overview: queues, charts, long-running jobs, live daemons.
// Long: the overview page's HTML, section by section in page order.
pub fn overview(
    stats: &Stats,
    long_running: &[Job],
    threshold_ms: i64,
    history: &[Sample],
    pools: Pools,
    csrf: Option<&str>,
) -> String {
    let mut b = String::new();
    let _ = write!(b, "<h1>Queues</h1><table id=\"queues\"><tr><th>queue</th><th>ready</th><th>scheduled</th>\
        <th>running</th><th>succeeded 1h</th><th>dead 1h</th><th>lag</th><th>p50</th><th>p95</th><th></th></tr>");
    for q in &stats.queues {
        let name = escape(&q.queue);
        let link = query_value(&q.queue);
        let _ = write!(
            b,
            "<tr data-queue=\"{name}\"><td><a href=\"/jobs?queue={link}\">{name}</a>{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n ok\">{}</td><td class=\"n dead\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            if q.paused {
                " <span class=\"warn\">paused</span>"
            } else {
                ""
            },
            q.ready,
            q.scheduled,
            q.running,
            q.succeeded_1h,
            q.dead_1h,
            millis(q.lag_ms),
            opt_ms(q.p50_ms),
            opt_ms(q.p95_ms),
            csrf.map_or(String::new(), |csrf| {
                let (verb, label) = if q.paused {
                    ("resume", "resume")
                } else {
                    ("pause", "pause")
                };
                button(
                    &format!("/queues/{}/{verb}", query_value(&q.queue)),
                    label,
                    csrf,
                )
            }),
        );
    }
    b.push_str("</table>");
    if stats.queues.is_empty() {
        b.push_str("<p>No jobs yet.</p>");
    }
    b.push_str("<div class=\"charts\">");
    b.push_str(&chart(
        "Attempts per minute, last hour (red: failed)",
        &last_hour(&per_minute(history), stats.now, |a, b| a + b),
        |m| m.1 + m.2,
        Some(|m: &(i64, u64, u64)| m.2),
        |m| format!("{} attempts, {} failed", m.1 + m.2, m.2),
    ));
    let lags: Vec<(i64, u64, u64)> = history
        .iter()
        .map(|s| (s.at, s.lag_ms.max(0) as u64, 0))
        .collect();
    b.push_str(&chart::<fn(&(i64, u64, u64)) -> u64>(
        "Queue lag (ms), last hour",
        &last_hour(&lags, stats.now, u64::max),
        |m| m.1,
        None,
        |m| format!("lag up to {} ms", m.1),
    ));
    b.push_str("</div>");

    let _ = write!(
        b,
        "<h2>Running longer than {}</h2>",
        escape(&millis(threshold_ms))
    );
    if long_running.is_empty() {
        b.push_str("<p id=\"long-running\">None.</p>");
    } else {
        b.push_str("<table id=\"long-running\"><tr><th>id</th><th>queue</th><th>kind</th><th>started</th><th>running for</th><th>worker</th></tr>");
        for job in long_running {
            let started = job.started_at.unwrap_or(stats.now);
            let _ = write!(
                b,
                "<tr><td><a href=\"/jobs/{id}\">{id}</a></td><td>{}</td><td>{}</td><td>{}</td>\
                 <td class=\"n warn\">{}</td><td>{}</td></tr>",
                escape(&job.queue),
                escape(&job.kind),
                time(started),
                millis(stats.now.saturating_sub(started)),
                escape(job.worker.as_deref().unwrap_or("-")),
                id = job.id,
            );
        }
        b.push_str("</table>");
    }

    b.push_str("<h2>Daemons</h2><table id=\"daemons\"><tr><th>worker</th><th>version</th><th>queues</th><th>running</th><th>heartbeat</th><th>up since</th></tr>");
    for w in &stats.workers {
        let age = stats.now.saturating_sub(w.heartbeat_at);
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n{}\">{} ago</td><td>{}</td></tr>",
            escape(&w.id),
            escape(&w.version),
            escape(&w.queues),
            w.running,
            if age > 15_000 { " warn" } else { "" },
            millis(age.max(0)),
            time(w.started_at),
        );
    }
    b.push_str("</table>");
    let warm: Vec<_> = stats
        .workers
        .iter()
        .flat_map(|w| w.handlers.iter().map(move |h| (w, h)))
        .collect();
    if !warm.is_empty() {
        b.push_str("<h2>Warm handlers</h2><table id=\"handlers\"><tr><th>handler</th><th>pid</th><th>jobs</th><th>memory</th><th>started</th><th>worker</th></tr>");
        for (w, h) in warm {
            let _ = write!(
                b,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{:.1} MiB</td><td>{}</td><td>{}</td></tr>",
                escape(&h.name),
                h.pid,
                h.jobs,
                h.rss_bytes as f64 / (1024.0 * 1024.0),
                time(h.started_at),
                escape(&w.id),
            );
        }
        b.push_str("</table>");
    }
    let _ = write!(
        b,
        "<p id=\"pools\">This daemon: IO pool {} of {} busy, CPU pool {} of {} busy \
         (busy counts jobs claimed ahead for a thread too).</p>",
        pools.io_busy, pools.io_size, pools.cpu_busy, pools.cpu_size
    );
    page("overview", true, &b)
}

/// Attempts per minute from the cumulative samples: (minute, succeeded,
/// failed).
fn per_minute(history: &[Sample]) -> Vec<(i64, u64, u64)> {
    let mut out: Vec<(i64, u64, u64)> = Vec::new();
    for pair in history.windows(2) {
        let minute = pair[1].at / 60_000 * 60_000;
        let done = pair[1].done.saturating_sub(pair[0].done);
        let failed = pair[1].failed.saturating_sub(pair[0].failed);
        match out.last_mut() {
            Some(last) if last.0 == minute => {
                last.1 += done;
                last.2 += failed;
            }
            _ => out.push((minute, done, failed)),
        }
    }
    out
}

/// `points` spread over the last hour's 60 one-minute slots, oldest first
/// and the current minute last (None: no data that minute), values of one
/// minute combined by `merge`: a chart always spans the hour, so one
/// minute of data is one narrow bar at the right, not one bar stretched
/// across the whole chart.
fn last_hour(
    points: &[(i64, u64, u64)],
    now: i64,
    merge: fn(u64, u64) -> u64,
) -> Vec<Option<(i64, u64, u64)>> {
    let end = now.div_euclid(60_000) * 60_000;
    let start = end - 59 * 60_000;
    let mut slots: Vec<Option<(i64, u64, u64)>> = vec![None; 60];
    for &(at, a, b) in points {
        let minute = at.div_euclid(60_000) * 60_000;
        if (start..=end).contains(&minute) {
            let slot = slots[((minute - start) / 60_000) as usize].get_or_insert((minute, 0, 0));
            slot.1 = merge(slot.1, a);
            slot.2 = merge(slot.2, b);
        }
    }
    slots
}

/// A bar chart as inline SVG: one slot per point, a bar `total` high where
/// there is data, the part `red` of it drawn red, and each bar titled with
/// its minute and `figures` (shown on hover, and read by tests).
fn chart<F: Fn(&(i64, u64, u64)) -> u64>(
    caption: &str,
    points: &[Option<(i64, u64, u64)>],
    total: impl Fn(&(i64, u64, u64)) -> u64,
    red: Option<F>,
    figures: impl Fn(&(i64, u64, u64)) -> String,
) -> String {
    const W: f64 = 480.0;
    const H: f64 = 120.0;
    let max = points
        .iter()
        .flatten()
        .map(&total)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let width = W / points.len().max(1) as f64;
    let mut bars = String::new();
    for (i, p) in points.iter().enumerate() {
        let Some(p) = p else { continue };
        let x = i as f64 * width;
        let h = total(p) as f64 / max * H;
        let _ = write!(
            bars,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"#3d7bd9\">\
             <title>{}: {}</title></rect>",
            H - h,
            (width - 1.0).max(1.0),
            escape(minute(p.0).as_str()),
            escape(&figures(p))
        );
        if let Some(red) = &red {
            let r = red(p) as f64 / max * H;
            if r > 0.0 {
                let _ = write!(
                    bars,
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{r:.1}\" fill=\"#c62828\"/>",
                    H - r,
                    (width - 1.0).max(1.0)
                );
            }
        }
    }
    format!(
        "<figure><svg width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\">{bars}</svg>\
         <figcaption>{} (peak {})</figcaption></figure>",
        escape(caption),
        max as u64
    )
}

/// The minute starting at `ms`, as `14:05 UTC`.
fn minute(ms: i64) -> String {
    let t = time(ms);
    match (t.get(11..16), t.get(23..)) {
        (Some(hh_mm), Some(zone)) => format!("{hh_mm}{zone}"),
        _ => t,
    }
}

/// What the job list shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Only this state.
    pub state: Option<JobState>,
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only ids below this (the next page).
    pub before: Option<i64>,
}

impl ListQuery {
    /// From a URL's query string; unknown keys are ignored, an empty
    /// value is no filter, and a bad value is said (`state=nonsense` listed
    /// every job as if it were a filter).
    pub fn parse(query: &str) -> Result<ListQuery, String> {
        let mut q = ListQuery::default();
        for (key, value) in form_pairs(query) {
            match key.as_str() {
                "state" if !value.is_empty() => {
                    q.state = Some(
                        value
                            .parse()
                            .map_err(|_| format!("state {value:?} is none of a job's states"))?,
                    )
                }
                "queue" if !value.is_empty() => q.queue = Some(value),
                "kind" if !value.is_empty() => q.kind = Some(value),
                "before" if !value.is_empty() => {
                    q.before = Some(
                        value
                            .parse()
                            .ok()
                            .filter(|&b: &i64| b > 0)
                            .ok_or_else(|| format!("before {value:?} is not a job id"))?,
                    )
                }
                _ => {}
            }
        }
        Ok(q)
    }

    fn link(&self, before: Option<i64>) -> String {
        let mut parts = Vec::new();
        if let Some(s) = self.state {
            parts.push(format!("state={}", s.as_str()));
        }
        if let Some(q) = &self.queue {
            parts.push(format!("queue={}", query_value(q)));
        }
        if let Some(k) = &self.kind {
            parts.push(format!("kind={}", query_value(k)));
        }
        if let Some(b) = before {
            parts.push(format!("before={b}"));
        }
        format!("/jobs?{}", parts.join("&"))
    }
}

/// Decodes `a=1&b=x%20y` (also a urlencoded form body).
pub fn form_pairs(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Decodes percent-escapes (and `+` as a space, as forms send it).
pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The job list: a page of jobs, newest first, with filters.
pub fn jobs(query: &ListQuery, jobs: &[Job], redaction: &Redaction) -> String {
    let mut b = String::from("<h1>Jobs</h1><form method=\"get\" action=\"/jobs\">state <select name=\"state\"><option value=\"\">any</option>");
    for state in JobState::ALL {
        let selected = if query.state == Some(state) {
            " selected"
        } else {
            ""
        };
        let _ = write!(b, "<option{selected}>{}</option>", state.as_str());
    }
    let _ = write!(
        b,
        "</select> queue <input name=\"queue\" value=\"{}\"> kind <input name=\"kind\" value=\"{}\"> <button>filter</button></form>",
        escape(query.queue.as_deref().unwrap_or("")),
        escape(query.kind.as_deref().unwrap_or(""))
    );
    b.push_str("<table id=\"jobs\"><tr><th>id</th><th>state</th><th>queue</th><th>kind</th><th>attempts</th><th>run at</th><th>last error</th></tr>");
    for job in jobs {
        let error: String = redaction
            .text(job.last_error.as_deref().unwrap_or(""))
            .chars()
            .take(120)
            .collect();
        let _ = write!(
            b,
            "<tr><td><a href=\"/jobs/{id}\">{id}</a></td><td class=\"{}\">{}</td><td>{}</td><td>{}</td>\
             <td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
            state_class(job.state),
            job.state.as_str(),
            escape(&job.queue),
            escape(&job.kind),
            job.attempts,
            time(job.run_at),
            escape(&error),
            id = job.id,
        );
    }
    b.push_str("</table>");
    if jobs.is_empty() {
        b.push_str("<p>No jobs match.</p>");
    }
    if jobs.len() == PAGE {
        let last = jobs.last().map(|j| j.id);
        let _ = write!(
            b,
            "<p><a id=\"next\" href=\"{}\">older →</a></p>",
            escape(&query.link(last))
        );
    }
    page("jobs", false, &b)
}

/// One job: its fields, payload (credentials redacted), result, error and
/// attempt history; `actions` is the buttons section (empty when
/// read-only).
// Long: the job page's HTML, section by section in page order.
pub fn job(
    job: &Job,
    runs: &[JobRun],
    flow: &Flow,
    actions: &str,
    redaction: &Redaction,
) -> String {
    let pretty = |text: &str| {
        serde_json::from_str::<serde_json::Value>(text)
            .and_then(|v| serde_json::to_string_pretty(&v))
            .unwrap_or_else(|_| text.to_string())
    };
    let mut b = format!("<h1>Job {}</h1>{actions}<table id=\"job\">", job.id);
    let mut row = |k: &str, v: String| {
        let _ = write!(b, "<tr><th>{k}</th><td>{v}</td></tr>");
    };
    row(
        "state",
        format!(
            "<span class=\"{}\">{}</span>",
            state_class(job.state),
            job.state.as_str()
        ),
    );
    row("queue", escape(&job.queue));
    row("kind", escape(&job.kind));
    row("priority", job.priority.to_string());
    row(
        "attempts",
        format!(
            "{} of {}",
            job.attempts,
            job.max_attempts
                .map_or("the default".to_string(), |m| m.to_string())
        ),
    );
    row("run at", time(job.run_at));
    row("created", time(job.created_at));
    row("started", job.started_at.map_or("-".into(), time));
    row("finished", job.finished_at.map_or("-".into(), time));
    row("worker", escape(job.worker.as_deref().unwrap_or("-")));
    if let Some(key) = &job.unique_key {
        row("unique key", escape(key));
    }
    if let Some(key) = &job.limit_key {
        row("limit key", escape(key));
    }
    if let Some((fraction, note)) = job.running_progress() {
        row(
            "progress",
            format!(
                "<progress id=\"job-progress\" max=\"100\" value=\"{:.0}\"></progress> {:.0} % {}",
                fraction * 100.0,
                fraction * 100.0,
                escape(&note)
            ),
        );
    }
    if let Some(batch) = flow.relatives.batch.as_deref() {
        row("batch", batch_link(batch));
    }
    if let Some(batch) = flow.relatives.callback_for.as_deref() {
        row("callback of", batch_link(batch));
    }
    if let Some(sequence) = &flow.relatives.sequence {
        row("sequence", escape(sequence));
    }
    b.push_str("</table>");
    b.push_str(&flow_tree(job, flow));
    if let Some(error) = &job.last_error {
        let _ = write!(
            b,
            "<h2>Last error</h2>{}",
            shown(
                job.id,
                "error",
                "last-error",
                &redaction.text(error),
                &pretty
            )
        );
    }
    let payload = redaction.payload(&job.kind, &job.payload);
    let _ = write!(
        b,
        "<h2>Payload</h2>{}",
        shown(job.id, "payload", "payload", &payload, &pretty)
    );
    if let Some(result) = &job.result {
        let _ = write!(
            b,
            "<h2>Result</h2>{}",
            shown(job.id, "result", "result", result, &pretty)
        );
    }
    b.push_str("<h2>Attempts</h2><table id=\"runs\"><tr><th>attempt</th><th>outcome</th><th>worker</th><th>started</th><th>duration</th><th>error</th></tr>");
    for run in runs {
        let _ = write!(
            b,
            "<tr><td class=\"n\">{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            run.attempt,
            run.outcome.as_str(),
            escape(&run.worker),
            time(run.started_at),
            millis(run.duration_ms),
            escape(&redaction.text(run.error.as_deref().unwrap_or(""))),
        );
    }
    b.push_str("</table>");
    page(&format!("job {}", job.id), false, &b)
}

/// The most of one value (payload, result, error) a job page shows; the
/// whole value is a download (`/jobs/ID/payload`…), so a page stays small
/// however large the value.
pub const SHOWN: usize = 64 * 1024;

/// One value as a `<pre>`: pretty-printed when it fits in [`SHOWN`], else
/// its first [`SHOWN`] bytes and a link to download the whole.
fn shown(
    id: i64,
    field: &str,
    html_id: &str,
    value: &str,
    pretty: &dyn Fn(&str) -> String,
) -> String {
    if value.len() <= SHOWN {
        return format!("<pre id=\"{html_id}\">{}</pre>", escape(&pretty(value)));
    }
    let mut end = SHOWN;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "<pre id=\"{html_id}\">{}…</pre><p>Shown: the first {} of {} bytes. \
         <a id=\"{html_id}-download\" href=\"/jobs/{id}/{field}\" download>Download the whole {field}</a>.</p>",
        escape(&value[..end]),
        end,
        value.len()
    )
}

/// A small page for an error or a refusal.
pub fn message(title: &str, text: &str) -> String {
    page(
        title,
        false,
        &format!("<h1>{}</h1><p>{}</p>", escape(title), escape(text)),
    )
}

/// A POST button carrying the CSRF token.
pub fn button(action: &str, label: &str, csrf: &str) -> String {
    format!(
        "<form method=\"post\" action=\"{}\" style=\"display:inline\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button>{}</button></form>",
        escape(action),
        escape(csrf),
        escape(label)
    )
}

/// Keys shown on the keys page at most (the rest are counted).
pub const KEYS_SHOWN: usize = 500;

/// The keys page: every key with jobs running on any daemon and every key
/// no job may start under now, as `jobd keys` shows them
/// ([`crate::keys::KeyRules::row`]): its limits, running against its
/// concurrency, ready jobs, rate, and why its jobs wait. Keys are user
/// input: escaped like everything else.
pub fn keys(rules: &crate::keys::KeyRules, keys: &[crate::keys::KeyActivity], now: i64) -> String {
    let mut b = String::from("<h1>Keys</h1>");
    if keys.is_empty() {
        b.push_str(
            "<p id=\"no-keys\">No job key has jobs running, is blocked or is held by its rate.</p>",
        );
        return page("keys", true, &b);
    }
    b.push_str("<table id=\"keys\"><tr>");
    for column in crate::keys::KEY_COLUMNS {
        let _ = write!(b, "<th>{}</th>", column.to_lowercase());
    }
    b.push_str("</tr>");
    for activity in keys.iter().take(KEYS_SHOWN) {
        let hold = rules.status(activity, now).hold;
        let class = match hold {
            crate::keys::KeyHold::Blocked { .. } => "dead",
            crate::keys::KeyHold::Rate { .. } | crate::keys::KeyHold::Full => "warn",
            crate::keys::KeyHold::Open => "ok",
        };
        let hold = hold.word();
        let cells = rules.row(activity, now);
        let _ = write!(
            b,
            "<tr data-key=\"{}\" data-state=\"{hold}\">",
            escape(&activity.key)
        );
        for (i, cell) in cells.iter().enumerate() {
            let class = if i + 1 == cells.len() { class } else { "" };
            let _ = write!(b, "<td class=\"{class}\">{}</td>", escape(cell));
        }
        b.push_str("</tr>");
    }
    b.push_str("</table>");
    if keys.len() > KEYS_SHOWN {
        let _ = write!(
            b,
            "<p>The first {KEYS_SHOWN} of {} keys, by key; <code>jobd keys</code> lists them all.</p>",
            keys.len()
        );
    }
    page("keys", true, &b)
}

/// The login page.
pub fn login(failed: bool) -> String {
    let note = if failed {
        "<p class=\"dead\">That token is not the one configured.</p>"
    } else {
        ""
    };
    page(
        "log in",
        false,
        &format!(
            "<h1>Log in</h1>{note}<p>Actions (retry, cancel, pause, resume) need the dashboard token \
             (<code>metrics.dashboard_token</code>).</p><form method=\"post\" action=\"/login\">\
             <input type=\"password\" name=\"token\" autocomplete=\"current-password\"> <button>log in</button></form>"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_makes_markup_inert() {
        assert_eq!(
            escape(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
    }

    #[test]
    fn queries_decode_and_links_encode() {
        assert!(ListQuery::parse("state=nonsense").is_err());
        assert!(ListQuery::parse("before=-1").is_err());
        let q = ListQuery::parse("state=dead&queue=a%20b%26c&kind=&before=40&x=1").unwrap();
        assert_eq!(q.state, Some(JobState::Dead));
        assert_eq!(q.queue.as_deref(), Some("a b&c"));
        assert_eq!(q.kind, None);
        assert_eq!(q.before, Some(40));
        assert_eq!(q.link(Some(7)), "/jobs?state=dead&queue=a%20b%26c&before=7");
        assert_eq!(
            form_pairs("a=%zz&b=%4"),
            [("a".into(), "%zz".into()), ("b".into(), "%4".into())]
        );
    }

    #[test]
    fn throughput_is_per_minute_from_cumulative_samples() {
        let s = |at, done, failed| Sample {
            at,
            done,
            failed,
            lag_ms: 0,
        };
        let h = [
            s(0, 0, 0),
            s(30_000, 10, 1),
            s(60_000, 25, 1),
            s(90_000, 30, 4),
        ];
        assert_eq!(per_minute(&h), [(0, 10, 1), (60_000, 20, 3)]);
        // One minute of data: 60 slots, the data in the last one.
        let slots = last_hour(&per_minute(&h), 60_000 + 5_000, |a, b| a + b);
        assert_eq!(slots.len(), 60);
        assert_eq!(slots[59], Some((60_000, 20, 3)));
        assert_eq!(slots[58], Some((0, 10, 1)));
        assert!(slots[..58].iter().all(Option::is_none));
    }
}
