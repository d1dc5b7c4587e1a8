//! The PostgreSQL schema and its migrations, one entry per version in the
//! `jobd_schema` table: the SQLite schema's columns, states and CHECK rules
//! with `BIGINT` epoch-ms timestamps and `jsonb` values. A migration is
//! appended, never edited.

/// The migrations in order; entry `i` takes a database from version `i` to
/// `i + 1`. Appended to, never edited.
pub const MIGRATIONS: &[&str] = &[
    V1_TABLES,
    V2_NOTIFY_PER_SCHEMA,
    V3_IMPORTED_JOBS,
    V4_DATABASE_ID,
    V5_LIMIT_KEYS,
    V6_READY_KEY_BY_POOL,
    V7_READY_CPU,
    V8_KEY_INDEX_ON_DEMAND,
    V9_KEY_FUNCTIONS,
    V10_DEPENDENCIES,
    V11_BATCHES,
    V12_SEQUENCES,
    V13_PROGRESS,
    V14_SNOOZES,
    V15_FLOW_RULES,
    V16_HANDLERS,
    V17_AUTOVACUUM,
    V18_SUCCESS_IN_THE_JOB,
    V19_SUCCESS_KEPT,
];

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

/// Version 2: NOTIFY channels are per database, not per schema, so two
/// jobd deployments in two schemas of one database woke each other. The
/// channel now carries the schema's name: `jobd_jobs_<schema>`.
const V2_NOTIFY_PER_SCHEMA: &str = "
CREATE OR REPLACE FUNCTION jobd_notify_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('jobd_jobs_' || TG_TABLE_SCHEMA, NEW.queue);
    RETURN NULL;
END $$;
";

/// Version 3: which jobs `jobd migrate --from` has moved in, by source and
/// id there, so that running it again after an interruption never inserts
/// a job twice. `job_id` is NULL where a queued job with the same
/// `unique_key` already stood for it.
const V3_IMPORTED_JOBS: &str = "
CREATE TABLE imported_jobs (
    source      TEXT   NOT NULL,
    source_id   BIGINT NOT NULL,
    job_id      BIGINT NULL,
    imported_at BIGINT NOT NULL,
    PRIMARY KEY (source, source_id)
);
";

/// Version 4: this database's random id ([`crate::store::Admin::database_id`]). Job ids
/// come from a sequence, which never hands out a number twice.
const V4_DATABASE_ID: &str = "
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO meta(key, value)
    VALUES ('database_id', substr(md5(random()::text || clock_timestamp()::text), 1, 12));
";

/// Version 5: keyed limits, as SQLite's version 6: `jobs.limit_key`, the
/// indexes that count a key's running jobs and serve fair claims, and
/// `limit_keys` (a key's recent starts for its rate, its block, and when it opens again).
const V5_LIMIT_KEYS: &str = "
ALTER TABLE jobs ADD COLUMN limit_key TEXT NULL
    CONSTRAINT limit_key_not_empty CHECK (limit_key <> '');
CREATE INDEX jobs_running_key ON jobs (limit_key) WHERE state = 'running' AND limit_key IS NOT NULL;
CREATE INDEX jobs_ready_key ON jobs (queue, limit_key, priority DESC, run_at, id)
    WHERE state = 'queued' AND limit_key IS NOT NULL;
CREATE TABLE limit_keys (
    key            TEXT             PRIMARY KEY,
    starts         TEXT             NULL,
    blocked_until  BIGINT           NULL,
    blocked_for_ms BIGINT           NULL,
    blocked_status BIGINT           NULL,
    closed_until   BIGINT           NOT NULL DEFAULT 0,
    updated_at     BIGINT           NOT NULL
);
CREATE INDEX limit_keys_closed ON limit_keys (closed_until);
";

/// Version 6: `jobs_ready_key` gains the pool after the key, as SQLite's
/// version 7: a fair claim for one pool seeks its jobs of a key instead of
/// filtering every queued job of the key.
const V6_READY_KEY_BY_POOL: &str = "
DROP INDEX jobs_ready_key;
CREATE INDEX jobs_ready_key ON jobs
    (queue, limit_key, (kind IN ('checksum', 'compress', 'exec')), priority DESC, run_at, id)
    WHERE state = 'queued' AND limit_key IS NOT NULL;
";

/// Version 7: the CPU jobs' own partial index. With a large analyzed table
/// of IO jobs, the planner estimated the CPU pool's range of `jobs_ready`
/// at half the table and scanned every row sequentially for each CPU
/// claim and each wake-up time (210 ms a claim with 1 000 000 queued);
/// on this index, which holds only queued CPU jobs, it is one seek.
const V7_READY_CPU: &str = "
CREATE INDEX jobs_ready_cpu ON jobs (queue, priority DESC, run_at, id)
    WHERE state = 'queued' AND (kind IN ('checksum', 'compress', 'exec'));
";

/// Version 8: `jobs_ready_key` is built on demand, as SQLite's version 8
/// has it: by the first daemon with a fair queue.
const V8_KEY_INDEX_ON_DEMAND: &str = "DROP INDEX IF EXISTS jobs_ready_key;";

/// Version 9: the keyed claim's two reads of running jobs per key, as
/// functions that plan without bitmap scans. Every claim and completion
/// leaves a dead entry in `jobs_running_key` until vacuum; a bitmap scan
/// visits the heap for each of them every time (measured: 0.47 ms a
/// claim after 50 000 jobs), where an index scan marks them dead once and
/// then skips them (0.02 ms). Only a function can carry that setting
/// without a round trip of its own. `jobd_lock_keys` also takes the keys'
/// lock first: its query then runs on a snapshot taken after the lock, so
/// it sees what the last holder committed (a function marked VOLATILE
/// takes a new snapshot for each statement).
const V9_KEY_FUNCTIONS: &str = "
CREATE FUNCTION jobd_key_hints(at BIGINT, count_running BOOLEAN)
    RETURNS TABLE (out_key TEXT, out_running BIGINT)
    LANGUAGE plpgsql STABLE SET enable_bitmapscan = off AS $$
BEGIN
    RETURN QUERY
        SELECT l.key, NULL::BIGINT FROM limit_keys l WHERE l.closed_until > at
        UNION ALL
        SELECT j.limit_key, count(*) FROM jobs j
        WHERE count_running AND j.state = 'running' AND j.limit_key IS NOT NULL
        GROUP BY j.limit_key;
END $$;
CREATE FUNCTION jobd_lock_keys(keys TEXT[])
    RETURNS TABLE (out_key TEXT, out_starts TEXT, out_blocked_until BIGINT, out_running BIGINT)
    LANGUAGE plpgsql VOLATILE SET enable_bitmapscan = off AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('jobd.limit_keys.' || current_schema()));
    RETURN QUERY
        SELECT k.key, l.starts, l.blocked_until, COALESCE(r.n, 0)
        FROM unnest(keys) AS k(key)
        LEFT JOIN limit_keys l ON l.key = k.key
        LEFT JOIN (SELECT j.limit_key, count(*) AS n FROM jobs j
                   WHERE j.state = 'running' AND j.limit_key = ANY(keys)
                   GROUP BY j.limit_key) r ON r.limit_key = k.key;
END $$;
";

/// Version 10: dependencies, as SQLite's version 9 has them (see there):
/// `jobs.parents` (`BIGINT[]`), `run_always`, `waiting_for`,
/// `has_children`, the state `waiting`, `job_deps`, and the triggers. Here
/// the insert also locks its parents' rows, in id order, before it reads
/// their states, and a parent's end locks its children in id order before
/// it counts them down: a parent that ends while a child is inserted, or
/// two parents of one child that end on two daemons at once, take turns
/// instead of missing each other (READ COMMITTED: each statement of a
/// trigger sees what the other committed). Children let go are announced
/// with NOTIFY, as inserts are.
const V10_DEPENDENCIES: &str = "
ALTER TABLE jobs DROP CONSTRAINT state_known;
ALTER TABLE jobs ADD CONSTRAINT state_known
    CHECK (state IN ('queued', 'running', 'succeeded', 'dead', 'cancelled', 'waiting'));
ALTER TABLE jobs ADD COLUMN parents BIGINT[] NULL,
    ADD COLUMN run_always BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN waiting_for BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN has_children BOOLEAN NOT NULL DEFAULT false;
DROP INDEX jobs_unique_key;
CREATE UNIQUE INDEX jobs_unique_key ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('queued', 'running', 'waiting');
CREATE TABLE job_deps (
    parent BIGINT  NOT NULL,
    child  BIGINT  NOT NULL,
    met    BOOLEAN NOT NULL DEFAULT false,
    cut    BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (parent, child)
);
CREATE INDEX job_deps_child ON job_deps (child);

CREATE FUNCTION jobd_flow_insert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    missing BIGINT;
    ended RECORD;
    unmet BIGINT;
BEGIN
    PERFORM 1 FROM jobs WHERE id = ANY(NEW.parents) ORDER BY id FOR NO KEY UPDATE;
    SELECT p INTO missing FROM unnest(NEW.parents) AS p
        WHERE p IS NULL OR NOT EXISTS (SELECT 1 FROM jobs WHERE id = p) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'parents_exist: job % does not exist', coalesce(missing::text, 'NULL')
            USING ERRCODE = 'foreign_key_violation', CONSTRAINT = 'parents_exist';
    END IF;
    UPDATE jobs SET has_children = true WHERE id = ANY(NEW.parents) AND NOT has_children;
    INSERT INTO job_deps (parent, child, met, cut)
        SELECT j.id, NEW.id,
               j.state = 'succeeded' OR (NEW.run_always AND j.state IN ('dead', 'cancelled')),
               NOT NEW.run_always AND j.state IN ('dead', 'cancelled')
        FROM jobs j WHERE j.id = ANY(NEW.parents)
        ON CONFLICT DO NOTHING;
    SELECT count(*) INTO unmet FROM job_deps WHERE child = NEW.id AND NOT met;
    SELECT j.id, j.state INTO ended FROM job_deps d JOIN jobs j ON j.id = d.parent
        WHERE d.child = NEW.id AND d.cut ORDER BY j.id LIMIT 1;
    IF FOUND THEN
        UPDATE jobs SET state = 'cancelled', waiting_for = unmet,
            finished_at = (floor(extract(epoch from clock_timestamp()) * 1000))::bigint,
            last_error = 'cancelled: job ' || ended.id || ', which this job waits for, is ' || ended.state
            WHERE id = NEW.id AND state = 'queued';
    ELSIF unmet > 0 THEN
        UPDATE jobs SET state = 'waiting', waiting_for = unmet WHERE id = NEW.id AND state = 'queued';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_flow_insert AFTER INSERT ON jobs FOR EACH ROW
    WHEN (NEW.parents IS NOT NULL AND cardinality(NEW.parents) > 0)
    EXECUTE FUNCTION jobd_flow_insert();

CREATE FUNCTION jobd_parents_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'parents_fixed_at_insert: jobs.parents is set at insert and never changed'
        USING ERRCODE = 'check_violation', CONSTRAINT = 'parents_fixed_at_insert';
END $$;
CREATE TRIGGER jobs_parents_fixed BEFORE UPDATE OF parents ON jobs FOR EACH ROW
    WHEN (NEW.parents IS DISTINCT FROM OLD.parents)
    EXECUTE FUNCTION jobd_parents_fixed();

CREATE FUNCTION jobd_flow_succeeded() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    queues TEXT[];
BEGIN
    PERFORM 1 FROM jobs WHERE id IN (SELECT child FROM job_deps WHERE parent = NEW.id AND NOT met)
        ORDER BY id FOR NO KEY UPDATE;
    WITH edges AS (
        UPDATE job_deps SET met = true WHERE parent = NEW.id AND NOT met RETURNING child),
    released AS (
        UPDATE jobs SET waiting_for = waiting_for - 1,
            state = CASE WHEN state = 'waiting' AND waiting_for = 1 THEN 'queued' ELSE state END,
            run_at = CASE WHEN state = 'waiting' AND waiting_for = 1
                          THEN GREATEST(run_at, coalesce(NEW.finished_at, run_at)) ELSE run_at END
        WHERE id IN (SELECT child FROM edges)
        RETURNING queue, state)
    SELECT array_agg(DISTINCT queue) FILTER (WHERE state = 'queued') INTO queues FROM released;
    PERFORM pg_notify('jobd_jobs_' || TG_TABLE_SCHEMA, q) FROM unnest(queues) AS q;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_flow_succeeded AFTER UPDATE OF state ON jobs FOR EACH ROW
    WHEN (NEW.has_children AND NEW.state = 'succeeded' AND OLD.state <> 'succeeded')
    EXECUTE FUNCTION jobd_flow_succeeded();

CREATE FUNCTION jobd_flow_ended() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    doomed BIGINT[];
    queues TEXT[];
BEGIN
    WITH RECURSIVE d(id) AS (
        SELECT e.child FROM job_deps e JOIN jobs c ON c.id = e.child
        WHERE e.parent = NEW.id AND NOT e.met AND NOT c.run_always AND c.state = 'waiting'
        UNION
        SELECT e.child FROM d JOIN job_deps e ON e.parent = d.id JOIN jobs c ON c.id = e.child
        WHERE NOT e.met AND NOT c.run_always AND c.state = 'waiting')
    SELECT coalesce(array_agg(id), '{}') INTO doomed FROM d;
    PERFORM 1 FROM jobs WHERE id IN (SELECT child FROM job_deps
            WHERE NOT met AND (parent = NEW.id OR parent = ANY(doomed)))
        ORDER BY id FOR NO KEY UPDATE;
    UPDATE job_deps e SET cut = true FROM jobs c
        WHERE c.id = e.child AND NOT e.met AND NOT e.cut AND NOT c.run_always
          AND (e.parent = NEW.id OR e.parent = ANY(doomed));
    WITH edges AS (
        UPDATE job_deps e SET met = true FROM jobs c
        WHERE c.id = e.child AND NOT e.met AND c.run_always
          AND (e.parent = NEW.id OR e.parent = ANY(doomed))
        RETURNING e.child),
    counts AS (SELECT child, count(*) AS n FROM edges GROUP BY child),
    released AS (
        UPDATE jobs j SET waiting_for = j.waiting_for - counts.n,
            state = CASE WHEN j.state = 'waiting' AND j.waiting_for = counts.n
                         THEN 'queued' ELSE j.state END,
            run_at = CASE WHEN j.state = 'waiting' AND j.waiting_for = counts.n
                          THEN GREATEST(j.run_at, coalesce(NEW.finished_at, j.run_at)) ELSE j.run_at END
        FROM counts WHERE j.id = counts.child
        RETURNING j.queue, j.state)
    SELECT array_agg(DISTINCT queue) FILTER (WHERE state = 'queued') INTO queues FROM released;
    UPDATE jobs SET state = 'cancelled',
        finished_at = coalesce(NEW.finished_at, (floor(extract(epoch from clock_timestamp()) * 1000))::bigint),
        last_error = 'cancelled: job ' || NEW.id || ', which this job waits for, is ' || NEW.state
        WHERE id = ANY(doomed) AND state = 'waiting';
    PERFORM pg_notify('jobd_jobs_' || TG_TABLE_SCHEMA, q) FROM unnest(queues) AS q;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_flow_ended AFTER UPDATE OF state ON jobs FOR EACH ROW
    WHEN (NEW.has_children AND NEW.state IN ('dead', 'cancelled')
          AND OLD.state NOT IN ('dead', 'cancelled'))
    EXECUTE FUNCTION jobd_flow_ended();

CREATE FUNCTION jobd_flow_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM job_deps WHERE parent = OLD.id OR child = OLD.id;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_flow_deleted AFTER DELETE ON jobs FOR EACH ROW
    WHEN (OLD.has_children OR OLD.parents IS NOT NULL)
    EXECUTE FUNCTION jobd_flow_deleted();
";

/// Version 11: batches, as SQLite's version 10 has them (see there), but
/// `total` is counted when the batch is sealed: counted insert by insert,
/// a batch of 100 000 inserted in one transaction rewrote its row 100 000
/// times and took 72 s. A member's insert locks its batch's row (`FOR
/// SHARE`) after reading it unsealed, and sealing updates it: one waits
/// for the other, so no member slips into a sealed batch or its count. The
/// counters are updated by the statements that end a member, each on the
/// batch's row, so two daemons ending the last two members take turns and
/// exactly one of them sees the batch finished and lets the callback go.
const V11_BATCHES: &str = "
ALTER TABLE jobs ADD COLUMN batch TEXT NULL CONSTRAINT batch_not_empty CHECK (batch <> ''),
    ADD COLUMN callback_for TEXT NULL CONSTRAINT callback_for_not_empty CHECK (callback_for <> '');
CREATE INDEX jobs_batch ON jobs (batch) WHERE batch IS NOT NULL;
CREATE TABLE batches (
    name        TEXT    PRIMARY KEY,
    total       BIGINT  NOT NULL DEFAULT 0,
    succeeded   BIGINT  NOT NULL DEFAULT 0,
    dead        BIGINT  NOT NULL DEFAULT 0,
    cancelled   BIGINT  NOT NULL DEFAULT 0,
    sealed      BOOLEAN NOT NULL DEFAULT false,
    callback_id BIGINT  NULL,
    created_at  BIGINT  NOT NULL DEFAULT (floor(extract(epoch from clock_timestamp()) * 1000))::bigint,
    finished_at BIGINT  NULL
);

CREATE FUNCTION jobd_batch_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.callback_for IS NOT NULL THEN
        IF NEW.parents IS NOT NULL AND cardinality(NEW.parents) > 0 THEN
            RAISE EXCEPTION 'callback_has_no_parents: a batch callback waits for its batch only'
                USING ERRCODE = 'check_violation', CONSTRAINT = 'callback_has_no_parents';
        END IF;
        IF NEW.batch IS NOT NULL AND NEW.batch = NEW.callback_for THEN
            RAISE EXCEPTION 'callback_outside_its_batch: a callback cannot belong to its own batch'
                USING ERRCODE = 'check_violation', CONSTRAINT = 'callback_outside_its_batch';
        END IF;
    END IF;
    IF NEW.batch IS NOT NULL THEN
        INSERT INTO batches (name) VALUES (NEW.batch) ON CONFLICT DO NOTHING;
        PERFORM 1 FROM batches WHERE name = NEW.batch AND NOT sealed FOR SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'batch_open: batch % is sealed (its callback is in)', NEW.batch
                USING ERRCODE = 'check_violation', CONSTRAINT = 'batch_open';
        END IF;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER jobs_guard_batch BEFORE INSERT ON jobs FOR EACH ROW
    WHEN (NEW.batch IS NOT NULL OR NEW.callback_for IS NOT NULL)
    EXECUTE FUNCTION jobd_batch_guard();

CREATE FUNCTION jobd_batch_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'batch_fixed_at_insert: jobs.batch and jobs.callback_for are set at insert'
        USING ERRCODE = 'check_violation', CONSTRAINT = 'batch_fixed_at_insert';
END $$;
CREATE TRIGGER jobs_batch_fixed BEFORE UPDATE OF batch, callback_for ON jobs FOR EACH ROW
    WHEN (NEW.batch IS DISTINCT FROM OLD.batch OR NEW.callback_for IS DISTINCT FROM OLD.callback_for)
    EXECUTE FUNCTION jobd_batch_fixed();

-- A member's state crossed into or out of the final states.
CREATE FUNCTION jobd_batch_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE batches SET
        succeeded = succeeded + (NEW.state = 'succeeded')::int - (OLD.state = 'succeeded')::int,
        dead = dead + (NEW.state = 'dead')::int - (OLD.state = 'dead')::int,
        cancelled = cancelled + (NEW.state = 'cancelled')::int - (OLD.state = 'cancelled')::int
        WHERE name = NEW.batch;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_batch_count AFTER UPDATE OF state ON jobs FOR EACH ROW
    WHEN (NEW.batch IS NOT NULL AND NEW.state IS DISTINCT FROM OLD.state
          AND (NEW.state IN ('succeeded', 'dead', 'cancelled')
               OR OLD.state IN ('succeeded', 'dead', 'cancelled')))
    EXECUTE FUNCTION jobd_batch_count();

CREATE FUNCTION jobd_batch_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE batches SET
        succeeded = succeeded - (OLD.state = 'succeeded')::int,
        dead = dead - (OLD.state = 'dead')::int,
        cancelled = cancelled - (OLD.state = 'cancelled')::int
        WHERE name = OLD.batch AND NOT sealed;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_batch_deleted AFTER DELETE ON jobs FOR EACH ROW
    WHEN (OLD.batch IS NOT NULL)
    EXECUTE FUNCTION jobd_batch_deleted();

CREATE FUNCTION jobd_batch_callback() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE jobs SET state = 'waiting', waiting_for = waiting_for + 1
        WHERE id = NEW.id AND state = 'queued';
    INSERT INTO batches (name) VALUES (NEW.callback_for) ON CONFLICT DO NOTHING;
    UPDATE batches SET sealed = true, callback_id = NEW.id
        WHERE name = NEW.callback_for AND NOT sealed;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'batch_one_callback: batch % already has its callback', NEW.callback_for
            USING ERRCODE = 'check_violation', CONSTRAINT = 'batch_one_callback';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_batch_callback AFTER INSERT ON jobs FOR EACH ROW
    WHEN (NEW.callback_for IS NOT NULL)
    EXECUTE FUNCTION jobd_batch_callback();

-- Counts the members when the batch is sealed, by whatever statement:
-- the row is locked by then, so every member's insert has committed or
-- waits (and is refused), and this statement's snapshot sees them.
CREATE FUNCTION jobd_batch_sealed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    SELECT count(*) INTO NEW.total FROM jobs WHERE batch = NEW.name;
    RETURN NEW;
END $$;
CREATE TRIGGER batches_sealed BEFORE UPDATE ON batches FOR EACH ROW
    WHEN (NEW.sealed AND NOT OLD.sealed)
    EXECUTE FUNCTION jobd_batch_sealed();

-- Finishes a sealed batch whose members have all ended, once, and lets
-- its callback go (with the pickup NOTIFY).
CREATE FUNCTION jobd_batch_finished() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    released TEXT;
BEGIN
    UPDATE batches SET finished_at = (floor(extract(epoch from clock_timestamp()) * 1000))::bigint
        WHERE name = NEW.name AND finished_at IS NULL;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    UPDATE jobs SET waiting_for = waiting_for - 1,
        state = CASE WHEN state = 'waiting' AND waiting_for = 1 THEN 'queued' ELSE state END,
        run_at = CASE WHEN state = 'waiting' AND waiting_for = 1
            THEN GREATEST(run_at, (floor(extract(epoch from clock_timestamp()) * 1000))::bigint)
            ELSE run_at END
        WHERE id = NEW.callback_id AND callback_for = NEW.name
        RETURNING CASE WHEN state = 'queued' THEN queue END INTO released;
    IF released IS NOT NULL THEN
        PERFORM pg_notify('jobd_jobs_' || TG_TABLE_SCHEMA, released);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER batches_finished AFTER UPDATE ON batches FOR EACH ROW
    WHEN (NEW.sealed AND NEW.finished_at IS NULL
          AND NEW.succeeded + NEW.dead + NEW.cancelled >= NEW.total)
    EXECUTE FUNCTION jobd_batch_finished();
";

/// Version 12: sequences, as SQLite's version 11 has them (see there). A
/// member's insert takes an advisory lock per sequence, so two clients
/// adding to one sequence take turns, then locks the member it will wait
/// for and reads its state again under the lock: a member that ends
/// meanwhile is seen ended, and the insert looks further back. Members
/// of one sequence inserted by concurrent transactions run in the order
/// their inserts took the lock. The end trigger is made again: parent
/// edges cancel, sequence edges halt (dead) or are handed back (cancelled);
/// here each cancelled member runs it for itself (triggers nest).
const V12_SEQUENCES: &str = "
ALTER TABLE jobs ADD COLUMN sequence TEXT NULL CONSTRAINT sequence_not_empty CHECK (sequence <> '');
ALTER TABLE job_deps ADD COLUMN seq BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX jobs_sequence_live ON jobs (sequence, id)
    WHERE sequence IS NOT NULL AND state IN ('waiting', 'queued', 'running', 'dead');

CREATE FUNCTION jobd_sequence_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'sequence_fixed_at_insert: jobs.sequence is set at insert and never changed'
        USING ERRCODE = 'check_violation', CONSTRAINT = 'sequence_fixed_at_insert';
END $$;
CREATE TRIGGER jobs_sequence_fixed BEFORE UPDATE OF sequence ON jobs FOR EACH ROW
    WHEN (NEW.sequence IS DISTINCT FROM OLD.sequence)
    EXECUTE FUNCTION jobd_sequence_fixed();

-- The latest member of `seq` before `child` still live (a dead one halts
-- the members after it unless they run whatever its outcome).
CREATE FUNCTION jobd_sequence_before(seq TEXT, child BIGINT) RETURNS BIGINT
    LANGUAGE sql STABLE AS $$
    SELECT id FROM jobs
    WHERE sequence = seq AND id < child AND state IN ('waiting', 'queued', 'running', 'dead')
    ORDER BY id DESC LIMIT 1
$$;

CREATE FUNCTION jobd_sequence_insert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    before BIGINT;
    before_state TEXT;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('jobd.sequence.' || current_schema() || '.' || NEW.sequence));
    LOOP
        before := jobd_sequence_before(NEW.sequence, NEW.id);
        EXIT WHEN before IS NULL;
        SELECT state INTO before_state FROM jobs WHERE id = before FOR NO KEY UPDATE;
        IF before_state IN ('waiting', 'queued', 'running') THEN
            EXIT;
        ELSIF before_state = 'dead' THEN
            IF NEW.run_always THEN
                before := NULL;
            END IF;
            EXIT;
        END IF;
        -- It ended while this insert waited for its lock: look again.
    END LOOP;
    IF before IS NOT NULL THEN
        INSERT INTO job_deps (parent, child, seq) VALUES (before, NEW.id, true)
            ON CONFLICT DO NOTHING;
        UPDATE jobs SET has_children = true WHERE id = before AND NOT has_children;
        UPDATE jobs SET waiting_for = waiting_for + 1,
            state = CASE WHEN state = 'queued' THEN 'waiting' ELSE state END
            WHERE id = NEW.id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_sequence_insert AFTER INSERT ON jobs FOR EACH ROW
    WHEN (NEW.sequence IS NOT NULL)
    EXECUTE FUNCTION jobd_sequence_insert();

CREATE OR REPLACE FUNCTION jobd_flow_ended() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    doomed BIGINT[];
    queues TEXT[];
    edge RECORD;
    before BIGINT;
    moved BIGINT;
BEGIN
    WITH RECURSIVE d(id) AS (
        SELECT e.child FROM job_deps e JOIN jobs c ON c.id = e.child
        WHERE e.parent = NEW.id AND NOT e.met AND NOT e.seq AND NOT c.run_always
          AND c.state = 'waiting'
        UNION
        SELECT e.child FROM d JOIN job_deps e ON e.parent = d.id JOIN jobs c ON c.id = e.child
        WHERE NOT e.met AND NOT e.seq AND NOT c.run_always AND c.state = 'waiting')
    SELECT coalesce(array_agg(id), '{}') INTO doomed FROM d;
    PERFORM 1 FROM jobs WHERE id IN (SELECT child FROM job_deps
            WHERE NOT met AND (parent = NEW.id OR parent = ANY(doomed)))
        ORDER BY id FOR NO KEY UPDATE;
    UPDATE job_deps e SET cut = true FROM jobs c
        WHERE c.id = e.child AND NOT e.met AND NOT e.cut AND NOT e.seq AND NOT c.run_always
          AND (e.parent = NEW.id OR e.parent = ANY(doomed));
    -- A cancelled member hands its next member to the latest earlier live one.
    IF NEW.state = 'cancelled' THEN
        FOR edge IN SELECT e.child, s.sequence, s.run_always FROM job_deps e
                JOIN jobs s ON s.id = e.child
                WHERE e.parent = NEW.id AND e.seq AND NOT e.met LOOP
            before := jobd_sequence_before(edge.sequence, edge.child);
            IF before IS NOT NULL AND NOT (edge.run_always
                    AND (SELECT state FROM jobs WHERE id = before) = 'dead') THEN
                INSERT INTO job_deps (parent, child, seq) VALUES (before, edge.child, true)
                    ON CONFLICT DO NOTHING;
                GET DIAGNOSTICS moved = ROW_COUNT;
                IF moved = 1 THEN
                    DELETE FROM job_deps WHERE parent = NEW.id AND child = edge.child;
                    UPDATE jobs SET has_children = true WHERE id = before AND NOT has_children;
                END IF;
            END IF;
        END LOOP;
    END IF;
    WITH edges AS (
        UPDATE job_deps e SET met = true FROM jobs c
        WHERE c.id = e.child AND NOT e.met
          AND (e.parent = NEW.id OR e.parent = ANY(doomed))
          AND (c.run_always OR (e.seq AND e.parent = NEW.id AND NEW.state = 'cancelled'))
        RETURNING e.child),
    counts AS (SELECT child, count(*) AS n FROM edges GROUP BY child),
    released AS (
        UPDATE jobs j SET waiting_for = j.waiting_for - counts.n,
            state = CASE WHEN j.state = 'waiting' AND j.waiting_for = counts.n
                         THEN 'queued' ELSE j.state END,
            run_at = CASE WHEN j.state = 'waiting' AND j.waiting_for = counts.n
                          THEN GREATEST(j.run_at, coalesce(NEW.finished_at, j.run_at)) ELSE j.run_at END
        FROM counts WHERE j.id = counts.child
        RETURNING j.queue, j.state)
    SELECT array_agg(DISTINCT queue) FILTER (WHERE state = 'queued') INTO queues FROM released;
    UPDATE jobs SET state = 'cancelled',
        finished_at = coalesce(NEW.finished_at, (floor(extract(epoch from clock_timestamp()) * 1000))::bigint),
        last_error = 'cancelled: job ' || NEW.id || ', which this job waits for, is ' || NEW.state
        WHERE id = ANY(doomed) AND state = 'waiting';
    PERFORM pg_notify('jobd_jobs_' || TG_TABLE_SCHEMA, q) FROM unnest(queues) AS q;
    RETURN NULL;
END $$;
";

/// Version 13: `jobs.progress`, as SQLite's version 12.
const V13_PROGRESS: &str = "ALTER TABLE jobs ADD COLUMN progress JSONB NULL;";

/// Version 14: snoozes, as SQLite's version 13: `jobs.snoozes` and the
/// outcome `snoozed`.
const V14_SNOOZES: &str = "
ALTER TABLE jobs ADD COLUMN snoozes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE job_runs DROP CONSTRAINT outcome_known;
ALTER TABLE job_runs ADD CONSTRAINT outcome_known CHECK (outcome IN
    ('succeeded', 'retry', 'dead', 'timeout', 'rescued', 'interrupted', 'cancelled', 'snoozed'));
";

/// Version 15: the flow rules made again, as SQLite's version 14 (see
/// there), with what PostgreSQL's concurrency needs besides:
/// - a sequence's order is the order in which inserts took the
///   sequence's row in `sequences` (`jobs.seq_pos`, set before the
///   insert), not id order: ids are drawn before that lock, so two
///   concurrent inserts each saw no earlier member and both ran at once;
/// - every wait is recounted from the edges (`jobd_settle`), so an edge
///   that was not added (a parent that is also the predecessor) cannot
///   leave a count that never reaches zero;
/// - a member's insert no longer locks its batch's row (a client's open
///   transaction stalled every completion of that batch, and could
///   deadlock with one): inserts take a shared advisory lock on the
///   batch, the seal the exclusive one, so the seal's count still sees
///   every member; the seal counts the members' states too, so one
///   inserted already ended counts;
/// - a member waits for another only once that member is locked and
///   seen live (`jobd_sequence_before`), so one that ends meanwhile is not
///   waited for forever;
/// - the daemons' completions lock the rows of their jobs' batches in
///   name order first (in the completion statement), so two daemons
///   ending jobs of two batches no longer deadlock on them.
const V15_FLOW_RULES: &str = concat!(
    "
ALTER TABLE jobs ADD COLUMN seq_pos BIGINT NULL;
UPDATE jobs SET seq_pos = id WHERE sequence IS NOT NULL;
CREATE TABLE sequences (
    name     TEXT   PRIMARY KEY,
    last_pos BIGINT NOT NULL
);
INSERT INTO sequences (name, last_pos)
    SELECT sequence, max(id) FROM jobs WHERE sequence IS NOT NULL GROUP BY sequence;
DROP INDEX jobs_sequence_live;
CREATE INDEX jobs_sequence_live ON jobs (sequence, seq_pos)
    WHERE sequence IS NOT NULL AND state IN ('waiting', 'queued', 'running', 'dead');

-- A member's place in its sequence, drawn under the sequence's row lock,
-- held until the insert commits: concurrent inserters take turns, and
-- every member placed before this one is committed when it looks back.
CREATE FUNCTION jobd_sequence_place() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sequences (name, last_pos) VALUES (NEW.sequence, 1)
        ON CONFLICT (name) DO UPDATE SET last_pos = sequences.last_pos + 1
        RETURNING last_pos INTO NEW.seq_pos;
    RETURN NEW;
END $$;
CREATE TRIGGER jobs_sequence_place BEFORE INSERT ON jobs FOR EACH ROW
    WHEN (NEW.sequence IS NOT NULL)
    EXECUTE FUNCTION jobd_sequence_place();

-- The member of `seq` a job waits for: the latest live one placed before
-- `pos` (any, when `pos` is NULL), not one of `besides`; a dead one halts
-- the job unless it runs whatever its predecessor's outcome. The member
-- is locked and read again: one that ended meanwhile is passed over.
DROP FUNCTION jobd_sequence_before(TEXT, BIGINT);
CREATE FUNCTION jobd_sequence_before(seq TEXT, pos BIGINT, always BOOLEAN, besides BIGINT[])
    RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    candidate BIGINT;
    candidate_state TEXT;
BEGIN
    LOOP
        SELECT id INTO candidate FROM jobs
            WHERE sequence = seq AND (pos IS NULL OR seq_pos < pos)
              AND state IN ('waiting', 'queued', 'running', 'dead')
              AND NOT (always AND state = 'dead') AND id <> ALL(besides)
            ORDER BY seq_pos DESC LIMIT 1;
        IF candidate IS NULL THEN
            RETURN NULL;
        END IF;
        SELECT state INTO candidate_state FROM jobs WHERE id = candidate FOR NO KEY UPDATE;
        IF candidate_state IN ('waiting', 'queued', 'running')
                OR (candidate_state = 'dead' AND NOT always) THEN
            RETURN candidate;
        END IF;
    END LOOP;
END $$;

-- Recounts what the waiting jobs among `ids` wait for (edges not met,
-- and a callback's unfinished batch) and queues those that wait for
-- nothing more, with the pickup NOTIFY.
CREATE FUNCTION jobd_settle(ids BIGINT[], schema TEXT) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    queues TEXT[];
BEGIN
    IF ids IS NULL OR cardinality(ids) = 0 THEN
        RETURN;
    END IF;
    WITH w AS (
        SELECT j.id,
            (SELECT count(*) FROM job_deps d WHERE d.child = j.id AND NOT d.met)
            + (SELECT count(*) FROM batches b WHERE b.name = j.callback_for AND b.finished_at IS NULL) AS n
        FROM jobs j WHERE j.id = ANY(ids) AND j.state = 'waiting'),
    released AS (
        UPDATE jobs SET waiting_for = w.n,
            state = CASE WHEN w.n = 0 THEN 'queued' ELSE jobs.state END,
            run_at = CASE WHEN w.n = 0 THEN GREATEST(jobs.run_at, ",
    now_ms!(),
    ") ELSE jobs.run_at END
        FROM w WHERE jobs.id = w.id AND jobs.state = 'waiting'
        RETURNING jobs.queue, jobs.state)
    SELECT array_agg(DISTINCT queue) FILTER (WHERE state = 'queued') INTO queues FROM released;
    PERFORM pg_notify('jobd_jobs_' || schema, q) FROM unnest(queues) AS q;
END $$;

DROP TRIGGER jobs_batch_callback ON jobs;
DROP FUNCTION jobd_batch_callback();
DROP TRIGGER jobs_sequence_insert ON jobs;
DROP FUNCTION jobd_sequence_insert();
DROP TRIGGER jobs_flow_insert ON jobs;

-- Everything a job's insert means for its flow, in this order: parent
-- edges, the sequence edge (none to a member that is already a parent,
-- none for a job cancelled at insert), the wait, and the seal of the
-- batch it is the callback of.
CREATE OR REPLACE FUNCTION jobd_flow_insert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    missing BIGINT;
    ended RECORD;
    before BIGINT;
    n BIGINT;
BEGIN
    IF NEW.parents IS NOT NULL AND cardinality(NEW.parents) > 0 THEN
        PERFORM 1 FROM jobs WHERE id = ANY(NEW.parents) ORDER BY id FOR NO KEY UPDATE;
        SELECT p INTO missing FROM unnest(NEW.parents) AS p
            WHERE p IS NULL OR NOT EXISTS (SELECT 1 FROM jobs WHERE id = p) LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'parents_exist: job % does not exist', coalesce(missing::text, 'NULL')
                USING ERRCODE = 'foreign_key_violation', CONSTRAINT = 'parents_exist';
        END IF;
        UPDATE jobs SET has_children = true WHERE id = ANY(NEW.parents) AND NOT has_children;
        INSERT INTO job_deps (parent, child, met, cut)
            SELECT j.id, NEW.id,
                   j.state = 'succeeded' OR (NEW.run_always AND j.state IN ('dead', 'cancelled')),
                   NOT NEW.run_always AND j.state IN ('dead', 'cancelled')
            FROM jobs j WHERE j.id = ANY(NEW.parents)
            ON CONFLICT DO NOTHING;
    END IF;
    SELECT j.id, j.state INTO ended FROM job_deps d JOIN jobs j ON j.id = d.parent
        WHERE d.child = NEW.id AND d.cut ORDER BY j.id LIMIT 1;
    IF FOUND THEN
        UPDATE jobs SET state = 'cancelled',
            finished_at = ",
    now_ms!(),
    ",
            last_error = 'cancelled: job ' || ended.id || ', which this job waits for, is ' || ended.state
            WHERE id = NEW.id;
        RETURN NULL;
    END IF;
    IF NEW.sequence IS NOT NULL THEN
        before := jobd_sequence_before(NEW.sequence, NEW.seq_pos, NEW.run_always, ARRAY[NEW.id]);
        IF before IS NOT NULL THEN
            INSERT INTO job_deps (parent, child, seq) VALUES (before, NEW.id, true)
                ON CONFLICT DO NOTHING;
            UPDATE jobs SET has_children = true WHERE id = before AND NOT has_children;
        END IF;
    END IF;
    IF NEW.callback_for IS NOT NULL THEN
        -- The seal's advisory lock before the batch's row, as every sealer
        -- takes them.
        PERFORM pg_advisory_xact_lock(jobd_batch_lock(NEW.callback_for));
        INSERT INTO batches (name) VALUES (NEW.callback_for) ON CONFLICT DO NOTHING;
    END IF;
    n := (SELECT count(*) FROM job_deps WHERE child = NEW.id AND NOT met)
        + (SELECT count(*) FROM batches WHERE name = NEW.callback_for AND finished_at IS NULL);
    IF n > 0 THEN
        UPDATE jobs SET state = 'waiting', waiting_for = n WHERE id = NEW.id;
    END IF;
    IF NEW.callback_for IS NOT NULL THEN
        UPDATE batches SET sealed = true, callback_id = NEW.id
            WHERE name = NEW.callback_for AND NOT sealed;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'batch_one_callback: batch % already has its callback', NEW.callback_for
                USING ERRCODE = 'check_violation', CONSTRAINT = 'batch_one_callback';
        END IF;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_flow_insert AFTER INSERT ON jobs FOR EACH ROW
    WHEN (NEW.state = 'queued' AND ((NEW.parents IS NOT NULL AND cardinality(NEW.parents) > 0)
          OR NEW.sequence IS NOT NULL OR NEW.callback_for IS NOT NULL))
    EXECUTE FUNCTION jobd_flow_insert();

-- A success meets its edges and recounts its children's waits in one
-- statement (a chain pays it once a link): the count sees the edges as
-- they were before the statement, so those from this job are left out.
CREATE OR REPLACE FUNCTION jobd_flow_succeeded() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    queues TEXT[];
BEGIN
    PERFORM 1 FROM jobs WHERE id IN (SELECT child FROM job_deps WHERE parent = NEW.id AND NOT met)
        ORDER BY id FOR NO KEY UPDATE;
    WITH e AS (UPDATE job_deps SET met = true WHERE parent = NEW.id AND NOT met RETURNING child),
    w AS (
        SELECT j.id,
            (SELECT count(*) FROM job_deps d WHERE d.child = j.id AND NOT d.met AND d.parent <> NEW.id)
            + (SELECT count(*) FROM batches b WHERE b.name = j.callback_for AND b.finished_at IS NULL) AS n
        FROM jobs j WHERE j.id IN (SELECT child FROM e) AND j.state = 'waiting'),
    released AS (
        UPDATE jobs SET waiting_for = w.n,
            state = CASE WHEN w.n = 0 THEN 'queued' ELSE jobs.state END,
            run_at = CASE WHEN w.n = 0 THEN GREATEST(jobs.run_at, coalesce(NEW.finished_at, jobs.run_at))
                     ELSE jobs.run_at END
        FROM w WHERE jobs.id = w.id
        RETURNING jobs.queue, jobs.state)
    SELECT array_agg(DISTINCT queue) FILTER (WHERE state = 'queued') INTO queues FROM released;
    PERFORM pg_notify('jobd_jobs_' || TG_TABLE_SCHEMA, q) FROM unnest(queues) AS q;
    RETURN NULL;
END $$;

-- What a job's end (`gone_state`: dead or cancelled) or deletion
-- (`deleted`) does to the jobs that wait for it: its waiting
-- descendants through parent edges are cancelled (except those that run
-- whatever their parents' outcome), which are let go, as are the next
-- members of its sequence when it is cancelled or deleted (they wait for
-- what it waited for, where it was not at the head); a dead member halts
-- the next one. Only edges into a cancelled child are marked `cut`.
CREATE FUNCTION jobd_flow_let_go(gone BIGINT, gone_state TEXT, gone_sequence TEXT,
        finished BIGINT, deleted BOOLEAN, schema TEXT) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    doomed BIGINT[];
    kids BIGINT[];
    edge RECORD;
    before BIGINT;
BEGIN
    WITH RECURSIVE d(id) AS (
        SELECT e.child FROM job_deps e JOIN jobs c ON c.id = e.child
        WHERE e.parent = gone AND NOT e.met AND NOT e.seq AND NOT c.run_always
          AND c.state = 'waiting'
        UNION
        SELECT e.child FROM d JOIN job_deps e ON e.parent = d.id JOIN jobs c ON c.id = e.child
        WHERE NOT e.met AND NOT e.seq AND NOT c.run_always AND c.state = 'waiting')
    SELECT coalesce(array_agg(id), '{}') INTO doomed FROM d;
    PERFORM 1 FROM jobs WHERE id IN (SELECT child FROM job_deps
            WHERE NOT met AND (parent = gone OR parent = ANY(doomed)))
        ORDER BY id FOR NO KEY UPDATE;
    -- A member that is gone is taken out of its sequence's line: the next
    -- one waits for what it waited for (none when it was at the head).
    -- Its row is locked by the statement that ended or deleted it, so the
    -- member it waited for cannot end unseen meanwhile: that member's
    -- success locks the rows of its children first. This comes before the
    -- cancellations below, so that the members its end cancels find, when
    -- they are cancelled in turn, where their line goes on.
    FOR edge IN SELECT e.child, e.seq, s.run_always FROM job_deps e JOIN jobs s ON s.id = e.child
            WHERE e.parent = gone AND NOT e.met AND NOT e.cut
              AND (e.seq OR s.sequence = gone_sequence)
              AND (deleted OR gone_state = 'cancelled' OR s.run_always) LOOP
        -- (A predecessor it also named as a parent counts.)
        SELECT p.parent INTO before FROM job_deps p JOIN jobs q ON q.id = p.parent
            WHERE p.child = gone AND NOT p.met AND (p.seq OR q.sequence = gone_sequence)
              AND q.state IN ('waiting', 'queued', 'running', 'dead')
              AND NOT (q.state = 'dead' AND edge.run_always)
            ORDER BY q.seq_pos DESC LIMIT 1;
        IF FOUND THEN
            -- A new edge, or an old one from an earlier turn waiting again
            -- (left met, it would make the member wait for nothing).
            INSERT INTO job_deps (parent, child, seq) VALUES (before, edge.child, true)
                ON CONFLICT (parent, child) DO UPDATE SET met = false, cut = false,
                    seq = job_deps.seq OR job_deps.met;
            IF edge.seq THEN
                DELETE FROM job_deps WHERE parent = gone AND child = edge.child;
            END IF;
            UPDATE jobs SET has_children = true WHERE id = before AND NOT has_children;
        END IF;
    END LOOP;
    UPDATE job_deps SET cut = true
        WHERE NOT met AND NOT cut AND NOT seq AND (parent = gone OR parent = ANY(doomed))
          AND child = ANY(doomed);
    UPDATE jobs SET state = 'cancelled',
        finished_at = coalesce(finished, ",
    now_ms!(),
    "),
        last_error = 'cancelled: job ' || gone || ', which this job waits for, '
            || CASE WHEN deleted THEN 'was deleted' ELSE 'is ' || gone_state END
        WHERE id = ANY(doomed) AND state = 'waiting';
    WITH e AS (
        UPDATE job_deps e SET met = true FROM jobs c
        WHERE c.id = e.child AND e.parent = gone AND NOT e.met AND NOT e.cut
          AND (deleted OR c.run_always OR (e.seq AND gone_state = 'cancelled'))
        RETURNING e.child)
    SELECT array_agg(child) INTO kids FROM e;
    PERFORM jobd_settle(kids, schema);
    -- Its place in the line is gone.
    DELETE FROM job_deps WHERE parent = gone AND seq AND met;
END $$;

CREATE OR REPLACE FUNCTION jobd_flow_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM jobd_flow_let_go(NEW.id, NEW.state, NEW.sequence, NEW.finished_at, false, TG_TABLE_SCHEMA);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION jobd_flow_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM jobd_flow_let_go(OLD.id, OLD.state, OLD.sequence, NULL, true, TG_TABLE_SCHEMA);
    DELETE FROM job_deps WHERE parent = OLD.id OR child = OLD.id;
    RETURN NULL;
END $$;
DROP TRIGGER jobs_flow_deleted ON jobs;
CREATE TRIGGER jobs_flow_deleted AFTER DELETE ON jobs FOR EACH ROW
    WHEN (OLD.has_children OR OLD.parents IS NOT NULL OR OLD.sequence IS NOT NULL)
    EXECUTE FUNCTION jobd_flow_deleted();

-- A retry (dead or cancelled back to queued or waiting): the wait is
-- recounted, and a sequence member goes behind the latest live member
-- of its sequence that does not wait for it, so two never run at once.
CREATE FUNCTION jobd_flow_requeued() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    later BIGINT[];
    before BIGINT;
    place BIGINT;
    n BIGINT;
BEGIN
    IF NEW.sequence IS NOT NULL THEN
        -- The sequence's row first, as inserts take it.
        INSERT INTO sequences (name, last_pos) VALUES (NEW.sequence, 0)
            ON CONFLICT (name) DO UPDATE SET last_pos = sequences.last_pos
            RETURNING last_pos INTO place;
        -- Its old place in the line is gone (a member cancelled while it
        -- waited still had its edge from the member before it).
        DELETE FROM job_deps WHERE child = NEW.id AND seq;
        -- The live members of the line that wait for it: it heads them.
        WITH RECURSIVE l(id) AS (
            SELECT d.child FROM job_deps d JOIN jobs c ON c.id = d.child
            WHERE d.parent = NEW.id AND NOT d.met AND c.sequence = NEW.sequence
              AND c.state IN ('waiting', 'queued', 'running')
            UNION
            SELECT d.child FROM l JOIN job_deps d ON d.parent = l.id JOIN jobs c ON c.id = d.child
            WHERE NOT d.met AND c.sequence = NEW.sequence
              AND c.state IN ('waiting', 'queued', 'running'))
        SELECT coalesce(array_agg(id), '{}') INTO later FROM l;
        before := jobd_sequence_before(NEW.sequence, NULL, NEW.run_always, later || NEW.id);
        IF before IS NOT NULL THEN
            INSERT INTO job_deps (parent, child, seq) VALUES (before, NEW.id, true)
                ON CONFLICT (parent, child) DO UPDATE SET met = false, cut = false,
                    seq = job_deps.seq OR job_deps.met;
            UPDATE jobs SET has_children = true WHERE id = before AND NOT has_children;
        END IF;
        -- Behind the line's last member, it takes the last place (unless
        -- members still wait for it: then it heads them where it stood).
        IF cardinality(later) = 0 THEN
            UPDATE sequences SET last_pos = last_pos + 1 WHERE name = NEW.sequence
                RETURNING last_pos INTO place;
        ELSE
            place := NULL;
        END IF;
    END IF;
    n := (SELECT count(*) FROM job_deps WHERE child = NEW.id AND NOT met)
        + (SELECT count(*) FROM batches WHERE name = NEW.callback_for AND finished_at IS NULL);
    UPDATE jobs SET waiting_for = n, state = CASE WHEN n > 0 THEN 'waiting' ELSE 'queued' END,
        seq_pos = coalesce(place, seq_pos)
        WHERE id = NEW.id;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_flow_requeued AFTER UPDATE OF state ON jobs FOR EACH ROW
    WHEN (OLD.state IN ('dead', 'cancelled') AND NEW.state IN ('queued', 'waiting')
          AND ((NEW.parents IS NOT NULL AND cardinality(NEW.parents) > 0)
               OR NEW.sequence IS NOT NULL OR NEW.callback_for IS NOT NULL))
    EXECUTE FUNCTION jobd_flow_requeued();

-- A member's state crossed into or out of the final states; a running
-- job's end written by a daemon's completion is counted there, per batch
-- and statement (it says so in `jobd.batches_counted`).
CREATE OR REPLACE FUNCTION jobd_batch_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state = 'running' AND current_setting('jobd.batches_counted', true) = 'on' THEN
        RETURN NULL;
    END IF;
    UPDATE batches SET
        succeeded = succeeded + (NEW.state = 'succeeded')::int - (OLD.state = 'succeeded')::int,
        dead = dead + (NEW.state = 'dead')::int - (OLD.state = 'dead')::int,
        cancelled = cancelled + (NEW.state = 'cancelled')::int - (OLD.state = 'cancelled')::int
        WHERE name = NEW.batch;
    RETURN NULL;
END $$;

-- A member deleted after the seal before it ended counts as cancelled.
CREATE OR REPLACE FUNCTION jobd_batch_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE batches SET
        succeeded = succeeded - (OLD.state = 'succeeded')::int,
        dead = dead - (OLD.state = 'dead')::int,
        cancelled = cancelled - (OLD.state = 'cancelled')::int
        WHERE name = OLD.batch AND NOT sealed;
    UPDATE batches SET cancelled = cancelled + 1
        WHERE name = OLD.batch AND sealed AND OLD.state NOT IN ('succeeded', 'dead', 'cancelled');
    RETURN NULL;
END $$;

-- The advisory lock key of a batch: members' inserts share it, a seal
-- takes it alone.
CREATE FUNCTION jobd_batch_lock(batch TEXT) RETURNS BIGINT LANGUAGE sql IMMUTABLE AS $$
    SELECT hashtextextended('jobd.batch.' || batch, 0)
$$;

CREATE OR REPLACE FUNCTION jobd_batch_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.callback_for IS NOT NULL THEN
        IF NEW.parents IS NOT NULL AND cardinality(NEW.parents) > 0 THEN
            RAISE EXCEPTION 'callback_has_no_parents: a batch callback waits for its batch only'
                USING ERRCODE = 'check_violation', CONSTRAINT = 'callback_has_no_parents';
        END IF;
        IF NEW.batch IS NOT NULL AND NEW.batch = NEW.callback_for THEN
            RAISE EXCEPTION 'callback_outside_its_batch: a callback cannot belong to its own batch'
                USING ERRCODE = 'check_violation', CONSTRAINT = 'callback_outside_its_batch';
        END IF;
    END IF;
    IF NEW.batch IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock_shared(jobd_batch_lock(NEW.batch));
        INSERT INTO batches (name) VALUES (NEW.batch) ON CONFLICT DO NOTHING;
        IF EXISTS (SELECT 1 FROM batches WHERE name = NEW.batch AND sealed) THEN
            RAISE EXCEPTION 'batch_open: batch % is sealed (its callback is in)', NEW.batch
                USING ERRCODE = 'check_violation', CONSTRAINT = 'batch_open';
        END IF;
    END IF;
    RETURN NEW;
END $$;

-- The seal counts the members and their states, under the batch's
-- advisory lock: every member's insert has committed by then, or waits
-- and is refused.
CREATE OR REPLACE FUNCTION jobd_batch_sealed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(jobd_batch_lock(NEW.name));
    SELECT count(*), count(*) FILTER (WHERE state = 'succeeded'),
           count(*) FILTER (WHERE state = 'dead'), count(*) FILTER (WHERE state = 'cancelled')
        INTO NEW.total, NEW.succeeded, NEW.dead, NEW.cancelled
        FROM jobs WHERE batch = NEW.name;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION jobd_batch_finished() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE batches SET finished_at = ",
    now_ms!(),
    "
        WHERE name = NEW.name AND finished_at IS NULL;
    IF FOUND AND NEW.callback_id IS NOT NULL THEN
        PERFORM 1 FROM jobs WHERE id = NEW.callback_id FOR NO KEY UPDATE;
        PERFORM jobd_settle(ARRAY[NEW.callback_id], TG_TABLE_SCHEMA);
    END IF;
    RETURN NULL;
END $$;

-- Waits that drifted under version 14 are counted again.
SELECT jobd_settle(array_agg(id), current_schema()) FROM jobs WHERE state = 'waiting';
"
);

/// Version 16: `workers.handlers`, as SQLite's version 15.
const V16_HANDLERS: &str = "ALTER TABLE workers ADD COLUMN handlers JSONB NULL;";

/// Version 17: per-table autovacuum settings for the two tables every job
/// churns through: in `jobs` an insert, two updates (never HOT: `state` is
/// in the partial indexes' predicates) and the pruner's delete, three dead
/// versions a job; in `job_runs` an insert and the pruner's delete. Measured
/// with `cargo bench --bench soak` (docs/benchmarks.md, "No decay on
/// PostgreSQL"), 3 000 jobs/s, `[retention]` 2 minutes, 3 000 000 finished
/// jobs and runs kept besides (as days of retention keep them), 6 minutes:
///
/// - `autovacuum_vacuum_scale_factor = 0`, `autovacuum_vacuum_threshold =
///   10000`: the trigger counts dead rows, not a fifth of a table whose size
///   `[retention]` sets. With the defaults (50 + 0.2 × rows) `jobs` was
///   vacuumed every second minute, after 0.96 and 1.08 million dead items,
///   and `job_runs` once in 6 minutes; the heap grew 508 → 699 MiB and was
///   still growing (+7.7 % from minute 3 to 6, `job_runs` +10.9 %). With
///   these, both were vacuumed every minute (the server's
///   `autovacuum_naptime`) after 0.18–0.54 million, and the heap settled
///   at 639 MiB (81 745 pages at the last two vacuums; +2.1 % from minute
///   3.5 to 6, `job_runs` +1.2 %).
/// - `autovacuum_vacuum_cost_delay = 0`: a vacuum of `jobs` is not
///   throttled: 0.17–1.31 s each, against 5.5 and 10.6 s with the default
///   2 ms delay (`job_runs`: 0.47–0.86 s against 6.5 s), so it is done
///   long before the next naptime and holds its snapshot briefly.
///
/// With 2 minutes of retention alone (0.5 million rows, 10 minutes) the
/// defaults' trigger is below a minute of dead rows and both settings
/// vacuumed each table every minute, bounded alike. `fillfactor` is left:
/// it only shapes new pages, and no update here can be HOT.
const V17_AUTOVACUUM: &str = "
ALTER TABLE jobs SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_cost_delay = 0
);
ALTER TABLE job_runs SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_cost_delay = 0
);
";

/// Version 18: a success is described by its job row, as SQLite's
/// version 17 (see there): `job_runs` becomes `job_attempts` (its id
/// sequence too), a success takes its place in that id order as
/// `jobs.run_id`, and `job_runs` is a view of both, whose trigger takes
/// the version before's writes through it.
const V18_SUCCESS_IN_THE_JOB: &str = "
ALTER TABLE job_runs RENAME TO job_attempts;
ALTER INDEX job_runs_job RENAME TO job_attempts_job;
ALTER INDEX job_runs_pkey RENAME TO job_attempts_pkey;
ALTER SEQUENCE job_runs_id_seq RENAME TO job_attempts_id_seq;
ALTER TABLE jobs ADD COLUMN run_id BIGINT NULL;
UPDATE jobs j SET run_id = a.id FROM job_attempts a
    WHERE a.job_id = j.id AND a.attempt = j.attempts AND a.outcome = 'succeeded'
    AND j.state = 'succeeded';
DELETE FROM job_attempts WHERE outcome = 'succeeded'
    AND id IN (SELECT run_id FROM jobs WHERE run_id IS NOT NULL);
CREATE INDEX jobs_run ON jobs (run_id) WHERE run_id IS NOT NULL;
CREATE VIEW job_runs AS
    SELECT id, job_id, attempt, worker, queue, kind, started_at, finished_at, outcome, error,
        duration_ms FROM job_attempts
    UNION ALL
    SELECT run_id, id, attempts, worker, queue, kind, started_at, finished_at,
        'succeeded'::text, NULL::text, GREATEST(finished_at - started_at, 0) FROM jobs
    WHERE state = 'succeeded';
CREATE FUNCTION jobd_job_runs_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM job_attempts WHERE id = OLD.id;
        RETURN OLD;
    END IF;
    IF NEW.outcome = 'succeeded' THEN
        UPDATE jobs SET run_id = nextval('job_attempts_id_seq')
            WHERE id = NEW.job_id AND state = 'succeeded' AND run_id IS NULL;
    ELSE
        INSERT INTO job_attempts (job_id, attempt, worker, queue, kind, started_at,
                finished_at, outcome, error, duration_ms)
            VALUES (NEW.job_id, NEW.attempt, NEW.worker, NEW.queue, NEW.kind, NEW.started_at,
                NEW.finished_at, NEW.outcome, NEW.error, NEW.duration_ms);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER job_runs_write INSTEAD OF INSERT OR DELETE ON job_runs
    FOR EACH ROW EXECUTE FUNCTION jobd_job_runs_write();
";

/// Version 19: nothing a success was is lost when it stops being one, as
/// SQLite's version 18 (see there): a succeeded job moved out of
/// `succeeded` by SQL keeps its success as an attempt row with its place
/// (and gives up its `run_id`), and a success written through `job_runs`
/// that no job can hold becomes an attempt row instead of vanishing.
/// Places come from the sequence, which never goes back, so the pruner
/// needs no mark here. A success's duration in the view no longer fails
/// the read (bigint out of range) when a client wrote extreme times.
const V19_SUCCESS_KEPT: &str = "
CREATE OR REPLACE VIEW job_runs AS
    SELECT id, job_id, attempt, worker, queue, kind, started_at, finished_at, outcome, error,
        duration_ms FROM job_attempts
    UNION ALL
    SELECT run_id, id, attempts, worker, queue, kind, started_at, finished_at,
        'succeeded'::text, NULL::text,
        LEAST(GREATEST(finished_at::numeric - started_at, 0), 9223372036854775807)::bigint
    FROM jobs WHERE state = 'succeeded';
CREATE OR REPLACE FUNCTION jobd_job_runs_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM job_attempts WHERE id = OLD.id;
        RETURN OLD;
    END IF;
    IF NEW.outcome = 'succeeded' THEN
        UPDATE jobs SET run_id = nextval('job_attempts_id_seq')
            WHERE id = NEW.job_id AND state = 'succeeded' AND run_id IS NULL;
        IF FOUND THEN
            RETURN NEW;
        END IF;
    END IF;
    INSERT INTO job_attempts (job_id, attempt, worker, queue, kind, started_at,
            finished_at, outcome, error, duration_ms)
        VALUES (NEW.job_id, NEW.attempt, NEW.worker, NEW.queue, NEW.kind, NEW.started_at,
            NEW.finished_at, NEW.outcome, NEW.error, NEW.duration_ms);
    RETURN NEW;
END $$;
CREATE FUNCTION jobd_success_kept() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_attempts (id, job_id, attempt, worker, queue, kind, started_at,
            finished_at, outcome, error, duration_ms)
        VALUES (OLD.run_id, OLD.id, OLD.attempts, COALESCE(OLD.worker, ''), OLD.queue, OLD.kind,
            COALESCE(OLD.started_at, OLD.finished_at, 0),
            COALESCE(OLD.finished_at, OLD.started_at, 0), 'succeeded', NULL,
            COALESCE(LEAST(GREATEST(OLD.finished_at::numeric - OLD.started_at, 0),
                9223372036854775807)::bigint, 0));
    NEW.run_id := NULL;
    RETURN NEW;
END $$;
CREATE TRIGGER jobs_success_kept BEFORE UPDATE OF state ON jobs FOR EACH ROW
    WHEN (OLD.run_id IS NOT NULL AND OLD.state = 'succeeded' AND NEW.state <> 'succeeded')
    EXECUTE FUNCTION jobd_success_kept();
";
