//! Noticing new work without busy polling (docs/reference.md).
//!
//! Another process's commit appends frames to the database's `-wal` file, so
//! an inotify watch on that file wakes the dispatcher within microseconds.
//! The event fires *before* the commit is visible to readers (the WAL index
//! lives in shared memory, which raises no event), so the dispatcher confirms
//! with `PRAGMA data_version`, re-checking every [`crate::daemon::dispatcher::CONFIRM_STEP`] for up to
//! [`crate::daemon::dispatcher::CONFIRM_WINDOW`]. The poll interval stays as the fallback for writers
//! inotify cannot see (another host on a network file system, a watch that
//! could not be set up).

use std::path::{Path, PathBuf};

use crossbeam_channel::{Receiver, Sender};
use inotify::{Inotify, WatchMask};

/// The file whose changes announce commits to `db`.
pub fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// Starts a thread that sends `()` on the returned channel whenever `file`
/// is written. Wake-ups coalesce: the channel holds at most one.
pub fn watch(file: &Path) -> std::io::Result<Receiver<()>> {
    let inotify = Inotify::init()?;
    inotify.watches().add(file, WatchMask::MODIFY)?;
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("jobd-pickup".into())
        .spawn(move || forward(inotify, &tx))?;
    Ok(rx)
}

fn forward(mut inotify: Inotify, tx: &Sender<()>) {
    let mut buffer = [0u8; 4096];
    loop {
        match inotify.read_events_blocking(&mut buffer) {
            Ok(_) => match tx.try_send(()) {
                Ok(()) | Err(crossbeam_channel::TrySendError::Full(())) => {}
                Err(crossbeam_channel::TrySendError::Disconnected(())) => return,
            },
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // The poll interval takes over.
            Err(_) => return,
        }
    }
}
