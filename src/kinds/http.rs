//! `http` (SPEC §2): one HTTP request per attempt through ureq, with the
//! outbound guard, the deadline enforced inside the client, and every
//! failure classified where it happens.
//!
//! The guard sits in ureq's resolver hook, so it judges the addresses a name
//! actually resolves to — on every connection, redirects included — rather
//! than the text of the URL: DNS rebinding, numeric host forms
//! (`http://2130706433/`, which the URL parser turns into `127.0.0.1`) and
//! IPv4-mapped IPv6 addresses all end up as an address it checks.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;
use serde::Deserialize;

use super::{parse_payload, Context, JobError, Kind};
use crate::config::HttpConfig;
use crate::job::now_ms;

/// How many redirects a request follows when `follow_redirects` is true.
pub const MAX_REDIRECTS: u32 = 5;

/// The longest a connection attempt may take even with time left, so that
/// one dead address does not eat the whole deadline when a name has several.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The hosts and networks requests may reach.
#[derive(Clone, Debug)]
pub struct Guard {
    allow_hosts: Vec<String>,
    deny_networks: Vec<IpNet>,
}

/// A request the guard refused, carried through ureq's error as the source
/// of its DNS error so that it can be told apart from a failed lookup.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

impl Guard {
    /// The guard the `[http]` section describes.
    pub fn new(config: &HttpConfig) -> Guard {
        Guard {
            allow_hosts: config
                .allow_hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
            deny_networks: config.deny_networks.clone(),
        }
    }

    /// Whether `host` (a name or an address literal) may be called at all.
    pub fn host_allowed(&self, host: &str) -> bool {
        if self.allow_hosts.is_empty() {
            return true;
        }
        let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
        self.allow_hosts
            .iter()
            .any(|allowed| match allowed.strip_prefix("*.") {
                Some(suffix) => host.ends_with(&format!(".{suffix}")),
                None => *allowed == host,
            })
    }

    /// The denied network `ip` falls in. An IPv6 address that carries an
    /// IPv4 address ([`embedded_ipv4`]) is judged by the IPv4 rules too, so
    /// that `[::a9fe:a9fe]` or `[64:ff9b::a9fe:a9fe]` is refused like
    /// `169.254.169.254`.
    pub fn denied(&self, ip: IpAddr) -> Option<&IpNet> {
        let embedded = match ip {
            IpAddr::V6(v6) => embedded_ipv4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.deny_networks
            .iter()
            .find(|net| net.contains(&ip) || embedded.is_some_and(|v4| net.contains(&v4)))
    }

    /// Resolves `netloc` (`host:port`) and keeps it only if the host is
    /// allowed and no address is denied.
    pub fn resolve(&self, netloc: &str) -> std::io::Result<Vec<SocketAddr>> {
        let host = netloc.rsplit_once(':').map_or(netloc, |(h, _)| h);
        if !self.host_allowed(host) {
            return Err(refuse(format!("host {host} is not in http.allow_hosts")));
        }
        let addrs = lookup(netloc, LOOKUP_DEADLINE.with(std::cell::Cell::get))?;
        for addr in &addrs {
            if let Some(net) = self.denied(addr.ip()) {
                return Err(refuse(format!(
                    "host {host} resolves to {}, inside http.deny_networks entry {net}",
                    addr.ip()
                )));
            }
        }
        Ok(addrs)
    }
}

/// The IPv4 address an IPv6 address carries, by the forms that route to
/// it: IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`, the
/// unspecified and loopback addresses aside), NAT64 (`64:ff9b::/96` and the
/// local-use `64:ff9b:1::/48`) and 6to4 (`2002:aabb:ccdd::/48`).
pub fn embedded_ipv4(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    let s = v6.segments();
    let tail =
        std::net::Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(mapped) = v6.to_ipv4_mapped() {
        return Some(mapped);
    }
    if s[..6] == [0; 6] && u32::from(tail) > 1 {
        return Some(tail);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || s[..3] == [0x64, 0xff9b, 1] {
        return Some(tail);
    }
    if s[0] == 0x2002 {
        return Some(std::net::Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

thread_local! {
    /// The deadline of the attempt running on this thread, for the
    /// resolver: ureq's own timeout does not cover the DNS lookup.
    static LOOKUP_DEADLINE: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// Resolves `netloc`, giving up at `deadline`. An address literal needs no
/// lookup; a name is looked up on a helper thread (`getaddrinfo` cannot be
/// cancelled), so the job's thread is free at its deadline even when DNS
/// hangs; the helper ends when the lookup does.
fn lookup(netloc: &str, deadline: Option<Instant>) -> std::io::Result<Vec<SocketAddr>> {
    lookup_with(netloc, deadline, |name| {
        name.to_socket_addrs().map(|a| a.collect::<Vec<_>>())
    })
}

/// [`lookup`] with the resolving function given, so tests can make it slow.
fn lookup_with(
    netloc: &str,
    deadline: Option<Instant>,
    resolve: impl FnOnce(&str) -> std::io::Result<Vec<SocketAddr>> + Send + 'static,
) -> std::io::Result<Vec<SocketAddr>> {
    let host = netloc.rsplit_once(':').map_or(netloc, |(h, _)| h);
    if host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() {
        return Ok(netloc.to_socket_addrs()?.collect());
    }
    let Some(deadline) = deadline else {
        return resolve(netloc);
    };
    let (tx, rx) = crossbeam_channel::bounded(1);
    let name = netloc.to_string();
    std::thread::Builder::new()
        .name("jobd-dns".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let _ = tx.send(resolve(&name));
        })?;
    match rx.recv_deadline(deadline) {
        Ok(answer) => answer,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("looking up {host} took past the job's deadline"),
        )),
    }
}

fn refuse(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::PermissionDenied, Refused(message))
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
enum Method {
    #[default]
    Get,
    Post,
    Put,
    Patch,
    Delete,
    Head,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Head => "HEAD",
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    url: String,
    #[serde(default)]
    method: Method,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    json: Option<serde_json::Value>,
    #[serde(default)]
    expect: Option<Vec<u16>>,
    #[serde(default = "yes")]
    follow_redirects: bool,
}

/// The `http` kind: two agents (with and without redirects) sharing the
/// guard and their connection pools across jobs.
pub struct Http {
    follow: ureq::Agent,
    no_follow: ureq::Agent,
    max_response_bytes: u64,
}

impl Http {
    /// The kind as `[http]` configures it, keeping up to `idle` idle
    /// connections for reuse, also to a single host (one per pool thread:
    /// every thread may be calling the same webhook receiver).
    pub fn new(config: &HttpConfig, idle: usize) -> Http {
        let guard = Arc::new(Guard::new(config));
        let agent = |redirects: u32| {
            let guard = Arc::clone(&guard);
            ureq::AgentBuilder::new()
                .resolver(move |netloc: &str| guard.resolve(netloc))
                .redirects(redirects)
                .user_agent(&config.user_agent)
                .timeout_connect(CONNECT_TIMEOUT)
                .max_idle_connections(idle)
                .max_idle_connections_per_host(idle)
                .build()
        };
        Http {
            follow: agent(MAX_REDIRECTS),
            no_follow: agent(0),
            max_response_bytes: config.max_response_bytes,
        }
    }
}

impl Kind for Http {
    fn name(&self) -> &'static str {
        "http"
    }

    fn run(&self, ctx: &Context<'_>, payload: &str) -> Result<Option<String>, JobError> {
        let args: Payload = parse_payload(payload)?;
        if args.body.is_some() && args.json.is_some() {
            return Err(JobError::permanent(
                "payload: give either body or json, not both",
            ));
        }
        let url = url_checked(&args.url)?;
        for (name, value) in &args.headers {
            if name.is_empty() || name.contains(['\r', '\n', ':']) || value.contains(['\r', '\n']) {
                return Err(JobError::permanent(format!(
                    "payload field headers: header {name:?} has an empty name, a colon, CR or LF"
                )));
            }
        }
        let agent = if args.follow_redirects {
            &self.follow
        } else {
            &self.no_follow
        };
        let mut request = agent
            .request(args.method.as_str(), url.as_str())
            .timeout(ctx.remaining().max(Duration::from_millis(1)))
            .set("Idempotency-Key", &format!("jobd-{}", ctx.id));
        for (name, value) in &args.headers {
            request = request.set(name, value);
        }
        let started = Instant::now();
        LOOKUP_DEADLINE.with(|d| d.set(Some(ctx.deadline)));
        let answer = match (&args.body, &args.json) {
            (Some(body), _) => request.send_string(body),
            (None, Some(json)) => {
                let explicit = args
                    .headers
                    .keys()
                    .any(|k| k.eq_ignore_ascii_case("content-type"));
                if !explicit {
                    request = request.set("Content-Type", "application/json");
                }
                request.send_string(&json.to_string())
            }
            (None, None) => request.call(),
        };
        LOOKUP_DEADLINE.with(|d| d.set(None));
        let response = match answer {
            Ok(response) => response,
            Err(ureq::Error::Status(_, response)) => response,
            Err(ureq::Error::Transport(transport)) => {
                return Err(transport_error(ctx, &url, transport))
            }
        };
        let status = response.status();
        let ok = match &args.expect {
            Some(codes) => codes.contains(&status),
            None => (200..300).contains(&status),
        };
        let retry_after = response.header("Retry-After").and_then(parse_retry_after);
        let result = self.result(response, started, args.method)?;
        if ok {
            return Ok(Some(result.to_string()));
        }
        let message = format!("{} {url} answered {status}", args.method.as_str());
        if matches!(status, 408 | 425 | 429) || status >= 500 {
            let retry_at = matches!(status, 429 | 503).then_some(retry_after).flatten();
            Err(JobError::Transient { message, retry_at })
        } else {
            Err(JobError::permanent(format!(
                "{message}, outside the expected statuses"
            )))
        }
    }
}

impl Http {
    /// The result object of SPEC §2, the body cut at `max_response_bytes`.
    fn result(
        &self,
        response: ureq::Response,
        started: Instant,
        method: Method,
    ) -> Result<serde_json::Value, JobError> {
        let status = response.status();
        let headers: serde_json::Map<String, serde_json::Value> = response
            .headers_names()
            .into_iter()
            .filter_map(|name| {
                let value = response.header(&name)?.to_string();
                Some((name, serde_json::Value::String(value)))
            })
            .collect();
        let mut body = Vec::new();
        if method != Method::Head {
            response
                .into_reader()
                .take(self.max_response_bytes + 1)
                .read_to_end(&mut body)
                .map_err(|e| {
                    if e.kind() == std::io::ErrorKind::TimedOut {
                        JobError::TimedOut
                    } else {
                        JobError::transient(format!("reading the response body failed: {e}"))
                    }
                })?;
        }
        let truncated = body.len() as u64 > self.max_response_bytes;
        body.truncate(self.max_response_bytes as usize);
        Ok(serde_json::json!({
            "status": status,
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
            "truncated": truncated,
            "elapsed_ms": started.elapsed().as_millis() as u64,
        }))
    }
}

/// Parses the URL; only http and https with a host are accepted.
fn url_checked(raw: &str) -> Result<String, JobError> {
    let bad = |why: &str| JobError::permanent(format!("payload field url: {raw:?} {why}"));
    let (scheme, rest) = raw
        .split_once("://")
        .ok_or_else(|| bad("is not an absolute URL"))?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(bad("must use http or https"));
    }
    if rest.is_empty() || rest.starts_with('/') {
        return Err(bad("has no host"));
    }
    if raw.contains(char::is_whitespace) {
        return Err(bad("contains whitespace"));
    }
    Ok(raw.to_string())
}

/// A connection-level failure: the guard's refusal and malformed requests
/// are permanent, everything else (DNS, refused, reset, TLS, timeouts)
/// transient.
fn transport_error(ctx: &Context<'_>, url: &str, transport: ureq::Transport) -> JobError {
    let refused = find_source::<Refused>(&transport).map(|r| r.0.clone());
    if let Some(reason) = refused {
        return JobError::permanent(format!("refused to call {url}: {reason}"));
    }
    if Instant::now() >= ctx.deadline || is_timeout(&transport) {
        return JobError::TimedOut;
    }
    let message = format!("{url}: {transport}");
    match transport.kind() {
        ureq::ErrorKind::InvalidUrl
        | ureq::ErrorKind::UnknownScheme
        | ureq::ErrorKind::TooManyRedirects
        | ureq::ErrorKind::BadHeader
        | ureq::ErrorKind::InsecureRequestHttpsOnly => JobError::permanent(message),
        _ => JobError::transient(message),
    }
}

fn is_timeout(transport: &ureq::Transport) -> bool {
    find_source::<std::io::Error>(transport).is_some_and(|e| {
        matches!(
            e.kind(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
        )
    })
}

/// The first error of type `T` in `error`'s source chain, looking inside
/// `io::Error`s too.
fn find_source<'a, T: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(found) = io.get_ref().and_then(|inner| inner.downcast_ref::<T>()) {
                return Some(found);
            }
        }
        next = e.source();
    }
    None
}

/// `Retry-After` as epoch ms: delay-seconds or an HTTP date.
fn parse_retry_after(value: &str) -> Option<i64> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(now_ms() + (seconds.min(86_400 * 7) * 1000) as i64);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let ms = at.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_millis();
    i64::try_from(ms).ok()
}

/// Checks a payload without running the job: the fields and their types
/// (for `[cron.*]` entries at start-up).
pub(crate) fn check(payload: &str) -> Result<(), JobError> {
    parse_payload::<Payload>(payload).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(allow: &[&str], deny: &[&str]) -> Guard {
        Guard {
            allow_hosts: allow.iter().map(|s| s.to_string()).collect(),
            deny_networks: deny.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn denied_networks_catch_mapped_ipv6_and_resolved_names() {
        let g = guard(&[], &["169.254.0.0/16", "127.0.0.0/8", "fe80::/10"]);
        assert!(g.denied("169.254.169.254".parse().unwrap()).is_some());
        assert!(g
            .denied("::ffff:169.254.169.254".parse().unwrap())
            .is_some());
        assert!(g.denied("fe80::1".parse().unwrap()).is_some());
        assert!(g.denied("10.0.0.1".parse().unwrap()).is_none());
        let err = g.resolve("localhost:80").unwrap_err();
        let text = find_source::<Refused>(&err).unwrap().0.clone();
        assert!(text.contains("resolves to 127.0.0.1"), "{text}");
        assert!(text.contains("127.0.0.0/8"), "{text}");
    }

    #[test]
    fn allow_hosts_match_names_and_wildcard_suffixes_only() {
        let g = guard(&["api.example.com", "*.hooks.test"], &[]);
        assert!(g.host_allowed("API.example.com"));
        assert!(g.host_allowed("a.hooks.test"));
        assert!(!g.host_allowed("hooks.test"));
        assert!(!g.host_allowed("evil.com"));
        assert!(!g.host_allowed("api.example.com.evil.com"));
        assert!(g.resolve("evil.com:80").is_err());
    }

    #[test]
    fn lookups_give_up_at_the_deadline_and_literals_need_none() {
        let past = Some(Instant::now() - Duration::from_millis(1));
        assert_eq!(
            lookup("127.0.0.1:80", past).unwrap(),
            vec!["127.0.0.1:80".parse().unwrap()]
        );
        assert!(lookup("[::1]:80", past).is_ok());
        let hanging = |_: &str| {
            std::thread::sleep(Duration::from_secs(5));
            Ok(Vec::new())
        };
        let soon = Some(Instant::now() + Duration::from_millis(50));
        let err = lookup_with("slow.example:80", soon, hanging).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        let far = Some(Instant::now() + Duration::from_secs(30));
        assert!(!lookup("localhost:80", far).unwrap().is_empty());
    }

    #[test]
    fn embedded_ipv4_forms_and_metadata_addresses_are_denied_by_default() {
        let g = Guard::new(&HttpConfig::default());
        for denied in [
            "169.254.169.254",
            "::a9fe:a9fe",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "::",
            "::0.0.0.2",
            "fd00:ec2::254",
            "100.100.100.200",
            "192.0.0.192",
            "168.63.129.16",
            "fe80::1",
            "0.0.0.0",
        ] {
            let ip: IpAddr = denied.parse().unwrap();
            assert!(g.denied(ip).is_some(), "{denied} should be denied");
        }
        // Loopback and private ranges stay reachable by default.
        for allowed in ["127.0.0.1", "::1", "10.0.0.1", "192.168.1.1", "2001:db8::1"] {
            let ip: IpAddr = allowed.parse().unwrap();
            assert_eq!(g.denied(ip), None, "{allowed}");
        }
        assert_eq!(
            embedded_ipv4("2002:7f00:1::".parse().unwrap()),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(embedded_ipv4("::1".parse().unwrap()), None);
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = now_ms();
        let at = parse_retry_after("3").unwrap();
        assert!((now + 3_000..now + 4_000).contains(&at));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777_000)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn malformed_urls_are_permanent_and_named() {
        for bad in ["ftp://x/", "x", "http:///path", "http://a b/"] {
            match url_checked(bad) {
                Err(JobError::Permanent { message }) => {
                    assert!(message.starts_with("payload field url:"), "{message}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(url_checked("https://example.com/x?y=1").is_ok());
    }
}
