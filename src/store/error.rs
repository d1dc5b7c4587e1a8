//! The store's error, the same for both backends, and how the daemon logs
//! one. It imports nothing else of jobd, so the wake-up watchers and both
//! backends can use it without going through the store's front.

use std::time::Duration;

/// What went wrong in the store, with the database and operation it concerns.
/// The same for both backends: `database` is the name it is shown by (the
/// SQLite file's path, or the PostgreSQL URL with its password redacted),
/// and a driver's own error is kept as the `source` of [`StoreError::Failed`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A command that reads needs a database that exists.
    #[error(
        "database {} does not exist (run `jobd migrate` to create it)",
        database
    )]
    Missing {
        /// The database, as shown.
        database: String,
    },
    /// `database.path` names a folder.
    #[error("database path {} is a directory, not a SQLite file", database)]
    IsDirectory {
        /// The database, as shown.
        database: String,
    },
    /// The folder that should hold the database does not exist.
    #[error(
        "the folder of database {} does not exist; create it or change database.path",
        database
    )]
    NoFolder {
        /// The database, as shown.
        database: String,
    },
    /// The file exists but is not SQLite.
    #[error("{} is not a SQLite database", database)]
    NotADatabase {
        /// The database, as shown.
        database: String,
    },
    /// The file (or its folder, for the WAL files) cannot be written.
    #[error("database {} is read-only for this user: {detail}", database)]
    ReadOnly {
        /// The database, as shown.
        database: String,
        /// What SQLite said.
        detail: String,
    },
    /// The file was made by a newer jobd.
    #[error("database {} has schema version {found}, newer than this jobd knows ({supported}); upgrade jobd", database)]
    TooNew {
        /// The database, as shown.
        database: String,
        /// `PRAGMA user_version` of the file.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// The file needs `jobd migrate` before this command can use it.
    #[error("database {} has schema version {found} but this jobd needs {supported}; run `jobd migrate`", database)]
    TooOld {
        /// The database, as shown.
        database: String,
        /// `PRAGMA user_version` of the file.
        found: i64,
        /// The version this build needs.
        supported: i64,
    },
    /// Another connection held the write lock for longer than the busy timeout.
    #[error("database {} stayed locked by another connection during {op} for more than {}", database, humantime::format_duration(*waited))]
    Busy {
        /// The database, as shown.
        database: String,
        /// What jobd was doing.
        op: &'static str,
        /// The busy timeout that ran out.
        waited: Duration,
    },
    /// The disk (or quota) is full.
    #[error("database {} cannot grow during {op}: the disk is full", database)]
    Full {
        /// The database, as shown.
        database: String,
        /// What jobd was doing.
        op: &'static str,
    },
    /// Any other failure of the database or its driver.
    #[error("database {database} failed during {op}: {detail}")]
    Failed {
        /// The database, as shown.
        database: String,
        /// What jobd was doing.
        op: &'static str,
        /// What the database or the driver said.
        detail: String,
        /// The driver's error, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl StoreError {
    /// True when waiting and trying again is the right answer (locked, busy).
    pub fn is_busy(&self) -> bool {
        matches!(self, StoreError::Busy { .. })
    }
}

/// Logs trouble with the database with the operation that failed and what
/// jobd does about it: `db.busy` when another connection held the lock too
/// long, `db.error` for anything else.
pub fn log_trouble(op: &str, error: &StoreError, action: &str) {
    let name = event_name(error);
    log::log!(
        target: crate::logging::TARGET,
        event_level(error),
        op = op,
        error:% = error,
        action = action;
        "{}", name
    );
}

/// The level of that event: a lock that outlasted the wait (`db.busy`)
/// is a warning; a failed statement (`db.error`: a full disk, a lost
/// server) is an error, which an alert on errors must catch.
pub fn event_level(error: &StoreError) -> log::Level {
    if error.is_busy() {
        log::Level::Warn
    } else {
        log::Level::Error
    }
}

/// The event name for a store error: `db.busy` or `db.error`.
pub fn event_name(error: &StoreError) -> &'static str {
    if error.is_busy() {
        "db.busy"
    } else {
        "db.error"
    }
}
