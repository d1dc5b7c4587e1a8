//! Hostile payloads: a corpus of over 200 bad payloads across every kind —
//! wrong types, huge strings, deep nesting, NUL bytes, path escapes,
//! header injection, SSRF addresses in every spelling, handler names with
//! shell metacharacters. Each must end `dead` on its first attempt with a
//! `last_error` that names what is wrong; nothing outside the file roots
//! may change, no request may reach a denied address, and the daemon must
//! go on serving.

mod common;

use common::{wait_for, Home, HttpServer, Reply, PATIENCE};

/// One bad payload: its kind, the payload, and a word its error must say.
struct Case {
    kind: &'static str,
    payload: String,
    needle: String,
}

fn case(kind: &'static str, payload: impl Into<String>, needle: impl Into<String>) -> Case {
    Case {
        kind,
        payload: payload.into(),
        needle: needle.into(),
    }
}

/// JSON values of the wrong type for a field that wants `expected`
/// (`null` included: use [`wrong_types_optional`] where null means absent).
fn wrong_types(expected: &str) -> Vec<&'static str> {
    let all = [
        ("string", r#""x""#),
        ("number", "42"),
        ("float", "1.5"),
        ("negative", "-7"),
        ("bool", "true"),
        ("array", "[1,2]"),
        ("object", r#"{"a":1}"#),
        ("null", "null"),
    ];
    all.iter()
        .filter(|(name, _)| *name != expected)
        .map(|(_, v)| *v)
        .collect()
}

/// Every spelling of a denied address we know: the test server's port on
/// loopback (denied by this test's config), and the cloud metadata address.
/// [`wrong_types`] for an optional field, where `null` is the same as
/// leaving it out.
fn wrong_types_optional(expected: &str) -> Vec<&'static str> {
    wrong_types(expected)
        .into_iter()
        .filter(|v| *v != "null")
        .collect()
}

fn ssrf_urls(port: u16) -> Vec<String> {
    let hosts = [
        "127.0.0.1",
        "127.1",
        "2130706433",
        "0x7f000001",
        "0177.0.0.1",
        "0x7f.0.0.1",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "localhost",
        "127.0.0.2",
    ];
    let mut urls: Vec<String> = hosts
        .iter()
        .map(|h| format!("http://{h}:{port}/hook"))
        .collect();
    for h in [
        "169.254.169.254",
        "2852039166",
        "[::ffff:169.254.169.254]",
        "0xa9fea9fe",
        "0.0.0.0",
        "[fe80::1]",
    ] {
        urls.push(format!("http://{h}/latest/meta-data/"));
    }
    urls
}

fn corpus(port: u16) -> Vec<Case> {
    let mut cases = Vec::new();
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let huge = "y".repeat(200_000);

    // noop
    for v in wrong_types("number") {
        cases.push(case("noop", format!(r#"{{"sleep_ms":{v}}}"#), "sleep_ms"));
    }
    cases.push(case("noop", r#"{"sleep_ms":-1}"#, "sleep_ms"));
    cases.push(case("noop", r#"{"sleep_ms":1e30}"#, "sleep_ms"));
    cases.push(case("noop", r#"{"slep_ms":1}"#, "slep_ms"));
    cases.push(case("noop", format!(r#"{{"sleep_ms":{deep}}}"#), "payload"));
    cases.push(case("noop", format!(r#"{{"note":"{huge}"}}"#), "note"));
    cases.push(case("noop", r#"{"sleep_ms\u0000":1}"#, "sleep_ms"));

    // http: types
    let url = format!(r#""http://example.invalid:{port}/""#);
    for v in wrong_types("string") {
        cases.push(case("http", format!(r#"{{"url":{v}}}"#), "url"));
        cases.push(case(
            "http",
            format!(r#"{{"url":{url},"method":{v}}}"#),
            "method",
        ));
    }
    for v in wrong_types_optional("string") {
        cases.push(case(
            "http",
            format!(r#"{{"url":{url},"body":{v}}}"#),
            "body",
        ));
    }
    for v in wrong_types("object") {
        cases.push(case(
            "http",
            format!(r#"{{"url":{url},"headers":{v}}}"#),
            "headers",
        ));
    }
    for v in wrong_types_optional("array") {
        cases.push(case(
            "http",
            format!(r#"{{"url":{url},"expect":{v}}}"#),
            "expect",
        ));
    }
    for v in wrong_types("bool") {
        cases.push(case(
            "http",
            format!(r#"{{"url":{url},"follow_redirects":{v}}}"#),
            "follow_redirects",
        ));
    }
    // http: values
    for bad_url in [
        "",
        "not a url",
        "ht!tp://x",
        "javascript:alert(1)",
        "file:///etc/passwd",
        "ftp://example.com/",
        "http://",
        "http://exa mple.com/",
        "//example.com/x",
    ] {
        cases.push(case("http", format!(r#"{{"url":"{bad_url}"}}"#), "url"));
    }
    for method in ["TRACE", "CONNECT", "get\r\nX: 1", "", "G ET"] {
        let method = method.replace('\r', "\\r").replace('\n', "\\n");
        cases.push(case(
            "http",
            format!(r#"{{"url":{url},"method":"{method}"}}"#),
            "method",
        ));
    }
    for (name, value) in [
        ("X-A", "1\r\nX-Injected: yes"),
        ("X-A", "1\nX-Injected: yes"),
        ("X-A\r\nX-Injected", "yes"),
        ("Bad Name", "1"),
        ("X:Colon", "1"),
        ("", "1"),
        ("X-Nul", "a\u{0}b"),
    ] {
        let esc = |s: &str| {
            s.replace('\r', "\\r")
                .replace('\n', "\\n")
                .replace('\u{0}', "\\u0000")
        };
        cases.push(case(
            "http",
            format!(
                r#"{{"url":{url},"headers":{{"{}":"{}"}}}}"#,
                esc(name),
                esc(value)
            ),
            "header",
        ));
    }
    cases.push(case(
        "http",
        format!(r#"{{"url":{url},"body":"a","json":{{}}}}"#),
        "json",
    ));
    cases.push(case(
        "http",
        format!(r#"{{"url":{url},"expect":[99999]}}"#),
        "expect",
    ));
    cases.push(case(
        "http",
        format!(r#"{{"url":{url},"timeout":5}}"#),
        "timeout",
    ));
    for ssrf in ssrf_urls(port) {
        cases.push(case("http", format!(r#"{{"url":"{ssrf}"}}"#), "refused"));
    }

    // email
    let body = r#""subject":"s","text":"t""#;
    for v in wrong_types("string") {
        if v.starts_with('[') {
            continue; // a list of recipients is allowed for "to"
        }
        cases.push(case("email", format!(r#"{{"to":{v},{body}}}"#), "to"));
        cases.push(case(
            "email",
            format!(r#"{{"to":"a@example.com","subject":{v},"text":"t"}}"#),
            "subject",
        ));
        cases.push(case(
            "email",
            format!(r#"{{"to":"a@example.com","subject":"s","text":{v}}}"#),
            "text",
        ));
    }
    for to in [
        "",
        "not-an-address",
        "a@",
        "@example.com",
        "a b@example.com",
        "a@example.com\r\nBcc: x@evil.test",
    ] {
        let to = to.replace('\r', "\\r").replace('\n', "\\n");
        cases.push(case("email", format!(r#"{{"to":"{to}",{body}}}"#), "to"));
    }
    cases.push(case(
        "email",
        r#"{"to":[],"subject":"s","text":"t"}"#,
        "recipient",
    ));
    cases.push(case(
        "email",
        r#"{"to":"a@example.com","subject":"s"}"#,
        "text",
    ));
    cases.push(case(
        "email",
        r#"{"to":"a@example.com","subject":"hi\r\nBcc: x@evil.test","text":"t"}"#,
        "subject",
    ));
    cases.push(case(
        "email",
        format!(r#"{{"to":"a@example.com",{body},"headers":{{"X-A":"1\r\nBcc: x@evil.test"}}}}"#),
        "header",
    ));
    cases.push(case(
        "email",
        format!(r#"{{"to":"a@example.com",{body},"headers":{{"X-A\r\nBcc":"x"}}}}"#),
        "header",
    ));
    cases.push(case(
        "email",
        format!(r#"{{"to":"a@example.com",{body},"from":"not an address"}}"#),
        "address",
    ));
    cases.push(case(
        "email",
        format!(r#"{{"to":"a@example.com",{body},"reply_to":"@@"}}"#),
        "address",
    ));
    for path in [
        "../outside/secret.txt",
        "/etc/passwd",
        "/proc/self/environ",
        "link-out/secret.txt",
        "sub/../../outside/secret.txt",
    ] {
        cases.push(case(
            "email",
            format!(r#"{{"to":"a@example.com",{body},"attachments":[{{"path":"{path}"}}]}}"#),
            "path",
        ));
    }
    cases.push(case(
        "email",
        format!(r#"{{"to":"a@example.com",{body},"attachments":"x"}}"#),
        "attachments",
    ));
    cases.push(case(
        "email",
        format!(r#"{{"to":"a@example.com",{body},"bcc":{{"a":1}}}}"#),
        "bcc",
    ));

    // file
    for op in [r#""chmod""#, r#""""#, "1", "null", r#""WRITE""#] {
        cases.push(case("file", format!(r#"{{"op":{op},"path":"a"}}"#), "op"));
    }
    for path in [
        "../outside/secret.txt",
        "/etc/passwd",
        "/proc/self/environ",
        "/outside/secret.txt",
        "link-out/secret.txt",
        "a/../../outside/secret.txt",
        "..",
        "../../../../../../etc/shadow",
    ] {
        for op in ["write", "append", "delete", "mkdir"] {
            cases.push(case(
                "file",
                format!(r#"{{"op":"{op}","path":"{path}","content":"pwned"}}"#),
                "",
            ));
        }
    }
    cases.push(case(
        "file",
        r#"{"op":"copy","from":"/etc/passwd","to":"stolen"}"#,
        "outside",
    ));
    cases.push(case(
        "file",
        r#"{"op":"move","from":"in-root.txt","to":"../outside/moved"}"#,
        "escapes",
    ));
    cases.push(case(
        "file",
        r#"{"op":"write","path":"a\u0000b","content":"x"}"#,
        "",
    ));
    cases.push(case(
        "file",
        r#"{"op":"write","path":"b64","content":"***not base64***","encoding":"base64"}"#,
        "base64",
    ));
    cases.push(case(
        "file",
        r#"{"op":"write","path":"e","content":"x","encoding":"rot13"}"#,
        "encoding",
    ));
    cases.push(case(
        "file",
        r#"{"op":"write","path":"o","content":"x","overwrite":"yes"}"#,
        "overwrite",
    ));
    cases.push(case("file", r#"{"op":"write","content":"x"}"#, "path"));
    for v in wrong_types("string") {
        cases.push(case(
            "file",
            format!(r#"{{"op":"write","path":{v},"content":"x"}}"#),
            "path",
        ));
    }

    // checksum and compress
    for path in [
        "../outside/secret.txt",
        "/etc/passwd",
        "/proc/self/environ",
        "link-out/secret.txt",
    ] {
        cases.push(case("checksum", format!(r#"{{"path":"{path}"}}"#), ""));
        cases.push(case(
            "compress",
            format!(r#"{{"from":"{path}","to":"c.gz","format":"gzip"}}"#),
            "",
        ));
        cases.push(case(
            "compress",
            format!(r#"{{"from":"in-root.txt","to":"{path}","format":"gzip"}}"#),
            "",
        ));
    }
    for v in wrong_types("string") {
        cases.push(case("checksum", format!(r#"{{"path":{v}}}"#), "path"));
        cases.push(case(
            "checksum",
            format!(r#"{{"path":"in-root.txt","algorithm":{v}}}"#),
            "algorithm",
        ));
    }
    for v in wrong_types_optional("number") {
        cases.push(case(
            "compress",
            format!(r#"{{"from":"in-root.txt","to":"c.gz","format":"gzip","level":{v}}}"#),
            "level",
        ));
    }
    cases.push(case(
        "compress",
        r#"{"from":"in-root.txt","to":"c.gz","format":"gzip","level":10}"#,
        "level",
    ));
    cases.push(case(
        "compress",
        r#"{"from":"in-root.txt","to":"c.zst","format":"zstd","level":23}"#,
        "level",
    ));
    cases.push(case(
        "compress",
        r#"{"from":"in-root.txt","to":"c.x","format":"rar"}"#,
        "format",
    ));

    // exec
    for name in [
        "a;rm -rf /",
        "$(id)",
        "`id`",
        "a|b",
        "a&b",
        "a b",
        "..",
        ".",
        "../bin/sh",
        "/bin/sh",
        "a/b",
        "~",
        "*",
        "a\u{0}b",
        "a\nb",
        "x>y",
        "",
        "ä",
    ] {
        let name = name.replace('\u{0}', "\\u0000").replace('\n', "\\n");
        cases.push(case(
            "exec",
            format!(r#"{{"handler":"{name}"}}"#),
            "handler",
        ));
    }
    cases.push(case("exec", r#"{"handler":"missing-handler"}"#, "handler"));
    cases.push(case(
        "exec",
        r#"{"handler":"plain-file"}"#,
        "not executable",
    ));
    for v in wrong_types("string") {
        cases.push(case("exec", format!(r#"{{"handler":{v}}}"#), "handler"));
    }
    cases.push(case("exec", r#"{"handler":"x","argz":1}"#, "argz"));

    // not objects at all, for every kind
    for kind in [
        "noop", "http", "email", "file", "checksum", "compress", "exec",
    ] {
        for v in ["[]", "1", r#""text""#, "null"] {
            cases.push(case(kind, v, "payload"));
        }
    }
    cases
}

#[test]
fn over_200_hostile_payloads_each_go_dead_naming_the_fault_and_touch_nothing() {
    let api = HttpServer::start(|_, _| Reply::new(200, "should never be reached"));
    let port: u16 = api.base.rsplit(':').next().unwrap().parse().unwrap();
    let home = Home::new();
    let root = home.path().join("root");
    let outside = home.path().join("outside");
    let handlers = home.path().join("handlers");
    for dir in [&root, &outside, &handlers] {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(outside.join("secret.txt"), "secret").unwrap();
    std::fs::write(root.join("in-root.txt"), "inside").unwrap();
    std::fs::write(handlers.join("plain-file"), "#!/bin/sh\n").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("link-out")).unwrap();
    home.write_config(&format!(
        "[file]\nroots = [\"{}\"]\n[exec]\ndir = \"{}\"\n\
         [http]\ndeny_networks = [\"127.0.0.0/8\", \"169.254.0.0/16\", \"0.0.0.0/8\", \"fe80::/10\", \"::1/128\"]\n\
         [limits]\nmax_payload_bytes = \"1MiB\"\n[daemon]\nshutdown_grace = \"100ms\"\n",
        root.display(),
        handlers.display()
    ));
    home.migrate();
    let outside_before = snapshot(&outside);
    let etc_before = std::fs::metadata("/etc/passwd")
        .unwrap()
        .modified()
        .unwrap();

    let cases = corpus(port);
    assert!(cases.len() >= 200, "only {} cases", cases.len());
    let mut ids = Vec::new();
    for chunk in cases.chunks(50) {
        let values: Vec<String> = chunk
            .iter()
            .map(|c| {
                format!(
                    "('{}', '{}', 'default', 0, {}, 3, NULL)",
                    c.kind,
                    c.payload.replace('\'', "''"),
                    common::NOW
                )
            })
            .collect();
        let run = home.sqlite3(&format!(
            "INSERT INTO jobs(kind, payload, queue, priority, run_at, max_attempts, timeout_ms) \
             VALUES {} RETURNING id;",
            values.join(", ")
        ));
        assert_eq!(run.code(), 0, "{}", run.stderr());
        ids.extend(
            run.stdout()
                .lines()
                .map(|l| l.trim().parse::<i64>().unwrap()),
        );
    }
    assert_eq!(ids.len(), cases.len());

    let daemon = home.daemon();
    let settled = wait_for(PATIENCE, || {
        let open = home.query_i64("SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')");
        (open == 0).then_some(())
    });
    assert!(settled.is_some(), "some hostile jobs never settled");
    // Still serving.
    let ok = home.insert_job("noop", "{}", "1", "NULL");
    home.wait_state(ok, "succeeded");
    daemon.stop();

    let mut wrong = Vec::new();
    for (c, id) in cases.iter().zip(&ids) {
        let row = home.text(&format!(
            "SELECT state || '|' || attempts || '|' || coalesce(last_error, '') FROM jobs WHERE id = {id};"
        ));
        let mut parts = row.splitn(3, '|');
        let (state, attempts, error) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        let named = error.to_lowercase().contains(&c.needle.to_lowercase());
        if state != "dead" || attempts != "1" || error.is_empty() || !named {
            wrong.push(format!(
                "{} {}: {state} after {attempts} attempt(s): {error:?} (wanted {:?})",
                c.kind,
                common_clip(&c.payload),
                c.needle
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {}:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    assert!(
        api.received().is_empty(),
        "a request reached a denied address"
    );
    assert_eq!(
        snapshot(&outside),
        outside_before,
        "something outside the root changed"
    );
    assert_eq!(
        std::fs::metadata("/etc/passwd")
            .unwrap()
            .modified()
            .unwrap(),
        etc_before
    );
    eprintln!(
        "{} hostile payloads, all dead on their first attempt",
        cases.len()
    );
}

fn common_clip(text: &str) -> String {
    let text: String = text.chars().take(90).collect();
    text.replace('\n', "\\n")
}

/// Names and contents of the files under `dir`.
fn snapshot(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let content = std::fs::read(e.path()).unwrap_or_default();
            (e.file_name().to_string_lossy().into_owned(), content)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn credentials_are_redacted_everywhere() {
    let server = HttpServer::start(|_, _| Reply::new(500, "broken"));
    let hostport = server.base.trim_start_matches("http://").to_string();
    let port = common::free_port();
    let home = Home::with_config(&format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\n[log]\nlevel = \"debug\"\n\
         [daemon]\nshutdown_grace = \"100ms\"\n\
         [http]\nredact_headers = [\"Authorization\", \"x-api-key\", \"X-Auth-Token\", \"api-key\", \"cookie\", \"x-custom\"]\n\
         redact_query = [\"api_key\", \"token\", \"signature\", \"Session\"]\n\
         [cron.hook]\nschedule = \"0 0 1 1 *\"\nkind = \"http\"\n\
         payload = {{ url = \"http://u:S3cret-c1@h/?token=S3cret-c2\", headers = {{ Cookie = \"S3cret-c3\" }} }}\n"
    ));
    home.migrate();
    let daemon = home.daemon();
    let payload = format!(
        r#"{{"url":"http://admin:S3cret-pw@{hostport}/hook?api_key=S3cret-q1&TOKEN=S3cret-q2&signature=S3cret-q3&session=S3cret-q4&page=2","headers":{{"X-Api-Key":"S3cret-h1","x-auth-token":"S3cret-h2","Api-Key":"S3cret-h3","Cookie":"S3cret-h4","AUTHORIZATION":"Bearer S3cret-h5","X-Custom":"S3cret-h6","X-Trace":"visible-trace"}}}}"#
    );
    let id = home.insert_job("http", &payload, "1", "NULL");
    home.wait_state(id, "dead");
    // The credentials still went out: the redaction is for display only.
    let sent = &server.received()[0];
    assert_eq!(sent.header("x-api-key"), Some("S3cret-h1"));
    assert!(sent.url.contains("api_key=S3cret-q1"), "{}", sent.url);
    let get = |path: &str| {
        let url = format!("http://127.0.0.1:{port}{path}");
        match ureq::get(&url).call() {
            Ok(r) => r.into_string().unwrap(),
            Err(e) => panic!("GET {url}: {e}"),
        }
    };
    let shown = [
        ("show", home.ok(&["show", &id.to_string()])),
        ("show --json", home.ok(&["show", "--json", &id.to_string()])),
        ("list", home.ok(&["list"])),
        ("list --json", home.ok(&["list", "--json"])),
        ("dashboard job", get(&format!("/jobs/{id}"))),
        ("dashboard jobs", get("/jobs")),
        ("log", daemon.log()),
        ("check-config", home.ok(&["check-config"])),
    ];
    for (place, text) in &shown {
        assert!(
            !text.contains("S3cret"),
            "{place} shows a credential:\n{text}"
        );
    }
    let (_, show) = &shown[0];
    assert!(show.contains("visible-trace"), "{show}");
    assert!(show.contains("page=2"), "{show}");
    assert!(show.contains("admin:[redacted]@"), "{show}");
    assert!(show.contains("TOKEN=[redacted]"), "{show}");
    let last_error = home.text(&format!("SELECT last_error FROM jobs WHERE id = {id};"));
    assert!(!last_error.contains("S3cret"), "{last_error}");
    assert!(last_error.contains("answered 500"), "{last_error}");
    daemon.stop();
}

/// A remote server whose body holds NUL characters, and handlers whose
/// stdout or stderr do. PostgreSQL's `text` and `jsonb` cannot hold NUL:
/// one such outcome failed its whole batch of outcomes, retried forever,
/// so the daemon stalled. Each is stored with U+FFFD in its place, on
/// both backends alike, and the jobs after them run.
#[test]
fn nul_characters_in_a_response_or_a_handlers_output_are_stored_and_nothing_stalls() {
    let server = HttpServer::start(|_, _| Reply::new(200, "before\0after"));
    // Removed when the test ends, passed or not.
    let folder = tempfile::tempdir().unwrap();
    let handlers = folder.path().to_path_buf();
    let handler = |name: &str, script: &str| {
        let path = handlers.join(name);
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    };
    handler(
        "nul-result",
        "#!/bin/sh\nprintf '{\"text\": \"a\\\\u0000b\", \"kept\": \"c\\\\\\\\u0000d\"}'\n",
    );
    handler(
        "nul-error",
        "#!/bin/sh\nprintf 'bad\\000byte' >&2\nexit 1\n",
    );
    for backend in common::homes_with(
        "nulout",
        &format!("[exec]\ndir = \"{}\"\n", handlers.display()),
    ) {
        let home = &backend.home;
        home.migrate();
        let http = home.ok(&[
            "enqueue",
            "http",
            &format!(r#"{{"url": "{}/nul"}}"#, server.base),
        ]);
        let result = home.ok(&["enqueue", "exec", r#"{"handler": "nul-result"}"#]);
        let error = home.ok(&[
            "enqueue",
            "exec",
            r#"{"handler": "nul-error"}"#,
            "--max-attempts",
            "1",
        ]);
        let daemon = home.daemon_logging_to("d.log");
        backend.wait_value(
            "SELECT count(*) FROM jobs WHERE state IN ('succeeded', 'dead');",
            "3",
            "the jobs with NUL in their outcomes ended",
        );
        // And the daemon goes on.
        home.ok(&["enqueue", "noop", "{}"]);
        backend.wait_value(
            "SELECT count(*) FROM jobs WHERE state = 'succeeded';",
            "3",
            "a job after them ran",
        );
        daemon.stop();
        let shown = |id: &str| home.ok(&["show", id.trim(), "--json"]);
        let http = shown(&http);
        assert!(
            http.contains("before\u{FFFD}after"),
            "{}: {http}",
            backend.name
        );
        let result = shown(&result);
        assert!(result.contains("a\u{FFFD}b"), "{}: {result}", backend.name);
        // An escaped backslash before `u0000` is text, not a NUL: kept.
        assert!(result.contains(r"c\\u0000d"), "{}: {result}", backend.name);
        let error = shown(&error);
        assert!(
            error.contains("bad\u{FFFD}byte"),
            "{}: {error}",
            backend.name
        );
    }
}
