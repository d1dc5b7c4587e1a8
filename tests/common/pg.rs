//! A PostgreSQL schema per test on the machine's server (every test that runs
//! on both backends, and `tests/postgres.rs`).
#![allow(dead_code)]

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

/// A client (`psql`) inside a transaction in a schema, holding what its
/// statements locked until [`Holder::release`] ends its session.
pub struct Holder {
    child: std::process::Child,
    schema: String,
}

impl Schema {
    /// Runs `sql` in a transaction on a client of its own, which then
    /// sleeps holding its locks; returns once it sleeps.
    pub fn hold(&self, sql: &str, what: &str) -> Holder {
        let child = std::process::Command::new("psql")
            .args(["-h", "127.0.0.1", "-d", "test", "-qAt", "-c"])
            .arg(format!(
                "SET search_path = {}; BEGIN; {sql}; SELECT pg_sleep(120); COMMIT;",
                self.name
            ))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let holding = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' \
             AND query LIKE '%{}%pg_sleep(120)%' AND pid <> pg_backend_pid();",
            self.name
        );
        super::wait_for(super::PATIENCE, || {
            (psql(&holding).as_deref() == Ok("1")).then_some(())
        })
        .unwrap_or_else(|| panic!("the client never held {what}"));
        Holder {
            child,
            schema: self.name.clone(),
        }
    }
}

impl Holder {
    /// Ends the client's session, and with it its locks.
    pub fn release(mut self) {
        psql(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE query LIKE '%{}%pg_sleep(120)%' AND pid <> pg_backend_pid();",
            self.schema
        ))
        .unwrap();
        let _ = self.child.wait();
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

/// The SQL of a client writing a failed attempt (`retry`, error `error`)
/// of job `job` in `queue` straight into `job_attempts`, as a daemon's
/// outcome would: it takes its place when the statement runs, before its
/// transaction commits.
pub fn failed_attempt(job: i64, queue: &str, error: &str) -> String {
    format!(
        "INSERT INTO job_attempts (job_id, attempt, worker, queue, kind, started_at, \
           finished_at, outcome, error, duration_ms) \
         VALUES ({job}, 1, 'w', '{queue}', 'noop', 1, 2, 'retry', '{error}', 1)"
    )
}
