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
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
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
