//! Flows (docs/reference.md, "Flows"): jobs that wait for other jobs,
//! written with plain SQL in one transaction and run by the real daemon,
//! on SQLite and on PostgreSQL.

mod common;

use common::BackendHome;

/// A JSON array (SQLite) or an array (PostgreSQL) of the ids, as SQL.
fn ids(b: &BackendHome, ids: &[i64]) -> String {
    let list: Vec<String> = ids.iter().map(i64::to_string).collect();
    match b.schema {
        Some(_) => format!("'{{{}}}'", list.join(",")),
        None => format!("'[{}]'", list.join(",")),
    }
}

/// The job's state.
fn state(b: &BackendHome, id: i64) -> String {
    b.value(&format!("SELECT state FROM jobs WHERE id = {id};"))
}

/// `sql` run by the backend's own shell: what it printed, or its error.
fn try_sql(b: &BackendHome, sql: &str) -> Result<String, String> {
    match &b.schema {
        Some(schema) => schema.psql(sql),
        None => {
            let run = b.home.sqlite3(sql);
            match run.code() {
                0 => Ok(run.stdout()),
                _ => Err(run.stderr()),
            }
        }
    }
}

/// Config naming a handlers folder in `dir` with two handlers: `emit`
/// answers its args, `gather` what descriptor 3 hands it.
fn handlers(dir: &std::path::Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    for (name, script) in [
        ("emit", "#!/bin/sh\ncat\n"),
        ("gather", "#!/bin/sh\ncat <&3\n"),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    format!("[exec]\ndir = \"{}\"\n", dir.display())
}

#[test]
fn a_diamond_written_in_one_transaction_runs_each_job_after_its_parents_with_their_results() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::HttpServer::start(|_, _| common::Reply::new(200, "ok"));
    for b in common::homes_with("flow_diamond", &handlers(dir.path())) {
        // A → B, C → D, and B → E (an http call carrying B's outcome), all
        // inserted in one transaction before any daemon runs.
        b.home.migrate();
        let (a, bb, c, d, e) = (1, 2, 3, 4, 5);
        try_sql(
            &b,
            &format!(
                "BEGIN; \
                 INSERT INTO jobs(id, kind, payload) VALUES ({a}, 'noop', '{{\"sleep_ms\":30}}'); \
                 INSERT INTO jobs(id, kind, payload, parents) VALUES \
                   ({bb}, 'exec', '{{\"handler\":\"emit\",\"args\":{{\"from\":\"B\"}}}}', {pa}); \
                 INSERT INTO jobs(id, kind, payload, parents) VALUES \
                   ({c}, 'exec', '{{\"handler\":\"emit\",\"args\":[\"C\"]}}', {pa}); \
                 INSERT INTO jobs(id, kind, payload, parents) VALUES \
                   ({d}, 'exec', '{{\"handler\":\"gather\"}}', {pbc}); \
                 INSERT INTO jobs(id, kind, payload, parents) VALUES ({e}, 'http', \
                   '{{\"url\":\"{url}/e\",\"method\":\"POST\",\"json\":{{\"n\":1}},\"with_parents\":true}}', {pb}); \
                 COMMIT;",
                pa = ids(&b, &[a]),
                pb = ids(&b, &[bb]),
                pbc = ids(&b, &[bb, c]),
                url = server.base,
            ),
        )
        .unwrap();
        if b.schema.is_some() {
            // Explicit ids leave the sequence behind; later inserts need it past them.
            b.value("SELECT setval(pg_get_serial_sequence('jobs', 'id'), 10);");
        }
        assert_eq!(
            [
                state(&b, a),
                state(&b, bb),
                state(&b, c),
                state(&b, d),
                state(&b, e)
            ],
            ["queued", "waiting", "waiting", "waiting", "waiting"],
            "{}",
            b.name
        );
        assert_eq!(
            b.value(&format!("SELECT waiting_for FROM jobs WHERE id = {d};")),
            "2"
        );
        let daemon = b.home.daemon();
        b.wait_value(
            "SELECT count(*) FROM jobs WHERE state = 'succeeded';",
            "5",
            "the diamond and the call",
        );
        daemon.stop();
        let time =
            |column: &str, id: i64| b.count(&format!("SELECT {column} FROM jobs WHERE id = {id};"));
        for (child, parent) in [(bb, a), (c, a), (d, bb), (d, c), (e, bb)] {
            assert!(
                time("started_at", child) >= time("finished_at", parent),
                "{}: job {child} started before its parent {parent} finished",
                b.name
            );
        }
        // D read both parents' outcomes on descriptor 3, in the order it named them.
        let result: serde_json::Value =
            serde_json::from_str(&b.value(&format!("SELECT result FROM jobs WHERE id = {d};")))
                .unwrap();
        assert_eq!(
            result,
            serde_json::json!({"parents": [
                {"id": bb, "kind": "exec", "state": "succeeded", "result": {"from": "B"}, "error": null},
                {"id": c, "kind": "exec", "state": "succeeded", "result": ["C"], "error": null},
            ]}),
            "{}",
            b.name
        );
        // E's JSON body carried B's outcome beside its own fields.
        let body = server
            .received()
            .into_iter()
            .rev()
            .find(|r| r.url == "/e")
            .expect("E called the server")
            .body;
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["n"], 1, "{}", b.name);
        assert_eq!(
            body["parents"][0]["result"],
            serde_json::json!({"from": "B"}),
            "{}",
            b.name
        );
    }
}

#[test]
fn a_dead_parent_cancels_only_its_own_descendants_and_its_retry_brings_them_back() {
    for b in common::homes("flow_dead") {
        // P has no handler (kind "missing"): it dies on its first claim.
        // P → C1 → C2, P → K (runs whatever), Q → R beside them.
        let sql = format!(
            "BEGIN; \
             INSERT INTO jobs(id, kind) VALUES (1, 'missing'); \
             INSERT INTO jobs(id, kind, parents) VALUES (2, 'noop', {p}); \
             INSERT INTO jobs(id, kind, parents) VALUES (3, 'noop', {c1}); \
             INSERT INTO jobs(id, kind, parents, run_always) VALUES (4, 'noop', {p}, {yes}); \
             INSERT INTO jobs(id, kind) VALUES (5, 'noop'); \
             INSERT INTO jobs(id, kind, parents) VALUES (6, 'noop', {q}); \
             COMMIT;",
            p = ids(&b, &[1]),
            c1 = ids(&b, &[2]),
            q = ids(&b, &[5]),
            yes = if b.schema.is_some() { "true" } else { "1" },
        );
        b.home.migrate();
        try_sql(&b, &sql).unwrap();
        if b.schema.is_some() {
            b.value("SELECT setval(pg_get_serial_sequence('jobs', 'id'), 10);");
        }
        let daemon = b.home.daemon();
        b.wait_value(
            "SELECT count(*) FROM jobs WHERE state = 'succeeded';",
            "3",
            "the clean-up job and the unrelated pair",
        );
        assert_eq!(
            [
                state(&b, 1),
                state(&b, 2),
                state(&b, 3),
                state(&b, 4),
                state(&b, 5),
                state(&b, 6)
            ],
            [
                "dead",
                "cancelled",
                "cancelled",
                "succeeded",
                "succeeded",
                "succeeded"
            ],
            "{}",
            b.name
        );
        let error = |id: i64| b.value(&format!("SELECT last_error FROM jobs WHERE id = {id};"));
        assert_eq!(
            error(2),
            "cancelled: job 1, which this job waits for, is dead",
            "{}",
            b.name
        );
        assert_eq!(
            error(3),
            "cancelled: job 1, which this job waits for, is dead",
            "{}",
            b.name
        );
        let show = b.home.ok(&["show", "2"]);
        assert!(
            show.contains("  parents          1 dead\n"),
            "{}: {show}",
            b.name
        );
        assert!(
            show.contains("  children         3 cancelled\n"),
            "{}: {show}",
            b.name
        );
        let shown: serde_json::Value =
            serde_json::from_str(&b.home.ok(&["show", "1", "--json"])).unwrap();
        assert_eq!(
            shown["children"],
            serde_json::json!([{"id": 2, "state": "cancelled"}, {"id": 4, "state": "succeeded"}]),
            "{}",
            b.name
        );
        // A child cannot be retried while the parent that cancelled it is dead.
        b.home.jobd(&["retry", "3"]).fails(
            1,
            "job 3 cannot be retried: it depends on job 1, which is dead; retry job 1",
        );
        // Give the parent a handler and retry it: its descendants wait again
        // and then run.
        b.value("UPDATE jobs SET kind = 'noop' WHERE id = 1;");
        b.home.ok(&["retry", "1"]);
        b.wait_value(
            "SELECT count(*) FROM jobs WHERE state = 'succeeded';",
            "6",
            "the retried parent and its children",
        );
        daemon.stop();
        assert_eq!(error(3), "", "{}", b.name);
    }
}

#[test]
fn a_missing_parent_is_refused_at_insert_naming_the_constraint_and_a_cancel_reaches_the_children() {
    for b in common::homes("flow_refused") {
        b.home.migrate();
        let e = try_sql(
            &b,
            &format!(
                "INSERT INTO jobs(kind, parents) VALUES ('noop', {});",
                ids(&b, &[999])
            ),
        )
        .unwrap_err();
        assert!(e.contains("parents_exist"), "{}: {e}", b.name);
        if b.schema.is_none() {
            let e = try_sql(
                &b,
                "INSERT INTO jobs(kind, parents) VALUES ('noop', '[\"1\"]');",
            )
            .unwrap_err();
            assert!(e.contains("parents_are_job_ids"), "{e}");
        }
        assert_eq!(b.count("SELECT count(*) FROM jobs;"), 0, "{}", b.name);
        b.home
            .jobd(&["enqueue", "noop", "--after", "999"])
            .fails(2, "--after: job 999 does not exist");
        // A parent scheduled for later, a child and a grandchild.
        let parent: i64 = b
            .home
            .ok(&["enqueue", "noop", "--delay", "1h"])
            .trim()
            .parse()
            .unwrap();
        let child: i64 = b
            .home
            .ok(&["enqueue", "noop", "--after", &parent.to_string()])
            .trim()
            .parse()
            .unwrap();
        let grandchild: i64 = b
            .home
            .ok(&["enqueue", "noop", "--after", &child.to_string()])
            .trim()
            .parse()
            .unwrap();
        assert_eq!(state(&b, grandchild), "waiting", "{}", b.name);
        let e = try_sql(
            &b,
            &format!(
                "UPDATE jobs SET parents = {} WHERE id = {child};",
                ids(&b, &[grandchild])
            ),
        )
        .unwrap_err();
        assert!(e.contains("parents_fixed_at_insert"), "{}: {e}", b.name);
        b.home.ok(&["cancel", &parent.to_string()]);
        assert_eq!(
            [state(&b, parent), state(&b, child), state(&b, grandchild)],
            ["cancelled", "cancelled", "cancelled"],
            "{}",
            b.name
        );
        assert!(b
            .value(&format!(
                "SELECT last_error FROM jobs WHERE id = {grandchild};"
            ))
            .contains(&format!(
                "job {parent}, which this job waits for, is cancelled"
            )));
    }
}

#[test]
fn a_batch_callback_runs_once_after_every_job_of_the_batch_with_the_counts() {
    let dir = tempfile::tempdir().unwrap();
    for b in common::homes_with("flow_batch", &handlers(dir.path())) {
        b.home.migrate();
        // Two jobs that succeed, one that dies (no such kind), then the
        // callback, which seals the batch: in one transaction.
        try_sql(
            &b,
            "BEGIN; \
             INSERT INTO jobs(kind, payload, batch) VALUES ('noop', '{\"sleep_ms\":20}', 'nightly'); \
             INSERT INTO jobs(kind, batch) VALUES ('noop', 'nightly'); \
             INSERT INTO jobs(kind, batch, max_attempts) VALUES ('missing', 'nightly', 1); \
             INSERT INTO jobs(kind, payload, callback_for) VALUES ('exec', '{\"handler\":\"gather\"}', 'nightly'); \
             COMMIT;",
        )
        .unwrap();
        let callback = b.count("SELECT id FROM jobs WHERE callback_for = 'nightly';");
        assert_eq!(state(&b, callback), "waiting", "{}", b.name);
        // Sealed: no job joins it, and it has one callback.
        let e = try_sql(
            &b,
            "INSERT INTO jobs(kind, batch) VALUES ('noop', 'nightly');",
        )
        .unwrap_err();
        assert!(e.contains("batch_open"), "{}: {e}", b.name);
        let e = try_sql(
            &b,
            "INSERT INTO jobs(kind, callback_for) VALUES ('noop', 'nightly');",
        )
        .unwrap_err();
        assert!(e.contains("batch_one_callback"), "{}: {e}", b.name);
        b.home
            .jobd(&["enqueue", "noop", "--batch", "nightly"])
            .fails(1, "batch_open");
        let daemon = b.home.daemon();
        b.wait_value(
            &format!("SELECT state FROM jobs WHERE id = {callback};"),
            "succeeded",
            "the callback",
        );
        daemon.stop();
        let result: serde_json::Value = serde_json::from_str(
            &b.value(&format!("SELECT result FROM jobs WHERE id = {callback};")),
        )
        .unwrap();
        assert_eq!(
            result,
            serde_json::json!({"batch": {"name": "nightly", "total": 3, "succeeded": 2, "dead": 1, "cancelled": 0}}),
            "{}",
            b.name
        );
        let shown = b.home.ok(&["batch", "nightly"]);
        assert!(
            shown.contains(&format!(
                "  sealed      yes, callback job {callback} (succeeded)\n"
            )) && shown.contains("  jobs        3: 2 succeeded, 1 dead, 0 cancelled\n")
                && shown.contains("  ended       100.0 %\n"),
            "{}: {shown}",
            b.name
        );
        // A batch without a callback is sealed by hand.
        b.home
            .ok(&["enqueue", "noop", "--batch", "manual", "--delay", "1h"]);
        let open = b.home.ok(&["batch", "manual"]);
        assert!(open.contains("  sealed      no:"), "{open}");
        let sealed = b.home.ok(&["batch", "manual", "--seal", "--json"]);
        let sealed: serde_json::Value = serde_json::from_str(&sealed).unwrap();
        assert_eq!(sealed["sealed"], true, "{}", b.name);
        assert_eq!(sealed["total"], 1, "{}", b.name);
        assert_eq!(sealed["states"]["queued"], 1, "{}", b.name);
    }
}

#[test]
fn a_10_000_job_batch_runs_its_callback_exactly_once_while_three_daemons_drain_it_and_one_dies() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{}[daemon]\nlease = \"2s\"\n", handlers(dir.path()));
    for b in common::homes_with("flow_batch_kill", &config) {
        b.home.migrate();
        b.insert_many(
            10_000,
            "kind, payload, batch",
            "'noop', '{\"sleep_ms\":1}', 'big'",
        );
        b.home.ok(&[
            "enqueue",
            "exec",
            "{\"handler\":\"gather\"}",
            "--batch-callback",
            "big",
        ]);
        let others: Vec<common::Home> = (0..2).map(|_| b.another(&config)).collect();
        let victim = b.home.daemon();
        let daemons: Vec<common::Daemon> = others.iter().map(|h| h.daemon()).collect();
        // Kill one daemon while it holds jobs of the batch.
        b.wait_value(
            "SELECT count(*) > 2000 FROM jobs WHERE state = 'succeeded';",
            if b.schema.is_some() { "t" } else { "1" },
            "a fifth of the batch",
        );
        victim.kill9();
        b.wait_value(
            "SELECT state FROM jobs WHERE callback_for = 'big';",
            "succeeded",
            "the callback",
        );
        for d in daemons {
            d.stop();
        }
        let callback = b.count("SELECT id FROM jobs WHERE callback_for = 'big';");
        assert_eq!(
            b.count(&format!(
                "SELECT count(*) FROM job_runs WHERE job_id = {callback};"
            )),
            1,
            "{}: the callback ran more than once",
            b.name
        );
        assert_eq!(
            b.count("SELECT count(*) FROM jobs WHERE batch = 'big' AND state = 'succeeded';"),
            10_000,
            "{}",
            b.name
        );
        let result: serde_json::Value = serde_json::from_str(
            &b.value(&format!("SELECT result FROM jobs WHERE id = {callback};")),
        )
        .unwrap();
        assert_eq!(result["batch"]["succeeded"], 10_000, "{}", b.name);
        assert_eq!(result["batch"]["total"], 10_000, "{}", b.name);
        // It started after the last job of the batch finished.
        assert!(
            b.count(&format!(
                "SELECT started_at FROM jobs WHERE id = {callback};"
            )) >= b.count("SELECT max(finished_at) FROM jobs WHERE batch = 'big';"),
            "{}",
            b.name
        );
    }
}

#[test]
fn a_sequence_of_1_000_jobs_runs_one_at_a_time_in_insertion_order_beside_other_jobs() {
    for b in common::homes_with("flow_sequence", "[pool]\nthreads = 8\n") {
        b.home.migrate();
        b.insert_many(1_000, "kind, sequence", "'noop', 'ledger'");
        b.insert_many(200, "kind, payload", "'noop', '{\"sleep_ms\":5}'");
        assert_eq!(
            b.count("SELECT count(*) FROM jobs WHERE sequence = 'ledger' AND state = 'waiting';"),
            999,
            "{}",
            b.name
        );
        let daemon = b.home.daemon();
        b.wait_value(
            "SELECT count(*) FROM jobs WHERE state = 'succeeded';",
            "1200",
            "the sequence and the others",
        );
        daemon.stop();
        let times = b.value(
            "SELECT started_at || ' ' || finished_at FROM jobs WHERE sequence = 'ledger' ORDER BY id;",
        );
        let times: Vec<(i64, i64)> = times
            .lines()
            .map(|l| {
                let (s, f) = l.split_once(' ').unwrap();
                (s.parse().unwrap(), f.parse().unwrap())
            })
            .collect();
        assert_eq!(times.len(), 1_000, "{}", b.name);
        for (i, pair) in times.windows(2).enumerate() {
            assert!(
                pair[1].0 >= pair[0].1,
                "{}: member {} started before member {} finished",
                b.name,
                i + 1,
                i
            );
        }
        // The other jobs did not queue behind the sequence.
        assert!(
            b.count("SELECT max(finished_at) FROM jobs WHERE sequence IS NULL;")
                < b.count("SELECT max(finished_at) FROM jobs WHERE sequence = 'ledger';"),
            "{}",
            b.name
        );
    }
}

#[test]
fn a_dead_member_halts_its_sequence_until_retried_and_a_cancelled_one_hands_on_its_turn() {
    for b in common::homes("flow_sequence_halt") {
        b.home.migrate();
        let enqueue = |args: &[&str]| -> i64 {
            let mut all = vec!["enqueue"];
            all.extend_from_slice(args);
            b.home.ok(&all).trim().parse().unwrap()
        };
        // h1 dies (nothing listens on port 1), so h2 and h3 wait.
        let h1 = enqueue(&[
            "http",
            r#"{"url":"http://127.0.0.1:1/"}"#,
            "--sequence",
            "h",
            "--max-attempts",
            "1",
        ]);
        let h2 = enqueue(&["noop", "--sequence", "h"]);
        let h3 = enqueue(&["noop", "--sequence", "h"]);
        // c1 is scheduled for later; cancelling c2 hands c3 to c1.
        let c1 = enqueue(&["noop", "--sequence", "c", "--delay", "1h"]);
        let c2 = enqueue(&["noop", "--sequence", "c"]);
        let c3 = enqueue(&["noop", "--sequence", "c"]);
        let daemon = b.home.daemon();
        b.wait_value(
            &format!("SELECT state FROM jobs WHERE id = {h1};"),
            "dead",
            "h1",
        );
        b.home.ok(&["cancel", &c2.to_string()]);
        let show = b.home.ok(&["show", &c3.to_string()]);
        assert!(
            show.contains(&format!("  parents          {c1} queued\n")),
            "{}: {show}",
            b.name
        );
        assert!(
            show.contains("  sequence         c\n"),
            "{}: {show}",
            b.name
        );
        assert_eq!(
            [state(&b, h2), state(&b, h3), state(&b, c3)],
            ["waiting", "waiting", "waiting"]
        );
        // Cancelling c1 lets c3 go; retrying h1 (now a noop) runs h1, h2, h3.
        b.home.ok(&["cancel", &c1.to_string()]);
        b.value(&format!(
            "UPDATE jobs SET kind = 'noop', payload = '{{}}' WHERE id = {h1};"
        ));
        b.home.ok(&["retry", &h1.to_string()]);
        b.wait_value(
            "SELECT count(*) FROM jobs WHERE state = 'succeeded';",
            "4",
            "h1, h2, h3 and c3",
        );
        daemon.stop();
        let started = |id: i64| b.count(&format!("SELECT started_at FROM jobs WHERE id = {id};"));
        let finished = |id: i64| b.count(&format!("SELECT finished_at FROM jobs WHERE id = {id};"));
        assert!(
            started(h2) >= finished(h1) && started(h3) >= finished(h2),
            "{}",
            b.name
        );
    }
}

/// The states of `jobs`, in order, joined by spaces.
fn states(b: &BackendHome, jobs: &[i64]) -> String {
    jobs.iter()
        .map(|&id| state(b, id))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn a_job_with_parents_and_a_sequence_or_a_batch_waits_for_all_of_them() {
    for b in common::homes("flow_rules_order") {
        b.home.migrate();
        // C waits for parent P and for S, the member before it in "s".
        try_sql(
            &b,
            &format!(
                "INSERT INTO jobs(id, kind) VALUES (1, 'noop'); \
                 INSERT INTO jobs(id, kind, sequence) VALUES (2, 'noop', 's'); \
                 INSERT INTO jobs(id, kind, parents, sequence) VALUES (3, 'noop', {p}, 's');",
                p = ids(&b, &[1])
            ),
        )
        .unwrap();
        try_sql(&b, "UPDATE jobs SET state = 'succeeded' WHERE id = 2;").unwrap();
        assert_eq!(
            state(&b, 3),
            "waiting",
            "{}: let go before its parent",
            b.name
        );
        try_sql(&b, "UPDATE jobs SET state = 'succeeded' WHERE id = 1;").unwrap();
        assert_eq!(state(&b, 3), "queued", "{}", b.name);
        // A child that names the member before it as its parent: cancelling
        // that member cancels it, as a parent's cancellation does.
        try_sql(
            &b,
            &format!(
                "INSERT INTO jobs(id, kind, sequence) VALUES (10, 'noop', 't'); \
                 INSERT INTO jobs(id, kind, parents, sequence) VALUES (11, 'noop', {p}, 't');",
                p = ids(&b, &[10])
            ),
        )
        .unwrap();
        assert_eq!(state(&b, 11), "waiting", "{}", b.name);
        b.home.ok(&["cancel", "10"]);
        assert_eq!(state(&b, 11), "cancelled", "{}", b.name);
        // … and its success lets it go, once.
        try_sql(
            &b,
            &format!(
                "INSERT INTO jobs(id, kind, sequence) VALUES (12, 'noop', 'v'); \
                 INSERT INTO jobs(id, kind, parents, sequence) VALUES (13, 'noop', {p}, 'v');",
                p = ids(&b, &[12])
            ),
        )
        .unwrap();
        try_sql(&b, "UPDATE jobs SET state = 'succeeded' WHERE id = 12;").unwrap();
        assert_eq!(state(&b, 13), "queued", "{}: stranded", b.name);
        // A batch's callback in a sequence waits for both.
        try_sql(
            &b,
            "INSERT INTO jobs(id, kind, sequence) VALUES (20, 'noop', 'u'); \
             INSERT INTO jobs(id, kind, batch) VALUES (21, 'noop', 'b'); \
             INSERT INTO jobs(id, kind, callback_for, sequence) VALUES (22, 'noop', 'b', 'u');",
        )
        .unwrap();
        try_sql(&b, "UPDATE jobs SET state = 'succeeded' WHERE id = 21;").unwrap();
        assert_eq!(
            state(&b, 22),
            "waiting",
            "{}: let go before its sequence",
            b.name
        );
        try_sql(&b, "UPDATE jobs SET state = 'succeeded' WHERE id = 20;").unwrap();
        assert_eq!(state(&b, 22), "queued", "{}", b.name);
        // A member inserted already ended counts in its batch.
        try_sql(
            &b,
            "INSERT INTO jobs(id, kind, batch, state) VALUES (30, 'noop', 'done', 'succeeded'); \
             INSERT INTO jobs(id, kind, callback_for) VALUES (31, 'noop', 'done');",
        )
        .unwrap();
        assert_eq!(state(&b, 31), "queued", "{}", b.name);
    }
}

#[test]
fn a_sequence_runs_in_insertion_order_even_when_ids_were_drawn_in_another() {
    for b in common::homes("flow_sequence_ids") {
        b.home.migrate();
        // A client that draws ids first may insert them in any order.
        try_sql(
            &b,
            "INSERT INTO jobs(id, kind, sequence) VALUES (2000, 'noop', 'x'); \
             INSERT INTO jobs(id, kind, sequence) VALUES (1000, 'noop', 'x');",
        )
        .unwrap();
        assert_eq!(states(&b, &[2000, 1000]), "queued waiting", "{}", b.name);
        // A member cancelled in the line is taken out of it: the next one
        // waits for what it waited for.
        try_sql(
            &b,
            "INSERT INTO jobs(id, kind, sequence) VALUES (3001, 'noop', 'y'); \
             INSERT INTO jobs(id, kind, sequence) VALUES (3002, 'noop', 'y'); \
             INSERT INTO jobs(id, kind, sequence) VALUES (3003, 'noop', 'y');",
        )
        .unwrap();
        b.home.ok(&["cancel", "3002"]);
        assert_eq!(state(&b, 3003), "waiting", "{}", b.name);
        try_sql(&b, "UPDATE jobs SET state = 'succeeded' WHERE id = 3001;").unwrap();
        assert_eq!(state(&b, 3003), "queued", "{}", b.name);
    }
}

#[test]
fn a_retry_brings_back_only_what_the_end_cancelled_and_never_two_members_at_once() {
    for b in common::homes("flow_retry_rules") {
        b.home.migrate();
        let dead = |id: i64| {
            try_sql(
                &b,
                &format!("UPDATE jobs SET state = 'dead' WHERE id = {id};"),
            )
            .unwrap();
        };
        // P's children: C1 an operator cancelled, C2 cancelled by P's death.
        try_sql(
            &b,
            &format!(
                "INSERT INTO jobs(id, kind) VALUES (1, 'noop'); \
                 INSERT INTO jobs(id, kind, parents) VALUES (2, 'noop', {p}); \
                 INSERT INTO jobs(id, kind, parents) VALUES (3, 'noop', {p});",
                p = ids(&b, &[1])
            ),
        )
        .unwrap();
        b.home.ok(&["cancel", "2"]);
        dead(1);
        b.home.ok(&["retry", "1"]);
        assert_eq!(
            states(&b, &[1, 2, 3]),
            "queued cancelled waiting",
            "{}",
            b.name
        );
        // `retry --dead` brings back the children too.
        try_sql(
            &b,
            &format!(
                "INSERT INTO jobs(id, kind) VALUES (10, 'noop'); \
                 INSERT INTO jobs(id, kind, parents) VALUES (11, 'noop', {p});",
                p = ids(&b, &[10])
            ),
        )
        .unwrap();
        dead(10);
        assert_eq!(state(&b, 11), "cancelled", "{}", b.name);
        b.home.ok(&["retry", "--dead"]);
        assert_eq!(states(&b, &[10, 11]), "queued waiting", "{}", b.name);
        // A child whose unique key another job took meanwhile stays
        // cancelled; its parent's retry still goes through.
        try_sql(
            &b,
            &format!(
                "INSERT INTO jobs(id, kind) VALUES (20, 'noop'); \
                 INSERT INTO jobs(id, kind, parents, unique_key) VALUES (21, 'noop', {p}, 'k');",
                p = ids(&b, &[20])
            ),
        )
        .unwrap();
        dead(20);
        try_sql(
            &b,
            "INSERT INTO jobs(id, kind, unique_key) VALUES (22, 'noop', 'k');",
        )
        .unwrap();
        b.home.ok(&["retry", "20"]);
        assert_eq!(
            states(&b, &[20, 21, 22]),
            "queued cancelled queued",
            "{}",
            b.name
        );
        // Sequence w: 31 cancelled while waiting, 30 done, 32 running:
        // retrying 31 puts it behind 32, not beside it.
        try_sql(
            &b,
            "INSERT INTO jobs(id, kind, sequence) VALUES (30, 'noop', 'w'); \
             INSERT INTO jobs(id, kind, sequence) VALUES (31, 'noop', 'w'); \
             INSERT INTO jobs(id, kind, sequence) VALUES (32, 'noop', 'w');",
        )
        .unwrap();
        b.home.ok(&["cancel", "31"]);
        try_sql(&b, "UPDATE jobs SET state = 'succeeded' WHERE id = 30;").unwrap();
        assert_eq!(state(&b, 32), "queued", "{}", b.name);
        try_sql(&b, "UPDATE jobs SET state = 'running' WHERE id = 32;").unwrap();
        b.home.ok(&["retry", "31"]);
        assert_eq!(state(&b, 31), "waiting", "{}: beside its successor", b.name);
        try_sql(&b, "UPDATE jobs SET state = 'succeeded' WHERE id = 32;").unwrap();
        assert_eq!(state(&b, 31), "queued", "{}", b.name);
    }
}

#[test]
fn prune_keeps_a_dead_member_its_sequence_waits_for_and_a_deleted_job_lets_go_of_the_rest() {
    for b in common::homes("flow_prune") {
        b.home.migrate();
        // H died long ago and halts S.
        try_sql(
            &b,
            &format!(
                "INSERT INTO jobs(id, kind, sequence) VALUES (1, 'noop', 'h'); \
                 INSERT INTO jobs(id, kind, sequence) VALUES (2, 'noop', 'h'); \
                 INSERT INTO jobs(id, kind) VALUES (3, 'noop'); \
                 INSERT INTO jobs(id, kind, parents) VALUES (4, 'noop', {p}); \
                 INSERT INTO jobs(id, kind, parents, run_always) VALUES (5, 'noop', {p}, true); \
                 UPDATE jobs SET state = 'dead', finished_at = 1000 WHERE id = 1;",
                p = ids(&b, &[3])
            ),
        )
        .unwrap();
        b.home.ok(&["prune", "--older-than", "1s"]);
        assert_eq!(states(&b, &[1, 2]), "dead waiting", "{}", b.name);
        // Deleted by hand, it lets S go; a queued parent deleted by hand
        // cancels its child (naming it) and lets its run_always child go.
        try_sql(&b, "DELETE FROM jobs WHERE id = 1;").unwrap();
        assert_eq!(state(&b, 2), "queued", "{}", b.name);
        try_sql(&b, "DELETE FROM jobs WHERE id = 3;").unwrap();
        assert_eq!(states(&b, &[4, 5]), "cancelled queued", "{}", b.name);
        assert_eq!(
            b.value("SELECT last_error FROM jobs WHERE id = 4;"),
            "cancelled: job 3, which this job waits for, was deleted",
            "{}",
            b.name
        );
    }
}

#[test]
fn a_client_adding_to_a_batch_in_an_open_transaction_does_not_stall_the_batch_on_postgres() {
    for b in common::homes("flow_batch_open_tx") {
        let Some(schema) = &b.schema else { continue };
        b.home.migrate();
        let first = b.home.ok(&["enqueue", "noop", "--batch", "open"]);
        // Another client adds a member and keeps its transaction open.
        let mut client = common::Spawned::start(
            std::process::Command::new("psql")
                .args(["-h", "127.0.0.1", "-d", "test", "-qAt", "-c"])
                .arg(format!(
                    "SET search_path = {}; BEGIN; \
                 INSERT INTO jobs(kind, batch) VALUES ('noop', 'open'); \
                 SELECT pg_sleep(120); COMMIT;",
                    schema.name
                ))
                .stderr(std::process::Stdio::null()),
        );
        common::wait_for(common::PATIENCE, || {
            (common::pg::psql(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' \
                 AND query LIKE '%pg_sleep(120)%' AND pid <> pg_backend_pid();",
            )
            .as_deref()
                == Ok("1"))
            .then_some(())
        })
        .expect("the client's transaction is open");
        // The daemon ends the first member meanwhile: counting it on the
        // batch's row must not wait for the client.
        let daemon = b.home.daemon();
        b.wait_value(
            &format!("SELECT state FROM jobs WHERE id = {};", first.trim()),
            "succeeded",
            "the member ended while a client adds to its batch",
        );
        // Its backend would sleep on, holding its locks, after psql died.
        common::pg::psql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE query LIKE '%pg_sleep(120)%' AND pid <> pg_backend_pid();",
        )
        .unwrap();
        let _ = client.wait();
        daemon.stop();
    }
}

/// Runs `sql` on the backend, which must accept it.
fn sql(b: &BackendHome, sql: &str) {
    if let Err(e) = try_sql(b, sql) {
        panic!("{}: {sql}: {e}", b.name);
    }
}

/// Job `id` goes from queued to running to `end`, as a daemon moves it.
fn ends(b: &BackendHome, id: i64, end: &str) {
    sql(
        b,
        &format!(
            "UPDATE jobs SET state = 'running' WHERE id = {id}; \
             UPDATE jobs SET state = '{end}', finished_at = 1000 WHERE id = {id};"
        ),
    );
}

#[test]
fn members_brought_back_or_handed_on_still_run_one_at_a_time() {
    for b in common::homes("flow_line_rules") {
        b.home.migrate();
        // Members 2, 3 and 4 all wait for parent 1; its death cancels them
        // and its retry revives them: one at a time still.
        sql(
            &b,
            &format!(
                "INSERT INTO jobs(id, kind) VALUES (1, 'noop'); \
                 INSERT INTO jobs(id, kind, sequence, parents) VALUES \
                   (2, 'noop', 's', {p}), (3, 'noop', 's', {p}), (4, 'noop', 's', {p});",
                p = ids(&b, &[1])
            ),
        );
        ends(&b, 1, "dead");
        b.home.ok(&["retry", "1"]);
        ends(&b, 1, "succeeded");
        assert_eq!(
            states(&b, &[2, 3, 4]),
            "queued waiting waiting",
            "{}",
            b.name
        );
        // A member whose predecessor is also its parent leaves the line:
        // the next waits for that predecessor.
        sql(
            &b,
            &format!(
                "INSERT INTO jobs(id, kind, sequence) VALUES (10, 'noop', 't'); \
                 INSERT INTO jobs(id, kind, sequence, parents) VALUES (11, 'noop', 't', {p}); \
                 INSERT INTO jobs(id, kind, sequence) VALUES (12, 'noop', 't'); \
                 UPDATE jobs SET state = 'running' WHERE id = 10;",
                p = ids(&b, &[10])
            ),
        );
        b.home.ok(&["cancel", "11"]);
        assert_eq!(
            state(&b, 12),
            "waiting",
            "{}: beside its predecessor",
            b.name
        );
        // … and a dead predecessor halts it.
        sql(
            &b,
            &format!(
                "INSERT INTO jobs(id, kind, sequence) VALUES (20, 'noop', 'u'); \
                 INSERT INTO jobs(id, kind, sequence, parents) VALUES (21, 'noop', 'u', {p}); \
                 INSERT INTO jobs(id, kind, sequence) VALUES (22, 'noop', 'u');",
                p = ids(&b, &[20])
            ),
        );
        ends(&b, 20, "dead");
        assert_eq!(states(&b, &[21, 22]), "cancelled waiting", "{}", b.name);
        // A dead member whose death cancelled a child outside its sequence,
        // retried behind a run_always member: a member inserted then waits
        // for it, not beside it.
        sql(
            &b,
            &format!(
                "INSERT INTO jobs(id, kind, sequence) VALUES (30, 'noop', 'v'); \
                 INSERT INTO jobs(id, kind, parents) VALUES (31, 'noop', {p});",
                p = ids(&b, &[30])
            ),
        );
        ends(&b, 30, "dead");
        sql(
            &b,
            "INSERT INTO jobs(id, kind, sequence, run_always) VALUES (32, 'noop', 'v', true);",
        );
        b.home.ok(&["retry", "30"]);
        sql(
            &b,
            "INSERT INTO jobs(id, kind, sequence) VALUES (33, 'noop', 'v');",
        );
        ends(&b, 32, "succeeded");
        assert_eq!(states(&b, &[30, 33]), "queued waiting", "{}", b.name);
        // A member cancelled while it waited and retried waits behind the
        // line's last member, not for its old predecessor.
        sql(
            &b,
            "INSERT INTO jobs(id, kind, sequence) VALUES (40, 'noop', 'w'); \
             INSERT INTO jobs(id, kind, sequence) VALUES (41, 'noop', 'w'); \
             INSERT INTO jobs(id, kind, sequence, run_always) VALUES (42, 'noop', 'w', true); \
             UPDATE jobs SET state = 'running' WHERE id = 40;",
        );
        b.home.ok(&["cancel", "41"]);
        b.home.ok(&["retry", "41"]);
        sql(
            &b,
            "UPDATE jobs SET state = 'dead', finished_at = 1000 WHERE id = 40;",
        );
        ends(&b, 42, "succeeded");
        assert_eq!(state(&b, 41), "queued", "{}: stranded", b.name);
    }
}

#[test]
fn a_retry_is_refused_while_a_parent_is_dead_and_a_deleted_member_ends_its_batch() {
    for b in common::homes("flow_refusals") {
        b.home.migrate();
        // An operator cancelled 2; then its parent died: retrying 2 names 1.
        sql(
            &b,
            &format!(
                "INSERT INTO jobs(id, kind) VALUES (1, 'noop'); \
                 INSERT INTO jobs(id, kind, parents) VALUES (2, 'noop', {p}); \
                 UPDATE jobs SET state = 'running' WHERE id = 1;",
                p = ids(&b, &[1])
            ),
        );
        b.home.ok(&["cancel", "2"]);
        sql(
            &b,
            "UPDATE jobs SET state = 'dead', finished_at = 1000 WHERE id = 1;",
        );
        b.home
            .jobd(&["retry", "2"])
            .fails(1, "it depends on job 1, which is dead; retry job 1");
        // The operator's cancel holds through the parent's retry; then the
        // child can be retried.
        b.home.ok(&["retry", "1"]);
        assert_eq!(state(&b, 2), "cancelled", "{}", b.name);
        b.home.ok(&["retry", "2"]);
        assert_eq!(state(&b, 2), "waiting", "{}", b.name);
        // Two children with one unique key: the retry revives the first.
        sql(
            &b,
            &format!(
                "INSERT INTO jobs(id, kind) VALUES (10, 'noop'); \
                 INSERT INTO jobs(id, kind, parents, unique_key) VALUES (11, 'noop', {p}, 'k');",
                p = ids(&b, &[10])
            ),
        );
        ends(&b, 10, "dead");
        sql(
            &b,
            &format!(
                "INSERT INTO jobs(id, kind, parents, unique_key) VALUES (12, 'noop', {p}, 'k');",
                p = ids(&b, &[10])
            ),
        );
        b.home.ok(&["retry", "10"]);
        assert_eq!(states(&b, &[11, 12]), "waiting cancelled", "{}", b.name);
        // A member deleted after the seal before it ended counts as
        // cancelled: the callback goes.
        sql(
            &b,
            "INSERT INTO jobs(id, kind, batch) VALUES (20, 'noop', 'b'), (21, 'noop', 'b'); \
             INSERT INTO jobs(id, kind, callback_for) VALUES (22, 'noop', 'b'); \
             UPDATE jobs SET state = 'succeeded' WHERE id = 20; \
             DELETE FROM jobs WHERE id = 21;",
        );
        assert_eq!(state(&b, 22), "queued", "{}: callback stranded", b.name);
    }
}

#[test]
fn a_line_holds_when_a_predecessor_named_as_a_parent_or_a_deleted_member_leaves_it() {
    for b in common::homes("flow_line_parents") {
        b.home.migrate();
        // 2 names its predecessor 1 as its parent; cancelling 1 cancels 2
        // and lets 3 go (1 was the head).
        sql(
            &b,
            &format!(
                "INSERT INTO jobs(id, kind, sequence) VALUES (1, 'noop', 's'); \
                 INSERT INTO jobs(id, kind, sequence, parents) VALUES (2, 'noop', 's', {p}); \
                 INSERT INTO jobs(id, kind, sequence) VALUES (3, 'noop', 's');",
                p = ids(&b, &[1])
            ),
        );
        b.home.ok(&["cancel", "1"]);
        assert_eq!(
            states(&b, &[2, 3]),
            "cancelled queued",
            "{}: stranded",
            b.name
        );
        // A waiting member deleted by hand takes a member that waits for it
        // through another job; the member after them waits for the head.
        sql(
            &b,
            &format!(
                "INSERT INTO jobs(id, kind, sequence) VALUES (10, 'noop', 't'); \
                 INSERT INTO jobs(id, kind, sequence) VALUES (11, 'noop', 't'); \
                 INSERT INTO jobs(id, kind, parents) VALUES (12, 'noop', {p11}); \
                 INSERT INTO jobs(id, kind, sequence, parents) VALUES (13, 'noop', 't', {p12}); \
                 INSERT INTO jobs(id, kind, sequence) VALUES (14, 'noop', 't'); \
                 UPDATE jobs SET state = 'running' WHERE id = 10; \
                 DELETE FROM jobs WHERE id = 11;",
                p11 = ids(&b, &[11]),
                p12 = ids(&b, &[12])
            ),
        );
        assert_eq!(
            states(&b, &[12, 13, 14]),
            "cancelled cancelled waiting",
            "{}: beside the head",
            b.name
        );
        // A run_always member whose predecessor is also its parent waits
        // for the head when that predecessor is cancelled.
        sql(
            &b,
            &format!(
                "INSERT INTO jobs(id, kind, sequence) VALUES (20, 'noop', 'u'); \
                 INSERT INTO jobs(id, kind, sequence) VALUES (21, 'noop', 'u'); \
                 INSERT INTO jobs(id, kind, sequence, parents, run_always) \
                   VALUES (22, 'noop', 'u', {p}, true); \
                 UPDATE jobs SET state = 'running' WHERE id = 20;",
                p = ids(&b, &[21])
            ),
        );
        b.home.ok(&["cancel", "21"]);
        assert_eq!(state(&b, 22), "waiting", "{}: beside the head", b.name);
        ends(&b, 20, "succeeded");
        assert_eq!(state(&b, 22), "queued", "{}", b.name);
        // `retry --dead` puts a line's dead members back in line order.
        sql(
            &b,
            "INSERT INTO jobs(id, kind, sequence, run_always) VALUES (30, 'noop', 'v', true); \
             INSERT INTO jobs(id, kind, sequence, run_always) VALUES (31, 'noop', 'v', true);",
        );
        ends(&b, 30, "dead");
        ends(&b, 31, "dead");
        b.home.ok(&["retry", "--dead"]);
        assert_eq!(states(&b, &[30, 31]), "queued waiting", "{}", b.name);
    }
}

#[test]
fn prune_on_postgres_keeps_a_dead_member_a_concurrent_insert_makes_wait_for_it() {
    for b in common::homes("flow_prune_race") {
        let Some(schema) = &b.schema else { continue };
        b.home.migrate();
        sql(
            &b,
            "INSERT INTO jobs(id, kind, sequence) VALUES (1, 'noop', 's'); \
             UPDATE jobs SET state = 'dead', finished_at = 1000 WHERE id = 1;",
        );
        // A client inserts the next member and holds its transaction open.
        let mut client = std::process::Command::new("psql")
            .args(["-h", "127.0.0.1", "-d", "test", "-qAt", "-c"])
            .arg(format!(
                "SET search_path = {}; BEGIN; \
                 INSERT INTO jobs(id, kind, sequence) VALUES (2, 'noop', 's'); \
                 SELECT pg_sleep(2); COMMIT;",
                schema.name
            ))
            .spawn()
            .unwrap();
        common::wait_for(common::PATIENCE, || {
            (common::pg::psql(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' \
                 AND query LIKE '%pg_sleep(2)%' AND pid <> pg_backend_pid();",
            )
            .as_deref()
                == Ok("1"))
            .then_some(())
        })
        .expect("the client's transaction is open");
        // Prune waits for the client's commit, then sees the member waits.
        let pruned = b.home.ok(&["prune", "--older-than", "1s"]);
        assert!(client.wait().unwrap().success());
        assert_eq!(states(&b, &[1, 2]), "dead waiting", "{pruned}");
    }
}
