//! Warm handlers (docs/reference.md, "Warm handlers"): an `exec` handler
//! declared `mode = "persistent"` is started once per CPU worker and fed
//! its jobs one at a time, one JSON object a line on its stdin, answering
//! one JSON object a line on its stdout: messages, then one outcome that
//! names its job.
//!
//! It is set up as a one-shot handler is (see [`crate::kinds::exec`]): own
//! process group, minimal environment, death with its worker. The worker
//! reports its group at each job, so the daemon's kill at the deadline or
//! on a cancel reaches it (and a fresh worker starts a fresh handler). The
//! worker replaces it when it exits, answers something that is not the
//! protocol, has served `max_jobs`, passes `memory_limit`, has been idle
//! for `idle_timeout`, or its file changed; a handler that fails ends only
//! the job it was running. Replacing one, or the worker exiting, kills its
//! process group and what it forked outside it, and reaps them all.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::{Child, ChildStdin, Command};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::config::HandlerConfig;
use crate::kinds::kind::{Context, JobError, Report};

/// The longest line a handler may write; a longer one is a protocol fault.
pub const MAX_LINE: usize = 4 << 20;

/// How much of the end of a handler's stderr during one job goes into
/// `last_error`.
const STDERR_TAIL: usize = 4096;

/// How often the idle reaper looks.
const REAP_EVERY: Duration = Duration::from_secs(1);

/// How often a job's wait for its handler's next line looks whether the
/// handler is still alive: a child it started may hold its stdout open
/// after it exited, so the pipe's end alone does not tell.
const EXIT_CHECK: Duration = Duration::from_millis(50);

/// Once the handler exited, how long to wait for what is left in its pipes
/// (the lines it wrote before exiting, the end of its stderr) and for its
/// exit to be reaped. Its group is killed first, so only a process that
/// left the group (`setsid`) can hold the pipes longer.
const EXIT_DRAIN: Duration = Duration::from_millis(500);

/// How long a retirement waits for what the handler forked to die and be
/// reaped. SIGKILL ends a process within milliseconds; only one stuck in
/// the kernel takes longer, and is left behind rather than hold the worker.
const RETIRE_WAIT: Duration = Duration::from_secs(1);

/// A line a handler wrote, as its reader thread hands it over.
pub(crate) enum Line {
    Text(Vec<u8>),
    TooLong,
    Closed,
}

/// What identifies a handler's file: a change means a new version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    size: u64,
    modified: Option<SystemTime>,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        inode: meta.ino(),
        size: meta.len(),
        modified: meta.modified().ok(),
    })
}

/// One running handler process.
struct Process {
    child: Child,
    pgid: i32,
    stdin: ChildStdin,
    lines: mpsc::Receiver<Line>,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// Disconnected once the stderr reader reached the pipe's end.
    stderr_done: mpsc::Receiver<()>,
    served: u64,
    /// When it was started (epoch ms), for `jobd handlers`.
    started_at: i64,
    stamp: Option<Stamp>,
    idle_since: Instant,
    idle_timeout: Duration,
}

impl Process {
    /// Kills it with its whole process group and what it started outside
    /// the group (`setsid`), and reaps them all: once the handler is gone,
    /// the processes it forked are this worker's children (a child
    /// subreaper, see [`crate::os::confine`]), left as zombies unless
    /// reaped here, or running on if nothing killed them.
    fn retire(mut self) {
        let handler = self.child.id() as i32;
        // Listed while the handler lives: once it dies they are no longer
        // below it.
        let mut doomed = crate::os::procfs::descendants(handler);
        if let Some(group) = rustix::process::Pid::from_raw(self.pgid) {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        for pid in doomed
            .iter()
            .copied()
            .filter_map(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        let _ = self.child.wait();
        // What joined the group after the listing died with it, and is
        // this worker's child now.
        let me = std::process::id() as i32;
        for pid in crate::os::procfs::children(me) {
            if pid != handler
                && !doomed.contains(&pid)
                && crate::os::procfs::process_group(pid) == Some(self.pgid)
            {
                doomed.push(pid);
            }
        }
        crate::os::confine::reap_killed(&doomed, RETIRE_WAIT);
    }

    /// The resident memory in bytes of it and everything it started (its
    /// process group, and what left it), from `/proc`: a handler that
    /// hands its work to child processes is measured with them.
    fn resident(&self) -> u64 {
        crate::os::procfs::tree_rss(self.child.id() as i32, self.pgid)
    }

    /// Waits up to [`EXIT_DRAIN`] for it to have exited; how it ended.
    fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + EXIT_DRAIN;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < until => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                _ => return None,
            }
        }
    }

    /// Kills what is left of its group once it exited, and waits (up to
    /// [`EXIT_DRAIN`]) for the end of its stderr, so the note names what
    /// it wrote last.
    fn after_exit(&self) {
        if let Some(group) = rustix::process::Pid::from_raw(self.pgid) {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = self.stderr_done.recv_timeout(EXIT_DRAIN);
    }

    /// The tail of what it wrote to stderr since the job began, as the end
    /// of an error sentence.
    fn stderr_note(&self) -> String {
        let tail = self.stderr.lock().map(|t| t.clone()).unwrap_or_default();
        let text = String::from_utf8_lossy(&tail);
        let text = text.trim();
        if text.is_empty() {
            String::new()
        } else {
            format!("; stderr: {text}")
        }
    }
}

/// A worker's warm handlers, by name (one process each: a worker runs one
/// job at a time).
#[derive(Default)]
pub struct Warm {
    processes: Arc<Mutex<HashMap<String, Process>>>,
    reaper: std::sync::OnceLock<()>,
}

impl Warm {
    /// The process ids of the warm handlers running now.
    pub fn pids(&self) -> Vec<i32> {
        self.processes
            .lock()
            .map(|p| p.values().map(|p| p.child.id() as i32).collect())
            .unwrap_or_default()
    }

    /// The warm handlers running now, as `jobd handlers` lists them (the
    /// daemon reads their memory).
    pub fn processes(&self) -> Vec<crate::job::HandlerProcess> {
        let mut out: Vec<_> = self
            .processes
            .lock()
            .map(|all| {
                all.iter()
                    .map(|(name, p)| crate::job::HandlerProcess {
                        name: name.clone(),
                        pid: i64::from(p.child.id()),
                        jobs: p.served,
                        rss_bytes: 0,
                        started_at: p.started_at,
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Runs one job on the warm handler `name` (starting it with `start`
    /// when there is none, or the one there must be replaced) and returns
    /// its outcome as the kind's.
    pub fn run(
        &self,
        name: &str,
        path: &Path,
        config: &HandlerConfig,
        ctx: &Context<'_>,
        args: &serde_json::Value,
        start: impl FnOnce() -> Result<Command, JobError>,
    ) -> Result<Option<String>, JobError> {
        self.start_reaper();
        let mut processes = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        let current = stamp(path);
        // A line waiting before the job is sent was written after the last
        // outcome (a second answer, say): the handler is out of step, and
        // is replaced before it is handed a job, so nothing fails.
        let stale = processes.get_mut(name).is_none_or(|p| {
            !matches!(p.child.try_wait(), Ok(None))
                || p.served >= config.max_jobs
                || p.stamp != current
                || p.lines.try_recv().is_ok()
        });
        if stale {
            retire(&mut processes, [name.to_string()]);
            let process = spawn(name, start()?, current, config.idle_timeout)?;
            processes.insert(name.to_string(), process);
        }
        let process = processes.get_mut(name).expect("inserted above");
        let answer = feed(name, process, ctx, args);
        process.served += 1;
        process.idle_since = Instant::now();
        let over_memory = config.memory_limit > 0 && process.resident() > config.memory_limit;
        let broken = match &answer {
            Ok(_) => false,
            Err(fault) => fault.ends_handler,
        };
        if broken || over_memory || process.served >= config.max_jobs {
            retire(&mut processes, [name.to_string()]);
        } else {
            reap_adopted(&processes);
        }
        answer.map_err(|fault| fault.error)
    }

    /// Stops handlers idle past their `idle_timeout`, from a thread of its
    /// own (the worker itself waits for its next job).
    fn start_reaper(&self) {
        self.reaper.get_or_init(|| {
            let processes = Arc::downgrade(&self.processes);
            std::thread::spawn(move || loop {
                std::thread::sleep(REAP_EVERY);
                let Some(processes) = processes.upgrade() else {
                    return;
                };
                // Not while a job runs in this worker, warm or one-shot:
                // its processes are this worker's children too.
                let Some(_between) = crate::os::confine::between_jobs() else {
                    continue;
                };
                let Ok(mut processes) = processes.try_lock() else {
                    // A job is running on one of them.
                    continue;
                };
                // An idle handler that exited on its own is reaped now,
                // not left a zombie until the next job of its name.
                let idle: Vec<String> = processes
                    .iter_mut()
                    .filter_map(|(name, p)| {
                        let done = p.idle_since.elapsed() >= p.idle_timeout
                            || !matches!(p.child.try_wait(), Ok(None));
                        done.then(|| name.clone())
                    })
                    .collect();
                retire(&mut processes, idle);
                reap_adopted(&processes);
            });
        });
    }
}

/// The live handlers' pids: what a sweep of this worker's children keeps.
fn handler_pids(processes: &HashMap<String, Process>) -> Vec<i32> {
    processes.values().map(|p| p.child.id() as i32).collect()
}

/// Retires the handlers `names` (those running), and then what they
/// started in a session of their own (`setsid`), which neither their
/// group nor their tree holds once they are gone: this worker's children
/// now (a subreaper's), killed and reaped with them.
fn retire(processes: &mut HashMap<String, Process>, names: impl IntoIterator<Item = String>) {
    let mut retired = false;
    for name in names {
        if let Some(process) = processes.remove(&name) {
            process.retire();
            retired = true;
        }
    }
    if retired {
        crate::os::confine::kill_leftovers(RETIRE_WAIT, &handler_pids(processes));
    }
}

/// While handlers live: the processes they started that exited and were
/// handed to this worker (a `sh -c "cmd &"`) are reaped, not left zombies
/// until the handler goes.
fn reap_adopted(processes: &HashMap<String, Process>) {
    // Elsewhere (a test running kinds in its own process) the children
    // are not this code's to reap.
    if processes.is_empty() || !crate::os::confine::is_worker() {
        return;
    }
    let keep = handler_pids(processes);
    for pid in crate::os::procfs::children(std::process::id() as i32) {
        if !keep.contains(&pid) && crate::os::procfs::is_zombie(pid) {
            if let Some(id) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::waitpid(Some(id), rustix::process::WaitOptions::NOHANG);
            }
        }
    }
}

impl Drop for Warm {
    /// The worker is exiting: its handlers and what they forked go with it
    /// (their death signal would end only the handlers themselves).
    fn drop(&mut self) {
        let mut processes = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        let all: Vec<String> = processes.keys().cloned().collect();
        retire(&mut processes, all);
    }
}

/// Reads `input` a line at a time on a thread of its own, handing each one
/// over, then [`Line::Closed`] at its end. A line longer than [`MAX_LINE`]
/// is reported as [`Line::TooLong`] and reading stops there, so a runaway
/// line costs the worker at most that much memory.
pub(crate) fn read_lines(input: impl Read + Send + 'static) -> mpsc::Receiver<Line> {
    // A few lines ahead at most: a handler that writes faster than they
    // are read (a loop of heartbeats, between jobs too) blocks on its own
    // pipe instead of growing the worker's memory until it dies.
    let (tx, lines) = mpsc::sync_channel(LINES_AHEAD);
    std::thread::spawn(move || {
        let mut reader = BufReader::new(input);
        loop {
            let mut line = Vec::new();
            match (&mut reader)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut line)
            {
                Ok(0) | Err(_) => {
                    let _ = tx.send(Line::Closed);
                    return;
                }
                Ok(_) if line.len() > MAX_LINE => {
                    let _ = tx.send(Line::TooLong);
                    return;
                }
                Ok(_) => {
                    if tx.send(Line::Text(line)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    lines
}

/// What a handler did when it wrote a line over [`MAX_LINE`].
pub(crate) fn too_long() -> String {
    format!(
        "it wrote a line longer than {} MiB ({MAX_LINE} bytes), the most a line may hold",
        MAX_LINE >> 20
    )
}

/// Lines read ahead of the one being handled, at most (each at most
/// [`MAX_LINE`]).
const LINES_AHEAD: usize = 8;

/// Starts a handler process and its reader threads.
fn spawn(
    name: &str,
    mut command: Command,
    stamp: Option<Stamp>,
    idle_timeout: Duration,
) -> Result<Process, JobError> {
    command.env("JOBD_HANDLER_MODE", "persistent");
    let mut child = command
        .spawn()
        .map_err(|e| JobError::transient(format!("exec handler {name} cannot be started: {e}")))?;
    let pgid = child.id() as i32;
    let stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let lines = read_lines(stdout);
    let tail = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&tail);
    let (done, stderr_done) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        // Dropped at the pipe's end (or when the worker drops the handler).
        let _done = done;
        let mut stderr = stderr;
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                return;
            }
            let Ok(mut tail) = kept.lock() else { return };
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > 2 * STDERR_TAIL {
                let cut = tail.len() - STDERR_TAIL;
                tail.drain(..cut);
            }
        }
    });
    Ok(Process {
        child,
        pgid,
        stdin,
        lines,
        stderr: tail,
        stderr_done,
        served: 0,
        started_at: crate::job::now_ms(),
        stamp,
        idle_since: Instant::now(),
        idle_timeout,
    })
}

/// A job that did not end well, and whether its handler must go.
struct Fault {
    error: JobError,
    ends_handler: bool,
}

impl Fault {
    fn of_job(error: JobError) -> Fault {
        Fault {
            error,
            ends_handler: false,
        }
    }

    fn of_handler(error: JobError) -> Fault {
        Fault {
            error,
            ends_handler: true,
        }
    }
}

/// Hands one job to `process` and reads its messages up to its outcome.
fn feed(
    name: &str,
    process: &mut Process,
    ctx: &Context<'_>,
    args: &serde_json::Value,
) -> Result<Option<String>, Fault> {
    if let Ok(mut tail) = process.stderr.lock() {
        tail.clear();
    }
    if let Some(spawned) = ctx.spawned {
        spawned(process.pgid);
    }
    let deadline_ms = crate::job::now_ms() + ctx.remaining().as_millis() as i64;
    let inputs: Option<serde_json::Value> = ctx.inputs.and_then(|t| serde_json::from_str(t).ok());
    let mut request = serde_json::json!({
        "id": ctx.id,
        "attempt": ctx.attempt,
        "queue": ctx.queue,
        "args": args,
        "deadline_ms": deadline_ms,
    });
    if let Some(inputs) = inputs {
        request["inputs"] = inputs;
    }
    let mut line = request.to_string().into_bytes();
    line.push(b'\n');
    if let Err(e) = process
        .stdin
        .write_all(&line)
        .and_then(|()| process.stdin.flush())
    {
        // Most often it has exited (the check before the job raced its
        // exit); say how, else what the write met.
        let why = match process.exit_status() {
            Some(status) => format!("it {}", ended(status)),
            None => e.to_string(),
        };
        process.after_exit();
        return Err(Fault::of_handler(JobError::transient(format!(
            "exec handler {name} stopped reading its jobs: {why}{}",
            process.stderr_note()
        ))));
    }
    // Set once the handler has exited: until then the lines it wrote
    // before it exited are still taken, up to the end of the pipe or this
    // instant.
    let mut exited: Option<(std::process::ExitStatus, Instant)> = None;
    loop {
        let wait = match exited {
            Some((_, until)) => until.saturating_duration_since(Instant::now()),
            None => ctx.remaining().min(EXIT_CHECK),
        };
        let line = match process.lines.recv_timeout(wait) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if exited.is_some() {
                    // A process that left the group holds the pipe.
                    Line::Closed
                } else if ctx.remaining().is_zero() {
                    return Err(Fault::of_handler(JobError::TimedOut));
                } else {
                    if let Ok(Some(status)) = process.child.try_wait() {
                        // Exited, while something it started holds its
                        // stdout open: end that, so the pipe ends too.
                        process.after_exit();
                        exited = Some((status, Instant::now() + EXIT_DRAIN));
                    }
                    continue;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Line::Closed,
        };
        let text = match line {
            Line::Text(text) => text,
            Line::TooLong => {
                return Err(Fault::of_handler(JobError::transient(format!(
                    "exec handler {name} broke the protocol: {}",
                    too_long()
                ))));
            }
            Line::Closed => {
                let how = match exited
                    .map(|(status, _)| status)
                    .or_else(|| process.exit_status())
                {
                    Some(status) => ended(status),
                    None => "closed its stdout".to_string(),
                };
                process.after_exit();
                return Err(Fault::of_handler(JobError::transient(format!(
                    "exec handler {name} {how} during the job{}",
                    process.stderr_note()
                ))));
            }
        };
        match message(&text, ctx.id) {
            Ok(Message::Result(result)) => return Ok(Some(result.to_string())),
            Ok(Message::Error { message, retry }) => {
                // As for a handler that fails a job by exiting: what it
                // wrote to stderr during the job says why (a traceback).
                let message = format!("exec handler {name}: {message}{}", process.stderr_note());
                return Err(Fault::of_job(if retry {
                    JobError::transient(message)
                } else {
                    JobError::permanent(message)
                }));
            }
            Ok(Message::Snooze(delay)) => {
                return Err(Fault::of_job(JobError::Snoozed {
                    until: crate::job::now_ms() + delay as i64,
                }));
            }
            Ok(Message::Report(report)) => {
                if let Some(send) = ctx.report {
                    send(report);
                }
            }
            Ok(Message::Other) => {}
            Err(why) => {
                return Err(Fault::of_handler(JobError::transient(format!(
                    "exec handler {name} broke the protocol: {why}{}",
                    process.stderr_note()
                ))));
            }
        }
    }
}

/// How a handler ended, as the end of a sentence about it.
fn ended(status: std::process::ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!(
            "was killed by signal {signal} ({})",
            crate::os::signals::signal_name(signal)
        ),
        _ => format!("ended with {status}"),
    }
}

/// Reads one line a one-shot handler wrote on its messages descriptor
/// while job `job` runs: a report to pass on, nothing (a heartbeat), or
/// what is wrong with it in a phrase. Its outcome is not for this
/// descriptor: its stdout and exit status give it.
pub(crate) fn side_message(line: &[u8], job: i64) -> Result<Option<Report>, String> {
    let outcome = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(line)
        .is_ok_and(|object| OUTCOMES.iter().any(|k| object.contains_key(*k)));
    if outcome {
        return Err(format!(
            "it wrote an outcome ({}), which a one-shot handler gives by its stdout and exit status",
            OUTCOMES.join(", ")
        ));
    }
    match message(line, job)? {
        Message::Report(report) => Ok(Some(report)),
        _ => Ok(None),
    }
}

/// A line from a handler, understood.
#[derive(Debug, PartialEq)]
enum Message {
    /// The job's outcome: its result.
    Result(serde_json::Value),
    /// The job's outcome: it failed (and may be retried).
    Error { message: String, retry: bool },
    /// The job's outcome: run it again in this many milliseconds, the
    /// attempt not counted.
    Snooze(u64),
    /// A message for the daemon (progress, a log line).
    Report(Report),
    /// A message with nothing to pass on (a heartbeat: the daemon renews
    /// the job's lease while it runs anyway).
    Other,
}

/// The longest a handler may put a job off: 30 days.
const MAX_SNOOZE_MS: u64 = 30 * 24 * 3600 * 1000;

/// The longest note or log line kept from a message; the rest is cut.
const MAX_NOTE: usize = 4096;

fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_NOTE) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// The messages a handler may send before its outcome.
const MESSAGES: [&str; 3] = ["progress", "log", "heartbeat"];

/// How much of a line before a byte that is not UTF-8 its fault shows, in
/// characters: enough to find the place.
const SHOWN_BEFORE: usize = 40;

/// The keys that make a line an outcome, which must name its job.
const OUTCOMES: [&str; 3] = ["result", "error", "snooze_ms"];

/// Reads one line of the protocol written while job `job` runs, or says in
/// a phrase what is wrong with it.
fn message(line: &[u8], job: i64) -> Result<Message, String> {
    let shown = || {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end();
        if text.chars().count() > 80 {
            format!("{}…", text.chars().take(80).collect::<String>())
        } else {
            text.to_string()
        }
    };
    // Said apart: shown lossily, such a line would read as a JSON object.
    if let Err(e) = std::str::from_utf8(line) {
        let at = e.valid_up_to();
        let before = String::from_utf8_lossy(&line[..at]);
        let start = before
            .char_indices()
            .rev()
            .nth(SHOWN_BEFORE - 1)
            .map_or(0, |(i, _)| i);
        return Err(format!(
            "it wrote a line that is not UTF-8: byte {:#04X} at offset {at}, after {:?}",
            line[at],
            &before[start..]
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(line)
        .map_err(|_| format!("it wrote {:?}, which is not a JSON object", shown()))?;
    let serde_json::Value::Object(object) = value else {
        return Err(format!(
            "it wrote {:?}, which is not a JSON object",
            shown()
        ));
    };
    // Any line may name its job and an outcome must: a handler that
    // answered a job twice, the second time after jobd had read the first
    // and sent the next job, would otherwise have that line taken for the
    // next job's answer. Naming the job makes it a fault instead.
    let named = match object.get("id") {
        None => None,
        Some(id) => Some(
            id.as_i64()
                .ok_or_else(|| format!("it wrote {}, whose id {id} is not a job id", shown()))?,
        ),
    };
    if let Some(other) = named.filter(|named| *named != job) {
        return Err(format!(
            "it wrote a line for job {other} while running job {job}"
        ));
    }
    if named.is_none() && OUTCOMES.iter().any(|k| object.contains_key(*k)) {
        return Err(format!(
            "its outcome {} does not name its job (add \"id\": {job})",
            shown()
        ));
    }
    if let Some(result) = object.get("result") {
        return Ok(Message::Result(result.clone()));
    }
    if let Some(delay) = object.get("snooze_ms") {
        let delay = delay
            .as_u64()
            .filter(|ms| *ms <= MAX_SNOOZE_MS)
            .ok_or_else(|| {
                format!("snooze_ms {delay} is not a whole number of milliseconds up to 30 days")
            })?;
        return Ok(Message::Snooze(delay));
    }
    if let Some(error) = object.get("error") {
        let message = match error {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let retry = object
            .get("retry")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(true);
        return Ok(Message::Error { message, retry });
    }
    if let Some(progress) = object.get("progress") {
        let fraction = progress
            .as_f64()
            .filter(|f| (0.0..=1.0).contains(f))
            .ok_or_else(|| format!("progress {progress} is not a number from 0 to 1"))?;
        let note = object.get("note").and_then(|n| n.as_str()).unwrap_or("");
        return Ok(Message::Report(Report::Progress {
            fraction,
            note: cut(note),
        }));
    }
    if let Some(line) = object.get("log") {
        let line = match line {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        return Ok(Message::Report(Report::Log(cut(&line))));
    }
    if object.keys().any(|k| MESSAGES.contains(&k.as_str())) {
        return Ok(Message::Other);
    }
    Err(format!(
        "it wrote {:?}, which has none of {}, {}",
        shown(),
        OUTCOMES.join(", "),
        MESSAGES.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_outcomes_messages_or_faults() {
        let job = 7;
        assert_eq!(
            message(b"{\"result\": {\"n\": 1}, \"id\": 7}\n", job),
            Ok(Message::Result(serde_json::json!({"n": 1})))
        );
        assert_eq!(
            message(
                b"{\"error\": \"no such file\", \"retry\": false, \"id\": 7}",
                job
            ),
            Ok(Message::Error {
                message: "no such file".into(),
                retry: false
            })
        );
        assert_eq!(
            message(b"{\"progress\": 0.5, \"note\": \"resized\"}", job),
            Ok(Message::Report(Report::Progress {
                fraction: 0.5,
                note: "resized".into()
            }))
        );
        assert_eq!(
            message(b"{\"log\": \"hi\", \"id\": 7}", job),
            Ok(Message::Report(Report::Log("hi".into())))
        );
        assert_eq!(message(b"{\"heartbeat\": true}", job), Ok(Message::Other));
        assert_eq!(
            message(b"{\"snooze_ms\": 500, \"id\": 7}", job),
            Ok(Message::Snooze(500))
        );
        assert!(message(b"{\"snooze_ms\": -1, \"id\": 7}", job).is_err());
        assert_eq!(
            message(b"{\"progress\": 2}", job),
            Err("progress 2 is not a number from 0 to 1".into())
        );
        assert_eq!(
            message(b"hello\n", job),
            Err("it wrote \"hello\", which is not a JSON object".into())
        );
        assert!(message(b"{\"resalt\": 1}", job)
            .unwrap_err()
            .contains("has none of result"));
    }

    #[test]
    fn a_line_that_is_not_utf8_is_said_to_be_so() {
        assert_eq!(
            message(b"{\"log\": \"caf\xe9\"}", 7),
            Err("it wrote a line that is not UTF-8: byte 0xE9 at offset 12, after \"{\\\"log\\\": \\\"caf\"".into())
        );
        assert_eq!(
            message(b"\xff", 7),
            Err("it wrote a line that is not UTF-8: byte 0xFF at offset 0, after \"\"".into())
        );
    }

    #[test]
    fn an_outcome_names_its_job_and_no_line_names_another() {
        let job = 7;
        assert_eq!(
            message(b"{\"result\": 1}", job),
            Err("its outcome {\"result\": 1} does not name its job (add \"id\": 7)".into())
        );
        assert_eq!(
            message(b"{\"error\": \"x\"}", job),
            Err("its outcome {\"error\": \"x\"} does not name its job (add \"id\": 7)".into())
        );
        assert_eq!(
            message(b"{\"result\": 1, \"id\": 6}", job),
            Err("it wrote a line for job 6 while running job 7".into())
        );
        assert_eq!(
            message(b"{\"log\": \"x\", \"id\": 6}", job),
            Err("it wrote a line for job 6 while running job 7".into())
        );
        assert_eq!(
            message(b"{\"result\": 1, \"id\": \"7\"}", job),
            Err("it wrote {\"result\": 1, \"id\": \"7\"}, whose id \"7\" is not a job id".into())
        );
    }
}
