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

/// `url` with any password replaced, for messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:(redacted)@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}
