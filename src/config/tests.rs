//! The config's loading, validation and warnings, from TOML and variables.

use std::collections::HashMap;
use std::time::Duration;

use super::*;

fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, toml).unwrap();
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::load_checked(
        &ConfigSource {
            secrets: true,
            path: &path,
            explicit: true,
            env: &env,
        },
        &crate::daemon::cron::check,
    )
    .map_err(|e| {
        e.to_string()
            .replace(&path.display().to_string(), "config.toml")
    })
}

#[test]
fn empty_file_gives_the_defaults() {
    let c = load("", &[]).unwrap();
    assert_eq!(c.pool.threads, 16);
    assert_eq!(c.daemon.poll_interval, Duration::from_millis(10));
    assert_eq!(c.daemon.queues, vec!["*"]);
    assert_eq!(c.http.deny_networks.len(), DEFAULT_DENY_NETWORKS.len());
}

#[test]
fn impossible_values_name_the_key() {
    assert_eq!(
        load("[pool]\nthreads = 0", &[]).unwrap_err(),
        "config.toml: pool.threads must be at least 1 (got 0)"
    );
    let e = load("[queues.mail]\nrate = \"abc\"", &[]).unwrap_err();
    assert!(
        e.starts_with("config.toml: queues.mail.rate must be a rate like"),
        "{e}"
    );
    let e = load("[daemon]\npoll_interval = \"soon\"", &[]).unwrap_err();
    assert!(
        e.starts_with("config.toml: daemon.poll_interval must be a duration"),
        "{e}"
    );
    let e = load("[daemon]\npoll_interval = 10", &[]).unwrap_err();
    assert!(e.contains("\"10s\" or \"10ms\""), "{e}");
}

/// Regression: `daemon.lease = "99999999999999d"` was accepted and
/// `lease_until` overflowed to a nonsense time. Every duration and size
/// has an upper bound, refused naming the key.
#[test]
fn values_beyond_sane_bounds_are_refused_naming_the_key() {
    for (toml, want) in [
        (
            "[daemon]\nlease = \"99999999999999d\"",
            "daemon.lease must be at most 100 years (got \"99999999999999d\")",
        ),
        (
            "[daemon]\nlease = \"2days\"",
            "daemon.lease must be at most 1day",
        ),
        (
            "[retention]\nsucceeded = \"999999999d\"",
            "retention.succeeded must be at most 100 years",
        ),
        (
            "[timeouts]\nhttp = \"18446744073709551615s\"",
            "timeouts.http must be at most 100 years",
        ),
        (
            "[limits]\nmax_payload_bytes = \"9EiB\"",
            "limits.max_payload_bytes must be at most 1PiB",
        ),
        (
            "[limits]\nmax_payload_bytes = \"2GB\"",
            "limits.max_payload_bytes must be at most 1000000000",
        ),
        (
            "[database]\nbusy_timeout = \"2h\"",
            "database.busy_timeout must be at most 1h",
        ),
        (
            "[cron.x]\nschedule = \"@every 1m\"\nkind = \"noop\"\ntimeout = \"9999999999d\"",
            "cron.x.timeout must be at most 100 years",
        ),
    ] {
        let e = load(toml, &[]).unwrap_err();
        assert!(
            e.starts_with(&format!("config.toml: {want}")),
            "{toml}: {e}"
        );
    }
    assert!(load("[daemon]\nlease = \"1day\"", &[]).is_ok());
}

/// Regression: `1M` was a month (30.44 days), `10y` 10 × 365.25 days,
/// the size `"1.5"` 2 bytes and `"1Mb"` a megabyte.
#[test]
fn units_without_a_fixed_or_clear_meaning_are_refused() {
    for (toml, want) in [
        (
            "[retention]\nsucceeded = \"1M\"",
            "retention.succeeded must be a duration in fixed units",
        ),
        (
            "[retention]\nsucceeded = \"10y\"",
            "months and years vary in length",
        ),
        ("[retention]\ndead = \"2 months\"", "write days"),
        (
            "[limits]\nmax_payload_bytes = \"1.5\"",
            "limits.max_payload_bytes must be a whole number of bytes",
        ),
        ("[limits]\nmax_payload_bytes = \"1Mb\"", "reads as bits"),
    ] {
        let e = load(toml, &[]).unwrap_err();
        assert!(e.contains(want), "{toml}: {e}");
    }
    let c = load(
        "[retention]\nsucceeded = \"30d\"\n[limits]\nmax_payload_bytes = \"1.5MiB\"",
        &[],
    )
    .unwrap();
    assert_eq!(c.retention.succeeded, Duration::from_secs(30 * 86_400));
    assert_eq!(c.limits.max_payload_bytes, 1_572_864);
    assert_eq!(
        load("[limits]\nmax_payload_bytes = \"1MB\"", &[])
            .unwrap()
            .limits
            .max_payload_bytes,
        1_000_000
    );
    assert_eq!(
        load("[daemon]\nshutdown_grace = \"1m\"", &[])
            .unwrap()
            .daemon
            .shutdown_grace,
        Duration::from_secs(60)
    );
}

#[test]
fn a_bad_log_level_lists_the_levels_and_a_password_key_points_to_env_and_file() {
    assert_eq!(
        load("[log]\nlevel = \"verbose\"", &[]).unwrap_err(),
        "config.toml: log.level must be one of error, warn, info, debug, trace (got \"verbose\")"
    );
    assert_eq!(
        load("[log]\nlevel = \"WARN\"", &[]).unwrap().log.level,
        LogLevel::Warn
    );
    let e = load("[email.smtp]\npassword = \"hunter2\"", &[]).unwrap_err();
    assert!(
        e.contains("unknown key email.smtp.password; secrets are not written in the config: set email.smtp.password_env")
            && e.contains("email.smtp.password_file"),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "{e}");
    let e = load("[metrics]\ndashboard_token = \"t\"", &[]).unwrap_err();
    assert!(e.contains("metrics.dashboard_token_env"), "{e}");
}

#[test]
fn risky_settings_are_warned_about_naming_the_key() {
    let keys = |toml: &str| -> Vec<String> {
        load(toml, &[("T", "x")])
            .unwrap()
            .warnings()
            .into_iter()
            .map(|(key, detail)| format!("{key} {detail}"))
            .collect()
    };
    assert!(keys("").is_empty());
    assert!(keys("[metrics]\nlisten = \"127.0.0.1:9464\"").is_empty());
    assert!(keys("[metrics]\nlisten = \"0.0.0.0:9464\"\ndashboard_token_env = \"T\"").is_empty());
    let w = keys("[metrics]\nlisten = \"0.0.0.0:9464\"");
    assert!(w[0].starts_with("metrics.listen is 0.0.0.0:9464, reachable from other hosts, and no dashboard token is set"), "{w:?}");
    let w = keys("[file]\nroots = [\"/srv/data\", \"/\", \"/etc/\"]");
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].starts_with("file.roots includes /, a system folder"),
        "{w:?}"
    );
    assert!(
        w[1].starts_with("file.roots includes /etc/, a system folder"),
        "{w:?}"
    );
    let w = keys("[exec]\ndir = \"/usr/bin\"");
    assert!(
        w[0].starts_with("exec.dir is /usr/bin, a system folder"),
        "{w:?}"
    );
    assert!(keys("[exec]\ndir = \"/var/lib/jobd/jobs\"").is_empty());
    // A folder that is a file, and headers shown whole (neither was said).
    let file = tempfile::NamedTempFile::new().unwrap();
    let path = file.path().display();
    let w = keys(&format!(
        "[file]\nroots = [\"{path}\"]\n[email]\ndir = \"{path}\"\n[http]\nredact_headers = []"
    ));
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(
        w[0].starts_with(&format!("file.roots names {path}, which is a file")),
        "{w:?}"
    );
    assert!(
        w[1].starts_with(&format!("email.dir names {path}, which is a file")),
        "{w:?}"
    );
    assert!(w[2].starts_with("http.redact_headers is empty"), "{w:?}");
}

#[test]
fn unknown_keys_and_types_are_named() {
    assert_eq!(
        load("[pool]\nthread = 3", &[]).unwrap_err(),
        "config.toml: unknown key pool.thread"
    );
    assert_eq!(
        load("[colour]\nx = 1", &[]).unwrap_err(),
        "config.toml: unknown key colour"
    );
    let e = load("[pool]\nthreads = \"many\"", &[]).unwrap_err();
    assert!(
        e.starts_with("config.toml: pool.threads is invalid: invalid type"),
        "{e}"
    );
}

#[test]
fn handler_sections_name_their_faults() {
    for (text, want) in [
        (
            "[exec.handlers.x]\nmode = \"warm\"",
            "config.toml: exec.handlers.x.mode is invalid: unknown variant `warm`, expected `oneshot` or `persistent`",
        ),
        (
            "[exec.handlers.x]\nmax_job = 3",
            "config.toml: unknown key exec.handlers.x.max_job",
        ),
        (
            "[exec.handlers.x]\nmax_jobs = 0",
            "config.toml: exec.handlers.x.max_jobs must be at least 1 (got 0)",
        ),
        (
            "[exec.handlers.x]\nmode = \"persistent\"\ninstances = 0",
            "config.toml: exec.handlers.x.instances must be at least 1 (got 0)",
        ),
        (
            "[exec.handlers.x]\ninstances = 2",
            "config.toml: exec.handlers.x.instances applies to a persistent handler only (mode = \"persistent\")",
        ),
    ] {
        assert_eq!(load(text, &[]).unwrap_err(), want);
    }
    let c = load("[exec.handlers.x]\nmode = \"persistent\"", &[]).unwrap();
    assert_eq!(
        c.exec.handlers["x"].mode,
        crate::config::HandlerMode::Persistent
    );
    // `instances` limits the handler's derived key, `handler:NAME`.
    let c = load(
        "[exec.handlers.resize]\nmode = \"persistent\"\ninstances = 2",
        &[],
    )
    .unwrap();
    let rules = c.key_rules();
    assert_eq!(
        rules.derived_key("exec", Some("resize")).as_deref(),
        Some("handler:resize")
    );
    assert_eq!(rules.derived_key("exec", Some("other")), None);
    let limit = rules.limit_of("handler:resize").unwrap();
    assert_eq!(limit.concurrency, Some(2));
    // A name no job can name (a glob, a path) is refused, so a handler's
    // key is always literal.
    let e = load("[exec.handlers.\"re*size\"]\nmode = \"persistent\"", &[]).unwrap_err();
    assert!(e.contains("is not a handler's name"), "{e}");
}

#[test]
fn the_file_is_typed_as_written_and_only_variables_are_read_from_text() {
    // The merge of file and environment turned "yes" and 1 into true.
    for (text, key, want) in [
        (
            "[queues.q]\nfair = \"yes\"",
            "queues.q.fair",
            "expected a boolean",
        ),
        (
            "[queues.q]\nfleet = 1",
            "queues.q.fleet",
            "expected a boolean",
        ),
        ("[pool]\nthreads = \"8\"", "pool.threads", "expected usize"),
    ] {
        let e = load(text, &[]).unwrap_err();
        assert!(
            e.starts_with(&format!("config.toml: {key} is invalid: invalid type"))
                && e.ends_with(want),
            "{text}: {e}"
        );
    }
    let c = load("", &[("JOBD_POOL__THREADS", "8")]).unwrap();
    assert_eq!(c.pool.threads, 8);
}

#[test]
fn environment_overrides_the_file_and_is_named_in_errors() {
    let c = load(
        "[pool]\nthreads = 4",
        &[
            ("JOBD_POOL__THREADS", "32"),
            ("JOBD_DAEMON__QUEUES", "mail,default"),
            ("JOBD_CONFIG", "ignored.toml"),
        ],
    )
    .unwrap();
    assert_eq!(c.pool.threads, 32);
    assert_eq!(c.daemon.queues, vec!["mail", "default"]);
    assert_eq!(
        load("", &[("JOBD_POOL__THREADS", "0")]).unwrap_err(),
        "JOBD_POOL__THREADS: pool.threads must be at least 1 (got 0)"
    );
}

/// A variable's value is read by its key's type as the file's is: a
/// fraction or a number too large for an integer key is refused, not
/// rounded (8.5 threads made 9) or wrapped; every list key takes commas
/// (`http.block_on` was refused); an error in a list names the variable;
/// and a variable that names a file's section in another case is refused
/// (it made a second section beside the file's).
#[test]
fn a_variable_is_read_by_its_keys_type_and_never_rounded_or_misplaced() {
    for (name, value) in [
        ("JOBD_POOL__THREADS", "8.5"),
        ("JOBD_RETRY__MAX_ATTEMPTS", "99999999999999999999"),
        ("JOBD_EMAIL__SMTP__PORT", "1.7"),
    ] {
        let e = load("", &[(name, value)]).unwrap_err();
        assert!(
            e.starts_with(&format!("{name}: ")) && e.contains(&format!("{value:?}")),
            "{name}={value}: {e}"
        );
    }
    let c = load(
        "",
        &[
            ("JOBD_HTTP__BLOCK_ON", "429,503"),
            ("JOBD_HTTP__ALLOW_HOSTS", ""),
        ],
    )
    .unwrap();
    assert_eq!(c.http.block_on, [429, 503]);
    assert!(c.http.allow_hosts.is_empty());
    let e = load("", &[("JOBD_HTTP__DENY_NETWORKS", "10.0.0.0/33")]).unwrap_err();
    assert!(
        e.starts_with("JOBD_HTTP__DENY_NETWORKS: http.deny_networks"),
        "{e}"
    );
    let e = load(
        "[queues.Mail]\nconcurrency = 2",
        &[("JOBD_QUEUES__MAIL__CONCURRENCY", "9")],
    )
    .unwrap_err();
    assert!(
        e.starts_with("JOBD_QUEUES__MAIL__CONCURRENCY: ")
            && e.contains("the file's section is \"Mail\""),
        "{e}"
    );
    let c = load(
        "[queues.mail]\nconcurrency = 2",
        &[("JOBD_QUEUES__MAIL__CONCURRENCY", "9")],
    )
    .unwrap();
    assert_eq!(c.queues["mail"].concurrency, Some(9));
}

#[test]
fn secrets_come_from_the_environment_and_never_print() {
    let c = load(
        "[email.smtp]\npassword_env = \"SMTP_PW\"",
        &[("SMTP_PW", "hunter2")],
    )
    .unwrap();
    assert_eq!(c.email.smtp.password.as_ref().unwrap().expose(), "hunter2");
    assert!(!c.to_toml().contains("hunter2"));
    assert!(!format!("{c:?}").contains("hunter2"));
    let e = load("[email.smtp]\npassword_env = \"NOPE\"", &[]).unwrap_err();
    assert!(
        e.contains("email.smtp.password_env") && e.contains("NOPE"),
        "{e}"
    );
}

#[test]
fn rates_parse() {
    let r: Rate = "10/s".parse().unwrap();
    assert_eq!((r.count, r.per), (10, Duration::from_secs(1)));
    assert_eq!("100/m".parse::<Rate>().unwrap().to_string(), "100/m");
    assert!("0/s".parse::<Rate>().is_err());
    assert!("10/fortnight".parse::<Rate>().is_err());
}

#[test]
fn passwords_never_reach_messages() {
    assert_eq!(
        redact_url("postgres://jobd:s3cret@db.example:5432/jobs"),
        "postgres://jobd:(redacted)@db.example:5432/jobs"
    );
    assert_eq!(
        redact_url("postgres://jobd@127.0.0.1/test"),
        "postgres://jobd@127.0.0.1/test"
    );
    // In the query, however spelled, beside other parameters.
    assert_eq!(
        redact_url("postgres://jobd@db/test?application_name=x&password=s3cret&sslmode=require"),
        "postgres://jobd@db/test?application_name=x&password=(redacted)&sslmode=require"
    );
    assert_eq!(
        redact_url("postgresql://db/test?PASSWORD=s3cret@x"),
        "postgresql://db/test?PASSWORD=(redacted)"
    );
    assert_eq!(
        redact_url("postgres://db/test?pass%77ord=s3cret"),
        "postgres://db/test?pass%77ord=(redacted)"
    );
    // A key=value connection string, quoted values too.
    assert_eq!(
        redact_url("host=db password='s3 c\\'ret' dbname=test"),
        "host=db password=(redacted) dbname=test"
    );
    assert_eq!(
        redact_url("host=db password=s3cret"),
        "host=db password=(redacted)"
    );
}

#[test]
fn tls_settings_leave_the_client_only_what_it_knows() {
    let plain = "postgres://h/db";
    assert_eq!(tls_settings(plain).unwrap(), (plain.to_string(), Tls::Off));
    assert_eq!(
        tls_settings("postgres://h/db?application_name=x&sslmode=prefer").unwrap(),
        (
            "postgres://h/db?application_name=x&sslmode=disable".to_string(),
            Tls::Off
        )
    );
    for mode in ["require", "verify-ca", "verify-full"] {
        assert_eq!(
            tls_settings(&format!(
                "postgres://h/db?sslmode={mode}&sslrootcert=/ca.pem&x=1"
            ))
            .unwrap(),
            (
                "postgres://h/db?x=1&sslmode=require".to_string(),
                Tls::Verify {
                    roots: Some("/ca.pem".into())
                }
            )
        );
    }
    assert!(tls_settings("postgres://h/db?sslmode=on").is_err());
    assert!(tls_settings("postgres://h/db?sslrootcert=/ca.pem").is_err());
}
