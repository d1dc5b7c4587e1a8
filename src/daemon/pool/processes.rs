//! The CPU pool: `cpu.workers` long-lived worker processes, each running one
//! job at a time, so CPU-heavy work never slows the IO threads or the
//! dispatcher and a runaway job can be killed (docs/reference.md).
//!
//! Each worker is the daemon's own binary re-executed in its hidden worker
//! mode ([`super::worker`]) in a process group of its own, with a clean
//! environment, talking [`super::frame`]s over its stdin and stdout. One
//! supervisor thread per worker owns it: it takes a [`Task`] from the
//! pool's channel, sends the order, and waits for the answer while
//! watching the deadline and the cancel flag. At the deadline, on a cancel,
//! or when the dispatcher gives up on the job, it kills the job's process
//! group (an `exec` handler's) and the worker's with SIGTERM, then SIGKILL
//! after [`KILL_GRACE`], and starts a fresh worker. A worker that dies on
//! its own (killed from outside, over its memory limit) fails only its
//! current attempt, as a transient error; the supervisor starts another. A
//! worker is also replaced after `cpu.max_jobs_per_worker` jobs.
//!
//! Workers die with the daemon: each asks for `PR_SET_PDEATHSIG` (tied to
//! its supervisor thread, which lives exactly as long as the worker) and
//! exits when its stdin closes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rustix::process::{Pid, Signal};

use crate::daemon::executor::{self, Task};
use crate::daemon::pool::frame::{self, FromWorker, Order, Setup, ToWorker};
use crate::daemon::pool::threads::Finished;
use crate::daemon::pool::worker::WORKER_COMMAND;
use crate::event;
use crate::job::{now_ms, HandlerProcess};
use crate::kinds::{JobError, CANCEL_CHECK};
use crate::os::signals::signal_name;

/// Between SIGTERM and SIGKILL when a job is killed: time for a handler to
/// remove its temporary files, short enough that a slot is not held long.
pub const KILL_GRACE: Duration = Duration::from_secs(1);

/// How long a new worker may take to say it is ready. Starting one takes a
/// few milliseconds; this only bounds a binary that hangs.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How often an idle supervisor checks that its worker is still alive, and
/// how long it waits before trying again after a worker failed to start.
pub const IDLE_CHECK: Duration = Duration::from_secs(1);

/// The niceness of the workers and their handlers: CPU jobs take what the
/// daemon's own threads leave, so pickup stays quick on a busy machine.
pub const CPU_NICE: i32 = 10;

/// How often a kill or a retirement checks whether the processes are gone
/// yet: from the first step, doubling up to the last. A worker that exits
/// at once is seen within a fraction of a millisecond, one that takes its
/// time costs little CPU while it does.
const EXIT_STEPS: (Duration, Duration) = (Duration::from_micros(50), Duration::from_millis(10));

/// Polls `gone` until it is true or `until` passes; true if it went.
fn wait_until_gone(until: Instant, mut gone: impl FnMut() -> bool) -> bool {
    let mut step = EXIT_STEPS.0;
    loop {
        if gone() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(step.min(until.saturating_duration_since(Instant::now())));
        step = (step * 2).min(EXIT_STEPS.1);
    }
}

/// What a worker is started with.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The `jobd` binary to re-execute.
    pub program: PathBuf,
    /// Sent to each new worker.
    pub setup: Setup,
    /// `cpu.max_jobs_per_worker`.
    pub max_jobs: u64,
}

/// The pids of the live workers, for the `stats` line and metrics, and
/// the warm handler processes each keeps, as it last reported them (after
/// every job); a worker's go with it.
#[derive(Debug, Default)]
pub struct WorkerPids(
    Mutex<BTreeSet<u32>>,
    Mutex<BTreeMap<u32, Vec<HandlerProcess>>>,
);

impl WorkerPids {
    /// The pids now.
    pub fn list(&self) -> Vec<u32> {
        self.0
            .lock()
            .map(|p| p.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The warm handler processes of every worker still running, each
    /// with its resident memory (and its children's) read now.
    pub fn warm_handlers(&self) -> Vec<HandlerProcess> {
        let all: Vec<HandlerProcess> = self
            .1
            .lock()
            .map(|all| all.values().flatten().cloned().collect())
            .unwrap_or_default();
        all.into_iter()
            .filter_map(|mut handler| {
                let pid = u32::try_from(handler.pid).ok()?;
                // One retired while idle is gone before its worker's next job.
                std::path::Path::new(&format!("/proc/{pid}"))
                    .exists()
                    .then(|| {
                        // As `memory_limit` measures it: its group and all
                        // below it (a handler's group is its own pid).
                        handler.rss_bytes = crate::os::procfs::tree_rss(pid as i32, pid as i32);
                        handler
                    })
            })
            .collect()
    }

    /// The warm handlers worker `pid` last reported.
    fn warm_of(&self, pid: u32) -> Vec<HandlerProcess> {
        self.1
            .lock()
            .ok()
            .and_then(|all| all.get(&pid).cloned())
            .unwrap_or_default()
    }

    /// Starts a worker with `spawn` and counts it in, as one step that no
    /// sweep of orphans ([`WorkerPids::kill_orphans`]) comes between: a
    /// worker just started is not an orphan.
    fn spawned(&self, spawn: impl FnOnce() -> io::Result<Child>) -> io::Result<Child> {
        let mut pids = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let child = spawn()?;
        pids.insert(child.id());
        Ok(child)
    }

    /// Kills and reaps what dead workers left to the daemon (see
    /// [`crate::os::confine::adopt_orphans`]): every child of its but the
    /// live workers.
    fn kill_orphans(&self) {
        let pids = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let keep: Vec<i32> = pids.iter().map(|&pid| pid as i32).collect();
        crate::os::confine::kill_adopted(KILL_GRACE, &keep);
    }

    fn remove(&self, pid: u32) {
        if let Ok(mut p) = self.0.lock() {
            p.remove(&pid);
        }
        self.set_warm(pid, Vec::new());
    }

    fn set_warm(&self, worker: u32, handlers: Vec<HandlerProcess>) {
        if let Ok(mut all) = self.1.lock() {
            if handlers.is_empty() {
                all.remove(&worker);
            } else {
                all.insert(worker, handlers);
            }
        }
    }
}

enum Message {
    Run(Box<Task>),
    Retire,
}

/// What every supervisor shares.
struct Common {
    queue: Receiver<Message>,
    /// The same queue's sending end, to put back what a retiring
    /// supervisor was handed.
    requeue: Sender<Message>,
    done: Sender<Finished>,
    /// The settings new workers start with (replaced on reload).
    settings: Mutex<Arc<Settings>>,
    pids: Arc<WorkerPids>,
    hosts: Mutex<Hosts>,
}

/// Which supervisors' workers keep each warm handler that has
/// `instances`: its jobs run on those only, so that a daemon keeps at most
/// `instances` of its processes (the claims keep at most that many of its
/// jobs running, across every daemon).
#[derive(Default)]
struct Hosts {
    /// Handler → the supervisors (by number) whose worker keeps it.
    by_handler: HashMap<String, Vec<usize>>,
    /// Each live supervisor's inbox, for the jobs handed to it.
    inboxes: HashMap<usize, Sender<Box<Task>>>,
    /// The supervisors running a job now.
    busy: BTreeSet<usize>,
}

/// The handler `task` runs and its `instances`, when it is a persistent
/// exec handler that has them.
fn capped(settings: &Settings, task: &Task) -> Option<(String, usize)> {
    if task.job.kind != "exec" {
        return None;
    }
    let payload: serde_json::Value = serde_json::from_str(&task.job.payload).ok()?;
    let name = payload.get("handler")?.as_str()?;
    let handler = settings.setup.exec.handlers.get(name)?;
    if handler.mode != crate::config::HandlerMode::Persistent {
        return None;
    }
    Some((name.to_string(), handler.instances? as usize))
}

impl Common {
    /// Whether supervisor `me` runs `task`: always, unless it is a capped
    /// handler's job that `me` does not host while its hosts are all
    /// there and one of them is not running a job; then it is handed to
    /// that one (None). With every host busy (with other jobs: the claims keep its
    /// own jobs within `instances`), `me` takes the handler up too rather
    /// than let the job wait for them.
    fn route(&self, me: usize, task: Box<Task>) -> Option<Box<Task>> {
        let Some((name, instances)) = capped(&self.settings(), &task) else {
            return Some(task);
        };
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let hosts = &mut *hosts;
        let list = hosts.by_handler.entry(name).or_default();
        if list.contains(&me) {
            return Some(task);
        }
        if list.len() < instances {
            list.push(me);
            return Some(task);
        }
        let mut task = task;
        for host in list.iter() {
            if hosts.busy.contains(host) {
                continue;
            }
            let Some(inbox) = hosts.inboxes.get(host) else {
                continue;
            };
            match inbox.send(task) {
                Ok(()) => {
                    // Busy from now: the next job goes elsewhere.
                    hosts.busy.insert(*host);
                    return None;
                }
                Err(back) => task = back.into_inner(),
            }
        }
        list.push(me);
        Some(task)
    }

    /// Supervisor `me`'s worker keeps only the handlers `kept` now (all
    /// gone: None).
    fn hosting(&self, me: usize, kept: Option<&[HandlerProcess]>) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        for (name, list) in hosts.by_handler.iter_mut() {
            let keeps = kept.is_some_and(|k| k.iter().any(|h| &h.name == name));
            if !keeps {
                list.retain(|&id| id != me);
            }
        }
    }

    /// Supervisor `me` runs a job (`true`) or is done with it.
    fn busy(&self, me: usize, busy: bool) {
        if let Ok(mut hosts) = self.hosts.lock() {
            if busy {
                hosts.busy.insert(me);
            } else {
                hosts.busy.remove(&me);
            }
        }
    }

    /// Supervisor `me` is gone: what it was handed goes back to the queue.
    fn leave(&self, me: usize, inbox: &Receiver<Box<Task>>) {
        self.hosting(me, None);
        if let Ok(mut hosts) = self.hosts.lock() {
            hosts.inboxes.remove(&me);
            hosts.busy.remove(&me);
        }
        while let Ok(task) = inbox.try_recv() {
            let _ = self.requeue.send(Message::Run(task));
        }
    }
}

impl Common {
    fn settings(&self) -> Arc<Settings> {
        match self.settings.lock() {
            Ok(s) => Arc::clone(&s),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }
}

/// The pool of worker processes.
pub struct ProcessPool {
    tasks: Sender<Message>,
    common: Arc<Common>,
    size: usize,
    supervisors: Vec<JoinHandle<()>>,
    spawned: usize,
}

impl ProcessPool {
    /// Starts `size` workers and waits (up to [`START_TIMEOUT`]) until each
    /// is ready or has failed to start; attempts are reported to `done`.
    pub fn new(
        size: usize,
        settings: Settings,
        done: Sender<Finished>,
        pids: Arc<WorkerPids>,
    ) -> io::Result<ProcessPool> {
        let (tasks, queue) = crossbeam_channel::unbounded();
        let requeue = tasks.clone();
        let mut pool = ProcessPool {
            tasks,
            common: Arc::new(Common {
                queue,
                requeue,
                done,
                settings: Mutex::new(Arc::new(settings)),
                pids,
                hosts: Mutex::new(Hosts::default()),
            }),
            size: 0,
            supervisors: Vec::new(),
            spawned: 0,
        };
        pool.resize(size)?;
        Ok(pool)
    }

    /// The configured number of workers.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Workers running now.
    pub fn live(&self) -> usize {
        self.common.pids.list().len()
    }

    /// Hands a task to the next idle worker.
    pub fn submit(&self, task: Task) {
        // The pool keeps a receiver alive, so the channel cannot be closed.
        let _ = self.tasks.send(Message::Run(Box::new(task)));
    }

    /// The settings that workers started from now on use; running workers
    /// keep theirs until they are replaced.
    pub fn set_settings(&self, settings: Settings) {
        if let Ok(mut s) = self.common.settings.lock() {
            *s = Arc::new(settings);
        }
    }

    /// Grows or shrinks the pool. Growing waits until the new workers are
    /// ready; shrinking retires workers as they become idle, so no running
    /// job is disturbed.
    pub fn resize(&mut self, size: usize) -> io::Result<()> {
        let (ready_tx, ready) = crossbeam_channel::unbounded();
        let mut starting = 0;
        while self.size < size {
            self.spawned += 1;
            let common = Arc::clone(&self.common);
            let ready_tx = ready_tx.clone();
            let me = self.spawned;
            let handle = std::thread::Builder::new()
                .name(format!("jobd-cpu-{me}"))
                .spawn(move || supervise(&common, me, ready_tx))?;
            self.supervisors.push(handle);
            self.size += 1;
            starting += 1;
        }
        while self.size > size {
            let _ = self.tasks.send(Message::Retire);
            self.size -= 1;
        }
        let until = Instant::now() + START_TIMEOUT;
        for _ in 0..starting {
            if ready
                .recv_timeout(until.saturating_duration_since(Instant::now()))
                .is_err()
            {
                break;
            }
        }
        self.supervisors.retain(|h| !h.is_finished());
        Ok(())
    }

    /// Retires every worker (killing any still running a job, which the
    /// dispatcher has given up on by now) and waits for them, at most
    /// `KILL_GRACE` plus a little.
    pub fn shutdown(mut self) {
        for _ in 0..self.supervisors.len() {
            let _ = self.tasks.send(Message::Retire);
        }
        let until = Instant::now() + KILL_GRACE + Duration::from_secs(1);
        wait_until_gone(until, || self.supervisors.iter().all(|h| h.is_finished()));
        for handle in self.supervisors.drain(..).filter(|h| h.is_finished()) {
            let _ = handle.join();
        }
    }
}

/// One worker process, owned by its supervisor thread.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    pid: Pid,
    /// The process group of the job's handler, while one runs.
    group: Option<Pid>,
    jobs: u64,
    settings: Arc<Settings>,
}

/// How a worker ended, for messages.
fn describe(status: Option<ExitStatus>) -> String {
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(signal)) => {
                format!("was killed by signal {signal} ({})", signal_name(signal))
            }
            _ => s.to_string(),
        },
        None => "stopped answering".to_string(),
    }
}

impl Worker {
    fn start(settings: Arc<Settings>, pids: &WorkerPids) -> io::Result<Worker> {
        let mut child = pids.spawned(|| {
            Command::new(&settings.program)
                .arg(WORKER_COMMAND)
                // Nothing of the daemon's environment (secrets included)
                // reaches a worker or the handlers it starts.
                .env_clear()
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                // Its own group: a kill reaches what it started, and a
                // Ctrl-C in the daemon's terminal does not reach it.
                .process_group(0)
                .spawn()
        })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            pids.remove(child.id());
            return Err(io::Error::other("the worker's pipes were not set up"));
        };
        let pid = Pid::from_child(&child);
        // Writes to the worker never block: each waits with a deadline
        // (see `Worker::send`).
        if let Err(e) = rustix::io::ioctl_fionbio(&stdin, true) {
            let _ = child.kill();
            let _ = child.wait();
            pids.remove(child.id());
            return Err(e.into());
        }
        let mut worker = Worker {
            child,
            stdin,
            stdout,
            pid,
            group: None,
            jobs: 0,
            settings,
        };
        let ready = (|| {
            let setup = frame::encode(&ToWorker::Setup(worker.settings.setup.clone()))?;
            let never = std::sync::atomic::AtomicBool::new(false);
            worker
                .send(&setup, Instant::now() + START_TIMEOUT, &never)
                .map_err(|e| match e {
                    Sent::Failed(e) => e,
                    Sent::Late | Sent::Cancelled => io::Error::other(format!(
                        "it did not take its setup within {START_TIMEOUT:?}"
                    )),
                })?;
            if !worker.readable(START_TIMEOUT)? {
                return Err(io::Error::other(format!(
                    "it did not say it was ready within {START_TIMEOUT:?}"
                )));
            }
            match frame::read::<FromWorker>(&mut worker.stdout)? {
                Some(FromWorker::Ready) => Ok(()),
                other => Err(io::Error::other(format!(
                    "it answered {other:?} instead of Ready"
                ))),
            }
        })();
        match ready {
            Ok(()) => Ok(worker),
            Err(e) => {
                let status = worker.kill(pids);
                Err(io::Error::other(format!(
                    "{} {}: {e}",
                    worker_name(&status.0),
                    describe(status.1)
                )))
            }
        }
    }

    /// Sends a frame made by [`frame::encode`], waiting for the worker to
    /// take it until `deadline` at most, and no longer once `cancel` is
    /// set. (A blocking write to a worker that stopped reading, stopped
    /// by a signal or stuck, held its supervisor, and the job it was
    /// handing over stayed `running` until the daemon stopped.)
    fn send(
        &mut self,
        frame: &[u8],
        deadline: Instant,
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<(), Sent> {
        let mut sent = 0;
        while sent < frame.len() {
            match rustix::io::write(&self.stdin, &frame[sent..]) {
                Ok(n) => sent += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => {
                    if cancel.load(Ordering::Relaxed) {
                        return Err(Sent::Cancelled);
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(Sent::Late);
                    }
                    let step = (deadline - now).min(CANCEL_CHECK);
                    let flags = rustix::event::PollFlags::OUT;
                    wait_for_pipe(&self.stdin, flags, step).map_err(Sent::Failed)?;
                }
                Err(e) => return Err(Sent::Failed(e.into())),
            }
        }
        Ok(())
    }

    /// Waits up to `timeout` for the worker to write (or close) its stdout.
    fn readable(&self, timeout: Duration) -> io::Result<bool> {
        wait_for_pipe(&self.stdout, rustix::event::PollFlags::IN, timeout)
    }

    /// Kills the job's process group and the worker's (SIGTERM, then
    /// SIGKILL after [`KILL_GRACE`]), and everything below the worker, and
    /// reaps the worker. Returns the worker's pid and how it ended.
    fn kill(&mut self, pids: &WorkerPids) -> (Pid, Option<ExitStatus>) {
        let until = Instant::now() + KILL_GRACE;
        let exited = |w: &mut Worker| matches!(w.child.try_wait(), Ok(Some(_)) | Err(_));
        // The handler first: it gets the grace, and its worker, still
        // alive, reaps it.
        if let Some(group) = self.group {
            let _ = rustix::process::kill_process_group(group, Signal::TERM);
            wait_until_gone(until, || {
                rustix::process::test_kill_process_group(group).is_err()
            });
            let _ = rustix::process::kill_process_group(group, Signal::KILL);
        }
        // Everything else below the worker (what the job's handler left
        // outside its group with `setsid`, the worker's idle warm handlers
        // and what they forked) is found through the process tree while
        // the worker, its parent or adopter (a child subreaper), still
        // holds it there. Once the worker is gone, init would adopt it and
        // nothing would end it, so it goes before the worker does.
        let worker = self.pid.as_raw_pid();
        wait_until_gone(Instant::now() + KILL_GRACE, || {
            let below = crate::os::procfs::descendants(worker);
            for pid in below.iter().copied().filter_map(Pid::from_raw) {
                let _ = rustix::process::kill_process(pid, Signal::KILL);
            }
            below.is_empty()
        });
        if self.group.is_none() {
            let _ = rustix::process::kill_process_group(self.pid, Signal::TERM);
            wait_until_gone(until, || exited(self));
        }
        let _ = rustix::process::kill_process_group(self.pid, Signal::KILL);
        let status = self.child.wait().ok();
        pids.remove(self.pid.as_raw_pid() as u32);
        // A worker that died on its own left what was below it to the
        // daemon (nothing above finds it through the worker any more).
        pids.kill_orphans();
        (self.pid, status)
    }

    /// Lets the worker exit by closing its stdin; kills it if it does not
    /// within [`KILL_GRACE`].
    fn retire(self, pids: &WorkerPids) {
        let Worker {
            mut child,
            stdin,
            stdout,
            pid,
            ..
        } = self;
        drop(stdin);
        let until = Instant::now() + KILL_GRACE;
        wait_until_gone(until, || !matches!(child.try_wait(), Ok(None)));
        let _ = rustix::process::kill_process_group(pid, Signal::KILL);
        let _ = child.wait();
        drop(stdout);
        pids.remove(pid.as_raw_pid() as u32);
    }
}

fn worker_name(pid: &Pid) -> String {
    format!("CPU worker {}", pid.as_raw_pid())
}

/// What became of the worker after an attempt.
enum After {
    /// It answered and can take the next job.
    Keep(Worker),
    /// It was killed or died; a new one is needed.
    Gone,
}

/// The supervisor thread of one worker.
// Long: the supervisor's loop over one worker's life (start, feed, watch, kill, replace), its states in one place.
fn supervise(common: &Common, me: usize, ready: Sender<()>) {
    let mut worker: Option<Worker> = None;
    let mut start_error: Option<String> = None;
    let mut ready = Some(ready);
    let (handed, inbox) = crossbeam_channel::unbounded::<Box<Task>>();
    if let Ok(mut hosts) = common.hosts.lock() {
        hosts.inboxes.insert(me, handed);
    }
    loop {
        if worker.is_none() {
            match Worker::start(common.settings(), &common.pids) {
                Ok(w) => {
                    if start_error.take().is_some() {
                        event!(
                            Info,
                            "pool.recovered",
                            pool = "cpu",
                            detail = "a CPU worker started again"
                        );
                    }
                    worker = Some(w);
                }
                Err(e) => {
                    let e = e.to_string();
                    if start_error.is_none() {
                        event!(
                            Error,
                            "pool.error",
                            pool = "cpu",
                            error = e.as_str(),
                            action = "CPU jobs fail and are retried; trying again every second"
                        );
                    }
                    start_error = Some(e);
                }
            }
            if let Some(ready) = ready.take() {
                let _ = ready.send(());
            }
        }
        let wait = IDLE_CHECK;
        // A job handed to this worker (it keeps the job's handler) first.
        let received = match inbox.try_recv() {
            Ok(task) => Ok(Message::Run(task)),
            Err(_) => crossbeam_channel::select! {
                recv(inbox) -> task => task.map(Message::Run).map_err(|_| RecvTimeoutError::Disconnected),
                recv(common.queue) -> message => message.map_err(|_| RecvTimeoutError::Disconnected),
                default(wait) => Err(RecvTimeoutError::Timeout),
            },
        };
        let message = match received {
            Ok(message) => message,
            Err(RecvTimeoutError::Timeout) => {
                if let Some(w) = worker.as_mut() {
                    if !matches!(w.child.try_wait(), Ok(None)) {
                        common.hosting(me, None);
                        let (pid, status) = w.kill(&common.pids);
                        event!(
                            Warn,
                            "pool.worker_exited",
                            pool = "cpu",
                            pid = pid.as_raw_pid(),
                            detail = format!("{} while idle; starting another", describe(status))
                        );
                        worker = None;
                    }
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => Message::Retire,
        };
        let task = match message {
            Message::Retire => {
                if let Some(w) = worker.take() {
                    w.retire(&common.pids);
                }
                common.leave(me, &inbox);
                return;
            }
            Message::Run(task) => task,
        };
        let Some(task) = common.route(me, task) else {
            continue;
        };
        common.busy(me, true);
        if task.control.is_abandoned() {
            // Given up before it started (shutdown); already put back.
            common.busy(me, !inbox.is_empty());
            continue;
        }
        let began = Instant::now();
        let answer = match worker.take() {
            Some(w) => {
                let (answer, after) = attempt(common, w, &task);
                if let After::Keep(w) = after {
                    worker = Some(w);
                }
                answer
            }
            None => Err(JobError::transient(format!(
                "no CPU worker process could be started: {}",
                start_error.as_deref().unwrap_or("unknown error")
            ))),
        };
        let retiring = worker.take_if(|w| w.jobs >= w.settings.max_jobs);
        // The handlers its worker keeps after this job (none once the
        // worker is gone): it hosts those only. Said before the answer is
        // reported, which lets the next job of such a handler be claimed:
        // that job must find this worker free, or another worker would
        // take the handler up.
        let kept = worker
            .as_ref()
            .map(|w| common.pids.warm_of(w.pid.as_raw_pid() as u32));
        common.hosting(me, kept.as_deref());
        // A job handed over while this one ran waits in the inbox, taken
        // first at the top of the loop.
        common.busy(me, !inbox.is_empty());
        report(common, &task, answer, began);
        if let Some(w) = retiring {
            w.retire(&common.pids);
        }
    }
}

/// Waits up to `timeout` until `pipe` is ready for `flags`: true if it
/// is (or was closed), false at the timeout or on a signal.
fn wait_for_pipe(
    pipe: &impl std::os::fd::AsFd,
    flags: rustix::event::PollFlags,
    timeout: Duration,
) -> io::Result<bool> {
    let mut fds = [rustix::event::PollFd::new(pipe, flags)];
    let timeout = rustix::event::Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    match rustix::event::poll(&mut fds, Some(&timeout)) {
        Ok(n) => Ok(n > 0),
        Err(rustix::io::Errno::INTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Why [`Worker::send`] did not hand a frame over.
enum Sent {
    /// The write failed: the worker is gone.
    Failed(io::Error),
    /// The worker did not take it before the deadline.
    Late,
    /// The job was cancelled meanwhile.
    Cancelled,
}

impl Sent {
    /// A job that could not be handed over (its worker killed): Ok with
    /// the error when the worker died, to try a fresh one; Err with the
    /// attempt's end when its deadline or a cancel came first.
    fn died(self) -> Result<io::Error, (Result<Option<String>, JobError>, After)> {
        match self {
            Sent::Failed(e) => Ok(e),
            Sent::Late => Err((Err(JobError::TimedOut), After::Gone)),
            Sent::Cancelled => Err((Err(JobError::Cancelled), After::Gone)),
        }
    }
}

/// Runs one attempt on `worker`; returns its answer and the worker if it
/// can go on.
fn attempt(
    common: &Common,
    mut worker: Worker,
    task: &Task,
) -> (Result<Option<String>, JobError>, After) {
    let deadline = task.begin();
    let order = ToWorker::Run(Order {
        id: task.job.id,
        attempt: task.job.attempts,
        queue: task.job.queue.clone(),
        kind: task.job.kind.clone(),
        payload: task.job.payload.clone(),
        timeout_ms: task.timeout.as_millis() as u64,
        inputs: task.job.inputs.clone(),
    });
    // Too big for a worker to take: the job can never run on one, and the
    // worker is not at fault. (Taken for a worker that died while idle,
    // it cost two healthy workers an attempt, every attempt.)
    let order = match frame::encode(&order) {
        Ok(frame) => frame,
        Err(e) => {
            let message =
                format!("the job's payload and inputs are too large to hand to a CPU worker ({e})");
            return (Err(JobError::permanent(message)), After::Keep(worker));
        }
    };
    let cancel = &task.control.cancel;
    if let Err(e) = worker.send(&order, deadline, cancel) {
        worker.kill(&common.pids);
        if let Err(ended) = e.died() {
            return ended;
        }
        // It died while idle: the job has not started, so a fresh worker
        // takes it.
        match Worker::start(common.settings(), &common.pids) {
            Ok(fresh) => worker = fresh,
            Err(e) => {
                let message = format!("no CPU worker process could be started: {e}");
                return (Err(JobError::transient(message)), After::Gone);
            }
        }
        if let Err(e) = worker.send(&order, deadline, cancel) {
            let (pid, _) = worker.kill(&common.pids);
            let e = match e.died() {
                Ok(e) => e,
                Err(ended) => return ended,
            };
            let message = format!("{} could not be sent the job: {e}", worker_name(&pid));
            return (Err(JobError::transient(message)), After::Gone);
        }
    }
    loop {
        if task.control.cancel.load(Ordering::Relaxed) {
            // What the worker sent before the cancel is read first: an
            // answer already there is the attempt's (the job still ends
            // cancelled), and the worker lives on. A bounded look, so a
            // handler flooding progress reports is still stopped.
            for _ in 0..CANCEL_READ_AHEAD {
                if !worker.readable(Duration::ZERO).unwrap_or(false) {
                    break;
                }
                worker = match next_frame(common, worker, task) {
                    Ok(worker) => worker,
                    Err(answered @ (_, After::Keep(_))) => return answered,
                    // It died meanwhile (and is reaped): cancelled all the same.
                    Err(_) => return (Err(JobError::Cancelled), After::Gone),
                };
            }
            worker.kill(&common.pids);
            return (Err(JobError::Cancelled), After::Gone);
        }
        let now = Instant::now();
        if now >= deadline {
            worker.kill(&common.pids);
            return (Err(JobError::TimedOut), After::Gone);
        }
        let step = (deadline - now).min(CANCEL_CHECK);
        match worker.readable(step) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(_) => return died(common, worker),
        }
        worker = match next_frame(common, worker, task) {
            Ok(worker) => worker,
            Err(ended) => return ended,
        };
    }
}

/// How many frames a cancel reads ahead for an answer already sent.
const CANCEL_READ_AHEAD: usize = 64;

/// Reads and handles one frame from a worker running `task`: Ok with the
/// worker while the attempt goes on, Err with the attempt's end.
fn next_frame(
    common: &Common,
    mut worker: Worker,
    task: &Task,
) -> Result<Worker, (Result<Option<String>, JobError>, After)> {
    match frame::read::<FromWorker>(&mut worker.stdout) {
        Ok(Some(FromWorker::Spawned { pgid })) => worker.group = Pid::from_raw(pgid),
        Ok(Some(FromWorker::Done(answer))) => {
            worker.group = None;
            worker.jobs += 1;
            return Err((answer, After::Keep(worker)));
        }
        Ok(Some(FromWorker::Ready)) => {}
        Ok(Some(FromWorker::Warm(handlers))) => common
            .pids
            .set_warm(worker.pid.as_raw_pid() as u32, handlers),
        Ok(Some(FromWorker::Report(report))) => match report {
            crate::kinds::Report::Progress { fraction, note } => {
                task.control.report_progress(fraction, note)
            }
            crate::kinds::Report::Log(line) => event!(
                Info,
                "job.log",
                id = task.job.id,
                attempt = task.job.attempts,
                kind = task.job.kind.as_str(),
                line = line
            ),
        },
        Ok(None) | Err(_) => return Err(died(common, worker)),
    }
    Ok(worker)
}

/// The worker stopped answering in the middle of a job: it crashed or was
/// killed. The attempt fails as a transient error.
fn died(common: &Common, mut worker: Worker) -> (Result<Option<String>, JobError>, After) {
    let (pid, status) = worker.kill(&common.pids);
    let hint = match status.and_then(|s| s.signal()) {
        Some(6) | Some(9) => format!(
            " (going over cpu.memory_limit of {} bytes, the kernel's OOM killer or a kill from outside ends a worker so)",
            worker.settings.setup.memory_limit
        ),
        _ => String::new(),
    };
    let message = format!(
        "the {} running this job {}{hint}",
        worker_name(&pid),
        describe(status)
    );
    event!(
        Warn,
        "pool.worker_died",
        pool = "cpu",
        pid = pid.as_raw_pid(),
        detail = format!(
            "{}; its job is failed and a new worker started",
            describe(status)
        )
    );
    (Err(JobError::transient(message)), After::Gone)
}

/// Sends the attempt's completion to the dispatcher, unless the dispatcher
/// gave up on it first.
fn report(common: &Common, task: &Task, answer: Result<Option<String>, JobError>, began: Instant) {
    let completion = executor::settle(task, answer, now_ms(), fastrand::f64());
    if !task.control.finish() {
        return;
    }
    let _ = common.done.send(Finished {
        completion,
        queue: task.job.queue.clone(),
        kind: task.job.kind.clone(),
        elapsed: began.elapsed(),
    });
}
