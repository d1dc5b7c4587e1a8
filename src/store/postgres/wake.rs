//! Noticing new work on PostgreSQL without busy polling: a connection of its
//! own LISTENs for the insert trigger's NOTIFY.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::event;
use crate::store::postgres::connect::{channel, client, failing, postgres_error};

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
    listen_flagged(url, queues, Default::default())
}

/// [`listen`], keeping `connected` true while the LISTEN connection is up
/// (false from when it is lost until it is back).
pub(crate) fn listen_flagged(
    url: &str,
    queues: Option<Vec<String>>,
    connected: Arc<AtomicBool>,
) -> Result<Receiver<()>, crate::store::error::StoreError> {
    let client = listening(url)?;
    connected.store(true, Ordering::Relaxed);
    let (tx, rx) = crossbeam_channel::bounded(1);
    let own_url = url.to_string();
    std::thread::Builder::new()
        .name("jobd-listen".into())
        .spawn(move || {
            let mut client = client;
            loop {
                let lost = relay(&mut client, &tx, &own_url, queues.as_deref());
                connected.store(false, Ordering::Relaxed);
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
                connected.store(true, Ordering::Relaxed);
                event!(Info, "db.reconnected", op = "listen for new jobs");
                if !pass_on(&tx) {
                    return;
                }
            }
        })
        .map_err(|e| postgres_error(url, "listen for new jobs", e.to_string()))?;
    Ok(rx)
}

/// Passes a wake-up on; false once the daemon is gone. A full channel
/// already holds one. (Its emptiness is no sign of the daemon's end: the
/// daemon may take the wake-up just after a send found the channel full,
/// and a listener that took that for the end stopped, leaving the daemon
/// to its poll.)
fn pass_on(tx: &Sender<()>) -> bool {
    !matches!(
        tx.try_send(()),
        Err(crossbeam_channel::TrySendError::Disconnected(()))
    )
}

/// How long the listener waits between attempts to reconnect.
pub const RELISTEN: Duration = Duration::from_secs(1);

/// A connection to `url` listening on its schema's channel.
fn listening(url: &str) -> Result<postgres::Client, crate::store::error::StoreError> {
    let fail = failing(url, "listen for new jobs");
    let mut client = client(url, "listen for new jobs")?;
    let schema: String = client
        .query_one("SELECT current_schema()", &[])
        .map_err(&fail)?
        .get(0);
    let channel = channel(&schema).replace('"', "\"\"");
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
    let fail = failing(url, "listen for new jobs");
    let mut notifications = client.notifications();
    let mut incoming = notifications.blocking_iter();
    loop {
        match incoming.next() {
            Ok(Some(note))
                if queues.is_some_and(|q| !q.iter().any(|name| name == note.payload())) => {}
            Ok(Some(_)) => {
                if !pass_on(tx) {
                    return None;
                }
            }
            Ok(None) => {
                return Some(postgres_error(
                    url,
                    "listen for new jobs",
                    "the server closed the connection",
                ))
            }
            Err(e) => return Some(fail(e)),
        }
    }
}
