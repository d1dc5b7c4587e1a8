//! What the daemon reads about processes from `/proc` (Linux): whether a
//! pid still belongs to the daemon that registered it, and the resources the
//! daemon uses for the `stats` log line.

use std::time::Duration;

/// Clock ticks per second for `/proc/<pid>/stat` times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions; it only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// The fields of `/proc/<pid>/stat` after the command name, which may
/// itself hold spaces and parentheses. Index 0 is field 3 (`state`).
fn stat_fields(pid: &str) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

fn boot_time_secs() -> Option<i64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// When process `pid` started (epoch ms), or None when there is no such
/// process (or it is a zombie, which runs nothing any more).
pub fn process_start_ms(pid: i64) -> Option<i64> {
    let fields = stat_fields(&pid.to_string())?;
    if fields.first().map(String::as_str) == Some("Z") {
        return None;
    }
    let start_ticks: f64 = fields.get(19)?.parse().ok()?;
    let boot = boot_time_secs()?;
    Some(boot * 1000 + (start_ticks * 1000.0 / ticks_per_second()) as i64)
}

/// How far a process's start time, read from `/proc` with whole-second boot
/// time, may lie after the moment its daemon recorded as `started_at`.
const START_SLACK_MS: i64 = 2_000;

/// True while the daemon that registered as (`pid`, `started_at`) may still
/// run: the pid exists and its process started no later than the daemon
/// registered. A pid that was reused by a later process does not count.
pub fn daemon_alive(pid: i64, started_at: i64) -> bool {
    match process_start_ms(pid) {
        Some(start) => start <= started_at + START_SLACK_MS,
        None => false,
    }
}

/// This machine's host name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Resources the current process uses.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// User + system CPU time so far.
    pub cpu: Duration,
    /// Resident memory in bytes.
    pub rss_bytes: u64,
    /// OS threads.
    pub threads: u64,
}

/// The resources of process `pid` ("self" for this one).
pub fn usage(pid: &str) -> Option<Usage> {
    let fields = stat_fields(pid)?;
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let threads: u64 = fields.get(17)?.parse().ok()?;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions; it only reads a constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    Some(Usage {
        cpu: Duration::from_secs_f64((utime + stime) / ticks_per_second()),
        rss_bytes: pages * page,
        threads,
    })
}

/// Which file a path names now: its device and inode. Two looks that
/// differ (or a path that is gone) mean the file was replaced or deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileIdentity {
    /// The device.
    pub dev: u64,
    /// The inode.
    pub ino: u64,
}

/// The identity of the file at `path`, None if there is none.
pub fn file_identity(path: &std::path::Path) -> Option<FileIdentity> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(FileIdentity {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// Open file descriptors of this process.
pub fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

/// Resident memory in bytes of the processes `pids` and of their children
/// (the CPU workers and the `exec` handlers they run).
pub fn rss_with_children(pids: &[u32]) -> u64 {
    if pids.is_empty() {
        return 0;
    }
    let mut all: Vec<String> = pids.iter().map(u32::to_string).collect();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let parent = stat_fields(&name).and_then(|f| f.get(1)?.parse::<u32>().ok());
            if parent.is_some_and(|p| pids.contains(&p)) {
                all.push(name);
            }
        }
    }
    all.iter()
        .filter_map(|pid| usage(pid))
        .map(|u| u.rss_bytes)
        .sum()
}

/// Resident memory in bytes of the process group `pgid` and of every
/// process below `root`, those that left the group (`setsid`) included:
/// a warm handler and everything it started.
pub fn tree_rss(root: i32, pgid: i32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    // (pid, parent, group) of every process, from one pass over /proc.
    let table: Vec<(i32, i32, i32)> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let fields = stat_fields(&pid.to_string())?;
            Some((
                pid,
                fields.get(1)?.parse().ok()?,
                fields.get(2)?.parse().ok()?,
            ))
        })
        .collect();
    let mut members: Vec<i32> = table
        .iter()
        .filter(|(_, _, group)| *group == pgid)
        .map(|(pid, _, _)| *pid)
        .collect();
    let mut next = vec![root];
    while let Some(parent) = next.pop() {
        for &(pid, _, _) in table.iter().filter(|(_, p, _)| *p == parent) {
            if !members.contains(&pid) {
                members.push(pid);
            }
            // Each pid has one parent, so none is walked twice.
            next.push(pid);
        }
    }
    if !members.contains(&root) {
        members.push(root);
    }
    members
        .iter()
        .filter_map(|pid| usage(&pid.to_string()))
        .map(|u| u.rss_bytes)
        .sum()
}

/// The pids whose parent is `pid` (zombies included), from `/proc/*/stat`.
pub fn children(pid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    // The name in parentheses may hold spaces: fields
                    // count from the last ')'.
                    let rest = &stat[stat.rfind(')')? + 2..];
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// Whether `pid` is a zombie (exited, not yet reaped).
pub fn is_zombie(pid: i32) -> bool {
    stat_fields(&pid.to_string()).is_some_and(|f| f.first().map(String::as_str) == Some("Z"))
}

/// The process group of `pid` (a zombie's too), from `/proc/<pid>/stat`.
pub fn process_group(pid: i32) -> Option<i32> {
    // Fields after the name: state, parent, group.
    stat_fields(&pid.to_string())?.get(2)?.parse().ok()
}

/// Every live process below `pid` (children, their children, …), zombies
/// left out: what a killed CPU worker would leave behind.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut next = vec![pid];
    while let Some(parent) = next.pop() {
        for child in children(parent) {
            let zombie = std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| stat.get(stat.rfind(')')? + 2..)?.chars().next())
                .is_none_or(|state| state == 'Z' || state == 'X');
            // A pid seen twice (reused while this walked) is not walked again.
            if child != pid && !zombie && !out.contains(&child) {
                out.push(child);
                next.push(child);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_reused_pid_is_not() {
        let pid = i64::from(std::process::id());
        let start = process_start_ms(pid).expect("own stat");
        assert!(start <= crate::job::now_ms());
        assert!(daemon_alive(pid, crate::job::now_ms()));
        // A daemon that registered long before this process started cannot
        // be this process.
        assert!(!daemon_alive(pid, start - 60_000));
        assert!(!daemon_alive(i64::from(i32::MAX), crate::job::now_ms()));
    }

    #[test]
    fn rss_of_a_process_counts_its_children() {
        use std::os::unix::process::CommandExt as _;
        let mut shell = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = shell.id();
        let alone = usage(&pid.to_string()).unwrap().rss_bytes;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut with = 0;
        while with <= alone && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            with = rss_with_children(&[pid]);
        }
        let group = rustix::process::Pid::from_child(&shell);
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        let _ = shell.wait();
        assert!(with > alone, "{with} vs {alone}");
        assert_eq!(rss_with_children(&[]), 0);
    }

    #[test]
    fn rss_of_a_tree_counts_its_group_and_what_is_below_it() {
        use std::os::unix::process::CommandExt as _;
        // A child in the group and one that left it.
        let mut shell = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & setsid sleep 30 & wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = shell.id() as i32;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while descendants(pid).len() < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let below = descendants(pid);
        let expected: u64 = std::iter::once(pid)
            .chain(below.iter().copied())
            .filter_map(|p| usage(&p.to_string()))
            .map(|u| u.rss_bytes)
            .sum();
        let counted = tree_rss(pid, pid);
        let alone = usage(&pid.to_string()).map_or(0, |u| u.rss_bytes);
        for p in below.iter().copied().chain([pid]) {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(p).unwrap(),
                rustix::process::Signal::KILL,
            );
        }
        let _ = shell.wait();
        assert_eq!(below.len(), 2, "{below:?}");
        assert_eq!(counted, expected);
        assert!(counted > alone, "{counted} vs {alone}");
    }

    #[test]
    fn usage_of_this_process_is_plausible() {
        let u = usage("self").expect("own usage");
        assert!(u.rss_bytes > 1 << 20);
        assert!(u.threads >= 1);
    }
}
