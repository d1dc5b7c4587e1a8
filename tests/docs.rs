//! The documentation points only at what the repository holds: every
//! relative link in README.md and docs/ names a file that exists (and,
//! with `#anchor`, a heading in it), and nothing cites a `SPEC.md` the
//! repository does not carry.

mod common;

use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    for entry in std::fs::read_dir(root().join("docs")).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "md") {
            files.push(entry.path());
        }
    }
    files.sort();
    files
}

/// GitHub's anchor for a heading: lower case, spaces to `-`, most
/// punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect()
}

/// The targets of `[text](target)` links.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        if let Some(end) = rest.find(')') {
            out.push(rest[..end].to_string());
        }
    }
    out
}

#[test]
fn every_relative_link_names_a_file_and_heading_that_exist() {
    let mut broken = Vec::new();
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for target in links(&text) {
            if target.starts_with("http://")
                || target.starts_with("https://")
                || target.starts_with("mailto:")
            {
                continue;
            }
            let (path, fragment) = target.split_once('#').unwrap_or((&target, ""));
            let resolved = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            if !resolved.exists() {
                broken.push(format!("{}: {target} (no such file)", file.display()));
                continue;
            }
            if !fragment.is_empty() {
                let heads = anchors(&std::fs::read_to_string(&resolved).unwrap_or_default());
                if !heads.contains(&fragment.to_string()) {
                    broken.push(format!("{}: {target} (no such heading)", file.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn nothing_cites_a_spec_the_repository_does_not_hold() {
    let mut cited = Vec::new();
    let mut files = markdown_files();
    let mut stack = vec![root().join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            if entry.path().is_dir() {
                stack.push(entry.path());
            } else if entry.path().extension().is_some_and(|e| e == "rs") {
                files.push(entry.path());
            }
        }
    }
    files.push(root().join("config.toml"));
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.contains("SPEC") && !root().join("SPEC.md").exists() {
                cited.push(format!("{}:{}: {line}", file.display(), n + 1));
            }
        }
    }
    assert!(
        cited.is_empty(),
        "cites SPEC.md, which the repository does not hold:\n{}",
        cited.join("\n")
    );
}

/// The README's quick start runs as written: the block tagged
/// `quickstart.sh`, by bash with `-e`, from a copy of the repository's
/// `examples/`, with this build's `jobd` first on `PATH`.
#[test]
fn the_quick_start_runs_as_written() {
    let script = common::snippet("quickstart.sh");
    let repo = tempfile::tempdir().unwrap();
    let examples = repo.path().join("examples");
    std::fs::create_dir(&examples).unwrap();
    for entry in std::fs::read_dir(root().join("examples"))
        .unwrap()
        .flatten()
    {
        std::fs::copy(entry.path(), examples.join(entry.file_name())).unwrap();
    }
    let bin = Path::new(common::JOBD).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new("bash")
        .args(["-e", "-c", &script])
        .current_dir(repo.path())
        .env("PATH", path)
        .env_remove("JOBD_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let demo = repo.path().join("demo");
    // Should the script have stopped early, its receiver still listens:
    // stop whatever runs in the demo folder.
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd == demo) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    let log = std::fs::read_to_string(demo.join("daemon.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "the quick start failed: {}\nstdout:\n{stdout}\nstderr:\n{}\ndaemon.log:\n{log}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // What it promises: ids printed, the http job shown, the jobs run.
    assert!(stdout.contains("job 1\n"), "{stdout}");
    assert!(stdout.contains("http"), "{stdout}");
    let received = std::fs::read_to_string(demo.join("receiver.log")).unwrap();
    assert!(received.contains("GET /ping"), "{received}");
    assert!(received.contains("POST /hook"), "{received}");
    assert!(received.contains("{\"order\":42}"), "{received}");
    assert_eq!(
        std::fs::read_to_string(demo.join("files/hello.txt")).unwrap(),
        "hello\n"
    );
    assert!(log.contains("daemon.stopped"), "{log}");
}

/// The reference's schema section names every column of every table a
/// migrated SQLite database has, so the two cannot drift apart silently.
#[test]
fn the_reference_names_every_column_of_the_schema() {
    let home = common::Home::new();
    home.migrate();
    let reference = std::fs::read_to_string(root().join("docs/reference.md")).unwrap();
    let schema = &reference[reference.find("## Schema").expect("a Schema section")..];
    let tables = home.text(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name;",
    );
    let mut missing = Vec::new();
    for table in tables.lines().filter(|t| !t.is_empty()) {
        if !schema.contains(&format!("`{table}`")) {
            missing.push(format!("table {table}"));
        }
        let columns = home.text(&format!("SELECT name FROM pragma_table_info('{table}');"));
        for column in columns.lines().filter(|c| !c.is_empty()) {
            if !schema.contains(&format!("`{column}`")) {
                missing.push(format!("{table}.{column}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/reference.md's schema lacks: {missing:?}"
    );
}
