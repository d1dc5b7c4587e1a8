//! Shared helpers for the integration tests: a temporary jobd home with a
//! config file and a database, the real `jobd` binary, the real `sqlite3`
//! shell, and waiting with a deadline instead of fixed sleeps.

#![allow(dead_code)] // each test binary uses a different part of this module

use jobd::store::prelude::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use jobd::store::{OpenMode, SqliteStore};

pub mod browser;
mod daemon;
mod home;
mod http;
pub mod pg;
pub mod procs;
mod smtp;
mod spawned;

// Each test binary uses some of these; the rest would warn as unused.
#[allow(unused_imports)]
pub use daemon::*;
#[allow(unused_imports)]
pub use home::*;
#[allow(unused_imports)]
pub use http::*;
#[allow(unused_imports)]
pub use smtp::*;
#[allow(unused_imports)]
pub use spawned::Spawned;

/// libfaketime (Debian's `faketime` package), preloaded to freeze a
/// command's clock at a chosen instant (`FAKETIME=@2026-10-25 01:20:00`).
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The jobd binary cargo built for these tests.
pub const JOBD: &str = env!("CARGO_BIN_EXE_jobd");

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

/// The schema's "now" in epoch ms, for SQL written by tests.
pub const NOW: &str = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";

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

/// A jobd home on one backend: SQLite, or a PostgreSQL schema of its own
/// (dropped with it).
pub struct BackendHome {
    /// "sqlite" or "postgres", for messages.
    pub name: &'static str,
    /// The home; its config names the backend's database.
    pub home: Home,
    /// The PostgreSQL schema, on that backend.
    pub schema: Option<pg::Schema>,
}

impl BackendHome {
    /// The first column of the first row `sql` returns, as text, read with
    /// the backend's own shell (`sqlite3` or `psql`).
    pub fn value(&self, sql: &str) -> String {
        match &self.schema {
            Some(schema) => schema.psql(sql).unwrap(),
            None => self.home.text(sql),
        }
    }

    /// Another home (its own folder and config, with `extra` TOML) on the
    /// same database: a second daemon's, as on another host.
    pub fn another(&self, extra: &str) -> Home {
        match &self.schema {
            Some(schema) => Home::on_postgres(&schema.url(), extra),
            None => {
                let other = Home::new();
                std::fs::write(
                    other.config(),
                    format!(
                        "[database]\npath = \"{}\"\nbusy_timeout = \"5s\"\n{extra}\n",
                        self.home.db().display()
                    ),
                )
                .expect("write config");
                other
            }
        }
    }

    /// Replaces the home's config with its database and `extra` (for a
    /// SIGHUP to read).
    pub fn rewrite_config(&self, extra: &str) {
        match &self.schema {
            Some(schema) => std::fs::write(
                self.home.config(),
                format!("[database]\nurl = \"{}\"\n{extra}\n", schema.url()),
            )
            .expect("write config"),
            None => self.home.write_config(extra),
        }
    }

    /// Inserts `n` jobs, each row `select` (SQL over `i`, 1 to `n`) into
    /// `columns`, in one statement either shell runs.
    pub fn insert_many(&self, n: usize, columns: &str, select: &str) {
        self.value(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) \
             INSERT INTO jobs({columns}) SELECT {select} FROM n;"
        ));
    }

    /// Waits until `sql` answers `want`; panics with the jobs by state and
    /// `what` if it does not within the patience.
    pub fn wait_value(&self, sql: &str, want: &str, what: &str) {
        if wait_for(PATIENCE, || (self.value(sql) == want).then_some(())).is_none() {
            panic!(
                "{} ({what}): {sql} never gave {want}; jobs by state: {}",
                self.name,
                self.states()
            );
        }
    }

    /// The jobs by state (`queued=3 running=1`), for messages.
    pub fn states(&self) -> String {
        let join = match self.schema {
            Some(_) => "string_agg(state || '=' || n, ' ')",
            None => "group_concat(state || '=' || n, ' ')",
        };
        self.value(&format!(
            "SELECT {join} FROM (SELECT state, count(*) AS n FROM jobs GROUP BY state) t;"
        ))
    }

    /// The first column of `sql` as a number.
    pub fn count(&self, sql: &str) -> i64 {
        let text = self.value(sql);
        text.parse()
            .unwrap_or_else(|_| panic!("{}: {sql} gave {text:?}", self.name))
    }

    /// What `check-config` shows as the database: its path or its schema.
    pub fn database_named(&self) -> String {
        match &self.schema {
            Some(schema) => schema.name.clone(),
            None => "jobd.db".to_string(),
        }
    }
}

/// A home on each backend this machine runs: SQLite always, PostgreSQL
/// when its server answers (required in CI), so a test runs on both.
pub fn homes(tag: &str) -> Vec<BackendHome> {
    homes_with(tag, "")
}

/// [`homes`] with `extra` TOML in each home's config.
pub fn homes_with(tag: &str, extra: &str) -> Vec<BackendHome> {
    let mut out = vec![BackendHome {
        name: "sqlite",
        home: Home::with_config(extra),
        schema: None,
    }];
    if let Some(schema) = pg::Schema::create(tag) {
        out.push(BackendHome {
            name: "postgres",
            home: Home::on_postgres(&schema.url(), extra),
            schema: Some(schema),
        });
    }
    out
}
