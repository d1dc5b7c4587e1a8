//! The CPU worker process: what `jobd` runs as when the daemon re-executes
//! itself in its hidden worker mode (`jobd __worker`).
//!
//! A worker reads a [`Setup`] frame, limits itself (`RLIMIT_AS` from
//! `cpu.memory_limit`, a lower CPU priority, death with its parent), says
//! [`FromWorker::Ready`] and then runs one [`Order`] at a time, answering
//! each with [`FromWorker::Done`]. It exits when its stdin closes. It keeps
//! no state between jobs that a kill could lose: the daemon kills it at a
//! job's deadline and starts another.

use std::io::{self, Write};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crate::daemon::executor::run_kind;
use crate::daemon::pool::frame::{self, FromWorker, Order, Setup, ToWorker};
use crate::kinds::{Context, JobError, Registry};

/// The hidden command-line word that starts a worker.
pub const WORKER_COMMAND: &str = "__worker";

/// Runs a worker on this process's stdin and stdout until stdin closes.
pub fn run() -> io::Result<()> {
    // Dies with the daemon thread that started it, even by `kill -9`. Should
    // the daemon be gone already, stdin is closed and the loop ends at once.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    // Nothing the daemon inherited reaches a handler; a handler's `setsid`
    // children become ours when it exits, to be killed with its job; and
    // a handler cannot read this process's memory.
    crate::os::confine::close_inherited_descriptors();
    crate::os::confine::become_worker()?;
    crate::os::confine::not_dumpable()?;
    let mut input = io::stdin().lock();
    let mut output = io::stdout().lock();
    let Some(ToWorker::Setup(setup)) = frame::read::<ToWorker>(&mut input)? else {
        return Ok(());
    };
    limit(&setup)?;
    let registry = Registry::cpu(&setup.file, &setup.exec);
    frame::write(&mut output, &FromWorker::Ready)?;
    while let Some(message) = frame::read::<ToWorker>(&mut input)? {
        let ToWorker::Run(order) = message else {
            continue;
        };
        let answer = {
            let _job = crate::os::confine::running_job();
            run_order(&registry, &order, &mut output)
        };
        frame::write(&mut output, &FromWorker::Warm(registry.warm_handlers()))?;
        frame::write(&mut output, &FromWorker::Done(answer))?;
    }
    Ok(())
}

/// Applies the setup's limits to this process (and so to the handlers it
/// starts, which inherit them).
fn limit(setup: &Setup) -> io::Result<()> {
    if setup.memory_limit > 0 {
        let bytes = Some(setup.memory_limit);
        rustix::process::setrlimit(
            rustix::process::Resource::As,
            rustix::process::Rlimit {
                current: bytes,
                maximum: bytes,
            },
        )?;
    }
    // Best effort: a lower priority keeps the dispatcher and IO threads
    // responsive while CPU jobs use every core.
    let _ = rustix::process::setpriority_process(None, setup.nice);
    Ok(())
}

fn run_order(
    registry: &Registry,
    order: &Order,
    output: &mut impl Write,
) -> Result<Option<String>, JobError> {
    let Some(kind) = registry.get(&order.kind) else {
        return Err(JobError::permanent(format!(
            "unknown kind {:?} for the CPU pool (it runs: {})",
            order.kind,
            registry.names().join(", ")
        )));
    };
    // Nobody inside the worker cancels: the daemon kills the worker instead.
    let cancel = AtomicBool::new(false);
    let output = std::cell::RefCell::new(output);
    let report = |report: crate::kinds::Report| {
        let _ = frame::write(*output.borrow_mut(), &FromWorker::Report(report));
    };
    let spawned = |pgid: i32| {
        // If the daemon cannot hear this, it cannot hear the answer either,
        // and it treats the silence as the worker's death.
        let _ = frame::write(*output.borrow_mut(), &FromWorker::Spawned { pgid });
    };
    let ctx = Context {
        id: order.id,
        attempt: order.attempt,
        queue: &order.queue,
        deadline: Instant::now() + Duration::from_millis(order.timeout_ms),
        cancel: &cancel,
        spawned: Some(&spawned),
        inputs: order.inputs.as_deref(),
        report: Some(&report),
    };
    run_kind(&**kind, &ctx, &order.payload)
}
