//! Warm handlers (docs/reference.md, "Warm handlers"): a persistent Python
//! handler run by the real daemon's CPU pool, fed jobs over its stdin and
//! answering on its stdout, and what happens when it dies, hangs, grows or
//! breaks the protocol.

mod common;

use common::{wait_for, Home, PATIENCE};

/// A persistent handler `warm` (standard library only) that answers its
/// pid, or does what its args say: `die`, `garbage`, `fail`, `hang`
/// (starting a `sleep` child whose pid it writes to `pidfile`), `wait`
/// (reporting progress and a log line, then waiting for `file`), `grow`
/// (keeping `mb` MiB), `late_double` (answering the job again once the
/// next one has arrived), `exit_leaving_child` (exiting with status 4
/// while a `sleep` child, its pid in `pidfile`, holds its stdout),
/// `grow_child` (starting a child that keeps `mb` MiB), `long_line`
/// (writing one line of `mb` MiB), `not_utf8` (an answer in Latin-1),
/// `answer_and_exit` (exiting once it answered).
const HANDLER: &str = r#"#!/usr/bin/env python3
import json, os, subprocess, sys, time
kept = []
snoozed = set()
late = None
for line in sys.stdin:
    job = json.loads(line)
    args = job["args"] or {}
    what = args.get("do")
    if late is not None:
        print(late, flush=True)
        late = None
    if what == "late_double":
        late = json.dumps({"result": {"pid": os.getpid(), "id": job["id"]}, "id": job["id"]})
    if what == "die":
        os._exit(3)
    if what == "exit_leaving_child":
        # The child inherits stdout and holds it open after the exit.
        child = subprocess.Popen(["sleep", "1000"])
        with open(args["pidfile"], "w") as f:
            f.write(str(child.pid))
        print("leaving a child behind", file=sys.stderr, flush=True)
        os._exit(4)
    if what == "garbage":
        print("hello", flush=True)
        continue
    if what == "fail":
        print(json.dumps({"error": "asked to fail", "retry": False, "id": job["id"]}), flush=True)
        continue
    if what == "hang":
        child = subprocess.Popen(["sleep", "60"])
        with open(args["pidfile"], "w") as f:
            f.write(str(child.pid))
        time.sleep(60)
    if what == "double":
        answer = json.dumps({"result": {"pid": os.getpid(), "id": job["id"]}, "id": job["id"]})
        print(answer + "\n" + answer, flush=True)
        continue
    if what == "snooze" or (what == "snooze_once" and job["id"] not in snoozed):
        snoozed.add(job["id"])
        print(json.dumps({"snooze_ms": 50, "id": job["id"]}), flush=True)
        continue
    if what == "wait":
        print(json.dumps({"progress": 0.5, "note": "halfway"}), flush=True)
        print(json.dumps({"log": "waiting for " + args["file"]}), flush=True)
        while not os.path.exists(args["file"]):
            time.sleep(0.01)
    if what == "nap":
        time.sleep(args["ms"] / 1000)
    if what == "grow_child":
        # A child in the handler's group keeps `mb` MiB until the handler goes.
        code = ("import sys\nb = bytearray(%d << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\n"
                "print('ready', flush=True)\nsys.stdin.read()" % args["mb"])
        child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        child.stdout.readline()
        kept.append(child)
    if what == "answer_and_exit":
        print(json.dumps({"result": {"pid": os.getpid(), "id": job["id"]}, "id": job["id"]}), flush=True)
        os._exit(0)
    if what == "long_line":
        # `mb` MiB in one line, a MiB at a time (jobd stops reading at 4 MiB).
        chunk = b"x" * (1 << 20)
        for _ in range(args["mb"]):
            sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.write(b"\n")
        sys.stdout.flush()
        continue
    if what == "not_utf8":
        sys.stdout.buffer.write(b'{"id": %d, "result": "caf\xe9"}\n' % job["id"])
        sys.stdout.flush()
        continue
    if what == "grow":
        blob = bytearray(args["mb"] << 20)
        for i in range(0, len(blob), 4096):
            blob[i] = 1
        kept.append(blob)
    print(json.dumps({"progress": 0.5, "note": "halfway"}), flush=True)
    print(json.dumps({"result": {"pid": os.getpid(), "id": job["id"]}, "id": job["id"]}), flush=True)
"#;

/// A home with the handler, one CPU worker, and `extra` config.
fn warm_home(extra: &str) -> Home {
    use std::os::unix::fs::PermissionsExt;
    let home = Home::new();
    let handlers = home.path().join("handlers");
    std::fs::create_dir_all(&handlers).unwrap();
    let path = handlers.join("warm");
    std::fs::write(&path, HANDLER).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    home.write_config(&format!(
        "[cpu]\nworkers = 1\n[exec]\ndir = \"{}\"\n[exec.handlers.warm]\nmode = \"persistent\"\n{extra}\n\
         [daemon]\nshutdown_grace = \"200ms\"\n",
        handlers.display()
    ));
    home.migrate();
    home
}

/// Adds the handler `name` with the text `script` to the home's handlers
/// folder (its section, if any, goes in `warm_home`'s `extra`).
fn add_handler(home: &Home, name: &str, script: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = home.path().join("handlers").join(name);
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Inserts an exec job for `warm` with `args`; returns its id.
fn job(home: &Home, args: &str, timeout_ms: &str) -> i64 {
    home.insert_job(
        "exec",
        &format!("{{\"handler\":\"warm\",\"args\":{args}}}"),
        "1",
        timeout_ms,
    )
}

/// Waits until job `id` is final; returns (state, result or last_error).
fn finish(home: &Home, id: i64) -> (String, String) {
    let state = wait_for(PATIENCE, || {
        let state = home.state(id);
        (state != "queued" && state != "running").then_some(state)
    })
    .unwrap_or_else(|| panic!("job {id} never finished"));
    let detail = home.text(&format!(
        "SELECT coalesce(result, last_error) FROM jobs WHERE id = {id};"
    ));
    (state, detail.trim().to_string())
}

/// The pid a successful job's handler answered.
fn pid_of(home: &Home, id: i64) -> i64 {
    let (state, detail) = finish(home, id);
    assert_eq!(state, "succeeded", "job {id}: {detail}");
    let result: serde_json::Value = serde_json::from_str(&detail).unwrap();
    result["pid"].as_i64().unwrap()
}

#[test]
fn one_persistent_process_serves_a_thousand_jobs() {
    let home = warm_home("");
    home.sqlite3(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000) \
         INSERT INTO jobs(kind, payload) SELECT 'exec', '{\"handler\":\"warm\",\"args\":{}}' FROM n;",
    )
    .succeeds();
    let daemon = home.daemon();
    home.wait_count(
        "SELECT count(*) FROM jobs WHERE state = 'succeeded';",
        1_000,
    );
    daemon.stop();
    let pids = home.text("SELECT count(DISTINCT json_extract(result, '$.pid')) FROM jobs;");
    assert_eq!(pids.trim(), "1", "one handler process served them all");
}

#[test]
fn a_handler_that_dies_or_breaks_the_protocol_fails_only_its_job_and_is_replaced() {
    let home = warm_home("");
    let _daemon = home.daemon();
    let first = pid_of(&home, job(&home, "{}", "NULL"));
    let (state, error) = finish(&home, job(&home, "{\"do\":\"die\"}", "NULL"));
    assert_eq!(state, "dead", "{error}");
    assert!(
        error.starts_with("exec handler warm exited with status 3 during the job"),
        "{error}"
    );
    let second = pid_of(&home, job(&home, "{}", "NULL"));
    assert_ne!(first, second, "a new handler after the crash");
    let (state, error) = finish(&home, job(&home, "{\"do\":\"garbage\"}", "NULL"));
    assert_eq!(state, "dead", "{error}");
    assert!(
        error.starts_with(
            "exec handler warm broke the protocol: it wrote \"hello\", which is not a JSON object"
        ),
        "{error}"
    );
    let third = pid_of(&home, job(&home, "{}", "NULL"));
    assert_ne!(second, third, "a new handler after the protocol fault");
    // A job the handler reports failed keeps the handler.
    let (state, error) = finish(&home, job(&home, "{\"do\":\"fail\"}", "NULL"));
    assert_eq!(state, "dead", "{error}");
    assert_eq!(error, "exec handler warm: asked to fail");
    assert_eq!(pid_of(&home, job(&home, "{}", "NULL")), third);
}

#[test]
fn a_hanging_handler_is_killed_at_the_deadline_with_its_children() {
    let home = warm_home("");
    let _daemon = home.daemon();
    let before = pid_of(&home, job(&home, "{}", "NULL"));
    let pidfile = home.path().join("child.pid");
    let id = job(
        &home,
        &format!("{{\"do\":\"hang\",\"pidfile\":\"{}\"}}", pidfile.display()),
        "1000",
    );
    let (state, error) = finish(&home, id);
    assert_eq!(state, "dead", "{error}");
    assert!(error.starts_with("timed out after 1000 ms"), "{error}");
    let child: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let gone = wait_for(PATIENCE, || {
        // SAFETY: kill with signal 0 only checks that the process exists.
        (unsafe { libc::kill(child, 0) } != 0).then_some(())
    });
    assert!(
        gone.is_some(),
        "the handler's child {child} outlived the deadline"
    );
    assert_ne!(pid_of(&home, job(&home, "{}", "NULL")), before);
}

#[test]
fn a_handler_past_its_memory_limit_or_max_jobs_is_replaced() {
    let home = warm_home("memory_limit = \"64MiB\"\nmax_jobs = 3\n");
    let _daemon = home.daemon();
    let first = pid_of(&home, job(&home, "{}", "NULL"));
    let grown = pid_of(&home, job(&home, "{\"do\":\"grow\",\"mb\":100}", "NULL"));
    assert_eq!(grown, first, "the job that grew it ran on it");
    let second = pid_of(&home, job(&home, "{}", "NULL"));
    assert_ne!(second, first, "replaced after passing 64 MiB");
    let pids: Vec<i64> = (0..4)
        .map(|_| pid_of(&home, job(&home, "{}", "NULL")))
        .collect();
    // Three jobs a process: the second served one more, then two more, then a third came.
    assert_eq!(pids[0], second);
    assert_eq!(pids[1], second);
    assert_ne!(pids[2], second);
    assert_eq!(pids[3], pids[2]);
}

#[test]
fn progress_reaches_jobd_show_and_tail_while_the_job_runs_and_log_lines_the_daemon_log() {
    let home = warm_home("");
    let mut tail = common::Spawned::start(
        home.cmd(&["tail", "--kind", "exec"])
            .stdout(std::process::Stdio::piped()),
    );
    let tailed = common::lines(tail.stdout.take().unwrap());
    let daemon = home.daemon();
    let file = home.path().join("go");
    let id = job(
        &home,
        &format!("{{\"do\":\"wait\",\"file\":\"{}\"}}", file.display()),
        "NULL",
    );
    let shown = wait_for(PATIENCE, || {
        let show = home.ok(&["show", &id.to_string()]);
        show.contains("  progress         50 %: halfway\n")
            .then_some(show)
    });
    assert!(
        shown.is_some(),
        "no progress in jobd show while job {id} ran"
    );
    let line = tailed
        .recv_timeout(PATIENCE)
        .expect("jobd tail printed the progress");
    assert!(
        line.contains(&format!(
            " progress job={id} kind=exec queue=default attempt=1 done=50% note=halfway"
        )),
        "{line}"
    );
    assert_eq!(home.state(id), "running");
    daemon.wait_log(&format!("job.log id={id}"));
    assert!(
        daemon
            .log()
            .contains(&format!("waiting for {}", file.display())),
        "{}",
        daemon.log()
    );
    std::fs::write(&file, "").unwrap();
    pid_of(&home, id);
    let line = tailed
        .recv_timeout(PATIENCE)
        .expect("jobd tail printed the attempt");
    assert!(line.contains(&format!(" succeeded job={id} ")), "{line}");
    tail.kill().unwrap();
    tail.wait().unwrap();
    // Finished, the job shows no progress.
    let show = home.ok(&["show", &id.to_string()]);
    assert!(!show.contains("progress"), "{show}");
}

#[test]
fn the_python_helper_runs_a_handler_warm_or_one_shot_and_the_thumbnail_example_warm() {
    use std::os::unix::fs::PermissionsExt;
    let home = Home::new();
    let handlers = home.path().join("handlers");
    let root = home.path().join("root");
    std::fs::create_dir_all(&handlers).unwrap();
    std::fs::create_dir_all(&root).unwrap();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs");
    for file in ["jobd.py", "thumbnail"] {
        std::fs::copy(examples.join(file), handlers.join(file)).unwrap();
    }
    let helper = "#!/usr/bin/env python3\nimport os\nimport jobd\n\n\
        def run(args, ctx):\n    print('chatter that must not break the protocol')\n    \
        ctx.progress(0.5, 'half')\n    what = (args or {}).get('do')\n    \
        if what == 'fail':\n        raise jobd.Fail('no such picture')\n    \
        if what == 'oops':\n        raise ValueError('bad luck')\n    \
        return {'pid': os.getpid(), 'id': ctx.id, 'attempt': ctx.attempt}\n\n\
        jobd.serve(run)\n";
    for name in ["helped", "helped_once"] {
        let path = handlers.join(name);
        std::fs::write(&path, helper).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    home.write_config(&format!(
        "[cpu]\nworkers = 1\n[file]\nroots = [\"{}\"]\n[exec]\ndir = \"{}\"\n\
         [exec.handlers.helped]\nmode = \"persistent\"\n\
         [exec.handlers.thumbnail]\nmode = \"persistent\"\n",
        root.display(),
        handlers.display()
    ));
    home.migrate();
    let mut ppm = b"P6\n40 20\n255\n".to_vec();
    ppm.extend(std::iter::repeat_n(200u8, 40 * 20 * 3));
    std::fs::write(root.join("img.ppm"), &ppm).unwrap();
    let _daemon = home.daemon();
    let run = |handler: &str, args: &str, attempts: &str| -> (String, String) {
        let id = home.insert_job(
            "exec",
            &format!("{{\"handler\":\"{handler}\",\"args\":{args}}}"),
            attempts,
            "NULL",
        );
        finish(&home, id)
    };
    let first: serde_json::Value = serde_json::from_str(&run("helped", "{}", "1").1).unwrap();
    let second: serde_json::Value = serde_json::from_str(&run("helped", "{}", "1").1).unwrap();
    assert_eq!(first["pid"], second["pid"], "one warm process");
    assert_eq!(second["attempt"], 1);
    // The helper sends print()'s chatter to stderr, which an error's
    // last_error ends with when it was read in time.
    let (state, error) = run("helped", "{\"do\":\"fail\"}", "3");
    assert_eq!(state, "dead");
    assert!(
        error == "exec handler helped: no such picture"
            || error == "exec handler helped: no such picture; stderr: chatter that must not break the protocol",
        "{error}"
    );
    let (state, error) = run("helped", "{\"do\":\"oops\"}", "1");
    assert_eq!(state, "dead");
    assert!(
        error.starts_with("exec handler helped: ValueError: bad luck"),
        "{error}"
    );
    // One-shot, the same file answers once per process.
    let once: serde_json::Value = serde_json::from_str(&run("helped_once", "{}", "1").1).unwrap();
    assert_ne!(once["pid"], first["pid"]);
    // The example, warm.
    for _ in 0..2 {
        let (state, detail) = run(
            "thumbnail",
            "{\"from\":\"img.ppm\",\"to\":\"small.ppm\",\"max\":10}",
            "1",
        );
        assert_eq!(state, "succeeded", "{detail}");
        let thumb: serde_json::Value = serde_json::from_str(&detail).unwrap();
        assert_eq!(
            (thumb["width"].as_i64(), thumb["height"].as_i64()),
            (Some(10), Some(5))
        );
    }
    let (state, error) = run("thumbnail", "{\"from\":\"../x\",\"to\":\"y\"}", "3");
    assert_eq!(
        state, "dead",
        "bad input fails a warm thumbnail for good: {error}"
    );
    assert!(
        error.contains("must be relative and stay inside the file root"),
        "{error}"
    );
}

/// The code block of `jobs/README.md` that follows the line starting with
/// `marker`.
fn readme_block(marker: &str) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/jobs/README.md")).unwrap();
    let after = &readme[readme.find(marker).expect("the marker")..];
    let start = after.find("```").unwrap();
    let body = &after[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("```").unwrap()].to_string()
}

#[test]
fn the_node_and_shell_examples_of_the_readme_run_warm() {
    use std::os::unix::fs::PermissionsExt;
    let home = Home::new();
    let handlers = home.path().join("handlers");
    std::fs::create_dir_all(&handlers).unwrap();
    let mut config = format!(
        "[cpu]\nworkers = 1\n[exec]\ndir = \"{}\"\n",
        handlers.display()
    );
    let mut names = Vec::new();
    for (name, marker, tool) in [
        ("node_echo", "**Node**", "node"),
        ("sh_echo", "**Shell**", "jq"),
    ] {
        if std::process::Command::new(tool)
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("{tool} is not installed: the {name} example was not run");
            continue;
        }
        let path = handlers.join(name);
        std::fs::write(&path, readme_block(marker)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        config.push_str(&format!("[exec.handlers.{name}]\nmode = \"persistent\"\n"));
        names.push(name);
    }
    home.write_config(&config);
    home.migrate();
    let _daemon = home.daemon();
    for name in names {
        for n in 0..2 {
            let id = home.insert_job(
                "exec",
                &format!("{{\"handler\":\"{name}\",\"args\":{{\"n\":{n}}}}}"),
                "1",
                "NULL",
            );
            let (state, detail) = finish(&home, id);
            assert_eq!(state, "succeeded", "{name}: {detail}");
            let result: serde_json::Value = serde_json::from_str(&detail).unwrap();
            assert_eq!(result, serde_json::json!({"echo": {"n": n}}), "{name}");
        }
    }
}

#[test]
fn cancelling_a_running_job_kills_its_warm_handler_and_the_next_job_gets_a_fresh_one() {
    let home = warm_home("");
    let _daemon = home.daemon();
    let before = pid_of(&home, job(&home, "{}", "NULL"));
    let file = home.path().join("never");
    let id = job(
        &home,
        &format!("{{\"do\":\"wait\",\"file\":\"{}\"}}", file.display()),
        "NULL",
    );
    home.wait_state(id, "running");
    home.ok(&["cancel", &id.to_string()]);
    let (state, _) = finish(&home, id);
    assert_eq!(state, "cancelled");
    let gone = wait_for(PATIENCE, || {
        // SAFETY: kill with signal 0 only checks that the process exists.
        (unsafe { libc::kill(before as i32, 0) } != 0).then_some(())
    });
    assert!(gone.is_some(), "the handler {before} outlived the cancel");
    assert_ne!(pid_of(&home, job(&home, "{}", "NULL")), before);
}

/// A cancel reads what the worker sent before it, for an answer already
/// there, but only so far: a handler that floods progress reports is
/// still stopped.
#[test]
fn a_cancel_stops_a_warm_handler_that_floods_progress_reports() {
    let home = warm_home("[exec.handlers.flood]\nmode = \"persistent\"\n");
    add_handler(
        &home,
        "flood",
        "#!/usr/bin/env python3\nimport json, sys\nfor line in sys.stdin:\n    while True:\n        \
         print(json.dumps({\"progress\": 0.5, \"note\": \"flooding\"}), flush=True)\n",
    );
    let _daemon = home.daemon();
    let id = home.insert_job("exec", r#"{"handler":"flood"}"#, "1", "NULL");
    home.wait_state(id, "running");
    home.ok(&["cancel", &id.to_string()]);
    let (state, detail) = finish(&home, id);
    assert_eq!(state, "cancelled", "{detail}");
}

#[test]
fn a_snooze_uses_no_attempt_and_is_bounded_by_max_snoozes() {
    let home = warm_home("[retry]\nmax_snoozes = 3\n");
    let _daemon = home.daemon();
    let once = job(&home, "{\"do\":\"snooze_once\"}", "NULL");
    pid_of(&home, once);
    let row = home.text(&format!(
        "SELECT attempts || ' ' || snoozes FROM jobs WHERE id = {once};"
    ));
    assert_eq!(row.trim(), "1 1", "one attempt counted, one snooze");
    let outcomes = home.text(&format!(
        "SELECT group_concat(outcome, ',') FROM (SELECT outcome FROM job_runs WHERE job_id = {once} ORDER BY id);"
    ));
    assert_eq!(outcomes.trim(), "snoozed,succeeded");
    let always = job(&home, "{\"do\":\"snooze\"}", "NULL");
    let (state, error) = finish(&home, always);
    assert_eq!(state, "dead", "{error}");
    assert_eq!(
        error,
        "its handler put it off 3 times, the most retry.max_snoozes allows (3)"
    );
    let outcomes = home.text(&format!(
        "SELECT group_concat(outcome, ',') FROM (SELECT outcome FROM job_runs WHERE job_id = {always} ORDER BY id);"
    ));
    assert_eq!(outcomes.trim(), "snoozed,snoozed,snoozed,dead");
}

#[test]
fn a_handler_that_answers_twice_is_replaced_before_the_next_job() {
    let home = warm_home("");
    let _daemon = home.daemon();
    let first = job(&home, "{\"do\":\"double\"}", "NULL");
    let doubled = pid_of(&home, first);
    let next = job(&home, "{}", "NULL");
    let (state, detail) = finish(&home, next);
    assert_eq!(state, "succeeded", "{detail}");
    let result: serde_json::Value = serde_json::from_str(&detail).unwrap();
    assert_eq!(
        result["id"], next,
        "the next job got its own answer: {detail}"
    );
    assert_ne!(result["pid"], doubled, "from a fresh handler");
}

/// A handler that answers without naming its job, and answers a job marked
/// `twice` a second time once the next job has arrived.
const LAX: &str = r#"#!/usr/bin/env python3
import json, sys
late = None
for line in sys.stdin:
    job = json.loads(line)
    if late is not None:
        print(late, flush=True)
        late = None
    answer = json.dumps({"result": {"for": job["id"]}})
    if (job["args"] or {}).get("twice"):
        late = answer
    print(answer, flush=True)
"#;

/// Regression: a second answer to a job that came after jobd had read the
/// first and sent the next job was taken as the next job's answer. An
/// outcome must now name its job, so no line can be taken for another's.
#[test]
fn an_outcome_that_names_no_job_is_a_fault_so_a_late_answer_is_never_taken_for_the_next_job() {
    let home = warm_home("[exec.handlers.lax]\nmode = \"persistent\"\n");
    add_handler(&home, "lax", LAX);
    let _daemon = home.daemon();
    let lax = |args: &str| {
        home.insert_job(
            "exec",
            &format!("{{\"handler\":\"lax\",\"args\":{args}}}"),
            "1",
            "NULL",
        )
    };
    let first = lax("{\"twice\":true}");
    let first_outcome = finish(&home, first);
    let second = lax("{}");
    let (state, detail) = finish(&home, second);
    assert_ne!(
        detail,
        format!("{{\"for\":{first}}}"),
        "job {second} ({state}) was given job {first}'s late answer"
    );
    for (id, (state, error)) in [(first, first_outcome), (second, (state, detail))] {
        assert_eq!(state, "dead", "job {id}: {error}");
        assert!(
            error.starts_with(&format!(
                "exec handler lax broke the protocol: its outcome {{\"result\": {{\"for\": {id}}}}} does not name its job (add \"id\": {id})"
            )),
            "job {id}: {error}"
        );
    }
}

/// A handler whose outcomes name their job, answering one a second time
/// after jobd sent the next: the late line fails only the job running (its
/// handler is out of step), the answered job keeps its outcome, and the
/// next job gets a fresh handler.
#[test]
fn a_late_second_answer_naming_an_earlier_job_replaces_the_handler_and_fails_nothing_finished() {
    let home = warm_home("");
    let _daemon = home.daemon();
    let first = job(&home, "{\"do\":\"late_double\"}", "NULL");
    let pid = pid_of(&home, first);
    let second = job(&home, "{}", "NULL");
    let (state, error) = finish(&home, second);
    assert_eq!(state, "dead", "{error}");
    assert!(
        error.starts_with(&format!(
            "exec handler warm broke the protocol: it wrote a line for job {first} while running job {second}"
        )),
        "{error}"
    );
    assert_eq!(
        pid_of(&home, first),
        pid,
        "the answered job keeps its outcome"
    );
    assert_ne!(pid_of(&home, job(&home, "{}", "NULL")), pid);
}

/// A persistent shell handler that runs `body` for each job, with the
/// job's line in `$job` and its id in `$id`; `body` answers.
fn sh_handler(body: &str) -> String {
    format!(
        "#!/bin/sh\nwhile IFS= read -r job; do\n  \
         id=$(printf '%s' \"$job\" | sed 's/.*\"id\":\\([0-9]*\\).*/\\1/')\n{body}\ndone\n"
    )
}

/// A persistent shell handler that starts a long-lived child in its process
/// group at each job and writes "HANDLER_PID CHILD_PID" to `pids-JOB_ID`
/// in `folder` before answering.
fn forker(folder: &std::path::Path) -> String {
    sh_handler(&format!(
        "  sleep 1000 >/dev/null 2>&1 </dev/null &\n  \
         echo \"$$ $!\" > \"{}/pids-$id\"\n  \
         printf '{{\"id\": %s, \"result\": {{}}}}\\n' \"$id\"",
        folder.display()
    ))
}

/// True once `pid` has left the process table: not running, and not a
/// zombie that nobody reaped either.
fn vanished(pid: i32) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Runs one job of the `forker` handler in `home` and checks that, once
/// the handler is retired, neither it nor the child it forked is left: not
/// running, and not a zombie.
fn forker_leaves_nothing(home: &Home, why: &str) {
    let id = home.insert_job("exec", "{\"handler\":\"forker\"}", "1", "NULL");
    let (state, detail) = finish(home, id);
    assert_eq!(state, "succeeded", "{detail}");
    let pids = std::fs::read_to_string(home.path().join(format!("pids-{id}"))).unwrap();
    let pids: Vec<i32> = pids
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    for (what, pid) in [("handler", pids[0]), ("child the handler forked", pids[1])] {
        let stat = || std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            wait_for(PATIENCE, || vanished(pid).then_some(())).is_some(),
            "after {why}, the {what} {pid} is still in the process table: {}",
            stat()
        );
    }
}

/// Regression: a retired handler's group was killed but what it forked,
/// adopted by the worker (a child subreaper), was never reaped.
#[test]
fn a_handler_retired_after_max_jobs_leaves_no_process_or_zombie() {
    let home = warm_home("[exec.handlers.forker]\nmode = \"persistent\"\nmax_jobs = 1\n");
    add_handler(&home, "forker", &forker(home.path()));
    let _daemon = home.daemon();
    forker_leaves_nothing(&home, "max_jobs");
}

/// Regression: a handler idle past its idle_timeout leaves nothing either.
#[test]
fn a_handler_stopped_after_its_idle_timeout_leaves_no_process_or_zombie() {
    let home =
        warm_home("[exec.handlers.forker]\nmode = \"persistent\"\nidle_timeout = \"100ms\"\n");
    add_handler(&home, "forker", &forker(home.path()));
    let _daemon = home.daemon();
    forker_leaves_nothing(&home, "idle_timeout");
}

/// Regression: when its worker is retired (cpu.max_jobs_per_worker), the
/// worker's warm handlers went with it only by their death signal, and
/// what they had forked lived on.
#[test]
fn a_retired_worker_leaves_no_warm_handler_process_or_zombie() {
    let home = warm_home("[exec.handlers.forker]\nmode = \"persistent\"\n");
    add_handler(&home, "forker", &forker(home.path()));
    let config = std::fs::read_to_string(home.config()).unwrap();
    std::fs::write(
        home.config(),
        config.replace(
            "[cpu]\nworkers = 1\n",
            "[cpu]\nworkers = 1\nmax_jobs_per_worker = 1\n",
        ),
    )
    .unwrap();
    let _daemon = home.daemon();
    forker_leaves_nothing(&home, "the worker's retirement");
}

/// Regression: a worker killed for a job that runs in the worker itself (a
/// cancelled `checksum`) took its idle warm handlers down only by their
/// death signal, and what they had forked lived on.
#[test]
fn a_worker_killed_for_another_job_leaves_no_warm_handler_process_or_zombie() {
    let home = warm_home("[exec.handlers.forker]\nmode = \"persistent\"\n");
    add_handler(&home, "forker", &forker(home.path()));
    let files = home.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    // Sparse: hashing it takes minutes, and it takes no room.
    std::fs::File::create(files.join("big"))
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    let _daemon = home.daemon();
    let id = home.insert_job("exec", "{\"handler\":\"forker\"}", "1", "NULL");
    assert_eq!(finish(&home, id).0, "succeeded");
    let pids = std::fs::read_to_string(home.path().join(format!("pids-{id}"))).unwrap();
    let pids: Vec<i32> = pids
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let hashing = home.insert_job("checksum", "{\"path\":\"big\"}", "1", "NULL");
    home.wait_state(hashing, "running");
    home.ok(&["cancel", &hashing.to_string()]);
    assert_eq!(finish(&home, hashing).0, "cancelled");
    for (what, pid) in [("handler", pids[0]), ("child the handler forked", pids[1])] {
        let stat = || std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            wait_for(PATIENCE, || vanished(pid).then_some(())).is_some(),
            "after the worker was killed, the {what} {pid} is still in the process table: {}",
            stat()
        );
    }
}

/// Regression: a handler that exited while a child it started still held
/// its stdout left jobd waiting for a line until the job's deadline; the
/// job now fails at once naming the exit status, and the child is killed.
#[test]
fn a_handler_that_exits_while_its_child_holds_its_stdout_fails_the_job_at_once() {
    let home = warm_home("");
    let _daemon = home.daemon();
    let pidfile = home.path().join("child.pid");
    // The deadline lies past the test's patience: only a prompt answer passes.
    let id = job(
        &home,
        &format!(
            "{{\"do\":\"exit_leaving_child\",\"pidfile\":\"{}\"}}",
            pidfile.display()
        ),
        "600000",
    );
    let (state, error) = finish(&home, id);
    assert_eq!(state, "dead", "{error}");
    assert!(
        error.starts_with(
            "exec handler warm exited with status 4 during the job; stderr: leaving a child behind"
        ),
        "{error}"
    );
    let child: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        wait_for(PATIENCE, || vanished(child).then_some(())).is_some(),
        "the child {child} outlived its handler"
    );
    pid_of(&home, job(&home, "{}", "NULL"));
}

/// A jobd.py handler that writes to its stdout every way a program can (a
/// print, a write to descriptor 1, a child process), reads its stdin, and
/// with `{"do": "nan"}` returns a result that JSON cannot hold.
const NOISY: &str = r#"#!/usr/bin/env python3
import os, subprocess, sys
import jobd

def run(args, ctx):
    if (args or {}).get("do") == "nan":
        return {"x": float("nan")}
    print("chatter from print")
    sys.stdout.flush()
    os.write(1, b"chatter written to descriptor 1\n")
    subprocess.run(["echo", "chatter from a child"], check=True)
    return {"id": ctx.id, "stdin": sys.stdin.read()}

jobd.serve(run)
"#;

/// Regression: jobd.py only swapped `sys.stdout`, and only when warm: a
/// print in one-shot mode, a write to descriptor 1 or a child process's
/// output went into the protocol, and a read of stdin took its jobs. A
/// NaN in a result was sent as invalid JSON.
#[test]
fn the_python_helper_keeps_stray_output_off_the_protocol_and_refuses_nan_in_both_modes() {
    let home = warm_home("[exec.handlers.noisy]\nmode = \"persistent\"\n");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/jobs/jobd.py"),
        home.path().join("handlers/jobd.py"),
    )
    .unwrap();
    add_handler(&home, "noisy", NOISY);
    add_handler(&home, "noisy_once", NOISY);
    let _daemon = home.daemon();
    for handler in ["noisy", "noisy_once"] {
        for _ in 0..2 {
            let id = home.insert_job(
                "exec",
                &format!("{{\"handler\":\"{handler}\",\"args\":{{}}}}"),
                "1",
                "20000",
            );
            let (state, detail) = finish(&home, id);
            assert_eq!(state, "succeeded", "{handler}: {detail}");
            let result: serde_json::Value = serde_json::from_str(&detail).unwrap();
            assert_eq!(
                result,
                serde_json::json!({"id": id, "stdin": ""}),
                "{handler}"
            );
        }
        let id = home.insert_job(
            "exec",
            &format!("{{\"handler\":\"{handler}\",\"args\":{{\"do\":\"nan\"}}}}"),
            "1",
            "20000",
        );
        let (state, error) = finish(&home, id);
        assert_eq!(state, "dead", "{handler}: {error}");
        assert!(
            error.contains(
                "the result is not JSON: Out of range float values are not JSON compliant"
            ),
            "{handler}: {error}"
        );
    }
}

/// Regression: memory_limit counted only the handler's own process, so a
/// handler whose child grew past it was never replaced.
#[test]
fn memory_limit_counts_what_the_handler_started() {
    let home = warm_home("memory_limit = \"64MiB\"\n");
    let _daemon = home.daemon();
    let first = pid_of(&home, job(&home, "{}", "NULL"));
    let grown = pid_of(
        &home,
        job(&home, "{\"do\":\"grow_child\",\"mb\":100}", "NULL"),
    );
    assert_eq!(grown, first, "the job that grew its child ran on it");
    let next = pid_of(&home, job(&home, "{}", "NULL"));
    assert_ne!(next, first, "replaced once its group passed 64 MiB");
}

/// The peak resident memory of process `pid` in bytes (`VmHWM`).
fn peak_memory(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib << 10
}

/// A line over 4 MiB fails the job naming the fault, without the worker
/// buffering it: its peak memory stays far below the line's 256 MiB.
#[test]
fn a_line_over_4_mib_fails_the_job_naming_the_fault_and_is_not_buffered() {
    let home = warm_home("");
    let daemon = home.daemon();
    let before = pid_of(&home, job(&home, "{}", "NULL"));
    let (state, error) = finish(
        &home,
        job(&home, "{\"do\":\"long_line\",\"mb\":256}", "NULL"),
    );
    assert_eq!(state, "dead", "{error}");
    assert!(
        error.starts_with(
            "exec handler warm broke the protocol: it wrote a line longer than 4 MiB (4194304 bytes), the most a line may hold"
        ),
        "{error}"
    );
    let workers = common::procs::workers(daemon.pid());
    assert_eq!(workers.len(), 1, "{workers:?}");
    let peak = peak_memory(workers[0]);
    assert!(peak < 64 << 20, "the worker peaked at {peak} bytes");
    assert_ne!(pid_of(&home, job(&home, "{}", "NULL")), before);
}

/// A line that is not UTF-8 fails the job with one sentence naming that.
#[test]
fn a_line_that_is_not_utf8_fails_the_job_naming_the_fault() {
    let home = warm_home("");
    let _daemon = home.daemon();
    let before = pid_of(&home, job(&home, "{}", "NULL"));
    let (state, error) = finish(&home, job(&home, "{\"do\":\"not_utf8\"}", "NULL"));
    assert_eq!(state, "dead", "{error}");
    assert!(
        error.starts_with(
            "exec handler warm broke the protocol: it wrote a line that is not UTF-8: byte 0xE9 at offset 24, after \"{\\\"id\\\": 2, \\\"result\\\": \\\"caf\""
        ),
        "{error}"
    );
    assert_ne!(pid_of(&home, job(&home, "{}", "NULL")), before);
}

/// A one-shot jobd.py handler that reports progress and a log line, then
/// waits for the file its args name.
const ONE_SHOT_WAITER: &str = r#"#!/usr/bin/env python3
import os, time
import jobd

def run(args, ctx):
    ctx.progress(0.5, "halfway")
    ctx.log("waiting for " + args["file"])
    while not os.path.exists(args["file"]):
        time.sleep(0.01)
    return {"id": ctx.id}

jobd.serve(run)
"#;

/// One-shot handlers send progress and log lines on their messages
/// descriptor (JOBD_MESSAGES_FD), apart from the result on stdout.
#[test]
fn a_one_shot_handlers_progress_reaches_jobd_show_and_its_log_line_the_daemon_log() {
    let home = warm_home("");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/jobs/jobd.py"),
        home.path().join("handlers/jobd.py"),
    )
    .unwrap();
    add_handler(&home, "waiter", ONE_SHOT_WAITER);
    let daemon = home.daemon();
    let file = home.path().join("go");
    let id = home.insert_job(
        "exec",
        &format!(
            "{{\"handler\":\"waiter\",\"args\":{{\"file\":\"{}\"}}}}",
            file.display()
        ),
        "1",
        "NULL",
    );
    let shown = wait_for(PATIENCE, || {
        let show = home.ok(&["show", &id.to_string()]);
        show.contains("  progress         50 %: halfway\n")
            .then_some(show)
    });
    assert!(
        shown.is_some(),
        "no progress in jobd show while job {id} ran"
    );
    assert_eq!(home.state(id), "running");
    let line = daemon.wait_log(&format!("job.log id={id}"));
    assert!(
        line.contains(&format!("waiting for {}", file.display())),
        "{line}"
    );
    std::fs::write(&file, "").unwrap();
    let (state, detail) = finish(&home, id);
    assert_eq!(
        (state.as_str(), detail),
        ("succeeded", format!("{{\"id\":{id}}}"))
    );
}

/// A line on the messages descriptor that is not the protocol fails the
/// job naming the fault, as on a warm handler's stdout.
#[test]
fn a_bad_line_on_a_one_shot_handlers_messages_descriptor_fails_the_job() {
    let home = warm_home("");
    add_handler(
        &home,
        "chatty",
        "#!/bin/sh\necho hello >&\"$JOBD_MESSAGES_FD\"\nsleep 1000\n",
    );
    let _daemon = home.daemon();
    let id = home.insert_job("exec", "{\"handler\":\"chatty\"}", "1", "600000");
    let (state, error) = finish(&home, id);
    assert_eq!(state, "dead", "{error}");
    assert!(
        error.starts_with(
            "exec handler chatty broke the protocol on its messages descriptor (4): it wrote \"hello\", which is not a JSON object"
        ),
        "{error}"
    );
}

/// Regression: a warm handler that exited on its own between jobs stayed a
/// zombie until the next job of its name, or its idle_timeout (minutes).
#[test]
fn a_handler_that_exits_between_jobs_is_reaped_without_waiting_for_the_next_job() {
    let home = warm_home("");
    let _daemon = home.daemon();
    let pid = pid_of(&home, job(&home, "{\"do\":\"answer_and_exit\"}", "NULL")) as i32;
    let stat = || std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        wait_for(PATIENCE, || vanished(pid).then_some(())).is_some(),
        "the handler {pid} that exited is still in the process table: {}",
        stat()
    );
}

#[test]
fn jobd_handlers_and_the_dashboard_list_the_warm_process_with_its_jobs_and_memory() {
    let home = warm_home("");
    let port = common::free_port();
    // A short lease brings the heartbeat, which reports the handlers,
    // every third of a second.
    let config = std::fs::read_to_string(home.config()).unwrap();
    std::fs::write(
        home.config(),
        config.replace(
            "shutdown_grace = \"200ms\"",
            &format!("shutdown_grace = \"200ms\"\nlease = \"1s\"\n[metrics]\nlisten = \"127.0.0.1:{port}\""),
        ),
    )
    .unwrap();
    assert!(home
        .ok(&["handlers"])
        .contains("no warm handler is running"));
    let daemon = home.daemon();
    let jobs: Vec<i64> = (0..3).map(|_| job(&home, "{}", "10000")).collect();
    let pid = pid_of(&home, jobs[2]);
    let listed = wait_for(PATIENCE, || {
        let out = home.ok(&["handlers", "--json"]);
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        (rows.len() == 1 && rows[0]["jobs"] == 3).then(|| rows[0].clone())
    })
    .expect("jobd handlers lists the handler after its third job");
    assert_eq!(listed["name"], "warm");
    assert_eq!(listed["pid"].as_i64(), Some(pid));
    assert!(listed["rss_bytes"].as_u64().unwrap() > 1 << 20, "{listed}");
    assert!(listed["daemon"].as_str().unwrap().contains(':'), "{listed}");
    let table = home.ok(&["handlers"]);
    assert!(
        table.starts_with("HANDLER  PID") && table.contains(&format!("warm     {pid}")),
        "{table}"
    );
    let page = ureq::get(&format!("http://127.0.0.1:{port}/"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        page.contains(&format!(
            "<table id=\"handlers\"><tr><th>handler</th><th>pid</th><th>jobs</th><th>memory</th><th>started</th><th>worker</th></tr><tr><td>warm</td><td class=\"n\">{pid}</td><td class=\"n\">3</td>"
        )),
        "{page}"
    );
    daemon.stop();
}

#[test]
fn instances_caps_how_many_of_a_handlers_jobs_run_at_once_and_its_processes() {
    let home = warm_home("instances = 1\n");
    // Three CPU workers: without the cap, jobs would run side by side, and
    // each worker would start a process of its own.
    let config = std::fs::read_to_string(home.config()).unwrap();
    std::fs::write(
        home.config(),
        config.replace("[cpu]\nworkers = 1", "[cpu]\nworkers = 3"),
    )
    .unwrap();
    let jobs: Vec<i64> = (0..6)
        .map(|_| job(&home, r#"{"do":"nap","ms":150}"#, "10000"))
        .collect();
    let daemon = home.daemon();
    for &id in &jobs {
        let (state, detail) = finish(&home, id);
        assert_eq!(state, "succeeded", "job {id}: {detail}");
    }
    daemon.stop();
    let spans = home.text(
        "SELECT started_at || ' ' || finished_at || ' ' || limit_key FROM jobs ORDER BY started_at;",
    );
    let mut last_end = 0i64;
    for line in spans.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        let (start, end): (i64, i64) = (parts[0].parse().unwrap(), parts[1].parse().unwrap());
        assert!(start >= last_end, "two ran at once:\n{spans}");
        assert_eq!(parts[2], "handler:warm", "{spans}");
        last_end = end;
    }
    let pids = home.text("SELECT count(DISTINCT json_extract(result, '$.pid')) FROM jobs;");
    assert_eq!(pids.trim(), "1", "one process served them all");
}

/// Regression: a capped handler's job was handed to its host while the
/// host ran another job, and timed out waiting there beside an idle worker.
#[test]
fn a_capped_handlers_job_does_not_wait_out_its_deadline_behind_a_busy_host() {
    let home = warm_home("instances = 1\n");
    let config = std::fs::read_to_string(home.config()).unwrap();
    std::fs::write(
        home.config(),
        config.replace("[cpu]\nworkers = 1", "[cpu]\nworkers = 2"),
    )
    .unwrap();
    let daemon = home.daemon();
    // The host is busy with a long job of the handler...
    let long = job(&home, r#"{"do":"nap","ms":3000}"#, "20000");
    home.wait_count(
        &format!("SELECT count(*) FROM jobs WHERE id = {long} AND state = 'running';"),
        1,
    );
    // ... when a job of it that names its own key (so the claim does not
    // hold it back) comes, with a deadline shorter than that.
    home.sqlite3(
        "INSERT INTO jobs(id, kind, payload, max_attempts, timeout_ms, limit_key) \
         VALUES (100, 'exec', '{\"handler\":\"warm\",\"args\":{}}', 1, 1500, 'own');",
    )
    .succeeds();
    let (state, detail) = finish(&home, 100);
    assert_eq!(state, "succeeded", "{detail}");
    assert_eq!(finish(&home, long).0, "succeeded");
    daemon.stop();
}

#[test]
fn a_handler_whose_file_changed_is_replaced_by_the_new_version_at_its_next_job() {
    let home = warm_home("");
    let daemon = home.daemon();
    let first = pid_of(&home, job(&home, "{}", "NULL"));
    assert_eq!(pid_of(&home, job(&home, "{}", "NULL")), first, "kept warm");
    // A new version, installed the way a deploy does (written beside, then
    // renamed over), and the reload an operator sends after it.
    let dir = home.path().join("handlers");
    std::fs::write(
        dir.join("warm.new"),
        HANDLER.replace(
            "{\"pid\": os.getpid(),",
            "{\"pid\": os.getpid(), \"version\": 2,",
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("warm.new"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
    }
    std::fs::rename(dir.join("warm.new"), dir.join("warm")).unwrap();
    daemon.signal(libc::SIGHUP);
    let id = job(&home, "{}", "NULL");
    let (state, result) = finish(&home, id);
    assert_eq!(state, "succeeded", "{result}");
    let result: serde_json::Value = serde_json::from_str(&result).unwrap();
    assert_eq!(result["version"], 2, "the new version ran: {result}");
    assert_ne!(result["pid"].as_i64(), Some(first), "a fresh process");
    daemon.stop();
}

/// A one-shot handler that runs on a worker with warm handlers is not
/// theirs to sweep: the reaper that retires idle warm handlers (and kills
/// and reaps what they left) killed, or reaped before its own wait, the
/// one-shot handler running at that moment, which failed with "cannot
/// wait for it: No child processes". Both run on the one CPU worker.
#[test]
fn the_warm_handlers_reaper_leaves_a_running_one_shot_handler_alone() {
    let home = warm_home("idle_timeout = \"300ms\"\n");
    // Exits at once, its background child reaped by the worker meanwhile.
    add_handler(
        &home,
        "slow",
        "#!/bin/sh\nsleep 0.1 &\nsleep 2.5\necho '{\"ok\":1}'\n",
    );
    let _daemon = home.daemon();
    assert!(pid_of(&home, job(&home, "{}", "NULL")) > 0);
    // The warm handler idles out while the one-shot job runs (the reaper
    // looks every second).
    let ids: Vec<i64> = (0..2)
        .map(|_| home.insert_job("exec", r#"{"handler":"slow"}"#, "1", "NULL"))
        .collect();
    for id in ids {
        let (state, detail) = finish(&home, id);
        assert_eq!(
            (state.as_str(), detail.as_str()),
            ("succeeded", "{\"ok\":1}")
        );
    }
}

/// A worker that stops taking input (here its own warm handler stops it
/// with SIGSTOP once idle) holds no job past its deadline: the hand-over
/// of a job larger than a pipe's buffer waited on the write for good, so
/// the job stayed `running` (its lease renewed) until the daemon stopped,
/// and the CPU slot was lost. Now the job times out, the worker is
/// replaced, and the next job runs.
#[test]
fn a_stopped_worker_holds_no_job_past_its_deadline() {
    let home = warm_home("[exec.handlers.stopper]\nmode = \"persistent\"\n");
    add_handler(
        &home,
        "stopper",
        &sh_handler(
            "  printf '{\"id\": %s, \"result\": {}}\\n' \"$id\"\n  (sleep 0.3; kill -STOP $PPID) &",
        ),
    );
    add_handler(
        &home,
        "ok",
        "#!/bin/sh\ncat > /dev/null\necho '{\"ok\":1}'\n",
    );
    let daemon = home.daemon();
    let id = home.insert_job("exec", "{\"handler\":\"stopper\"}", "1", "NULL");
    assert_eq!(finish(&home, id).0, "succeeded");
    let stopped = |pid: &i32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('T'))
    };
    wait_for(PATIENCE, || {
        common::procs::workers(daemon.pid())
            .iter()
            .any(stopped)
            .then_some(())
    })
    .expect("the handler stopped its worker");
    let big = format!(
        "{{\"handler\":\"ok\",\"args\":\"{}\"}}",
        "x".repeat(200_000)
    );
    let id = home.insert_job("exec", &big, "1", "1000");
    let (state, detail) = finish(&home, id);
    assert_eq!(state, "dead", "{detail}");
    assert!(detail.contains("timed out"), "{detail}");
    let id = home.insert_job("exec", "{\"handler\":\"ok\"}", "1", "NULL");
    assert_eq!(finish(&home, id), ("succeeded".into(), "{\"ok\":1}".into()));
}

/// A handler that fails a job with an `error` outcome has the end of what
/// it wrote to stderr during the job in `last_error`, as one that fails it
/// by exiting does (the traceback was dropped).
#[test]
fn an_error_outcome_carries_the_handlers_stderr() {
    let home = warm_home("[exec.handlers.fails]\nmode = \"persistent\"\n");
    add_handler(
        &home,
        "fails",
        &sh_handler(
            "  echo \"Traceback: resize.py line 7: no such image\" >&2\n  sleep 0.2\n  \
             printf '{\"id\": %s, \"error\": \"resize failed\", \"retry\": false}\\n' \"$id\"",
        ),
    );
    let _daemon = home.daemon();
    let id = home.insert_job("exec", "{\"handler\":\"fails\"}", "1", "NULL");
    let (state, detail) = finish(&home, id);
    assert_eq!(state, "dead", "{detail}");
    assert!(
        detail.contains("resize failed; stderr: Traceback: resize.py line 7: no such image"),
        "{detail}"
    );
}
