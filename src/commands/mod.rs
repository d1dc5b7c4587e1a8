//! What each CLI command does, on top of the [`crate::store::Store`] trait and the
//! [`Config`]. `main` parses the arguments, and [`run`] loads the config,
//! opens the store in the mode the command needs and calls one function here.
//!
//! Commands print their answers to the writer they are given (stdout in the
//! binary) and return typed errors; only `main` turns an error into a
//! sentence on stderr and an exit status.

mod admin;
mod batch;
pub mod cli;
mod enqueue;
mod handlers;
mod inspect;
mod keys;
mod migrate;
mod open;
pub(crate) mod output;

use open::open;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use crate::commands::cli::{Cli, Command};
use crate::config::{Config, ConfigSource, DEFAULT_CONFIG_PATH};
use crate::error::{Error, Result};

/// Runs one command to its end, writing its answer to `out`.
pub fn run(cli: Cli, env: &HashMap<String, String>, out: &mut dyn Write) -> Result<()> {
    let explicit = cli.config.is_some();
    let path = cli
        .config
        .unwrap_or_else(|| Path::new(DEFAULT_CONFIG_PATH).to_path_buf());
    // Only the daemon uses the secrets; check-config reports on them.
    let secrets = matches!(cli.command, Command::Run | Command::CheckConfig);
    let config = Config::load_checked(
        &ConfigSource {
            path: &path,
            explicit,
            env,
            secrets,
        },
        &crate::daemon::cron::check,
    )?;
    match cli.command {
        Command::Run => run_daemon(config, &path, explicit, env),
        Command::CheckConfig => admin::check_config(&config, out),
        Command::Migrate(args) => migrate::migrate(&config, args, out),
        Command::Cron => inspect::cron(&config, open(&config)?.as_mut(), out),
        Command::Keys(args) => keys::keys(&config, open(&config)?.as_mut(), args, out),
        Command::Batch(args) => batch::batch(open(&config)?.as_mut(), args, out),
        Command::Handlers(args) => handlers::handlers(open(&config)?.as_mut(), args, out),
        Command::Enqueue(args) => enqueue::enqueue(&config, *args, out),
        Command::List(args) => {
            inspect::list(&redaction(&config), open(&config)?.as_mut(), args, out)
        }
        Command::Show(args) => inspect::show(&config, open(&config)?.as_mut(), args, out),
        Command::Stats(args) => inspect::stats(open(&config)?.as_mut(), args, out),
        Command::Tail(args) => {
            inspect::tail(&redaction(&config), open(&config)?.as_mut(), args, out)
        }
        Command::Retry(args) => admin::retry(open(&config)?.as_mut(), args, out),
        Command::Cancel(args) => admin::cancel(open(&config)?.as_mut(), args, out),
        Command::Prune(args) => admin::prune(&config, open(&config)?.as_mut(), args, out),
        Command::Pause(args) => {
            admin::set_paused(&config, open(&config)?.as_mut(), args, true, out)
        }
        Command::Resume(args) => {
            admin::set_paused(&config, open(&config)?.as_mut(), args, false, out)
        }
    }
}

/// Runs `jobd run`: logging, signals, a reload that re-reads the same file
/// and environment, then the daemon until it is told to stop.
fn run_daemon(
    config: Config,
    path: &Path,
    explicit: bool,
    env: &HashMap<String, String>,
) -> Result<()> {
    if config.exec.user.is_some() && !rustix::process::geteuid().is_root() {
        return Err(Error::Failed(format!(
            "exec.user is set, but the daemon runs as uid {}, not root: only root can run handlers as another user (unset exec.user, or start jobd as root)",
            rustix::process::geteuid().as_raw()
        )));
    }
    // Before any thread starts: the secrets were read into the config, and
    // must not stay readable in /proc/<pid>/environ or memory.
    // JOBD_* too: JOBD_DATABASE__URL may carry a PostgreSQL password (the
    // config, and the reload's copy of the environment, keep what they need).
    let jobd_vars: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("JOBD_"))
        .collect();
    let mut secrets: Vec<&str> = vec![
        &config.email.smtp.password_env,
        &config.metrics.dashboard_token_env,
    ];
    secrets.extend(jobd_vars.iter().map(String::as_str));
    crate::os::confine::scrub_environment(&secrets);
    let undumpable = crate::os::confine::not_dumpable();
    let notifier = crate::os::notify::Notifier::from_env(env);
    // journald stamps every line itself.
    let timestamps = !env.contains_key("JOURNAL_STREAM");
    let log = crate::logging::init(&config.log, timestamps)?;
    crate::logging::log_panics();
    log_warnings(&config);
    if let Err(e) = undumpable {
        crate::event!(Warn, "daemon.dumpable", error:% = e);
    }
    let requests = crate::os::signals::listen().map_err(|source| Error::Io {
        what: "cannot install the signal handlers".into(),
        source,
    })?;
    let path = path.to_path_buf();
    let env = env.clone();
    // A file the daemon started from must still be there at a reload: the
    // defaults apply only to a daemon that started without one. (A reload
    // while the default ./config.toml was gone, being rewritten, resized
    // the pools to the defaults and stopped every schedule.)
    let explicit = explicit || path.exists();
    let reload: crate::daemon::dispatcher::Reload = Box::new(move || {
        let config = Config::load_checked(
            &ConfigSource {
                path: &path,
                explicit,
                env: &env,
                secrets: true,
            },
            &crate::daemon::cron::check,
        )
        .map_err(|e| e.to_string())?;
        log.reload(&config.log).map_err(|e| e.to_string())?;
        log_warnings(&config);
        Ok(config)
    });
    let registry = crate::kinds::Registry::builtin(&config);
    // CPU workers re-execute this very binary.
    let program = std::env::current_exe().map_err(|source| Error::Io {
        what: "cannot find the jobd binary to start CPU workers from".into(),
        source,
    })?;
    let process = crate::daemon::FromProcess {
        requests,
        reload,
        worker_program: program,
        notifier,
    };
    // What a CPU worker that dies on its own leaves is the daemon's to end
    // (the process's, not the library's: a daemon run inside another
    // program must not take that program's orphans).
    crate::os::confine::adopt_orphans().map_err(|source| Error::Io {
        what: "cannot become the reaper of the CPU workers' processes".into(),
        source,
    })?;
    crate::daemon::run(config, registry, process)?;
    Ok(())
}

/// Logs each of the config's warnings as `config.warning`.
fn log_warnings(config: &Config) {
    for (key, detail) in config.warnings() {
        crate::event!(
            Warn,
            "config.warning",
            key = key.as_str(),
            detail = detail.as_str()
        );
    }
}

/// What display hides, from `[http]`.
fn redaction(config: &crate::config::Config) -> crate::kinds::Redaction {
    crate::kinds::Redaction::new(&config.http)
}
