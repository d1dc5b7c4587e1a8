//! A real HTTP server on 127.0.0.1 that records what it received and
//! answers as told.

#![allow(dead_code)]

use std::time::Duration;

/// A request an [`HttpServer`] received.
#[derive(Clone, Debug)]
pub struct Received {
    /// `GET`, `POST`, …
    pub method: String,
    /// Path and query.
    pub url: String,
    /// Header names lower-cased, with their values.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub body: String,
}

impl Received {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What an [`HttpServer`] answers.
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl Reply {
    /// `status` with `body`, at once.
    pub fn new(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Answers after `delay`.
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

type Handler = dyn Fn(&Received, usize) -> Reply + Send + Sync;

/// A real HTTP server on 127.0.0.1 (tiny_http), one thread per request, that
/// records what it receives. The handler gets the request and how many
/// requests came to the same path before it.
pub struct HttpServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    received: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
}

impl HttpServer {
    /// Starts serving with `handler`.
    pub fn start(
        handler: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static,
    ) -> HttpServer {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = server.server_addr().to_ip().expect("ip listener").port();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Received>::new()));
        let handler: std::sync::Arc<Handler> = std::sync::Arc::new(handler);
        let log = std::sync::Arc::clone(&received);
        std::thread::spawn(move || {
            for mut request in server.incoming_requests() {
                let mut body = String::new();
                let _ = std::io::Read::read_to_string(request.as_reader(), &mut body);
                let seen = Received {
                    method: request.method().to_string(),
                    url: request.url().to_string(),
                    headers: request
                        .headers()
                        .iter()
                        .map(|h| {
                            (
                                h.field.to_string().to_ascii_lowercase(),
                                h.value.to_string(),
                            )
                        })
                        .collect(),
                    body,
                };
                let before = {
                    let mut all = log.lock().unwrap();
                    let n = all.iter().filter(|r| r.url == seen.url).count();
                    all.push(seen.clone());
                    n
                };
                let handler = std::sync::Arc::clone(&handler);
                std::thread::spawn(move || {
                    let reply = handler(&seen, before);
                    std::thread::sleep(reply.delay);
                    let mut response =
                        tiny_http::Response::from_string(reply.body).with_status_code(reply.status);
                    for (name, value) in reply.headers {
                        response.add_header(
                            tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes())
                                .expect("header"),
                        );
                    }
                    let _ = request.respond(response);
                });
            }
        });
        HttpServer {
            base: format!("http://127.0.0.1:{port}"),
            received,
        }
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}
