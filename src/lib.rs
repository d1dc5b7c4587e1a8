//! jobd: a background job worker daemon on a SQLite (or PostgreSQL) job
//! queue.
//!
//! # Layout
//!
//! A job is a row in the `jobs` table ([`job`] holds its states and the
//! transitions between them). Anyone inserts it — the `sqlite3` shell, a
//! script, or `jobd enqueue` ([`commands`]) — and the [`store`] is the only
//! code that speaks SQL: enqueue, claim, complete, rescue, prune, each one
//! short transaction behind the [`store::Store`] trait, implemented by
//! [`store::SqliteStore`] and, for daemons on many hosts sharing one queue,
//! [`store::postgres::PgStore`]. Settings come from
//! `config.toml` and `JOBD_SECTION__KEY` variables, validated once into a
//! [`config::Config`] that is handed to whatever needs it. Log lines are
//! named events written by [`event!`] in logfmt or JSON ([`logging`]).
//!
//! The binary (`src/main.rs`) only parses the command line ([`cli`]), calls
//! [`commands::run`] and turns an [`error::Error`] into one sentence and an
//! exit status.
//!
//! The daemon (`jobd run`, [`daemon`]) is a producer → executor → completer
//! pipeline on plain threads. The [`dispatcher`] owns one connection: each
//! turn it writes finished outcomes ([`completer`]) and claims jobs for the
//! free slots in the same short transaction, within per-queue limits
//! ([`limits`]), and hands them to the pool their kind runs on ([`pool`]):
//! IO kinds to a thread pool, CPU kinds to worker processes (the binary
//! re-executed in a worker mode, killed at the deadline). There the
//! [`executor`] runs one attempt of a [`kinds::Kind`] with its deadline and
//! cancel flag, catches panics, and settles the outcome (success, a retry
//! after the [`retry`] backoff, or `dead`). The dispatcher sleeps until an
//! attempt ends, a signal arrives ([`signals`]), another process commits
//! ([`pickup`] watches the `-wal` file, or LISTENs on PostgreSQL) or a
//! timer is due. [`maintenance`]
//! runs beside it on its own connection: heartbeat, lease rescue, pruning
//! and the `stats` line, with process facts from [`procfs`]. [`notify`]
//! tells systemd when the daemon is ready, reloading or stopping, pings its
//! watchdog from the dispatcher loop and keeps a live `STATUS=` line;
//! [`metrics`] serves `/metrics`, `/healthz` and the [`dashboard`]. [`cron`] enqueues the
//! periodic jobs of `[cron.*]`, each slot exactly once, from the dispatcher.
//!
//! The life of a job: inserted `queued` → claimed by a daemon (`running`,
//! under a lease) → its attempt ends → the outcome is written, fenced by
//! worker and attempt → `succeeded`, back to `queued` for a retry, or `dead`.

#![deny(missing_docs)]

pub mod cli;
pub mod commands;
pub mod completer;
pub mod config;
pub mod confine;
pub mod cron;
pub mod daemon;
pub mod dashboard;
pub mod dispatcher;
pub mod error;
pub mod executor;
pub mod job;
pub mod kinds;
pub mod limits;
pub mod listener;
pub mod logging;
pub mod maintenance;
pub mod metrics;
pub mod notify;
pub mod pickup;
pub mod pool;
pub mod procfs;
pub mod retry;
pub mod signals;
pub mod store;
