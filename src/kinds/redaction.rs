//! What display hides of a payload, URL or error: credential headers and
//! query parameters, and passwords in URLs (`http.redact_*`). Built from the
//! `[http]` section; the stored payload is never changed.

/// What stands in for a credential wherever a payload, URL or error is shown.
pub const REDACTED: &str = "[redacted]";

/// What display hides: the values of credential headers
/// (`http.redact_headers`, any case), credential query parameters
/// (`http.redact_query`) and the password in a URL's user info. Built from
/// the `[http]` section and handed to whatever shows jobs (CLI, dashboard);
/// the stored payload is never changed.
#[derive(Clone, Debug)]
pub struct Redaction {
    headers: Vec<String>,
    query: Vec<String>,
}

impl Default for Redaction {
    fn default() -> Redaction {
        Redaction::new(&crate::config::HttpConfig::default())
    }
}

impl Redaction {
    /// The redaction `[http]` configures.
    pub fn new(config: &crate::config::HttpConfig) -> Redaction {
        let lower = |list: &[String]| list.iter().map(|h| h.trim().to_ascii_lowercase()).collect();
        Redaction {
            headers: lower(&config.redact_headers),
            query: lower(&config.redact_query),
        }
    }

    /// Whether the header `name` carries a credential.
    pub fn header(&self, name: &str) -> bool {
        let name = name.trim().to_ascii_lowercase();
        self.headers.contains(&name)
    }

    fn query_key(&self, key: &str) -> bool {
        let key = percent_encoding::percent_decode_str(key)
            .decode_utf8_lossy()
            .to_ascii_lowercase();
        self.query.contains(&key)
    }

    /// One URL as it may be shown: the password of its user info (or the
    /// whole user info when it is a single token) and the values of
    /// credential query parameters replaced by [`REDACTED`]. Works on the
    /// text, so a URL no parser accepts is redacted too.
    pub fn url(&self, raw: &str) -> String {
        let Some(scheme_end) = raw.find("://") else {
            return raw.to_string();
        };
        let (head, rest) = raw.split_at(scheme_end + 3);
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let mut out = head.to_string();
        match authority.rfind('@') {
            Some(at) => {
                let (userinfo, host) = (&authority[..at], &authority[at + 1..]);
                match userinfo.split_once(':') {
                    Some((user, _)) => out.push_str(&format!("{user}:{REDACTED}@{host}")),
                    None => out.push_str(&format!("{REDACTED}@{host}")),
                }
            }
            None => out.push_str(authority),
        }
        let (path, query_and_fragment) = match tail.split_once('?') {
            Some((path, rest)) => (path, Some(rest)),
            None => (tail, None),
        };
        out.push_str(path);
        if let Some(rest) = query_and_fragment {
            let (query, fragment) = match rest.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (rest, None),
            };
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if self.query_key(key) => format!("{key}={REDACTED}"),
                    _ => pair.to_string(),
                })
                .collect();
            out.push('?');
            out.push_str(&pairs.join("&"));
            if let Some(fragment) = fragment {
                out.push('#');
                out.push_str(fragment);
            }
        }
        out
    }

    /// Free text (an error, a log value) with every `http://` or `https://`
    /// URL in it passed through [`Redaction::url`].
    pub fn text(&self, text: &str) -> String {
        let lower = text.to_ascii_lowercase();
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        while let Some(found) = ["http://", "https://"]
            .iter()
            .filter_map(|s| lower[at..].find(s))
            .min()
        {
            let start = at + found;
            let end = text[start..]
                .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`'))
                .map_or(text.len(), |n| start + n);
            out.push_str(&text[at..start]);
            out.push_str(&self.url(&text[start..end]));
            at = end;
        }
        out.push_str(&text[at..]);
        out
    }

    /// A payload as anything that shows jobs may print it: for `http` and
    /// `email` jobs the values of credential headers, and for `http` the
    /// URL's password and credential query parameters, replaced by
    /// [`REDACTED`]. Text that is not a JSON object is returned as it is.
    pub fn payload(&self, kind: &str, payload: &str) -> String {
        if kind != "http" && kind != "email" {
            return payload.to_string();
        }
        let Ok(mut value) = serde_json::from_str::<serde_json::Value>(payload) else {
            return payload.to_string();
        };
        let mut changed = false;
        if let Some(headers) = value.get_mut("headers").and_then(|h| h.as_object_mut()) {
            for (name, v) in headers.iter_mut() {
                if self.header(name) {
                    *v = serde_json::Value::String(REDACTED.into());
                    changed = true;
                }
            }
        }
        if kind == "http" {
            if let Some(url) = value.get_mut("url") {
                if let Some(text) = url.as_str() {
                    let shown = self.url(text);
                    if shown != text {
                        *url = serde_json::Value::String(shown);
                        changed = true;
                    }
                }
            }
        }
        if changed {
            value.to_string()
        } else {
            payload.to_string()
        }
    }
}

/// [`Redaction::payload`] with the default lists, for callers that have no
/// config at hand.
pub fn redacted_payload(kind: &str, payload: &str) -> String {
    Redaction::default().payload(kind, payload)
}
