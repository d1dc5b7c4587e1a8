//! Who may act on the dashboard: logged-in sessions with their CSRF
//! tokens, the bearer token, and a comparison of secrets that does not leak
//! where they differ.

/// Logged-in dashboard sessions, kept in memory by the listener thread.
///
/// Writes need `metrics.dashboard_token`: given as `Authorization: Bearer
/// <token>` (scripts; no cookie, so no CSRF risk), or typed into the login
/// form, which sets an `HttpOnly`, `SameSite=Strict` session cookie. Every
/// form of a session carries that session's CSRF token, and a POST without
/// the matching one is refused.
#[derive(Debug, Default)]
pub struct Sessions {
    /// session id → (CSRF token, expiry epoch ms).
    live: std::collections::HashMap<String, (String, i64)>,
}

/// How long a login lasts.
pub const SESSION_MS: i64 = 12 * 3_600_000;

/// The session cookie's name.
pub const COOKIE: &str = "jobd_session";

/// Who is asking, as far as writes go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No token is configured: the dashboard is read-only for everyone.
    ReadOnly,
    /// A token is configured and this request did not give it.
    Anonymous,
    /// The bearer token was given with the request.
    Bearer,
    /// A logged-in browser session, with its CSRF token.
    Session(String),
}

impl Sessions {
    /// Starts a session; returns (session id, CSRF token).
    pub fn open(&mut self, now: i64) -> std::io::Result<(String, String)> {
        self.live.retain(|_, (_, until)| *until > now);
        let id = random_hex()?;
        let csrf = random_hex()?;
        self.live
            .insert(id.clone(), (csrf.clone(), now + SESSION_MS));
        Ok((id, csrf))
    }

    /// Ends a session.
    pub fn close(&mut self, id: &str) {
        self.live.remove(id);
    }

    /// Who sent a request with these headers.
    pub fn caller(
        &self,
        token: Option<&str>,
        authorization: Option<&str>,
        cookie: Option<&str>,
        now: i64,
    ) -> Caller {
        let Some(token) = token else {
            return Caller::ReadOnly;
        };
        if authorization
            .and_then(|a| a.strip_prefix("Bearer "))
            .is_some_and(|given| same(given.trim(), token))
        {
            return Caller::Bearer;
        }
        let session = cookie.and_then(|c| {
            c.split(';').find_map(|part| {
                let (k, v) = part.trim().split_once('=')?;
                (k == COOKIE).then(|| v.to_string())
            })
        });
        match session.and_then(|s| self.live.get(&s)) {
            Some((csrf, until)) if *until > now => Caller::Session(csrf.clone()),
            _ => Caller::Anonymous,
        }
    }

    /// The session id in a cookie header, if any.
    pub fn session_of(cookie: Option<&str>) -> Option<String> {
        cookie.and_then(|c| {
            c.split(';').find_map(|part| {
                let (k, v) = part.trim().split_once('=')?;
                (k == COOKIE).then(|| v.to_string())
            })
        })
    }
}

/// Compares secrets in time that does not depend on where they differ.
pub fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 32 random bytes from the kernel, as hex.
fn random_hex() -> std::io::Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
