//! The second step of loading: every value checked against what is
//! possible, and the valid but risky settings named as warnings.

use std::time::Duration;

use crate::config::*;
use crate::job::KIND_NAMES;

impl Config {
    /// Checks every value against what is possible; an error names the
    /// key and what is wrong with it.
    // Long: one independent check per key, in the order of config.toml, so a key's rule is found by reading down.
    pub fn validate(&self) -> Result<(), KeyError> {
        fn fail<T>(key: &str, detail: impl Into<String>) -> Result<T, KeyError> {
            Err(KeyError::new(key, detail))
        }
        fn at_least(key: &str, got: u64, min: u64) -> Result<(), KeyError> {
            if got < min {
                return fail(key, format!("must be at least {min} (got {got})"));
            }
            Ok(())
        }
        fn at_most(key: &str, got: u64, max: u64) -> Result<(), KeyError> {
            if got > max {
                return fail(key, format!("must be at most {max} (got {got})"));
            }
            Ok(())
        }
        fn positive(key: &str, d: Duration) -> Result<(), KeyError> {
            if d.is_zero() {
                return fail(key, "must be longer than 0");
            }
            Ok(())
        }

        if let Some(url) = &self.database.url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return fail(
                    "database.url",
                    "must be a PostgreSQL URL like postgres://user@host/db",
                );
            }
            if let Err(why) = tls_settings(url) {
                return fail("database.url", &why);
            }
        }
        if self.database.path.as_os_str().is_empty() {
            return fail("database.path", "must name a file");
        }
        positive("database.busy_timeout", self.database.busy_timeout)?;
        if self.database.busy_timeout > Duration::from_secs(3600) {
            return fail("database.busy_timeout", "must be at most 1h");
        }

        let d = &self.daemon;
        if d.queues.is_empty() {
            return fail(
                "daemon.queues",
                "must name at least one queue, or \"*\" for all",
            );
        }
        if let Some(q) = d.queues.iter().find(|q| q.trim().is_empty()) {
            return fail("daemon.queues", format!("has an empty queue name ({q:?})"));
        }
        if d.all_queues() && d.queues.len() > 1 {
            return fail(
                "daemon.queues",
                "\"*\" already means every queue; list it alone",
            );
        }
        positive("daemon.poll_interval", d.poll_interval)?;
        if d.poll_interval > Duration::from_secs(60) {
            return fail("daemon.poll_interval", "must be at most 60s");
        }
        if d.lease < Duration::from_secs(1) {
            return fail("daemon.lease", "must be at least 1s");
        }
        // A dead daemon's jobs wait out its lease before another takes
        // them: longer than a day is a stall, not a setting.
        if d.lease > Duration::from_secs(86_400) {
            return fail("daemon.lease", "must be at most 1day");
        }
        if d.lease < d.poll_interval * 3 {
            return fail(
                "daemon.lease",
                "must be at least three times daemon.poll_interval",
            );
        }
        if d.stats_interval < Duration::from_secs(1) {
            return fail("daemon.stats_interval", "must be at least 1s");
        }

        at_least("pool.threads", self.pool.threads as u64, 1)?;
        at_most("pool.threads", self.pool.threads as u64, 10_000)?;
        at_least("cpu.workers", self.cpu.workers as u64, 1)?;
        at_most("cpu.workers", self.cpu.workers as u64, 1_024)?;
        if self.cpu.memory_limit != 0 && self.cpu.memory_limit < 16 << 20 {
            return fail(
                "cpu.memory_limit",
                "must be at least 16MiB (or 0 for no limit)",
            );
        }
        at_least("cpu.max_jobs_per_worker", self.cpu.max_jobs_per_worker, 1)?;
        // A section's name is what jobs name: one no job can name (empty,
        // or a path for a handler, whose name is a plain file name) is a
        // mistake, not a setting.
        if let Some(name) = (self.exec.handlers.keys()).find(|n| !crate::job::is_handler_name(n)) {
            return fail(
                &format!("exec.handlers.{name:?}"),
                "is not a handler's name: a plain file name of letters, digits, _ and -",
            );
        }
        for (section, empty) in [
            ("queues", self.queues.contains_key("")),
            ("cron", self.cron.contains_key("")),
            ("keys", self.keys.contains_key("")),
        ] {
            if empty {
                return fail(
                    &format!("{section}.\"\""),
                    "is a section with an empty name",
                );
            }
        }
        for (name, h) in &self.exec.handlers {
            at_least(&format!("exec.handlers.{name}.max_jobs"), h.max_jobs, 1)?;
            if let Some(n) = h.instances {
                at_least(&format!("exec.handlers.{name}.instances"), u64::from(n), 1)?;
                if h.mode != crate::config::HandlerMode::Persistent {
                    return fail(
                        &format!("exec.handlers.{name}.instances"),
                        "applies to a persistent handler only (mode = \"persistent\")",
                    );
                }
            }
            if h.idle_timeout.is_zero() {
                return fail(
                    &format!("exec.handlers.{name}.idle_timeout"),
                    "must be more than 0s",
                );
            }
        }

        for (name, q) in &self.queues {
            if let Some(c) = q.concurrency {
                at_least(&format!("queues.{name}.concurrency"), c as u64, 1)?;
            }
        }

        if let Some(bad) = self
            .http
            .block_on
            .iter()
            .find(|s| !(100..=599).contains(*s))
        {
            return fail(
                "http.block_on",
                format!("lists {bad}, which is not an HTTP status (100 to 599)"),
            );
        }
        for (name, k) in &self.keys {
            let key = |k: &str| format!("keys.{name}.{k}");
            if k.pattern.trim().is_empty() {
                return fail(
                    &key("match"),
                    "must be a glob over job keys, like \"customer:*\"",
                );
            }
            if let Err(why) = crate::keys::KeyLimit::new(name, &k.pattern, None, None) {
                return fail(&key("match"), why);
            }
            if k.concurrency.is_none() && k.rate.is_none() {
                return fail(
                    &format!("keys.{name}"),
                    "sets neither concurrency nor rate; a key limit needs one",
                );
            }
            if let Some(c) = k.concurrency {
                at_least(&key("concurrency"), u64::from(c), 1)?;
            }
            if let Some(rate) = k.rate {
                if rate.count > crate::keys::MAX_RATE_COUNT {
                    return fail(
                        &key("rate"),
                        format!(
                            "allows {} starts per period; a key's rate counts at most {} (each start is kept for a period): use a shorter period",
                            rate.count,
                            crate::keys::MAX_RATE_COUNT
                        ),
                    );
                }
            }
        }

        at_least("retry.max_attempts", u64::from(self.retry.max_attempts), 1)?;
        positive("retry.backoff_base", self.retry.backoff_base)?;
        if self.retry.backoff_max < self.retry.backoff_base {
            return fail(
                "retry.backoff_max",
                "must not be shorter than retry.backoff_base",
            );
        }

        for kind in KIND_NAMES {
            let timeout = self.timeouts.for_kind(kind).unwrap_or_default();
            positive(&format!("timeouts.{kind}"), timeout)?;
        }
        at_least("limits.max_payload_bytes", self.limits.max_payload_bytes, 2)?;
        // SQLite's longest string (SQLITE_MAX_LENGTH) is 10^9 bytes.
        at_most(
            "limits.max_payload_bytes",
            self.limits.max_payload_bytes,
            1_000_000_000,
        )?;

        if let Some(h) = self.http.allow_hosts.iter().find(|h| h.trim().is_empty()) {
            return fail(
                "http.allow_hosts",
                format!("has an empty host name ({h:?})"),
            );
        }
        if self.http.user_agent.trim().is_empty() {
            return fail("http.user_agent", "must not be empty");
        }

        if !self.email.from.contains('@') {
            return fail(
                "email.from",
                format!("must be an email address (got {:?})", self.email.from),
            );
        }
        if self.email.dir.as_os_str().is_empty() {
            return fail("email.dir", "must name a folder");
        }
        if self.email.smtp.host.trim().is_empty() {
            return fail("email.smtp.host", "must not be empty");
        }
        at_least("email.smtp.port", u64::from(self.email.smtp.port), 1)?;

        if self.file.roots.is_empty() {
            return fail("file.roots", "must name at least one folder");
        }
        if self.file.roots.iter().any(|r| r.as_os_str().is_empty()) {
            return fail("file.roots", "has an empty path");
        }
        if self.exec.dir.as_os_str().is_empty() {
            return fail("exec.dir", "must name a folder");
        }
        if let Some(user) = &self.exec.user {
            crate::os::confine::lookup_user(user).or_else(|why| fail("exec.user", why))?;
        }

        for (name, cron) in &self.cron {
            let key = |k: &str| format!("cron.{name}.{k}");
            if cron.schedule.trim().is_empty() {
                return fail(&key("schedule"), "must not be empty");
            }
            if !KIND_NAMES.contains(&cron.kind.as_str()) {
                return fail(
                    &key("kind"),
                    format!(
                        "must be one of {} (got {:?})",
                        KIND_NAMES.join(", "),
                        cron.kind
                    ),
                );
            }
            if !cron.payload.is_object() {
                return fail(&key("payload"), "must be an inline table");
            }
            if cron.queue.trim().is_empty() {
                return fail(&key("queue"), "must not be empty");
            }
            if cron.max_attempts == Some(0) {
                return fail(&key("max_attempts"), "must be at least 1 (got 0)");
            }
            // The expression, the time zone and the payload against its kind
            // are checked by the daemon's cron, through `load_checked`.
        }
        Ok(())
    }

    /// Settings that are valid but probably a mistake, as `(key, why)`:
    /// the daemon logs each as `config.warning`, `check-config` prints them.
    pub fn warnings(&self) -> Vec<(String, String)> {
        let mut warnings = Vec::new();
        if let Some(addr) = self.metrics.listen {
            let token = !self.metrics.dashboard_token_env.is_empty()
                || !self.metrics.dashboard_token_file.as_os_str().is_empty();
            if !addr.ip().is_loopback() && !token {
                warnings.push((
                    "metrics.listen".to_string(),
                    format!(
                        "is {addr}, reachable from other hosts, and no dashboard token is set: anyone who reaches it reads every payload; set metrics.dashboard_token_env or _file, or listen on 127.0.0.1"
                    ),
                ));
            }
        }
        for root in &self.file.roots {
            if let Some(folder) = system_folder(root) {
                warnings.push((
                    "file.roots".to_string(),
                    format!("includes {folder}, a system folder: file jobs may read, replace and delete what is under it"),
                ));
            }
        }
        if let Some(folder) = system_folder(&self.exec.dir) {
            warnings.push((
                "exec.dir".to_string(),
                format!("is {folder}, a system folder: every program in it becomes a handler any job can run with arguments of its choosing"),
            ));
        }
        // Folders that are files: every job that uses them would fail
        // (a daemon started without a word about it).
        let mut folders: Vec<(&str, &std::path::Path)> = self
            .file
            .roots
            .iter()
            .map(|r| ("file.roots", r.as_path()))
            .collect();
        if self.email.transport == crate::config::EmailTransport::File {
            folders.push(("email.dir", self.email.dir.as_path()));
        }
        for (key, folder) in folders {
            if folder.is_file() {
                warnings.push((
                    key.to_string(),
                    format!(
                        "names {}, which is a file, not a folder: the jobs that use it fail",
                        folder.display()
                    ),
                ));
            }
        }
        if self.http.redact_headers.is_empty() {
            warnings.push((
                "http.redact_headers".to_string(),
                "is empty: every header of an http job, credentials included, is shown whole by jobd show and the dashboard".to_string(),
            ));
        }
        warnings
    }
}
