//! `email` (docs/reference.md) through lettre: a message built from the payload with a
//! `Message-ID` stable across attempts (`<jobd-<db>-<id>@<host>>`, see
//! [`crate::kinds::job_token`]), sent through
//! a pooled SMTP transport or written as one `.eml` file per job.
//!
//! Every failure is classified where it is born: a bad address, a header
//! with CR or LF, no recipient or no body, an attachment outside the file
//! roots, SMTP 5xx — permanent; SMTP 4xx, a refused or dropped connection, a
//! timeout — transient.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::PoolConfig;
use lettre::{Message, SmtpTransport, Transport};
use serde::Deserialize;

use std::os::fd::AsFd;
use std::sync::Arc;

use crate::config::{EmailConfig, EmailTransport, SmtpTls};
use crate::kinds::file::FileKind;
use crate::kinds::file::{replace_atomically, ReplaceError};
use crate::kinds::kind::{parse_payload, Context, JobError, Kind};

/// The longest an SMTP socket operation may block on the pooled transport.
/// A job whose deadline is nearer gets its own connection with exactly the
/// time it has left.
pub const SMTP_SOCKET_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachmentArgs {
    path: String,
    #[serde(default)]
    filename: Option<String>,
    #[serde(default)]
    content_type: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    #[serde(default)]
    to: Option<OneOrMany>,
    #[serde(default)]
    cc: Vec<String>,
    #[serde(default)]
    bcc: Vec<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    reply_to: Option<String>,
    #[serde(default)]
    subject: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    html: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    attachments: Vec<AttachmentArgs>,
}

enum Sender {
    Smtp {
        pooled: SmtpTransport,
        config: crate::config::SmtpConfig,
    },
    Files(PathBuf),
}

/// The `email` kind.
pub struct Email {
    sender: Sender,
    from: String,
    host: String,
    files: Arc<FileKind>,
    /// The database's id, for `Message-ID` and file names
    /// ([`crate::kinds::job_token`]).
    database_id: std::sync::OnceLock<String>,
}

impl Email {
    /// The kind as `[email]` configures it; attachments are read within the
    /// roots of `files`.
    pub fn new(config: &EmailConfig, files: Arc<FileKind>) -> Email {
        let sender = match config.transport {
            EmailTransport::Smtp => Sender::Smtp {
                pooled: smtp_transport(&config.smtp, SMTP_SOCKET_TIMEOUT, true),
                config: config.smtp.clone(),
            },
            EmailTransport::File => {
                let dir = std::path::absolute(&config.dir).unwrap_or_else(|_| config.dir.clone());
                let _ = std::fs::create_dir_all(&dir);
                Sender::Files(dir)
            }
        };
        Email {
            sender,
            from: config.from.clone(),
            host: crate::os::procfs::host_name(),
            files,
            database_id: std::sync::OnceLock::new(),
        }
    }

    /// The job's name in `Message-ID` and the mail file's name.
    fn token(&self, id: i64) -> String {
        crate::kinds::kind::job_token(self.database_id.get().map(String::as_str), id)
    }

    // Long: the message built part by part (headers, body, attachments) in the order MIME needs.
    fn build(&self, ctx: &Context<'_>, args: Payload) -> Result<(Message, String), JobError> {
        let mailbox = |field: String, raw: &str| {
            if raw.contains(['\r', '\n']) {
                return Err(JobError::permanent(format!(
                    "payload field {field}: contains CR or LF"
                )));
            }
            Mailbox::from_str(raw).map_err(|e| {
                JobError::permanent(format!(
                    "payload field {field}: invalid address {raw:?}: {e}"
                ))
            })
        };
        let from = args.from.as_deref().unwrap_or(&self.from);
        let mut builder = Message::builder().from(mailbox("from".into(), from)?);
        let to = args.to.map(OneOrMany::into_vec).unwrap_or_default();
        if to.is_empty() && args.cc.is_empty() && args.bcc.is_empty() {
            return Err(JobError::permanent(
                "payload: at least one recipient (to, cc or bcc) is required",
            ));
        }
        for (field, list) in [("to", &to), ("cc", &args.cc), ("bcc", &args.bcc)] {
            for (i, raw) in list.iter().enumerate() {
                let name = if field == "to" && list.len() == 1 {
                    field.to_string()
                } else {
                    format!("{field}[{i}]")
                };
                let m = mailbox(name, raw)?;
                builder = match field {
                    "to" => builder.to(m),
                    "cc" => builder.cc(m),
                    _ => builder.bcc(m),
                };
            }
        }
        if let Some(reply_to) = &args.reply_to {
            builder = builder.reply_to(mailbox("reply_to".into(), reply_to)?);
        }
        if args.subject.contains(['\r', '\n']) {
            return Err(JobError::permanent(
                "payload field subject: contains CR or LF",
            ));
        }
        let message_id = format!("<{}@{}>", self.token(ctx.id), self.host);
        builder = builder
            .subject(args.subject)
            .message_id(Some(message_id.clone()));
        for (name, value) in args.headers {
            if name.contains(['\r', '\n', ':']) || value.contains(['\r', '\n']) {
                return Err(JobError::permanent(format!(
                    "payload field headers: header {name:?} contains CR, LF or a colon"
                )));
            }
            let header = HeaderName::new_from_ascii(name.clone()).map_err(|_| {
                JobError::permanent(format!(
                    "payload field headers: {name:?} is not a valid header name"
                ))
            })?;
            builder = builder.raw_header(HeaderValue::new(header, value));
        }
        let (text, html) = (args.text, args.html);
        if text.is_none() && html.is_none() {
            return Err(JobError::permanent("payload: text or html is required"));
        }
        let body = |text: Option<String>, html: Option<String>| match (text, html) {
            (Some(text), Some(html)) => MultiPart::alternative_plain_html(text, html),
            (Some(text), None) => MultiPart::mixed().singlepart(SinglePart::plain(text)),
            (html, _) => MultiPart::mixed().singlepart(SinglePart::html(html.unwrap_or_default())),
        };
        let built = if args.attachments.is_empty() {
            match (text, html) {
                (Some(text), None) => builder.singlepart(SinglePart::plain(text)),
                (None, Some(html)) => builder.singlepart(SinglePart::html(html)),
                (text, html) => builder.multipart(body(text, html)),
            }
        } else {
            let mut mixed = MultiPart::mixed().multipart(body(text, html));
            for (i, a) in args.attachments.iter().enumerate() {
                let field = format!("attachments[{i}].path");
                let data = self.files.read(&field, &a.path)?;
                let filename = a.filename.clone().unwrap_or_else(|| {
                    std::path::Path::new(&a.path)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "attachment".into())
                });
                let content_type = a
                    .content_type
                    .as_deref()
                    .unwrap_or("application/octet-stream");
                let content_type = ContentType::parse(content_type).map_err(|_| {
                    JobError::permanent(format!(
                        "payload field attachments[{i}].content_type: {content_type:?} is not a MIME type"
                    ))
                })?;
                mixed = mixed.singlepart(Attachment::new(filename).body(data, content_type));
            }
            builder.multipart(mixed)
        };
        let message = built
            .map_err(|e| JobError::permanent(format!("payload: cannot build the message: {e}")))?;
        Ok((message, message_id))
    }
}

fn smtp_transport(
    config: &crate::config::SmtpConfig,
    timeout: Duration,
    pooled: bool,
) -> SmtpTransport {
    let builder = match config.tls {
        SmtpTls::None => SmtpTransport::builder_dangerous(&config.host),
        SmtpTls::Starttls => SmtpTransport::starttls_relay(&config.host)
            .unwrap_or_else(|_| SmtpTransport::builder_dangerous(&config.host)),
        SmtpTls::Tls => SmtpTransport::relay(&config.host)
            .unwrap_or_else(|_| SmtpTransport::builder_dangerous(&config.host)),
    };
    let mut builder = builder.port(config.port).timeout(Some(timeout));
    if !config.username.is_empty() {
        let password = config
            .password
            .as_ref()
            .map(|p| p.expose().to_string())
            .unwrap_or_default();
        builder = builder.credentials(Credentials::new(config.username.clone(), password));
    }
    if pooled {
        builder = builder.pool_config(PoolConfig::new());
    } else {
        builder = builder.pool_config(PoolConfig::new().max_size(1).idle_timeout(Duration::ZERO));
    }
    builder.build()
}

/// Writes the message as `jobd-<id>.eml`, atomically and under the same name
/// on every attempt, so a retry replaces rather than duplicates it.
fn write_eml(dir: &std::path::Path, token: &str, bytes: &[u8]) -> Result<(), String> {
    let fd = rustix::fs::open(
        dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| e.to_string())?;
    let name = format!("{token}.eml");
    let tmp = format!(".{name}.tmp");
    replace_atomically(fd.as_fd(), name.as_ref(), &tmp, bytes, true).map_err(|e| match e {
        ReplaceError::Write(e) => e.to_string(),
        ReplaceError::At(what, errno) => format!("cannot {what} {name}: {errno}"),
    })
}

impl Kind for Email {
    fn name(&self) -> &'static str {
        "email"
    }

    fn identify(&self, database_id: &str) {
        let _ = self.database_id.set(database_id.to_string());
    }

    fn run(&self, ctx: &Context<'_>, payload: &str) -> Result<Option<String>, JobError> {
        let args: Payload = parse_payload(payload)?;
        let (message, message_id) = self.build(ctx, args)?;
        let recipients = message.envelope().to().len();
        match &self.sender {
            Sender::Files(dir) => write_eml(dir, &self.token(ctx.id), &message.formatted())
                .map_err(|e| {
                    JobError::transient(format!(
                        "cannot write the message into {}: {e}",
                        dir.display()
                    ))
                })?,
            Sender::Smtp { pooled, config } => {
                ctx.check()?;
                let remaining = ctx.remaining();
                let sent = if remaining < SMTP_SOCKET_TIMEOUT {
                    smtp_transport(config, remaining.max(Duration::from_millis(1)), false)
                        .send(&message)
                } else {
                    pooled.send(&message)
                };
                if let Err(e) = sent {
                    return Err(smtp_error(ctx, config, e));
                }
            }
        }
        Ok(Some(
            serde_json::json!({ "message_id": message_id, "recipients": recipients }).to_string(),
        ))
    }
}

fn smtp_error(
    ctx: &Context<'_>,
    config: &crate::config::SmtpConfig,
    e: lettre::transport::smtp::Error,
) -> JobError {
    let server = format!("{}:{}", config.host, config.port);
    if e.is_permanent() {
        return JobError::permanent(format!("the SMTP server {server} refused the message: {e}"));
    }
    if e.is_timeout() && ctx.remaining().is_zero() {
        return JobError::TimedOut;
    }
    JobError::transient(format!("sending through {server} failed: {e}"))
}

/// Checks a payload without running the job: the fields and their types
/// (for `[cron.*]` entries at start-up).
pub(crate) fn check(payload: &str) -> Result<(), JobError> {
    parse_payload::<Payload>(payload).map(drop)
}
