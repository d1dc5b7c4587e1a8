//! The web layer's routes: with `metrics.listen` set, [`crate::web::listener`]
//! hands each request here, one at a time on the pages' thread: `GET
//! /metrics` ([`crate::metrics`]), the dashboard's pages ([`crate::web::dashboard`])
//! and forms (behind [`crate::web::auth`]), and `/healthz` on a pool of its own.
//!
//! `/healthz` answers 200 while the database answers a fresh connection,
//! the dispatcher loop turned within [`HEALTH_STALE`], its store operations
//! have not been failing for longer than that, and the SQLite file is the
//! one the daemon opened; else 503 with the reason.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::daemon::state::DaemonState;
use crate::event;
use crate::job::now_ms;
use crate::metrics::{Metrics, MetricsError};
use crate::store::{CancelResult, RetryResult, Store};
use crate::web::auth::{self, Caller, Sessions, COOKIE, SESSION_MS};
use crate::web::listener::{Listener, Reply, Request, HTML, TEXT};

/// A dispatcher loop that has not turned for this long is unhealthy. It
/// turns at least once a second when idle.
pub const HEALTH_STALE: Duration = Duration::from_secs(5);

/// Whether the daemon is healthy: its database answers a fresh connection
/// and its dispatcher loop turned lately. `Err` says why not.
pub fn health(config: &Config, state: &DaemonState) -> Result<(), String> {
    let failing = state.failing_since.load(Ordering::Relaxed) as i64;
    if failing > 0 && now_ms() - failing > HEALTH_STALE.as_millis() as i64 {
        let last = state
            .last_failure
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default();
        return Err(format!(
            "the dispatcher's claims and outcome writes have failed for {}: {last}",
            humantime::format_duration(Duration::from_secs(((now_ms() - failing) / 1000) as u64))
        ));
    }
    let mut store = crate::store::open(&config.database, crate::store::OpenMode::Existing)
        .map_err(|e| format!("the database does not answer: {e}"))?;
    store
        .change_counter()
        .map_err(|e| format!("the database does not answer: {e}"))?;
    let last = state.last_turn.load(Ordering::Relaxed) as i64;
    let idle = Duration::from_millis((now_ms() - last).max(0) as u64);
    if idle > HEALTH_STALE {
        return Err(format!(
            "the dispatcher loop has not turned for {}",
            humantime::format_duration(Duration::from_millis(idle.as_millis() as u64))
        ));
    }
    Ok(())
}

/// Binds `metrics.listen` (an error stops start-up) and serves it through
/// [`crate::web::listener`]: pages on a thread of their own with their own
/// database connection, `/healthz` beside them.
pub fn serve(
    addr: SocketAddr,
    config: Config,
    metrics: Arc<Metrics>,
    state: Arc<DaemonState>,
) -> Result<Listener, MetricsError> {
    let listen = |source: std::io::Error| MetricsError::Listen {
        addr,
        source: Box::new(source),
    };
    let socket = std::net::TcpListener::bind(addr).map_err(listen)?;
    let health_config = config.clone();
    let health_shared = Arc::clone(&state);
    let health = Arc::new(move || match health(&health_config, &health_shared) {
        Ok(()) => Reply::text(200, "ok\n"),
        Err(why) => Reply::text(503, format!("{why}\n")),
    });
    let listener = crate::web::listener::serve(
        socket,
        crate::web::listener::Handlers {
            pages: Box::new(move || {
                let mut pages = Pages::new(config, metrics, state);
                Box::new(move |request| pages.answer(request))
            }),
            health,
        },
    )
    .map_err(|e| MetricsError::Listen {
        addr,
        source: Box::new(e),
    })?;
    event!(Info, "metrics.listening", address:% = addr);
    Ok(listener)
}

fn html(status: u16, body: String) -> Reply {
    Reply::new(status, body, HTML)
}

fn message(status: u16, title: &str, text: &str) -> Reply {
    html(status, crate::web::dashboard::message(title, text))
}

/// 303 to `location`, the answer to a form.
fn see_other(location: &str) -> Reply {
    let mut reply = Reply::new(303, String::new(), TEXT);
    reply.headers.push(("Location", location.to_string()));
    reply
}

/// Failed logins allowed per client address in [`LOGIN_WINDOW_MS`];
/// further tries get 429 until the window has passed.
pub const LOGIN_TRIES: usize = 5;
/// The window failed logins are counted in.
pub const LOGIN_WINDOW_MS: i64 = 60_000;
/// Client addresses whose failed logins are remembered; beyond, the
/// oldest are forgotten (so a flood of addresses cannot grow the table).
const LOGIN_CLIENTS: usize = 10_000;

/// The listener's own connection, opened on first use and dropped after an
/// error so the next request starts afresh.
struct Db {
    config: Arc<Config>,
    store: Option<Box<dyn Store>>,
}

impl Db {
    fn with<T>(
        &mut self,
        f: impl FnOnce(&mut dyn Store) -> Result<T, String>,
    ) -> Result<T, String> {
        if self.store.is_none() {
            self.store = Some(
                crate::store::open(&self.config.database, crate::store::OpenMode::Existing)
                    .map_err(|e| format!("the database does not answer: {e}"))?,
            );
        }
        let result = f(self.store.as_mut().expect("opened above").as_mut());
        if result.is_err() {
            self.store = None;
        }
        result
    }
}

/// The pages' state: the database connection, the sessions, the token and
/// the failed logins by client.
struct Pages {
    db: Db,
    metrics: Arc<Metrics>,
    state: Arc<DaemonState>,
    sessions: Sessions,
    token: Option<String>,
    /// Client address → times of its failed logins in the last window.
    failed_logins: std::collections::HashMap<std::net::IpAddr, Vec<i64>>,
}

impl Pages {
    fn new(config: Config, metrics: Arc<Metrics>, state: Arc<DaemonState>) -> Pages {
        let token = config
            .metrics
            .dashboard_token
            .as_ref()
            .map(|t| t.expose().to_string());
        Pages {
            db: Db {
                config: Arc::new(config),
                store: None,
            },
            metrics,
            state,
            sessions: Sessions::default(),
            token,
            failed_logins: Default::default(),
        }
    }

    fn answer(&mut self, request: Request) -> Reply {
        let path = request.path.as_str();
        let open = matches!(path, "/metrics" | "/healthz");
        // Pages hold payloads: answer only names the operator gave, so a
        // DNS-rebound name in a browser cannot read them.
        if !open {
            if let Err(why) = host_allowed(
                request.header("host"),
                &self.db.config.metrics.allowed_hosts,
            ) {
                return Reply::text(421, format!("{why}\n"));
            }
        }
        let now = now_ms();
        let cookie = request.header("cookie");
        // A bearer token is a login too: it counts toward the same limit
        // per address, and is refused while that address is held back
        // (wrong ones were neither counted nor logged, so a script could
        // guess the token past the login page's limit).
        let bearer = (request.header("authorization"))
            .is_some_and(|a| a.starts_with("Bearer ") && self.token.is_some());
        if bearer {
            if let Some(refused) = self.held_back(request.peer, now) {
                return refused;
            }
        }
        let caller = self.sessions.caller(
            self.token.as_deref(),
            request.header("authorization"),
            cookie,
            now,
        );
        if bearer && caller != Caller::Bearer {
            self.login_failed(request.peer, now, "bearer");
        }
        // HEAD is GET without the body (the listener sends none for it):
        // health checkers and load balancers probe with it.
        let method = match request.method.as_str() {
            "HEAD" => "GET",
            other => other,
        };
        match (method, path) {
            ("GET", "/login") => match caller {
                Caller::ReadOnly => read_only(),
                _ => html(200, crate::web::dashboard::login(false)),
            },
            ("POST", "/login") => {
                let form = form(&request.body);
                self.login(&form, request.peer, now)
            }
            // With a token configured every page needs it; Prometheus's
            // scrape and the supervisor's probe stay open.
            ("GET", _) if caller == Caller::Anonymous && !open => see_other("/login"),
            ("GET", _) => get_page(
                path,
                &request.query,
                &mut self.db,
                &self.metrics,
                &self.state,
                &caller,
            ),
            ("POST", "/metrics" | "/healthz") => {
                let mut reply = Reply::text(405, "only GET is served here\n");
                reply.headers.push(("Allow", "GET, HEAD".to_string()));
                reply
            }
            ("POST", _) => {
                let form = form(&request.body);
                post(
                    path,
                    &form,
                    &caller,
                    &mut self.sessions,
                    &mut self.db,
                    cookie,
                    now,
                )
            }
            _ => {
                let mut reply = Reply::text(405, "only GET and POST are served here\n");
                let allow = if open { "GET, HEAD" } else { "GET, HEAD, POST" };
                reply.headers.push(("Allow", allow.to_string()));
                reply
            }
        }
    }

    /// The 429 for an address with [`LOGIN_TRIES`] failed logins (form or
    /// bearer token) in the last minute; None while it may try.
    fn held_back(&mut self, peer: std::net::IpAddr, now: i64) -> Option<Reply> {
        self.failed_logins
            .retain(|_, times| times.iter().any(|t| now - t < LOGIN_WINDOW_MS));
        let failures = self.failed_logins.get_mut(&peer)?;
        failures.retain(|t| now - t < LOGIN_WINDOW_MS);
        if failures.len() < LOGIN_TRIES {
            return None;
        }
        event!(Warn, "dashboard.login_limited", client:% = peer);
        let mut reply = message(
            429,
            "Too many tries",
            &format!("{LOGIN_TRIES} logins failed from this address within a minute; wait a minute and try again."),
        );
        reply.headers.push(("Retry-After", "60".to_string()));
        Some(reply)
    }

    /// Counts and logs a failed login from `peer` (`via` the login form or
    /// a bearer token), keeping at most [`LOGIN_CLIENTS`] addresses.
    fn login_failed(&mut self, peer: std::net::IpAddr, now: i64, via: &str) {
        let failures = self.failed_logins.entry(peer).or_default();
        failures.push(now);
        event!(
            Warn,
            "dashboard.login_failed",
            client:% = peer,
            via = via,
            failures = failures.len()
        );
        if self.failed_logins.len() > LOGIN_CLIENTS {
            if let Some(oldest) = self
                .failed_logins
                .iter()
                .min_by_key(|(_, t)| t.last().copied().unwrap_or(0))
                .map(|(ip, _)| *ip)
            {
                self.failed_logins.remove(&oldest);
            }
        }
    }

    /// `POST /login`: at most [`LOGIN_TRIES`] failures a minute per client
    /// address, each one logged.
    fn login(
        &mut self,
        form: &std::collections::HashMap<String, String>,
        peer: std::net::IpAddr,
        now: i64,
    ) -> Reply {
        let Some(token) = self.token.clone() else {
            return read_only();
        };
        if let Some(refused) = self.held_back(peer, now) {
            return refused;
        }
        let given = form.get("token").map(String::as_str).unwrap_or("");
        if !auth::same(given, &token) {
            self.login_failed(peer, now, "form");
            return html(403, crate::web::dashboard::login(true));
        }
        self.failed_logins.remove(&peer);
        match self.sessions.open(now) {
            Ok((id, _)) => {
                event!(Info, "dashboard.login", client:% = peer);
                let mut reply = see_other("/");
                reply.headers.push((
                    "Set-Cookie",
                    format!(
                        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
                        SESSION_MS / 1000
                    ),
                ));
                reply
            }
            Err(e) => message(503, "Unavailable", &format!("cannot start a session: {e}")),
        }
    }
}

fn form(body: &[u8]) -> std::collections::HashMap<String, String> {
    crate::web::dashboard::form_pairs(&String::from_utf8_lossy(body))
        .into_iter()
        .collect()
}

/// Whether a page may be served for this `Host` header: IP literals and
/// `localhost` always (a rebinding attack needs a name), a missing header
/// (HTTP/1.0) too, and any name in `metrics.allowed_hosts`.
pub fn host_allowed(host: Option<&str>, allowed: &[String]) -> Result<(), String> {
    let Some(host) = host else {
        return Ok(());
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            .map_or(host, |(name, _)| name)
    };
    let name = name.trim_end_matches('.');
    if name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
    {
        return Ok(());
    }
    Err(format!(
        "the Host {host:?} is not this dashboard's: add it to metrics.allowed_hosts to serve pages under that name"
    ))
}

/// This daemon's pool figures, as the dispatcher last published them.
fn pools(state: &DaemonState) -> crate::web::dashboard::Pools {
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    crate::web::dashboard::Pools {
        io_busy: load(&state.io_busy),
        io_size: load(&state.io_size),
        cpu_busy: load(&state.cpu_busy),
        cpu_size: load(&state.cpu_size),
    }
}

fn read_only() -> Reply {
    message(
        403,
        "Read-only",
        "This dashboard is read-only: set metrics.dashboard_token to allow retry, cancel, pause and resume.",
    )
}

/// The POST routes: log in and out, and the actions.
// Long: one arm per dashboard action, each checking the caller and answering in words.
fn post(
    path: &str,
    form: &std::collections::HashMap<String, String>,
    caller: &Caller,
    sessions: &mut Sessions,
    db: &mut Db,
    cookie: Option<&str>,
    now: i64,
) -> Reply {
    match caller {
        Caller::Bearer => {}
        Caller::Session(csrf) => {
            let given = form.get("csrf").map(String::as_str).unwrap_or("");
            if !auth::same(given, csrf) {
                return message(
                    403,
                    "Refused",
                    "The form's CSRF token is missing or wrong; reload the page and try again.",
                );
            }
        }
        Caller::Anonymous => {
            return message(
                401,
                "Log in first",
                "Actions need the dashboard token: log in at /login.",
            )
        }
        Caller::ReadOnly => return read_only(),
    }
    if path == "/logout" {
        if let Some(id) = Sessions::session_of(cookie) {
            sessions.close(&id);
        }
        return see_other("/");
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let done = match parts.as_slice() {
        ["jobs", id, action @ ("retry" | "cancel")] => {
            let Ok(id) = id.parse::<i64>() else {
                return message(404, "Not found", &format!("There is no page {path}."));
            };
            let result = db.with(|s| match *action {
                "retry" => s
                    .retry(&[id], now)
                    .map(|r| match r.first() {
                        Some(RetryResult::Queued) => "queued".to_string(),
                        Some(RetryResult::WrongState(state)) => format!("refused: {state}"),
                        Some(RetryResult::UniqueKeyTaken(by)) => {
                            format!("refused: unique_key held by job {by}")
                        }
                        Some(RetryResult::ParentEnded(parent, state)) => {
                            format!("refused: it depends on job {parent}, which is {state}")
                        }
                        Some(RetryResult::NotFound) | None => "not found".to_string(),
                    })
                    .map_err(|e| e.to_string()),
                _ => s
                    .cancel(&[id], now)
                    .map(|r| match r.first() {
                        Some(CancelResult::Cancelled) => "cancelled".to_string(),
                        Some(CancelResult::Requested) => "cancel requested".to_string(),
                        Some(CancelResult::AlreadyFinal(state)) => format!("already {state}"),
                        Some(CancelResult::NotFound) | None => "not found".to_string(),
                    })
                    .map_err(|e| e.to_string()),
            });
            result.map(|what| {
                event!(
                    Info,
                    "dashboard.action",
                    action = *action,
                    id = id,
                    result = what.as_str()
                );
                format!("/jobs/{id}")
            })
        }
        ["queues", queue, action @ ("pause" | "resume")] => {
            let queue = crate::web::dashboard::form_pairs(&format!("q={queue}"))
                .pop()
                .map(|(_, v)| v)
                .unwrap_or_default();
            let paused = *action == "pause";
            // A name a job can have, that the CLI would take: it paused
            // an empty name (which nothing could resume), one with a NUL
            // or control bytes (written raw into the page), and 3 000
            // characters.
            if queue.is_empty()
                || queue.len() > MAX_QUEUE_NAME
                || queue.chars().any(crate::fmt::needs_escape)
            {
                return message(400, "Bad request", "That is not a queue's name.");
            }
            db.with(|s| {
                s.set_paused(std::slice::from_ref(&queue), paused, now)
                    .map_err(|e| e.to_string())
            })
            .map(|()| {
                event!(
                    Info,
                    "dashboard.action",
                    action = *action,
                    queue = queue.as_str()
                );
                "/".to_string()
            })
        }
        _ => return message(404, "Not found", &format!("There is no action {path}.")),
    };
    match done {
        Ok(location) => see_other(&location),
        Err(e) => message(503, "Unavailable", &e),
    }
}

/// The longest queue name the dashboard acts on (a job's may be longer,
/// but no operator types such a name to pause it).
const MAX_QUEUE_NAME: usize = 256;

/// `/jobs/ID/payload`, `/jobs/ID/result`, `/jobs/ID/error`: a whole value
/// as a download.
fn download(path: &str) -> Option<(i64, &'static str)> {
    let rest = path.strip_prefix("/jobs/")?;
    let (id, field) = rest.split_once('/')?;
    let field = ["payload", "result", "error"]
        .into_iter()
        .find(|f| *f == field)?;
    Some((id.parse().ok()?, field))
}

// Long: one arm per page of the dashboard, each a few lines.
fn get_page(
    path: &str,
    query: &str,
    db: &mut Db,
    metrics: &Metrics,
    state: &DaemonState,
    caller: &Caller,
) -> Reply {
    let config = Arc::clone(&db.config);
    let csrf = match caller {
        Caller::Session(csrf) => Some(csrf.as_str()),
        _ => None,
    };
    let failed = |e: String| message(503, "Unavailable", &e);
    match path {
        "/metrics" => match db
            .with(|s| metrics.scrape(s, state, config.daemon.named_queues(), &config.key_rules()))
        {
            Ok(text) => Reply::new(200, text, "text/plain; version=0.0.4; charset=utf-8"),
            Err(e) => Reply::new(503, format!("cannot read the metrics: {e}\n"), TEXT),
        },
        "/" => {
            let threshold = config.metrics.long_running.as_millis() as i64;
            let read = db.with(|s| {
                let now = now_ms();
                let stats = s.stats(now).map_err(|e| e.to_string())?;
                let running = s
                    .list(&crate::store::ListFilter {
                        state: Some(crate::job::JobState::Running),
                        limit: 1_000,
                        ..Default::default()
                    })
                    .map_err(|e| e.to_string())?;
                let long: Vec<_> = running
                    .into_iter()
                    .filter(|j| {
                        j.started_at
                            .is_some_and(|t| now.saturating_sub(t) > threshold)
                    })
                    .collect();
                Ok((stats, long))
            });
            match read {
                Ok((stats, long)) => {
                    let history: Vec<_> = state
                        .history
                        .lock()
                        .map(|h| h.iter().copied().collect())
                        .unwrap_or_default();
                    html(
                        200,
                        crate::web::dashboard::overview(
                            &stats,
                            &long,
                            threshold,
                            &history,
                            pools(state),
                            csrf,
                        ),
                    )
                }
                Err(e) => failed(e),
            }
        }
        "/keys" => {
            let now = now_ms();
            match db.with(|s| s.keys(now, true).map_err(|e| e.to_string())) {
                Ok(keys) => html(
                    200,
                    crate::web::dashboard::keys(&config.key_rules(), &keys, now),
                ),
                Err(e) => failed(e),
            }
        }
        _ if path.starts_with("/batches/") => {
            // Links encode every byte but the unreserved ones, `+` too.
            let name = crate::web::dashboard::percent_decode(&path["/batches/".len()..]);
            match db.with(|s| s.batch(&name).map_err(|e| e.to_string())) {
                Ok(Some(info)) => html(200, crate::web::dashboard::batch(&info)),
                Ok(None) => message(404, "No such batch", &format!("No job names batch {name}.")),
                Err(e) => failed(e),
            }
        }
        "/jobs" => {
            let q = match crate::web::dashboard::ListQuery::parse(query) {
                Ok(q) => q,
                Err(why) => return message(400, "Bad request", &format!("The job list's {why}.")),
            };
            let read = db.with(|s| {
                s.list(&crate::store::ListFilter {
                    state: q.state,
                    queue: q.queue.clone(),
                    kind: q.kind.clone(),
                    limit: crate::web::dashboard::PAGE,
                    before: q.before,
                })
                .map_err(|e| e.to_string())
            });
            match read {
                Ok(jobs) => html(
                    200,
                    crate::web::dashboard::jobs(
                        &q,
                        &jobs,
                        &crate::kinds::Redaction::new(&config.http),
                    ),
                ),
                Err(e) => failed(e),
            }
        }
        _ if download(path).is_some() => {
            let (id, field) = download(path).expect("matched above");
            let redaction = crate::kinds::Redaction::new(&config.http);
            match db.with(|s| s.job(id).map_err(|e| e.to_string())) {
                Ok(Some(job)) => {
                    let value = match field {
                        "payload" => Some(redaction.payload(&job.kind, &job.payload)),
                        "result" => job.result,
                        _ => job.last_error.map(|e| redaction.text(&e)),
                    };
                    match value {
                        Some(value) => {
                            let mut reply = Reply::new(200, value, TEXT);
                            reply.headers.push((
                                "Content-Disposition",
                                format!("attachment; filename=\"job-{id}-{field}.txt\""),
                            ));
                            reply
                        }
                        None => message(404, "Nothing there", &format!("Job {id} has no {field}.")),
                    }
                }
                Ok(None) => message(404, "No such job", &format!("There is no job {id}.")),
                Err(e) => failed(e),
            }
        }
        _ => match path.strip_prefix("/jobs/").map(str::parse::<i64>) {
            Some(Ok(id)) => {
                let read = db.with(|s| {
                    let job = s.job(id).map_err(|e| e.to_string())?;
                    let runs = s.runs(id).map_err(|e| e.to_string())?;
                    let flow = flow(s, id).map_err(|e| e.to_string())?;
                    Ok((job, runs, flow))
                });
                match read {
                    Ok((Some(job), runs, flow)) => {
                        let actions = csrf.map_or(String::new(), |csrf| {
                            let mut a = String::from("<p id=\"actions\">");
                            if matches!(
                                job.state,
                                crate::job::JobState::Dead | crate::job::JobState::Cancelled
                            ) {
                                a.push_str(&crate::web::dashboard::button(
                                    &format!("/jobs/{id}/retry"),
                                    "retry",
                                    csrf,
                                ));
                            }
                            if matches!(
                                job.state,
                                crate::job::JobState::Waiting
                                    | crate::job::JobState::Queued
                                    | crate::job::JobState::Running
                            ) {
                                a.push_str(&crate::web::dashboard::button(
                                    &format!("/jobs/{id}/cancel"),
                                    "cancel",
                                    csrf,
                                ));
                            }
                            a.push_str("</p>");
                            a
                        });
                        let redaction = crate::kinds::Redaction::new(&config.http);
                        html(
                            200,
                            crate::web::dashboard::job(&job, &runs, &flow, &actions, &redaction),
                        )
                    }
                    Ok((None, _, _)) => {
                        message(404, "No such job", &format!("There is no job {id}."))
                    }
                    Err(e) => failed(e),
                }
            }
            _ => message(404, "Not found", &format!("There is no page {path}.")),
        },
    }
}

/// A job's flow for its page: its relatives, and its descendants depth
/// first, at most [`crate::web::dashboard::Flow::SHOWN`] (a query per job
/// shown, so a page stays cheap however large the flow).
fn flow(
    s: &mut dyn crate::store::Store,
    id: i64,
) -> crate::store::Result<crate::web::dashboard::Flow> {
    let relatives = s.relatives(id)?;
    let mut descendants = Vec::new();
    let mut stack: Vec<(usize, i64, String)> = relatives
        .children
        .iter()
        .rev()
        .map(|(child, state)| (1, *child, state.clone()))
        .collect();
    let mut seen = std::collections::HashSet::new();
    while let Some((depth, child, state)) = stack.pop() {
        if descendants.len() >= crate::web::dashboard::Flow::SHOWN {
            break;
        }
        descendants.push((depth, child, state));
        // A job reached twice (a diamond) is listed again, but not walked again.
        if seen.insert(child) {
            for (grandchild, state) in s.relatives(child)?.children.into_iter().rev() {
                stack.push((depth + 1, grandchild, state));
            }
        }
    }
    Ok(crate::web::dashboard::Flow {
        relatives,
        descendants,
    })
}
