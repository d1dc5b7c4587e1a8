//! A temporary jobd home (config file, database), the real `jobd` binary
//! and the real `sqlite3` shell run in it.

#![allow(dead_code)]

use jobd::store::{OpenMode, SqliteStore};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::*;

/// A temporary folder holding `config.toml` and `jobd.db`.
pub struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    /// A home with the default config plus `extra` TOML appended.
    pub fn with_config(extra: &str) -> Home {
        let dir = tempfile::tempdir().expect("temp dir");
        let home = Home { dir };
        home.write_config(extra);
        home
    }

    /// A home whose config uses the PostgreSQL database at `url`, plus
    /// `extra` TOML.
    pub fn on_postgres(url: &str, extra: &str) -> Home {
        let home = Home::new();
        std::fs::write(
            home.config(),
            format!("[database]\nurl = \"{url}\"\n{extra}\n"),
        )
        .expect("write config");
        home
    }

    /// A home with the default config.
    pub fn new() -> Home {
        Home::with_config("")
    }

    /// Replaces the config file.
    pub fn write_config(&self, extra: &str) {
        let text = format!(
            "[database]\npath = \"{}\"\nbusy_timeout = \"5s\"\n{extra}\n",
            self.db().display()
        );
        std::fs::write(self.config(), text).expect("write config");
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The config file.
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// The database file.
    pub fn db(&self) -> PathBuf {
        self.dir.path().join("jobd.db")
    }

    /// A `jobd` command with `--config` set, run in the home folder with no
    /// `JOBD_*` variables inherited.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = self.bare(&["--config", self.config().to_str().expect("UTF-8 temp path")]);
        cmd.args(args);
        cmd
    }

    /// A `jobd` command without `--config`, run in the home folder with no
    /// `JOBD_*` or systemd variables inherited.
    pub fn bare(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(JOBD);
        cmd.current_dir(self.path()).args(args);
        // Nothing of the test runner's own service manager either: a test
        // sets these itself when it means to.
        for (key, _) in std::env::vars() {
            let systemd = [
                "JOURNAL_STREAM",
                "NOTIFY_SOCKET",
                "WATCHDOG_USEC",
                "WATCHDOG_PID",
            ];
            if key.starts_with("JOBD_") || systemd.contains(&key.as_str()) {
                cmd.env_remove(key);
            }
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs `jobd ARGS` to its end.
    pub fn jobd(&self, args: &[&str]) -> Run {
        Run(self.cmd(args).output().expect("run jobd"))
    }

    /// Runs `jobd ARGS` and expects success.
    pub fn ok(&self, args: &[&str]) -> String {
        self.jobd(args).succeeds()
    }

    /// Runs `jobd migrate` so the database exists.
    pub fn migrate(&self) {
        self.ok(&["migrate"]);
    }

    /// Runs SQL through the real `sqlite3` shell with a 5 s busy timeout.
    pub fn sqlite3(&self, sql: &str) -> Run {
        sqlite3(&self.db(), sql)
    }

    /// Opens the database through the library.
    pub fn store(&self) -> SqliteStore {
        SqliteStore::open(&self.db(), Duration::from_secs(5), OpenMode::Existing)
            .expect("open store")
    }

    /// One integer from a query (through the library's connection).
    pub fn query_i64(&self, sql: &str) -> i64 {
        let mut store = self.store();
        store
            .connection()
            .query_row(sql, [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

/// Runs SQL through the real `sqlite3` shell.
pub fn sqlite3(db: &Path, sql: &str) -> Run {
    // The SQL goes in on stdin: one command-line argument may not exceed
    // 128 KiB, and some tests insert bigger payloads.
    let mut child = Command::new(sqlite3_bin())
        .args(["-bail", "-cmd", ".timeout 5000"])
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the sqlite3 shell must be installed (.ci/run installs it)");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let sql = sql.to_string();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(sql.as_bytes());
    });
    let out = child.wait_with_output().expect("sqlite3 ran");
    let _ = writer.join();
    Run(out)
}

/// The `sqlite3` shell: `SQLITE3` if set, else from PATH.
pub fn sqlite3_bin() -> String {
    std::env::var("SQLITE3").unwrap_or_else(|_| "sqlite3".to_string())
}

/// A finished process.
pub struct Run(pub Output);

impl Run {
    /// Exit status (-1 for a signal).
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }

    /// Stdout as text.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }

    /// Stderr as text.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }

    /// Asserts success and returns stdout.
    pub fn succeeds(&self) -> String {
        assert_eq!(
            self.code(),
            0,
            "expected success; stderr: {}",
            self.stderr()
        );
        self.stdout()
    }

    /// Asserts a failure with this exit status whose stderr contains `needle`
    /// on a single line, and returns stderr.
    pub fn fails(&self, code: i32, needle: &str) -> String {
        let err = self.stderr();
        assert_eq!(
            self.code(),
            code,
            "expected exit {code}; stdout: {} stderr: {err}",
            self.stdout()
        );
        assert!(err.contains(needle), "stderr {err:?} lacks {needle:?}");
        err
    }
}

impl Home {
    /// Inserts one job of `kind` with `payload` through the `sqlite3` shell;
    /// `max_attempts` and `timeout_ms` as SQL (`NULL` for the defaults).
    pub fn insert_job(
        &self,
        kind: &str,
        payload: &str,
        max_attempts: &str,
        timeout_ms: &str,
    ) -> i64 {
        let payload = payload.replace('\'', "''");
        self.insert(&format!(
            "('{kind}', '{payload}', 'default', 0, {NOW}, {max_attempts}, {timeout_ms})"
        ))[0]
    }

    /// One text column of one row (empty for NULL).
    pub fn text(&self, sql: &str) -> String {
        self.sqlite3(sql)
            .succeeds()
            .trim_end_matches('\n')
            .to_string()
    }
}
