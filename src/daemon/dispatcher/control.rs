//! Stop and reload requests: draining on stop, applying a new config's
//! pool sizes, limits and timeouts on reload.

use crate::config::Config;
use crate::event;
use crate::os::signals::Request;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::daemon::dispatcher::*;

impl Dispatcher {
    pub(super) fn on_request(&mut self, request: Request) {
        match request {
            Request::Stop if self.draining.is_none() => {
                let grace = self.config.daemon.shutdown_grace;
                self.draining = Some(Instant::now() + grace);
                self.state.draining.store(true, Ordering::Relaxed);
                self.state.notifier.stopping(&format!(
                    "draining {} jobs, at most {}",
                    self.in_flight.len(),
                    humantime::format_duration(grace)
                ));
                event!(
                    Info,
                    "daemon.draining",
                    running = self.in_flight.len(),
                    grace:% = humantime::format_duration(grace),
                    detail = "no new claims; a second signal stops at once"
                );
            }
            Request::Stop => self.stop_now = true,
            Request::Reload => {
                self.state.notifier.reloading();
                match (self.reload)() {
                    Ok(config) => self.apply(config),
                    Err(error) => event!(
                        Error,
                        "config.invalid",
                        error = error.as_str(),
                        action = "keeping the running configuration"
                    ),
                }
                // Ready again either way: the old configuration runs on.
                self.state.notifier.ready(&format!(
                    "{} running, configuration reloaded",
                    self.in_flight.len()
                ));
            }
        }
    }

    /// Applies a reloaded configuration: pool size, queue limits and rates,
    /// timeouts, retries and intervals. The database and queue set stay as
    /// they were at start-up.
    pub(super) fn apply(&mut self, mut config: Config) {
        let threads = config.pool.threads;
        if let Err(e) = self.pool.resize(threads) {
            event!(Error, "pool.error", pool = "io", error:% = e, action = "keeping the old pool size");
        }
        if let Some(cpu) = self.cpu.as_mut() {
            // Memory limit and recycling apply to workers started from now.
            cpu.set_settings(cpu_settings(&config, &self.worker_program));
            if let Err(e) = cpu.resize(config.cpu.workers) {
                event!(Error, "pool.error", pool = "cpu", error:% = e, action = "keeping the old pool size");
            }
        }
        if let Err(e) = ensure_key_index(self.store.as_mut(), &config) {
            crate::store::log_trouble(
                "build the key index",
                &e,
                "fair claims fail until it is built",
            );
        }
        self.limits.reload(&config.queues, Instant::now());
        self.keys = config.key_rules();
        // Schedules added start, removed ones stop (their rows stay).
        self.cron = crate::daemon::cron::Cron::new(crate::daemon::cron::schedules(&config));
        self.retry = Arc::new(config.retry.clone());
        // What only a restart applies keeps its value from the start, and
        // a change to it is said (a new listen address was taken in
        // silence while the old one went on serving).
        let old = &self.config;
        let kept: Vec<&str> = [
            (
                "database",
                config.database.url != old.database.url
                    || config.database.path != old.database.path,
            ),
            ("daemon.queues", config.daemon.queues != old.daemon.queues),
            (
                "metrics.listen",
                config.metrics.listen != old.metrics.listen,
            ),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect();
        if !kept.is_empty() {
            event!(
                Warn,
                "config.restart_needed",
                keys = kept.join(","),
                detail =
                    "changed in the file, kept as they were at start until the daemon restarts"
            );
        }
        config.database = self.config.database.clone();
        config.daemon.queues = self.config.daemon.queues.clone();
        config.metrics.listen = self.config.metrics.listen;
        self.config = config;
        self.look_again();
        event!(
            Info,
            "config.reloaded",
            threads = threads,
            cpu_workers = self.cpu_size(),
            level = format!("{:?}", self.config.log.level).to_lowercase(),
            queues_limited = self.config.queues.len()
        );
    }
}
