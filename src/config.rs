//! Configuration: `config.toml` plus `JOBD_SECTION__KEY` environment
//! overrides → one validated [`Config`].
//!
//! Loading goes in two steps, like ripgrep's flags: the file and the
//! environment are merged and deserialized (a wrong type names the key), then
//! [`Config::validate`] checks every value against what is possible (a zero
//! thread pool, a rate of `"abc"`) and names the key and where it came from.
//! Nothing else in jobd reads the environment or the file: the parts that
//! need settings are handed the `Config` (or a piece of it).
//!
//! Secrets (the SMTP password, the dashboard token) are read here, from an
//! environment variable or a file named in the config, and kept in [`Secret`],
//! which never prints its value.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The config file used when neither `--config` nor `JOBD_CONFIG` names one.
pub const DEFAULT_CONFIG_PATH: &str = "config.toml";

/// The prefix of environment overrides: `JOBD_POOL__THREADS=32`.
const ENV_PREFIX: &str = "JOBD_";
/// Separates section from key in an environment override.
const ENV_SEPARATOR: &str = "__";
/// Keys whose environment override is a comma-separated list.
const LIST_KEYS: &[&str] = &[
    "daemon.queues",
    "http.allow_hosts",
    "http.deny_networks",
    "http.redact_headers",
    "http.redact_query",
    "file.roots",
    "metrics.allowed_hosts",
];

/// What to write instead of a key people try that jobd does not have.
fn unknown_key_hint(key: &str) -> String {
    let secret = |name: &str| {
        format!(
            "; secrets are not written in the config: set {key}_env (the variable that holds the {name}) or {key}_file (the file that holds it)"
        )
    };
    match key {
        "email.smtp.password" => secret("password"),
        "metrics.dashboard_token" => secret("token"),
        _ => String::new(),
    }
}

/// The longest duration any key takes: far beyond any useful setting, and
/// short enough that epoch-millisecond arithmetic on it cannot overflow
/// (`daemon.lease = "99999999999999d"` made `lease_until` wrap around).
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// The largest size any key takes (1 PiB).
pub const MAX_SIZE: u64 = 1 << 50;

/// The job kinds this build runs ([`crate::job::KINDS`]); a cron entry
/// must name one of them.
pub const KNOWN_KINDS: &[&str] = &crate::job::KIND_NAMES;

/// A check the layers above run on a loaded config: `Err((key, why))`.
pub type SectionCheck = dyn Fn(&Config) -> Result<(), (String, String)>;

/// A configuration problem, naming the key and the source that set it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named by `--config` or `JOBD_CONFIG` is not there.
    #[error("config file {} does not exist", path.display())]
    Missing {
        /// The path given.
        path: PathBuf,
    },
    /// The file cannot be read or is not TOML.
    #[error("{}: {detail}", path.display())]
    Unreadable {
        /// The path given.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// A key jobd does not know (a typo, or a key from another version).
    #[error("{source_name}: unknown key {key}{}", unknown_key_hint(key))]
    UnknownKey {
        /// The file or environment variable.
        source_name: String,
        /// The full dotted key.
        key: String,
    },
    /// A value of the wrong type or form.
    #[error("{source_name}: {key} {detail}")]
    Invalid {
        /// The file or environment variable.
        source_name: String,
        /// The full dotted key.
        key: String,
        /// What was expected.
        detail: String,
    },
}

/// A secret value: shows as `(redacted)` in every debug and display form.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(redacted)")
    }
}

/// The validated configuration.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    /// `[database]`
    pub database: DatabaseConfig,
    /// `[daemon]`
    pub daemon: DaemonConfig,
    /// `[pool]`
    pub pool: PoolConfig,
    /// `[cpu]`
    pub cpu: CpuConfig,
    /// `[queues.NAME]`
    pub queues: BTreeMap<String, QueueConfig>,
    /// `[retry]`
    pub retry: RetryConfig,
    /// `[timeouts]`
    pub timeouts: TimeoutsConfig,
    /// `[limits]`
    pub limits: LimitsConfig,
    /// `[http]`
    pub http: HttpConfig,
    /// `[email]`
    pub email: EmailConfig,
    /// `[file]`
    pub file: FileConfig,
    /// `[exec]`
    pub exec: ExecConfig,
    /// `[retention]`
    pub retention: RetentionConfig,
    /// `[log]`
    pub log: LogConfig,
    /// `[metrics]`
    pub metrics: MetricsConfig,
    /// `[cron.NAME]`
    pub cron: BTreeMap<String, CronConfig>,
    /// Where the file came from, for messages.
    #[serde(skip)]
    pub source: PathBuf,
}

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
}

impl Default for RetryConfig {
    fn default() -> Self {
        // 20 attempts doubling from 1 s, capped at 1 h, span about 9 hours:
        // long enough to outlast an outage of the service a job calls.
        RetryConfig {
            max_attempts: 20,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(3600),
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
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            dir: PathBuf::from("jobs"),
            user: None,
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

/// The raw shape of the file, before validation.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawConfig {
    database: DatabaseConfig,
    daemon: DaemonConfig,
    pool: PoolConfig,
    cpu: CpuConfig,
    queues: BTreeMap<String, QueueConfig>,
    retry: RetryConfig,
    timeouts: TimeoutsConfig,
    limits: LimitsConfig,
    http: HttpConfig,
    email: EmailConfig,
    file: FileConfig,
    exec: ExecConfig,
    retention: RetentionConfig,
    log: LogConfig,
    metrics: MetricsConfig,
    cron: BTreeMap<String, CronConfig>,
}

/// Where the settings come from: the file (if any) and the environment.
pub struct ConfigSource<'a> {
    /// The config file.
    pub path: &'a Path,
    /// True when the path was given (`--config`, `JOBD_CONFIG`): then it must
    /// exist. The default path may be missing; the defaults apply.
    pub explicit: bool,
    /// The process environment (or a test's stand-in).
    pub env: &'a HashMap<String, String>,
    /// Whether to read the secrets (`*_env`, `*_file`): only the daemon and
    /// `check-config` need them, so an operator's `jobd list` works without
    /// the daemon's password in their shell.
    pub secrets: bool,
}

impl Config {
    /// Every default, as if loaded from an empty file.
    pub fn defaults() -> Config {
        let env = HashMap::new();
        Config::from_raw(
            RawConfig::default(),
            Path::new(DEFAULT_CONFIG_PATH),
            &env,
            false,
            false,
        )
        .expect("the defaults are valid")
    }

    /// Reads the file and the environment and validates the result.
    pub fn load(source: &ConfigSource<'_>) -> Result<Config, ConfigError> {
        Config::load_checked(source, &|_| Ok(()))
    }

    /// [`Config::load`], then `check` on the result: what the layers above
    /// validate of their own (the periodic schedules and their payloads,
    /// which need the kinds), with an error `(key, what is wrong)` reported
    /// like the config's own, naming the file or variable the key came from.
    pub fn load_checked(
        source: &ConfigSource<'_>,
        check: &SectionCheck,
    ) -> Result<Config, ConfigError> {
        let path = source.path;
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !source.explicit => String::new(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConfigError::Missing {
                    path: path.to_path_buf(),
                })
            }
            Err(e) => {
                return Err(ConfigError::Unreadable {
                    path: path.to_path_buf(),
                    detail: format!("cannot be read: {e}"),
                })
            }
        };
        let overrides = env_overrides(source.env);
        let environment = LIST_KEYS.iter().fold(
            config::Environment::default()
                .source(Some(overrides.clone()))
                .separator(ENV_SEPARATOR)
                .try_parsing(true)
                .list_separator(","),
            |env, key| env.with_list_parse_key(key),
        );
        let built = config::Config::builder()
            .add_source(config::File::from_str(&text, config::FileFormat::Toml))
            .add_source(environment)
            .build()
            .map_err(|e| ConfigError::Unreadable {
                path: path.to_path_buf(),
                detail: format!("is not valid TOML: {e}"),
            })?;
        let origin = |key: &str| source_of(key, path, &overrides);
        // database.path has a default; only one written out conflicts with url.
        let path_set = built.get_string("database.path").is_ok();
        let mut unknown = Vec::new();
        let raw: RawConfig = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(
            built,
            &mut |p: serde_ignored::Path<'_>| unknown.push(p.to_string()),
        ))
        .map_err(|e| {
            let key = e.path().to_string();
            ConfigError::Invalid {
                source_name: origin(&key),
                detail: serde_detail(&e.inner().to_string()),
                key,
            }
        })?;
        if let Some(key) = unknown.into_iter().next() {
            return Err(ConfigError::UnknownKey {
                source_name: origin(&key),
                key,
            });
        }
        Config::from_raw(raw, path, source.env, path_set, source.secrets)
            .and_then(|config| check(&config).map(|()| config))
            .map_err(|(key, detail)| ConfigError::Invalid {
                source_name: origin(&key),
                key,
                detail,
            })
    }

    /// Validates the raw settings; an error is `(key, what is wrong)`.
    fn from_raw(
        raw: RawConfig,
        path: &Path,
        env: &HashMap<String, String>,
        path_set: bool,
        secrets: bool,
    ) -> Result<Config, (String, String)> {
        let mut config = Config {
            database: raw.database,
            daemon: raw.daemon,
            pool: raw.pool,
            cpu: raw.cpu,
            queues: raw.queues,
            retry: raw.retry,
            timeouts: raw.timeouts,
            limits: raw.limits,
            http: raw.http,
            email: raw.email,
            file: raw.file,
            exec: raw.exec,
            retention: raw.retention,
            log: raw.log,
            metrics: raw.metrics,
            cron: raw.cron,
            source: path.to_path_buf(),
        };
        if path_set && config.database.url.is_some() {
            return Err((
                "database.url".into(),
                "and database.path are both set; keep one (url for PostgreSQL, path for SQLite)"
                    .into(),
            ));
        }
        config.validate()?;
        if !secrets {
            return Ok(config);
        }
        config.email.smtp.password = read_secret(
            "email.smtp",
            "password",
            &config.email.smtp.password_env,
            &config.email.smtp.password_file,
            env,
        )?;
        config.metrics.dashboard_token = read_secret(
            "metrics",
            "dashboard_token",
            &config.metrics.dashboard_token_env,
            &config.metrics.dashboard_token_file,
            env,
        )?;
        Ok(config)
    }

    /// Checks every value against what is possible; an error is
    /// `(key, what is wrong)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        fn fail<T>(key: &str, detail: impl Into<String>) -> Result<T, (String, String)> {
            Err((key.to_string(), detail.into()))
        }
        fn at_least(key: &str, got: u64, min: u64) -> Result<(), (String, String)> {
            if got < min {
                return fail(key, format!("must be at least {min} (got {got})"));
            }
            Ok(())
        }
        fn at_most(key: &str, got: u64, max: u64) -> Result<(), (String, String)> {
            if got > max {
                return fail(key, format!("must be at most {max} (got {got})"));
            }
            Ok(())
        }
        fn positive(key: &str, d: Duration) -> Result<(), (String, String)> {
            if d.is_zero() {
                return fail(key, "must be longer than 0");
            }
            Ok(())
        }

        if let Some(url) = &self.database.url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return fail(
                    "database.url",
                    "must be a PostgreSQL URL like postgres://user@host/db",
                );
            }
            if let Err(why) = tls_settings(url) {
                return fail("database.url", &why);
            }
        }
        if self.database.path.as_os_str().is_empty() {
            return fail("database.path", "must name a file");
        }
        positive("database.busy_timeout", self.database.busy_timeout)?;
        if self.database.busy_timeout > Duration::from_secs(3600) {
            return fail("database.busy_timeout", "must be at most 1h");
        }

        let d = &self.daemon;
        if d.queues.is_empty() {
            return fail(
                "daemon.queues",
                "must name at least one queue, or \"*\" for all",
            );
        }
        if let Some(q) = d.queues.iter().find(|q| q.trim().is_empty()) {
            return fail("daemon.queues", format!("has an empty queue name ({q:?})"));
        }
        if d.all_queues() && d.queues.len() > 1 {
            return fail(
                "daemon.queues",
                "\"*\" already means every queue; list it alone",
            );
        }
        positive("daemon.poll_interval", d.poll_interval)?;
        if d.poll_interval > Duration::from_secs(60) {
            return fail("daemon.poll_interval", "must be at most 60s");
        }
        if d.lease < Duration::from_secs(1) {
            return fail("daemon.lease", "must be at least 1s");
        }
        // A dead daemon's jobs wait out its lease before another takes
        // them: longer than a day is a stall, not a setting.
        if d.lease > Duration::from_secs(86_400) {
            return fail("daemon.lease", "must be at most 1day");
        }
        if d.lease < d.poll_interval * 3 {
            return fail(
                "daemon.lease",
                "must be at least three times daemon.poll_interval",
            );
        }
        if d.stats_interval < Duration::from_secs(1) {
            return fail("daemon.stats_interval", "must be at least 1s");
        }

        at_least("pool.threads", self.pool.threads as u64, 1)?;
        at_most("pool.threads", self.pool.threads as u64, 10_000)?;
        at_least("cpu.workers", self.cpu.workers as u64, 1)?;
        at_most("cpu.workers", self.cpu.workers as u64, 1_024)?;
        if self.cpu.memory_limit != 0 && self.cpu.memory_limit < 16 << 20 {
            return fail(
                "cpu.memory_limit",
                "must be at least 16MiB (or 0 for no limit)",
            );
        }
        at_least("cpu.max_jobs_per_worker", self.cpu.max_jobs_per_worker, 1)?;

        for (name, q) in &self.queues {
            if let Some(c) = q.concurrency {
                at_least(&format!("queues.{name}.concurrency"), c as u64, 1)?;
            }
        }

        at_least("retry.max_attempts", u64::from(self.retry.max_attempts), 1)?;
        positive("retry.backoff_base", self.retry.backoff_base)?;
        if self.retry.backoff_max < self.retry.backoff_base {
            return fail(
                "retry.backoff_max",
                "must not be shorter than retry.backoff_base",
            );
        }

        for kind in KNOWN_KINDS {
            let timeout = self.timeouts.for_kind(kind).unwrap_or_default();
            positive(&format!("timeouts.{kind}"), timeout)?;
        }
        at_least("limits.max_payload_bytes", self.limits.max_payload_bytes, 2)?;
        // SQLite's longest string (SQLITE_MAX_LENGTH) is 10^9 bytes.
        at_most(
            "limits.max_payload_bytes",
            self.limits.max_payload_bytes,
            1_000_000_000,
        )?;

        if let Some(h) = self.http.allow_hosts.iter().find(|h| h.trim().is_empty()) {
            return fail(
                "http.allow_hosts",
                format!("has an empty host name ({h:?})"),
            );
        }
        if self.http.user_agent.trim().is_empty() {
            return fail("http.user_agent", "must not be empty");
        }

        if !self.email.from.contains('@') {
            return fail(
                "email.from",
                format!("must be an email address (got {:?})", self.email.from),
            );
        }
        if self.email.dir.as_os_str().is_empty() {
            return fail("email.dir", "must name a folder");
        }
        if self.email.smtp.host.trim().is_empty() {
            return fail("email.smtp.host", "must not be empty");
        }
        at_least("email.smtp.port", u64::from(self.email.smtp.port), 1)?;

        if self.file.roots.is_empty() {
            return fail("file.roots", "must name at least one folder");
        }
        if self.file.roots.iter().any(|r| r.as_os_str().is_empty()) {
            return fail("file.roots", "has an empty path");
        }
        if self.exec.dir.as_os_str().is_empty() {
            return fail("exec.dir", "must name a folder");
        }
        if let Some(user) = &self.exec.user {
            crate::os::confine::lookup_user(user).or_else(|why| fail("exec.user", why))?;
        }

        for (name, cron) in &self.cron {
            let key = |k: &str| format!("cron.{name}.{k}");
            if cron.schedule.trim().is_empty() {
                return fail(&key("schedule"), "must not be empty");
            }
            if !KNOWN_KINDS.contains(&cron.kind.as_str()) {
                return fail(
                    &key("kind"),
                    format!(
                        "must be one of {} (got {:?})",
                        KNOWN_KINDS.join(", "),
                        cron.kind
                    ),
                );
            }
            if !cron.payload.is_object() {
                return fail(&key("payload"), "must be an inline table");
            }
            if cron.queue.trim().is_empty() {
                return fail(&key("queue"), "must not be empty");
            }
            if cron.max_attempts == Some(0) {
                return fail(&key("max_attempts"), "must be at least 1 (got 0)");
            }
            // The expression, the time zone and the payload against its kind
            // are checked by the daemon's cron, through `load_checked`.
        }
        Ok(())
    }

    /// Settings that are valid but probably a mistake, as `(key, why)`:
    /// the daemon logs each as `config.warning`, `check-config` prints them.
    pub fn warnings(&self) -> Vec<(String, String)> {
        let mut warnings = Vec::new();
        if let Some(addr) = self.metrics.listen {
            let token = !self.metrics.dashboard_token_env.is_empty()
                || !self.metrics.dashboard_token_file.as_os_str().is_empty();
            if !addr.ip().is_loopback() && !token {
                warnings.push((
                    "metrics.listen".to_string(),
                    format!(
                        "is {addr}, reachable from other hosts, and no dashboard token is set: anyone who reaches it reads every payload; set metrics.dashboard_token_env or _file, or listen on 127.0.0.1"
                    ),
                ));
            }
        }
        for root in &self.file.roots {
            if let Some(folder) = system_folder(root) {
                warnings.push((
                    "file.roots".to_string(),
                    format!("includes {folder}, a system folder: file jobs may read, replace and delete what is under it"),
                ));
            }
        }
        if let Some(folder) = system_folder(&self.exec.dir) {
            warnings.push((
                "exec.dir".to_string(),
                format!("is {folder}, a system folder: every program in it becomes a handler any job can run with arguments of its choosing"),
            ));
        }
        warnings
    }

    /// The daemon's queue limits for `queue`, or none.
    pub fn queue(&self, queue: &str) -> Option<&QueueConfig> {
        self.queues.get(queue)
    }

    /// The effective settings as TOML, secrets redacted (`check-config`).
    pub fn to_toml(&self) -> String {
        let text = toml::to_string_pretty(self)
            .unwrap_or_else(|e| format!("# cannot render config: {e}\n"));
        if self.database.url.is_none() {
            return text;
        }
        // With a URL the file path is not used: printing its default beside
        // the URL would suggest both are in play.
        let mut section = "";
        text.lines()
            .filter(|line| {
                if line.starts_with('[') {
                    section = line;
                }
                !(section == "[database]" && line.starts_with("path = "))
            })
            .map(|line| format!("{line}\n"))
            .collect()
    }
}

/// `path` as written if it is `/` or a folder of the operating system's
/// own (programs, libraries, configuration, kernel interfaces).
fn system_folder(path: &Path) -> Option<String> {
    const SYSTEM: &[&str] = &[
        "/",
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/lib",
        "/lib32",
        "/lib64",
        "/proc",
        "/root",
        "/run",
        "/sbin",
        "/sys",
        "/usr",
        "/usr/bin",
        "/usr/lib",
        "/usr/lib64",
        "/usr/libexec",
        "/usr/local/bin",
        "/usr/local/sbin",
        "/usr/sbin",
        "/var",
        "/var/lib",
    ];
    let text = path.to_str()?;
    let trimmed = text.trim_end_matches('/');
    let normal = if trimmed.is_empty() { "/" } else { trimmed };
    SYSTEM.contains(&normal).then(|| text.to_string())
}

/// Reads a secret from the environment variable `var` or the file `file`
/// (at most one may be set).
fn read_secret(
    section: &str,
    name: &str,
    var: &str,
    file: &Path,
    env: &HashMap<String, String>,
) -> Result<Option<Secret>, (String, String)> {
    let env_key = format!("{section}.{name}_env");
    let file_key = format!("{section}.{name}_file");
    match (var.is_empty(), file.as_os_str().is_empty()) {
        (true, true) => Ok(None),
        (false, false) => Err((env_key, format!("and {file_key} are both set; choose one"))),
        (false, true) => match env.get(var) {
            Some(value) if !value.is_empty() => Ok(Some(Secret(value.clone()))),
            _ => Err((
                env_key,
                format!("names the environment variable {var}, which is not set"),
            )),
        },
        (true, false) => match std::fs::read_to_string(file) {
            // A trailing newline is how editors save a one-line file.
            Ok(value) if !value.trim_end_matches(['\r', '\n']).is_empty() => Ok(Some(Secret(
                value.trim_end_matches(['\r', '\n']).to_string(),
            ))),
            Ok(_) => Err((
                file_key,
                format!("names {}, which is empty", file.display()),
            )),
            Err(e) => Err((
                file_key,
                format!("names {}, which cannot be read: {e}", file.display()),
            )),
        },
    }
}

/// The `JOBD_SECTION__KEY` variables, without the prefix. `JOBD_CONFIG` and
/// other variables without a section separator are not settings.
fn env_overrides(env: &HashMap<String, String>) -> HashMap<String, String> {
    env.iter()
        .filter_map(|(k, v)| {
            let rest = k.strip_prefix(ENV_PREFIX)?;
            rest.contains(ENV_SEPARATOR)
                .then(|| (rest.to_string(), v.clone()))
        })
        .collect()
}

/// Names the environment variable that set `key` (or a parent of it), else
/// the file.
fn source_of(key: &str, path: &Path, overrides: &HashMap<String, String>) -> String {
    let env_name = |k: &str| k.to_lowercase().replace(ENV_SEPARATOR, ".");
    overrides
        .keys()
        .find(|k| {
            let k = env_name(k);
            key == k || key.starts_with(&format!("{k}.")) || k.starts_with(&format!("{key}."))
        })
        .map(|k| format!("{ENV_PREFIX}{k}"))
        .unwrap_or_else(|| path.display().to_string())
}

/// Words for a deserialization error that follow the key: jobd's own
/// messages already read "must be …"; serde's get "is invalid: …". The
/// `config` crate appends " for key `x`", which jobd names itself.
fn serde_detail(detail: &str) -> String {
    let detail = match detail.rfind(" for key `") {
        Some(at) => &detail[..at],
        None => detail,
    };
    if detail.starts_with("must ") {
        detail.to_string()
    } else {
        format!("is invalid: {detail}")
    }
}

/// Durations as strings like `"250ms"`, `"30s"`, `"5m"`, `"7d"`.
pub mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Parses a duration string of at most 100 years ([`super::MAX_DURATION`]),
    /// with a message that shows the expected form.
    pub fn parse(s: &str) -> Result<Duration, String> {
        let d = parse_unbounded(s)?;
        if d > super::MAX_DURATION {
            return Err(format!("must be at most 100 years (got {s:?})"));
        }
        Ok(d)
    }

    /// Parses a duration string of any length (the caller bounds it).
    /// Months and years are refused: they have no fixed length (humantime
    /// reads `1M` as 30.44 days, where a reader may see a minute, and `1y`
    /// as 365.25 days).
    pub fn parse_unbounded(s: &str) -> Result<Duration, String> {
        let units = s
            .split(|c: char| c.is_ascii_digit() || c.is_whitespace() || c == '.')
            .filter(|u| !u.is_empty());
        for unit in units {
            if matches!(unit, "M" | "month" | "months" | "y" | "year" | "years") {
                return Err(format!(
                    "must be a duration in fixed units, ms to weeks: months and years vary in length (got {s:?}; write days, e.g. \"30d\" or \"365d\", and m for minutes)"
                ));
            }
        }
        humantime::parse_duration(s.trim()).map_err(|e| {
            format!("must be a duration like \"250ms\", \"30s\" or \"5m\" (got {s:?}: {e})")
        })
    }

    /// Serde: write the duration back in the same form.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    /// Serde: read a duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Text(String),
            Number(i64),
        }
        match Form::deserialize(d) {
            Ok(Form::Text(s)) => parse(&s).map_err(serde::de::Error::custom),
            Ok(Form::Number(n)) => Err(serde::de::Error::custom(format!(
                "must be a duration string like \"{n}s\" or \"{n}ms\" (got the number {n})"
            ))),
            Err(_) => Err(serde::de::Error::custom(
                "must be a duration string like \"250ms\", \"30s\" or \"5m\"",
            )),
        }
    }
}

/// Optional durations (absent: none).
mod opt_duration_str {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration_str::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::duration_str::deserialize(d).map(Some)
    }
}

/// Sizes as strings like `"512MiB"` or plain byte counts.
pub mod size_str {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serde: write sizes as byte counts.
    pub fn serialize<S: Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*n)
    }

    /// Serde: read `"512MiB"`, `"1MB"` or an integer.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Number(u64),
            Text(String),
        }
        let bad = |got: &str| {
            serde::de::Error::custom(format!(
                "must be a size like \"512MiB\" or a number of bytes (got {got})"
            ))
        };
        let n = match Form::deserialize(d) {
            Ok(Form::Number(n)) => n,
            Ok(Form::Text(s)) => {
                let text = s.trim();
                let unit =
                    text.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.' || c == ' ');
                // "1.5" would be rounded to 2 bytes, and "1Mb" read as a
                // megabyte where it says megabit: both are refused.
                if unit.is_empty() && text.contains('.') {
                    return Err(serde::de::Error::custom(format!(
                        "must be a whole number of bytes or a size with a unit like \"1.5MiB\" (got {s:?})"
                    )));
                }
                if unit.len() > 1 && unit.ends_with('b') {
                    return Err(serde::de::Error::custom(format!(
                        "must be a size in bytes: {s:?} reads as bits; write B, as in \"1MB\" or \"1MiB\""
                    )));
                }
                parse_size::parse_size(text).map_err(|_| bad(&format!("{s:?}")))?
            }
            Err(_) => return Err(bad("a value of another type")),
        };
        if n > super::MAX_SIZE {
            return Err(serde::de::Error::custom(format!(
                "must be at most 1PiB (got {n} bytes)"
            )));
        }
        Ok(n)
    }
}

/// How a connection is secured, from the URL's libpq-style `sslmode` and
/// `sslrootcert`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tls {
    /// Plain TCP or a Unix socket: `sslmode` absent, `disable`, `allow` or
    /// `prefer` (jobd does not try TLS unless told to require it).
    Off,
    /// TLS, the server's certificate verified (chain and host name) against
    /// `sslrootcert` or else the system's CA certificates: `sslmode`
    /// `require`, `verify-ca` or `verify-full`. Stricter than libpq, whose
    /// `require` encrypts without verifying.
    Verify {
        /// The CA file (PEM) that `sslrootcert` names.
        roots: Option<std::path::PathBuf>,
    },
}

/// Splits jobd's TLS settings off `url`: the URL the client library
/// parses (it knows neither `sslrootcert` nor the `verify-*` modes) and the
/// [`Tls`] to connect with. Err says what is wrong, for the config check.
pub fn tls_settings(url: &str) -> std::result::Result<(String, Tls), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), Tls::Off));
    };
    let (mut mode, mut roots) = (None, None);
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", value)) => mode = Some(value.to_string()),
            Some(("sslrootcert", value)) => roots = Some(std::path::PathBuf::from(value)),
            _ => kept.push(pair),
        }
    }
    let tls = match mode.as_deref() {
        None | Some("disable" | "allow" | "prefer") => {
            if roots.is_some() {
                return Err("sslrootcert needs sslmode=require or verify-full".into());
            }
            Tls::Off
        }
        Some("require" | "verify-ca" | "verify-full") => Tls::Verify { roots },
        Some(other) => {
            return Err(format!(
                "sslmode must be disable, allow, prefer, require, verify-ca or verify-full, not {other:?}"
            ))
        }
    };
    kept.push(match tls {
        Tls::Off => "sslmode=disable",
        Tls::Verify { .. } => "sslmode=require",
    });
    Ok((format!("{base}?{}", kept.join("&")), tls))
}

/// `url` with any password replaced, for messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:(redacted)@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, toml).unwrap();
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load_checked(
            &ConfigSource {
                secrets: true,
                path: &path,
                explicit: true,
                env: &env,
            },
            &crate::daemon::cron::check,
        )
        .map_err(|e| {
            e.to_string()
                .replace(&path.display().to_string(), "config.toml")
        })
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.pool.threads, 16);
        assert_eq!(c.daemon.poll_interval, Duration::from_millis(10));
        assert_eq!(c.daemon.queues, vec!["*"]);
        assert_eq!(c.http.deny_networks.len(), DEFAULT_DENY_NETWORKS.len());
    }

    #[test]
    fn impossible_values_name_the_key() {
        assert_eq!(
            load("[pool]\nthreads = 0", &[]).unwrap_err(),
            "config.toml: pool.threads must be at least 1 (got 0)"
        );
        let e = load("[queues.mail]\nrate = \"abc\"", &[]).unwrap_err();
        assert!(
            e.starts_with("config.toml: queues.mail.rate must be a rate like"),
            "{e}"
        );
        let e = load("[daemon]\npoll_interval = \"soon\"", &[]).unwrap_err();
        assert!(
            e.starts_with("config.toml: daemon.poll_interval must be a duration"),
            "{e}"
        );
        let e = load("[daemon]\npoll_interval = 10", &[]).unwrap_err();
        assert!(e.contains("\"10s\" or \"10ms\""), "{e}");
    }

    /// Regression: `daemon.lease = "99999999999999d"` was accepted and
    /// `lease_until` overflowed to a nonsense time. Every duration and size
    /// has an upper bound, refused naming the key.
    #[test]
    fn values_beyond_sane_bounds_are_refused_naming_the_key() {
        for (toml, want) in [
            (
                "[daemon]\nlease = \"99999999999999d\"",
                "daemon.lease must be at most 100 years (got \"99999999999999d\")",
            ),
            (
                "[daemon]\nlease = \"2days\"",
                "daemon.lease must be at most 1day",
            ),
            (
                "[retention]\nsucceeded = \"999999999d\"",
                "retention.succeeded must be at most 100 years",
            ),
            (
                "[timeouts]\nhttp = \"18446744073709551615s\"",
                "timeouts.http must be at most 100 years",
            ),
            (
                "[limits]\nmax_payload_bytes = \"9EiB\"",
                "limits.max_payload_bytes must be at most 1PiB",
            ),
            (
                "[limits]\nmax_payload_bytes = \"2GB\"",
                "limits.max_payload_bytes must be at most 1000000000",
            ),
            (
                "[database]\nbusy_timeout = \"2h\"",
                "database.busy_timeout must be at most 1h",
            ),
            (
                "[cron.x]\nschedule = \"@every 1m\"\nkind = \"noop\"\ntimeout = \"9999999999d\"",
                "cron.x.timeout must be at most 100 years",
            ),
        ] {
            let e = load(toml, &[]).unwrap_err();
            assert!(
                e.starts_with(&format!("config.toml: {want}")),
                "{toml}: {e}"
            );
        }
        assert!(load("[daemon]\nlease = \"1day\"", &[]).is_ok());
    }

    /// Regression: `1M` was a month (30.44 days), `10y` 10 × 365.25 days,
    /// the size `"1.5"` 2 bytes and `"1Mb"` a megabyte.
    #[test]
    fn units_without_a_fixed_or_clear_meaning_are_refused() {
        for (toml, want) in [
            (
                "[retention]\nsucceeded = \"1M\"",
                "retention.succeeded must be a duration in fixed units",
            ),
            (
                "[retention]\nsucceeded = \"10y\"",
                "months and years vary in length",
            ),
            ("[retention]\ndead = \"2 months\"", "write days"),
            (
                "[limits]\nmax_payload_bytes = \"1.5\"",
                "limits.max_payload_bytes must be a whole number of bytes",
            ),
            ("[limits]\nmax_payload_bytes = \"1Mb\"", "reads as bits"),
        ] {
            let e = load(toml, &[]).unwrap_err();
            assert!(e.contains(want), "{toml}: {e}");
        }
        let c = load(
            "[retention]\nsucceeded = \"30d\"\n[limits]\nmax_payload_bytes = \"1.5MiB\"",
            &[],
        )
        .unwrap();
        assert_eq!(c.retention.succeeded, Duration::from_secs(30 * 86_400));
        assert_eq!(c.limits.max_payload_bytes, 1_572_864);
        assert_eq!(
            load("[limits]\nmax_payload_bytes = \"1MB\"", &[])
                .unwrap()
                .limits
                .max_payload_bytes,
            1_000_000
        );
        assert_eq!(
            load("[daemon]\nshutdown_grace = \"1m\"", &[])
                .unwrap()
                .daemon
                .shutdown_grace,
            Duration::from_secs(60)
        );
    }

    #[test]
    fn a_bad_log_level_lists_the_levels_and_a_password_key_points_to_env_and_file() {
        assert_eq!(
            load("[log]\nlevel = \"verbose\"", &[]).unwrap_err(),
            "config.toml: log.level must be one of error, warn, info, debug, trace (got \"verbose\")"
        );
        assert_eq!(
            load("[log]\nlevel = \"WARN\"", &[]).unwrap().log.level,
            LogLevel::Warn
        );
        let e = load("[email.smtp]\npassword = \"hunter2\"", &[]).unwrap_err();
        assert!(
            e.contains("unknown key email.smtp.password; secrets are not written in the config: set email.smtp.password_env")
                && e.contains("email.smtp.password_file"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        let e = load("[metrics]\ndashboard_token = \"t\"", &[]).unwrap_err();
        assert!(e.contains("metrics.dashboard_token_env"), "{e}");
    }

    #[test]
    fn risky_settings_are_warned_about_naming_the_key() {
        let keys = |toml: &str| -> Vec<String> {
            load(toml, &[("T", "x")])
                .unwrap()
                .warnings()
                .into_iter()
                .map(|(key, detail)| format!("{key} {detail}"))
                .collect()
        };
        assert!(keys("").is_empty());
        assert!(keys("[metrics]\nlisten = \"127.0.0.1:9464\"").is_empty());
        assert!(
            keys("[metrics]\nlisten = \"0.0.0.0:9464\"\ndashboard_token_env = \"T\"").is_empty()
        );
        let w = keys("[metrics]\nlisten = \"0.0.0.0:9464\"");
        assert!(w[0].starts_with("metrics.listen is 0.0.0.0:9464, reachable from other hosts, and no dashboard token is set"), "{w:?}");
        let w = keys("[file]\nroots = [\"/srv/data\", \"/\", \"/etc/\"]");
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].starts_with("file.roots includes /, a system folder"),
            "{w:?}"
        );
        assert!(
            w[1].starts_with("file.roots includes /etc/, a system folder"),
            "{w:?}"
        );
        let w = keys("[exec]\ndir = \"/usr/bin\"");
        assert!(
            w[0].starts_with("exec.dir is /usr/bin, a system folder"),
            "{w:?}"
        );
        assert!(keys("[exec]\ndir = \"/var/lib/jobd/jobs\"").is_empty());
    }

    #[test]
    fn unknown_keys_and_types_are_named() {
        assert_eq!(
            load("[pool]\nthread = 3", &[]).unwrap_err(),
            "config.toml: unknown key pool.thread"
        );
        assert_eq!(
            load("[colour]\nx = 1", &[]).unwrap_err(),
            "config.toml: unknown key colour"
        );
        let e = load("[pool]\nthreads = \"many\"", &[]).unwrap_err();
        assert!(
            e.starts_with("config.toml: pool.threads is invalid: invalid type"),
            "{e}"
        );
    }

    #[test]
    fn environment_overrides_the_file_and_is_named_in_errors() {
        let c = load(
            "[pool]\nthreads = 4",
            &[
                ("JOBD_POOL__THREADS", "32"),
                ("JOBD_DAEMON__QUEUES", "mail,default"),
                ("JOBD_CONFIG", "ignored.toml"),
            ],
        )
        .unwrap();
        assert_eq!(c.pool.threads, 32);
        assert_eq!(c.daemon.queues, vec!["mail", "default"]);
        assert_eq!(
            load("", &[("JOBD_POOL__THREADS", "0")]).unwrap_err(),
            "JOBD_POOL__THREADS: pool.threads must be at least 1 (got 0)"
        );
    }

    #[test]
    fn secrets_come_from_the_environment_and_never_print() {
        let c = load(
            "[email.smtp]\npassword_env = \"SMTP_PW\"",
            &[("SMTP_PW", "hunter2")],
        )
        .unwrap();
        assert_eq!(c.email.smtp.password.as_ref().unwrap().expose(), "hunter2");
        assert!(!c.to_toml().contains("hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
        let e = load("[email.smtp]\npassword_env = \"NOPE\"", &[]).unwrap_err();
        assert!(
            e.contains("email.smtp.password_env") && e.contains("NOPE"),
            "{e}"
        );
    }

    #[test]
    fn rates_parse() {
        let r: Rate = "10/s".parse().unwrap();
        assert_eq!((r.count, r.per), (10, Duration::from_secs(1)));
        assert_eq!("100/m".parse::<Rate>().unwrap().to_string(), "100/m");
        assert!("0/s".parse::<Rate>().is_err());
        assert!("10/fortnight".parse::<Rate>().is_err());
    }

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact_url("postgres://jobd:s3cret@db.example:5432/jobs"),
            "postgres://jobd:(redacted)@db.example:5432/jobs"
        );
        assert_eq!(
            redact_url("postgres://jobd@127.0.0.1/test"),
            "postgres://jobd@127.0.0.1/test"
        );
    }

    #[test]
    fn tls_settings_leave_the_client_only_what_it_knows() {
        let plain = "postgres://h/db";
        assert_eq!(tls_settings(plain).unwrap(), (plain.to_string(), Tls::Off));
        assert_eq!(
            tls_settings("postgres://h/db?application_name=x&sslmode=prefer").unwrap(),
            (
                "postgres://h/db?application_name=x&sslmode=disable".to_string(),
                Tls::Off
            )
        );
        for mode in ["require", "verify-ca", "verify-full"] {
            assert_eq!(
                tls_settings(&format!(
                    "postgres://h/db?sslmode={mode}&sslrootcert=/ca.pem&x=1"
                ))
                .unwrap(),
                (
                    "postgres://h/db?x=1&sslmode=require".to_string(),
                    Tls::Verify {
                        roots: Some("/ca.pem".into())
                    }
                )
            );
        }
        assert!(tls_settings("postgres://h/db?sslmode=on").is_err());
        assert!(tls_settings("postgres://h/db?sslrootcert=/ca.pem").is_err());
    }
}
