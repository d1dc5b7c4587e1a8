//! The operations guide (docs/operations.md): its enqueue snippets (tagged
//! `<!-- snippet: NAME -->`) run as written, against a real database.

mod common;

use std::process::Command;

use common::{snippet, Home};

/// A snippet with the service's paths pointed at this test's home.
fn snippet_here(home: &Home, name: &str) -> String {
    snippet(name)
        .replace("/var/lib/jobd/jobd.db", home.db().to_str().unwrap())
        .replace(
            "/var/backups/",
            &format!("{}/backups/", home.path().display()),
        )
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

#[test]
fn the_sqlite3_shell_snippet_enqueues_a_valid_job() {
    let home = Home::new();
    home.migrate();
    std::fs::write(
        home.path().join("shell.sh"),
        snippet_here(&home, "enqueue-shell.sh"),
    )
    .unwrap();
    run(&home, "sh", "shell.sh");
    assert_eq!(
        home.text("SELECT kind || ' ' || json_extract(payload, '$.method') FROM jobs;"),
        "http POST"
    );
}

#[test]
fn the_backup_snippet_copies_a_live_database() {
    let home = Home::new();
    home.migrate();
    let rows: Vec<String> = (0..200)
        .map(|_| format!("('noop', '{{}}', 'default', 0, {}, 1, NULL)", common::NOW))
        .collect();
    home.insert(&rows.join(", "));
    let daemon = home.daemon();
    std::fs::create_dir(home.path().join("backups")).unwrap();
    std::fs::write(
        home.path().join("backup.sh"),
        snippet_here(&home, "backup.sh"),
    )
    .unwrap();
    run(&home, "sh", "backup.sh");
    daemon.stop();
    let check = common::sqlite3(
        &home.path().join("backups/jobd.db"),
        "PRAGMA integrity_check; SELECT count(*) FROM jobs;",
    )
    .succeeds();
    assert_eq!(check, "ok\n200\n");
}
