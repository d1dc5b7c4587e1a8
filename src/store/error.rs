//! The store's error, the same for both backends, and how the daemon logs
//! one. It imports nothing else of jobd, so the wake-up watchers and both
//! backends can use it without going through the store's front.

use std::path::PathBuf;
use std::time::Duration;

/// What went wrong in the store, with the database and operation it concerns.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A command that reads needs a database that exists.
    #[error("database {} does not exist (run `jobd migrate` to create it)", path.display())]
    Missing {
        /// The configured path.
        path: PathBuf,
    },
    /// `database.path` names a folder.
    #[error("database path {} is a directory, not a SQLite file", path.display())]
    IsDirectory {
        /// The configured path.
        path: PathBuf,
    },
    /// The folder that should hold the database does not exist.
    #[error("the folder of database {} does not exist; create it or change database.path", path.display())]
    NoFolder {
        /// The configured path.
        path: PathBuf,
    },
    /// The file exists but is not SQLite.
    #[error("{} is not a SQLite database", path.display())]
    NotADatabase {
        /// The configured path.
        path: PathBuf,
    },
    /// The file (or its folder, for the WAL files) cannot be written.
    #[error("database {} is read-only for this user: {detail}", path.display())]
    ReadOnly {
        /// The configured path.
        path: PathBuf,
        /// What SQLite said.
        detail: String,
    },
    /// The file was made by a newer jobd.
    #[error("database {} has schema version {found}, newer than this jobd knows ({supported}); upgrade jobd", path.display())]
    TooNew {
        /// The configured path.
        path: PathBuf,
        /// `PRAGMA user_version` of the file.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// The file needs `jobd migrate` before this command can use it.
    #[error("database {} has schema version {found} but this jobd needs {supported}; run `jobd migrate`", path.display())]
    TooOld {
        /// The configured path.
        path: PathBuf,
        /// `PRAGMA user_version` of the file.
        found: i64,
        /// The version this build needs.
        supported: i64,
    },
    /// Another connection held the write lock for longer than the busy timeout.
    #[error("database {} stayed locked by another connection during {op} for more than {}", path.display(), humantime::format_duration(*waited))]
    Busy {
        /// The configured path.
        path: PathBuf,
        /// What jobd was doing.
        op: &'static str,
        /// The busy timeout that ran out.
        waited: Duration,
    },
    /// The disk (or quota) is full.
    #[error("database {} cannot grow during {op}: the disk is full", path.display())]
    Full {
        /// The configured path.
        path: PathBuf,
        /// What jobd was doing.
        op: &'static str,
    },
    /// Any other SQLite failure.
    #[error("database {} failed during {op}: {source}", path.display())]
    Sqlite {
        /// The configured path.
        path: PathBuf,
        /// What jobd was doing.
        op: &'static str,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// A PostgreSQL failure.
    #[error("PostgreSQL database {url} failed during {op}: {detail}")]
    Postgres {
        /// `database.url`, password redacted.
        url: String,
        /// What jobd was doing.
        op: &'static str,
        /// What the server or the client said.
        detail: String,
    },
}

impl StoreError {
    /// True when waiting and trying again is the right answer (locked, busy).
    pub fn is_busy(&self) -> bool {
        matches!(self, StoreError::Busy { .. })
    }

    /// True when the failure is worth retrying later (busy, disk full, I/O).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Busy { .. } | StoreError::Full { .. } | StoreError::Sqlite { .. }
        )
    }
}

/// Logs trouble with the database with the operation that failed and what
/// jobd does about it: `db.busy` when another connection held the lock too
/// long, `db.error` for anything else.
pub fn log_trouble(op: &str, error: &StoreError, action: &str) {
    let name = event_name(error);
    log::log!(
        target: crate::logging::TARGET,
        log::Level::Warn,
        op = op,
        error:% = error,
        action = action;
        "{}", name
    );
}

/// The event name for a store error: `db.busy` or `db.error`.
pub fn event_name(error: &StoreError) -> &'static str {
    if error.is_busy() {
        "db.busy"
    } else {
        "db.error"
    }
}
