//! What keeps a job's handler from reaching past its job (Linux): the
//! daemon's secrets scrubbed from its environment block and the daemon
//! and its CPU workers made non-dumpable (so `/proc/<pid>/environ` and
//! `/proc/<pid>/mem` are closed to other processes of the same user),
//! descriptors inherited from whoever started the daemon closed before any
//! handler starts, and processes a handler left outside its process group
//! (`setsid`) killed when its job ends.

use std::ffi::CStr;
use std::time::{Duration, Instant};

/// Overwrites the values of the environment variables `names` in the
/// process's environment block, then removes them. `/proc/<pid>/environ`
/// shows the block as it was at `exec`, whatever `remove_var` does to the
/// variable table, so the bytes themselves are cleared. Call it before any
/// other thread starts (the environment is not locked against readers).
pub fn scrub_environment(names: &[&str]) {
    extern "C" {
        static mut environ: *mut *mut libc::c_char;
    }
    for name in names.iter().filter(|n| !n.is_empty()) {
        let prefix = format!("{name}=");
        // SAFETY: `environ` is the C library's NULL-terminated table of
        // NUL-terminated strings; no other thread runs yet (see above), so
        // nothing changes it while it is walked. Only the bytes after
        // `NAME=` up to the terminating NUL are overwritten, in place.
        unsafe {
            let mut entry = environ;
            while !entry.is_null() && !(*entry).is_null() {
                let text = CStr::from_ptr(*entry);
                if text.to_bytes().starts_with(prefix.as_bytes()) {
                    let value = (*entry).add(prefix.len());
                    let len = text.to_bytes().len() - prefix.len();
                    std::ptr::write_bytes(value, 0, len);
                }
                entry = entry.add(1);
            }
        }
        std::env::remove_var(name);
    }
}

/// Marks this process non-dumpable: no core file, and `/proc/<pid>/mem`,
/// `environ` and `fd` belong to root, so a handler running as the same
/// user cannot read the daemon's memory. Logged by the caller on failure.
pub fn not_dumpable() -> std::io::Result<()> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(std::io::Error::from)
}

/// Closes every descriptor above stderr. A CPU worker calls it first
/// thing: what the daemon inherited without close-on-exec (from systemd, a
/// shell, a test) reached the worker and so every handler it starts.
pub fn close_inherited_descriptors() {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    // The listing's own descriptor is in `fds` but closed already; closing
    // it again fails harmlessly with EBADF.
    for fd in fds {
        // SAFETY: closing a descriptor number has no memory-safety
        // preconditions; nothing in this process uses these ones yet.
        unsafe {
            libc::close(fd);
        }
    }
}

/// Makes this process the reaper of its orphaned descendants
/// (`PR_SET_CHILD_SUBREAPER`): a handler's `setsid` child then becomes this
/// process's child when the handler exits, instead of init's, so
/// [`kill_leftovers`] can find it.
pub fn become_subreaper() -> std::io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .map_err(std::io::Error::from)
}

/// Held by a CPU worker while it runs a job (see [`running_job`]).
static JOB: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Held by a CPU worker while it runs a job: the job's handler and what it
/// starts are the job's own children then, which no sweep beside it (the
/// warm handlers' reaper, [`between_jobs`]) may kill or reap. (The reaper
/// killed a one-shot handler running on the same worker, or reaped it
/// before its own wait, and the job failed.)
pub fn running_job() -> std::sync::MutexGuard<'static, ()> {
    JOB.lock().unwrap_or_else(|e| e.into_inner())
}

/// Held while no job runs in this process, for a sweep of its children;
/// None while one runs.
pub fn between_jobs() -> Option<std::sync::MutexGuard<'static, ()>> {
    match JOB.try_lock() {
        Ok(guard) => Some(guard),
        Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// Set in a CPU worker ([`become_worker`]).
static WORKER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Set in a daemon that adopts what its dead workers left ([`adopt_orphans`]).
static ADOPTER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes this process a CPU worker: the reaper of its handlers' orphans
/// ([`become_subreaper`]), and the one process whose every other child is
/// a handler's leftover ([`kill_leftovers`]).
pub fn become_worker() -> std::io::Result<()> {
    become_subreaper()?;
    WORKER.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Whether this process is a CPU worker, which alone may treat every
/// child of its own as a handler's leftover ([`become_worker`]).
pub fn is_worker() -> bool {
    WORKER.load(std::sync::atomic::Ordering::Relaxed)
}

/// Makes the daemon the reaper of what a CPU worker leaves when it dies on
/// its own (the OOM killer, an abort past its memory limit, a `kill -9`):
/// a handler's processes in a session of their own then become the
/// daemon's children, which [`kill_adopted`] ends, instead of init's,
/// which outlived the job and the daemon.
pub fn adopt_orphans() -> std::io::Result<()> {
    become_subreaper()?;
    ADOPTER.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// In a daemon that adopts orphans: kills and reaps its children but
/// `keep` (its live CPU workers), for at most `within`. Elsewhere (a test
/// running a pool in its own process) nothing: those children are not
/// the pool's.
pub fn kill_adopted(within: Duration, keep: &[i32]) {
    if ADOPTER.load(std::sync::atomic::Ordering::Relaxed) {
        sweep(within, keep);
    }
}

/// Kills and reaps every child of this process but `keep`, and the
/// children they leave in turn, for at most `within`: what a finished
/// handler left running (`keep`: the warm handlers, which stay). Only in
/// a CPU worker: a kind run anywhere else (the daemon's registry, a test)
/// must not kill the children of the process it runs in.
pub fn kill_leftovers(within: Duration, keep: &[i32]) {
    if is_worker() {
        sweep(within, keep);
    }
}

/// Kills and reaps every child of this process but `keep`, and what they
/// leave in turn, for at most `within`.
fn sweep(within: Duration, keep: &[i32]) {
    let me = std::process::id() as i32;
    let deadline = Instant::now() + within;
    loop {
        let mut children = crate::os::procfs::children(me);
        children.retain(|pid| !keep.contains(pid));
        let alive = reap(&children);
        if alive.is_empty() || Instant::now() >= deadline {
            return;
        }
        for pid in alive {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Reaps `pids`, killed already, as they exit, for at most `within`. A pid
/// that is not this process's child yet (its parent, killed too, has not
/// finished dying, after which this subreaper adopts it) is waited for
/// while it exists; one reaped by someone else is gone from `/proc`.
pub fn reap_killed(pids: &[i32], within: Duration) {
    let deadline = Instant::now() + within;
    let mut left = pids.to_vec();
    loop {
        left.retain(|&pid| {
            let Some(id) = rustix::process::Pid::from_raw(pid) else {
                return false;
            };
            match rustix::process::waitpid(Some(id), rustix::process::WaitOptions::NOHANG) {
                Ok(Some(_)) => false,
                Ok(None) => true,
                Err(_) => std::path::Path::new(&format!("/proc/{pid}")).exists(),
            }
        });
        if left.is_empty() || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Reaps those of `pids` that have exited, without waiting, and returns
/// the rest. Each by its pid: rustix's `waitpid(None, …)` waits only for
/// children in this process's own group, which a handler's leftovers are
/// not in, so they stayed zombies and the sweep ran to its bound.
fn reap(pids: &[i32]) -> Vec<rustix::process::Pid> {
    pids.iter()
        .copied()
        .filter_map(rustix::process::Pid::from_raw)
        .filter(|&pid| {
            matches!(
                rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG),
                Ok(None)
            )
        })
        .collect()
}

/// The user id and primary group of the user `name` (`exec.user`), from
/// the system's user database.
pub fn lookup_user(name: &str) -> Result<(u32, u32), String> {
    let c_name =
        std::ffi::CString::new(name).map_err(|_| format!("{name:?} is not a user name"))?;
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: getpwnam_r writes only into `entry` and `buffer`, both owned
    // here and large enough as stated; `found` points to `entry` or is NULL.
    unsafe {
        let mut entry: libc::passwd = std::mem::zeroed();
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            c_name.as_ptr(),
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        );
        if rc != 0 {
            return Err(format!(
                "cannot look up the user {name}: {}",
                std::io::Error::from_raw_os_error(rc)
            ));
        }
        if found.is_null() {
            return Err(format!("names {name}, who is not a user of this system"));
        }
        Ok((entry.pw_uid, entry.pw_gid))
    }
}
