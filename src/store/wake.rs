//! Noticing new work without busy polling (docs/reference.md).
//!
//! Another process's commit appends frames to the database's `-wal` file, so
//! an inotify watch on that file wakes the dispatcher within microseconds.
//! The event fires *before* the commit is visible to readers (the WAL index
//! lives in shared memory, which raises no event), so the dispatcher confirms
//! with `PRAGMA data_version`, re-checking every [`CONFIRM_STEP`] for up to
//! [`CONFIRM_WINDOW`]. The poll interval stays as the fallback for writers
//! inotify cannot see (another host on a network file system, a watch that
//! could not be set up).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::event;
use crossbeam_channel::{Receiver, Sender};
use inotify::{Inotify, WatchMask};

/// How often to re-read `data_version` after a wake-up. Short enough that
/// pickup adds well under a millisecond, long enough not to spin a core.
pub const CONFIRM_STEP: Duration = Duration::from_micros(100);

/// How long to keep confirming after a wake-up before deciding it was not a
/// commit (an own write, a checkpoint). Measured here: the commit shows
/// within about 1 ms of the event.
pub const CONFIRM_WINDOW: Duration = Duration::from_millis(3);

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

/// Listens for the insert trigger's NOTIFY on the PostgreSQL schema of
/// `url` (`jobd_jobs_<schema>`) on a connection and thread of its own; each
/// notification is a wake-up. The daemon confirms with its change counter.
///
/// A lost connection (a server restart, a cut network) is logged once and
/// reopened every [`RELISTEN`] until it works, with a wake-up after each
/// reconnection for the inserts it may have missed; meanwhile the poll
/// interval finds new work. The first connection's failure is returned, so
/// a daemon says at start-up that it polls.
///
/// With `queues` (a daemon's `daemon.queues` when it names them), an
/// insert into another queue is not a wake-up: the insert trigger's NOTIFY
/// carries the queue's name.
pub fn listen(
    url: &str,
    queues: Option<Vec<String>>,
) -> Result<Receiver<()>, crate::store::error::StoreError> {
    let client = listening(url)?;
    let (tx, rx) = crossbeam_channel::bounded(1);
    let own_url = url.to_string();
    std::thread::Builder::new()
        .name("jobd-listen".into())
        .spawn(move || {
            let mut client = client;
            loop {
                let lost = relay(&mut client, &tx, &own_url, queues.as_deref());
                let Some(error) = lost else {
                    return; // the daemon is gone
                };
                crate::store::error::log_trouble(
                    "listen for new jobs",
                    &error,
                    "new work is noticed by polling until the connection is back",
                );
                client = loop {
                    std::thread::sleep(RELISTEN);
                    if let Ok(client) = listening(&own_url) {
                        break client;
                    }
                };
                event!(Info, "db.reconnected", op = "listen for new jobs");
                if tx.try_send(()).is_err() && tx.is_empty() {
                    return;
                }
            }
        })
        .map_err(|e| {
            crate::store::postgres::postgres_error(url, "listen for new jobs", e.to_string())
        })?;
    Ok(rx)
}

/// How long the listener waits between attempts to reconnect.
pub const RELISTEN: Duration = Duration::from_secs(1);

/// A connection to `url` listening on its schema's channel.
fn listening(url: &str) -> Result<postgres::Client, crate::store::error::StoreError> {
    let fail = crate::store::postgres::failing(url, "listen for new jobs");
    let mut client = crate::store::postgres::client(url, "listen for new jobs")?;
    let schema: String = client
        .query_one("SELECT current_schema()", &[])
        .map_err(&fail)?
        .get(0);
    let channel = crate::store::postgres::channel(&schema).replace('"', "\"\"");
    client
        .batch_execute(&format!("LISTEN \"{channel}\""))
        .map_err(&fail)?;
    Ok(client)
}

/// Forwards notifications as wake-ups until the connection fails (its
/// error) or the daemon stops listening (`None`).
fn relay(
    client: &mut postgres::Client,
    tx: &Sender<()>,
    url: &str,
    queues: Option<&[String]>,
) -> Option<crate::store::error::StoreError> {
    use postgres::fallible_iterator::FallibleIterator as _;
    let fail = crate::store::postgres::failing(url, "listen for new jobs");
    let mut notifications = client.notifications();
    let mut incoming = notifications.blocking_iter();
    loop {
        match incoming.next() {
            Ok(Some(note))
                if queues.is_some_and(|q| !q.iter().any(|name| name == note.payload())) => {}
            // A full channel already holds a wake-up.
            Ok(Some(_)) => {
                if tx.try_send(()).is_err() && tx.is_empty() {
                    return None;
                }
            }
            Ok(None) => {
                return Some(crate::store::postgres::postgres_error(
                    url,
                    "listen for new jobs",
                    "the server closed the connection",
                ))
            }
            Err(e) => return Some(fail(e)),
        }
    }
}
