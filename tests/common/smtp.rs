//! A real SMTP server on 127.0.0.1 that keeps the messages it received.

#![allow(dead_code)]

/// A message an [`SmtpServer`] accepted.
#[derive(Clone, Debug, Default)]
pub struct Mail {
    /// `MAIL FROM`.
    pub from: String,
    /// `RCPT TO`s.
    pub to: Vec<String>,
    /// The DATA, as sent.
    pub data: String,
}

#[derive(Clone)]
struct MailHandler {
    inbox: std::sync::Arc<std::sync::Mutex<Vec<Mail>>>,
    current: Mail,
    refuse_rcpt: bool,
}

impl mailin_embedded::Handler for MailHandler {
    fn rcpt(&mut self, _to: &str) -> mailin_embedded::Response {
        if self.refuse_rcpt {
            mailin_embedded::response::NO_MAILBOX
        } else {
            mailin_embedded::response::OK
        }
    }

    fn data_start(
        &mut self,
        _domain: &str,
        from: &str,
        _is8bit: bool,
        to: &[String],
    ) -> mailin_embedded::Response {
        self.current = Mail {
            from: from.to_string(),
            to: to.to_vec(),
            data: String::new(),
        };
        mailin_embedded::response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.current.data.push_str(&String::from_utf8_lossy(buf));
        Ok(())
    }

    fn data_end(&mut self) -> mailin_embedded::Response {
        self.inbox
            .lock()
            .unwrap()
            .push(std::mem::take(&mut self.current));
        mailin_embedded::response::OK
    }
}

/// A real SMTP server on 127.0.0.1 (mailin-embedded) that keeps what it
/// accepts, or answers 550 to every recipient.
pub struct SmtpServer {
    /// The port it listens on.
    pub port: u16,
    inbox: std::sync::Arc<std::sync::Mutex<Vec<Mail>>>,
}

impl SmtpServer {
    /// Starts a server; `refuse_rcpt` makes it answer 550 to recipients.
    pub fn start(refuse_rcpt: bool) -> SmtpServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().unwrap().port();
        let inbox = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let handler = MailHandler {
            inbox: std::sync::Arc::clone(&inbox),
            current: Mail::default(),
            refuse_rcpt,
        };
        let mut server = mailin_embedded::Server::new(handler);
        server
            .with_name("test.smtp")
            .with_num_threads(4)
            .with_tcp_listener(listener);
        std::thread::spawn(move || {
            let _ = server.serve();
        });
        SmtpServer { port, inbox }
    }

    /// Every message accepted so far.
    pub fn inbox(&self) -> Vec<Mail> {
        self.inbox.lock().unwrap().clone()
    }
}
