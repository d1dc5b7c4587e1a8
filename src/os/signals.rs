//! Signals (docs/reference.md) turned into messages for the dispatcher: SIGTERM and
//! SIGINT ask it to drain and stop (a second one to stop at once), SIGHUP to
//! reload the config. The handler only records the signal; a thread forwards
//! it over a channel, so nothing unsafe happens inside the handler.

use crossbeam_channel::{Receiver, Sender};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// What the operator asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// SIGTERM / SIGINT: drain and stop (the second one: stop now).
    Stop,
    /// SIGHUP: re-read the config.
    Reload,
}

/// Installs the handlers and returns the channel the requests arrive on.
pub fn listen() -> std::io::Result<Receiver<Request>> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("jobd-signals".into())
        .spawn(move || forward(&mut signals, &tx))?;
    Ok(rx)
}

fn forward(signals: &mut Signals, tx: &Sender<Request>) {
    for signal in signals.forever() {
        let request = if signal == SIGHUP {
            Request::Reload
        } else {
            Request::Stop
        };
        if tx.send(request).is_err() {
            return;
        }
    }
}

/// A short name for a signal number, for messages.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        _ => "a signal",
    }
}

/// For a command that must not stop half-way (a bulk import between two
/// batches): from now on SIGINT and SIGTERM only set the flag returned,
/// which the command reads at its next safe point.
pub fn interrupt_flag() -> std::io::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register(signal, std::sync::Arc::clone(&flag))?;
    }
    Ok(flag)
}
