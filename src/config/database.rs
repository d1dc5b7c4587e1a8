//! What `database.url` means beyond its text: the TLS a PostgreSQL URL asks
//! for (`sslmode`, `sslrootcert`) and the URL as it may be shown, its
//! password redacted. The store connects with these; config validates with
//! them.

/// How a connection is secured, from the URL's libpq-style `sslmode` and
/// `sslrootcert`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tls {
    /// Plain TCP or a Unix socket: `sslmode` absent, `disable`, `allow` or
    /// `prefer` (jobd does not try TLS unless told to require it).
    Off,
    /// TLS, the server's certificate verified (chain and host name) against
    /// `sslrootcert` or else the system's CA certificates: `sslmode`
    /// `require`, `verify-ca` or `verify-full`. Stricter than libpq, whose
    /// `require` encrypts without verifying.
    Verify {
        /// The CA file (PEM) that `sslrootcert` names.
        roots: Option<std::path::PathBuf>,
    },
}

/// Splits jobd's TLS settings off `url`: the URL the client library
/// parses (it knows neither `sslrootcert` nor the `verify-*` modes) and the
/// [`Tls`] to connect with. Err says what is wrong, for the config check.
pub fn tls_settings(url: &str) -> std::result::Result<(String, Tls), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), Tls::Off));
    };
    let (mut mode, mut roots) = (None, None);
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", value)) => mode = Some(value.to_string()),
            Some(("sslrootcert", value)) => roots = Some(std::path::PathBuf::from(value)),
            _ => kept.push(pair),
        }
    }
    let tls = match mode.as_deref() {
        None | Some("disable" | "allow" | "prefer") => {
            if roots.is_some() {
                return Err("sslrootcert needs sslmode=require or verify-full".into());
            }
            Tls::Off
        }
        Some("require" | "verify-ca" | "verify-full") => Tls::Verify { roots },
        Some(other) => {
            return Err(format!(
                "sslmode must be disable, allow, prefer, require, verify-ca or verify-full, not {other:?}"
            ))
        }
    };
    kept.push(match tls {
        Tls::Off => "sslmode=disable",
        Tls::Verify { .. } => "sslmode=require",
    });
    Ok((format!("{base}?{}", kept.join("&")), tls))
}

/// `url` with any password replaced, for messages: the URL's own
/// (`user:password@`), a `password` parameter of its query, or a
/// `password=` of a `key=value` connection string. (A password given as a
/// query parameter was printed whole by `check-config`, `migrate`, the
/// `daemon.started` line and every connection error.)
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return redact_key_values(url);
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let authority_end = before_query.find('/').unwrap_or(before_query.len());
    let (authority, path) = before_query.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:(redacted)@{host}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let mut shown = format!("{scheme}://{authority}{path}");
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if is_password_key(key) => format!("{key}=(redacted)"),
                _ => pair.to_string(),
            })
            .collect();
        shown.push('?');
        shown.push_str(&pairs.join("&"));
    }
    shown
}

/// Whether a connection parameter may hold a password: `password`,
/// `sslpassword`, in any case, or a percent-encoded name (which may spell
/// either; hiding another parameter's value costs nothing).
fn is_password_key(key: &str) -> bool {
    let key = key.trim().to_ascii_lowercase();
    key == "password" || key == "sslpassword" || key.contains("%")
}

/// A libpq `key=value` connection string with its password values
/// replaced (a value may be single-quoted, with `\'` inside).
fn redact_key_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let start = rest.len() - rest.trim_start().len();
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        if rest.is_empty() {
            break;
        }
        // One `key=value` (or a stray word) up to the next unquoted space.
        let mut end = rest.len();
        let mut quoted = false;
        let mut escaped = false;
        let mut seen_eq = false;
        for (i, c) in rest.char_indices() {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '\'' && seen_eq {
                quoted = !quoted;
            } else if c == '=' {
                seen_eq = true;
            } else if c.is_whitespace() && !quoted {
                end = i;
                break;
            }
        }
        let token = &rest[..end];
        match token.split_once('=') {
            Some((key, _)) if is_password_key(key) => {
                out.push_str(key);
                out.push_str("=(redacted)");
            }
            _ => out.push_str(token),
        }
        rest = &rest[end..];
    }
    out
}
