//! `exec` (docs/reference.md, a CPU kind): runs an executable handler from the
//! handlers folder (`exec.dir`) with the job's `args` as JSON on stdin.
//!
//! The handler name is a plain name (`[A-Za-z0-9_-]+`) looked up directly
//! in the folder: no path, no shell. The handler runs in its own process
//! group with a minimal environment (`PATH`, `JOBD_JOB_ID`, `JOBD_ATTEMPT`,
//! `JOBD_QUEUE`, `JOBD_MESSAGES_FD`), in the first file root, and dies
//! with the worker that started it (`PR_SET_PDEATHSIG`). Its group is reported through
//! [`Context::spawned`] so the pool's kill at the deadline reaches every
//! process in it; when the handler exits, whatever it left running is
//! killed too, in its group or out of it (the worker is a child subreaper,
//! see [`crate::os::confine`]), so a job's processes end with the job. A
//! handler is a regular file, never a symbolic link; with `exec.user` set
//! (the daemon running as root) it runs as that user.
//!
//! Its output is read concurrently and bounded: stdout up to
//! [`MAX_STDOUT`] (the rest is read and dropped), stderr keeping its last
//! [`STDERR_TAIL`] bytes, so a handler that writes megabytes neither
//! blocks nor grows the worker's memory. Messages (progress, log lines,
//! heartbeats) come as JSON lines on descriptor 4 (`MESSAGES_FD`) and
//! are passed on while it runs; a flow's inputs go out on descriptor 3.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd as _, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::config::{ExecConfig, FileConfig};
use crate::kinds::kind::{parse_payload, Context, JobError, Kind};
use crate::kinds::warm::{side_message, Line};

/// Stdout beyond this is read and dropped; the result says `truncated`.
pub const MAX_STDOUT: usize = 1 << 20;

/// How much of the end of stderr goes into `last_error` (docs/reference.md).
pub const STDERR_TAIL: usize = 4096;

/// The exit status that asks for a retry (`EX_TEMPFAIL` of sysexits.h).
pub const EX_TEMPFAIL: i32 = 75;

/// The `PATH` handlers get: the system folders, enough for `#!/usr/bin/env
/// python3` and the usual tools, and nothing of the daemon's environment.
pub const HANDLER_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// How long to wait for the output pipes to close after the handler exited
/// and its group was killed. Only a process that left the group (`setsid`)
/// can hold them longer; its output is then left unread.
const OUTPUT_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    handler: String,
    #[serde(default)]
    args: serde_json::Value,
}

/// The `exec` kind.
pub struct Exec {
    dir: PathBuf,
    cwd: PathBuf,
    /// `exec.user`: the user and group handlers run as, or why that user
    /// cannot be found on this machine.
    run_as: Option<Result<(u32, u32), String>>,
    /// `[exec.handlers.NAME]`: how each named handler runs.
    handlers: std::collections::BTreeMap<String, crate::config::HandlerConfig>,
    /// This worker's warm handler processes.
    warm: crate::kinds::warm::Warm,
}

impl Exec {
    /// Handlers from `exec.dir`, run in the first of `file.roots`; relative
    /// folders are taken against the daemon's working folder.
    pub fn new(exec: &ExecConfig, file: &FileConfig) -> Exec {
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let dir = absolute(&exec.dir);
        let cwd = file
            .roots
            .first()
            .map_or_else(|| dir.clone(), |r| absolute(r));
        let run_as = exec.user.as_deref().map(crate::os::confine::lookup_user);
        Exec {
            dir,
            cwd,
            run_as,
            handlers: exec.handlers.clone(),
            warm: crate::kinds::warm::Warm::default(),
        }
    }

    /// The handler's process, set up as every handler runs: a minimal
    /// environment, the first file root as its folder, piped stdio, its own
    /// process group, `exec.user`, and death with the worker that starts
    /// it (if the worker is already gone, it does not start at all).
    fn command(&self, path: &Path, name: &str) -> Result<Command, JobError> {
        let mut command = Command::new(path);
        command
            .env_clear()
            .env("PATH", HANDLER_PATH)
            .current_dir(&self.cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        match &self.run_as {
            // std drops supplementary groups too when it switches a root
            // process's user.
            Some(Ok((uid, gid))) => {
                command.uid(*uid).gid(*gid);
            }
            Some(Err(why)) => {
                return Err(JobError::transient(format!(
                    "exec handler {name} cannot be started: exec.user {why}"
                )))
            }
            None => {}
        }
        let worker = rustix::process::getpid();
        // SAFETY: the closure runs in the forked child before exec, and
        // `die_with` only makes system calls that are safe there.
        unsafe {
            command.pre_exec(move || die_with(worker));
        }
        Ok(command)
    }

    /// The handler's file, checked: a plain name, a regular file directly
    /// in the folder, executable.
    fn handler(&self, name: &str) -> Result<PathBuf, JobError> {
        if !crate::job::is_handler_name(name) {
            return Err(JobError::permanent(format!(
                "payload field handler: {name:?} is not a handler name (letters, digits, _ and - only; no path)"
            )));
        }
        let path = self.dir.join(name);
        // Not followed: a link to /bin/sh would run a job's args as shell
        // commands, and one to anywhere makes the folder's review moot.
        let meta = std::fs::symlink_metadata(&path).map_err(|e| {
            JobError::permanent(match e.kind() {
                std::io::ErrorKind::NotFound => format!(
                    "exec handler {name} is not in the handlers folder {} (exec.dir)",
                    self.dir.display()
                ),
                _ => format!("exec handler {name} cannot be looked at: {e}"),
            })
        })?;
        if meta.file_type().is_symlink() {
            return Err(JobError::permanent(format!(
                "exec handler {name} in {} is a symbolic link; handlers must be regular files in exec.dir (copy the program there or write a wrapper script)",
                self.dir.display()
            )));
        }
        if !meta.is_file() {
            return Err(JobError::permanent(format!(
                "exec handler {name} in {} is not a regular file",
                self.dir.display()
            )));
        }
        if meta.permissions().mode() & 0o111 == 0 {
            return Err(JobError::permanent(format!(
                "exec handler {name} in {} is not executable (chmod +x it)",
                self.dir.display()
            )));
        }
        Ok(path)
    }
}

/// Run in a handler's forked child before exec: asks to die with `worker`,
/// and fails the start if `worker` is already gone (the child would
/// otherwise outlive it). Between fork and exec a child of a threaded
/// process may only make async-signal-safe calls, and must not allocate:
/// another thread may have held the allocator's lock at the fork.
fn die_with(worker: rustix::process::Pid) -> std::io::Result<()> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    if rustix::process::getppid() != Some(worker) {
        // ESRCH, "no such process": the worker. A raw code allocates
        // nothing, and is all std passes back to the parent anyway.
        return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

/// What the reader threads hand back.
enum Output {
    Stdout { bytes: Vec<u8>, truncated: bool },
    Stderr { tail: Vec<u8>, cut: bool },
}

/// Reads `input` to its end, keeping the first `limit` bytes.
fn read_head(mut input: impl Read, limit: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut truncated = false;
    loop {
        match input.read(&mut buf) {
            Ok(0) => return (kept, truncated),
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                truncated |= n > room;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return (kept, truncated),
        }
    }
}

/// Reads `input` to its end, keeping the last `limit` bytes.
fn read_tail(mut input: impl Read, limit: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut cut = false;
    loop {
        match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 2 * limit {
                    kept.drain(..kept.len() - limit);
                    cut = true;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if kept.len() > limit {
        kept.drain(..kept.len() - limit);
        cut = true;
    }
    (kept, cut)
}

/// The descriptor on which a handler in a flow reads its inputs.
const INPUTS_FD: i32 = 3;

/// The descriptor on which a one-shot handler may write messages
/// (progress, log lines, heartbeats: the JSON lines a warm handler writes
/// before its outcome), apart from stdout, which is its result.
const MESSAGES_FD: i32 = 4;

/// The descriptors a handler gets beyond stdio are first made at or above
/// this, above those they are moved to, so moving one in the child never
/// overwrites the source of another.
const FIRST_SPARE_FD: i32 = 10;

/// How often the wait for a one-shot handler whose messages descriptor is
/// still open looks whether it exited.
const MESSAGES_CHECK: Duration = Duration::from_millis(50);

/// Run in a handler's forked child before exec: moves each descriptor to
/// its number (dup2 leaves the copy without close-on-exec; the sources,
/// at [`FIRST_SPARE_FD`] or above, close at exec). Only dup2, no
/// allocation (see [`die_with`]).
fn move_descriptors(moves: &[Option<(RawFd, RawFd)>]) -> std::io::Result<()> {
    for &(from, to) in moves.iter().flatten() {
        // SAFETY: dup2 takes plain numbers; the sources are open.
        if unsafe { libc::dup2(from, to) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Passes on one line of a one-shot handler's messages; false at their
/// end, or the fault the line is.
fn pass_on(ctx: &Context<'_>, line: Line) -> Result<bool, String> {
    match line {
        Line::Text(text) => {
            if let Some(report) = side_message(&text, ctx.id)? {
                if let Some(send) = ctx.report {
                    send(report);
                }
            }
            Ok(true)
        }
        Line::TooLong => Err(crate::kinds::warm::too_long()),
        Line::Closed => Ok(false),
    }
}

impl Kind for Exec {
    fn name(&self) -> &'static str {
        "exec"
    }

    fn warm_handlers(&self) -> Vec<crate::job::HandlerProcess> {
        self.warm.processes()
    }

    // Long: one attempt of a handler from spawn to classified outcome (limits, stdin, output caps, deadline, exit status), in the order they happen.
    fn run(&self, ctx: &Context<'_>, payload: &str) -> Result<Option<String>, JobError> {
        let args: Payload = parse_payload(payload)?;
        let name = args.handler.as_str();
        let path = self.handler(name)?;
        if let Some(handler) = self.handlers.get(name) {
            if handler.mode == crate::config::HandlerMode::Persistent {
                return self.warm.run(name, &path, handler, ctx, &args.args, || {
                    self.command(&path, name)
                });
            }
        }
        let mut command = self.command(&path, name)?;
        command
            .env("JOBD_JOB_ID", ctx.id.to_string())
            .env("JOBD_ATTEMPT", ctx.attempt.to_string())
            .env("JOBD_QUEUE", ctx.queue);
        let cannot_start = |e: rustix::io::Errno| {
            JobError::transient(format!("exec handler {name} cannot be started: {e}"))
        };
        let spare = |fd: OwnedFd| {
            rustix::io::fcntl_dupfd_cloexec(&fd, FIRST_SPARE_FD).map_err(cannot_start)
        };
        // A flow's inputs (the parents' outcomes) go on descriptor 3, so
        // stdin stays the args every handler already reads.
        let inputs = match ctx.inputs {
            Some(text) => {
                let (reader, writer) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                    .map_err(cannot_start)?;
                command.env("JOBD_INPUTS_FD", INPUTS_FD.to_string());
                Some((
                    spare(reader)?,
                    std::fs::File::from(writer),
                    text.as_bytes().to_vec(),
                ))
            }
            None => None,
        };
        // Messages (progress, log lines) come on descriptor 4, apart from
        // stdout, which is the result.
        let (messages, messages_writer) =
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(cannot_start)?;
        let messages_writer = spare(messages_writer)?;
        command.env("JOBD_MESSAGES_FD", MESSAGES_FD.to_string());
        let moves = [
            inputs
                .as_ref()
                .map(|(reader, _, _)| (reader.as_raw_fd(), INPUTS_FD)),
            Some((messages_writer.as_raw_fd(), MESSAGES_FD)),
        ];
        // SAFETY: the closure runs in the forked child before exec, and
        // `move_descriptors` only calls dup2 and allocates nothing.
        unsafe {
            command.pre_exec(move || move_descriptors(&moves));
        }
        let mut child = command.spawn().map_err(|e| {
            let message = format!("exec handler {name} cannot be started: {e}");
            match e.raw_os_error() {
                // Not a program (a script without #!) or not allowed to run.
                Some(libc::ENOEXEC) | Some(libc::EACCES) | Some(libc::ENOENT) => {
                    JobError::permanent(message)
                }
                _ => JobError::transient(message),
            }
        })?;
        let pgid = child.id() as i32;
        if let Some(spawned) = ctx.spawned {
            spawned(pgid);
        }
        // The handler holds its own copy: the pipe ends when it (and what
        // it started) closed that.
        drop(messages_writer);
        let messages = crate::kinds::warm::read_lines(std::fs::File::from(messages));
        if let Some((reader, mut writer, text)) = inputs {
            // The handler holds its own copy; like stdin, it may never read.
            drop(reader);
            std::thread::spawn(move || {
                let _ = writer.write_all(&text);
            });
        }
        let (tx, rx) = mpsc::channel();
        if let Some(mut stdin) = child.stdin.take() {
            let input = serde_json::to_vec(&args.args).unwrap_or_default();
            // A handler may never read its stdin; the write must not block
            // the reading of its output.
            std::thread::spawn(move || {
                let _ = stdin.write_all(&input);
            });
        }
        if let Some(stdout) = child.stdout.take() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let (bytes, truncated) = read_head(stdout, MAX_STDOUT);
                let _ = tx.send(Output::Stdout { bytes, truncated });
            });
        }
        if let Some(stderr) = child.stderr.take() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let (tail, cut) = read_tail(stderr, STDERR_TAIL);
                let _ = tx.send(Output::Stderr { tail, cut });
            });
        }
        drop(tx);
        let cannot_wait = |e: std::io::Error| {
            JobError::transient(format!("exec handler {name}: cannot wait for it: {e}"))
        };
        // Messages are passed on as they come. The end of their pipe does
        // not say the handler exited (a process it started may hold the
        // descriptor), so the handler is looked at too.
        let mut fault: Option<String> = None;
        let mut open = true;
        let status = loop {
            if !open {
                break child.wait().map_err(cannot_wait)?;
            }
            match messages.recv_timeout(MESSAGES_CHECK) {
                Ok(line) => match pass_on(ctx, line) {
                    Ok(more) => open = more,
                    Err(why) => {
                        // The attempt has failed: end it now, not at its
                        // deadline.
                        if let Some(group) = rustix::process::Pid::from_raw(pgid) {
                            let _ = rustix::process::kill_process_group(
                                group,
                                rustix::process::Signal::KILL,
                            );
                        }
                        fault = Some(why);
                        open = false;
                    }
                },
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => open = false,
            }
            if let Some(status) = child.try_wait().map_err(cannot_wait)? {
                break status;
            }
        };
        // Whatever the handler left running in its group ends with the job,
        // and so does what left the group (`setsid`): the worker is a child
        // subreaper, so those became its children when their parents died.
        if let Some(group) = rustix::process::Pid::from_raw(pgid) {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        crate::os::confine::kill_leftovers(OUTPUT_WAIT, &self.warm.pids());
        let until = Instant::now() + OUTPUT_WAIT;
        // What it wrote just before it exited is still in the pipe.
        while open && fault.is_none() {
            match messages.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(line) => match pass_on(ctx, line) {
                    Ok(more) => open = more,
                    Err(why) => fault = Some(why),
                },
                Err(_) => break,
            }
        }
        let (mut stdout, mut truncated, mut stderr, mut cut) =
            (Vec::new(), false, Vec::new(), false);
        for _ in 0..2 {
            match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(Output::Stdout {
                    bytes,
                    truncated: t,
                }) => (stdout, truncated) = (bytes, t),
                Ok(Output::Stderr { tail, cut: c }) => (stderr, cut) = (tail, c),
                Err(_) => break,
            }
        }
        let stderr_note = || {
            let text = String::from_utf8_lossy(&stderr);
            let text = text.trim();
            match (text.is_empty(), cut) {
                (true, _) => String::new(),
                (false, false) => format!("; stderr: {text}"),
                (false, true) => format!("; stderr (last {STDERR_TAIL} bytes): …{text}"),
            }
        };
        if let Some(why) = fault {
            return Err(JobError::transient(format!(
                "exec handler {name} broke the protocol on its messages descriptor ({MESSAGES_FD}): {why}{}",
                stderr_note()
            )));
        }
        match (status.code(), status.signal()) {
            (Some(0), _) => {
                let parsed = (!truncated)
                    .then(|| serde_json::from_slice::<serde_json::Value>(&stdout).ok())
                    .flatten();
                let result = match parsed {
                    Some(value) => value,
                    None if truncated => serde_json::json!({
                        "stdout": String::from_utf8_lossy(&stdout),
                        "truncated": true,
                    }),
                    None => serde_json::json!({ "stdout": String::from_utf8_lossy(&stdout) }),
                };
                Ok(Some(result.to_string()))
            }
            (Some(EX_TEMPFAIL), _) => Err(JobError::transient(format!(
                "exec handler {name} asked for a retry (exit {EX_TEMPFAIL}){}",
                stderr_note()
            ))),
            (Some(code), _) => Err(JobError::transient(format!(
                "exec handler {name} exited with status {code}{}",
                stderr_note()
            ))),
            (None, Some(signal)) => Err(JobError::transient(format!(
                "exec handler {name} was killed by signal {signal} ({}){}",
                crate::os::signals::signal_name(signal),
                stderr_note()
            ))),
            (None, None) => Err(JobError::transient(format!(
                "exec handler {name} ended with {status}{}",
                stderr_note()
            ))),
        }
    }
}

/// Checks a payload without running the job: the fields and their types
/// (for `[cron.*]` entries at start-up).
pub(crate) fn check(payload: &str) -> Result<(), JobError> {
    parse_payload::<Payload>(payload).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_kept_within_its_bounds() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let (head, truncated) = read_head(&data[..], 100);
        assert_eq!((head.as_slice(), truncated), (&data[..100], true));
        let (tail, cut) = read_tail(&data[..], 100);
        assert_eq!((tail.as_slice(), cut), (&data[data.len() - 100..], true));
        let (all, cut) = read_tail(&data[..50], 100);
        assert_eq!((all.len(), cut), (50, false));
    }

    /// Regression: the check built its error with `io::Error::other`,
    /// which allocates, after fork; std, which sends the child's error to
    /// the parent as an OS error code, then reported EINVAL.
    #[test]
    fn a_handler_whose_worker_is_gone_does_not_start_and_says_so_without_allocating() {
        let mut command = Command::new("true");
        // Not the child's parent (that is this process): as if the worker
        // had exited and the child been adopted.
        let gone = rustix::process::Pid::from_raw(i32::MAX).unwrap();
        // SAFETY: as in `Exec::command`.
        unsafe {
            command.pre_exec(move || die_with(gone));
        }
        let err = command.spawn().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH), "{err}");
    }

    #[test]
    fn handler_names_are_plain_names_in_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let exec = Exec::new(
            &ExecConfig {
                dir: dir.path().to_path_buf(),
                ..ExecConfig::default()
            },
            &FileConfig {
                roots: vec![],
                ..FileConfig::default()
            },
        );
        for bad in ["", "../x", "a/b", "x y", ".hidden", "~root"] {
            let err = exec.handler(bad).unwrap_err().to_string();
            assert!(err.contains("is not a handler name"), "{bad}: {err}");
        }
        let err = exec.handler("missing").unwrap_err().to_string();
        assert!(err.contains("is not in the handlers folder"), "{err}");
        std::fs::create_dir(dir.path().join("folder")).unwrap();
        let err = exec.handler("folder").unwrap_err().to_string();
        assert!(err.contains("is not a regular file"), "{err}");
        std::fs::write(dir.path().join("plain"), "#!/bin/sh\n").unwrap();
        let err = exec.handler("plain").unwrap_err().to_string();
        assert!(err.contains("is not executable"), "{err}");
    }
}
