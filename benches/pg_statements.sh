#!/bin/bash
# Where one jobd daemon's PostgreSQL server time goes, per statement.
#
# Drains N noop jobs (default 200 000) with one daemon (8 threads, `warn`)
# on a fresh schema, after an ANALYZE of the freshly inserted backlog, and
# prints jobs/s, WAL per job and the top statements from
# pg_stat_statements (server µs and WAL bytes per job).
#
# Needs the server's `shared_preload_libraries` to hold
# `pg_stat_statements` (a restart) and a release build:
#   cargo build --release && N=200000 benches/pg_statements.sh
# PGHOST/PGDATABASE/PGUSER as for psql (default 127.0.0.1, test, postgres).
set -euo pipefail
N=${N:-200000}
S=${SCHEMA:-jobd_statements}
export PGHOST=${PGHOST:-127.0.0.1} PGDATABASE=${PGDATABASE:-test} PGUSER=${PGUSER:-postgres}
JOBD=${JOBD:-$(dirname "$0")/../target/release/jobd}
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
psql -qc "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null
psql -qc "DROP SCHEMA IF EXISTS $S CASCADE" 2>/dev/null
psql -qc "CREATE SCHEMA $S"
cat > "$DIR/c.toml" <<T
[database]
url = "postgres://$PGUSER@$PGHOST/$PGDATABASE?options=-csearch_path%3D$S"
[pool]
threads = 8
[cpu]
workers = 1
[log]
level = "warn"
T
"$JOBD" --config "$DIR/c.toml" migrate >/dev/null
psql -qc "SET search_path = $S; INSERT INTO jobs(kind) SELECT 'noop' FROM generate_series(1, $N); ANALYZE jobs;"
psql -qAtc "CHECKPOINT; SELECT pg_stat_statements_reset();" >/dev/null
W0=$(psql -Atc "SELECT pg_current_wal_insert_lsn()")
T0=$(date +%s.%N)
"$JOBD" --config "$DIR/c.toml" run 2>"$DIR/d.err" &
P=$!
while [ "$(psql -Atc "SELECT count(*) FROM $S.jobs WHERE state = 'queued'")" != "0" ]; do sleep 0.5; done
while [ "$(psql -Atc "SELECT count(*) FROM $S.jobs WHERE state = 'running'")" != "0" ]; do sleep 0.1; done
T1=$(date +%s.%N)
kill "$P"; wait "$P" || true
W1=$(psql -Atc "SELECT pg_current_wal_insert_lsn()")
echo "jobs/s: $(echo "$N / ($T1 - $T0)" | bc -l | cut -d. -f1)"
echo "WAL B/job: $(psql -Atc "SELECT round(pg_wal_lsn_diff('$W1', '$W0') / $N)")"
psql -c "SELECT calls, rows, round((total_exec_time * 1000 / $N)::numeric, 2) AS server_us_per_job,
    round(wal_bytes / $N::numeric) AS wal_b_per_job,
    left(regexp_replace(query, '\s+', ' ', 'g'), 90) AS statement
  FROM pg_stat_statements
  WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
    AND query NOT LIKE '%count(*) FROM $S.jobs%'
  ORDER BY total_exec_time DESC LIMIT 8"
psql -qc "DROP SCHEMA $S CASCADE" 2>/dev/null
