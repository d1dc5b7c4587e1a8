//! The `email` kind through the real daemon: a real SMTP server on
//! 127.0.0.1 (mailin-embedded) and the file transport.

mod common;

use common::{Home, SmtpServer};
use mailparse::MailHeaderMap;

fn smtp_home(port: u16) -> Home {
    let home = Home::new();
    let root = home.path().join("files");
    std::fs::create_dir_all(&root).unwrap();
    home.write_config(&format!(
        "[email]\ntransport = \"smtp\"\nfrom = \"jobd@example.com\"\n[email.smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n\
         [file]\nroots = [\"{}\"]\n[retry]\nbackoff_base = \"20ms\"\n[daemon]\nshutdown_grace = \"100ms\"\n",
        root.display()
    ));
    home.migrate();
    home
}

#[test]
fn a_message_with_cc_bcc_html_and_an_attachment_reaches_every_recipient_with_a_stable_message_id() {
    let server = SmtpServer::start(false);
    let home = smtp_home(server.port);
    std::fs::write(home.path().join("files/report.csv"), "a,b\n1,2\n").unwrap();
    let daemon = home.daemon();
    let id = home.insert_job(
        "email",
        r#"{"to":"ann@example.com","cc":["bob@example.com"],"bcc":["eve@example.com"],"subject":"Report","text":"see attached","html":"<p>see attached</p>","headers":{"X-Campaign":"q4"},"attachments":[{"path":"report.csv","content_type":"text/csv"}]}"#,
        "NULL",
        "NULL",
    );
    home.wait_state(id, "succeeded");
    let inbox = server.inbox();
    assert_eq!(inbox.len(), 1);
    let mail = &inbox[0];
    assert_eq!(mail.from, "jobd@example.com");
    let mut to = mail.to.clone();
    to.sort();
    assert_eq!(
        to,
        ["ann@example.com", "bob@example.com", "eve@example.com"]
    );
    let parsed = mailparse::parse_mail(mail.data.as_bytes()).unwrap();
    let header = |name: &str| parsed.headers.get_first_value(name);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(
        header("Message-ID"),
        Some(format!(
            "<jobd-{}-{id}@{}>",
            home.database_id(),
            host.trim()
        ))
    );
    assert_eq!(header("Subject").as_deref(), Some("Report"));
    assert_eq!(header("X-Campaign").as_deref(), Some("q4"));
    assert_eq!(header("Bcc"), None, "Bcc must not be in the message");
    assert!(mail.data.contains("text/html"), "{}", mail.data);
    assert!(mail.data.contains("report.csv"), "{}", mail.data);
    let result: serde_json::Value =
        serde_json::from_str(&home.text(&format!("SELECT result FROM jobs WHERE id = {id};")))
            .unwrap();
    assert_eq!(result["recipients"], 3);
    daemon.stop();
}

#[test]
fn injection_bad_addresses_and_missing_parts_are_dead_and_nothing_is_sent() {
    let server = SmtpServer::start(false);
    let home = smtp_home(server.port);
    let daemon = home.daemon();
    let cases = [
        (
            r#"{"to":"a@example.com","subject":"hi","text":"x","headers":{"X-A":"1\r\nBcc: victim@example.com"}}"#,
            "payload field headers: header \"X-A\" contains CR, LF or a colon",
        ),
        (
            r#"{"to":"a@example.com","subject":"hi\r\nBcc: victim@example.com","text":"x"}"#,
            "payload field subject: contains CR or LF",
        ),
        (
            r#"{"to":"not an address","text":"x"}"#,
            "payload field to: invalid address",
        ),
        (
            r#"{"to":["a@example.com","b@"],"text":"x"}"#,
            "payload field to[1]: invalid address",
        ),
        (
            r#"{"subject":"nobody","text":"x"}"#,
            "at least one recipient",
        ),
        (
            r#"{"to":"a@example.com","subject":"empty"}"#,
            "text or html is required",
        ),
        (
            r#"{"to":"a@example.com","text":"x","attachments":[{"path":"../../etc/passwd"}]}"#,
            "escapes the file root",
        ),
    ];
    for (payload, want) in cases {
        let id = home.insert_job("email", payload, "5", "NULL");
        home.wait_state(id, "dead");
        let error = home.text(&format!(
            "SELECT attempts || ' ' || last_error FROM jobs WHERE id = {id};"
        ));
        assert!(
            error.starts_with("1 ") && error.contains(want),
            "{payload}: {error}"
        );
    }
    assert!(server.inbox().is_empty());
    daemon.stop();
}

#[test]
fn a_closed_port_is_retried_and_a_550_is_dead_after_one_attempt() {
    // A port with nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let home = smtp_home(closed);
    let daemon = home.daemon();
    let id = home.insert_job("email", r#"{"to":"a@example.com","text":"x"}"#, "3", "NULL");
    home.wait_state(id, "dead");
    let outcomes = home.text(&format!(
        "SELECT group_concat(outcome, ',') FROM (SELECT outcome FROM job_runs WHERE job_id = {id} ORDER BY attempt);"
    ));
    assert_eq!(outcomes, "retry,retry,dead");
    let error = home.text(&format!("SELECT last_error FROM jobs WHERE id = {id};"));
    assert!(
        error.contains(&format!("sending through 127.0.0.1:{closed} failed")),
        "{error}"
    );
    daemon.stop();

    let refusing = SmtpServer::start(true);
    let home = smtp_home(refusing.port);
    let daemon = home.daemon();
    let id = home.insert_job(
        "email",
        r#"{"to":"gone@example.com","text":"x"}"#,
        "5",
        "NULL",
    );
    home.wait_state(id, "dead");
    let error = home.text(&format!(
        "SELECT attempts || ' ' || last_error FROM jobs WHERE id = {id};"
    ));
    assert!(
        error.starts_with("1 ") && error.contains("refused the message"),
        "{error}"
    );
    daemon.stop();
}

#[test]
fn the_file_transport_writes_one_parseable_eml_per_job() {
    let home = Home::with_config("[daemon]\nshutdown_grace = \"100ms\"\n");
    home.migrate();
    let daemon = home.daemon();
    let id = home.insert_job(
        "email",
        r#"{"to":["ann@example.com","bob@example.com"],"subject":"Hello","text":"plain","html":"<b>rich</b>"}"#,
        "NULL",
        "NULL",
    );
    home.wait_state(id, "succeeded");
    let token = format!("jobd-{}-{id}", home.database_id());
    let eml = home.path().join("mail").join(format!("{token}.eml"));
    let bytes = std::fs::read(&eml).unwrap();
    let parsed = mailparse::parse_mail(&bytes).unwrap();
    let header = |name: &str| parsed.headers.get_first_value(name);
    assert_eq!(header("Subject").as_deref(), Some("Hello"));
    assert_eq!(header("From").as_deref(), Some("jobd@localhost"));
    assert!(header("Message-ID")
        .unwrap()
        .starts_with(&format!("<{token}@")));
    assert_eq!(parsed.subparts.len(), 2, "text and html alternatives");
    assert_eq!(parsed.subparts[0].get_body().unwrap().trim(), "plain");
    daemon.stop();
}
