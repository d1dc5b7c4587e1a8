//! The `file` kind through the real daemon, in a temporary root, with
//! escapes by `..`, absolute paths and symlinks refused.

mod common;

use std::path::PathBuf;

use common::Home;

struct Setup {
    home: Home,
    root: PathBuf,
    outside: PathBuf,
}

fn setup() -> Setup {
    let home = Home::new();
    let root = home.path().join("root");
    let outside = home.path().join("outside");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    home.write_config(&format!(
        "[file]\nroots = [\"{}\"]\n[daemon]\nshutdown_grace = \"100ms\"\n",
        root.display()
    ));
    home.migrate();
    Setup {
        home,
        root,
        outside,
    }
}

impl Setup {
    /// Runs one file job to its end; returns (state, result or last_error).
    fn run(&self, payload: &str) -> (String, String) {
        let id = self.home.insert_job("file", payload, "1", "NULL");
        let done = common::wait_for(common::PATIENCE, || {
            let state = self.home.state(id);
            (state != "queued" && state != "running").then_some(state)
        })
        .expect("the job finished");
        let detail = self.home.text(&format!(
            "SELECT coalesce(result, last_error) FROM jobs WHERE id = {id};"
        ));
        (done, detail)
    }

    fn ok(&self, payload: &str) -> serde_json::Value {
        let (state, detail) = self.run(payload);
        assert_eq!(state, "succeeded", "{payload}: {detail}");
        serde_json::from_str(&detail).unwrap()
    }

    fn dead(&self, payload: &str) -> String {
        let (state, detail) = self.run(payload);
        assert_eq!(state, "dead", "{payload}: {detail}");
        detail
    }
}

#[test]
fn every_op_works_inside_the_root_and_retries_are_idempotent() {
    let s = setup();
    let daemon = s.home.daemon();
    assert_eq!(s.ok(r#"{"op":"mkdir","path":"a/b"}"#)["created"], "a/b");
    assert!(s.root.join("a/b").is_dir());
    assert_eq!(
        s.ok(r#"{"op":"write","path":"a/b/hello.txt","content":"hello"}"#)["bytes"],
        5
    );
    assert_eq!(
        std::fs::read_to_string(s.root.join("a/b/hello.txt")).unwrap(),
        "hello"
    );
    // No temporary file is left beside it.
    assert_eq!(std::fs::read_dir(s.root.join("a/b")).unwrap().count(), 1);
    // The same write again (a retry after a lost outcome) succeeds; other
    // content without overwrite is refused; with overwrite it replaces.
    s.ok(r#"{"op":"write","path":"a/b/hello.txt","content":"hello"}"#);
    let refused = s.dead(r#"{"op":"write","path":"a/b/hello.txt","content":"other"}"#);
    assert!(
        refused.contains("already exists (set overwrite"),
        "{refused}"
    );
    s.ok(r#"{"op":"write","path":"a/b/hello.txt","content":"bye","overwrite":true}"#);
    assert_eq!(
        std::fs::read_to_string(s.root.join("a/b/hello.txt")).unwrap(),
        "bye"
    );
    assert_eq!(
        s.ok(r#"{"op":"append","path":"a/b/hello.txt","content":"!!"}"#)["bytes"],
        2
    );
    assert_eq!(
        std::fs::read_to_string(s.root.join("a/b/hello.txt")).unwrap(),
        "bye!!"
    );
    s.ok(r#"{"op":"write","path":"bin.dat","content":"AAEC/w==","encoding":"base64"}"#);
    assert_eq!(
        std::fs::read(s.root.join("bin.dat")).unwrap(),
        vec![0, 1, 2, 255]
    );
    // Absolute paths inside the root are fine.
    let abs = s.root.join("copy.txt");
    assert_eq!(
        s.ok(&format!(
            r#"{{"op":"copy","from":"a/b/hello.txt","to":"{}"}}"#,
            abs.display()
        ))["bytes"],
        5
    );
    assert_eq!(std::fs::read_to_string(&abs).unwrap(), "bye!!");
    s.ok(r#"{"op":"move","from":"copy.txt","to":"moved.txt"}"#);
    assert!(!abs.exists());
    // Moving again: the source is gone, the destination is there.
    s.ok(r#"{"op":"move","from":"copy.txt","to":"moved.txt"}"#);
    assert_eq!(
        s.ok(r#"{"op":"delete","path":"moved.txt"}"#)["deleted"],
        true
    );
    assert_eq!(
        s.ok(r#"{"op":"delete","path":"moved.txt"}"#)["deleted"],
        false
    );
    let missing = s.dead(r#"{"op":"copy","from":"nope.txt","to":"x.txt"}"#);
    assert!(missing.contains("nope.txt: no such file"), "{missing}");
    let bad = s.dead(r#"{"op":"write","path":"x.txt","content":"%%","encoding":"base64"}"#);
    assert!(
        bad.starts_with("payload field content: not valid base64"),
        "{bad}"
    );
    let no_path = s.dead(r#"{"op":"delete"}"#);
    assert!(no_path.contains("field path is required"), "{no_path}");
    daemon.stop();
}

#[test]
fn escapes_by_dotdot_absolute_paths_and_symlinks_are_refused_and_touch_nothing() {
    let s = setup();
    let secret = s.outside.join("secret.txt");
    std::fs::write(&secret, "keep me").unwrap();
    std::os::unix::fs::symlink(&s.outside, s.root.join("link")).unwrap();
    std::os::unix::fs::symlink(&secret, s.root.join("secret-link")).unwrap();
    let daemon = s.home.daemon();
    let attempts = [
        r#"{"op":"write","path":"../outside/secret.txt","content":"x","overwrite":true}"#
            .to_string(),
        format!(
            r#"{{"op":"write","path":"{}","content":"x","overwrite":true}}"#,
            secret.display()
        ),
        r#"{"op":"write","path":"link/secret.txt","content":"x","overwrite":true}"#.to_string(),
        r#"{"op":"append","path":"secret-link","content":"x"}"#.to_string(),
        r#"{"op":"delete","path":"link/secret.txt"}"#.to_string(),
        r#"{"op":"copy","from":"link/secret.txt","to":"stolen.txt"}"#.to_string(),
        r#"{"op":"move","from":"link/secret.txt","to":"stolen.txt"}"#.to_string(),
        r#"{"op":"mkdir","path":"link/new"}"#.to_string(),
        r#"{"op":"write","path":"a/../../outside/x.txt","content":"x"}"#.to_string(),
    ];
    for payload in &attempts {
        let error = s.dead(payload);
        assert!(
            error.contains("escapes the file root") || error.contains("outside every file.roots"),
            "{payload}: {error}"
        );
    }
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "keep me");
    assert_eq!(std::fs::read_dir(&s.outside).unwrap().count(), 1);
    assert!(!s.root.join("stolen.txt").exists());
    daemon.stop();
}

/// A number from `/proc/<pid>/status`, in kB.
fn proc_status_kb(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB"))
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn copy_streams_in_constant_memory() {
    use std::os::unix::fs::FileExt;

    const SIZE: u64 = 1 << 30;
    let s = setup();
    let source = std::fs::File::create(s.root.join("big.img")).unwrap();
    source.set_len(SIZE).unwrap();
    let head: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    source.write_all_at(&head, 0).unwrap();
    source.write_all_at(b"middle", SIZE / 2).unwrap();
    source.write_all_at(b"tail", SIZE - 4).unwrap();
    drop(source);
    let daemon = s.home.daemon();
    let before = proc_status_kb(daemon.pid(), "VmHWM:");
    assert_eq!(
        s.ok(r#"{"op":"copy","from":"big.img","to":"copy.img"}"#)["bytes"],
        SIZE
    );
    let growth_kb = proc_status_kb(daemon.pid(), "VmHWM:").saturating_sub(before);
    assert!(
        growth_kb < 64 * 1024,
        "the daemon's peak memory grew by {growth_kb} kB copying a {SIZE}-byte file"
    );
    let copy = std::fs::File::open(s.root.join("copy.img")).unwrap();
    assert_eq!(copy.metadata().unwrap().len(), SIZE);
    let mut buf = vec![0; head.len()];
    copy.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, head);
    let mut word = [0; 6];
    copy.read_exact_at(&mut word, SIZE / 2).unwrap();
    assert_eq!(&word, b"middle");
    copy.read_exact_at(&mut word[..4], SIZE - 4).unwrap();
    assert_eq!(&word[..4], b"tail");
    // A retry that finds the same content in place succeeds without copying.
    s.ok(r#"{"op":"copy","from":"big.img","to":"copy.img"}"#);
    daemon.stop();
}

#[test]
fn a_fifo_in_a_root_is_refused_without_holding_a_thread() {
    let s = setup();
    let fifo = s.root.join("pipe");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    std::fs::write(s.root.join("plain.txt"), "plain").unwrap();
    let daemon = s.home.daemon();
    let threads = || {
        std::fs::read_dir(format!("/proc/{}/task", daemon.pid()))
            .unwrap()
            .count()
    };
    s.ok(r#"{"op":"copy","from":"plain.txt","to":"warm.txt"}"#);
    let before = threads();
    let payloads = [
        r#"{"op":"copy","from":"pipe","to":"out.txt"}"#,
        r#"{"op":"append","path":"pipe","content":"x"}"#,
        r#"{"op":"write","path":"pipe","content":"x"}"#,
        r#"{"op":"write","path":"pipe","content":"x","overwrite":true}"#,
        r#"{"op":"copy","from":"plain.txt","to":"pipe","overwrite":true}"#,
    ];
    for payload in payloads {
        // A short timeout, so that a job stuck on the FIFO fails this test
        // soon instead of waiting for the default.
        let id = s.home.insert_job("file", payload, "1", "3000");
        s.home.wait_state(id, "dead");
        let error = s
            .home
            .text(&format!("SELECT last_error FROM jobs WHERE id = {id};"));
        assert!(
            error.contains("pipe: it is a FIFO; only regular files and folders"),
            "{payload}: {error}"
        );
    }
    assert_eq!(threads(), before, "no thread is left waiting on the FIFO");
    assert!(!s.root.join("out.txt").exists());
    daemon.stop();
}

#[test]
fn a_hard_link_to_a_file_outside_is_not_modified() {
    let s = setup();
    let secret = s.outside.join("secret.txt");
    std::fs::write(&secret, "keep me").unwrap();
    std::fs::hard_link(&secret, s.root.join("link.txt")).unwrap();
    std::fs::write(s.root.join("other.txt"), "other").unwrap();
    let daemon = s.home.daemon();
    for payload in [
        r#"{"op":"append","path":"link.txt","content":"x"}"#,
        r#"{"op":"write","path":"link.txt","content":"x","overwrite":true}"#,
        r#"{"op":"copy","from":"other.txt","to":"link.txt","overwrite":true}"#,
    ] {
        let error = s.dead(payload);
        assert!(
            error.contains("link.txt: it has 2 hard links")
                && error.contains("file.allow_hard_links"),
            "{payload}: {error}"
        );
    }
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "keep me");
    // Without overwrite nothing would change: the usual answers.
    let exists = s.dead(r#"{"op":"write","path":"link.txt","content":"x"}"#);
    assert!(exists.contains("already exists (set overwrite"), "{exists}");
    s.ok(r#"{"op":"write","path":"link.txt","content":"keep me"}"#);
    // Reading through it is fine.
    s.ok(r#"{"op":"copy","from":"link.txt","to":"read.txt"}"#);
    daemon.stop();

    // An operator who allows hard links gets the old behaviour.
    s.home.write_config(&format!(
        "[file]\nroots = [\"{}\"]\nallow_hard_links = true\n[daemon]\nshutdown_grace = \"100ms\"\n",
        s.root.display()
    ));
    let daemon = s.home.daemon();
    s.ok(r#"{"op":"append","path":"link.txt","content":"!"}"#);
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "keep me!");
    daemon.stop();
}

#[test]
fn enametoolong_is_permanent() {
    let s = setup();
    let daemon = s.home.daemon();
    let long = "n".repeat(300);
    for payload in [
        format!(r#"{{"op":"write","path":"{long}","content":"x"}}"#),
        format!(r#"{{"op":"append","path":"{long}","content":"x"}}"#),
        // The name fits, the temporary name beside it does not.
        format!(
            r#"{{"op":"write","path":"{}","content":"x"}}"#,
            "m".repeat(250)
        ),
    ] {
        let id = s.home.insert_job("file", &payload, "3", "NULL");
        let state = common::wait_for(common::PATIENCE, || {
            let row = s.home.text(&format!(
                "SELECT state || ' ' || attempts FROM jobs WHERE id = {id};"
            ));
            (!row.starts_with("running") && !row.ends_with(" 0")).then_some(row)
        })
        .expect("the first attempt ended");
        assert_eq!(state, "dead 1", "{payload}");
        let error = s
            .home
            .text(&format!("SELECT last_error FROM jobs WHERE id = {id};"));
        assert!(error.contains("File name too long"), "{error}");
    }
    daemon.stop();
}

/// Regression: deleting a path whose folder does not exist went dead
/// ("cannot open the folder of tmp/old.lock"), so the README's periodic
/// cleanup example failed every 5 minutes on a fresh root. Nothing there
/// is nothing to delete, as for a missing file; a missing root is still an
/// error.
#[test]
fn deleting_in_a_missing_folder_deletes_nothing_and_succeeds() {
    let s = setup();
    let _daemon = s.home.daemon();
    assert_eq!(
        s.ok(r#"{"op":"delete","path":"tmp/old.lock"}"#)["deleted"],
        false
    );
    assert_eq!(
        s.ok(r#"{"op":"delete","path":"a/b/c/d"}"#)["deleted"],
        false
    );
    // A file where a folder should be is still an error.
    std::fs::write(s.root.join("plain"), "x").unwrap();
    let not_folder = s.dead(r#"{"op":"delete","path":"plain/x"}"#);
    assert!(not_folder.contains("plain/x"), "{not_folder}");
}
