//! Job kinds (docs/reference.md): one [`Kind`] trait that every kind implements, and
//! the [`Registry`] the dispatcher looks kinds up in.
//!
//! A kind parses its own payload ([`parse_payload`] names the field at fault
//! and what was expected), runs with a deadline and a cancel flag (both in
//! the [`Context`]), and classifies every failure where it is born: a
//! [`JobError::Transient`] is retried with backoff, a [`JobError::Permanent`]
//! makes the job `dead` at once.
//!
//! This module does not run anything itself: the executor calls
//! [`Kind::run`] on a pool thread, catches panics and turns the answer into
//! a completion.

mod checksum;
mod compress;
pub mod email;
pub mod exec;
pub mod file;
pub mod http;
mod noop;

pub use checksum::Checksum;
pub use compress::Compress;
pub use email::Email;
pub use exec::Exec;
pub use file::FileKind;
pub use http::Http;
pub use noop::Noop;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::config::{Config, ExecConfig, FileConfig};

/// Why an attempt failed, classified where the failure was born.
#[derive(Clone, Debug, PartialEq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum JobError {
    /// Worth retrying: the next attempt may succeed (a refused connection, a
    /// 503). `retry_at` (epoch ms) overrides the backoff (`Retry-After`).
    #[error("{message}")]
    Transient {
        /// One readable sentence.
        message: String,
        /// When to try again, if the failure said so.
        retry_at: Option<i64>,
    },
    /// Retrying cannot help (a bad payload, a 404): the job goes `dead`.
    #[error("{message}")]
    Permanent {
        /// One readable sentence.
        message: String,
    },
    /// The attempt's deadline passed. A transient error; the executor words
    /// the message with the timeout.
    #[error("the deadline passed")]
    TimedOut,
    /// An operator cancelled the job while it ran.
    #[error("cancelled by an operator")]
    Cancelled,
}

impl JobError {
    /// A transient error with no retry time of its own.
    pub fn transient(message: impl Into<String>) -> JobError {
        JobError::Transient {
            message: message.into(),
            retry_at: None,
        }
    }

    /// A permanent error.
    pub fn permanent(message: impl Into<String>) -> JobError {
        JobError::Permanent {
            message: message.into(),
        }
    }
}

/// What a kind knows about the attempt it runs.
pub struct Context<'a> {
    /// The job's id.
    pub id: i64,
    /// The attempt number (1 for the first).
    pub attempt: i64,
    /// The job's queue.
    pub queue: &'a str,
    /// The attempt must end by then.
    pub deadline: Instant,
    /// Set when an operator cancels the job or the daemon gives up on it.
    pub cancel: &'a AtomicBool,
    /// Told the process group of a process the attempt starts (an `exec`
    /// handler), so that a kill of the attempt reaches it. None where no
    /// one outside the attempt kills it (the IO threads).
    pub spawned: Option<&'a dyn Fn(i32)>,
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("id", &self.id)
            .field("attempt", &self.attempt)
            .field("queue", &self.queue)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

/// How often a waiting kind looks at its cancel flag: well inside the
/// default 10 ms poll interval, so a cancel lands within about one interval.
pub const CANCEL_CHECK: Duration = Duration::from_millis(5);

impl Context<'_> {
    /// `Err` once the job is cancelled or its deadline passed.
    pub fn check(&self) -> Result<(), JobError> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(JobError::Cancelled)
        } else if Instant::now() >= self.deadline {
            Err(JobError::TimedOut)
        } else {
            Ok(())
        }
    }

    /// Time left before the deadline (zero once it passed).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Sleeps for `duration`, ending early with `Err` when the job is
    /// cancelled or the deadline comes first.
    pub fn sleep(&self, duration: Duration) -> Result<(), JobError> {
        let until = Instant::now() + duration;
        loop {
            self.check()?;
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            let step = (until - now).min(self.remaining()).min(CANCEL_CHECK);
            std::thread::sleep(step);
        }
    }
}

impl<'a> Context<'a> {
    /// Attempt 1 of job 1 in `default`, due in `within`, for tests.
    #[cfg(test)]
    pub(crate) fn for_test(cancel: &'a AtomicBool, within: Duration) -> Context<'a> {
        Context {
            id: 1,
            attempt: 1,
            queue: "default",
            deadline: Instant::now() + within,
            cancel,
            spawned: None,
        }
    }
}

/// One kind of job.
pub trait Kind: Send + Sync {
    /// The name in `jobs.kind`.
    fn name(&self) -> &'static str;

    /// Runs one attempt: parses `payload`, does the work before
    /// `ctx.deadline`, and returns the result as JSON text (None for none).
    fn run(&self, ctx: &Context<'_>, payload: &str) -> Result<Option<String>, JobError>;

    /// Told the database's id ([`crate::store::Admin::database_id`]) once
    /// the daemon has opened it, for kinds that name jobs to the outside
    /// world ([`job_token`]).
    fn identify(&self, _database_id: &str) {}
}

/// How a job is named to the outside world (`Idempotency-Key`,
/// `Message-ID`, mail file names): `jobd-<database id>-<job id>`, unique
/// across databases since ids never repeat within one; `jobd-<id>` where
/// no database id is known (a kind run outside a daemon).
pub fn job_token(database_id: Option<&str>, id: i64) -> String {
    match database_id {
        Some(db) => format!("jobd-{db}-{id}"),
        None => format!("jobd-{id}"),
    }
}

/// Parses a payload into a kind's arguments. A bad payload is a permanent
/// error naming the field and what was expected, e.g.
/// `payload field sleep_ms: invalid type: string "x", expected u64`.
pub fn parse_payload<T: DeserializeOwned>(payload: &str) -> Result<T, JobError> {
    // serde reads a struct from an array too; a payload is an object (docs/reference.md).
    if !payload.trim_start().starts_with('{') {
        return Err(JobError::permanent(format!(
            "payload: must be a JSON object, got {}",
            crate::job::json_type_name(payload.trim_start())
        )));
    }
    let mut de = serde_json::Deserializer::from_str(payload);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    match parsed {
        Ok(value) => Ok(value),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            Err(JobError::permanent(if path == "." || path.is_empty() {
                format!("payload: {inner}")
            } else {
                format!("payload field {path}: {inner}")
            }))
        }
    }
}

/// Checks a payload for `kind` without running anything: unknown or
/// mistyped fields are an error naming the field. An unknown kind is one too.
pub fn check_payload(kind: &str, payload: &str) -> Result<(), JobError> {
    match kind {
        "noop" => noop::check(payload),
        "http" => http::check(payload),
        "email" => email::check(payload),
        "file" => file::check(payload),
        "checksum" => checksum::check(payload),
        "compress" => compress::check(payload),
        "exec" => exec::check(payload),
        other => Err(JobError::permanent(format!(
            "unknown kind {other:?} (this jobd runs: {})",
            crate::config::KNOWN_KINDS.join(", ")
        ))),
    }
}

/// What stands in for a credential wherever a payload, URL or error is shown.
pub const REDACTED: &str = "[redacted]";

/// What display hides: the values of credential headers
/// (`http.redact_headers`, any case), credential query parameters
/// (`http.redact_query`) and the password in a URL's user info. Built from
/// the `[http]` section and handed to whatever shows jobs (CLI, dashboard);
/// the stored payload is never changed.
#[derive(Clone, Debug)]
pub struct Redaction {
    headers: Vec<String>,
    query: Vec<String>,
}

impl Default for Redaction {
    fn default() -> Redaction {
        Redaction::new(&crate::config::HttpConfig::default())
    }
}

impl Redaction {
    /// The redaction `[http]` configures.
    pub fn new(config: &crate::config::HttpConfig) -> Redaction {
        let lower = |list: &[String]| list.iter().map(|h| h.trim().to_ascii_lowercase()).collect();
        Redaction {
            headers: lower(&config.redact_headers),
            query: lower(&config.redact_query),
        }
    }

    /// Whether the header `name` carries a credential.
    pub fn header(&self, name: &str) -> bool {
        let name = name.trim().to_ascii_lowercase();
        self.headers.contains(&name)
    }

    fn query_key(&self, key: &str) -> bool {
        let key = percent_encoding::percent_decode_str(key)
            .decode_utf8_lossy()
            .to_ascii_lowercase();
        self.query.contains(&key)
    }

    /// One URL as it may be shown: the password of its user info (or the
    /// whole user info when it is a single token) and the values of
    /// credential query parameters replaced by [`REDACTED`]. Works on the
    /// text, so a URL no parser accepts is redacted too.
    pub fn url(&self, raw: &str) -> String {
        let Some(scheme_end) = raw.find("://") else {
            return raw.to_string();
        };
        let (head, rest) = raw.split_at(scheme_end + 3);
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let mut out = head.to_string();
        match authority.rfind('@') {
            Some(at) => {
                let (userinfo, host) = (&authority[..at], &authority[at + 1..]);
                match userinfo.split_once(':') {
                    Some((user, _)) => out.push_str(&format!("{user}:{REDACTED}@{host}")),
                    None => out.push_str(&format!("{REDACTED}@{host}")),
                }
            }
            None => out.push_str(authority),
        }
        let (path, query_and_fragment) = match tail.split_once('?') {
            Some((path, rest)) => (path, Some(rest)),
            None => (tail, None),
        };
        out.push_str(path);
        if let Some(rest) = query_and_fragment {
            let (query, fragment) = match rest.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (rest, None),
            };
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if self.query_key(key) => format!("{key}={REDACTED}"),
                    _ => pair.to_string(),
                })
                .collect();
            out.push('?');
            out.push_str(&pairs.join("&"));
            if let Some(fragment) = fragment {
                out.push('#');
                out.push_str(fragment);
            }
        }
        out
    }

    /// Free text (an error, a log value) with every `http://` or `https://`
    /// URL in it passed through [`Redaction::url`].
    pub fn text(&self, text: &str) -> String {
        let lower = text.to_ascii_lowercase();
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        while let Some(found) = ["http://", "https://"]
            .iter()
            .filter_map(|s| lower[at..].find(s))
            .min()
        {
            let start = at + found;
            let end = text[start..]
                .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`'))
                .map_or(text.len(), |n| start + n);
            out.push_str(&text[at..start]);
            out.push_str(&self.url(&text[start..end]));
            at = end;
        }
        out.push_str(&text[at..]);
        out
    }

    /// A payload as anything that shows jobs may print it: for `http` and
    /// `email` jobs the values of credential headers, and for `http` the
    /// URL's password and credential query parameters, replaced by
    /// [`REDACTED`]. Text that is not a JSON object is returned as it is.
    pub fn payload(&self, kind: &str, payload: &str) -> String {
        if kind != "http" && kind != "email" {
            return payload.to_string();
        }
        let Ok(mut value) = serde_json::from_str::<serde_json::Value>(payload) else {
            return payload.to_string();
        };
        let mut changed = false;
        if let Some(headers) = value.get_mut("headers").and_then(|h| h.as_object_mut()) {
            for (name, v) in headers.iter_mut() {
                if self.header(name) {
                    *v = serde_json::Value::String(REDACTED.into());
                    changed = true;
                }
            }
        }
        if kind == "http" {
            if let Some(url) = value.get_mut("url") {
                if let Some(text) = url.as_str() {
                    let shown = self.url(text);
                    if shown != text {
                        *url = serde_json::Value::String(shown);
                        changed = true;
                    }
                }
            }
        }
        if changed {
            value.to_string()
        } else {
            payload.to_string()
        }
    }
}

/// [`Redaction::payload`] with the default lists, for callers that have no
/// config at hand.
pub fn redacted_payload(kind: &str, payload: &str) -> String {
    Redaction::default().payload(kind, payload)
}

/// The kinds this build runs, by name.
#[derive(Clone)]
pub struct Registry {
    kinds: HashMap<&'static str, Arc<dyn Kind>>,
}

impl Registry {
    /// Every kind this build ships, configured from `config`. The CPU
    /// kinds are here so the dispatcher knows them by name; they run in the
    /// worker processes, from [`Registry::cpu`].
    pub fn builtin(config: &Config) -> Registry {
        let mut registry = Registry {
            kinds: HashMap::new(),
        };
        registry.add(Arc::new(Noop));
        registry.add(Arc::new(Http::new(&config.http, config.pool.threads)));
        // One file kind: it creates the roots once and lends its
        // confinement to email attachments.
        let files = Arc::new(FileKind::new(&config.file));
        registry.add(Arc::new(Email::new(&config.email, Arc::clone(&files))));
        registry.add(files);
        registry.add_cpu(&config.file, &config.exec);
        registry
    }

    /// The kinds a CPU worker process runs.
    pub fn cpu(file: &FileConfig, exec: &ExecConfig) -> Registry {
        let mut registry = Registry {
            kinds: HashMap::new(),
        };
        registry.add_cpu(file, exec);
        registry
    }

    fn add_cpu(&mut self, file: &FileConfig, exec: &ExecConfig) {
        let files = Arc::new(FileKind::new(file));
        self.add(Arc::new(Checksum::new(Arc::clone(&files))));
        self.add(Arc::new(Compress::new(files)));
        self.add(Arc::new(Exec::new(exec, file)));
    }

    /// Adds (or replaces) a kind.
    pub fn add(&mut self, kind: Arc<dyn Kind>) {
        self.kinds.insert(kind.name(), kind);
    }

    /// The kind called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Kind>> {
        self.kinds.get(name)
    }

    /// The names, sorted, for messages.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.kinds.keys().copied().collect();
        names.sort_unstable();
        names
    }

    /// Tells every kind the database's id ([`Kind::identify`]).
    pub fn identify(&self, database_id: &str) {
        for kind in self.kinds.values() {
            kind.identify(database_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_the_catalogue_has_a_payload_check() {
        for name in crate::job::KIND_NAMES {
            if let Err(e) = check_payload(name, "{}") {
                assert!(!e.to_string().contains("unknown kind"), "{name}: {e}");
            }
        }
        assert!(check_payload("nosuchkind", "{}")
            .unwrap_err()
            .to_string()
            .contains("unknown kind"));
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // only parsed, to check the messages
    struct Args {
        count: u32,
        #[serde(default)]
        nested: Option<Nested>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // only parsed, to check the messages
    struct Nested {
        name: String,
    }

    #[test]
    fn payload_errors_name_the_field_and_what_was_expected() {
        let err = |p: &str| match parse_payload::<Args>(p).unwrap_err() {
            JobError::Permanent { message } => message,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            err(r#"{"count":"x"}"#),
            r#"payload field count: invalid type: string "x", expected u32 at line 1 column 12"#
        );
        let unknown = err(r#"{"cuont":1}"#);
        assert!(
            unknown.contains("unknown field `cuont`, expected"),
            "{unknown}"
        );
        assert!(err("{}").starts_with("payload: missing field `count`"));
        assert_eq!(err("[1]"), "payload: must be a JSON object, got an array");
        assert!(err(r#"{"count":1,"nested":{"name":5}}"#).starts_with(
            "payload field nested.name: invalid type: integer `5`, expected a string"
        ));
    }

    #[test]
    fn credential_headers_are_redacted_for_display_only() {
        let payload =
            r#"{"url":"http://x","headers":{"Authorization":"Bearer s3cret","X-Trace":"1"}}"#;
        let shown = redacted_payload("http", payload);
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains(r#""Authorization":"[redacted]""#), "{shown}");
        assert!(shown.contains(r#""X-Trace":"1""#), "{shown}");
        assert_eq!(redacted_payload("noop", payload), payload);
        assert_eq!(redacted_payload("http", "not json"), "not json");
    }

    #[test]
    fn urls_lose_passwords_and_credential_query_values_only() {
        let r = Redaction::default();
        assert_eq!(
            r.url("http://admin:S3cret@host:8080/p?api_key=k&page=2&Signature=s#frag"),
            "http://admin:[redacted]@host:8080/p?api_key=[redacted]&page=2&Signature=[redacted]#frag"
        );
        assert_eq!(r.url("https://tok@host/"), "https://[redacted]@host/");
        assert_eq!(r.url("https://host/a@b"), "https://host/a@b");
        assert_eq!(r.url("not a url"), "not a url");
        assert_eq!(
            r.text("GET http://u:pw@h/x?token=t answered 500; see \"https://h/?sig=1\""),
            "GET http://u:[redacted]@h/x?token=[redacted] answered 500; see \"https://h/?sig=[redacted]\""
        );
        let custom = Redaction::new(&crate::config::HttpConfig {
            redact_headers: vec!["X-Custom".into()],
            redact_query: vec!["Session".into()],
            ..Default::default()
        });
        assert!(custom.header("x-CUSTOM"));
        assert!(!custom.header("authorization"));
        assert_eq!(
            custom.url("http://h/?SESSION=1&token=2"),
            "http://h/?SESSION=[redacted]&token=2"
        );
        let shown = custom.payload(
            "http",
            r#"{"url":"http://h/?session=s3","headers":{"X-Custom":"s3","Authorization":"a"}}"#,
        );
        assert!(!shown.contains("s3"), "{shown}");
        assert!(shown.contains(r#""Authorization":"a""#), "{shown}");
    }

    #[test]
    fn sleep_ends_early_on_cancel_and_on_the_deadline() {
        let cancel = AtomicBool::new(false);
        let ctx = Context::for_test(&cancel, Duration::from_millis(20));
        assert_eq!(ctx.sleep(Duration::from_secs(60)), Err(JobError::TimedOut));
        let ctx = Context {
            deadline: Instant::now() + Duration::from_secs(60),
            ..ctx
        };
        cancel.store(true, Ordering::Relaxed);
        assert_eq!(ctx.sleep(Duration::from_secs(60)), Err(JobError::Cancelled));
    }
}
