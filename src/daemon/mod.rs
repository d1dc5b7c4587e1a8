//! The daemon (`jobd run`): a producer → executor → completer pipeline on
//! plain threads, and what runs beside it.
//!
//! - [`run`](mod@run) starts and stops it: opens the store, registers the daemon,
//!   rescues what died on this host, starts the other parts, drains on stop.
//! - [`dispatcher`] is the loop: each turn it writes finished outcomes
//!   ([`completer`]) and claims jobs for the free slots in one short
//!   transaction, within the queues' [`limits`], and hands them to the
//!   [`pool`] their kind runs on (threads for IO, worker processes for CPU).
//! - [`executor`] runs one attempt of a kind with its deadline and cancel
//!   flag and settles the outcome, with the [`retry`] backoff.
//! - [`maintenance`] runs on its own connection: heartbeat, lease rescue,
//!   pruning, the `stats` line; [`cron`] enqueues the periodic jobs.
//! - [`state`] is what the running daemon shows of itself (counters, pool
//!   sizes, health, the last hour of samples), read by the web pages.
//!
//! It uses the store, the kinds and the config below it, and starts the web
//! listener ([`crate::web`]), which reads only [`state`].

pub mod completer;
pub mod cron;
pub mod dispatcher;
pub mod executor;
pub mod limits;
pub mod maintenance;
pub mod pool;
pub mod retry;
pub mod run;
pub mod state;

pub use run::{run, FromProcess};
