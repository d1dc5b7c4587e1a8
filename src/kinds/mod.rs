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
mod kind;
mod noop;
mod redaction;
mod warm;

pub use checksum::Checksum;
pub use compress::Compress;
pub use email::Email;
pub use exec::Exec;
pub use file::FileKind;
pub use http::Http;
pub use kind::{job_token, parse_payload, Context, JobError, Kind, Report, CANCEL_CHECK};
pub use noop::Noop;
pub use redaction::*;

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, ExecConfig, FileConfig};

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
            crate::job::KIND_NAMES.join(", ")
        ))),
    }
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

    /// The warm handler processes every kind keeps ([`Kind::warm_handlers`]).
    pub fn warm_handlers(&self) -> Vec<crate::job::HandlerProcess> {
        self.kinds
            .values()
            .flat_map(|k| k.warm_handlers())
            .collect()
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
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

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
