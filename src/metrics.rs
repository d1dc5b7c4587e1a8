//! Metrics, health and the dashboard's routes (docs/reference.md): with
//! `metrics.listen` set, [`crate::listener`] serves `GET /metrics` in the
//! Prometheus text format, `GET /healthz`, and the dashboard's pages and
//! forms (built by [`crate::dashboard`]), answered here one at a time.
//!
//! Counters that change per attempt (attempts by kind and outcome, the
//! duration histogram) are kept in [`Metrics`] as the completer writes
//! outcomes. Everything else is read at scrape time: jobs by queue and
//! state and the queue lag from the listener's own database connection,
//! pool sizes and busy slots from the dispatcher's [`Shared`] figures, and
//! the process's resources from `/proc`.
//!
//! `/healthz` answers 200 while the database answers a fresh connection,
//! the dispatcher loop turned within [`HEALTH_STALE`], its store operations
//! have not been failing for longer than that, and the SQLite file is the
//! one the daemon opened; else 503 with the reason.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::config::Config;
use crate::dispatcher::Shared;
use crate::event;
use crate::job::now_ms;
use crate::store::{CancelResult, RetryResult, Store};

/// A dispatcher loop that has not turned for this long is unhealthy. It
/// turns at least once a second when idle.
pub const HEALTH_STALE: Duration = Duration::from_secs(5);

/// The upper bounds of the duration histogram, in seconds: from a `noop`
/// to a long `compress`.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];

/// Why the metrics could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The listen address is taken or not ours.
    #[error("cannot listen on metrics.listen {addr}: {source}")]
    Listen {
        /// `metrics.listen`.
        addr: SocketAddr,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A collector could not be registered (a bug: names clash).
    #[error("cannot set up the metrics: {0}")]
    Prometheus(#[from] prometheus::Error),
}

/// The collectors.
pub struct Metrics {
    registry: Registry,
    /// Kinds this build runs; other names are counted as `other`, so a typo
    /// in a client's insert cannot grow the label set without bound.
    kinds: Vec<&'static str>,
    attempts: IntCounterVec,
    durations: HistogramVec,
    jobs: IntGaugeVec,
    ready: IntGaugeVec,
    lag: GaugeVec,
    paused: IntGaugeVec,
    pool_size: IntGaugeVec,
    pool_busy: IntGaugeVec,
    /// The daemon's resources, each its own gauge (see [`RESOURCES`]).
    resources: Vec<prometheus::Gauge>,
}

/// The resource gauges: name and help. Set at scrape time from `/proc`.
const RESOURCES: [(&str, &str); 5] = [
    (
        "jobd_process_cpu_seconds_total",
        "CPU time the daemon process used (user + system).",
    ),
    (
        "jobd_process_resident_memory_bytes",
        "Resident memory of the daemon process.",
    ),
    ("jobd_process_threads", "OS threads of the daemon process."),
    (
        "jobd_process_open_fds",
        "Open file descriptors of the daemon process.",
    ),
    (
        "jobd_cpu_workers_resident_memory_bytes",
        "Resident memory of the CPU workers and the handlers they run, together.",
    ),
];

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Collectors for a daemon that runs `kinds`.
    pub fn new(kinds: Vec<&'static str>) -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let info = IntGaugeVec::new(
            Opts::new("jobd_info", "The running jobd (always 1)."),
            &["version"],
        )?;
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        registry.register(Box::new(info))?;
        let attempts = IntCounterVec::new(
            Opts::new(
                "jobd_attempts_total",
                "Attempts this daemon finished, by kind and outcome.",
            ),
            &["kind", "outcome"],
        )?;
        let durations = HistogramVec::new(
            HistogramOpts::new(
                "jobd_attempt_duration_seconds",
                "How long attempts ran, by kind.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["kind"],
        )?;
        let jobs = IntGaugeVec::new(
            Opts::new("jobd_jobs", "Jobs in the database, by queue and state."),
            &["queue", "state"],
        )?;
        let ready = IntGaugeVec::new(
            Opts::new(
                "jobd_queue_ready",
                "Queued jobs whose run_at has come, by queue.",
            ),
            &["queue"],
        )?;
        let lag = GaugeVec::new(
            Opts::new(
                "jobd_queue_lag_seconds",
                "Now minus the oldest ready run_at, by queue (0 when nothing waits).",
            ),
            &["queue"],
        )?;
        let paused = IntGaugeVec::new(
            Opts::new(
                "jobd_queue_paused",
                "1 for a paused queue (its lag grows by choice), 0 otherwise, by queue.",
            ),
            &["queue"],
        )?;
        let pool_size = IntGaugeVec::new(
            Opts::new(
                "jobd_pool_size",
                "Threads (io) or worker processes (cpu) of each pool.",
            ),
            &["pool"],
        )?;
        let pool_busy = IntGaugeVec::new(
            Opts::new(
                "jobd_pool_busy",
                "Jobs each pool holds now (running or being written).",
            ),
            &["pool"],
        )?;
        let resources = RESOURCES
            .iter()
            .map(|(name, help)| prometheus::Gauge::new(*name, *help))
            .collect::<Result<Vec<_>, _>>()?;
        for collector in [
            Box::new(attempts.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(durations.clone()),
            Box::new(jobs.clone()),
            Box::new(ready.clone()),
            Box::new(lag.clone()),
            Box::new(paused.clone()),
            Box::new(pool_size.clone()),
            Box::new(pool_busy.clone()),
        ] {
            registry.register(collector)?;
        }
        for gauge in &resources {
            registry.register(Box::new(gauge.clone()))?;
        }
        Ok(Metrics {
            registry,
            kinds,
            attempts,
            durations,
            jobs,
            ready,
            lag,
            paused,
            pool_size,
            pool_busy,
            resources,
        })
    }

    /// Counts one finished attempt.
    pub fn attempt(&self, kind: &str, outcome: &str, seconds: f64) {
        let kind = if self.kinds.contains(&kind) {
            kind
        } else {
            "other"
        };
        self.attempts.with_label_values(&[kind, outcome]).inc();
        self.durations.with_label_values(&[kind]).observe(seconds);
    }

    /// Reads what is measured at scrape time and renders every metric.
    fn scrape(
        &self,
        store: &mut dyn Store,
        shared: &Shared,
        queues: Option<&[String]>,
    ) -> Result<String, String> {
        let counts = store.job_counts().map_err(|e| e.to_string())?;
        self.jobs.reset();
        for (queue, state, n) in &counts {
            self.jobs
                .with_label_values(&[queue.as_str(), state.as_str()])
                .set(*n as i64);
        }
        self.ready.reset();
        self.lag.reset();
        self.paused.reset();
        let paused = store.paused_queues().map_err(|e| e.to_string())?;
        let now = now_ms();
        let mut names: Vec<&str> = counts.iter().map(|(q, _, _)| q.as_str()).collect();
        names.dedup();
        for queue in names {
            if queues.is_some_and(|q| !q.iter().any(|n| n == queue)) {
                continue;
            }
            let backlog = store
                .backlog(Some(&[queue.to_string()]), now)
                .map_err(|e| e.to_string())?;
            self.ready
                .with_label_values(&[queue])
                .set(backlog.ready as i64);
            self.lag
                .with_label_values(&[queue])
                .set(backlog.lag_ms(now) as f64 / 1000.0);
            self.paused
                .with_label_values(&[queue])
                .set(i64::from(paused.iter().any(|p| p == queue)));
        }
        for (pool, size, busy) in [
            ("io", &shared.io_size, &shared.io_busy),
            ("cpu", &shared.cpu_size, &shared.cpu_busy),
        ] {
            self.pool_size
                .with_label_values(&[pool])
                .set(size.load(Ordering::Relaxed) as i64);
            self.pool_busy
                .with_label_values(&[pool])
                .set(busy.load(Ordering::Relaxed) as i64);
        }
        if let Some(usage) = crate::procfs::usage("self") {
            let values = [
                usage.cpu.as_secs_f64(),
                usage.rss_bytes as f64,
                usage.threads as f64,
                crate::procfs::open_fds().unwrap_or(0) as f64,
                crate::procfs::rss_with_children(&shared.cpu_pids.list()) as f64,
            ];
            for (gauge, value) in self.resources.iter().zip(values) {
                gauge.set(value);
            }
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .map_err(|e| e.to_string())?;
        String::from_utf8(out).map_err(|e| e.to_string())
    }
}

/// Whether the daemon is healthy: its database answers a fresh connection
/// and its dispatcher loop turned lately. `Err` says why not.
pub fn health(config: &Config, shared: &Shared) -> Result<(), String> {
    crate::maintenance::database_file_unchanged(config, shared)?;
    let failing = shared.failing_since.load(Ordering::Relaxed) as i64;
    if failing > 0 && now_ms() - failing > HEALTH_STALE.as_millis() as i64 {
        let last = shared
            .last_failure
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default();
        return Err(format!(
            "the dispatcher's claims and outcome writes have failed for {}: {last}",
            humantime::format_duration(Duration::from_secs(((now_ms() - failing) / 1000) as u64))
        ));
    }
    let mut store = crate::store::open_existing(&config.database)
        .map_err(|e| format!("the database does not answer: {e}"))?;
    store
        .change_counter()
        .map_err(|e| format!("the database does not answer: {e}"))?;
    let last = shared.last_turn.load(Ordering::Relaxed) as i64;
    let idle = Duration::from_millis((now_ms() - last).max(0) as u64);
    if idle > HEALTH_STALE {
        return Err(format!(
            "the dispatcher loop has not turned for {}",
            humantime::format_duration(Duration::from_millis(idle.as_millis() as u64))
        ));
    }
    Ok(())
}

pub use crate::listener::Listener;
use crate::listener::{Reply, Request, HTML, TEXT};

/// Binds `metrics.listen` (an error stops start-up) and serves it through
/// [`crate::listener`]: pages on a thread of their own with their own
/// database connection, `/healthz` beside them.
pub fn serve(
    addr: SocketAddr,
    config: Config,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
) -> Result<Listener, MetricsError> {
    let listen = |source: std::io::Error| MetricsError::Listen {
        addr,
        source: Box::new(source),
    };
    let socket = std::net::TcpListener::bind(addr).map_err(listen)?;
    let health_config = config.clone();
    let health_shared = Arc::clone(&shared);
    let health = Arc::new(move || match health(&health_config, &health_shared) {
        Ok(()) => Reply::text(200, "ok\n"),
        Err(why) => Reply::text(503, format!("{why}\n")),
    });
    let listener = crate::listener::serve(
        socket,
        crate::listener::Handlers {
            pages: Box::new(move || {
                let mut pages = Pages::new(config, metrics, shared);
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
    html(status, crate::dashboard::message(title, text))
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
                crate::store::open_existing(&self.config.database)
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
    shared: Arc<Shared>,
    sessions: crate::dashboard::Sessions,
    token: Option<String>,
    /// Client address → times of its failed logins in the last window.
    failed_logins: std::collections::HashMap<std::net::IpAddr, Vec<i64>>,
}

impl Pages {
    fn new(config: Config, metrics: Arc<Metrics>, shared: Arc<Shared>) -> Pages {
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
            shared,
            sessions: crate::dashboard::Sessions::default(),
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
        let caller = self.sessions.caller(
            self.token.as_deref(),
            request.header("authorization"),
            cookie,
            now,
        );
        use crate::dashboard::Caller;
        match (request.method.as_str(), path) {
            ("GET", "/login") => match caller {
                Caller::ReadOnly => read_only(),
                _ => html(200, crate::dashboard::login(false)),
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
                &self.shared,
                &caller,
            ),
            ("POST", "/metrics" | "/healthz") => Reply::text(405, "only GET is served here\n"),
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
            _ => Reply::text(405, "only GET and POST are served here\n"),
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
        use crate::dashboard::{COOKIE, SESSION_MS};
        let Some(token) = self.token.as_deref() else {
            return read_only();
        };
        self.failed_logins
            .retain(|_, times| times.iter().any(|t| now - t < LOGIN_WINDOW_MS));
        let failures = self.failed_logins.entry(peer).or_default();
        failures.retain(|t| now - t < LOGIN_WINDOW_MS);
        if failures.len() >= LOGIN_TRIES {
            event!(Warn, "dashboard.login_limited", client:% = peer);
            let mut reply = message(
                429,
                "Too many tries",
                &format!("{LOGIN_TRIES} logins failed from this address within a minute; wait a minute and try again."),
            );
            reply.headers.push(("Retry-After", "60".to_string()));
            return reply;
        }
        let given = form.get("token").map(String::as_str).unwrap_or("");
        if !crate::dashboard::same(given, token) {
            failures.push(now);
            event!(
                Warn,
                "dashboard.login_failed",
                client:% = peer,
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
            return html(403, crate::dashboard::login(true));
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
    crate::dashboard::form_pairs(&String::from_utf8_lossy(body))
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
fn pools(shared: &Shared) -> crate::dashboard::Pools {
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    crate::dashboard::Pools {
        io_busy: load(&shared.io_busy),
        io_size: load(&shared.io_size),
        cpu_busy: load(&shared.cpu_busy),
        cpu_size: load(&shared.cpu_size),
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
fn post(
    path: &str,
    form: &std::collections::HashMap<String, String>,
    caller: &crate::dashboard::Caller,
    sessions: &mut crate::dashboard::Sessions,
    db: &mut Db,
    cookie: Option<&str>,
    now: i64,
) -> Reply {
    use crate::dashboard::{Caller, Sessions};
    match caller {
        Caller::Bearer => {}
        Caller::Session(csrf) => {
            let given = form.get("csrf").map(String::as_str).unwrap_or("");
            if !crate::dashboard::same(given, csrf) {
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
            let queue = crate::dashboard::form_pairs(&format!("q={queue}"))
                .pop()
                .map(|(_, v)| v)
                .unwrap_or_default();
            let paused = *action == "pause";
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

fn get_page(
    path: &str,
    query: &str,
    db: &mut Db,
    metrics: &Metrics,
    shared: &Shared,
    caller: &crate::dashboard::Caller,
) -> Reply {
    let config = Arc::clone(&db.config);
    let csrf = match caller {
        crate::dashboard::Caller::Session(csrf) => Some(csrf.as_str()),
        _ => None,
    };
    let failed = |e: String| message(503, "Unavailable", &e);
    match path {
        "/metrics" => match db.with(|s| metrics.scrape(s, shared, config.daemon.named_queues())) {
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
                    .filter(|j| j.started_at.is_some_and(|t| now - t > threshold))
                    .collect();
                Ok((stats, long))
            });
            match read {
                Ok((stats, long)) => {
                    let history: Vec<_> = shared
                        .history
                        .lock()
                        .map(|h| h.iter().copied().collect())
                        .unwrap_or_default();
                    html(
                        200,
                        crate::dashboard::overview(
                            &stats,
                            &long,
                            threshold,
                            &history,
                            pools(shared),
                            csrf,
                        ),
                    )
                }
                Err(e) => failed(e),
            }
        }
        "/jobs" => {
            let q = crate::dashboard::ListQuery::parse(query);
            let read = db.with(|s| {
                s.list(&crate::store::ListFilter {
                    state: q.state,
                    queue: q.queue.clone(),
                    kind: q.kind.clone(),
                    limit: crate::dashboard::PAGE,
                    before: q.before,
                })
                .map_err(|e| e.to_string())
            });
            match read {
                Ok(jobs) => html(
                    200,
                    crate::dashboard::jobs(&q, &jobs, &crate::kinds::Redaction::new(&config.http)),
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
                    Ok((job, runs))
                });
                match read {
                    Ok((Some(job), runs)) => {
                        let actions = csrf.map_or(String::new(), |csrf| {
                            let mut a = String::from("<p id=\"actions\">");
                            if matches!(
                                job.state,
                                crate::job::JobState::Dead | crate::job::JobState::Cancelled
                            ) {
                                a.push_str(&crate::dashboard::button(
                                    &format!("/jobs/{id}/retry"),
                                    "retry",
                                    csrf,
                                ));
                            }
                            if matches!(
                                job.state,
                                crate::job::JobState::Queued | crate::job::JobState::Running
                            ) {
                                a.push_str(&crate::dashboard::button(
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
                            crate::dashboard::job(&job, &runs, &actions, &redaction),
                        )
                    }
                    Ok((None, _)) => message(404, "No such job", &format!("There is no job {id}.")),
                    Err(e) => failed(e),
                }
            }
            _ => message(404, "Not found", &format!("There is no page {path}.")),
        },
    }
}
