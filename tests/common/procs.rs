//! Processes as the kernel lists them, for tests of the CPU pool.

/// The pids whose parent is `parent`.
pub fn children(parent: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(pid) = name.parse::<i32>() else {
            continue;
        };
        if stat(pid).is_some_and(|(state, ppid)| ppid == parent && state != 'Z') {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}

/// The CPU worker processes of the daemon `daemon`.
pub fn workers(daemon: i32) -> Vec<i32> {
    children(daemon)
        .into_iter()
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("__worker"))
        })
        .collect()
}

/// True once `pid` no longer runs: gone, or a zombie nobody reaped yet
/// (a container's first process may never reap orphans).
pub fn gone(pid: i32) -> bool {
    stat(pid).is_none_or(|(state, _)| state == 'Z' || state == 'X')
}

/// (state, parent pid) of `pid`.
fn stat(pid: i32) -> Option<(char, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}
