//! The HTTP listener behind `metrics.listen`: it owns the socket, the
//! limits every client is held to, and the hand-off of each request to the
//! synchronous code that answers it ([`crate::metrics`] builds the pages).
//!
//! It faces hostile clients, so it runs hyper (a maintained, hardened
//! HTTP/1 server) on a one-thread tokio runtime of its own; the job path
//! never sees tokio. The limits, and why:
//!
//! - at most [`MAX_CONNECTIONS`] connections at once: further clients wait
//!   in the kernel's accept queue instead of each costing a thread;
//! - a request's head must arrive within [`HEADER_TIMEOUT`] and fit in
//!   [`MAX_HEAD`] bytes, [`MAX_HEADERS`] headers and a [`MAX_URL`]-byte
//!   target (431 / 414 beyond), so a slow or bloated client is dropped;
//! - a body may be at most [`MAX_BODY`] bytes (413 beyond, judged from
//!   `Content-Length` before anything is read) and must arrive within
//!   [`BODY_TIMEOUT`] (408);
//! - a connection lives at most [`CONNECTION_LIFETIME`];
//! - `accept` failing (EMFILE, ENFILE, ENOBUFS…) is logged once per spell
//!   and retried after [`ACCEPT_BACKOFF`]: the port never stops listening.
//!
//! Pages are answered one at a time by a thread of their own (they share
//! one database connection); at most [`PAGE_QUEUE`] wait, later ones get
//! 503. `GET /healthz` does not queue behind pages: it runs on a small pool
//! of its own ([`HEALTH_SLOTS`]) so a supervisor's probe answers while a
//! slow page is built.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{oneshot, watch, Semaphore};

use crate::event;

/// Connections served at once; the rest wait in the accept queue.
pub const MAX_CONNECTIONS: usize = 1024;
/// Time for a request's head to arrive, from the connection's start or
/// the end of its previous request.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for a request's body to arrive once its head has.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request body read: the dashboard's forms are a few fields.
pub const MAX_BODY: usize = 8 * 1024;
/// The largest request head (request line and headers) buffered.
pub const MAX_HEAD: usize = 16 * 1024;
/// The most headers one request may carry.
pub const MAX_HEADERS: usize = 64;
/// The longest request target (path and query).
pub const MAX_URL: usize = 4096;
/// How long one connection may stay open, however busy.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// The wait before accepting again after `accept` failed.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Page requests waiting for the page thread before new ones get 503.
pub const PAGE_QUEUE: usize = 32;
/// Health probes answered at once.
pub const HEALTH_SLOTS: usize = 4;

/// One request, as the synchronous side sees it: the head, the client's
/// address and the whole (bounded) body.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `POST`, …
    pub method: String,
    /// The target's path, still percent-encoded.
    pub path: String,
    /// The target's query, without `?`; empty when none.
    pub query: String,
    /// Header names in lower case; values that are not UTF-8 are decoded
    /// lossily (no page depends on such a value).
    pub headers: Vec<(String, String)>,
    /// The client's address (the login limit counts by it).
    pub peer: IpAddr,
    /// The body, at most [`MAX_BODY`] bytes.
    pub body: Vec<u8>,
}

impl Request {
    /// The first header of that name (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// Extra headers (Location, Set-Cookie, Content-Disposition).
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// The content type of a page.
pub const HTML: &str = "text/html; charset=utf-8";
/// The content type of a plain-text answer.
pub const TEXT: &str = "text/plain; charset=utf-8";

impl Reply {
    /// An answer with this status, body and content type.
    pub fn new(status: u16, body: impl Into<Vec<u8>>, content_type: &'static str) -> Reply {
        Reply {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// A plain-text answer.
    pub fn text(status: u16, text: impl Into<String>) -> Reply {
        Reply::new(status, text.into(), TEXT)
    }
}

/// Answers page requests, one at a time, on the page thread.
pub type Pages = Box<dyn FnMut(Request) -> Reply>;

/// What answers requests: `pages` is called once on the page thread to make
/// its page handler (which may then hold what cannot cross threads, such as
/// a database connection); `health` answers `GET /healthz` on the health
/// pool.
pub struct Handlers {
    /// Makes the page handler, on the page thread.
    pub pages: Box<dyn FnOnce() -> Pages + Send>,
    /// Answers `GET /healthz`.
    pub health: Arc<dyn Fn() -> Reply + Send + Sync>,
}

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve HTTP: {0}")]
pub struct ListenerError(#[from] std::io::Error);

/// The running listener: [`Listener::stop`] closes the socket, ends every
/// connection and waits for its threads.
pub struct Listener {
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
}

impl Listener {
    /// Stops serving and waits for the listener's threads.
    pub fn stop(self) {
        let _ = self.stop.send(true);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

type PageJob = (Request, oneshot::Sender<Reply>);

/// Serves `socket` (already bound, so a bad address fails start-up with
/// the caller's sentence) until [`Listener::stop`].
pub fn serve(socket: std::net::TcpListener, handlers: Handlers) -> Result<Listener, ListenerError> {
    socket.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(HEALTH_SLOTS)
        .thread_name("jobd-health")
        .build()?;
    let (page_tx, page_rx) = sync_channel::<PageJob>(PAGE_QUEUE);
    let Handlers { pages, health } = handlers;
    let page_thread = std::thread::Builder::new()
        .name("jobd-pages".into())
        .spawn(move || {
            let mut pages = pages();
            // Ends when the listener's runtime drops its sender.
            while let Ok((request, answer)) = page_rx.recv() {
                let _ = answer.send(pages(request));
            }
        })?;
    let (stop, stopped) = watch::channel(false);
    let serving = std::thread::Builder::new()
        .name("jobd-listener".into())
        .spawn(move || {
            runtime.block_on(async move {
                let socket = match tokio::net::TcpListener::from_std(socket) {
                    Ok(socket) => socket,
                    Err(e) => {
                        event!(Error, "metrics.accept_failed", error:% = e);
                        return;
                    }
                };
                let shared = Arc::new(Served {
                    pages: page_tx,
                    health,
                    health_slots: Arc::new(Semaphore::new(HEALTH_SLOTS)),
                });
                accept_loop(socket, shared, stopped).await;
            });
            // Dropping the runtime waits for running health probes; their
            // connections are gone already.
        })?;
    Ok(Listener {
        stop,
        threads: vec![serving, page_thread],
    })
}

/// What every connection shares.
struct Served {
    pages: SyncSender<PageJob>,
    health: Arc<dyn Fn() -> Reply + Send + Sync>,
    health_slots: Arc<Semaphore>,
}

async fn accept_loop(
    socket: tokio::net::TcpListener,
    shared: Arc<Served>,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let local = socket
        .local_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    let mut failing = false;
    loop {
        // A slot first: beyond the cap clients wait in the accept queue.
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot.expect("never closed"),
            _ = stopped.changed() => break,
        };
        let accepted = tokio::select! {
            accepted = socket.accept() => accepted,
            _ = stopped.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                if failing {
                    event!(Info, "metrics.accept_recovered", address:% = local);
                    failing = false;
                }
                accepted
            }
            Err(e) => {
                // Out of descriptors or memory: the queued clients stay
                // queued, and accepting resumes once some are freed.
                if !failing {
                    event!(
                        Warn,
                        "metrics.accept_failed",
                        error:% = e,
                        retry_in:% = humantime::format_duration(ACCEPT_BACKOFF)
                    );
                    failing = true;
                }
                drop(slot);
                tokio::select! {
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    _ = stopped.changed() => break,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let stopped = stopped.clone();
        tokio::spawn(async move {
            connection(stream, peer, shared, stopped).await;
            drop(slot);
        });
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    shared: Arc<Served>,
    mut stopped: watch::Receiver<bool>,
) {
    let service = service_fn(move |request| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(answer(request, peer.ip(), &shared).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .max_headers(MAX_HEADERS)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let end = tokio::time::sleep(CONNECTION_LIFETIME);
    tokio::pin!(end);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = &mut end => {}
        _ = stopped.changed() => {}
    }
    // Let a request in progress finish, briefly, then drop the connection.
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
}

/// Answers one request: limits first, then `/healthz` or a page.
async fn answer(
    request: hyper::Request<Incoming>,
    peer: IpAddr,
    shared: &Served,
) -> hyper::Response<Full<Bytes>> {
    let target = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    if target.len() > MAX_URL {
        return closing(respond(Reply::text(
            414,
            format!("the request target is longer than {MAX_URL} bytes\n"),
        )));
    }
    let declared = request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return closing(respond(too_large()));
    }
    let method = request.method().as_str().to_string();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let headers = request
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = match tokio::time::timeout(
        BODY_TIMEOUT,
        Limited::new(request.into_body(), MAX_BODY).collect(),
    )
    .await
    {
        Ok(Ok(body)) => body.to_bytes().to_vec(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return closing(respond(too_large()))
        }
        Ok(Err(e)) => {
            return closing(respond(Reply::text(
                400,
                format!("cannot read the request body: {e}\n"),
            )))
        }
        Err(_) => {
            return closing(respond(Reply::text(
                408,
                format!(
                    "the request body did not arrive within {}\n",
                    humantime::format_duration(BODY_TIMEOUT)
                ),
            )))
        }
    };
    if (method == "GET" || method == "HEAD") && path == "/healthz" {
        return respond(health(shared).await);
    }
    let request = Request {
        method,
        path,
        query,
        headers,
        peer,
        body,
    };
    let (tx, rx) = oneshot::channel();
    match shared.pages.try_send((request, tx)) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            return respond(Reply::text(
                503,
                "too many page requests are waiting; try again shortly\n",
            ))
        }
        Err(TrySendError::Disconnected(_)) => {
            return respond(Reply::text(503, "the dashboard is stopping\n"))
        }
    }
    match rx.await {
        Ok(reply) => respond(reply),
        Err(_) => respond(Reply::text(
            500,
            "the page could not be built; the daemon's log says why\n",
        )),
    }
}

async fn health(shared: &Served) -> Reply {
    let slot = match tokio::time::timeout(
        Duration::from_secs(1),
        Arc::clone(&shared.health_slots).acquire_owned(),
    )
    .await
    {
        Ok(Ok(slot)) => slot,
        _ => return Reply::text(503, "too many health probes at once\n"),
    };
    let health = Arc::clone(&shared.health);
    let reply = tokio::task::spawn_blocking(move || {
        let reply = health();
        drop(slot);
        reply
    })
    .await;
    reply.unwrap_or_else(|_| Reply::text(500, "the health check failed\n"))
}

fn too_large() -> Reply {
    Reply::text(
        413,
        format!("the request body is larger than {MAX_BODY} bytes\n"),
    )
}

/// Asks the client to close: after a refused body the connection's
/// framing cannot be trusted.
fn closing(mut response: hyper::Response<Full<Bytes>>) -> hyper::Response<Full<Bytes>> {
    response.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    response
}

fn respond(reply: Reply) -> hyper::Response<Full<Bytes>> {
    let mut builder = hyper::Response::builder()
        .status(reply.status)
        .header(hyper::header::CONTENT_TYPE, reply.content_type)
        // Pages carry no script at all; say so, so that an injected tag
        // could not run even if escaping failed.
        .header(
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        )
        .header("X-Content-Type-Options", "nosniff")
        .header("Cache-Control", "no-store");
    for (name, value) in &reply.headers {
        // A value that is not a valid header (a control character) is
        // left out rather than failing the whole answer.
        if let Ok(value) = hyper::header::HeaderValue::from_str(value) {
            builder = builder.header(*name, value);
        }
    }
    builder
        .body(Full::new(Bytes::from(reply.body)))
        .unwrap_or_else(|_| {
            hyper::Response::new(Full::new(Bytes::from_static(b"cannot build the answer\n")))
        })
}
