//! The operations guide in README.md: its enqueue snippets (tagged
//! `<!-- snippet: NAME -->`) run as written, against a real database.

mod common;

use std::process::Command;

use common::Home;

/// The code block that follows `<!-- snippet: name -->` in README.md.
fn snippet(name: &str) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let marker = format!("<!-- snippet: {name} -->");
    let after = &readme[readme
        .find(&marker)
        .unwrap_or_else(|| panic!("no {marker}"))
        + marker.len()..];
    let start = after.find("```").unwrap();
    let body = &after[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("\n```").unwrap() + 1].to_string()
}

fn run(home: &Home, program: &str, file: &str) {
    let out = Command::new(program)
        .arg(home.path().join(file))
        .env("JOBD_DB", home.db())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_python_snippet_enqueues_and_de_duplicates() {
    let home = Home::new();
    home.migrate();
    std::fs::write(home.path().join("enqueue.py"), snippet("enqueue.py")).unwrap();
    run(&home, "python3", "enqueue.py");
    run(&home, "python3", "enqueue.py");
    let rows = home.text(
        "SELECT kind || ' ' || priority || ' ' || coalesce(unique_key, '-') || ' ' || coalesce(json_extract(payload, '$.json.order'), '-') \
         FROM jobs ORDER BY id;",
    );
    let lines: Vec<&str> = rows.lines().collect();
    assert_eq!(lines.len(), 3, "{rows}");
    assert_eq!(lines[0], "http 5 - 42");
    assert!(lines[1].starts_with("email 0 welcome:user:42"), "{rows}");
    assert!(
        lines[2].starts_with("http 5 -"),
        "the key kept one email: {rows}"
    );
    // What it wrote is what the daemon takes.
    let daemon = home.daemon();
    home.wait_count(
        "SELECT count(*) FROM jobs WHERE state <> 'queued' AND kind = 'email'",
        1,
    );
    daemon.stop();
}

#[test]
fn the_shell_snippet_enqueues_one_job_a_day() {
    let home = Home::new();
    home.migrate();
    std::fs::write(home.path().join("enqueue.sh"), snippet("enqueue.sh")).unwrap();
    run(&home, "sh", "enqueue.sh");
    run(&home, "sh", "enqueue.sh");
    // The day as the script's `date` sees it (local time).
    let day = Command::new("date").arg("+%F").output().unwrap().stdout;
    let day = String::from_utf8_lossy(&day).trim().to_string();
    assert_eq!(
        home.text("SELECT count(*) || ' ' || unique_key || ' ' || json_extract(payload, '$.to') FROM jobs;"),
        format!("1 report:{day} reports/{day}.csv.gz")
    );
}
