//! The CPU pool through the real daemon: `checksum`, `compress` and `exec`
//! in real worker processes, results checked against independent tools,
//! handlers killed at their deadline with their process group, workers
//! killed from outside, memory limits, recycling, and no process outliving a
//! `kill -9` of the daemon.

mod common;

use std::path::{Path, PathBuf};

use common::{procs, wait_for, Daemon, Home, PATIENCE};

struct Cpu {
    home: Home,
    root: PathBuf,
    handlers: PathBuf,
}

/// A home whose file root and handlers folder are its own, with `extra`
/// config appended (which may set `[cpu]`).
fn setup(extra: &str) -> Cpu {
    let home = Home::new();
    let root = home.path().join("root");
    let handlers = home.path().join("handlers");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&handlers).unwrap();
    setup_in(home, root, handlers, extra)
}

fn setup_in(home: Home, root: PathBuf, handlers: PathBuf, extra: &str) -> Cpu {
    home.write_config(&format!(
        "[file]\nroots = [\"{}\"]\n[exec]\ndir = \"{}\"\n\
         [daemon]\nshutdown_grace = \"200ms\"\n\
         [retry]\nbackoff_base = \"20ms\"\nbackoff_max = \"50ms\"\n{extra}\n",
        root.display(),
        handlers.display()
    ));
    home.migrate();
    Cpu {
        home,
        root,
        handlers,
    }
}

impl Cpu {
    /// Writes an executable handler.
    fn handler(&self, name: &str, script: &str) {
        let path = self.handlers.join(name);
        std::fs::write(&path, script).unwrap();
        chmod(&path, 0o755);
    }

    /// A handler `name` that writes its pid (or, with `grandchild`, the pid
    /// of a `sleep` it forks) to a file and then sleeps; returns the file.
    fn hanging_handler(&self, name: &str, grandchild: bool) -> PathBuf {
        let pidfile = self.home.path().join(format!("{name}.pid"));
        let body = if grandchild {
            format!("sleep 300 &\necho $! > {}\nsleep 300\n", pidfile.display())
        } else {
            format!("echo $$ > {}\nexec sleep 300\n", pidfile.display())
        };
        self.handler(name, &format!("#!/bin/sh\n{body}"));
        pidfile
    }

    fn insert(&self, kind: &str, payload: &str, max_attempts: i64, timeout_ms: &str) -> i64 {
        self.home
            .insert_job(kind, payload, &max_attempts.to_string(), timeout_ms)
    }

    /// Waits until job `id` is final; returns (state, result or last_error).
    fn finish(&self, id: i64) -> (String, String) {
        let state = wait_for(PATIENCE, || {
            let state = self.home.state(id);
            (state != "queued" && state != "running").then_some(state)
        })
        .unwrap_or_else(|| panic!("job {id} never finished"));
        let detail = self.home.text(&format!(
            "SELECT coalesce(result, last_error) FROM jobs WHERE id = {id};"
        ));
        (state, detail)
    }

    /// Runs one job to its end with one attempt.
    fn run(&self, kind: &str, payload: &str) -> (String, String) {
        let id = self.insert(kind, payload, 1, "NULL");
        self.finish(id)
    }

    fn ok(&self, kind: &str, payload: &str) -> serde_json::Value {
        let (state, detail) = self.run(kind, payload);
        assert_eq!(state, "succeeded", "{payload}: {detail}");
        serde_json::from_str(&detail).unwrap()
    }

    fn dead(&self, kind: &str, payload: &str) -> String {
        let (state, detail) = self.run(kind, payload);
        assert_eq!(state, "dead", "{payload}: {detail}");
        detail
    }

    /// Waits until the daemon has `n` live workers; returns their pids.
    fn wait_workers(&self, daemon: &Daemon, n: usize) -> Vec<i32> {
        wait_for(PATIENCE, || {
            let w = procs::workers(daemon.pid());
            (w.len() == n).then_some(w)
        })
        .unwrap_or_else(|| {
            panic!(
                "the pool never had {n} workers: {:?}",
                procs::workers(daemon.pid())
            )
        })
    }
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Reads a pid a handler wrote to a file, once it is there.
fn read_pid(path: &Path) -> i32 {
    wait_for(PATIENCE, || {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    })
    .unwrap_or_else(|| panic!("{} was never written", path.display()))
}

fn wait_gone(pid: i32, what: &str) {
    assert!(
        wait_for(PATIENCE, || procs::gone(pid).then_some(())).is_some(),
        "{what} (pid {pid}) is still running"
    );
}

/// Some bytes that compress, but not to nothing.
fn sample(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_u32;
    (0..len)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            if i % 3 == 0 {
                (state % 251) as u8
            } else {
                b"the quick brown fox "[i % 20]
            }
        })
        .collect()
}

fn tool(name: &str, args: &[&str]) -> Option<std::process::Output> {
    std::process::Command::new(name).args(args).output().ok()
}

#[test]
fn checksum_and_compress_agree_with_independent_tools() {
    let cpu = setup("");
    let _daemon = cpu.home.daemon();
    let data = sample(3 << 20);
    let input = cpu.root.join("data.bin");
    std::fs::write(&input, &data).unwrap();
    std::fs::create_dir(cpu.root.join("out")).unwrap();

    let sha = cpu.ok("checksum", r#"{"path":"data.bin","algorithm":"sha256"}"#);
    assert_eq!(sha["bytes"], data.len() as u64);
    let out = tool("sha256sum", &[input.to_str().unwrap()]).expect("sha256sum (coreutils)");
    let expected = String::from_utf8_lossy(&out.stdout);
    assert_eq!(sha["digest"], expected.split_whitespace().next().unwrap());
    let b3 = cpu.ok("checksum", r#"{"path":"data.bin","algorithm":"blake3"}"#);
    assert_eq!(b3["digest"], blake3::hash(&data).to_hex().as_str());

    let gz = cpu.ok(
        "compress",
        r#"{"from":"data.bin","to":"out/data.bin.gz","format":"gzip","level":9}"#,
    );
    assert_eq!(gz["bytes_in"], data.len() as u64);
    let gz_path = cpu.root.join("out/data.bin.gz");
    assert_eq!(gz["bytes_out"], std::fs::metadata(&gz_path).unwrap().len());
    let unzipped = tool("gzip", &["-dc", gz_path.to_str().unwrap()]).expect("gzip");
    assert!(unzipped.status.success());
    assert!(unzipped.stdout == data, "gzip -d gives back the input");

    let zst = cpu.ok(
        "compress",
        r#"{"from":"data.bin","to":"out/data.bin.zst","format":"zstd"}"#,
    );
    let zst_path = cpu.root.join("out/data.bin.zst");
    assert_eq!(
        zst["bytes_out"],
        std::fs::metadata(&zst_path).unwrap().len()
    );
    let unzstd = match tool("zstd", &["-dc", zst_path.to_str().unwrap()]) {
        Some(out) if out.status.success() => out.stdout,
        _ => zstd::decode_all(std::fs::File::open(&zst_path).unwrap()).unwrap(),
    };
    assert!(unzstd == data, "zstd -d gives back the input");
    // A retry redoes the work over its own earlier output.
    cpu.ok(
        "compress",
        r#"{"from":"data.bin","to":"out/data.bin.zst","format":"zstd"}"#,
    );
    let leftovers: Vec<_> = std::fs::read_dir(cpu.root.join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn bad_cpu_payloads_go_dead_naming_what_is_wrong() {
    let cpu = setup("");
    let _daemon = cpu.home.daemon();
    std::fs::write(cpu.root.join("a"), "a").unwrap();
    let cases = [
        (
            "checksum",
            r#"{"path":"a","algorithm":"md5"}"#,
            "payload field algorithm: unknown variant `md5`",
        ),
        ("checksum", r#"{"path":"missing"}"#, "no such file"),
        (
            "checksum",
            r#"{"path":"../config.toml"}"#,
            "escapes the file root",
        ),
        ("checksum", r#"{"path":"a","sha":1}"#, "unknown field `sha`"),
        (
            "compress",
            r#"{"from":"a","to":"b","format":"gzip","level":11}"#,
            "payload field level: 11 is not a Gzip level (expected 0 to 9)",
        ),
        (
            "compress",
            r#"{"from":"a","to":"/etc/b","format":"zstd"}"#,
            "payload field to: /etc/b is outside every file.roots entry",
        ),
        (
            "compress",
            r#"{"from":"a","to":"b","format":"lz4"}"#,
            "payload field format: unknown variant `lz4`",
        ),
    ];
    for (kind, payload, needle) in cases {
        let error = cpu.dead(kind, payload);
        assert!(error.contains(needle), "{payload}: {error}");
    }
    assert!(!cpu.root.join("b").exists());
}

#[test]
fn exec_passes_args_on_stdin_and_a_minimal_environment_and_keeps_stdout() {
    let cpu = setup("");
    cpu.handler(
        "echo-json",
        "#!/bin/sh\nargs=$(cat)\nprintf '{\"args\": %s, \"id\": \"%s\", \"attempt\": \"%s\", \"queue\": \"%s\"}' \
         \"$args\" \"$JOBD_JOB_ID\" \"$JOBD_ATTEMPT\" \"$JOBD_QUEUE\"\n",
    );
    cpu.handler("say", "#!/bin/sh\necho 'not json, but fine'\n");
    cpu.handler(
        "envdump",
        "#!/bin/sh\nenv | cut -d= -f1 | sort | tr '\\n' ' '\n",
    );
    cpu.handler("where", "#!/bin/sh\npwd\n");
    let _daemon = cpu.home.daemon();

    let id = cpu.insert(
        "exec",
        r#"{"handler":"echo-json","args":{"n":[1,2],"s":"x"}}"#,
        1,
        "NULL",
    );
    let (state, detail) = cpu.finish(id);
    assert_eq!(state, "succeeded", "{detail}");
    let result: serde_json::Value = serde_json::from_str(&detail).unwrap();
    assert_eq!(result["args"], serde_json::json!({"n": [1, 2], "s": "x"}));
    assert_eq!(result["id"], id.to_string());
    assert_eq!(result["attempt"], "1");
    assert_eq!(result["queue"], "default");

    let say = cpu.ok("exec", r#"{"handler":"say"}"#);
    assert_eq!(say, serde_json::json!({"stdout": "not json, but fine\n"}));

    let env = cpu.ok("exec", r#"{"handler":"envdump"}"#);
    let names: Vec<&str> = env["stdout"].as_str().unwrap().split_whitespace().collect();
    for name in &names {
        assert!(
            name.starts_with("JOBD_") || ["PATH", "PWD", "SHLVL", "_"].contains(name),
            "the handler saw {name} from the daemon's environment: {names:?}"
        );
    }
    assert!(names.contains(&"JOBD_JOB_ID") && names.contains(&"PATH"));

    let pwd = cpu.ok("exec", r#"{"handler":"where"}"#);
    assert_eq!(
        pwd["stdout"].as_str().unwrap().trim(),
        cpu.root.canonicalize().unwrap().to_str().unwrap()
    );
}

#[test]
fn exec_exit_75_is_retried_and_other_failures_carry_stderr_until_dead() {
    let cpu = setup("");
    cpu.handler(
        "later",
        "#!/bin/sh\nif [ \"$JOBD_ATTEMPT\" -lt 3 ]; then echo \"not yet ($JOBD_ATTEMPT)\" >&2; exit 75; fi\necho '{\"ok\":true}'\n",
    );
    cpu.handler(
        "broken",
        "#!/bin/sh\necho 'some noise' >&2\nhead -c 10000 /dev/zero | tr '\\0' 'x' >&2\necho ' the real reason' >&2\nexit 3\n",
    );
    let _daemon = cpu.home.daemon();

    let later = cpu.insert("exec", r#"{"handler":"later"}"#, 5, "NULL");
    let (state, detail) = cpu.finish(later);
    assert_eq!(
        (state.as_str(), detail.as_str()),
        ("succeeded", r#"{"ok":true}"#)
    );
    let errors = cpu.home.text(&format!(
        "SELECT group_concat(outcome || ': ' || coalesce(error, ''), ' | ') \
         FROM job_runs WHERE job_id = {later} ORDER BY attempt;"
    ));
    assert!(
        errors
            .contains("retry: exec handler later asked for a retry (exit 75); stderr: not yet (1)"),
        "{errors}"
    );
    assert_eq!(errors.matches("retry:").count(), 2, "{errors}");

    let broken = cpu.insert("exec", r#"{"handler":"broken"}"#, 2, "NULL");
    let (state, detail) = cpu.finish(broken);
    assert_eq!(state, "dead", "{detail}");
    assert!(
        detail.starts_with("exec handler broken exited with status 3; stderr (last 4096 bytes): …"),
        "{detail}"
    );
    assert!(
        detail.contains("xxxx the real reason (gave up after 2 attempts)"),
        "{detail}"
    );
    assert!(!detail.contains("some noise"), "only the tail is kept");
    assert!(detail.len() < 4096 + 200, "{}", detail.len());
}

#[test]
fn handlers_that_cannot_be_run_go_dead_at_once_naming_the_handler() {
    let cpu = setup("");
    std::fs::write(cpu.handlers.join("plain"), "#!/bin/sh\necho hi\n").unwrap();
    chmod(&cpu.handlers.join("plain"), 0o644);
    std::fs::create_dir(cpu.handlers.join("folder")).unwrap();
    cpu.handler("nointerp", "#!/nonexistent/interpreter\n");
    let _daemon = cpu.home.daemon();
    let cases = [
        (
            "../handlers/plain",
            "\"../handlers/plain\" is not a handler name",
        ),
        ("/bin/sh", "\"/bin/sh\" is not a handler name"),
        ("a/b", "\"a/b\" is not a handler name"),
        ("", "\"\" is not a handler name"),
        (
            "missing",
            "exec handler missing is not in the handlers folder",
        ),
        ("plain", "exec handler plain in"),
        ("folder", "is not a regular file"),
        ("nointerp", "exec handler nointerp cannot be started"),
    ];
    for (name, needle) in cases {
        let id = cpu.insert("exec", &format!(r#"{{"handler":"{name}"}}"#), 5, "NULL");
        let (state, detail) = cpu.finish(id);
        assert_eq!(state, "dead", "{name}: {detail}");
        assert!(detail.contains(needle), "{name}: {detail}");
        assert_eq!(
            cpu.home
                .text(&format!("SELECT attempts FROM jobs WHERE id = {id};")),
            "1"
        );
    }
    let plain = cpu.dead("exec", r#"{"handler":"plain"}"#);
    assert!(
        plain.ends_with("is not executable (chmod +x it)"),
        "{plain}"
    );
    let typo = cpu.dead("exec", r#"{"handler":"plain","argz":{}}"#);
    assert!(typo.contains("unknown field `argz`"), "{typo}");
}

#[test]
fn a_handler_past_its_deadline_is_killed_with_its_grandchildren_and_the_pool_refills() {
    let cpu = setup("[cpu]\nworkers = 2\n");
    let pidfile = cpu.hanging_handler("hang", true);
    let daemon = cpu.home.daemon();
    let before = cpu.wait_workers(&daemon, 2);
    let id = cpu.insert("exec", r#"{"handler":"hang"}"#, 1, "300");
    let grandchild = read_pid(&pidfile);
    let (state, detail) = cpu.finish(id);
    assert_eq!(state, "dead");
    assert_eq!(detail, "timed out after 300 ms");
    wait_gone(grandchild, "the handler's grandchild");
    let after = cpu.wait_workers(&daemon, 2);
    assert_ne!(before, after, "the worker that ran it was replaced");
    // The pool still works.
    std::fs::write(cpu.root.join("f"), "x").unwrap();
    cpu.ok("checksum", r#"{"path":"f"}"#);
}

#[test]
fn a_worker_killed_from_outside_fails_only_its_attempt_and_is_replaced() {
    let cpu = setup("[cpu]\nworkers = 2\n");
    let pidfile = cpu.home.path().join("handler.pid");
    cpu.handler(
        "slow-once",
        &format!(
            "#!/bin/sh\nif [ \"$JOBD_ATTEMPT\" = 1 ]; then echo $$ > {}; sleep 300; fi\necho '{{\"done\": true}}'\n",
            pidfile.display()
        ),
    );
    let daemon = cpu.home.daemon();
    cpu.wait_workers(&daemon, 2);
    let id = cpu.insert("exec", r#"{"handler":"slow-once"}"#, 3, "NULL");
    let handler = read_pid(&pidfile);
    let worker = procs::workers(daemon.pid())
        .into_iter()
        .find(|&w| procs::children(w).contains(&handler))
        .expect("the handler runs under one of the workers");
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(worker, libc::SIGKILL) }, 0);
    let (state, detail) = cpu.finish(id);
    assert_eq!(
        (state.as_str(), detail.as_str()),
        ("succeeded", r#"{"done":true}"#)
    );
    let first = cpu.home.text(&format!(
        "SELECT outcome || ': ' || error FROM job_runs WHERE job_id = {id} AND attempt = 1;"
    ));
    assert!(
        first.starts_with(&format!(
            "retry: the CPU worker {worker} running this job was killed by signal 9 (SIGKILL)"
        )),
        "{first}"
    );
    wait_gone(handler, "the killed worker's handler");
    let workers = cpu.wait_workers(&daemon, 2);
    assert!(!workers.contains(&worker));
    daemon.wait_log("pool.worker_died");
}

#[test]
fn no_worker_or_handler_outlives_a_kill_9_of_the_daemon() {
    let cpu = setup("[cpu]\nworkers = 2\n");
    let pidfile = cpu.hanging_handler("hang", false);
    let daemon = cpu.home.daemon();
    let workers = cpu.wait_workers(&daemon, 2);
    cpu.insert("exec", r#"{"handler":"hang"}"#, 1, "NULL");
    let handler = read_pid(&pidfile);
    daemon.kill9();
    for pid in workers {
        wait_gone(pid, "a CPU worker");
    }
    wait_gone(handler, "the running handler");
}

#[test]
fn going_over_the_memory_limit_fails_that_attempt_and_nothing_else() {
    let cpu = setup("[cpu]\nworkers = 1\nmemory_limit = \"256MiB\"\n");
    cpu.handler(
        "hog",
        "#!/usr/bin/env python3\nimport sys\nsys.stdin.read()\nblob = bytearray(1024 * 1024 * 1024)\nprint('{}')\n",
    );
    let daemon = cpu.home.daemon();
    let error = cpu.dead("exec", r#"{"handler":"hog"}"#);
    assert!(
        error.starts_with("exec handler hog exited with status 1; stderr:")
            && error.contains("MemoryError"),
        "{error}"
    );
    std::fs::write(cpu.root.join("f"), "x").unwrap();
    cpu.ok("checksum", r#"{"path":"f"}"#);
    cpu.wait_workers(&daemon, 1);
    let log = daemon.stop();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn workers_are_replaced_after_max_jobs_per_worker() {
    let cpu = setup("[cpu]\nworkers = 1\nmax_jobs_per_worker = 2\n");
    cpu.handler("parent", "#!/bin/sh\necho \"{\\\"worker\\\": $PPID}\"\n");
    let _daemon = cpu.home.daemon();
    let workers: Vec<i64> = (0..5)
        .map(|_| {
            cpu.ok("exec", r#"{"handler":"parent"}"#)["worker"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(workers[0], workers[1], "{workers:?}");
    assert_ne!(workers[1], workers[2], "{workers:?}");
    assert_eq!(workers[2], workers[3], "{workers:?}");
    assert_ne!(workers[3], workers[4], "{workers:?}");
}

#[test]
fn cancelling_a_running_cpu_job_kills_it() {
    let cpu = setup("[cpu]\nworkers = 1\n");
    let pidfile = cpu.hanging_handler("hang", false);
    let daemon = cpu.home.daemon();
    let id = cpu.insert("exec", r#"{"handler":"hang"}"#, 3, "NULL");
    let handler = read_pid(&pidfile);
    cpu.home.ok(&["cancel", &id.to_string()]);
    let (state, _) = cpu.finish(id);
    assert_eq!(state, "cancelled");
    wait_gone(handler, "the cancelled handler");
    cpu.wait_workers(&daemon, 1);
}

#[test]
fn io_jobs_queued_behind_cpu_jobs_are_not_held_up_by_a_busy_cpu_pool() {
    let cpu = setup("[cpu]\nworkers = 1\n");
    cpu.handler("hang", "#!/bin/sh\nexec sleep 300\n");
    let hogs: Vec<i64> = (0..3)
        .map(|_| cpu.insert("exec", r#"{"handler":"hang"}"#, 1, "NULL"))
        .collect();
    let noop = cpu.insert("noop", "{}", 1, "NULL");
    let daemon = cpu.home.daemon();
    cpu.home.wait_state(noop, "succeeded");
    let running = cpu
        .home
        .query_i64("SELECT count(*) FROM jobs WHERE kind = 'exec' AND state = 'running'");
    assert_eq!(running, 1, "one worker, one CPU job claimed");
    assert_eq!(cpu.home.state(hogs[2]), "queued");
    // Shutdown kills the running handler and puts its job back uncounted.
    let log = daemon.stop();
    assert!(log.contains("requeued=1"), "{log}");
    let attempts = cpu
        .home
        .query_i64("SELECT sum(attempts) FROM jobs WHERE kind = 'exec' AND state = 'queued'");
    assert_eq!(attempts, 0);
}

#[test]
fn the_example_handlers_in_jobs_work_as_the_readme_says() {
    let home = Home::new();
    let root = home.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs");
    let cpu = setup_in(home, root, examples, "");
    std::fs::write(cpu.root.join("notes.txt"), "one two three\nfour five\n").unwrap();
    // A 40x20 colour gradient as a binary PPM.
    let mut ppm = b"P6\n40 20\n255\n".to_vec();
    for _y in 0..20 {
        for x in 0..40u8 {
            ppm.extend_from_slice(&[x * 6, 100, 255 - x * 6]);
        }
    }
    std::fs::write(cpu.root.join("img.ppm"), &ppm).unwrap();
    let _daemon = cpu.home.daemon();

    let wc = cpu.ok(
        "exec",
        r#"{"handler":"wordcount","args":{"path":"notes.txt"}}"#,
    );
    assert_eq!(
        wc,
        serde_json::json!({"path": "notes.txt", "lines": 2, "words": 5, "bytes": 24})
    );
    let thumb = cpu.ok(
        "exec",
        r#"{"handler":"thumbnail","args":{"from":"img.ppm","to":"small.ppm","max":10}}"#,
    );
    assert_eq!(
        (thumb["width"].as_i64(), thumb["height"].as_i64()),
        (Some(10), Some(5))
    );
    let small = std::fs::read(cpu.root.join("small.ppm")).unwrap();
    assert!(small.starts_with(b"P6\n10 5\n255\n"));
    assert_eq!(small.len() as i64, thumb["bytes"].as_i64().unwrap());

    let flaky = cpu.insert("exec", r#"{"handler":"flaky"}"#, 3, "NULL");
    let (state, detail) = cpu.finish(flaky);
    assert_eq!(
        (state.as_str(), detail.as_str()),
        ("succeeded", r#"{"attempt":2}"#)
    );
    let error = cpu.dead("exec", r#"{"handler":"wordcount","args":{"path":"../x"}}"#);
    assert!(error.contains("must stay inside the file root"), "{error}");
}

/// Regression: a symbolic link in `exec.dir` was followed, so
/// `jobs/shlink -> /bin/sh` ran a job's args as shell commands.
#[test]
fn a_symlinked_handler_is_refused() {
    let cpu = setup("");
    std::os::unix::fs::symlink("/bin/sh", cpu.handlers.join("shlink")).unwrap();
    let _daemon = cpu.home.daemon();
    let marker = cpu.home.path().join("pwned");
    let detail = cpu.dead(
        "exec",
        &format!(
            r#"{{"handler":"shlink","args":"touch {}"}}"#,
            marker.display()
        ),
    );
    assert!(
        detail.contains("exec handler shlink in")
            && detail.ends_with("is a symbolic link; handlers must be regular files in exec.dir (copy the program there or write a wrapper script)"),
        "{detail}"
    );
    assert!(!marker.exists());
}

/// Regression: a handler's `setsid` child left its process group and so
/// outlived the job (only the group was killed).
#[test]
fn a_setsid_grandchild_does_not_outlive_its_job() {
    let cpu = setup("");
    let pidfile = cpu.home.path().join("escaped.pid");
    cpu.handler(
        "escape",
        &format!(
            "#!/bin/sh\nsetsid sh -c 'echo $$ > {}; exec sleep 300' < /dev/null > /dev/null 2>&1 &\n\
             while [ ! -s {} ]; do sleep 0.01; done\necho '{{}}'\n",
            pidfile.display(),
            pidfile.display()
        ),
    );
    let _daemon = cpu.home.daemon();
    cpu.ok("exec", r#"{"handler":"escape"}"#);
    let pid = read_pid(&pidfile);
    wait_gone(pid, "the setsid child of a finished job");
    // And reaped: not left a zombie of the worker (its sweep waited only
    // for its own process group and ran to its bound each job).
    let reaped = wait_for(PATIENCE, || {
        (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    });
    assert!(reaped.is_some(), "{pid} stays a zombie of the worker");
}

/// Regression: at a deadline (or a cancel) the worker was killed, and a
/// `setsid` child its handler had started was adopted by init and ran on.
#[test]
fn a_setsid_grandchild_of_a_timed_out_handler_is_killed_with_it() {
    let cpu = setup("");
    let pidfile = cpu.home.path().join("hung.pid");
    cpu.handler(
        "escape-hang",
        &format!(
            "#!/bin/sh\nsetsid sh -c 'echo $$ > {}; exec sleep 300' < /dev/null > /dev/null 2>&1 &\n\
             while [ ! -s {} ]; do sleep 0.01; done\nexec sleep 300\n",
            pidfile.display(),
            pidfile.display()
        ),
    );
    let _daemon = cpu.home.daemon();
    let id = cpu.insert("exec", r#"{"handler":"escape-hang"}"#, 1, "500");
    let grandchild = read_pid(&pidfile);
    let (state, detail) = cpu.finish(id);
    assert_eq!(
        (state.as_str(), detail.as_str()),
        ("dead", "timed out after 500 ms")
    );
    wait_gone(grandchild, "the timed-out handler's setsid grandchild");
}

/// Regression: descriptors the daemon inherited (here fd 7, open on a
/// file, without close-on-exec) reached every handler.
#[test]
fn handlers_inherit_no_descriptors_beyond_stderr() {
    use std::os::unix::process::CommandExt;
    let cpu = setup("");
    cpu.handler(
        "fds",
        "#!/bin/sh\nprintf '{\"fds\":\"%s\"}' \"$(for f in /proc/$$/fd/*; do readlink $f; done | tr '\\n' ' ')\"\n",
    );
    let secret = cpu.home.path().join("inherited");
    std::fs::write(&secret, "the daemon's file").unwrap();
    let file = std::fs::File::open(&secret).unwrap();
    let mut cmd = cpu.home.cmd(&["run"]);
    let raw = std::os::fd::AsRawFd::as_raw_fd(&file);
    // SAFETY: dup2 is async-signal-safe; the child only moves the
    // descriptor to 7 (without close-on-exec) before exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 7) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let log = cpu.home.path().join("daemon.log");
    let _daemon = cpu.home.spawn_daemon(cmd, &log, &log);
    let result = cpu.ok("exec", r#"{"handler":"fds"}"#);
    // The shell's own descriptors (its script, a pipe) may show; nothing
    // of the daemon's.
    let fds = result["fds"].as_str().unwrap();
    assert!(fds.contains("pipe:"), "the listing worked: {fds}");
    assert!(
        !fds.contains("inherited"),
        "the daemon's fd 7 reached the handler: {fds}"
    );
}

/// Regression: a handler could read the daemon's secrets from
/// `/proc/<daemon pid>/environ` (the SMTP password, the dashboard token).
#[test]
fn handlers_cannot_read_the_daemons_secrets() {
    let cpu = setup(
        "[email.smtp]\npassword_env = \"SMTP_PW\"\n[metrics]\ndashboard_token_env = \"DASH_TOKEN\"\n",
    );
    let daemon_pid = cpu.home.path().join("daemon.pid");
    cpu.handler(
        "snoop",
        &format!(
            "#!/bin/sh\nd=$(cat {})\n\
             for f in /proc/$d/environ /proc/$PPID/environ /proc/$d/cmdline; do cat $f 2>/dev/null; echo; done > {}/seen\n\
             echo '{{}}'\n",
            daemon_pid.display(),
            cpu.home.path().display()
        ),
    );
    let log = cpu.home.path().join("daemon.log");
    let daemon = cpu.home.daemon_with_env(
        &log,
        &log,
        &[("SMTP_PW", "hunter2-smtp"), ("DASH_TOKEN", "hunter2-dash")],
    );
    std::fs::write(&daemon_pid, daemon.pid().to_string()).unwrap();
    cpu.ok("exec", r#"{"handler":"snoop"}"#);
    let seen = std::fs::read_to_string(cpu.home.path().join("seen")).unwrap();
    assert!(
        !seen.contains("hunter2"),
        "the handler read a secret: {seen:?}"
    );
    // The variable names may show, their values may not; and the test
    // did read the daemon's block (as root it still can).
    let environ = std::fs::read(format!("/proc/{}/environ", daemon.pid())).unwrap_or_default();
    assert!(
        !String::from_utf8_lossy(&environ).contains("hunter2"),
        "the daemon's environment block still holds a secret"
    );
}

/// `exec.user`: a daemon started as root runs handlers as that user; one
/// that is not root refuses to start with it.
#[test]
fn handlers_run_as_exec_user() {
    let cpu = setup("");
    let config = std::fs::read_to_string(cpu.home.config()).unwrap();
    std::fs::write(
        cpu.home.config(),
        config.replace("[exec]\n", "[exec]\nuser = \"nobody\"\n"),
    )
    .unwrap();
    cpu.handler(
        "whoami",
        "#!/bin/sh\nprintf '{\"uid\":%s,\"gid\":%s}' \"$(id -u)\" \"$(id -g)\"\n",
    );
    // The handler must be able to run as nobody: the folders are the
    // test's (root's) temp folders, readable by all.
    for dir in [cpu.home.path(), &cpu.handlers, &cpu.root] {
        chmod(dir, 0o755);
    }
    if !rustix::process::geteuid().is_root() {
        cpu.home
            .jobd(&["run"])
            .fails(1, "exec.user is set, but the daemon runs as uid");
        return;
    }
    let _daemon = cpu.home.daemon();
    let result = cpu.ok("exec", r#"{"handler":"whoami"}"#);
    let (uid, gid) = jobd::os::confine::lookup_user("nobody").unwrap();
    assert_eq!(result["uid"], uid, "{result}");
    assert_eq!(result["gid"], gid, "{result}");
    let missing = Home::with_config("[exec]\nuser = \"no-such-user-here\"\n");
    missing.jobd(&["check-config"]).fails(
        1,
        "exec.user names no-such-user-here, who is not a user of this system",
    );
}

/// A job too large for the worker's message limit (its payload, once
/// escaped for the message, is over 64 MiB) goes dead at once, naming
/// why, and the worker that was to take it lives on. (It was taken for a
/// worker that died while idle: each attempt killed two healthy workers
/// and failed again, until attempts ran out.)
#[test]
fn a_job_too_large_for_a_worker_goes_dead_and_the_worker_lives_on() {
    let cpu = setup("[cpu]\nworkers = 1\n[limits]\nmax_payload_bytes = \"100MiB\"\n");
    cpu.handler("ok", "#!/bin/sh\ncat > /dev/null\necho '{\"ok\":1}'\n");
    let daemon = cpu.home.daemon();
    let before = cpu.wait_workers(&daemon, 1);
    // 17 million escaped quotes: 34 MB of payload, 68 MB once escaped
    // again for the message.
    let payload = format!(
        "{{\"handler\":\"ok\",\"args\":\"{}\"}}",
        "\\\"".repeat(17_000_000)
    );
    let db = rusqlite::Connection::open(cpu.home.db()).unwrap();
    db.execute(
        "INSERT INTO jobs (kind, payload, max_attempts) VALUES ('exec', ?1, 3)",
        [&payload],
    )
    .unwrap();
    let id = db.last_insert_rowid();
    drop(payload);
    let (state, detail) = cpu.finish(id);
    assert_eq!(state, "dead", "{detail}");
    assert!(
        detail.contains("too large to hand to a CPU worker"),
        "{detail}"
    );
    assert_eq!(
        cpu.home
            .text(&format!("SELECT attempts FROM jobs WHERE id = {id};"))
            .trim(),
        "1"
    );
    assert_eq!(cpu.ok("exec", r#"{"handler":"ok"}"#)["ok"], 1);
    assert_eq!(
        cpu.wait_workers(&daemon, 1),
        before,
        "the worker was replaced"
    );
}

/// A compress killed at its deadline leaves its partial temporary file,
/// but the next attempt of the job removes it: at most one is left, not
/// one per attempt (a large file timing out on each of its attempts
/// filled the disk with them).
#[test]
fn attempts_killed_mid_compress_leave_at_most_one_temporary_file() {
    let cpu = setup("[cpu]\nworkers = 1\n");
    std::fs::write(cpu.root.join("big.bin"), sample(40 << 20)).unwrap();
    let _daemon = cpu.home.daemon();
    let id = cpu.insert(
        "compress",
        r#"{"from":"big.bin","to":"big.bin.zst","format":"zstd","level":19}"#,
        3,
        "400",
    );
    let (state, detail) = cpu.finish(id);
    assert_eq!(state, "dead", "{detail}");
    assert!(detail.contains("timed out"), "{detail}");
    let attempts = cpu
        .home
        .text(&format!("SELECT attempts FROM jobs WHERE id = {id};"));
    assert_eq!(attempts.trim(), "3");
    let left: Vec<String> = std::fs::read_dir(&cpu.root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp"))
        .collect();
    assert!(left.len() <= 1, "temporary files left: {left:?}");
}

/// A worker that dies on its own (here `kill -9` from outside; the OOM
/// killer and an abort past `cpu.memory_limit` do the same) takes with it
/// what its job's handler started in a session of its own: with the
/// worker gone nothing held those processes, which init adopted and which
/// outlived the job and the daemon.
#[test]
fn what_a_handler_started_goes_when_its_worker_dies() {
    let cpu = setup("[cpu]\nworkers = 1\n");
    let pidfile = cpu.home.path().join("escaped.pid");
    cpu.handler(
        "escape",
        &format!(
            "#!/bin/sh\nsetsid sleep 301 >/dev/null 2>&1 </dev/null &\necho $! > {}\nsleep 300\n",
            pidfile.display()
        ),
    );
    let daemon = cpu.home.daemon();
    let worker = cpu.wait_workers(&daemon, 1)[0];
    let id = cpu.insert("exec", r#"{"handler":"escape"}"#, 1, "NULL");
    let escaped = wait_for(PATIENCE, || {
        let text = std::fs::read_to_string(&pidfile).ok()?;
        text.trim().parse::<i32>().ok()
    })
    .expect("the handler started its child");
    // The setsid child is running (not just forked) before the kill.
    wait_for(PATIENCE, || {
        let cmd = std::fs::read(format!("/proc/{escaped}/cmdline")).unwrap_or_default();
        cmd.starts_with(b"sleep").then_some(())
    })
    .expect("the child runs sleep");
    assert!(std::process::Command::new("kill")
        .args(["-9", &worker.to_string()])
        .status()
        .unwrap()
        .success());
    let (state, detail) = cpu.finish(id);
    assert_eq!(state, "dead", "{detail}");
    wait_gone(escaped, "the setsid child of a job whose worker died");
    // A new worker serves the next job.
    cpu.handler("ok", "#!/bin/sh\necho '{\"ok\":1}'\n");
    assert_eq!(cpu.ok("exec", r#"{"handler":"ok"}"#)["ok"], 1);
}
