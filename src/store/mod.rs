//! The queue store: the only place that speaks SQL.
//!
//! [`Store`] (in `contract.rs`, with the values it speaks in) is the
//! interface every other part of jobd uses: the CLI commands, the
//! dispatcher, the completer, maintenance and the web pages. [`open`] alone
//! looks at the config to pick the backend: [`SqliteStore`] (`sqlite/`), the
//! embedded one, or [`postgres::PgStore`] (`postgres/`) for daemons on many
//! hosts. Each backend folder holds its schema, its wake-up watcher and its
//! implementation; `shared.rs` holds what both do the same way, and
//! `error.rs` the one error type. The trait speaks only in plain values
//! (epoch milliseconds, ids, JSON text) and never hands out a connection.
//!
//! Every state change names the state it expects in its `WHERE` clause; a
//! change that touches no row lost a race and is reported as such (for example
//! [`Applied::Stale`]), never as an error.

mod contract;
mod error;
mod flows;
mod follow;
pub(crate) mod keyed;
pub mod postgres;
pub(crate) mod shared;
pub mod sqlite;

pub use crate::job::HandlerProcess;
pub use contract::{
    Admin, Applied, Backlog, BatchInfo, BulkRetry, CancelResult, Claim, ClaimRequest, CronRow,
    Enqueued, Fleet, Held, JobRun, ListFilter, Moved, OpenMode, PruneCutoffs, Pruned, Queue,
    QueueStats, Reads, Relatives, RescueScope, Rescued, Result, RetryResult, RunTally, Schedules,
    Stats, Stepped, Store, WorkerInfo, PROGRESS_SHOWN, RELATIVES_SHOWN,
};
pub use error::{event_level, event_name, log_trouble, StoreError};
pub use flows::{BatchCounts, ParentOutcome};
pub use follow::{RunCounter, RunFollower};

/// The five role traits at once, for code that calls methods of several
/// roles on one store (`use jobd::store::prelude::*`).
pub mod prelude {
    pub use crate::store::contract::{Admin, Fleet, Queue, Reads, Schedules, Store};
}
pub use sqlite::schema::{cpu_kind_test, SCHEMA_VERSION};
pub use sqlite::SqliteStore;

/// Opens the database `db` names: PostgreSQL when `database.url` is set,
/// else the SQLite file at `database.path`. The only place that looks at
/// which backend the config names; everything above works on the [`Store`].
/// Readers (CLI commands, the web pages) open [`OpenMode::Existing`], so
/// nothing but `jobd migrate` and `jobd run` ever creates a file in the
/// wrong place or upgrades a schema.
pub fn open(db: &crate::config::DatabaseConfig, mode: OpenMode) -> Result<Box<dyn Store + Send>> {
    match (&db.url, mode) {
        (Some(url), OpenMode::Create) => {
            Ok(Box::new(postgres::PgStore::connect(url, db.busy_timeout)?))
        }
        (Some(url), OpenMode::Existing) => Ok(Box::new(postgres::PgStore::open_current(
            url,
            db.busy_timeout,
        )?)),
        (None, mode) => Ok(Box::new(SqliteStore::open(
            &db.path,
            db.busy_timeout,
            mode,
        )?)),
    }
}

/// The backlog a daemon is behind on: of `queues` (every queue with
/// queued jobs when None), those not paused. A paused queue waits by an
/// operator's choice, so its jobs count neither as ready nor as lag in the
/// `stats` line, systemd's STATUS or the dashboard's chart; `jobd stats`
/// and the per-queue metrics still show it.
pub fn active_backlog<S: Store + ?Sized>(
    store: &mut S,
    queues: Option<&[String]>,
    now: i64,
) -> Result<Backlog> {
    let paused = store.paused_queues()?;
    if paused.is_empty() {
        return store.backlog(queues, now);
    }
    let served = match queues {
        Some(named) => named.to_vec(),
        None => store.queued_queues()?,
    };
    let active: Vec<String> = served.into_iter().filter(|q| !paused.contains(q)).collect();
    if active.is_empty() {
        return Ok(Backlog::default());
    }
    store.backlog(Some(&active), now)
}
