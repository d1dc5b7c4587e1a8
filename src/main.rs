//! The `jobd` binary: parse the command line, run the command, and turn an
//! error into one sentence on stderr and an exit status (0, 1, or 2 for bad
//! usage).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // A CPU worker process of a running daemon: no command line, no config.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == jobd::daemon::pool::worker::WORKER_COMMAND)
    {
        return match jobd::daemon::pool::worker::run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("jobd: CPU worker {}: {e}", std::process::id());
                ExitCode::FAILURE
            }
        };
    }
    let cli = jobd::commands::cli::Cli::parse();
    let env = match environment() {
        Ok(env) => env,
        Err(name) => {
            eprintln!("jobd: the environment variable {name} is not valid UTF-8");
            return ExitCode::FAILURE;
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match jobd::commands::run(cli, &env, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jobd: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// The environment as text. A variable that is not UTF-8 is left out,
/// unless it is jobd's own (`JOBD_*`), which is refused by name: another
/// program's variable (a locale's, a path in another encoding) made every
/// command panic.
fn environment() -> Result<std::collections::HashMap<String, String>, String> {
    let mut env = std::collections::HashMap::new();
    for (name, value) in std::env::vars_os() {
        match (name.into_string(), value.into_string()) {
            (Ok(name), Ok(value)) => {
                env.insert(name, value);
            }
            (Ok(name), Err(_)) if name.starts_with("JOBD_") => return Err(name),
            (Err(name), _) if name.to_string_lossy().starts_with("JOBD_") => {
                return Err(format!("{:?}", name.to_string_lossy()))
            }
            _ => {}
        }
    }
    Ok(env)
}
