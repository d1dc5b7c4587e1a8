//! Shared helpers for the integration tests: a temporary jobd home with a
//! config file and a database, the real `jobd` binary, the real `sqlite3`
//! shell, and waiting with a deadline instead of fixed sleeps.

#![allow(dead_code)] // each test binary uses a different part of this module

use jobd::store::prelude::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use jobd::store::{OpenMode, SqliteStore};

/// libfaketime (Debian's `faketime` package), preloaded to freeze a
/// command's clock at a chosen instant (`FAKETIME=@2026-10-25 01:20:00`).
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The jobd binary cargo built for these tests.
pub const JOBD: &str = env!("CARGO_BIN_EXE_jobd");

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

/// Polls `check` until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How long a test waits for a daemon to reach a state before failing. Long,
/// because CI machines are slow and shared; a passing test never waits it.
pub const PATIENCE: Duration = Duration::from_secs(30);

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

/// A request an [`HttpServer`] received.
#[derive(Clone, Debug)]
pub struct Received {
    /// `GET`, `POST`, …
    pub method: String,
    /// Path and query.
    pub url: String,
    /// Header names lower-cased, with their values.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub body: String,
}

impl Received {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What an [`HttpServer`] answers.
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl Reply {
    /// `status` with `body`, at once.
    pub fn new(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Answers after `delay`.
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

type Handler = dyn Fn(&Received, usize) -> Reply + Send + Sync;

/// A real HTTP server on 127.0.0.1 (tiny_http), one thread per request, that
/// records what it receives. The handler gets the request and how many
/// requests came to the same path before it.
pub struct HttpServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    received: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
}

impl HttpServer {
    /// Starts serving with `handler`.
    pub fn start(
        handler: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static,
    ) -> HttpServer {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = server.server_addr().to_ip().expect("ip listener").port();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Received>::new()));
        let handler: std::sync::Arc<Handler> = std::sync::Arc::new(handler);
        let log = std::sync::Arc::clone(&received);
        std::thread::spawn(move || {
            for mut request in server.incoming_requests() {
                let mut body = String::new();
                let _ = std::io::Read::read_to_string(request.as_reader(), &mut body);
                let seen = Received {
                    method: request.method().to_string(),
                    url: request.url().to_string(),
                    headers: request
                        .headers()
                        .iter()
                        .map(|h| {
                            (
                                h.field.to_string().to_ascii_lowercase(),
                                h.value.to_string(),
                            )
                        })
                        .collect(),
                    body,
                };
                let before = {
                    let mut all = log.lock().unwrap();
                    let n = all.iter().filter(|r| r.url == seen.url).count();
                    all.push(seen.clone());
                    n
                };
                let handler = std::sync::Arc::clone(&handler);
                std::thread::spawn(move || {
                    let reply = handler(&seen, before);
                    std::thread::sleep(reply.delay);
                    let mut response =
                        tiny_http::Response::from_string(reply.body).with_status_code(reply.status);
                    for (name, value) in reply.headers {
                        response.add_header(
                            tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes())
                                .expect("header"),
                        );
                    }
                    let _ = request.respond(response);
                });
            }
        });
        HttpServer {
            base: format!("http://127.0.0.1:{port}"),
            received,
        }
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// The schema's "now" in epoch ms, for SQL written by tests.
pub const NOW: &str = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";

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

/// A message an [`SmtpServer`] accepted.
#[derive(Clone, Debug, Default)]
pub struct Mail {
    /// `MAIL FROM`.
    pub from: String,
    /// `RCPT TO`s.
    pub to: Vec<String>,
    /// The DATA, as sent.
    pub data: String,
}

#[derive(Clone)]
struct MailHandler {
    inbox: std::sync::Arc<std::sync::Mutex<Vec<Mail>>>,
    current: Mail,
    refuse_rcpt: bool,
}

impl mailin_embedded::Handler for MailHandler {
    fn rcpt(&mut self, _to: &str) -> mailin_embedded::Response {
        if self.refuse_rcpt {
            mailin_embedded::response::NO_MAILBOX
        } else {
            mailin_embedded::response::OK
        }
    }

    fn data_start(
        &mut self,
        _domain: &str,
        from: &str,
        _is8bit: bool,
        to: &[String],
    ) -> mailin_embedded::Response {
        self.current = Mail {
            from: from.to_string(),
            to: to.to_vec(),
            data: String::new(),
        };
        mailin_embedded::response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.current.data.push_str(&String::from_utf8_lossy(buf));
        Ok(())
    }

    fn data_end(&mut self) -> mailin_embedded::Response {
        self.inbox
            .lock()
            .unwrap()
            .push(std::mem::take(&mut self.current));
        mailin_embedded::response::OK
    }
}

/// A real SMTP server on 127.0.0.1 (mailin-embedded) that keeps what it
/// accepts, or answers 550 to every recipient.
pub struct SmtpServer {
    /// The port it listens on.
    pub port: u16,
    inbox: std::sync::Arc<std::sync::Mutex<Vec<Mail>>>,
}

impl SmtpServer {
    /// Starts a server; `refuse_rcpt` makes it answer 550 to recipients.
    pub fn start(refuse_rcpt: bool) -> SmtpServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().unwrap().port();
        let inbox = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let handler = MailHandler {
            inbox: std::sync::Arc::clone(&inbox),
            current: Mail::default(),
            refuse_rcpt,
        };
        let mut server = mailin_embedded::Server::new(handler);
        server
            .with_name("test.smtp")
            .with_num_threads(4)
            .with_tcp_listener(listener);
        std::thread::spawn(move || {
            let _ = server.serve();
        });
        SmtpServer { port, inbox }
    }

    /// Every message accepted so far.
    pub fn inbox(&self) -> Vec<Mail> {
        self.inbox.lock().unwrap().clone()
    }
}

/// The code block that follows `<!-- snippet: name -->` in README.md or a
/// file of docs/, with the indentation of its fence (inside a list item)
/// taken off.
pub fn snippet(name: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let marker = format!("<!-- snippet: {name} -->");
    let (readme, at) = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .find_map(|text| text.find(&marker).map(|at| (text, at)))
        .unwrap_or_else(|| panic!("no {marker} in README.md or docs/"));
    let mut lines = readme[at + marker.len()..]
        .lines()
        .skip_while(|l| l.trim().is_empty());
    let fence = lines.next().expect("a code block after the marker");
    assert!(fence.trim_start().starts_with("```"), "{fence}");
    let indent = fence.len() - fence.trim_start().len();
    let mut body = String::new();
    for line in lines.take_while(|l| l.trim() != "```") {
        body.push_str(line.get(indent..).unwrap_or(line.trim_start()));
        body.push('\n');
    }
    body
}

/// A TCP port on 127.0.0.1 that nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1")
        .local_addr()
        .expect("a local address")
        .port()
}

/// A PostgreSQL schema per test on the machine's server (`tests/postgres.rs`,
/// and the store conformance suite's second backend).
pub mod pg {
    pub const SERVER: &str = "postgres://root@127.0.0.1:5432/test";

    /// A schema of its own on the test server, dropped when done.
    pub struct Schema {
        /// The schema's name.
        pub name: String,
    }

    impl Schema {
        pub fn create(tag: &str) -> Option<Schema> {
            let name = format!("jobd_{tag}_{}", std::process::id());
            let ok = psql(&format!(
                "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name};"
            ));
            match ok {
                Ok(_) => Some(Schema { name }),
                Err(e) if std::env::var("JOBD_REQUIRE_POSTGRES").as_deref() == Ok("1") => {
                    panic!("PostgreSQL is required here: {e}")
                }
                Err(e) => {
                    eprintln!("no PostgreSQL server answers ({e}): skipped");
                    None
                }
            }
        }

        /// The URL that puts jobd in this schema.
        pub fn url(&self) -> String {
            format!("{SERVER}?options=-c%20search_path%3D{}", self.name)
        }

        /// Runs SQL in this schema with `psql`; Err carries its stderr.
        pub fn psql(&self, sql: &str) -> Result<String, String> {
            psql(&format!("SET search_path = {}; {sql}", self.name))
        }

        /// Waits until `sql` answers `want`; panics with the jobs by state
        /// and `what` if it does not within the patience.
        pub fn wait_value(&self, sql: &str, want: &str, what: &str) {
            let reached = super::wait_for(super::PATIENCE, || {
                (self.psql(sql).as_deref() == Ok(want)).then_some(())
            });
            if reached.is_none() {
                panic!(
                    "{what}: {sql} never gave {want}; jobs by state: {:?}",
                    self.psql("SELECT state, count(*) FROM jobs GROUP BY state;")
                );
            }
        }
    }

    impl Drop for Schema {
        fn drop(&mut self) {
            let _ = psql(&format!("DROP SCHEMA IF EXISTS {} CASCADE;", self.name));
        }
    }

    pub fn psql(sql: &str) -> Result<String, String> {
        let out = std::process::Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-d",
                "test",
                "-v",
                "ON_ERROR_STOP=1",
                "-qAt",
                "-c",
                sql,
            ])
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

/// The lines a child writes to `stdout`, as they come, read on a thread of
/// their own (for following commands such as `jobd tail`).
pub fn lines(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Processes as the kernel lists them, for tests of the CPU pool.
pub mod procs {
    /// The pids whose parent is `parent`.
    pub fn children(parent: i32) -> Vec<i32> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(pid) = name.parse::<i32>() else {
                continue;
            };
            if stat(pid).is_some_and(|(state, ppid)| ppid == parent && state != 'Z') {
                out.push(pid);
            }
        }
        out.sort_unstable();
        out
    }

    /// The CPU worker processes of the daemon `daemon`.
    pub fn workers(daemon: i32) -> Vec<i32> {
        children(daemon)
            .into_iter()
            .filter(|&pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("__worker"))
            })
            .collect()
    }

    /// True once `pid` no longer runs: gone, or a zombie nobody reaped yet
    /// (a container's first process may never reap orphans).
    pub fn gone(pid: i32) -> bool {
        stat(pid).is_none_or(|(state, _)| state == 'Z' || state == 'X')
    }

    /// (state, parent pid) of `pid`.
    fn stat(pid: i32) -> Option<(char, i32)> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &text[text.rfind(')')? + 2..];
        let mut fields = rest.split_whitespace();
        let state = fields.next()?.chars().next()?;
        let ppid = fields.next()?.parse().ok()?;
        Some((state, ppid))
    }
}

/// A backend under test: its name, a fresh migrated store, and what keeps
/// it alive (a temp folder, a PostgreSQL schema dropped at the end).
pub type Backend = (
    &'static str,
    Box<dyn jobd::store::Store>,
    Box<dyn std::any::Any>,
);

/// A fresh store per backend: a SQLite file, and a PostgreSQL schema named
/// after `tag` and a counter where the server answers (tests run in
/// parallel).
pub fn backends(tag: &str) -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let mut sqlite = SqliteStore::open(
        &dir.path().join("jobd.db"),
        Duration::from_secs(5),
        OpenMode::Create,
    )
    .unwrap();
    sqlite.migrate().unwrap();
    let mut out: Vec<Backend> = vec![("sqlite", Box::new(sqlite), Box::new(dir))];
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if let Some(schema) = pg::Schema::create(&format!("{tag}{n}")) {
        let mut pg =
            jobd::store::postgres::PgStore::connect(&schema.url(), Duration::from_secs(5)).unwrap();
        Admin::migrate(&mut pg).unwrap();
        out.push(("postgres", Box::new(pg), Box::new(schema)));
    }
    out
}
