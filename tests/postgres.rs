//! The PostgreSQL backend, first part: `jobd migrate` creates and keeps the
//! schema on a real server, and the database itself rejects bad inserts from
//! `psql`. Each test works in a schema of its own, dropped at the end.
//!
//! The server is the machine's (127.0.0.1:5432, trust auth, database
//! `test`). Where none answers the tests say so and pass, unless
//! `JOBD_REQUIRE_POSTGRES=1` (set by `.ci/run`, which starts the server).

mod common;

use std::process::Command;

use common::Home;

const SERVER: &str = "postgres://root@127.0.0.1:5432/test";

/// A schema of its own on the test server, dropped when done.
struct Schema {
    name: String,
}

impl Schema {
    fn create(tag: &str) -> Option<Schema> {
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
    fn url(&self) -> String {
        format!("{SERVER}?options=-c%20search_path%3D{}", self.name)
    }

    /// Runs SQL in this schema with `psql`; Err carries its stderr.
    fn psql(&self, sql: &str) -> Result<String, String> {
        psql(&format!("SET search_path = {}; {sql}", self.name))
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = psql(&format!("DROP SCHEMA IF EXISTS {} CASCADE;", self.name));
    }
}

fn psql(sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
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

fn home_on(url: &str) -> Home {
    let home = Home::new();
    std::fs::write(home.config(), format!("[database]\nurl = \"{url}\"\n")).unwrap();
    home
}

#[test]
fn migrate_creates_the_schema_once_and_says_so() {
    let Some(schema) = Schema::create("migrate") else {
        return;
    };
    let home = home_on(&schema.url());
    let first = home.ok(&["migrate"]);
    assert!(
        first.contains("migrated from schema version 0 to 1"),
        "{first}"
    );
    let again = home.ok(&["migrate"]);
    assert!(again.contains("is at schema version 1"), "{again}");
    let tables = schema
        .psql("SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.tables WHERE table_schema = current_schema();")
        .unwrap();
    assert_eq!(tables, "cron,job_runs,jobd_schema,jobs,queues,workers");
    // A schema from a newer jobd is refused, not touched.
    schema.psql("UPDATE jobd_schema SET version = 99;").unwrap();
    home.jobd(&["migrate"])
        .fails(1, "newer than this jobd knows");
    assert_eq!(
        schema.psql("SELECT version FROM jobd_schema;").unwrap(),
        "99"
    );
}

#[test]
fn the_database_rejects_bad_inserts_and_fills_defaults() {
    let Some(schema) = Schema::create("checks") else {
        return;
    };
    home_on(&schema.url()).ok(&["migrate"]);
    for (insert, needle) in [
        (
            "INSERT INTO jobs(kind, payload) VALUES ('noop', '{bad');",
            "invalid input syntax for type json",
        ),
        ("INSERT INTO jobs(kind) VALUES ('');", "kind_not_empty"),
        (
            "INSERT INTO jobs(kind, max_attempts) VALUES ('noop', 0);",
            "max_attempts_at_least_1",
        ),
        (
            "INSERT INTO jobs(kind, timeout_ms) VALUES ('noop', -5);",
            "timeout_ms_positive",
        ),
        (
            "INSERT INTO jobs(kind, state) VALUES ('noop', 'paused');",
            "state_known",
        ),
        (
            "INSERT INTO jobs(kind, queue) VALUES ('noop', '');",
            "queue_not_empty",
        ),
    ] {
        let err = schema.psql(insert).expect_err(insert);
        assert!(err.contains(needle), "{insert}: {err}");
    }
    let row = schema
        .psql(
            "INSERT INTO jobs(kind, payload) VALUES ('http', '{\"url\":\"http://x\"}') \
             RETURNING state || ',' || queue || ',' || attempts || ',' || \
             (abs(run_at - (extract(epoch from now()) * 1000)::bigint) < 60000);",
        )
        .unwrap();
    assert_eq!(row.lines().next().unwrap(), "queued,default,0,true");
    // The unique key allows one active job per key.
    schema
        .psql("INSERT INTO jobs(kind, unique_key) VALUES ('noop', 'k');")
        .unwrap();
    let dup = schema
        .psql("INSERT INTO jobs(kind, unique_key) VALUES ('noop', 'k');")
        .unwrap_err();
    assert!(dup.contains("jobs_unique_key"), "{dup}");
}

#[test]
fn url_and_path_together_or_a_wrong_url_are_refused_naming_the_keys() {
    let home = Home::new();
    std::fs::write(
        home.config(),
        format!("[database]\npath = \"x.db\"\nurl = \"{SERVER}\"\n"),
    )
    .unwrap();
    home.jobd(&["check-config"])
        .fails(1, "database.url and database.path are both set");
    std::fs::write(home.config(), "[database]\nurl = \"mysql://x/y\"\n").unwrap();
    home.jobd(&["check-config"])
        .fails(1, "database.url must be a PostgreSQL URL");
    // A password never shows in check-config.
    let with_password = "postgres://jobd:pw-4e1f-secret@127.0.0.1/test";
    std::fs::write(
        home.config(),
        format!("[database]\nurl = \"{with_password}\"\n"),
    )
    .unwrap();
    let shown = home.ok(&["check-config"]);
    assert!(!shown.contains("pw-4e1f-secret"), "{shown}");
    assert!(
        shown.contains("postgres://jobd:(redacted)@127.0.0.1/test"),
        "{shown}"
    );
    // What the PostgreSQL store cannot do yet, it says.
    home.jobd(&["list"]).fails(
        1,
        "works with `jobd migrate` and `jobd check-config` only so far",
    );
}

#[test]
fn an_insert_from_any_client_notifies_listeners_with_its_queue() {
    let Some(schema) = Schema::create("notify") else {
        return;
    };
    home_on(&schema.url()).ok(&["migrate"]);
    let mut listener = postgres::Client::connect(&schema.url(), postgres::NoTls).unwrap();
    listener.batch_execute("LISTEN jobd_jobs").unwrap();
    schema
        .psql("INSERT INTO jobs(kind, queue) VALUES ('noop', 'mail');")
        .unwrap();
    use postgres::fallible_iterator::FallibleIterator as _;
    let mut notifications = listener.notifications();
    let note = notifications
        .timeout_iter(common::PATIENCE)
        .next()
        .unwrap()
        .expect("the insert notifies");
    assert_eq!((note.channel(), note.payload()), ("jobd_jobs", "mail"));
}
