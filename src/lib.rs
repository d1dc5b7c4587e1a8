//! jobd: a background job worker daemon on a SQLite (or PostgreSQL) job
//! queue.
//!
//! # Layout
//!
//! The folders draw the layers; each file imports only from the layers
//! below it (`python3 modcycles.py src` finds no circle, and CI checks).
//! From the bottom:
//!
//! - [`job`]: a job, its states (and who moves a job out of each), the
//!   outcome of an attempt. [`fmt`]: times, durations and escaping shared
//!   by the command line and the web pages. [`os`]: `/proc`, signals,
//!   systemd's socket, confinement of the daemon and its workers.
//!   [`keys`]: limit keys, what a job's key is when it names none, which
//!   `[keys.*]` sections limit it, the rate arithmetic (the store applies
//!   them in each claim, `store/keyed.rs`).
//! - [`config`]: `config.toml` and `JOBD_SECTION__KEY` variables, validated
//!   once into a [`config::Config`] that flows down to whatever needs it.
//!   [`logging`]: named events written by [`event!`] in logfmt or JSON.
//! - [`store`]: the only code that speaks SQL. Enqueue, claim, complete,
//!   rescue, prune, each one short transaction behind five role traits
//!   ([`store::Queue`] for the dispatcher, [`store::Schedules`] for cron,
//!   [`store::Fleet`] for start-up and maintenance, [`store::Admin`] and
//!   [`store::Reads`] for the CLI and the web; [`store::Store`] is all
//!   five), implemented by [`store::SqliteStore`] and, for daemons on many
//!   hosts sharing one queue, [`store::postgres::PgStore`].
//!   [`store::open`] alone picks the backend from the config, and
//!   [`store::Queue::watch_commits`] tells the daemon of new jobs (the
//!   `-wal` watcher, `LISTEN`). What both backends decide alike (the
//!   claim's plan, rescue records, cancel and retry, batched prune and
//!   `retry --dead`, the stats) is written once in `store/shared.rs`;
//!   each backend keeps only its SQL.
//! - [`kinds`]: the [`kinds::Kind`] trait (with the catalogue of kinds in
//!   [`job::KINDS`]) and one file per kind (`noop`,
//!   `http`, `email`, `file` on threads; `checksum`, `compress`, `exec` in
//!   worker processes). [`metrics`]: the Prometheus collectors.
//! - [`daemon`]: `jobd run`, a producer → executor → completer pipeline on
//!   plain threads. The [`daemon::dispatcher`] owns one connection: each
//!   turn it writes finished outcomes ([`daemon::completer`]) and claims
//!   jobs for the free slots in the same short transaction, within the
//!   queues' [`daemon::limits`], and hands them to the [`daemon::pool`]
//!   their kind runs on. There the [`daemon::executor`] runs one attempt
//!   with its deadline and cancel flag, catches panics and settles the
//!   outcome (success, a retry after the [`daemon::retry`] backoff, or
//!   `dead`). [`daemon::maintenance`] runs beside it on its own connection
//!   (heartbeat, lease rescue, pruning, the `stats` line) and
//!   [`daemon::cron`] enqueues the periodic jobs, each slot once.
//!   [`daemon::state`] is what the running daemon shows of itself.
//! - [`web`]: the hardened listener, `/metrics`, `/healthz` and the
//!   dashboard; it sees the daemon only through [`daemon::state`].
//! - [`commands`]: one function per CLI verb ([`commands::cli`] holds the
//!   clap definitions); [`error`] is the one error the binary turns into a
//!   sentence and an exit status (`src/main.rs` does only that).
//!
//! The life of a job: inserted `queued` → claimed by a daemon (`running`,
//! under a lease) → its attempt ends → the outcome is written, fenced by
//! worker and attempt → `succeeded`, back to `queued` for a retry, or `dead`.

#![deny(missing_docs)]

pub mod commands;
pub mod config;
pub mod daemon;
pub mod error;
pub mod fmt;
pub mod job;
pub mod keys;
pub mod kinds;
pub mod logging;
pub mod metrics;
pub mod os;
pub mod store;
pub mod web;
