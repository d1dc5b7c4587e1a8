//! The config's sections as typed values with their defaults: one struct per
//! `[section]`, each field a key of `config.toml` (which documents them all).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::database::redact_url;
use crate::config::secrets::Secret;
use crate::config::units::{duration_str, opt_duration_str, size_str};

/// `[database]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct DatabaseConfig {
    /// The SQLite file.
    pub path: PathBuf,
    /// A PostgreSQL database (`postgres://user@host/db`) used instead of
    /// `path` (docs/reference.md). Printed with its password redacted.
    #[serde(serialize_with = "redacted_url")]
    pub url: Option<String>,
    /// How long a write waits for another connection's lock.
    #[serde(with = "duration_str")]
    pub busy_timeout: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            path: PathBuf::from("jobd.db"),
            url: None,
            // Long enough to ride out a client's bulk insert, short enough to
            // report a lock that is really stuck.
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// `[daemon]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct DaemonConfig {
    /// The queues this daemon serves; `["*"]` for all.
    pub queues: Vec<String>,
    /// The fallback interval for noticing new work.
    #[serde(with = "duration_str")]
    pub poll_interval: Duration,
    /// How long a claim holds a job before others may rescue it.
    #[serde(with = "duration_str")]
    pub lease: Duration,
    /// How long a stop waits for jobs in flight.
    #[serde(with = "duration_str")]
    pub shutdown_grace: Duration,
    /// How often the `stats` log line is written.
    #[serde(with = "duration_str")]
    pub stats_interval: Duration,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            queues: vec!["*".to_string()],
            poll_interval: Duration::from_millis(10),
            // Renewed every third of it, so a daemon stalls 20 s before its
            // jobs are rescued elsewhere; a crash on the same host is rescued
            // at restart without waiting for it.
            lease: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            stats_interval: Duration::from_secs(60),
        }
    }
}

impl DaemonConfig {
    /// True when this daemon serves every queue.
    pub fn all_queues(&self) -> bool {
        self.queues.iter().any(|q| q == "*")
    }

    /// The queues this daemon serves by name; None when it serves all
    /// (the store then looks at every queue that holds jobs).
    pub fn named_queues(&self) -> Option<&[String]> {
        (!self.all_queues()).then_some(self.queues.as_slice())
    }
}

/// `[pool]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct PoolConfig {
    /// OS threads for IO kinds.
    pub threads: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        // IO jobs mostly wait; 16 threads keep a 2-core machine busy with
        // HTTP and SMTP round trips without many idle stacks.
        PoolConfig { threads: 16 }
    }
}

/// `[cpu]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct CpuConfig {
    /// Worker processes for CPU kinds (default: the number of cores).
    pub workers: usize,
    /// Address-space limit of each worker process, in bytes.
    #[serde(with = "size_str")]
    pub memory_limit: u64,
    /// Jobs a worker runs before it is replaced (bounds leaks).
    pub max_jobs_per_worker: u64,
}

impl Default for CpuConfig {
    fn default() -> Self {
        CpuConfig {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_limit: 1 << 30,
            max_jobs_per_worker: 1_000,
        }
    }
}

/// `[queues.NAME]`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueConfig {
    /// At most this many of the queue's jobs run at once (per daemon).
    pub concurrency: Option<usize>,
    /// At most this many starts per period (per daemon).
    pub rate: Option<Rate>,
    /// `concurrency` and `rate` count across every daemon on the database
    /// (checked in the claim's own transaction) instead of per daemon.
    #[serde(default)]
    pub fleet: bool,
    /// Claims rotate across the queue's job keys, so a key with many ready
    /// jobs does not starve one with a few behind them (priority first).
    #[serde(default)]
    pub fair: bool,
}

/// `[keys.NAME]`: a limit on every job key its `match` glob fits, shared
/// by every daemon on the database (see [`crate::keys`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyConfig {
    /// A glob over keys (`customer:*`, `host:api.example.com`).
    #[serde(rename = "match")]
    pub pattern: String,
    /// At most this many jobs of one key run at once, fleet-wide.
    pub concurrency: Option<u32>,
    /// At most this many jobs of one key start per period, fleet-wide.
    pub rate: Option<Rate>,
}

/// A rate limit such as `"10/s"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Starts allowed per period.
    pub count: u32,
    /// The period.
    pub per: Duration,
}

impl std::str::FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Rate, String> {
        let bad = || format!("must be a rate like \"10/s\", \"100/m\" or \"1000/h\" (got {s:?})");
        let (count, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(format!("must allow at least 1 job per period (got {s:?})"));
        }
        Ok(Rate { count, per })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Rate, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `[retry]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryConfig {
    /// Attempts for a job whose `max_attempts` is NULL.
    pub max_attempts: u32,
    /// The first retry's delay; doubled for each later one.
    #[serde(with = "duration_str")]
    pub backoff_base: Duration,
    /// The longest delay between attempts.
    #[serde(with = "duration_str")]
    pub backoff_max: Duration,
    /// How many times a handler may put a job off (a snooze) before the
    /// job goes dead.
    pub max_snoozes: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        // 20 attempts doubling from 1 s, capped at 1 h, span about 9 hours:
        // long enough to outlast an outage of the service a job calls.
        RetryConfig {
            max_attempts: 20,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(3600),
            max_snoozes: 100,
        }
    }
}

/// `[timeouts]`: the deadline of a job whose `timeout_ms` is NULL, per kind.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct TimeoutsConfig {
    /// `email` jobs.
    #[serde(with = "duration_str")]
    pub email: Duration,
    /// `http` jobs.
    #[serde(with = "duration_str")]
    pub http: Duration,
    /// `file` jobs.
    #[serde(with = "duration_str")]
    pub file: Duration,
    /// `noop` jobs.
    #[serde(with = "duration_str")]
    pub noop: Duration,
    /// `checksum` jobs.
    #[serde(with = "duration_str")]
    pub checksum: Duration,
    /// `compress` jobs.
    #[serde(with = "duration_str")]
    pub compress: Duration,
    /// `exec` jobs.
    #[serde(with = "duration_str")]
    pub exec: Duration,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            email: Duration::from_secs(60),
            http: Duration::from_secs(30),
            file: Duration::from_secs(60),
            noop: Duration::from_secs(60),
            checksum: Duration::from_secs(600),
            compress: Duration::from_secs(1800),
            exec: Duration::from_secs(600),
        }
    }
}

impl TimeoutsConfig {
    /// The default deadline of `kind`, or None for a kind jobd does not know.
    pub fn for_kind(&self, kind: &str) -> Option<Duration> {
        Some(match kind {
            "email" => self.email,
            "http" => self.http,
            "file" => self.file,
            "noop" => self.noop,
            "checksum" => self.checksum,
            "compress" => self.compress,
            "exec" => self.exec,
            _ => return None,
        })
    }
}

/// `[limits]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitsConfig {
    /// A larger payload makes its job dead on its first claim.
    #[serde(with = "size_str")]
    pub max_payload_bytes: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_payload_bytes: 1 << 20,
        }
    }
}

/// The default `http.deny_networks`: link-local (the usual cloud metadata
/// address 169.254.169.254 among them), "this network", the unspecified
/// IPv6 address, and the metadata addresses outside link-local: AWS over
/// IPv6, Alibaba, Oracle, Azure's wire server.
pub const DEFAULT_DENY_NETWORKS: &[&str] = &[
    "169.254.0.0/16",
    "fe80::/10",
    "0.0.0.0/8",
    "::/128",
    "fd00:ec2::254/128",
    "100.100.100.200/32",
    "192.0.0.192/32",
    "168.63.129.16/32",
];

/// The default `http.redact_headers`: headers that carry credentials.
pub const DEFAULT_REDACT_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
    "apikey",
    "x-auth-token",
    "x-access-token",
    "x-amz-security-token",
    "x-vault-token",
    "private-token",
];

/// The default `http.redact_query`: query parameters that carry
/// credentials.
pub const DEFAULT_REDACT_QUERY: &[&str] = &[
    "api_key",
    "apikey",
    "api-key",
    "key",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "auth",
    "password",
    "passwd",
    "secret",
    "client_secret",
    "signature",
    "sig",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
];

/// `[http]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpConfig {
    /// When not empty, only these host names may be called.
    pub allow_hosts: Vec<String>,
    /// Addresses no request may reach, after resolution and on redirects.
    pub deny_networks: Vec<ipnet::IpNet>,
    /// The stored response body is cut here.
    #[serde(with = "size_str")]
    pub max_response_bytes: u64,
    /// The `User-Agent` header.
    pub user_agent: String,
    /// Header names (any case) whose values are shown as `[redacted]`.
    pub redact_headers: Vec<String>,
    /// Query parameter names (any case) whose values are shown as
    /// `[redacted]`.
    pub redact_query: Vec<String>,
    /// Statuses by which a service asks to slow down: the job's key is
    /// blocked on every daemon for the answer's `Retry-After` (else a
    /// backoff), and the job waits without losing the attempt.
    pub block_on: Vec<u16>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            allow_hosts: Vec::new(),
            // Cloud metadata and link-local; loopback and private ranges stay
            // reachable unless an operator adds them.
            deny_networks: DEFAULT_DENY_NETWORKS
                .iter()
                .map(|n| n.parse().expect("default networks are valid"))
                .collect(),
            max_response_bytes: 1 << 20,
            user_agent: format!("jobd/{}", env!("CARGO_PKG_VERSION")),
            redact_headers: DEFAULT_REDACT_HEADERS
                .iter()
                .map(|h| h.to_string())
                .collect(),
            redact_query: DEFAULT_REDACT_QUERY.iter().map(|q| q.to_string()).collect(),
            block_on: vec![429, 503],
        }
    }
}

/// How email leaves jobd.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmailTransport {
    /// Through an SMTP server.
    Smtp,
    /// One `.eml` file per message in `email.dir`.
    File,
}

/// `[email]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct EmailConfig {
    /// `smtp` or `file`.
    pub transport: EmailTransport,
    /// The sender when a payload names none.
    pub from: String,
    /// The folder of the `file` transport.
    pub dir: PathBuf,
    /// `[email.smtp]`
    pub smtp: SmtpConfig,
}

impl Default for EmailConfig {
    fn default() -> Self {
        EmailConfig {
            // A fresh checkout runs without a mail server.
            transport: EmailTransport::File,
            from: "jobd@localhost".to_string(),
            dir: PathBuf::from("mail"),
            smtp: SmtpConfig::default(),
        }
    }
}

/// TLS on the SMTP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain text (a local relay).
    None,
    /// Upgrade with STARTTLS (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

/// `[email.smtp]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct SmtpConfig {
    /// Server host.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// TLS mode.
    pub tls: SmtpTls,
    /// Login name; empty for none.
    pub username: String,
    /// The environment variable that holds the password.
    pub password_env: String,
    /// The file that holds the password.
    pub password_file: PathBuf,
    /// The password, read from one of the two above at load.
    #[serde(skip_deserializing, serialize_with = "redacted")]
    pub password: Option<Secret>,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            host: "localhost".to_string(),
            port: 25,
            tls: SmtpTls::None,
            username: String::new(),
            password_env: String::new(),
            password_file: PathBuf::new(),
            password: None,
        }
    }
}

/// `[file]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct FileConfig {
    /// Every path a job touches must resolve inside one of these.
    pub roots: Vec<PathBuf>,
    /// Whether `append`, and `write`/`copy` with `overwrite`, may change a
    /// regular file that has more than one hard link (one of which may lie
    /// outside the roots).
    pub allow_hard_links: bool,
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            roots: vec![PathBuf::from("files")],
            allow_hard_links: false,
        }
    }
}

/// `[exec]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecConfig {
    /// The folder of `exec` handlers.
    pub dir: PathBuf,
    /// The user handlers run as, for a daemon started as root; none: the
    /// daemon's own user.
    pub user: Option<String>,
    /// `[exec.handlers.NAME]`: handlers that run otherwise than one
    /// process per job.
    pub handlers: BTreeMap<String, HandlerConfig>,
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            dir: PathBuf::from("jobs"),
            user: None,
            handlers: BTreeMap::new(),
        }
    }
}

/// How a handler runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HandlerMode {
    /// A process per job (the args on stdin, the result on stdout).
    #[default]
    Oneshot,
    /// One process per CPU worker, fed jobs one at a time over a line
    /// protocol (docs/reference.md, "Warm handlers").
    Persistent,
}

/// `[exec.handlers.NAME]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HandlerConfig {
    /// `oneshot` or `persistent`.
    pub mode: HandlerMode,
    /// A persistent handler is replaced after this many jobs.
    pub max_jobs: u64,
    /// A persistent handler whose resident memory, summed with every
    /// process it started, passes this after a job is replaced (0: only
    /// `cpu.memory_limit`, which bounds every process of the worker).
    #[serde(with = "size_str")]
    pub memory_limit: u64,
    /// A persistent handler idle this long is stopped.
    #[serde(with = "duration_str")]
    pub idle_timeout: Duration,
    /// At most this many of a persistent handler's processes per daemon,
    /// and of its jobs running at once across every daemon (None: one
    /// process per CPU worker).
    pub instances: Option<u32>,
}

impl Default for HandlerConfig {
    fn default() -> Self {
        HandlerConfig {
            mode: HandlerMode::Oneshot,
            max_jobs: 1000,
            memory_limit: 0,
            idle_timeout: Duration::from_secs(300),
            instances: None,
        }
    }
}

/// `[retention]`: how long final jobs are kept before the pruner deletes them.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct RetentionConfig {
    /// Succeeded jobs.
    #[serde(with = "duration_str")]
    pub succeeded: Duration,
    /// Dead jobs.
    #[serde(with = "duration_str")]
    pub dead: Duration,
    /// Cancelled jobs.
    #[serde(with = "duration_str")]
    pub cancelled: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            succeeded: Duration::from_secs(7 * 86_400),
            // Dead jobs wait for a person; keep them longer.
            dead: Duration::from_secs(30 * 86_400),
            cancelled: Duration::from_secs(7 * 86_400),
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// logfmt.
    Text,
    /// One JSON object per line.
    Json,
}

/// Log level names as in the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// Every job event (the default).
    Info,
    /// Claims, wake-ups and more.
    Debug,
    /// Everything.
    Trace,
}

impl TryFrom<String> for LogLevel {
    type Error = String;

    fn try_from(name: String) -> Result<LogLevel, String> {
        Ok(match name.trim().to_ascii_lowercase().as_str() {
            "error" => LogLevel::Error,
            "warn" | "warning" => LogLevel::Warn,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            _ => {
                return Err(format!(
                    "must be one of error, warn, info, debug, trace (got {name:?})"
                ))
            }
        })
    }
}

impl From<LogLevel> for log::LevelFilter {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// `[log]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// The lowest level written.
    pub level: LogLevel,
    /// `text` (logfmt) or `json`.
    pub format: LogFormat,
    /// A file to append to instead of stderr.
    pub file: Option<PathBuf>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: LogLevel::Info,
            format: LogFormat::Text,
            file: None,
        }
    }
}

/// `[metrics]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricsConfig {
    /// Address of the metrics and dashboard listener; none: off.
    pub listen: Option<SocketAddr>,
    /// The dashboard flags jobs running longer than this.
    #[serde(with = "duration_str")]
    pub long_running: Duration,
    /// The environment variable that holds the dashboard token.
    pub dashboard_token_env: String,
    /// The file that holds the dashboard token.
    pub dashboard_token_file: PathBuf,
    /// The token, read from one of the two above at load.
    #[serde(skip_deserializing, serialize_with = "redacted")]
    pub dashboard_token: Option<Secret>,
    /// Host names (besides IP addresses and `localhost`) the dashboard's
    /// pages answer to; any other `Host:` gets 421, so a DNS-rebinding
    /// page in a browser cannot read payloads.
    pub allowed_hosts: Vec<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: None,
            // Longer than almost any healthy IO job, short enough that a
            // job stuck running is seen the same morning.
            long_running: Duration::from_secs(600),
            dashboard_token_env: String::new(),
            dashboard_token_file: PathBuf::new(),
            dashboard_token: None,
            allowed_hosts: Vec::new(),
        }
    }
}

/// `[cron.NAME]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CronConfig {
    /// A 5-field cron expression or `@every 30s`.
    pub schedule: String,
    /// The job kind.
    pub kind: String,
    /// The job's payload.
    #[serde(default = "empty_object")]
    pub payload: serde_json::Value,
    /// The job's queue.
    #[serde(default = "default_queue")]
    pub queue: String,
    /// The job's priority.
    #[serde(default)]
    pub priority: i64,
    /// The job's attempt limit.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// The job's deadline.
    #[serde(default, with = "opt_duration_str")]
    pub timeout: Option<Duration>,
    /// IANA time zone of the expression.
    #[serde(default = "utc")]
    pub timezone: String,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

fn default_queue() -> String {
    crate::job::DEFAULT_QUEUE.to_string()
}

fn utc() -> String {
    "UTC".to_string()
}

fn redacted<S: serde::Serializer>(value: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_str("(set, redacted)"),
        None => s.serialize_str("(not set)"),
    }
}

fn redacted_url<S: serde::Serializer>(value: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(url) => s.serialize_str(&redact_url(url)),
        None => s.serialize_none(),
    }
}
