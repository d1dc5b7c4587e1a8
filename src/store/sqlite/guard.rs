//! The SQLite file and its companions, the write-ahead log (`-wal`) and
//! its shared index (`-shm`), as a daemon opened them.
//!
//! SQLite finds a database's log and index by name. A file replaced under
//! a running daemon (a restore moved over it) shares them with the new
//! file: the daemon's frames would be read as the new file's pages, and a
//! client that opens the new file may write the old file's frames into it
//! ("database disk image is malformed"). A log or index deleted under it
//! leaves the daemon committing where no other client looks, and its own
//! close would then write that log over the file and delete the log the
//! clients use. Either way nothing the daemon writes afterwards is safe,
//! so it stops at once (see `daemon::run`); this module says when.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::os::procfs::{file_identity as identity, FileIdentity};
use crate::store::error::StoreError;

/// The files a daemon opened, with a connection of its own to the file it
/// opened (not to whatever the path names later).
pub struct FileGuard {
    conn: Connection,
    files: Vec<Watched>,
}

struct Watched {
    path: PathBuf,
    part: Part,
    identity: FileIdentity,
}

/// Which of the three files changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The database file itself.
    Database,
    /// Its write-ahead log (`-wal`) or shared index (`-shm`).
    Companion,
}

/// A file deleted or replaced under the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changed {
    /// Which file.
    pub part: Part,
    /// One sentence: which path, deleted or replaced.
    pub detail: String,
}

impl FileGuard {
    /// Notes the identity (device, inode) of `db` and of its `-wal` and
    /// `-shm` where they exist (they do once the daemon's connections have
    /// written), and opens a connection of its own to `db`.
    pub fn open(db: &Path, busy_timeout: Duration) -> Result<FileGuard, StoreError> {
        let conn = Connection::open_with_flags(
            db,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|c| c.busy_timeout(busy_timeout).map(|()| c))
        .map_err(|e| super::classify(db, "watch the database file", e))?;
        let mut files = Vec::new();
        let parts = [
            ("", Part::Database),
            ("-wal", Part::Companion),
            ("-shm", Part::Companion),
        ];
        for (suffix, part) in parts {
            let mut name = db.as_os_str().to_owned();
            name.push(suffix);
            let path = PathBuf::from(name);
            if let Some(identity) = identity(&path) {
                files.push(Watched {
                    path,
                    part,
                    identity,
                });
            }
        }
        Ok(FileGuard { conn, files })
    }

    /// The first of the files that is gone or is another file now.
    pub fn check(&self) -> Option<Changed> {
        self.files.iter().find_map(|f| {
            let how = match identity(&f.path) {
                None => "deleted",
                Some(now) if now != f.identity => "replaced",
                Some(_) => return None,
            };
            let what = match f.part {
                Part::Database => "the database file",
                Part::Companion => "the database's write-ahead log file",
            };
            Some(Changed {
                part: f.part,
                detail: format!("{what} {} was {how} under the daemon", f.path.display()),
            })
        })
    }

    /// Moves every frame of the log into the file the daemon opened and
    /// empties the log, so that a file now at the path does not read the
    /// old file's frames as its own. Only for a replaced database file:
    /// the log is still the one the daemon wrote.
    pub fn empty_log(&self) -> Result<(), String> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(|e| e.to_string())
            .and_then(|busy| match busy {
                0 => Ok(()),
                _ => Err("a reader held the log".to_string()),
            })
    }
}
