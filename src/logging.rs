//! Log lines (docs/reference.md): one event per line, logfmt or JSON, to stderr or
//! `log.file`.
//!
//! Call sites name an event and its fields with [`event!`](crate::event) and
//! never build strings by hand:
//!
//! ```ignore
//! jobd::event!(Info, "job.succeeded", id = 42, kind = "http", duration_ms = 35);
//! ```
//!
//! which the `text` format writes as
//! `2026-11-24T12:00:00.123Z INFO  job.succeeded id=42 kind=http duration_ms=35`.
//! Values with spaces, quotes or `=` are quoted; newlines are escaped. The
//! level and the file can change at run time ([`LogHandle::reload`]) so that
//! SIGHUP applies a new level and reopens the file after logrotate moved it.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use log::kv::{self, VisitSource};

use crate::config::{LogConfig, LogFormat};
use crate::fmt::{needs_escape, push_escaped};

/// The log target of jobd's own events; other crates' records keep theirs.
pub const TARGET: &str = "jobd";

/// Writes one event line: `event!(Level, "name", key = value, …)`.
/// Use `key:% = value` for values that are only `Display`.
#[macro_export]
macro_rules! event {
    ($level:ident, $name:expr $(, $key:ident $(:$cap:tt)? = $value:expr)* $(,)?) => {
        ::log::log!(
            target: $crate::logging::TARGET,
            ::log::Level::$level,
            $($key $(:$cap)? = $value),*;
            "{}", $name
        )
    };
}

/// Routes panic messages into the log as `panic` events, so a job that
/// panics leaves one well-formed line instead of free text on stderr.
pub fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let message = panic_message(info.payload());
        let thread = std::thread::current();
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        log::log!(
            target: TARGET,
            log::Level::Error,
            thread = thread.name().unwrap_or("unnamed"),
            message = message.as_str(),
            location = location.as_str();
            "panic"
        );
        // A thread that batches its lines (the dispatcher) may not get to
        // flush them when its panic ends the daemon: out now, unless this
        // thread panicked inside the sink itself.
        if let Some(Ok(mut dest)) = SINK.get().map(|sink| sink.inner.try_lock()) {
            let _ = dest.drain();
        }
    }));
}

/// A problem opening the log file.
#[derive(Debug, thiserror::Error)]
#[error("log.file {}: cannot open for appending: {source}", path.display())]
pub struct LogError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: io::Error,
}

/// Where lines go; swapped in place on reload.
#[derive(Clone)]
struct Sink {
    inner: Arc<Mutex<Destination>>,
}

struct Destination {
    output: Output,
    /// Lines written by a batching thread and not yet handed to the output.
    pending: Vec<u8>,
}

enum Output {
    Stderr,
    File(File),
}

/// A batching thread's lines are handed over at the latest when this much
/// is pending, so a loop that never pauses still logs promptly.
const BATCH_LIMIT: usize = 64 * 1024;

thread_local! {
    /// Set on the dispatcher's thread: its lines are written once per turn
    /// of its loop ([`flush`]) instead of one `write` call each.
    static BATCHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The installed sink, for [`flush`].
static SINK: std::sync::OnceLock<Sink> = std::sync::OnceLock::new();

/// Makes this thread's log lines wait for [`flush`] (or 64 KiB of them).
/// Lines from other threads still go out at once, taking any pending ones
/// with them, so the order of lines is kept.
pub fn batch_this_thread() {
    BATCHING.with(|b| b.set(true));
}

/// Writes out whatever lines are pending.
pub fn flush() {
    if let Some(sink) = SINK.get() {
        let mut dest = sink.inner.lock().unwrap_or_else(|p| p.into_inner());
        let _ = dest.drain();
    }
}

impl Destination {
    fn drain(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let result = match &mut self.output {
            Output::Stderr => io::stderr().write_all(&self.pending),
            Output::File(f) => f.write_all(&self.pending),
        };
        self.pending.clear();
        result
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut dest = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        dest.pending.extend_from_slice(buf);
        if !BATCHING.with(std::cell::Cell::get) || dest.pending.len() >= BATCH_LIMIT {
            dest.drain()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut dest = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if !BATCHING.with(std::cell::Cell::get) {
            dest.drain()?;
        }
        match &mut dest.output {
            Output::Stderr => io::stderr().flush(),
            Output::File(f) => f.flush(),
        }
    }
}

fn open(path: Option<&Path>) -> Result<Output, LogError> {
    match path {
        None => Ok(Output::Stderr),
        Some(path) => OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(Output::File)
            .map_err(|source| LogError {
                path: path.to_path_buf(),
                source,
            }),
    }
}

/// Controls the installed logger after start-up.
#[derive(Clone)]
pub struct LogHandle {
    sink: Sink,
}

impl LogHandle {
    /// Applies a new level and reopens the file (or switches to stderr).
    /// On error the old destination stays.
    pub fn reload(&self, config: &LogConfig) -> Result<(), LogError> {
        let output = open(config.file.as_deref())?;
        let mut dest = self.sink.inner.lock().unwrap_or_else(|p| p.into_inner());
        let _ = dest.drain();
        dest.output = output;
        drop(dest);
        log::set_max_level(config.level.into());
        Ok(())
    }
}

/// Installs the logger. `timestamps` is false under journald, which stamps
/// lines itself.
pub fn init(config: &LogConfig, timestamps: bool) -> Result<LogHandle, LogError> {
    let sink = Sink {
        inner: Arc::new(Mutex::new(Destination {
            output: open(config.file.as_deref())?,
            pending: Vec::new(),
        })),
    };
    let _ = SINK.set(sink.clone());
    let format = config.format;
    let mut builder = env_logger::Builder::new();
    builder
        // Other crates speak only when something is wrong; jobd's own events
        // follow `log.level`, which reload can change through max_level.
        .filter_level(log::LevelFilter::Warn)
        .filter_module(TARGET, log::LevelFilter::Trace)
        .target(env_logger::Target::Pipe(Box::new(sink.clone())))
        .format(move |buf, record| {
            let line = render(format, timestamps, record);
            buf.write_all(line.as_bytes())
        });
    // A second init (tests in one process) keeps the first logger.
    let _ = builder.try_init();
    log::set_max_level(config.level.into());
    Ok(LogHandle { sink })
}

/// One record as a full line, newline included.
pub fn render(format: LogFormat, timestamps: bool, record: &log::Record<'_>) -> String {
    let ts = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
    let message = record.args().to_string();
    let mut fields = Fields(Vec::new());
    let _ = record.key_values().visit(&mut fields);
    let foreign = record.target() != TARGET && !record.target().starts_with("jobd::");
    let mut line = String::with_capacity(128);
    match format {
        LogFormat::Text => {
            if timestamps {
                let _ = write!(line, "{ts} ");
            }
            let _ = write!(line, "{:<5} ", record.level());
            if foreign {
                let _ = write!(
                    line,
                    "log target={} msg={}",
                    record.target(),
                    quote(&message)
                );
            } else {
                line.push_str(&quote(&message));
            }
            for (key, value) in &fields.0 {
                let _ = write!(line, " {key}={}", quote(&value.to_string()));
            }
        }
        LogFormat::Json => {
            let mut obj = serde_json::Map::new();
            if timestamps {
                obj.insert("ts".into(), ts.to_string().into());
            }
            obj.insert(
                "level".into(),
                record.level().as_str().to_lowercase().into(),
            );
            if foreign {
                obj.insert("event".into(), "log".into());
                obj.insert("target".into(), record.target().into());
                obj.insert("msg".into(), message.into());
            } else {
                obj.insert("event".into(), message.into());
            }
            for (key, value) in fields.0 {
                obj.insert(key, value.into_json());
            }
            line = serde_json::Value::Object(obj).to_string();
        }
    }
    line.push('\n');
    line
}

/// A field's value, kept typed so JSON shows numbers as numbers.
enum FieldValue {
    Int(i64),
    Uint(u64),
    Float(f64),
    Bool(bool),
    Text(String),
}

impl FieldValue {
    fn into_json(self) -> serde_json::Value {
        match self {
            FieldValue::Int(n) => n.into(),
            FieldValue::Uint(n) => n.into(),
            FieldValue::Float(n) => n.into(),
            FieldValue::Bool(b) => b.into(),
            FieldValue::Text(s) => s.into(),
        }
    }
}

impl std::fmt::Display for FieldValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FieldValue::Int(n) => write!(f, "{n}"),
            FieldValue::Uint(n) => write!(f, "{n}"),
            FieldValue::Float(n) => write!(f, "{n}"),
            FieldValue::Bool(b) => write!(f, "{b}"),
            FieldValue::Text(s) => f.write_str(s),
        }
    }
}

struct Fields(Vec<(String, FieldValue)>);

impl<'kvs> VisitSource<'kvs> for Fields {
    fn visit_pair(&mut self, key: kv::Key<'kvs>, value: kv::Value<'kvs>) -> Result<(), kv::Error> {
        let value = if let Some(b) = value.to_bool() {
            FieldValue::Bool(b)
        } else if let Some(n) = value.to_i64() {
            FieldValue::Int(n)
        } else if let Some(n) = value.to_u64() {
            FieldValue::Uint(n)
        } else if let Some(n) = value.to_f64() {
            FieldValue::Float(n)
        } else {
            FieldValue::Text(value.to_string())
        };
        self.0.push((key.as_str().to_string(), value));
        Ok(())
    }
}

/// A logfmt value: bare when it is a plain word, else quoted with `\"`,
/// `\\`, `\n`, `\r`, `\t` and other control characters escaped, so one event
/// is always one line.
pub fn quote(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| !c.is_whitespace() && !needs_escape(c) && c != '"' && c != '=' && c != '\\');
    if plain {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => push_escaped(&mut out, c),
        }
    }
    out.push('"');
    out
}

/// The text of a panic's payload (a `&str` or a `String`), for the log.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-text panic value".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(format: LogFormat, record: &log::Record<'_>) -> String {
        render(format, false, record)
    }

    #[test]
    fn quotes_only_what_needs_it() {
        assert_eq!(quote("http"), "http");
        assert_eq!(quote("connection refused"), "\"connection refused\"");
        assert_eq!(quote("a\nb \"c\""), "\"a\\nb \\\"c\\\"\"");
        assert_eq!(quote(""), "\"\"");
        assert_eq!(quote("k=v"), "\"k=v\"");
    }

    #[test]
    fn text_and_json_lines_carry_the_same_fields() {
        let kvs: &[(&str, kv::Value<'_>)] = &[
            ("id", kv::Value::from(42i64)),
            ("error", kv::Value::from("connection refused")),
        ];
        let args = format_args!("job.retry");
        let record = log::Record::builder()
            .target(TARGET)
            .level(log::Level::Warn)
            .args(args)
            .key_values(&kvs)
            .build();
        assert_eq!(
            line(LogFormat::Text, &record),
            "WARN  job.retry id=42 error=\"connection refused\"\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&line(LogFormat::Json, &record)).unwrap();
        assert_eq!(json["event"], "job.retry");
        assert_eq!(json["id"], 42);
        assert_eq!(json["error"], "connection refused");
        assert_eq!(json["level"], "warn");
    }
}
