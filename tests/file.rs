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

#[test]
fn a_symlink_swapped_in_while_the_job_runs_is_refused() {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    let s = setup();
    let fifo = s.root.join("pipe");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    std::fs::create_dir(s.root.join("sub")).unwrap();
    let daemon = s.home.daemon();
    // The copy reads its source from the FIFO, so it blocks inside the job
    // until this test writes; its destination folder is real when it starts.
    let id = s.home.insert_job(
        "file",
        r#"{"op":"copy","from":"pipe","to":"sub/out.txt"}"#,
        "1",
        "NULL",
    );
    // Opening the write end without blocking succeeds only once the job has
    // opened the read end: from then on the job is past any check it could
    // have made before reading.
    let mut writer = common::wait_for(common::PATIENCE, || {
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .ok()
    })
    .expect("the job opened the pipe");
    // Swap the destination folder for a symlink leading out.
    std::fs::rename(s.root.join("sub"), s.root.join("old-sub")).unwrap();
    std::os::unix::fs::symlink(&s.outside, s.root.join("sub")).unwrap();
    writer.write_all(b"payload").unwrap();
    drop(writer);
    s.home.wait_state(id, "dead");
    let error = s
        .home
        .text(&format!("SELECT last_error FROM jobs WHERE id = {id};"));
    assert!(error.contains("escapes the file root"), "{error}");
    assert_eq!(std::fs::read_dir(&s.outside).unwrap().count(), 0);
    daemon.stop();
}
