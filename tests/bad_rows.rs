//! Rows a client stored that jobd cannot read as text: one of them must
//! never stall the other queues nor break a reader.
//!
//! SQLite stores whatever bytes a client casts to TEXT
//! (`CAST(x'…' AS TEXT)` passes `json_valid`), so these run on SQLite;
//! PostgreSQL refuses such text at insert.

mod common;

use common::{Home, NOW};

/// Drops the schema's UTF-8 guards, if it has any, so these rows can be
/// stored as a file made before the guards (or a client that removed
/// them) would hold them.
fn without_utf8_guards(home: &Home) {
    let names =
        home.text("SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE '%utf8%';");
    for name in names.lines().filter(|n| !n.is_empty()) {
        home.sqlite3(&format!("DROP TRIGGER {name};")).succeeds();
    }
}

/// Regression: one row whose payload was not UTF-8 made every claim fail
/// (`db.error op=claim … invalid utf-8`) and stalled every queue; one whose
/// queue was not UTF-8 did the same, and `jobd list`/`show` failed on both.
#[test]
fn a_non_utf8_row_goes_dead_and_claiming_goes_on() {
    let home = Home::new();
    home.migrate();
    without_utf8_guards(&home);
    // {"a":"<ff><fe>"}: valid JSON to json_valid, not UTF-8.
    let bad_payload = home.insert(&format!(
        "('noop', CAST(x'7b2261223a22fffe227d' AS TEXT), 'default', 5, {NOW}, 1, NULL)"
    ))[0];
    let bad_queue = home.insert(&format!(
        "('noop', '{{}}', CAST(x'6d61696cff' AS TEXT), 5, {NOW}, 1, NULL)"
    ))[0];
    let bad_kind = home.insert(&format!(
        "(CAST(x'6e6f6f70ff' AS TEXT), '{{}}', 'default', 5, {NOW}, 1, NULL)"
    ))[0];
    let good = home.insert(&format!(
        "('noop', '{{}}', 'default', 0, {NOW}, 1, NULL), ('noop', '{{}}', 'other', 0, {NOW}, 1, NULL)"
    ));
    let daemon = home.daemon();
    for id in &good {
        home.wait_state(*id, "succeeded");
    }
    for id in [bad_payload, bad_queue, bad_kind] {
        home.wait_state(id, "dead");
    }
    let error = |id: i64| home.text(&format!("SELECT last_error FROM jobs WHERE id = {id};"));
    assert_eq!(
        error(bad_payload),
        "column payload is not valid UTF-8 (byte 0xff at offset 6); insert text, not raw bytes"
    );
    assert!(
        error(bad_queue).starts_with("column queue is not valid UTF-8 (byte 0xff at offset 4)"),
        "{}",
        error(bad_queue)
    );
    assert!(
        error(bad_kind).starts_with("column kind is not valid UTF-8 (byte 0xff at offset 4)"),
        "{}",
        error(bad_kind)
    );
    // Claiming goes on after them.
    let later = home.insert_job("noop", "{}", "1", "NULL");
    home.wait_state(later, "succeeded");
    let log = daemon.stop();
    assert!(!log.contains("op=claim"), "{log}");
}

/// Regression: `jobd list`, `show`, `stats` and `tail` failed as a whole on
/// a row with bytes that are not UTF-8; they show those bytes escaped.
#[test]
fn readers_escape_undecodable_bytes() {
    let home = Home::new();
    home.migrate();
    without_utf8_guards(&home);
    let id = home.insert(&format!(
        "('noop', CAST(x'7b2261223a22fffe227d' AS TEXT), CAST(x'6d61696cff' AS TEXT), 0, {NOW}, 1, NULL)"
    ))[0];
    home.sqlite3(&format!(
        "UPDATE jobs SET unique_key = CAST(x'6b6579ff' AS TEXT) WHERE id = {id};"
    ))
    .succeeds();
    let list = home.ok(&["list"]);
    assert!(list.contains(r"mail\xff"), "{list}");
    let json = home.ok(&["list", "--json"]);
    assert!(json.contains(r"mail\\xff"), "{json}");
    let show = home.ok(&["show", &id.to_string()]);
    assert!(show.contains(r"\xff\xfe"), "{show}");
    assert!(show.contains(r"key\xff"), "{show}");
    let stats = home.ok(&["stats"]);
    assert!(stats.contains(r"mail\xff"), "{stats}");
    home.ok(&["stats", "--json"]);
    // Once the daemon has set the job aside, history readers show it too.
    let daemon = home.daemon();
    home.wait_state(id, "dead");
    drop(daemon);
    let show = home.ok(&["show", &id.to_string()]);
    assert!(show.contains("not valid UTF-8"), "{show}");
    home.ok(&["cron"]);
}
