//! A real `jobd run` started in a home, read through its log, stopped by
//! signal.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::*;

/// A `jobd run` process started by a test, its log in a file.
pub struct Daemon {
    child: std::process::Child,
    log: PathBuf,
    reaped: bool,
}

impl Home {
    /// Starts `jobd run` and waits for its `daemon.started` line.
    pub fn daemon(&self) -> Daemon {
        self.daemon_logging_to("daemon.log")
    }

    /// Starts `jobd run` logging to `name` in the home folder.
    pub fn daemon_logging_to(&self, name: &str) -> Daemon {
        self.daemon_reading(&self.path().join(name), &self.path().join(name))
    }

    /// Starts `jobd run` with stderr in `stderr` and waits for its
    /// `daemon.started` line in `log` (the config's `log.file`, or `stderr`).
    pub fn daemon_reading(&self, stderr: &Path, log: &Path) -> Daemon {
        self.daemon_with_env(stderr, log, &[])
    }

    /// [`Home::daemon_reading`] with extra environment variables.
    pub fn daemon_with_env(&self, stderr: &Path, log: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut cmd = self.cmd(&["run"]);
        cmd.envs(env.iter().copied());
        self.spawn_daemon(cmd, stderr, log)
    }

    /// Starts `cmd` (a `jobd run` the test prepared, say with limits set
    /// before exec) with stderr appended to `stderr`, and waits for its
    /// `daemon.started` line in `log`.
    pub fn spawn_daemon(&self, mut cmd: Command, stderr: &Path, log: &Path) -> Daemon {
        let log = log.to_path_buf();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(stderr)
            .expect("log file");
        let child = cmd
            .stderr(file)
            .stdout(Stdio::null())
            .spawn()
            .expect("start jobd run");
        let daemon = Daemon {
            child,
            log,
            reaped: false,
        };
        daemon.wait_log("daemon.started");
        daemon
    }

    /// Inserts noop jobs through the `sqlite3` shell; returns their ids.
    pub fn insert(&self, values: &str) -> Vec<i64> {
        let out = self
            .sqlite3(&format!(
                "INSERT INTO jobs(kind, payload, queue, priority, run_at, max_attempts, timeout_ms) \
                 VALUES {values} RETURNING id;"
            ))
            .succeeds();
        out.lines().map(|l| l.trim().parse().expect("id")).collect()
    }

    /// This database's random id (`meta.database_id`), which jobs carry in
    /// `Idempotency-Key`, `Message-ID` and mail file names.
    pub fn database_id(&self) -> String {
        self.text("SELECT value FROM meta WHERE key = 'database_id';")
            .trim()
            .to_string()
    }

    /// The state of job `id`.
    pub fn state(&self, id: i64) -> String {
        let out = self
            .sqlite3(&format!("SELECT state FROM jobs WHERE id = {id};"))
            .succeeds();
        out.trim().to_string()
    }

    /// Waits until job `id` is in `state`; panics with the job's row if not.
    pub fn wait_state(&self, id: i64, state: &str) {
        let reached = wait_for(PATIENCE, || (self.state(id) == state).then_some(()));
        if reached.is_none() {
            let row = self
                .sqlite3(&format!(
                    "SELECT state, attempts, worker, last_error FROM jobs WHERE id = {id};"
                ))
                .stdout();
            panic!("job {id} never reached {state}: {row}");
        }
    }

    /// Waits until `sql` (one integer) returns `want`.
    pub fn wait_count(&self, sql: &str, want: i64) {
        let mut last = -1;
        let reached = wait_for(PATIENCE, || {
            last = self.query_i64(sql);
            (last == want).then_some(())
        });
        assert!(reached.is_some(), "{sql} stayed at {last}, expected {want}");
    }
}

impl Daemon {
    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill {signal}");
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds `needle` (after `skip` bytes); returns the line.
    pub fn wait_log_after(&self, skip: usize, needle: &str) -> String {
        let found = wait_for(PATIENCE, || {
            let log = self.log();
            log.get(skip..)
                .and_then(|rest| rest.lines().find(|l| l.contains(needle)))
                .map(str::to_string)
        });
        found.unwrap_or_else(|| panic!("log never said {needle:?}:\n{}", self.log()))
    }

    /// Waits until the log holds `needle`; returns the line.
    pub fn wait_log(&self, needle: &str) -> String {
        self.wait_log_after(0, needle)
    }

    /// Waits for the process to exit; returns its exit code and log.
    pub fn wait_exit(mut self) -> (i32, String) {
        let status = wait_for(PATIENCE, || self.child.try_wait().expect("try_wait"));
        match status {
            Some(status) => {
                self.reaped = true;
                (status.code().unwrap_or(-1), self.log())
            }
            None => panic!("daemon did not exit:\n{}", self.log()),
        }
    }

    /// SIGTERM, then waits for the exit; asserts exit 0 and returns the log.
    pub fn stop(self) -> String {
        self.signal(libc::SIGTERM);
        let (code, log) = self.wait_exit();
        assert_eq!(code, 0, "exit status after SIGTERM; log:\n{log}");
        log
    }

    /// SIGKILL and reap.
    pub fn kill9(mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
        self.reaped = true;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Only signal a process not yet reaped, never a reused pid.
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
