//! The PostgreSQL backend (SPEC §9), first part: the schema and its
//! migrations. The same tables, columns, states and CHECK rules as the
//! SQLite schema, with `BIGINT` epoch-ms timestamps and `jsonb` payloads
//! and results, so that clients insert the same way on either backend and
//! the database itself rejects a bad row.
//!
//! Not yet here: the [`super::Store`] operations (claims with `FOR UPDATE
//! SKIP LOCKED`, completions, rescue, stats…) and `LISTEN/NOTIFY` pickup.
//! Until they land, `jobd migrate` is the only command that takes a
//! `database.url`; the others say so and stop.
//!
//! The `postgres` crate is the blocking client the issue names: it runs a
//! small runtime of its own inside, and jobd's code stays synchronous.

use postgres::{Client, NoTls};

use super::StoreError;

/// The migrations in order; entry `i` takes a database from version `i` to
/// `i + 1`. Appended to, never edited.
pub const MIGRATIONS: &[&str] = &[V1_TABLES];

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Epoch milliseconds now, as SQL: the default of every timestamp column.
macro_rules! now_ms {
    () => {
        "(floor(extract(epoch from clock_timestamp()) * 1000))::bigint"
    };
}

/// Version 1: every table of the SQLite schema at its version 4, the same
/// rules, the claim index with the pool after the queue, and a trigger that
/// NOTIFYs `jobd_jobs` on every insert for pickup.
const V1_TABLES: &str = concat!(
    "CREATE TABLE jobs (
    id               BIGSERIAL PRIMARY KEY,
    queue            TEXT    NOT NULL DEFAULT 'default' CONSTRAINT queue_not_empty CHECK (queue <> ''),
    kind             TEXT    NOT NULL CONSTRAINT kind_not_empty CHECK (kind <> ''),
    payload          JSONB   NOT NULL DEFAULT '{}',
    priority         BIGINT  NOT NULL DEFAULT 0,
    run_at           BIGINT  NOT NULL DEFAULT ",
    now_ms!(),
    ",
    max_attempts     BIGINT  NULL CONSTRAINT max_attempts_at_least_1 CHECK (max_attempts >= 1),
    timeout_ms       BIGINT  NULL CONSTRAINT timeout_ms_positive CHECK (timeout_ms > 0),
    unique_key       TEXT    NULL,
    state            TEXT    NOT NULL DEFAULT 'queued'
                     CONSTRAINT state_known CHECK (state IN ('queued', 'running', 'succeeded', 'dead', 'cancelled')),
    attempts         BIGINT  NOT NULL DEFAULT 0 CONSTRAINT attempts_not_negative CHECK (attempts >= 0),
    created_at       BIGINT  NOT NULL DEFAULT ",
    now_ms!(),
    ",
    started_at       BIGINT  NULL,
    finished_at      BIGINT  NULL,
    lease_until      BIGINT  NULL,
    worker           TEXT    NULL,
    last_error       TEXT    NULL,
    result           JSONB   NULL,
    cancel_requested BOOLEAN NOT NULL DEFAULT false
);
CREATE INDEX jobs_ready ON jobs (queue, (kind IN ('checksum', 'compress', 'exec')), priority DESC, run_at, id)
    WHERE state = 'queued';
CREATE UNIQUE INDEX jobs_unique_key ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('queued', 'running');
CREATE INDEX jobs_running ON jobs (lease_until) WHERE state = 'running';
CREATE INDEX jobs_succeeded ON jobs (finished_at, queue) WHERE state = 'succeeded';
CREATE INDEX jobs_dead ON jobs (finished_at, queue) WHERE state = 'dead';
CREATE INDEX jobs_cancelled ON jobs (finished_at, queue) WHERE state = 'cancelled';

CREATE TABLE job_runs (
    id          BIGSERIAL PRIMARY KEY,
    job_id      BIGINT  NOT NULL,
    attempt     BIGINT  NOT NULL,
    worker      TEXT    NOT NULL,
    queue       TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    started_at  BIGINT  NOT NULL,
    finished_at BIGINT  NOT NULL,
    outcome     TEXT    NOT NULL CONSTRAINT outcome_known CHECK (outcome IN
                ('succeeded', 'retry', 'dead', 'timeout', 'rescued', 'interrupted', 'cancelled')),
    error       TEXT    NULL,
    duration_ms BIGINT  NOT NULL
);
CREATE INDEX job_runs_job ON job_runs (job_id, attempt);

CREATE TABLE workers (
    id           TEXT    PRIMARY KEY,
    host         TEXT    NOT NULL,
    pid          BIGINT  NOT NULL,
    version      TEXT    NOT NULL,
    started_at   BIGINT  NOT NULL,
    heartbeat_at BIGINT  NOT NULL,
    queues       TEXT    NOT NULL,
    running      BIGINT  NOT NULL DEFAULT 0
);

CREATE TABLE queues (
    name       TEXT    PRIMARY KEY,
    paused     BOOLEAN NOT NULL DEFAULT false,
    updated_at BIGINT  NOT NULL DEFAULT ",
    now_ms!(),
    "
);

CREATE TABLE cron (
    name        TEXT   PRIMARY KEY,
    last_slot   BIGINT NULL,
    last_job_id BIGINT NULL
);

-- Pickup: daemons LISTEN on jobd_jobs; every insert tells them.
CREATE FUNCTION jobd_notify_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('jobd_jobs', NEW.queue);
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_notify_insert AFTER INSERT ON jobs
    FOR EACH ROW EXECUTE FUNCTION jobd_notify_insert();
"
);

/// A connection to a PostgreSQL database holding (or about to hold) the
/// jobd schema.
pub struct PgStore {
    client: Client,
    url: String,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &redact_url(&self.url))
            .finish_non_exhaustive()
    }
}

/// `url` with any password replaced, for messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:(redacted)@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host/db`).
    pub fn connect(url: &str) -> Result<PgStore, StoreError> {
        let client = Client::connect(url, NoTls).map_err(|e| StoreError::Postgres {
            url: redact_url(url),
            op: "connect",
            detail: e.to_string(),
        })?;
        Ok(PgStore {
            client,
            url: url.to_string(),
        })
    }

    fn err(&self, op: &'static str, e: postgres::Error) -> StoreError {
        StoreError::Postgres {
            url: redact_url(&self.url),
            op,
            detail: e.to_string(),
        }
    }

    /// The schema version of the database (0: no jobd schema yet).
    pub fn schema_version(&mut self) -> Result<i64, StoreError> {
        let exists: bool = self
            .client
            .query_one("SELECT to_regclass('jobd_schema') IS NOT NULL", &[])
            .map_err(|e| self.err("read the schema version", e))?
            .get(0);
        if !exists {
            return Ok(0);
        }
        let version: i64 = self
            .client
            .query_one("SELECT version FROM jobd_schema", &[])
            .map_err(|e| self.err("read the schema version", e))?
            .get(0);
        Ok(version)
    }

    /// Creates or upgrades the schema; returns the versions before and
    /// after. Each step runs in one transaction holding an advisory lock, so
    /// two daemons starting together do not both apply it.
    pub fn migrate(&mut self) -> Result<(i64, i64), StoreError> {
        let before = self.schema_version()?;
        if before > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: redact_url(&self.url).into(),
                found: before,
                supported: SCHEMA_VERSION,
            });
        }
        let url = redact_url(&self.url);
        let fail = |op: &'static str, e: postgres::Error| StoreError::Postgres {
            url: url.clone(),
            op,
            detail: e.to_string(),
        };
        let mut tx = self.client.transaction().map_err(|e| fail("migrate", e))?;
        // jobd's own lock number; released at commit.
        tx.execute("SELECT pg_advisory_xact_lock(7310242001)", &[])
            .map_err(|e| fail("migrate", e))?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS jobd_schema (version BIGINT NOT NULL);
             INSERT INTO jobd_schema (version) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM jobd_schema);",
        )
        .map_err(|e| fail("migrate", e))?;
        let current: i64 = tx
            .query_one("SELECT version FROM jobd_schema", &[])
            .map_err(|e| fail("migrate", e))?
            .get(0);
        for (i, step) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
            tx.batch_execute(step).map_err(|e| fail("migrate", e))?;
            tx.execute("UPDATE jobd_schema SET version = $1", &[&(i as i64 + 1)])
                .map_err(|e| fail("migrate", e))?;
        }
        tx.commit().map_err(|e| fail("migrate", e))?;
        Ok((before, SCHEMA_VERSION))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact_url("postgres://jobd:s3cret@db.example:5432/jobs"),
            "postgres://jobd:(redacted)@db.example:5432/jobs"
        );
        assert_eq!(
            redact_url("postgres://jobd@127.0.0.1/test"),
            "postgres://jobd@127.0.0.1/test"
        );
    }
}
