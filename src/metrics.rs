//! Metrics and health (SPEC §8): with `metrics.listen` set, a small
//! synchronous HTTP listener (tiny_http, one thread) serves `GET /metrics`
//! in the Prometheus text format and `GET /healthz`.
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
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::config::Config;
use crate::dispatcher::Shared;
use crate::event;
use crate::job::now_ms;
use crate::store::Store;

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

/// The running listener.
pub struct Listener {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    /// Stops serving and waits for the thread.
    pub fn stop(mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Binds `metrics.listen` (an error stops start-up) and serves it on a
/// thread of its own with its own database connection.
pub fn serve(
    addr: SocketAddr,
    config: Config,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
) -> Result<Listener, MetricsError> {
    let server = Arc::new(
        tiny_http::Server::http(addr).map_err(|source| MetricsError::Listen { addr, source })?,
    );
    let serving = Arc::clone(&server);
    let thread = std::thread::Builder::new()
        .name("jobd-metrics".into())
        .spawn(move || run(&serving, &config, &metrics, &shared))
        .map_err(|e| MetricsError::Listen {
            addr,
            source: Box::new(e),
        })?;
    event!(Info, "metrics.listening", address:% = addr);
    Ok(Listener {
        server,
        thread: Some(thread),
    })
}

/// What the listener answers.
struct Reply {
    status: u16,
    body: String,
    content_type: &'static str,
    /// Extra headers (Location, Set-Cookie).
    headers: Vec<(&'static str, String)>,
}

impl Reply {
    fn new(status: u16, body: String, content_type: &'static str) -> Reply {
        Reply {
            status,
            body,
            content_type,
            headers: Vec::new(),
        }
    }

    fn html(status: u16, body: String) -> Reply {
        Reply::new(status, body, HTML)
    }

    fn message(status: u16, title: &str, text: &str) -> Reply {
        Reply::html(status, crate::dashboard::message(title, text))
    }

    /// 303 to `location`, the answer to a form.
    fn see_other(location: &str) -> Reply {
        let mut reply = Reply::new(303, String::new(), TEXT);
        reply.headers.push(("Location", location.to_string()));
        reply
    }
}

const HTML: &str = "text/html; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// The largest form body read.
const MAX_FORM: u64 = 4096;

/// The listener's own connection, opened on first use and dropped after an
/// error so the next request starts afresh.
struct Db<'a> {
    config: &'a Config,
    store: Option<Box<dyn Store>>,
}

impl Db<'_> {
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

fn header(request: &tiny_http::Request, name: &str) -> Option<String> {
    request
        .headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str().to_string())
}

fn run(server: &tiny_http::Server, config: &Config, metrics: &Metrics, shared: &Shared) {
    let mut db = Db {
        config,
        store: None,
    };
    let mut sessions = crate::dashboard::Sessions::default();
    let token = config
        .metrics
        .dashboard_token
        .as_ref()
        .map(|t| t.expose().to_string());
    for mut request in server.incoming_requests() {
        let url = request.url().to_string();
        let (path, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
        let now = now_ms();
        let cookie = header(&request, "Cookie");
        let caller = sessions.caller(
            token.as_deref(),
            header(&request, "Authorization").as_deref(),
            cookie.as_deref(),
            now,
        );
        let reply = match request.method() {
            tiny_http::Method::Get if path == "/login" => match caller {
                crate::dashboard::Caller::ReadOnly => read_only(),
                _ => Reply::html(200, crate::dashboard::login(false)),
            },
            tiny_http::Method::Get => get_page(path, query, &mut db, metrics, shared, &caller),
            tiny_http::Method::Post if matches!(path, "/metrics" | "/healthz") => {
                Reply::new(405, "only GET is served here\n".into(), TEXT)
            }
            tiny_http::Method::Post => {
                let mut form = String::new();
                let _ = std::io::Read::read_to_string(
                    &mut std::io::Read::take(request.as_reader(), MAX_FORM),
                    &mut form,
                );
                let form: std::collections::HashMap<String, String> =
                    crate::dashboard::form_pairs(&form).into_iter().collect();
                post(
                    path,
                    &form,
                    &caller,
                    &mut sessions,
                    &mut db,
                    token.as_deref(),
                    cookie.as_deref(),
                    now,
                )
            }
            _ => Reply::new(405, "only GET and POST are served here\n".into(), TEXT),
        };
        let mut headers = vec![
            ("Content-Type", reply.content_type.to_string()),
            // Pages carry no script at all; say so, so that an injected
            // tag could not run even if escaping failed.
            (
                "Content-Security-Policy",
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'".to_string(),
            ),
            ("X-Content-Type-Options", "nosniff".to_string()),
            ("Cache-Control", "no-store".to_string()),
        ];
        headers.extend(reply.headers);
        let mut response =
            tiny_http::Response::from_string(reply.body).with_status_code(reply.status);
        for (name, value) in headers {
            if let Ok(header) = tiny_http::Header::from_bytes(name, value.as_bytes()) {
                response.add_header(header);
            }
        }
        // A client that went away is its own problem.
        let _ = request.respond(response);
    }
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
    Reply::message(
        403,
        "Read-only",
        "This dashboard is read-only: set metrics.dashboard_token to allow retry, cancel, pause and resume.",
    )
}

/// The POST routes: log in and out, and the actions.
#[allow(clippy::too_many_arguments)] // the listener's whole state, passed down once
fn post(
    path: &str,
    form: &std::collections::HashMap<String, String>,
    caller: &crate::dashboard::Caller,
    sessions: &mut crate::dashboard::Sessions,
    db: &mut Db<'_>,
    token: Option<&str>,
    cookie: Option<&str>,
    now: i64,
) -> Reply {
    use crate::dashboard::{Caller, Sessions, COOKIE, SESSION_MS};
    let Some(token) = token else {
        return read_only();
    };
    if path == "/login" {
        let given = form.get("token").map(String::as_str).unwrap_or("");
        if !crate::dashboard::same(given, token) {
            return Reply::html(403, crate::dashboard::login(true));
        }
        return match sessions.open(now) {
            Ok((id, _)) => {
                let mut reply = Reply::see_other("/");
                reply.headers.push((
                    "Set-Cookie",
                    format!(
                        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
                        SESSION_MS / 1000
                    ),
                ));
                reply
            }
            Err(e) => Reply::message(503, "Unavailable", &format!("cannot start a session: {e}")),
        };
    }
    match caller {
        Caller::Bearer => {}
        Caller::Session(csrf) => {
            let given = form.get("csrf").map(String::as_str).unwrap_or("");
            if !crate::dashboard::same(given, csrf) {
                return Reply::message(
                    403,
                    "Refused",
                    "The form's CSRF token is missing or wrong; reload the page and try again.",
                );
            }
        }
        Caller::Anonymous => {
            return Reply::message(
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
        return Reply::see_other("/");
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let done = match parts.as_slice() {
        ["jobs", id, action @ ("retry" | "cancel")] => {
            let Ok(id) = id.parse::<i64>() else {
                return Reply::message(404, "Not found", &format!("There is no page {path}."));
            };
            let result = db.with(|s| match *action {
                "retry" => s
                    .retry(&[id], now)
                    .map(|r| format!("{:?}", r.first()))
                    .map_err(|e| e.to_string()),
                _ => s
                    .cancel(&[id], now)
                    .map(|r| format!("{:?}", r.first()))
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
        _ => return Reply::message(404, "Not found", &format!("There is no action {path}.")),
    };
    match done {
        Ok(location) => Reply::see_other(&location),
        Err(e) => Reply::message(503, "Unavailable", &e),
    }
}

fn get_page(
    path: &str,
    query: &str,
    db: &mut Db<'_>,
    metrics: &Metrics,
    shared: &Shared,
    caller: &crate::dashboard::Caller,
) -> Reply {
    let config = db.config;
    let csrf = match caller {
        crate::dashboard::Caller::Session(csrf) => Some(csrf.as_str()),
        _ => None,
    };
    let failed = |e: String| Reply::message(503, "Unavailable", &e);
    match path {
        "/metrics" => match db.with(|s| metrics.scrape(s, shared, config.daemon.named_queues())) {
            Ok(text) => Reply::new(200, text, "text/plain; version=0.0.4; charset=utf-8"),
            Err(e) => Reply::new(503, format!("cannot read the metrics: {e}\n"), TEXT),
        },
        "/healthz" => match health(config, shared) {
            Ok(()) => Reply::new(200, "ok\n".to_string(), TEXT),
            Err(why) => Reply::new(503, format!("{why}\n"), TEXT),
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
                    Reply::html(
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
                Ok(jobs) => Reply::html(
                    200,
                    crate::dashboard::jobs(&q, &jobs, &crate::kinds::Redaction::new(&config.http)),
                ),
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
                        Reply::html(
                            200,
                            crate::dashboard::job(&job, &runs, &actions, &redaction),
                        )
                    }
                    Ok((None, _)) => {
                        Reply::message(404, "No such job", &format!("There is no job {id}."))
                    }
                    Err(e) => failed(e),
                }
            }
            _ => Reply::message(404, "Not found", &format!("There is no page {path}.")),
        },
    }
}
