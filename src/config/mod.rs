//! Configuration: `config.toml` plus `JOBD_SECTION__KEY` environment
//! overrides → one validated [`Config`].
//!
//! Loading goes in two steps, like ripgrep's flags: the file and the
//! environment are merged and deserialized (a wrong type names the key), then
//! [`Config::validate`] (`validate.rs`) checks every value against what is possible (a zero
//! thread pool, a rate of `"abc"`) and names the key and where it came from.
//! Nothing else in jobd reads the environment or the file: the parts that
//! need settings are handed the `Config` (or a piece of it).
//!
//! Secrets (the SMTP password, the dashboard token) are read here, from an
//! environment variable or a file named in the config, and kept in [`Secret`],
//! which never prints its value.
//!
//! The folder: `mod.rs` loads (file, environment, defaults, the error that
//! names the key and its source), `sections.rs` holds one struct per
//! `[section]`, `validate.rs` the checks and warnings (a failed check is a
//! [`KeyError`], `error.rs`: the key and what is wrong, to which loading adds
//! where the key was set), `units.rs` durations and sizes, `secrets.rs` the
//! secrets, `database.rs` what `database.url` means (TLS, redaction).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod database;
mod error;
mod secrets;
mod sections;
mod units;
mod validate;

pub use database::{redact_url, tls_settings, Tls};
pub use error::KeyError;
use secrets::read_secret;
pub use secrets::Secret;
pub use sections::*;
pub(crate) use units::duration_str;
pub use units::{MAX_DURATION, MAX_SIZE};

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
    "http.block_on",
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

/// A check the layers above run on a loaded config: `Err(KeyError::new(key, why))`.
pub type SectionCheck = dyn Fn(&Config) -> Result<(), KeyError>;

/// The largest config file read: far beyond any real one (a long list of
/// cron schedules is a few KiB), and a cap on what a mistyped path costs.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

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
    /// `[keys.NAME]`
    pub keys: BTreeMap<String, KeyConfig>,
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

/// The raw shape of the file, before validation.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawConfig {
    database: DatabaseConfig,
    daemon: DaemonConfig,
    pool: PoolConfig,
    cpu: CpuConfig,
    queues: BTreeMap<String, QueueConfig>,
    keys: BTreeMap<String, KeyConfig>,
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

/// The config key a `JOBD_SECTION__KEY` variable (prefix removed) sets:
/// `section.key`, in lower case.
fn env_key(name: &str) -> String {
    name.to_lowercase().replace(ENV_SEPARATOR, ".")
}

/// Refuses a variable that names a section of the file in another case
/// (`JOBD_QUEUES__MAIL__…` for `[queues.Mail]`): names are case-sensitive
/// and a variable's are read in lower case, so it made a second section,
/// `mail`, and left the file's as it was, without a word.
fn named_in_another_case(
    text: &str,
    overrides: &HashMap<String, String>,
) -> Result<(), ConfigError> {
    let Ok(file) = text.parse::<toml::Table>() else {
        return Ok(());
    };
    for name in overrides.keys() {
        let key = env_key(name);
        let parts: Vec<&str> = key.split('.').collect();
        let (table, section) = match parts.as_slice() {
            ["exec", "handlers", section, ..] => {
                (file.get("exec").and_then(|e| e.get("handlers")), *section)
            }
            [top @ ("queues" | "cron" | "keys"), section, ..] => (file.get(*top), *section),
            _ => continue,
        };
        let Some(toml::Value::Table(table)) = table else {
            continue;
        };
        if table.contains_key(section) {
            continue;
        }
        if let Some(other) = table.keys().find(|k| k.to_lowercase() == section) {
            return Err(ConfigError::Invalid {
                source_name: format!("{ENV_PREFIX}{name}"),
                key: key.clone(),
                detail: format!(
                    "names {section:?}, but the file's section is {other:?}: names are case-sensitive and a variable's are read in lower case; set it in the file"
                ),
            });
        }
    }
    Ok(())
}

/// Names the environment variable that set `key` (or a parent of it), else
/// the file.
fn source_of(key: &str, path: &Path, overrides: &HashMap<String, String>) -> String {
    overrides
        .keys()
        .find(|k| {
            let k = env_key(k);
            key == k
                || key.starts_with(&format!("{k}."))
                || key.starts_with(&format!("{k}["))
                || k.starts_with(&format!("{key}."))
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
        let text = match crate::os::bounded::read_to_string(path, MAX_CONFIG_BYTES) {
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
        // The file's values, typed as written: the merge below coerces (a
        // variable is always text, so "8" must become 8), and on its own it
        // took `fair = "yes"` or `fleet = 1` in the file for true.
        if let Err(e) = serde_path_to_error::deserialize::<_, RawConfig>(
            toml::Deserializer::parse(&text).map_err(|e| ConfigError::Unreadable {
                path: path.to_path_buf(),
                detail: format!("is not valid TOML: {e}"),
            })?,
        ) {
            let key = e.path().to_string();
            return Err(ConfigError::Invalid {
                source_name: path.display().to_string(),
                detail: serde_detail(e.inner().message()),
                key,
            });
        }
        let overrides = env_overrides(source.env);
        named_in_another_case(&text, &overrides)?;
        // Each variable overrides its key as text, read like the file's
        // values by their key's type (the `config` crate's own parsing
        // rounded `8.5` to 9 and wrapped a number too large); a list is
        // split at commas.
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(&text, config::FileFormat::Toml));
        for (name, value) in &overrides {
            let key = env_key(name);
            let set = if LIST_KEYS.contains(&key.as_str()) {
                let items: Vec<String> = (value.split(',').map(str::to_string))
                    .filter(|item| !item.is_empty())
                    .collect();
                builder.set_override(&key, items)
            } else {
                builder.set_override(&key, value.clone())
            };
            builder = set.map_err(|e| ConfigError::Invalid {
                source_name: format!("{ENV_PREFIX}{name}"),
                key: key.clone(),
                detail: format!("cannot be set: {e}"),
            })?;
        }
        let built = builder.build().map_err(|e| ConfigError::Unreadable {
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
            .map_err(|KeyError { key, detail }| ConfigError::Invalid {
                source_name: origin(&key),
                key,
                detail,
            })
    }

    /// Validates the raw settings.
    fn from_raw(
        raw: RawConfig,
        path: &Path,
        env: &HashMap<String, String>,
        path_set: bool,
        secrets: bool,
    ) -> Result<Config, KeyError> {
        let mut config = Config {
            database: raw.database,
            daemon: raw.daemon,
            pool: raw.pool,
            cpu: raw.cpu,
            queues: raw.queues,
            keys: raw.keys,
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
            return Err(KeyError::new(
                "database.url",
                "and database.path are both set; keep one (url for PostgreSQL, path for SQLite)",
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

    /// The keyed limits and how keys are derived, for the claims.
    pub fn key_rules(&self) -> crate::keys::KeyRules {
        crate::keys::KeyRules {
            // Checked by validate(): every glob compiles.
            limits: self
                .keys
                .iter()
                .filter_map(|(name, k)| {
                    crate::keys::KeyLimit::new(
                        name,
                        &k.pattern,
                        k.concurrency,
                        k.rate.map(|r| crate::keys::KeyRate {
                            count: r.count,
                            per: r.per,
                        }),
                    )
                    .ok()
                })
                .chain(
                    self.capped_handlers()
                        .map(|(name, n)| crate::keys::handler_limit(name, n)),
                )
                .collect(),
            smtp_relay: (self.email.transport == EmailTransport::Smtp)
                .then(|| self.email.smtp.host.clone()),
            handlers: self
                .capped_handlers()
                .map(|(name, _)| name.to_string())
                .collect(),
        }
    }

    /// The persistent handlers with `instances`, and how many.
    fn capped_handlers(&self) -> impl Iterator<Item = (&str, u32)> + '_ {
        self.exec.handlers.iter().filter_map(|(name, h)| {
            (h.mode == HandlerMode::Persistent)
                .then_some(h.instances)
                .flatten()
                .map(|n| (name.as_str(), n))
        })
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

#[cfg(test)]
mod tests;
