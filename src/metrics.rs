//! The Prometheus collectors behind `GET /metrics` (docs/reference.md).
//!
//! Counters that change per attempt (attempts by kind and outcome, the
//! duration histogram) are kept in [`Metrics`] as the completer writes
//! outcomes. Everything else is read at scrape time ([`Metrics::scrape`]):
//! jobs by queue and state and the queue lag from the caller's database
//! connection, pool sizes and busy slots from the [`DaemonState`], and the
//! process's resources from `/proc`. The web layer ([`crate::web`]) serves
//! the text; the daemon's completer counts into it.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::daemon::state::DaemonState;
use crate::job::now_ms;
use crate::keys::{KeyHold, KeyRules};
use crate::store::Store;

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
    key_running: IntGaugeVec,
    keys_held: IntGaugeVec,
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
    // Long: one registration per collector; splitting would only scatter the list of metrics.
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
        // Per `[keys.NAME]` section, never per key: a key is customer data,
        // and one series per customer would grow without bound.
        let key_running = IntGaugeVec::new(
            Opts::new(
                "jobd_key_running",
                "Jobs running on every daemon under the keys each [keys.NAME] section fits \
                 (limit=\"-\": keys no section fits).",
            ),
            &["limit"],
        )?;
        let keys_held = IntGaugeVec::new(
            Opts::new(
                "jobd_keys_held",
                "Keys whose jobs cannot start now, by section and why: blocked (a service \
                 asked), rate (until its next start), full (at its concurrency).",
            ),
            &["limit", "state"],
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
            Box::new(key_running.clone()),
            Box::new(keys_held.clone()),
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
            key_running,
            keys_held,
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

    /// Sets the keyed-limit gauges from the keys running or closed now,
    /// summed per section; every section of the config has its series,
    /// at 0 when none of its keys is busy.
    fn keys(&self, store: &mut dyn Store, rules: &KeyRules, now: i64) -> Result<(), String> {
        let keys = store.keys(now, false).map_err(|e| e.to_string())?;
        self.key_running.reset();
        self.keys_held.reset();
        for limit in &rules.limits {
            self.key_running.with_label_values(&[&limit.name]).set(0);
            for state in ["blocked", "rate", "full"] {
                self.keys_held
                    .with_label_values(&[&limit.name, state])
                    .set(0);
            }
        }
        for activity in &keys {
            let status = rules.status(activity, now);
            let mut names: Vec<&str> = status.limits.iter().map(String::as_str).collect();
            if names.is_empty() {
                names.push("-");
            }
            for name in names {
                self.key_running
                    .with_label_values(&[name])
                    .add(activity.running as i64);
                if status.hold != KeyHold::Open {
                    self.keys_held
                        .with_label_values(&[name, status.hold.word()])
                        .inc();
                }
            }
        }
        Ok(())
    }

    /// Reads what is measured at scrape time and renders every metric.
    pub fn scrape(
        &self,
        store: &mut dyn Store,
        state: &DaemonState,
        queues: Option<&[String]>,
        rules: &KeyRules,
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
        self.keys(store, rules, now)?;
        for (pool, size, busy) in [
            ("io", &state.io_size, &state.io_busy),
            ("cpu", &state.cpu_size, &state.cpu_busy),
        ] {
            self.pool_size
                .with_label_values(&[pool])
                .set(size.load(Ordering::Relaxed) as i64);
            self.pool_busy
                .with_label_values(&[pool])
                .set(busy.load(Ordering::Relaxed) as i64);
        }
        if let Some(usage) = crate::os::procfs::usage("self") {
            let values = [
                usage.cpu.as_secs_f64(),
                usage.rss_bytes as f64,
                usage.threads as f64,
                crate::os::procfs::open_fds().unwrap_or(0) as f64,
                crate::os::procfs::rss_with_children(&state.cpu_pids.list()) as f64,
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
