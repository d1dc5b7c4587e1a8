//! The SQLite schema and its migrations, one entry per `PRAGMA user_version`.
//!
//! A migration is appended, never edited: a file made by an older jobd is
//! upgraded in place by running the entries past its version, each in its own
//! `BEGIN IMMEDIATE` transaction so two daemons starting together do not both
//! apply it. The SQL must run in Debian 12's `sqlite3` 3.40 (no
//! `unixepoch('subsec')`), because users insert with that shell.
//!
//! Rules on `state` and `outcome` are written as `=` … `OR` chains, not
//! `IN (…)` lists: SQLite builds an ephemeral table for an `IN` list each
//! time a statement checks it, which cost a third of every completion.

/// The migrations in order; entry `i` takes a file from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    V1_TABLES,
    V2_OPERATIONS,
    V3_LEANER_RUNS,
    V4_READY_BY_POOL,
    V5_IDS_AND_UTF8,
    V6_LIMIT_KEYS,
    V7_READY_KEY_BY_POOL,
    V8_KEY_INDEX_ON_DEMAND,
    V9_DEPENDENCIES,
    V10_BATCHES,
    V11_SEQUENCES,
    V12_PROGRESS,
    V13_SNOOZES,
    V14_FLOW_RULES,
    V15_HANDLERS,
    V16_LIGHTER_TRANSITIONS,
    V17_SUCCESS_IN_THE_JOB,
    V18_SUCCESS_KEPT,
];

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Version 1: the job table, its attempt history and the insert guards.
const V1_TABLES: &str = "
CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY,
    queue            TEXT    NOT NULL DEFAULT 'default' CONSTRAINT queue_not_empty CHECK (queue <> ''),
    kind             TEXT    NOT NULL CONSTRAINT kind_not_empty CHECK (kind <> ''),
    payload          TEXT    NOT NULL DEFAULT '{}' CONSTRAINT payload_is_json CHECK (json_valid(payload)),
    priority         INTEGER NOT NULL DEFAULT 0,
    run_at           INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    max_attempts     INTEGER NULL CONSTRAINT max_attempts_at_least_1 CHECK (max_attempts >= 1),
    timeout_ms       INTEGER NULL CONSTRAINT timeout_ms_positive CHECK (timeout_ms > 0),
    unique_key       TEXT    NULL,
    state            TEXT    NOT NULL DEFAULT 'queued'
                     CONSTRAINT state_known CHECK (state = 'queued' OR state = 'running'
                         OR state = 'succeeded' OR state = 'dead' OR state = 'cancelled'),
    attempts         INTEGER NOT NULL DEFAULT 0 CONSTRAINT attempts_not_negative CHECK (attempts >= 0),
    created_at       INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    started_at       INTEGER NULL,
    finished_at      INTEGER NULL,
    lease_until      INTEGER NULL,
    worker           TEXT    NULL,
    last_error       TEXT    NULL,
    result           TEXT    NULL CONSTRAINT result_is_json CHECK (result IS NULL OR json_valid(result)),
    cancel_requested INTEGER NOT NULL DEFAULT 0 CONSTRAINT cancel_requested_bool CHECK (cancel_requested = 0 OR cancel_requested = 1)
) STRICT;

-- The claim: ready jobs of one queue, priority DESC, run_at, id. A range scan
-- at any queue size; the partial index holds only queued rows.
CREATE INDEX jobs_ready ON jobs (queue, priority DESC, run_at, id) WHERE state = 'queued';

-- At most one queued or running job per key; INSERT OR IGNORE de-duplicates.
CREATE UNIQUE INDEX jobs_unique_key ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND (state = 'queued' OR state = 'running');

-- INSERT OR IGNORE skips a row that breaks a CHECK instead of failing, which
-- would drop a bad job silently. These guards abort the statement whatever
-- its conflict clause, with the same words as the CHECK they stand for.
CREATE TRIGGER jobs_guard_payload BEFORE INSERT ON jobs
    WHEN NEW.payload IS NOT NULL AND NOT json_valid(NEW.payload)
    BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: payload_is_json'); END;
CREATE TRIGGER jobs_guard_kind BEFORE INSERT ON jobs
    WHEN NEW.kind = ''
    BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: kind_not_empty'); END;
CREATE TRIGGER jobs_guard_max_attempts BEFORE INSERT ON jobs
    WHEN NEW.max_attempts < 1
    BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: max_attempts_at_least_1'); END;
CREATE TRIGGER jobs_guard_timeout BEFORE INSERT ON jobs
    WHEN NEW.timeout_ms <= 0
    BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: timeout_ms_positive'); END;

-- One row per attempt, append-only. queue and kind are copied from the job so
-- stats, tail and metrics read this table alone.
CREATE TABLE job_runs (
    id          INTEGER PRIMARY KEY,
    job_id      INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    worker      TEXT    NOT NULL,
    queue       TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    outcome     TEXT    NOT NULL CONSTRAINT outcome_known CHECK (outcome = 'succeeded'
                OR outcome = 'retry' OR outcome = 'dead' OR outcome = 'timeout'
                OR outcome = 'rescued' OR outcome = 'interrupted' OR outcome = 'cancelled'),
    error       TEXT    NULL,
    duration_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX job_runs_job ON job_runs (job_id, attempt);
";

/// Version 2: the daemons, queue switches, cron slots, and the indexes that
/// keep leases, pruning and stats off full scans.
const V2_OPERATIONS: &str = "
CREATE TABLE workers (
    id           TEXT    PRIMARY KEY,
    host         TEXT    NOT NULL,
    pid          INTEGER NOT NULL,
    version      TEXT    NOT NULL,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL,
    queues       TEXT    NOT NULL,
    running      INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE TABLE queues (
    name       TEXT    PRIMARY KEY,
    paused     INTEGER NOT NULL DEFAULT 0 CONSTRAINT paused_bool CHECK (paused = 0 OR paused = 1),
    updated_at INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
) STRICT;

CREATE TABLE cron (
    name        TEXT PRIMARY KEY,
    last_slot   INTEGER NULL,
    last_job_id INTEGER NULL
) STRICT;

-- Lease expiry and cancel requests look only at running rows.
CREATE INDEX jobs_running ON jobs (lease_until) WHERE state = 'running';
-- Pruning and the finished counts of stats: one covering index per final
-- state, so queries name the state as a literal and SQLite can prove the
-- partial index applies; claims and leases never touch them.
CREATE INDEX jobs_succeeded ON jobs (finished_at, queue) WHERE state = 'succeeded';
CREATE INDEX jobs_dead ON jobs (finished_at, queue) WHERE state = 'dead';
CREATE INDEX jobs_cancelled ON jobs (finished_at, queue) WHERE state = 'cancelled';
-- Stats over the last hour of attempts (dropped again in v3).
CREATE INDEX job_runs_finished ON job_runs (finished_at);
";

/// Every completion inserts a `job_runs` row; an index on `finished_at`
/// made each one cost a second B-tree insert (completions measured 17 %
/// faster without it). The stats percentiles read the newest runs by rowid
/// instead, which is the order they were written in.
const V3_LEANER_RUNS: &str = "
DROP INDEX IF EXISTS job_runs_finished;
";

/// The SQL test "this job's kind runs on the CPU pool" as migration 4's
/// ready index spells it: history, never edited (a test holds it to
/// [`crate::job::CPU_KINDS`]).
macro_rules! cpu_kind_test {
    () => {
        "(kind = 'checksum' OR kind = 'compress' OR kind = 'exec')"
    };
}

/// The CPU-kind test for queries, built from the kind catalogue
/// ([`crate::job::CPU_KINDS`]): a claim must spell it exactly as the index
/// does for SQLite to use the index, which a test checks.
pub fn cpu_kind_test() -> &'static str {
    static TEST: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let each: Vec<String> = crate::job::CPU_KINDS
            .iter()
            .map(|k| format!("kind = '{k}'"))
            .collect();
        format!("({})", each.join(" OR "))
    });
    &TEST
}

/// The claim asks one pool at a time for jobs, so the ready index puts the
/// pool right after the queue: a claim for IO jobs then never walks past
/// the CPU jobs queued ahead of them, however many there are.
const V4_READY_BY_POOL: &str = concat!(
    "DROP INDEX jobs_ready;\n",
    "CREATE INDEX jobs_ready ON jobs (queue, ",
    cpu_kind_test!(),
    ", priority DESC, run_at, id) WHERE state = 'queued';\n"
);

/// The `GLOB` pattern "holds a byte outside ASCII 1–127", as a literal: a
/// pattern built with `char()` in the trigger was rebuilt for every row
/// and cost a third of every insert.
macro_rules! non_ascii {
    () => {
        "'*[^\u{1}-\u{7f}]*'"
    };
}

/// A condition true when a value (`column`, an expression such as
/// `NEW.payload`) is not valid UTF-8. SQLite stores whatever bytes a client
/// casts to TEXT; jobd reads text as UTF-8.
///
/// The common case costs one scan: a value of ASCII characters only does
/// not match the `GLOB`. Otherwise a recursive query walks the bytes
/// through the UTF-8 state machine (RFC 3629: no overlong forms, no
/// surrogates, nothing above U+10FFFF), 16 ASCII bytes a step where it can,
/// comparing each byte's `hex()` as a string, which orders like the number
/// for two upper-case digits. States: 0 between characters; 1, 2, 3
/// continuation bytes owed; 4 after E0, 5 after ED, 6 after F0, 7 after F4
/// (a narrower second byte); -1 invalid. Written for Debian 12's sqlite3
/// 3.40.
macro_rules! not_utf8 {
    ($($column:literal),+) => {
        concat!(
            $($column,)+ " GLOB ", non_ascii!(), " AND (",
            "WITH RECURSIVE walk(i, s) AS (SELECT 1, 0 UNION ALL ",
            "SELECT i + CASE WHEN s = 0 AND CAST(substr(CAST(", $($column,)+ " AS BLOB), i, 16) AS TEXT) ",
            "NOT GLOB ", non_ascii!(), " THEN 16 ELSE 1 END, ",
            "CASE WHEN s = 0 AND CAST(substr(CAST(", $($column,)+ " AS BLOB), i, 16) AS TEXT) ",
            "NOT GLOB ", non_ascii!(), " THEN 0 ELSE (SELECT CASE ",
            "WHEN s = 0 THEN CASE WHEN h < '80' THEN 0 WHEN h BETWEEN 'C2' AND 'DF' THEN 1 ",
            "WHEN h = 'E0' THEN 4 WHEN h = 'ED' THEN 5 WHEN h BETWEEN 'E1' AND 'EF' THEN 2 ",
            "WHEN h = 'F0' THEN 6 WHEN h BETWEEN 'F1' AND 'F3' THEN 3 WHEN h = 'F4' THEN 7 ELSE -1 END ",
            "WHEN s = 4 THEN CASE WHEN h BETWEEN 'A0' AND 'BF' THEN 1 ELSE -1 END ",
            "WHEN s = 5 THEN CASE WHEN h BETWEEN '80' AND '9F' THEN 1 ELSE -1 END ",
            "WHEN s = 6 THEN CASE WHEN h BETWEEN '90' AND 'BF' THEN 2 ELSE -1 END ",
            "WHEN s = 7 THEN CASE WHEN h BETWEEN '80' AND '8F' THEN 2 ELSE -1 END ",
            "ELSE CASE WHEN h BETWEEN '80' AND 'BF' THEN s - 1 ELSE -1 END END ",
            "FROM (SELECT hex(substr(CAST(", $($column,)+ " AS BLOB), i, 1)) AS h)) END ",
            "FROM walk WHERE s >= 0 AND i <= length(CAST(", $($column,)+ " AS BLOB))) ",
            "SELECT s FROM walk ORDER BY i DESC LIMIT 1) <> 0"
        )
    };
}

/// The body of a UTF-8 guard: one refusal per text column a client writes,
/// naming the column.
macro_rules! utf8_refusals {
    ($($column:literal),+) => {
        concat!($(
            "SELECT RAISE(ABORT, 'jobs.", $column,
            " is not valid UTF-8: insert text, not raw bytes') WHERE ",
            not_utf8!("NEW.", $column), ";\n",
        )+)
    };
}

/// The UTF-8 guards on insert and on update. One trigger each, entered only
/// when some column holds a byte outside ASCII (one `GLOB` over them all):
/// four triggers of their own cost twice as much on every insert.
macro_rules! utf8_guards {
    () => {
        concat!(
            "CREATE TRIGGER jobs_utf8 BEFORE INSERT ON jobs WHEN ",
            "(NEW.queue || NEW.kind || NEW.payload || coalesce(NEW.unique_key, '')) GLOB ",
            non_ascii!(),
            "\nBEGIN\n",
            utf8_refusals!("queue", "kind", "payload", "unique_key"),
            "END;\n",
            "CREATE TRIGGER jobs_utf8_update BEFORE UPDATE OF queue, kind, payload, unique_key ON jobs WHEN ",
            "(NEW.queue || NEW.kind || NEW.payload || coalesce(NEW.unique_key, '')) GLOB ",
            non_ascii!(),
            "\nBEGIN\n",
            utf8_refusals!("queue", "kind", "payload", "unique_key"),
            "END;\n"
        )
    };
}

/// Version 5:
/// - job ids never repeat: the table is rebuilt with `AUTOINCREMENT` and
///   the counter starts past every id the file ever recorded (in jobs,
///   attempts and cron rows), so a job enqueued after `prune` cannot take
///   a pruned job's id (and with it its `Idempotency-Key`, `Message-ID`
///   and mail file);
/// - `meta` holds this database's random id, which those values carry so
///   that two databases' jobs never share them;
/// - text a client inserts into `queue`, `kind`, `payload` or `unique_key`
///   must be UTF-8 (see `not_utf8!`).
const V5_IDS_AND_UTF8: &str = concat!(
    "CREATE TABLE jobs_v5 (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    queue            TEXT    NOT NULL DEFAULT 'default' CONSTRAINT queue_not_empty CHECK (queue <> ''),
    kind             TEXT    NOT NULL CONSTRAINT kind_not_empty CHECK (kind <> ''),
    payload          TEXT    NOT NULL DEFAULT '{}' CONSTRAINT payload_is_json CHECK (json_valid(payload)),
    priority         INTEGER NOT NULL DEFAULT 0,
    run_at           INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    max_attempts     INTEGER NULL CONSTRAINT max_attempts_at_least_1 CHECK (max_attempts >= 1),
    timeout_ms       INTEGER NULL CONSTRAINT timeout_ms_positive CHECK (timeout_ms > 0),
    unique_key       TEXT    NULL,
    state            TEXT    NOT NULL DEFAULT 'queued'
                     CONSTRAINT state_known CHECK (state = 'queued' OR state = 'running'
                         OR state = 'succeeded' OR state = 'dead' OR state = 'cancelled'),
    attempts         INTEGER NOT NULL DEFAULT 0 CONSTRAINT attempts_not_negative CHECK (attempts >= 0),
    created_at       INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    started_at       INTEGER NULL,
    finished_at      INTEGER NULL,
    lease_until      INTEGER NULL,
    worker           TEXT    NULL,
    last_error       TEXT    NULL,
    result           TEXT    NULL CONSTRAINT result_is_json CHECK (result IS NULL OR json_valid(result)),
    cancel_requested INTEGER NOT NULL DEFAULT 0 CONSTRAINT cancel_requested_bool CHECK (cancel_requested = 0 OR cancel_requested = 1)
) STRICT;
INSERT INTO jobs_v5 SELECT id, queue, kind, payload, priority, run_at, max_attempts, timeout_ms,
    unique_key, state, attempts, created_at, started_at, finished_at, lease_until, worker,
    last_error, result, cancel_requested FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_v5 RENAME TO jobs;
DELETE FROM sqlite_sequence WHERE name = 'jobs' OR name = 'jobs_v5';
INSERT INTO sqlite_sequence(name, seq) VALUES ('jobs', max(
    coalesce((SELECT max(id) FROM jobs), 0),
    coalesce((SELECT max(job_id) FROM job_runs), 0),
    coalesce((SELECT max(last_job_id) FROM cron), 0)));
CREATE INDEX jobs_ready ON jobs (queue, ",
    cpu_kind_test!(),
    ", priority DESC, run_at, id) WHERE state = 'queued';
CREATE UNIQUE INDEX jobs_unique_key ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND (state = 'queued' OR state = 'running');
CREATE INDEX jobs_running ON jobs (lease_until) WHERE state = 'running';
CREATE INDEX jobs_succeeded ON jobs (finished_at, queue) WHERE state = 'succeeded';
CREATE INDEX jobs_dead ON jobs (finished_at, queue) WHERE state = 'dead';
CREATE INDEX jobs_cancelled ON jobs (finished_at, queue) WHERE state = 'cancelled';
CREATE TRIGGER jobs_guard_payload BEFORE INSERT ON jobs
    WHEN NEW.payload IS NOT NULL AND NOT json_valid(NEW.payload)
    BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: payload_is_json'); END;
CREATE TRIGGER jobs_guard_kind BEFORE INSERT ON jobs
    WHEN NEW.kind = ''
    BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: kind_not_empty'); END;
CREATE TRIGGER jobs_guard_max_attempts BEFORE INSERT ON jobs
    WHEN NEW.max_attempts < 1
    BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: max_attempts_at_least_1'); END;
CREATE TRIGGER jobs_guard_timeout BEFORE INSERT ON jobs
    WHEN NEW.timeout_ms <= 0
    BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: timeout_ms_positive'); END;
",
    utf8_guards!(),
    "CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
INSERT INTO meta(key, value) VALUES ('database_id', lower(hex(randomblob(6))));
"
);

/// The UTF-8 guards from version 6 on, `limit_key` included.
macro_rules! utf8_guards_with_key {
    () => {
        concat!(
            "CREATE TRIGGER jobs_utf8 BEFORE INSERT ON jobs WHEN ",
            "(NEW.queue || NEW.kind || NEW.payload || coalesce(NEW.unique_key, '') || coalesce(NEW.limit_key, '')) GLOB ",
            non_ascii!(),
            "\nBEGIN\n",
            utf8_refusals!("queue", "kind", "payload", "unique_key", "limit_key"),
            "END;\n",
            "CREATE TRIGGER jobs_utf8_update BEFORE UPDATE OF queue, kind, payload, unique_key, limit_key ON jobs WHEN ",
            "(NEW.queue || NEW.kind || NEW.payload || coalesce(NEW.unique_key, '') || coalesce(NEW.limit_key, '')) GLOB ",
            non_ascii!(),
            "\nBEGIN\n",
            utf8_refusals!("queue", "kind", "payload", "unique_key", "limit_key"),
            "END;\n"
        )
    };
}

/// Version 6: keyed limits (docs/reference.md, "Keyed limits").
/// - `jobs.limit_key`: the job's key, NULL for none; jobd writes the key
///   it derives (an http job's host) when it first looks at the job;
/// - `jobs_running_key` counts a key's running jobs for its concurrency,
///   `jobs_ready_key` serves the claims of fair queues key by key;
/// - `limit_keys`: one row per key a rate or a block has touched: its
///   rate's recent starts (`starts`), a block a service asked for,
///   and `closed_until`, the time before which no job of the key starts
///   (indexed, so a claim reads only the keys closed now);
/// - the UTF-8 guards cover `limit_key` too.
const V6_LIMIT_KEYS: &str = concat!(
    "ALTER TABLE jobs ADD COLUMN limit_key TEXT NULL
    CONSTRAINT limit_key_not_empty CHECK (limit_key <> '');
CREATE TRIGGER jobs_guard_limit_key BEFORE INSERT ON jobs
    WHEN NEW.limit_key = ''
    BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: limit_key_not_empty'); END;
CREATE INDEX jobs_running_key ON jobs (limit_key) WHERE state = 'running' AND limit_key IS NOT NULL;
CREATE INDEX jobs_ready_key ON jobs (queue, limit_key, priority DESC, run_at, id)
    WHERE state = 'queued' AND limit_key IS NOT NULL;
CREATE TABLE limit_keys (
    key            TEXT    PRIMARY KEY,
    starts         TEXT    NULL,
    blocked_until  INTEGER NULL,
    blocked_for_ms INTEGER NULL,
    blocked_status INTEGER NULL,
    closed_until   INTEGER NOT NULL DEFAULT 0,
    updated_at     INTEGER NOT NULL
) STRICT;
CREATE INDEX limit_keys_closed ON limit_keys (closed_until);
DROP TRIGGER jobs_utf8;
DROP TRIGGER jobs_utf8_update;
",
    utf8_guards_with_key!()
);

/// Version 7: `jobs_ready_key` gains the pool after the key, as
/// `jobs_ready` has it: a fair claim for the CPU pool read every queued
/// job of a key with only IO jobs to find none (13 ms a claim with 20 000
/// of them); with the pool in the index it is one seek.
const V7_READY_KEY_BY_POOL: &str = "
DROP INDEX jobs_ready_key;
CREATE INDEX jobs_ready_key ON jobs
    (queue, limit_key, (kind = 'checksum' OR kind = 'compress' OR kind = 'exec'), priority DESC, run_at, id)
    WHERE state = 'queued' AND limit_key IS NOT NULL;
";

/// Version 8: `jobs_ready_key` is no longer part of every database. Its
/// upkeep is one scattered page per claimed keyed job, which with
/// 1 000 000 jobs queued over 10 000 keys cut a daemon's claims from
/// 27 000 to 12 000 jobs/s, for the fair queues only few use: a daemon
/// with a fair queue builds it ([`ready_key_index`]).
const V8_KEY_INDEX_ON_DEMAND: &str = "DROP INDEX IF EXISTS jobs_ready_key;";

/// The jobs a dead or cancelled job (`NEW`, in a trigger) takes with it:
/// its waiting children that do not run whatever their parents' outcome
/// (`run_always`), their waiting children likewise, and so on. A query, as
/// a trigger may not recurse into itself unless the connection asks.
macro_rules! doomed {
    () => {
        "(WITH RECURSIVE doomed(id) AS (
            SELECT d.child FROM job_deps d JOIN jobs c ON c.id = d.child
            WHERE d.parent = NEW.id AND d.met = 0 AND c.run_always = 0 AND c.state = 'waiting'
            UNION
            SELECT d.child FROM doomed JOIN job_deps d ON d.parent = doomed.id
            JOIN jobs c ON c.id = d.child
            WHERE d.met = 0 AND c.run_always = 0 AND c.state = 'waiting')
        SELECT id FROM doomed)"
    };
}

/// Version 9: dependencies (docs/reference.md, "Flows").
/// - `jobs.parents`: the jobs this one waits for, a JSON array of ids set
///   at insert and never changed (so no cycle can be built);
///   `run_always`: it runs when they have ended whatever their outcome;
///   `waiting_for`: how many of them have not yet succeeded (jobd's);
///   `has_children`: some job waits for this one (jobd's), so the triggers
///   on a change of state cost nothing for jobs without children;
/// - a new state, `waiting`: held until its parents let it go; the table
///   is rebuilt for its CHECK rule (ids, their sequence and every index
///   and trigger carried over), and `jobs_unique_key` counts waiting jobs;
/// - `job_deps`: one row per edge, `met` once the parent succeeded (or
///   ended, for a `run_always` child), `cut` when its parent's end
///   cancelled the child (what `jobd retry` of the parent undoes);
/// - triggers: an insert checks the parents exist and becomes `waiting`
///   (or `cancelled`, when a parent already ended so); a parent's success
///   queues the children it was the last one for, in the same statement;
///   a parent's death or cancellation cancels its waiting descendants.
const V9_DEPENDENCIES: &str = concat!(
    "CREATE TABLE jobs_v9 (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    queue            TEXT    NOT NULL DEFAULT 'default' CONSTRAINT queue_not_empty CHECK (queue <> ''),
    kind             TEXT    NOT NULL CONSTRAINT kind_not_empty CHECK (kind <> ''),
    payload          TEXT    NOT NULL DEFAULT '{}' CONSTRAINT payload_is_json CHECK (json_valid(payload)),
    priority         INTEGER NOT NULL DEFAULT 0,
    run_at           INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    max_attempts     INTEGER NULL CONSTRAINT max_attempts_at_least_1 CHECK (max_attempts >= 1),
    timeout_ms       INTEGER NULL CONSTRAINT timeout_ms_positive CHECK (timeout_ms > 0),
    unique_key       TEXT    NULL,
    state            TEXT    NOT NULL DEFAULT 'queued'
                     CONSTRAINT state_known CHECK (state = 'queued' OR state = 'running'
                         OR state = 'succeeded' OR state = 'dead' OR state = 'cancelled'
                         OR state = 'waiting'),
    attempts         INTEGER NOT NULL DEFAULT 0 CONSTRAINT attempts_not_negative CHECK (attempts >= 0),
    created_at       INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    started_at       INTEGER NULL,
    finished_at      INTEGER NULL,
    lease_until      INTEGER NULL,
    worker           TEXT    NULL,
    last_error       TEXT    NULL,
    result           TEXT    NULL CONSTRAINT result_is_json CHECK (result IS NULL OR json_valid(result)),
    cancel_requested INTEGER NOT NULL DEFAULT 0 CONSTRAINT cancel_requested_bool CHECK (cancel_requested = 0 OR cancel_requested = 1),
    limit_key        TEXT    NULL CONSTRAINT limit_key_not_empty CHECK (limit_key <> ''),
    parents          TEXT    NULL,
    run_always       INTEGER NOT NULL DEFAULT 0 CONSTRAINT run_always_bool CHECK (run_always = 0 OR run_always = 1),
    waiting_for      INTEGER NOT NULL DEFAULT 0,
    has_children     INTEGER NOT NULL DEFAULT 0
) STRICT;
INSERT INTO jobs_v9 (id, queue, kind, payload, priority, run_at, max_attempts, timeout_ms,
    unique_key, state, attempts, created_at, started_at, finished_at, lease_until, worker,
    last_error, result, cancel_requested, limit_key)
    SELECT id, queue, kind, payload, priority, run_at, max_attempts, timeout_ms,
    unique_key, state, attempts, created_at, started_at, finished_at, lease_until, worker,
    last_error, result, cancel_requested, limit_key FROM jobs;
DELETE FROM sqlite_sequence WHERE name = 'jobs_v9';
INSERT INTO sqlite_sequence(name, seq)
    SELECT 'jobs_v9', coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'jobs';
DROP TABLE jobs;
ALTER TABLE jobs_v9 RENAME TO jobs;
CREATE INDEX jobs_ready ON jobs (queue, ",
    cpu_kind_test!(),
    ", priority DESC, run_at, id) WHERE state = 'queued';
CREATE UNIQUE INDEX jobs_unique_key ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND (state = 'queued' OR state = 'running' OR state = 'waiting');
CREATE INDEX jobs_running ON jobs (lease_until) WHERE state = 'running';
CREATE INDEX jobs_succeeded ON jobs (finished_at, queue) WHERE state = 'succeeded';
CREATE INDEX jobs_dead ON jobs (finished_at, queue) WHERE state = 'dead';
CREATE INDEX jobs_cancelled ON jobs (finished_at, queue) WHERE state = 'cancelled';
CREATE INDEX jobs_running_key ON jobs (limit_key) WHERE state = 'running' AND limit_key IS NOT NULL;
CREATE TRIGGER jobs_guard_payload BEFORE INSERT ON jobs
    WHEN NEW.payload IS NOT NULL AND NOT json_valid(NEW.payload)
    BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: payload_is_json'); END;
CREATE TRIGGER jobs_guard_kind BEFORE INSERT ON jobs
    WHEN NEW.kind = ''
    BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: kind_not_empty'); END;
CREATE TRIGGER jobs_guard_max_attempts BEFORE INSERT ON jobs
    WHEN NEW.max_attempts < 1
    BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: max_attempts_at_least_1'); END;
CREATE TRIGGER jobs_guard_timeout BEFORE INSERT ON jobs
    WHEN NEW.timeout_ms <= 0
    BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: timeout_ms_positive'); END;
CREATE TRIGGER jobs_guard_limit_key BEFORE INSERT ON jobs
    WHEN NEW.limit_key = ''
    BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: limit_key_not_empty'); END;
",
    utf8_guards_with_key!(),
    "CREATE TABLE job_deps (
    parent INTEGER NOT NULL,
    child  INTEGER NOT NULL,
    met    INTEGER NOT NULL DEFAULT 0,
    cut    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (parent, child)
) STRICT, WITHOUT ROWID;
CREATE INDEX job_deps_child ON job_deps (child);
CREATE TRIGGER jobs_guard_parents BEFORE INSERT ON jobs
    WHEN NEW.parents IS NOT NULL
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: parents_are_job_ids') WHERE CASE
        WHEN NOT json_valid(NEW.parents) THEN 1
        WHEN json_type(NEW.parents) <> 'array' THEN 1
        ELSE EXISTS (SELECT 1 FROM json_each(NEW.parents) WHERE type <> 'integer') END;
    SELECT RAISE(ABORT, 'FOREIGN KEY constraint failed: parents_exist')
        WHERE EXISTS (SELECT 1 FROM json_each(NEW.parents) p
                      WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE id = p.value));
END;
CREATE TRIGGER jobs_guard_parents_fixed BEFORE UPDATE OF parents ON jobs
    WHEN NEW.parents IS NOT OLD.parents
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: parents_fixed_at_insert');
END;
CREATE TRIGGER jobs_flow_insert AFTER INSERT ON jobs
    WHEN NEW.parents IS NOT NULL AND json_array_length(NEW.parents) > 0
BEGIN
    INSERT OR IGNORE INTO job_deps (parent, child)
        SELECT value, NEW.id FROM json_each(NEW.parents);
    UPDATE jobs SET has_children = 1
        WHERE has_children = 0 AND id IN (SELECT value FROM json_each(NEW.parents));
    UPDATE job_deps SET met = 1 WHERE child = NEW.id AND parent IN (
        SELECT id FROM jobs WHERE id IN (SELECT value FROM json_each(NEW.parents))
        AND (state = 'succeeded'
             OR (NEW.run_always = 1 AND (state = 'dead' OR state = 'cancelled'))));
    UPDATE job_deps SET cut = 1 WHERE child = NEW.id AND met = 0 AND parent IN (
        SELECT id FROM jobs WHERE id IN (SELECT value FROM json_each(NEW.parents))
        AND (state = 'dead' OR state = 'cancelled'));
    UPDATE jobs SET
        waiting_for = (SELECT count(*) FROM job_deps WHERE child = NEW.id AND met = 0),
        state = CASE
            WHEN EXISTS (SELECT 1 FROM job_deps WHERE child = NEW.id AND cut = 1) THEN 'cancelled'
            WHEN EXISTS (SELECT 1 FROM job_deps WHERE child = NEW.id AND met = 0) THEN 'waiting'
            ELSE state END,
        finished_at = CASE
            WHEN EXISTS (SELECT 1 FROM job_deps WHERE child = NEW.id AND cut = 1)
            THEN CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
            ELSE finished_at END,
        last_error = (SELECT 'cancelled: job ' || j.id || ', which this job waits for, is ' || j.state
                      FROM job_deps d JOIN jobs j ON j.id = d.parent
                      WHERE d.child = NEW.id AND d.cut = 1 ORDER BY j.id LIMIT 1)
        WHERE id = NEW.id AND state = 'queued';
END;
CREATE TRIGGER jobs_flow_succeeded AFTER UPDATE OF state ON jobs
    WHEN NEW.has_children = 1 AND NEW.state = 'succeeded' AND OLD.state <> 'succeeded'
BEGIN
    UPDATE jobs SET waiting_for = waiting_for - 1,
        state = CASE WHEN state = 'waiting' AND waiting_for = 1 THEN 'queued' ELSE state END,
        run_at = CASE WHEN state = 'waiting' AND waiting_for = 1
                      THEN max(run_at, coalesce(NEW.finished_at, run_at)) ELSE run_at END
        WHERE id IN (SELECT child FROM job_deps WHERE parent = NEW.id AND met = 0);
    UPDATE job_deps SET met = 1 WHERE parent = NEW.id AND met = 0;
END;
CREATE TRIGGER jobs_flow_ended AFTER UPDATE OF state ON jobs
    WHEN NEW.has_children = 1 AND (NEW.state = 'dead' OR NEW.state = 'cancelled')
        AND OLD.state <> 'dead' AND OLD.state <> 'cancelled'
BEGIN
    UPDATE job_deps SET cut = 1 WHERE met = 0
        AND (parent = NEW.id OR parent IN ",
    doomed!(),
    ")
        AND child IN (SELECT id FROM jobs WHERE id = child AND run_always = 0);
    UPDATE jobs SET
        waiting_for = waiting_for - (SELECT count(*) FROM job_deps d WHERE d.child = jobs.id
            AND d.met = 0 AND (d.parent = NEW.id OR d.parent IN ",
    doomed!(),
    ")),
        state = CASE WHEN state = 'waiting' AND waiting_for = (SELECT count(*) FROM job_deps d
            WHERE d.child = jobs.id AND d.met = 0 AND (d.parent = NEW.id OR d.parent IN ",
    doomed!(),
    ")) THEN 'queued' ELSE state END
        WHERE run_always = 1 AND id IN (SELECT child FROM job_deps WHERE met = 0
            AND (parent = NEW.id OR parent IN ",
    doomed!(),
    "));
    UPDATE job_deps SET met = 1 WHERE met = 0 AND (parent = NEW.id OR parent IN ",
    doomed!(),
    ")
        AND child IN (SELECT id FROM jobs WHERE id = child AND run_always = 1);
    UPDATE jobs SET state = 'cancelled',
        finished_at = coalesce(NEW.finished_at, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
        last_error = 'cancelled: job ' || NEW.id || ', which this job waits for, is ' || NEW.state
        WHERE id IN ",
    doomed!(),
    ";
END;
CREATE TRIGGER jobs_flow_deleted AFTER DELETE ON jobs
    WHEN OLD.has_children = 1 OR OLD.parents IS NOT NULL
BEGIN
    DELETE FROM job_deps WHERE parent = OLD.id OR child = OLD.id;
END;
"
);

/// The body of the triggers that move a batch's counters: `job` (`NEW` or
/// `OLD`) entered or left its final state, `delta` (`+ 1` or `- 1`). The
/// batch's row was made by the guard on the job's insert, before any other
/// trigger can end the job.
macro_rules! batch_count {
    ($job:literal, $delta:literal) => {
        concat!(
            "UPDATE batches SET\n",
            "        succeeded = succeeded ",
            $delta,
            " * (",
            $job,
            ".state = 'succeeded'),\n",
            "        dead = dead ",
            $delta,
            " * (",
            $job,
            ".state = 'dead'),\n",
            "        cancelled = cancelled ",
            $delta,
            " * (",
            $job,
            ".state = 'cancelled')\n",
            "        WHERE name = ",
            $job,
            ".batch;\n"
        )
    };
}

/// Version 10: batches (docs/reference.md, "Flows").
/// - `jobs.batch`: the batch a job belongs to; `jobs.callback_for`: the
///   batch this job is the callback of (it waits for it, and inserting it
///   seals the batch);
/// - `batches`: one row per batch with counters, never scans: `total`
///   (jobs inserted into it; one pruned before the seal no longer counts),
///   `succeeded`, `dead`, `cancelled` (its jobs in those states now),
///   `sealed`, `callback_id`, and `finished_at`, set
///   once, when the sealed batch's jobs have all ended; that same
///   statement lets the callback go, so it is let go exactly once;
/// - triggers: the guards (`batch_open`, `batch_one_callback`,
///   `callback_has_no_parents`), the counters on insert and on every
///   change into or out of a final state, the sealing insert of a
///   callback, and the check that finishes a batch when its counters or
///   its seal change.
const V10_BATCHES: &str = concat!(
    "ALTER TABLE jobs ADD COLUMN batch TEXT NULL CONSTRAINT batch_not_empty CHECK (batch <> '');
ALTER TABLE jobs ADD COLUMN callback_for TEXT NULL
    CONSTRAINT callback_for_not_empty CHECK (callback_for <> '');
CREATE INDEX jobs_batch ON jobs (batch) WHERE batch IS NOT NULL;
CREATE TABLE batches (
    name        TEXT    PRIMARY KEY,
    total       INTEGER NOT NULL DEFAULT 0,
    succeeded   INTEGER NOT NULL DEFAULT 0,
    dead        INTEGER NOT NULL DEFAULT 0,
    cancelled   INTEGER NOT NULL DEFAULT 0,
    sealed      INTEGER NOT NULL DEFAULT 0 CONSTRAINT sealed_bool CHECK (sealed = 0 OR sealed = 1),
    callback_id INTEGER NULL,
    created_at  INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    finished_at INTEGER NULL
) STRICT;
CREATE TRIGGER jobs_guard_batch BEFORE INSERT ON jobs
    WHEN NEW.batch IS NOT NULL OR NEW.callback_for IS NOT NULL
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: batch_open') WHERE NEW.batch IS NOT NULL
        AND EXISTS (SELECT 1 FROM batches WHERE name = NEW.batch AND sealed = 1);
    INSERT OR IGNORE INTO batches (name) SELECT NEW.batch WHERE NEW.batch IS NOT NULL;
    SELECT RAISE(ABORT, 'CHECK constraint failed: batch_one_callback')
        WHERE NEW.callback_for IS NOT NULL
        AND EXISTS (SELECT 1 FROM batches WHERE name = NEW.callback_for AND sealed = 1);
    SELECT RAISE(ABORT, 'CHECK constraint failed: callback_has_no_parents')
        WHERE NEW.callback_for IS NOT NULL AND NEW.parents IS NOT NULL AND NEW.parents <> '[]';
    SELECT RAISE(ABORT, 'CHECK constraint failed: callback_outside_its_batch')
        WHERE NEW.callback_for IS NOT NULL AND NEW.batch IS NOT NULL AND NEW.batch = NEW.callback_for;
END;
CREATE TRIGGER jobs_guard_batch_fixed BEFORE UPDATE OF batch, callback_for ON jobs
    WHEN NEW.batch IS NOT OLD.batch OR NEW.callback_for IS NOT OLD.callback_for
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: batch_fixed_at_insert');
END;
CREATE TRIGGER jobs_batch_insert AFTER INSERT ON jobs WHEN NEW.batch IS NOT NULL
BEGIN
    UPDATE batches SET total = total + 1 WHERE name = NEW.batch;
END;
CREATE TRIGGER jobs_batch_ended AFTER UPDATE OF state ON jobs
    WHEN NEW.batch IS NOT NULL
        AND (NEW.state = 'succeeded' OR NEW.state = 'dead' OR NEW.state = 'cancelled')
        AND NOT (OLD.state = 'succeeded' OR OLD.state = 'dead' OR OLD.state = 'cancelled')
BEGIN
    ",
    batch_count!("NEW", "+ 1"),
    "END;
CREATE TRIGGER jobs_batch_reopened AFTER UPDATE OF state ON jobs
    WHEN NEW.batch IS NOT NULL
        AND (OLD.state = 'succeeded' OR OLD.state = 'dead' OR OLD.state = 'cancelled')
        AND NOT (NEW.state = 'succeeded' OR NEW.state = 'dead' OR NEW.state = 'cancelled')
BEGIN
    ",
    batch_count!("OLD", "- 1"),
    "END;
CREATE TRIGGER jobs_batch_callback AFTER INSERT ON jobs WHEN NEW.callback_for IS NOT NULL
BEGIN
    UPDATE jobs SET state = 'waiting', waiting_for = waiting_for + 1
        WHERE id = NEW.id AND state = 'queued';
    INSERT OR IGNORE INTO batches (name) VALUES (NEW.callback_for);
    UPDATE batches SET sealed = 1, callback_id = NEW.id WHERE name = NEW.callback_for;
END;
CREATE TRIGGER jobs_batch_deleted AFTER DELETE ON jobs WHEN OLD.batch IS NOT NULL
BEGIN
    UPDATE batches SET total = total - 1,
        succeeded = succeeded - (OLD.state = 'succeeded'),
        dead = dead - (OLD.state = 'dead'),
        cancelled = cancelled - (OLD.state = 'cancelled')
        WHERE name = OLD.batch AND sealed = 0;
END;
CREATE TRIGGER batches_finished AFTER UPDATE ON batches
    WHEN NEW.sealed = 1 AND NEW.finished_at IS NULL
        AND NEW.succeeded + NEW.dead + NEW.cancelled >= NEW.total
BEGIN
    UPDATE batches SET finished_at = CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
        WHERE name = NEW.name;
    UPDATE jobs SET waiting_for = waiting_for - 1,
        state = CASE WHEN state = 'waiting' AND waiting_for = 1 THEN 'queued' ELSE state END,
        run_at = CASE WHEN state = 'waiting' AND waiting_for = 1
            THEN max(run_at, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
            ELSE run_at END
        WHERE id = NEW.callback_id AND callback_for = NEW.name;
END;
"
);

/// Version 11's [`doomed!`]: the jobs a dead or cancelled job takes with
/// it through parent edges only (a sequence's next member is not its
/// child: it halts or goes on instead).
macro_rules! doomed_by_parents {
    () => {
        "(WITH RECURSIVE doomed(id) AS (
            SELECT d.child FROM job_deps d JOIN jobs c ON c.id = d.child
            WHERE d.parent = NEW.id AND d.met = 0 AND d.seq = 0 AND c.run_always = 0
              AND c.state = 'waiting'
            UNION
            SELECT d.child FROM doomed JOIN job_deps d ON d.parent = doomed.id
            JOIN jobs c ON c.id = d.child
            WHERE d.met = 0 AND d.seq = 0 AND c.run_always = 0 AND c.state = 'waiting')
        SELECT id FROM doomed)"
    };
}

/// The jobs whose end lets a sequence's next member go on, or hand it to
/// an earlier member: `NEW` when it is cancelled, and the jobs it takes
/// with it.
macro_rules! gone {
    () => {
        concat!(
            "(SELECT NEW.id WHERE NEW.state = 'cancelled' UNION ALL SELECT id FROM ",
            doomed_by_parents!(),
            ")"
        )
    };
}

/// The member a sequence's next member (the edge's child) waits for
/// instead of a member that is gone: the latest earlier one still live
/// (waiting, queued, running, or dead: a halt, unless the next member runs
/// whatever its predecessor's outcome).
macro_rules! earlier_live {
    () => {
        concat!(
            "(SELECT max(j.id) FROM jobs j, jobs s \
              WHERE s.id = job_deps.child AND j.sequence = s.sequence AND j.id < s.id \
              AND (j.state = 'waiting' OR j.state = 'queued' OR j.state = 'running' \
                   OR (j.state = 'dead' AND s.run_always = 0)) \
              AND j.id NOT IN ",
            gone!(),
            ")"
        )
    };
}

/// Version 11: sequences (docs/reference.md, "Flows").
/// - `jobs.sequence`: jobs sharing it run one at a time in id order: each
///   member waits, through an edge of `job_deps` marked `seq`, for the
///   latest earlier member still live (`jobs_sequence_live` finds it);
/// - a member's success lets the next go (the success trigger, as for a
///   parent); its death halts the sequence (the next keeps waiting, unless
///   it runs whatever its predecessor's outcome), until `jobd retry`;
///   its cancellation hands the next to the latest earlier live member,
///   or lets it go when there is none;
/// - the end trigger is made again so that a dead or cancelled member
///   cancels only its children through parent edges.
const V11_SEQUENCES: &str = concat!(
    "ALTER TABLE jobs ADD COLUMN sequence TEXT NULL
    CONSTRAINT sequence_not_empty CHECK (sequence <> '');
ALTER TABLE job_deps ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
CREATE INDEX jobs_sequence_live ON jobs (sequence, id) WHERE sequence IS NOT NULL
    AND (state = 'waiting' OR state = 'queued' OR state = 'running' OR state = 'dead');
CREATE TRIGGER jobs_guard_sequence_fixed BEFORE UPDATE OF sequence ON jobs
    WHEN NEW.sequence IS NOT OLD.sequence
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: sequence_fixed_at_insert');
END;
CREATE TRIGGER jobs_sequence_insert AFTER INSERT ON jobs WHEN NEW.sequence IS NOT NULL
BEGIN
    INSERT OR IGNORE INTO job_deps (parent, child, seq)
        SELECT p.id, NEW.id, 1 FROM jobs p
        WHERE p.id = (SELECT max(id) FROM jobs
                      WHERE sequence = NEW.sequence AND id < NEW.id
                        AND (state = 'waiting' OR state = 'queued' OR state = 'running'
                             OR state = 'dead'))
          AND NOT (p.state = 'dead' AND NEW.run_always = 1);
    UPDATE jobs SET has_children = 1 WHERE has_children = 0
        AND id = (SELECT parent FROM job_deps WHERE child = NEW.id AND seq = 1);
    UPDATE jobs SET waiting_for = waiting_for + 1,
        state = CASE WHEN state = 'queued' THEN 'waiting' ELSE state END
        WHERE id = NEW.id AND EXISTS (SELECT 1 FROM job_deps WHERE child = NEW.id AND seq = 1);
END;
DROP TRIGGER jobs_flow_ended;
CREATE TRIGGER jobs_flow_ended AFTER UPDATE OF state ON jobs
    WHEN NEW.has_children = 1 AND (NEW.state = 'dead' OR NEW.state = 'cancelled')
        AND OLD.state <> 'dead' AND OLD.state <> 'cancelled'
BEGIN
    UPDATE job_deps SET cut = 1 WHERE met = 0 AND seq = 0
        AND (parent = NEW.id OR parent IN ",
    doomed_by_parents!(),
    ")
        AND child IN (SELECT id FROM jobs WHERE id = child AND run_always = 0);
    -- Next members of the sequence whose member is gone wait for an earlier one.
    UPDATE OR IGNORE job_deps SET parent = ",
    earlier_live!(),
    "
        WHERE met = 0 AND seq = 1 AND parent IN ",
    gone!(),
    " AND ",
    earlier_live!(),
    " IS NOT NULL;
    UPDATE jobs SET has_children = 1 WHERE has_children = 0 AND id IN (
        SELECT parent FROM job_deps WHERE met = 0 AND seq = 1);
    -- What is left is let go: run_always children, next members of a
    -- sequence with no earlier live member, and next members that run
    -- whatever their dead predecessor's outcome.
    UPDATE jobs SET
        waiting_for = waiting_for - (SELECT count(*) FROM job_deps d WHERE d.child = jobs.id
            AND d.met = 0 AND (d.parent = NEW.id OR d.parent IN ",
    doomed_by_parents!(),
    ")
            AND (jobs.run_always = 1 OR (d.seq = 1 AND d.parent IN ",
    gone!(),
    "))),
        state = CASE WHEN state = 'waiting' AND waiting_for = (SELECT count(*) FROM job_deps d
            WHERE d.child = jobs.id AND d.met = 0 AND (d.parent = NEW.id OR d.parent IN ",
    doomed_by_parents!(),
    ")
            AND (jobs.run_always = 1 OR (d.seq = 1 AND d.parent IN ",
    gone!(),
    "))) THEN 'queued' ELSE state END
        WHERE id IN (SELECT child FROM job_deps WHERE met = 0
            AND (parent = NEW.id OR parent IN ",
    doomed_by_parents!(),
    "));
    UPDATE job_deps SET met = 1 WHERE met = 0 AND (parent = NEW.id OR parent IN ",
    doomed_by_parents!(),
    ")
        AND (child IN (SELECT id FROM jobs WHERE id = child AND run_always = 1)
             OR (seq = 1 AND parent IN ",
    gone!(),
    "));
    UPDATE jobs SET state = 'cancelled',
        finished_at = coalesce(NEW.finished_at, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
        last_error = 'cancelled: job ' || NEW.id || ', which this job waits for, is ' || NEW.state
        WHERE id IN ",
    doomed_by_parents!(),
    ";
END;
"
);

/// Version 12: what a running handler reports (docs/reference.md, "Warm
/// handlers"): `jobs.progress`, JSON text `{"attempt", "fraction",
/// "note"}` of the latest report (shown while that attempt runs).
const V12_PROGRESS: &str = "ALTER TABLE jobs ADD COLUMN progress TEXT NULL
    CONSTRAINT progress_is_json CHECK (progress IS NULL OR json_valid(progress));";

/// Version 13: snoozes (docs/reference.md, "Warm handlers"): `jobs.snoozes`
/// counts a job's attempts its handler put off (bounded by
/// `retry.max_snoozes`), and `job_runs` is rebuilt for its CHECK rule to
/// admit the outcome `snoozed` (ids kept: the stats read runs by id).
const V13_SNOOZES: &str = "
ALTER TABLE jobs ADD COLUMN snoozes INTEGER NOT NULL DEFAULT 0;
CREATE TABLE job_runs_v13 (
    id          INTEGER PRIMARY KEY,
    job_id      INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    worker      TEXT    NOT NULL,
    queue       TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    outcome     TEXT    NOT NULL CONSTRAINT outcome_known CHECK (outcome = 'succeeded'
                OR outcome = 'retry' OR outcome = 'dead' OR outcome = 'timeout'
                OR outcome = 'rescued' OR outcome = 'interrupted' OR outcome = 'cancelled'
                OR outcome = 'snoozed'),
    error       TEXT    NULL,
    duration_ms INTEGER NOT NULL
) STRICT;
INSERT INTO job_runs_v13 SELECT id, job_id, attempt, worker, queue, kind, started_at,
    finished_at, outcome, error, duration_ms FROM job_runs;
DROP TABLE job_runs;
ALTER TABLE job_runs_v13 RENAME TO job_runs;
CREATE INDEX job_runs_job ON job_runs (job_id, attempt);
";

/// Now, in epoch ms, as the schema's defaults write it.
macro_rules! now_ms {
    () => {
        "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
    };
}

/// What the job being updated (`jobs`) still waits for, counted from the
/// edges rather than kept by increments (a count that drifts strands a
/// job for good): its edges not yet met, and, for a batch's callback,
/// its batch until the batch has finished.
macro_rules! waits {
    () => {
        "((SELECT count(*) FROM job_deps w WHERE w.child = jobs.id AND w.met = 0) \
         + (SELECT count(*) FROM batches b WHERE b.name = jobs.callback_for AND b.finished_at IS NULL))"
    };
}

/// Recounts what the waiting jobs that match the condition (given in
/// pieces) wait for, and queues those that wait for nothing more.
macro_rules! settle {
    ($($which:literal),+) => {
        concat!(
            "UPDATE jobs SET waiting_for = ", waits!(), ",
        state = CASE WHEN ", waits!(), " = 0 THEN 'queued' ELSE state END,
        run_at = CASE WHEN ", waits!(), " = 0 THEN max(run_at, ", now_ms!(), ") ELSE run_at END
        WHERE state = 'waiting' AND ", $($which),+, ";\n"
        )
    };
}

/// The jobs the end of `$row` (`NEW` or `OLD`) cancels: its waiting
/// children through parent edges that do not run whatever their parents'
/// outcome, their children likewise, and so on. A query, because a
/// trigger does not fire itself again unless the connection asks.
macro_rules! doomed_of {
    ($row:literal) => {
        concat!(
            "(WITH RECURSIVE doomed(id) AS (
            SELECT d.child FROM job_deps d JOIN jobs c ON c.id = d.child
            WHERE d.parent = ",
            $row,
            ".id AND d.met = 0 AND d.seq = 0 AND c.run_always = 0 AND c.state = 'waiting'
            UNION
            SELECT d.child FROM doomed JOIN job_deps d ON d.parent = doomed.id
            JOIN jobs c ON c.id = d.child
            WHERE d.met = 0 AND d.seq = 0 AND c.run_always = 0 AND c.state = 'waiting')
        SELECT id FROM doomed)"
        )
    };
}

/// Whether the child of the `job_deps` row at hand runs whatever its
/// parents' outcome.
macro_rules! child_runs_always {
    () => {
        "(SELECT s.run_always FROM jobs s WHERE s.id = job_deps.child) = 1"
    };
}

/// The member the child of the `job_deps` row at hand waits for instead
/// of `$row`, a member of its sequence that is gone: the member `$row`
/// itself waited for (it is taken out of the line, the rest keep their
/// places; a predecessor it also named as a parent counts), none when
/// `$row` was at the head; never a dead one for a child that runs
/// whatever its predecessor's outcome.
macro_rules! splice_of {
    ($row:literal) => {
        concat!(
            "(SELECT p.parent FROM job_deps p JOIN jobs q ON q.id = p.parent
            WHERE p.child = ",
            $row,
            ".id AND p.met = 0 AND (p.seq = 1 OR q.sequence = ",
            $row,
            ".sequence)
            AND (q.state = 'waiting' OR q.state = 'queued' OR q.state = 'running' OR q.state = 'dead')
            AND NOT (q.state = 'dead' AND ",
            child_runs_always!(),
            ") ORDER BY q.seq_pos DESC LIMIT 1)"
        )
    };
}

/// The live members of `NEW`'s sequence that wait for it, directly or
/// through other members: the part of the line it heads.
macro_rules! line_after {
    () => {
        "(WITH RECURSIVE later(id) AS (
                  SELECT d.child FROM job_deps d JOIN jobs c ON c.id = d.child
                  WHERE d.parent = NEW.id AND d.met = 0 AND c.sequence = NEW.sequence
                    AND (c.state = 'waiting' OR c.state = 'queued' OR c.state = 'running')
                  UNION
                  SELECT d.child FROM later JOIN job_deps d ON d.parent = later.id
                  JOIN jobs c ON c.id = d.child
                  WHERE d.met = 0 AND c.sequence = NEW.sequence
                    AND (c.state = 'waiting' OR c.state = 'queued' OR c.state = 'running'))
              SELECT id FROM later)"
    };
}

/// The edges from `$row` to the next members of its line, still waiting
/// for it: sequence edges, and parent edges to a member of its sequence
/// (a predecessor named as a parent). A member its end cancels is handed
/// on too, so that its own cancellation finds where its line goes on.
macro_rules! line_edges {
    ($row:literal) => {
        concat!(
            "parent = ",
            $row,
            ".id AND met = 0 AND cut = 0
            AND (seq = 1 OR (SELECT s.sequence FROM jobs s WHERE s.id = job_deps.child) = ",
            $row,
            ".sequence)"
        )
    };
}

/// Hands the next members of a sequence that waited for `$row` (those
/// matching `$which`) to the member it waited for, where there is one: a
/// new edge, or an old one from an earlier turn waiting again (an edge
/// left met would make the member wait for nothing). Their edges from
/// `$row` are met then, by the statement after this.
macro_rules! hand_on {
    ($row:literal, $which:literal) => {
        concat!(
            "UPDATE jobs SET has_children = 1 WHERE has_children = 0 AND id IN (
        SELECT ",
            splice_of!($row),
            " FROM job_deps WHERE ",
            line_edges!($row),
            " AND ",
            $which,
            ");
    INSERT INTO job_deps (parent, child, seq)
        SELECT ",
            splice_of!($row),
            ", child, 1 FROM job_deps
        WHERE ",
            line_edges!($row),
            " AND ",
            $which,
            " AND ",
            splice_of!($row),
            " IS NOT NULL
        ON CONFLICT (parent, child) DO UPDATE SET met = 0, cut = 0,
            seq = CASE WHEN met = 1 THEN 1 ELSE seq END;\n"
        )
    };
}

/// Version 14: the flow rules made again, one trigger per event, each
/// independent of the order in which SQLite fires them (it fires the
/// newest first, so a job with parents and a sequence was let go when its
/// sequence let it go), and every wait counted from the edges:
/// - a sequence's order is the order of the inserts (`jobs.seq_pos`,
///   drawn from `sequences`), not id order: a client that draws ids
///   first may insert them in any order;
/// - one insert trigger: parent edges, then the sequence edge (none to a
///   member that is already a parent, none for a job cancelled at
///   insert), then the callback's wait for its batch, then the seal;
/// - a success meets its edges; an end cancels the waiting descendants
///   (`jobs_flow_ended`) and lets go of `run_always` children, and a
///   cancelled member of a sequence is taken out of the line: the next
///   member waits for what it waited for (`jobs_flow_gone`, which also
///   runs for every job the first one cancels); only edges into a
///   cancelled child are marked `cut`, so a retry never revives a job an
///   operator cancelled;
/// - a retry (dead or cancelled back to queued or waiting) recounts the
///   job's wait and puts a sequence member behind its sequence's latest
///   live member that does not wait for it, so two never run at once;
/// - a deleted job cancels its waiting children and hands on its next
///   members, as a cancelled one does;
/// - a member inserted already ended counts in its batch;
/// - what waiting jobs wait for is recounted once, for files whose counts
///   drifted under version 13.
const V14_FLOW_RULES: &str = concat!(
    "ALTER TABLE jobs ADD COLUMN seq_pos INTEGER NULL;
UPDATE jobs SET seq_pos = id WHERE sequence IS NOT NULL;
CREATE TABLE sequences (
    name     TEXT    PRIMARY KEY,
    last_pos INTEGER NOT NULL
) STRICT;
INSERT INTO sequences (name, last_pos)
    SELECT sequence, max(id) FROM jobs WHERE sequence IS NOT NULL GROUP BY sequence;
DROP INDEX jobs_sequence_live;
CREATE INDEX jobs_sequence_live ON jobs (sequence, seq_pos) WHERE sequence IS NOT NULL
    AND (state = 'waiting' OR state = 'queued' OR state = 'running' OR state = 'dead');
DROP TRIGGER jobs_flow_insert;
DROP TRIGGER jobs_flow_succeeded;
DROP TRIGGER jobs_flow_ended;
DROP TRIGGER jobs_flow_deleted;
DROP TRIGGER jobs_batch_callback;
DROP TRIGGER jobs_batch_insert;
DROP TRIGGER jobs_sequence_insert;
DROP TRIGGER batches_finished;
DROP TRIGGER jobs_batch_deleted;
CREATE TRIGGER jobs_batch_deleted AFTER DELETE ON jobs WHEN OLD.batch IS NOT NULL
BEGIN
    UPDATE batches SET total = total - 1,
        succeeded = succeeded - (OLD.state = 'succeeded'),
        dead = dead - (OLD.state = 'dead'),
        cancelled = cancelled - (OLD.state = 'cancelled')
        WHERE name = OLD.batch AND sealed = 0;
    -- Deleted after the seal before it ended, it counts as cancelled.
    UPDATE batches SET cancelled = cancelled + 1
        WHERE name = OLD.batch AND sealed = 1
          AND NOT (OLD.state = 'succeeded' OR OLD.state = 'dead' OR OLD.state = 'cancelled');
END;
CREATE TRIGGER jobs_flow_insert AFTER INSERT ON jobs
    WHEN NEW.state = 'queued' AND ((NEW.parents IS NOT NULL AND NEW.parents <> '[]')
        OR NEW.sequence IS NOT NULL OR NEW.callback_for IS NOT NULL)
BEGIN
    INSERT OR IGNORE INTO job_deps (parent, child, met, cut)
        SELECT p.id, NEW.id,
            p.state = 'succeeded' OR (NEW.run_always = 1 AND (p.state = 'dead' OR p.state = 'cancelled')),
            NEW.run_always = 0 AND (p.state = 'dead' OR p.state = 'cancelled')
        FROM jobs p WHERE p.id IN (SELECT value FROM json_each(NEW.parents));
    UPDATE jobs SET has_children = 1
        WHERE has_children = 0 AND id IN (SELECT value FROM json_each(NEW.parents));
    INSERT INTO sequences (name, last_pos) SELECT NEW.sequence, 1 WHERE NEW.sequence IS NOT NULL
        ON CONFLICT (name) DO UPDATE SET last_pos = last_pos + 1;
    UPDATE jobs SET seq_pos = (SELECT last_pos FROM sequences WHERE name = NEW.sequence)
        WHERE id = NEW.id AND NEW.sequence IS NOT NULL;
    INSERT OR IGNORE INTO job_deps (parent, child, seq)
        SELECT j.id, NEW.id, 1 FROM jobs j
        WHERE j.sequence = NEW.sequence AND j.id <> NEW.id
          AND (j.state = 'waiting' OR j.state = 'queued' OR j.state = 'running' OR j.state = 'dead')
          AND NOT (j.state = 'dead' AND NEW.run_always = 1)
          AND NOT EXISTS (SELECT 1 FROM job_deps WHERE child = NEW.id AND cut = 1)
        ORDER BY j.seq_pos DESC LIMIT 1;
    UPDATE jobs SET has_children = 1 WHERE has_children = 0
        AND id = (SELECT parent FROM job_deps WHERE child = NEW.id AND seq = 1);
    INSERT OR IGNORE INTO batches (name) SELECT NEW.callback_for WHERE NEW.callback_for IS NOT NULL;
    UPDATE jobs SET waiting_for = CASE
            WHEN EXISTS (SELECT 1 FROM job_deps WHERE child = NEW.id AND cut = 1) THEN 0 ELSE ",
    waits!(),
    " END,
        state = CASE WHEN EXISTS (SELECT 1 FROM job_deps WHERE child = NEW.id AND cut = 1) THEN 'cancelled'
                     WHEN ",
    waits!(),
    " > 0 THEN 'waiting' ELSE state END,
        finished_at = CASE WHEN EXISTS (SELECT 1 FROM job_deps WHERE child = NEW.id AND cut = 1)
                           THEN ",
    now_ms!(),
    " ELSE finished_at END,
        last_error = coalesce((SELECT 'cancelled: job ' || j.id || ', which this job waits for, is ' || j.state
                               FROM job_deps d JOIN jobs j ON j.id = d.parent
                               WHERE d.child = NEW.id AND d.cut = 1 ORDER BY j.id LIMIT 1), last_error)
        WHERE id = NEW.id;
    UPDATE batches SET sealed = 1, callback_id = NEW.id WHERE name = NEW.callback_for;
END;
CREATE TRIGGER jobs_batch_insert AFTER INSERT ON jobs WHEN NEW.batch IS NOT NULL
BEGIN
    UPDATE batches SET total = total + 1,
        succeeded = succeeded + (NEW.state = 'succeeded'),
        dead = dead + (NEW.state = 'dead'),
        cancelled = cancelled + (NEW.state = 'cancelled')
        WHERE name = NEW.batch;
END;
CREATE TRIGGER jobs_flow_succeeded AFTER UPDATE OF state ON jobs
    WHEN NEW.has_children = 1 AND NEW.state = 'succeeded' AND OLD.state <> 'succeeded'
BEGIN
    UPDATE job_deps SET met = 1 WHERE parent = NEW.id AND met = 0;
    ",
    settle!("id IN (SELECT child FROM job_deps WHERE parent = NEW.id)"),
    "END;
CREATE TRIGGER jobs_flow_ended AFTER UPDATE OF state ON jobs
    WHEN NEW.has_children = 1 AND (NEW.state = 'dead' OR NEW.state = 'cancelled')
        AND OLD.state <> 'dead' AND OLD.state <> 'cancelled'
BEGIN
    UPDATE job_deps SET cut = 1 WHERE met = 0 AND seq = 0 AND cut = 0
        AND parent IN (SELECT NEW.id UNION ALL SELECT id FROM ",
    doomed_of!("NEW"),
    ")
        AND child IN ",
    doomed_of!("NEW"),
    ";
    UPDATE jobs SET state = 'cancelled',
        finished_at = coalesce(NEW.finished_at, ",
    now_ms!(),
    "),
        last_error = 'cancelled: job ' || NEW.id || ', which this job waits for, is ' || NEW.state
        WHERE id IN ",
    doomed_of!("NEW"),
    ";
END;
CREATE TRIGGER jobs_flow_gone AFTER UPDATE OF state ON jobs
    WHEN NEW.has_children = 1 AND (NEW.state = 'dead' OR NEW.state = 'cancelled')
        AND OLD.state <> 'dead' AND OLD.state <> 'cancelled'
BEGIN
    ",
    hand_on!(
        "NEW",
        "(NEW.state = 'cancelled' OR (SELECT s.run_always FROM jobs s WHERE s.id = job_deps.child) = 1)"
    ),
    "    UPDATE job_deps SET met = 1 WHERE parent = NEW.id AND met = 0 AND cut = 0
        AND (",
    child_runs_always!(),
    " OR (seq = 1 AND NEW.state = 'cancelled'));
    ",
    settle!("id IN (SELECT child FROM job_deps WHERE parent = NEW.id)"),
    "    -- Its place in the line is gone.
    DELETE FROM job_deps WHERE parent = NEW.id AND seq = 1 AND met = 1;
END;
CREATE TRIGGER jobs_flow_requeued AFTER UPDATE OF state ON jobs
    WHEN (OLD.state = 'dead' OR OLD.state = 'cancelled') AND (NEW.state = 'queued' OR NEW.state = 'waiting')
        AND ((NEW.parents IS NOT NULL AND NEW.parents <> '[]') OR NEW.sequence IS NOT NULL
             OR NEW.callback_for IS NOT NULL)
BEGIN
    -- Its old place in the line is gone (a member cancelled while it
    -- waited still had its edge from the member before it).
    DELETE FROM job_deps WHERE child = NEW.id AND seq = 1 AND NEW.sequence IS NOT NULL;
    INSERT INTO job_deps (parent, child, seq)
        SELECT j.id, NEW.id, 1 FROM jobs j
        WHERE j.sequence = NEW.sequence AND j.id <> NEW.id
          AND (j.state = 'waiting' OR j.state = 'queued' OR j.state = 'running' OR j.state = 'dead')
          AND NOT (j.state = 'dead' AND NEW.run_always = 1)
          AND j.id NOT IN ",
    line_after!(),
    "
        ORDER BY j.seq_pos DESC LIMIT 1
        ON CONFLICT (parent, child) DO UPDATE SET met = 0, cut = 0,
            seq = CASE WHEN met = 1 THEN 1 ELSE seq END;
    UPDATE jobs SET has_children = 1 WHERE has_children = 0
        AND id IN (SELECT parent FROM job_deps WHERE child = NEW.id AND met = 0);
    -- Behind the line's last member, it takes the last place (unless
    -- members still wait for it: then it heads them where it stood).
    INSERT INTO sequences (name, last_pos) SELECT NEW.sequence, 1
        WHERE NEW.sequence IS NOT NULL AND NOT EXISTS ",
    line_after!(),
    "
        ON CONFLICT (name) DO UPDATE SET last_pos = last_pos + 1;
    UPDATE jobs SET seq_pos = (SELECT last_pos FROM sequences WHERE name = NEW.sequence)
        WHERE id = NEW.id AND NEW.sequence IS NOT NULL AND NOT EXISTS ",
    line_after!(),
    ";
    UPDATE jobs SET waiting_for = ",
    waits!(),
    ",
        state = CASE WHEN ",
    waits!(),
    " > 0 THEN 'waiting' ELSE 'queued' END
        WHERE id = NEW.id;
END;
CREATE TRIGGER jobs_flow_deleted AFTER DELETE ON jobs
    WHEN OLD.has_children = 1 OR OLD.parents IS NOT NULL OR OLD.sequence IS NOT NULL
BEGIN
    -- Its line first, while the members it takes with it are still
    -- there to hand on theirs to what it waited for.
    ",
    hand_on!("OLD", "1"),
    "    UPDATE job_deps SET cut = 1 WHERE met = 0 AND seq = 0 AND cut = 0
        AND parent IN (SELECT OLD.id UNION ALL SELECT id FROM ",
    doomed_of!("OLD"),
    ")
        AND child IN ",
    doomed_of!("OLD"),
    ";
    UPDATE jobs SET state = 'cancelled', finished_at = ",
    now_ms!(),
    ",
        last_error = 'cancelled: job ' || OLD.id || ', which this job waits for, was deleted'
        WHERE id IN ",
    doomed_of!("OLD"),
    ";
    UPDATE job_deps SET met = 1 WHERE parent = OLD.id AND met = 0 AND cut = 0;
    ",
    settle!("id IN (SELECT child FROM job_deps WHERE parent = OLD.id)"),
    "    DELETE FROM job_deps WHERE parent = OLD.id;
    DELETE FROM job_deps WHERE child = OLD.id;
END;
CREATE TRIGGER batches_finished AFTER UPDATE ON batches
    WHEN NEW.sealed = 1 AND NEW.finished_at IS NULL
        AND NEW.succeeded + NEW.dead + NEW.cancelled >= NEW.total
BEGIN
    UPDATE batches SET finished_at = ",
    now_ms!(),
    " WHERE name = NEW.name;
    ",
    settle!("id = NEW.callback_id"),
    "END;
",
    settle!("1"),
);

/// Version 15: `workers.handlers`, JSON text: the warm handler processes
/// a daemon's CPU workers keep (docs/reference.md, "Warm handlers"),
/// written with each heartbeat.
const V15_HANDLERS: &str = "ALTER TABLE workers ADD COLUMN handlers TEXT NULL
    CONSTRAINT handlers_is_json CHECK (handlers IS NULL OR json_valid(handlers));";

/// Version 16: the triggers a change of state fires cost every claim and
/// every completion, flows or not. SQLite runs a trigger's WHEN inside the
/// trigger's own program, and sets up that program's frame (every register
/// its body uses, zeroed, then released) once per statement that reaches
/// it: the flow triggers' bodies are large, so their frames cost 13 % of a
/// plain job's claim and completion where no flow is in play. So:
/// - each flow trigger is split in two: on `jobs`, the same name, event and
///   WHEN, with a body of one insert into the view `jobs_flow_events`
///   (what its body reads of `NEW`, and which trigger it stands for), and
///   an `INSTEAD OF INSERT` trigger on that view with the body as it was,
///   word for word; created in the same order, they fire in the same order
///   as before, and a trigger still never fires itself again;
/// - the two batch counters (`jobs_batch_ended`, `jobs_batch_reopened`)
///   are one trigger, `jobs_batch_moved`: one statement adds the new
///   state's count and takes off the old one's, where the old pair did
///   one or the other; it is created before the flow triggers, so it still
///   fires after them.
const V16_LIGHTER_TRANSITIONS: &str = concat!(
    "DROP TRIGGER jobs_batch_ended;
DROP TRIGGER jobs_batch_reopened;
DROP TRIGGER jobs_flow_succeeded;
DROP TRIGGER jobs_flow_ended;
DROP TRIGGER jobs_flow_gone;
DROP TRIGGER jobs_flow_requeued;
CREATE TRIGGER jobs_batch_moved AFTER UPDATE OF state ON jobs
    WHEN NEW.batch IS NOT NULL
        AND (NEW.state = 'succeeded' OR NEW.state = 'dead' OR NEW.state = 'cancelled')
            <> (OLD.state = 'succeeded' OR OLD.state = 'dead' OR OLD.state = 'cancelled')
BEGIN
    UPDATE batches SET
        succeeded = succeeded + (NEW.state = 'succeeded') - (OLD.state = 'succeeded'),
        dead = dead + (NEW.state = 'dead') - (OLD.state = 'dead'),
        cancelled = cancelled + (NEW.state = 'cancelled') - (OLD.state = 'cancelled')
        WHERE name = NEW.batch;
END;
CREATE VIEW jobs_flow_events AS
    SELECT '' AS event, id, state, finished_at, sequence, run_always FROM jobs WHERE 0;
CREATE TRIGGER jobs_flow_succeeded_run INSTEAD OF INSERT ON jobs_flow_events
    WHEN NEW.event = 'succeeded'
BEGIN
    UPDATE job_deps SET met = 1 WHERE parent = NEW.id AND met = 0;
    ",
    settle!("id IN (SELECT child FROM job_deps WHERE parent = NEW.id)"),
    "END;
CREATE TRIGGER jobs_flow_ended_run INSTEAD OF INSERT ON jobs_flow_events
    WHEN NEW.event = 'ended'
BEGIN
    UPDATE job_deps SET cut = 1 WHERE met = 0 AND seq = 0 AND cut = 0
        AND parent IN (SELECT NEW.id UNION ALL SELECT id FROM ",
    doomed_of!("NEW"),
    ")
        AND child IN ",
    doomed_of!("NEW"),
    ";
    UPDATE jobs SET state = 'cancelled',
        finished_at = coalesce(NEW.finished_at, ",
    now_ms!(),
    "),
        last_error = 'cancelled: job ' || NEW.id || ', which this job waits for, is ' || NEW.state
        WHERE id IN ",
    doomed_of!("NEW"),
    ";
END;
CREATE TRIGGER jobs_flow_gone_run INSTEAD OF INSERT ON jobs_flow_events
    WHEN NEW.event = 'gone'
BEGIN
    ",
    hand_on!(
        "NEW",
        "(NEW.state = 'cancelled' OR (SELECT s.run_always FROM jobs s WHERE s.id = job_deps.child) = 1)"
    ),
    "    UPDATE job_deps SET met = 1 WHERE parent = NEW.id AND met = 0 AND cut = 0
        AND (",
    child_runs_always!(),
    " OR (seq = 1 AND NEW.state = 'cancelled'));
    ",
    settle!("id IN (SELECT child FROM job_deps WHERE parent = NEW.id)"),
    "    -- Its place in the line is gone.
    DELETE FROM job_deps WHERE parent = NEW.id AND seq = 1 AND met = 1;
END;
CREATE TRIGGER jobs_flow_requeued_run INSTEAD OF INSERT ON jobs_flow_events
    WHEN NEW.event = 'requeued'
BEGIN
    -- Its old place in the line is gone (a member cancelled while it
    -- waited still had its edge from the member before it).
    DELETE FROM job_deps WHERE child = NEW.id AND seq = 1 AND NEW.sequence IS NOT NULL;
    INSERT INTO job_deps (parent, child, seq)
        SELECT j.id, NEW.id, 1 FROM jobs j
        WHERE j.sequence = NEW.sequence AND j.id <> NEW.id
          AND (j.state = 'waiting' OR j.state = 'queued' OR j.state = 'running' OR j.state = 'dead')
          AND NOT (j.state = 'dead' AND NEW.run_always = 1)
          AND j.id NOT IN ",
    line_after!(),
    "
        ORDER BY j.seq_pos DESC LIMIT 1
        ON CONFLICT (parent, child) DO UPDATE SET met = 0, cut = 0,
            seq = CASE WHEN met = 1 THEN 1 ELSE seq END;
    UPDATE jobs SET has_children = 1 WHERE has_children = 0
        AND id IN (SELECT parent FROM job_deps WHERE child = NEW.id AND met = 0);
    -- Behind the line's last member, it takes the last place (unless
    -- members still wait for it: then it heads them where it stood).
    INSERT INTO sequences (name, last_pos) SELECT NEW.sequence, 1
        WHERE NEW.sequence IS NOT NULL AND NOT EXISTS ",
    line_after!(),
    "
        ON CONFLICT (name) DO UPDATE SET last_pos = last_pos + 1;
    UPDATE jobs SET seq_pos = (SELECT last_pos FROM sequences WHERE name = NEW.sequence)
        WHERE id = NEW.id AND NEW.sequence IS NOT NULL AND NOT EXISTS ",
    line_after!(),
    ";
    UPDATE jobs SET waiting_for = ",
    waits!(),
    ",
        state = CASE WHEN ",
    waits!(),
    " > 0 THEN 'waiting' ELSE 'queued' END
        WHERE id = NEW.id;
END;
CREATE TRIGGER jobs_flow_succeeded AFTER UPDATE OF state ON jobs
    WHEN NEW.has_children = 1 AND NEW.state = 'succeeded' AND OLD.state <> 'succeeded'
BEGIN
    INSERT INTO jobs_flow_events (event, id, state, finished_at, sequence, run_always)
        VALUES ('succeeded', NEW.id, NEW.state, NEW.finished_at, NEW.sequence, NEW.run_always);
END;
CREATE TRIGGER jobs_flow_ended AFTER UPDATE OF state ON jobs
    WHEN NEW.has_children = 1 AND (NEW.state = 'dead' OR NEW.state = 'cancelled')
        AND OLD.state <> 'dead' AND OLD.state <> 'cancelled'
BEGIN
    INSERT INTO jobs_flow_events (event, id, state, finished_at, sequence, run_always)
        VALUES ('ended', NEW.id, NEW.state, NEW.finished_at, NEW.sequence, NEW.run_always);
END;
CREATE TRIGGER jobs_flow_gone AFTER UPDATE OF state ON jobs
    WHEN NEW.has_children = 1 AND (NEW.state = 'dead' OR NEW.state = 'cancelled')
        AND OLD.state <> 'dead' AND OLD.state <> 'cancelled'
BEGIN
    INSERT INTO jobs_flow_events (event, id, state, finished_at, sequence, run_always)
        VALUES ('gone', NEW.id, NEW.state, NEW.finished_at, NEW.sequence, NEW.run_always);
END;
CREATE TRIGGER jobs_flow_requeued AFTER UPDATE OF state ON jobs
    WHEN (OLD.state = 'dead' OR OLD.state = 'cancelled') AND (NEW.state = 'queued' OR NEW.state = 'waiting')
        AND ((NEW.parents IS NOT NULL AND NEW.parents <> '[]') OR NEW.sequence IS NOT NULL
             OR NEW.callback_for IS NOT NULL)
BEGIN
    INSERT INTO jobs_flow_events (event, id, state, finished_at, sequence, run_always)
        VALUES ('requeued', NEW.id, NEW.state, NEW.finished_at, NEW.sequence, NEW.run_always);
END;
",
);

/// The index fair claims scan key by key, as version 7 had it, built by
/// the first daemon that serves a fair queue
/// ([`crate::store::Fleet::ensure_key_index`]).
pub fn ready_key_index() -> String {
    format!(
        "CREATE INDEX IF NOT EXISTS jobs_ready_key ON jobs \
         (queue, limit_key, {}, priority DESC, run_at, id) \
         WHERE state = 'queued' AND limit_key IS NOT NULL;",
        cpu_kind_test()
    )
}

/// Version 17: a success is described by its job row, not by a row of its
/// own. The attempts that did not succeed (a retry, a timeout, a rescue, a
/// death, a cancel…) stay rows, in `job_attempts` (the table `job_runs`
/// was); a success gets `jobs.run_id`, its place in the same id order, so
/// `tail` and the dashboard follow both. `job_runs` is now a view of the
/// two, one row per attempt as before, for every reader and script; its
/// triggers take the writes the version before made through it (a daemon
/// still running it while `jobd migrate` runs, a script): an attempt goes
/// into `job_attempts`, a success gives its job its place, and a delete
/// (the old pruner's) deletes the attempt row.
///
/// Measured (one daemon draining 200 000 jobs, alternating with the build
/// before): 72 600 → 78 900 jobs/s on SQLite (medians of 3); on
/// PostgreSQL the outcomes' server time per job 17.5 → 13.7 µs and WAL
/// per job 1 453 → 1 220 B (docs/benchmarks.md).
const V17_SUCCESS_IN_THE_JOB: &str = "
ALTER TABLE job_runs RENAME TO job_attempts;
DROP INDEX job_runs_job;
CREATE INDEX job_attempts_job ON job_attempts (job_id, attempt);
ALTER TABLE jobs ADD COLUMN run_id INTEGER NULL;
UPDATE jobs SET run_id = (SELECT max(a.id) FROM job_attempts a WHERE a.job_id = jobs.id
    AND a.attempt = jobs.attempts AND a.outcome = 'succeeded') WHERE state = 'succeeded';
DELETE FROM job_attempts WHERE outcome = 'succeeded'
    AND id IN (SELECT run_id FROM jobs WHERE run_id IS NOT NULL);
CREATE INDEX jobs_run ON jobs (run_id) WHERE run_id IS NOT NULL;
CREATE VIEW job_runs (id, job_id, attempt, worker, queue, kind, started_at, finished_at,
    outcome, error, duration_ms) AS
    SELECT id, job_id, attempt, worker, queue, kind, started_at, finished_at, outcome, error,
        duration_ms FROM job_attempts
    UNION ALL
    SELECT run_id, id, attempts, worker, queue, kind, started_at, finished_at, 'succeeded', NULL,
        max(finished_at - started_at, 0) FROM jobs WHERE state = 'succeeded';
CREATE TRIGGER job_runs_insert INSTEAD OF INSERT ON job_runs
BEGIN
    UPDATE jobs SET run_id = max(coalesce((SELECT max(id) FROM job_attempts), 0),
            coalesce((SELECT max(run_id) FROM jobs WHERE run_id IS NOT NULL), 0)) + 1
        WHERE NEW.outcome = 'succeeded' AND id = NEW.job_id AND state = 'succeeded'
        AND run_id IS NULL;
    INSERT INTO job_attempts (id, job_id, attempt, worker, queue, kind, started_at, finished_at,
            outcome, error, duration_ms)
        SELECT max(coalesce((SELECT max(id) FROM job_attempts), 0),
                coalesce((SELECT max(run_id) FROM jobs WHERE run_id IS NOT NULL), 0)) + 1,
            NEW.job_id, NEW.attempt, NEW.worker, NEW.queue, NEW.kind, NEW.started_at,
            NEW.finished_at, NEW.outcome, NEW.error, NEW.duration_ms
        WHERE NEW.outcome <> 'succeeded';
END;
CREATE TRIGGER job_runs_delete INSTEAD OF DELETE ON job_runs
BEGIN
    DELETE FROM job_attempts WHERE id = OLD.id;
END;
";

/// The next place in the order of `job_runs` as the triggers of version
/// 18 take it: after every attempt row, every success, and every place
/// the pruner has deleted ([`PLACES_PRUNED`]).
macro_rules! next_place {
    () => {
        concat!(
            "max(coalesce((SELECT max(id) FROM job_attempts), 0), \
                 coalesce((SELECT max(run_id) FROM jobs WHERE run_id IS NOT NULL), 0), ",
            places_pruned!(),
            ") + 1"
        )
    };
}

/// The newest place the pruner has deleted ([`PLACES_PRUNED`]), 0 before
/// it has deleted any: SQL, as the triggers and `RUN_ORDER` read it.
macro_rules! places_pruned {
    () => {
        "coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'places_pruned'), 0)"
    };
}
pub(crate) use places_pruned;

/// The `meta` key under which the pruner keeps the newest place it has
/// seen before deleting: places are `max + 1`, so without it a pruner
/// that deleted the newest attempts would let the next ones take their
/// places again, behind a `jobd tail` that had shown them.
pub const PLACES_PRUNED: &str = "places_pruned";

/// Version 18: nothing a success was is lost when it stops being one.
/// - A succeeded job moved out of `succeeded` by SQL (queued again to run
///   once more) keeps its success in the history: the trigger writes it as
///   an attempt row with its place, and the job gives up its `run_id`, so
///   its next success takes a new place. (It vanished from `job_runs`,
///   and `jobd show` no longer told of the attempt.)
/// - A success written through `job_runs` that no job can hold (its job is
///   not `succeeded`, or already holds a success) becomes an attempt row;
///   it was dropped without a word.
/// - Both triggers take places after those the pruner deleted.
/// - The view's duration of a success stays an integer whatever a client
///   wrote into its times (the difference of two extremes was a REAL,
///   which no reader could take).
///
/// The new trigger fires only where a job leaves `succeeded`, which no
/// write of jobd's does; its `WHEN` is read on each update of `state`
/// (measured in docs/benchmarks.md).
const V18_SUCCESS_KEPT: &str = concat!(
    "
DROP VIEW job_runs;
CREATE VIEW job_runs (id, job_id, attempt, worker, queue, kind, started_at, finished_at,
    outcome, error, duration_ms) AS
    SELECT id, job_id, attempt, worker, queue, kind, started_at, finished_at, outcome, error,
        duration_ms FROM job_attempts
    UNION ALL
    SELECT run_id, id, attempts, worker, queue, kind, started_at, finished_at, 'succeeded', NULL,
        CAST(max(finished_at - started_at, 0) AS INTEGER) FROM jobs WHERE state = 'succeeded';
CREATE TRIGGER job_runs_delete INSTEAD OF DELETE ON job_runs
BEGIN
    DELETE FROM job_attempts WHERE id = OLD.id;
END;
CREATE TRIGGER job_runs_insert INSTEAD OF INSERT ON job_runs
BEGIN
    INSERT INTO job_attempts (id, job_id, attempt, worker, queue, kind, started_at, finished_at,
            outcome, error, duration_ms)
        SELECT ",
    next_place!(),
    ", NEW.job_id, NEW.attempt, NEW.worker, NEW.queue, NEW.kind, NEW.started_at,
            NEW.finished_at, NEW.outcome, NEW.error, NEW.duration_ms
        WHERE NEW.outcome <> 'succeeded' OR NOT EXISTS (SELECT 1 FROM jobs
            WHERE id = NEW.job_id AND state = 'succeeded' AND run_id IS NULL);
    UPDATE jobs SET run_id = ",
    next_place!(),
    "
        WHERE NEW.outcome = 'succeeded' AND id = NEW.job_id AND state = 'succeeded'
        AND run_id IS NULL;
END;
CREATE TRIGGER jobs_success_kept AFTER UPDATE OF state ON jobs
    WHEN OLD.run_id IS NOT NULL AND OLD.state = 'succeeded' AND NEW.state <> 'succeeded'
BEGIN
    INSERT INTO job_attempts (id, job_id, attempt, worker, queue, kind, started_at, finished_at,
            outcome, error, duration_ms)
        VALUES (OLD.run_id, OLD.id, OLD.attempts, coalesce(OLD.worker, ''), OLD.queue, OLD.kind,
            coalesce(OLD.started_at, OLD.finished_at, 0),
            coalesce(OLD.finished_at, OLD.started_at, 0), 'succeeded', NULL,
            coalesce(CAST(max(OLD.finished_at - OLD.started_at, 0) AS INTEGER), 0));
    UPDATE jobs SET run_id = NULL WHERE id = OLD.id;
END;
"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_expression_names_exactly_the_cpu_kinds() {
        assert_eq!(
            cpu_kind_test(),
            "(kind = 'checksum' OR kind = 'compress' OR kind = 'exec')"
        );
        assert!(V4_READY_BY_POOL.contains(cpu_kind_test()));
        assert!(V7_READY_KEY_BY_POOL.contains(&format!("limit_key, {}, priority", cpu_kind_test())));
    }
}
