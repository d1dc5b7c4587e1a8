//! `http` (docs/reference.md): one HTTP request per attempt through ureq, with the
//! outbound guard, the deadline enforced inside the client, and every
//! failure classified where it happens.
//!
//! The guard sits in ureq's resolver hook, so it judges the addresses a name
//! actually resolves to — on every connection, redirects included — rather
//! than the text of the URL: DNS rebinding, numeric host forms
//! (`http://2130706433/`, which the URL parser turns into `127.0.0.1`) and
//! IPv4-mapped IPv6 addresses all end up as an address it checks.
//!
//! Redirects are followed here, not inside ureq: each `Location` must be an
//! http or https URL with a host before it is called (ureq 2 panicked on
//! `file:`), and the guard judges every hop. A cancel stops a request in
//! flight: every TCP connection is wrapped in a transport that waits for
//! input in slices of `CANCEL_SLICE` and looks at the job's cancel flag
//! between them (ureq 3's `unversioned::transport` API, hence the exact
//! version pin). Connecting is not sliced; it is bounded by
//! `CONNECT_TIMEOUT`.

mod guard;
mod transport;

use guard::*;
use transport::*;

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;

use ureq3::unversioned::transport::{Connector, RustlsConnector, TcpConnector};

use crate::config::HttpConfig;
use crate::job::now_ms;
use crate::kinds::kind::{parse_payload, Context, JobError, Kind};
use crate::kinds::redaction::Redaction;

/// How many redirects a request follows when `follow_redirects` is true.
pub const MAX_REDIRECTS: u32 = 5;

/// The longest a connection attempt may take even with time left, so that
/// one dead address does not eat the whole deadline when a name has several.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// The method named by [`Method::as_str`]'s text (GET for any other).
    fn parse(name: &str) -> Method {
        [
            Method::Post,
            Method::Put,
            Method::Patch,
            Method::Delete,
            Method::Head,
        ]
        .into_iter()
        .find(|m| m.as_str() == name)
        .unwrap_or(Method::Get)
    }

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
    /// The statuses (outside `expect`) retried; default [`retried`]'s.
    #[serde(default)]
    retry_on: Option<Vec<u16>>,
    #[serde(default = "yes")]
    follow_redirects: bool,
    /// Adds the job's parents' outcomes to its JSON body, as `parents`
    /// (docs/reference.md, "Flows").
    #[serde(default)]
    with_parents: bool,
}

/// 5xx answers that say the request itself is not supported: never retried
/// by default, and said so in the error.
const NOT_SUPPORTED: [u16; 2] = [501, 505];

/// Whether an unexpected status is retried by default: 408, 425, 429 and
/// the 5xx answers that can change, but not 501 (Not Implemented) or 505
/// (HTTP Version Not Supported), which say the request itself is not
/// supported (a `python3 -m http.server` answers POST with 501, which was
/// retried for eight hours).
fn retried(status: u16) -> bool {
    matches!(status, 408 | 425 | 429) || (status >= 500 && !NOT_SUPPORTED.contains(&status))
}

/// The statuses whose `Location` a request follows.
const REDIRECT_STATUSES: [u16; 5] = [301, 302, 303, 307, 308];

/// The `http` kind: one agent with the guard in its resolver, cancellable
/// connections and a pool shared across jobs. Redirects are followed here,
/// not in ureq, so that each `Location` is checked before it is called.
pub struct Http {
    client: Client,
    max_response_bytes: u64,
    /// `http.block_on`.
    block_on: Vec<u16>,
    redaction: Redaction,
    /// The database's id, for the `Idempotency-Key` ([`crate::kinds::job_token`]).
    database_id: std::sync::OnceLock<String>,
}

/// The agent, lending out requests to build.
struct Client {
    agent: ureq3::Agent,
}

/// A request being built, kept whole so that a redirect can send it again.
struct Outgoing {
    method: Method,
    /// Parsed and normalized by [`url_checked`] or [`Outgoing::redirected`].
    url: String,
    timeout: Duration,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
}

impl Client {
    fn request(&self, method: &str, url: &str) -> Outgoing {
        Outgoing {
            method: Method::parse(method),
            url: url.to_string(),
            timeout: Duration::ZERO,
            headers: Vec::new(),
            body: None,
        }
    }

    /// Sends `request` once, following nothing.
    fn send(&self, request: &Outgoing) -> Result<ureq3::http::Response<ureq3::Body>, ureq3::Error> {
        let mut builder = ureq3::http::Request::builder()
            .method(request.method.as_str())
            .uri(request.url.as_str());
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        match &request.body {
            Some(body) => {
                let http = builder.body(body.as_slice())?;
                let http = self
                    .agent
                    .configure_request(http)
                    .timeout_global(Some(request.timeout))
                    .build();
                self.agent.run(http)
            }
            None => {
                let http = builder.body(())?;
                let http = self
                    .agent
                    .configure_request(http)
                    .timeout_global(Some(request.timeout))
                    .build();
                self.agent.run(http)
            }
        }
    }
}

impl Outgoing {
    fn timeout(mut self, timeout: Duration) -> Outgoing {
        self.timeout = timeout;
        self
    }

    /// Sets a header, replacing one of the same name (any case).
    fn set(mut self, name: &str, value: &str) -> Outgoing {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    fn has(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    fn remove(&mut self, name: &str) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    /// The request a redirect with `status` to `location` asks for, as
    /// browsers and ureq do it: 303 (and 301/302 after a POST) becomes a GET
    /// without body, 307/308 keep method and body; `Authorization` is not
    /// carried along. Only http and https targets are followed.
    fn redirected(
        mut self,
        status: u16,
        location: &str,
        redaction: &Redaction,
    ) -> Result<Outgoing, JobError> {
        let from = redaction.url(&self.url);
        let base = url::Url::parse(&self.url)
            .map_err(|e| JobError::permanent(format!("{from} cannot take a redirect: {e}")))?;
        let mut next = base.join(location).map_err(|e| {
            JobError::permanent(format!(
                "{from} redirected to {:?}, which is not a valid URL: {e}",
                redaction.url(location)
            ))
        })?;
        if !matches!(next.scheme(), "http" | "https") || next.host_str().is_none_or(str::is_empty) {
            return Err(JobError::permanent(format!(
                "refused to follow the redirect from {from} to {}: only http and https URLs with a host are followed",
                redaction.url(next.as_str())
            )));
        }
        // Credentials in a Location are not taken up.
        let _ = next.set_username("");
        let _ = next.set_password(None);
        let to_get = status == 303 || (matches!(status, 301 | 302) && self.method == Method::Post);
        if to_get && self.method != Method::Head {
            self.method = Method::Get;
            self.body = None;
            self.remove("content-type");
            self.remove("content-length");
        }
        self.remove("authorization");
        self.url = next.to_string();
        Ok(self)
    }
}

impl Http {
    /// The kind as `[http]` configures it, keeping up to `idle` idle
    /// connections for reuse, also to a single host (one per pool thread:
    /// every thread may be calling the same webhook receiver).
    pub fn new(config: &HttpConfig, idle: usize) -> Http {
        let guard = Arc::new(Guard::new(config));
        let agent_config = ureq3::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            // Requests go straight out: the guard judges the real target.
            .proxy(None)
            .user_agent(config.user_agent.as_str())
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .max_idle_connections(idle)
            .max_idle_connections_per_host(idle)
            .build();
        let connector =
            ().chain(TcpConnector::default())
                .chain(CancelConnector)
                .chain(RustlsConnector::default());
        Http {
            client: Client {
                agent: ureq3::Agent::with_parts(agent_config, connector, GuardedResolver(guard)),
            },
            max_response_bytes: config.max_response_bytes,
            block_on: config.block_on.clone(),
            redaction: Redaction::new(config),
            database_id: std::sync::OnceLock::new(),
        }
    }
}

impl Kind for Http {
    fn name(&self) -> &'static str {
        "http"
    }

    fn identify(&self, database_id: &str) {
        let _ = self.database_id.set(database_id.to_string());
    }

    fn run(&self, ctx: &Context<'_>, payload: &str) -> Result<Option<String>, JobError> {
        let args: Payload = parse_payload(payload)?;
        if args.body.is_some() && args.json.is_some() {
            return Err(JobError::permanent(
                "payload: give either body or json, not both",
            ));
        }
        let (url, credentials) = url_checked(&args.url, &self.redaction)?;
        for (name, value) in &args.headers {
            if name.is_empty() || name.contains(['\r', '\n', ':']) || value.contains(['\r', '\n']) {
                return Err(JobError::permanent(format!(
                    "payload field headers: header {name:?} has an empty name, a colon, CR or LF"
                )));
            }
        }
        let agent = &self.client;
        let mut request = agent
            .request(args.method.as_str(), url.as_str())
            .timeout(ctx.remaining().max(Duration::from_millis(1)))
            .set(
                "Idempotency-Key",
                &crate::kinds::kind::job_token(self.database_id.get().map(String::as_str), ctx.id),
            );
        for (name, value) in &args.headers {
            request = request.set(name, value);
        }
        // `http://user:password@host/`: sent as Basic credentials, as a
        // browser would, unless the payload sets Authorization itself.
        if let Some(basic) = credentials {
            if !request.has("authorization") {
                request = request.set("Authorization", &basic);
            }
        }
        let json = match args.with_parents {
            true => Some(with_parents(
                args.json.clone(),
                args.body.is_some(),
                ctx.inputs,
            )?),
            false => args.json.clone(),
        };
        match (&args.body, &json) {
            (Some(body), _) => request.body = Some(body.clone().into_bytes()),
            (None, Some(json)) => {
                if !request.has("content-type") {
                    request = request.set("Content-Type", "application/json");
                }
                request.body = Some(json.to_string().into_bytes());
            }
            (None, None) => {}
        }
        CANCEL.set(ctx.cancel, || self.exchange(ctx, &args, request))
    }
}

/// The JSON body of a job with `with_parents`: its `json` object (or an
/// empty one) with what its flow hands it: its parents' outcomes under
/// `parents`, or a callback's batch counters under `batch`.
fn with_parents(
    json: Option<serde_json::Value>,
    has_body: bool,
    inputs: Option<&str>,
) -> Result<serde_json::Value, JobError> {
    let refuse = |why: &str| JobError::permanent(format!("payload field with_parents: {why}"));
    if has_body {
        return Err(refuse(
            "the parents go into a JSON body; give json, not body",
        ));
    }
    let mut object = match json {
        None => serde_json::Map::new(),
        Some(serde_json::Value::Object(object)) => object,
        Some(_) => return Err(refuse("json must be an object to take a parents field")),
    };
    // A child's `parents`, a callback's `batch`; outside a flow, no parents.
    let inputs = match inputs.and_then(|text| serde_json::from_str(text).ok()) {
        Some(serde_json::Value::Object(inputs)) => inputs,
        _ => serde_json::Map::from_iter([("parents".into(), serde_json::Value::Array(Vec::new()))]),
    };
    for (field, value) in inputs {
        if object.contains_key(&field) {
            return Err(refuse(&format!("json already has a {field} field")));
        }
        object.insert(field, value);
    }
    Ok(serde_json::Value::Object(object))
}

impl Http {
    /// Sends `request`, follows its redirects and reads the answer: the part
    /// of an attempt that waits on the network, run with the cancel flag
    /// where the transport sees it.
    fn exchange(
        &self,
        ctx: &Context<'_>,
        args: &Payload,
        mut request: Outgoing,
    ) -> Result<Option<String>, JobError> {
        let started = Instant::now();
        let mut hops = 0;
        let response = loop {
            let response = self
                .client
                .send(&request)
                .map_err(|e| self.failure(ctx, &request.url, e))?;
            let status = response.status().as_u16();
            let location = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            match location {
                Some(location) if args.follow_redirects && REDIRECT_STATUSES.contains(&status) => {
                    if hops == MAX_REDIRECTS {
                        return Err(JobError::permanent(format!(
                            "{} {} redirected more than {MAX_REDIRECTS} times",
                            args.method.as_str(),
                            self.redaction.url(args.url.as_str())
                        )));
                    }
                    hops += 1;
                    request = request.redirected(status, &location, &self.redaction)?;
                    // The guard and the deadline hold for the next hop too.
                    request.timeout = ctx.remaining().max(Duration::from_millis(1));
                }
                _ => break response,
            }
        };
        let url = self.redaction.url(request.url.as_str());
        let status = response.status().as_u16();
        let ok = match &args.expect {
            Some(codes) => codes.contains(&status),
            None => (200..300).contains(&status),
        };
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let result = self.result(ctx, response, started, request.method)?;
        if ok {
            return Ok(Some(result.to_string()));
        }
        let message = format!("{} {url} answered {status}", args.method.as_str());
        let retry = match &args.retry_on {
            Some(codes) => codes.contains(&status),
            None => retried(status),
        };
        // A status the job retries and the config lists as "slow down"
        // blocks the job's key on every daemon.
        if retry && self.block_on.contains(&status) {
            return Err(JobError::Blocked {
                message,
                status,
                retry_at: retry_after,
            });
        }
        if retry {
            let retry_at = matches!(status, 429 | 503).then_some(retry_after).flatten();
            Err(JobError::Transient { message, retry_at })
        } else if args.retry_on.is_none() && NOT_SUPPORTED.contains(&status) {
            Err(JobError::permanent(format!(
                "{message}, outside the expected statuses; {status} says the server does not support the request, so it is not retried (list it in retry_on to retry it)"
            )))
        } else {
            Err(JobError::permanent(format!(
                "{message}, outside the expected statuses"
            )))
        }
    }

    /// The result object of docs/reference.md, the body cut at `max_response_bytes`.
    fn result(
        &self,
        ctx: &Context<'_>,
        mut response: ureq3::http::Response<ureq3::Body>,
        started: Instant,
        method: Method,
    ) -> Result<serde_json::Value, JobError> {
        let status = response.status().as_u16();
        let headers: serde_json::Map<String, serde_json::Value> = response
            .headers()
            .keys()
            .filter_map(|name| {
                let value = response.headers().get(name)?.to_str().ok()?.to_string();
                Some((name.as_str().to_string(), serde_json::Value::String(value)))
            })
            .collect();
        let mut body = Vec::new();
        if method != Method::Head {
            response
                .body_mut()
                .as_reader()
                .take(self.max_response_bytes + 1)
                .read_to_end(&mut body)
                .map_err(|e| {
                    if ctx.cancel.load(std::sync::atomic::Ordering::Relaxed) {
                        JobError::Cancelled
                    } else if e.kind() == std::io::ErrorKind::TimedOut
                        || Instant::now() >= ctx.deadline
                    {
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

    /// A failure before an answer: a cancel, the guard's refusal and
    /// malformed requests are what they are, a timeout is the deadline's,
    /// everything else (DNS, refused, reset, TLS) transient.
    fn failure(&self, ctx: &Context<'_>, url: &str, error: ureq3::Error) -> JobError {
        if ctx.cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return JobError::Cancelled;
        }
        let url = self.redaction.url(url);
        let refused = match &error {
            ureq3::Error::Io(e) => e.get_ref().and_then(|i| i.downcast_ref::<Refused>()),
            _ => None,
        };
        if let Some(reason) = refused {
            return JobError::permanent(format!("refused to call {url}: {}", reason.0));
        }
        let timed_out = match &error {
            ureq3::Error::Timeout(_) => true,
            ureq3::Error::Io(e) => matches!(
                e.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ),
            _ => false,
        };
        if timed_out || Instant::now() >= ctx.deadline {
            return JobError::TimedOut;
        }
        let message = format!("{url}: {error}");
        match error {
            ureq3::Error::BadUri(_)
            | ureq3::Error::Http(_)
            | ureq3::Error::TooManyRedirects
            | ureq3::Error::RedirectFailed
            | ureq3::Error::RequireHttpsOnly(_) => JobError::permanent(message),
            _ => JobError::transient(message),
        }
    }
}

/// Parses the URL; only http and https with a host are accepted. Returns
/// the URL without user info, and that user info as a Basic
/// `Authorization` value.
fn url_checked(raw: &str, redaction: &Redaction) -> Result<(String, Option<String>), JobError> {
    let shown = redaction.url(raw);
    let bad = |why: &str| JobError::permanent(format!("payload field url: {shown:?} {why}"));
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
    let mut url = url::Url::parse(raw).map_err(|e| bad(&format!("is not a valid URL: {e}")))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    let credentials = (!url.username().is_empty() || url.password().is_some()).then(|| {
        use base64::Engine as _;
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let pair = format!(
            "{}:{}",
            decode(url.username()),
            decode(url.password().unwrap_or(""))
        );
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    });
    let _ = url.set_username("");
    let _ = url.set_password(None);
    Ok((url.to_string(), credentials))
}

/// The first error of type `T` in `error`'s source chain, looking inside
/// `io::Error`s too.
/// The first error of type `T` in `error`'s source chain, looking inside
/// `io::Error`s too.
#[cfg(test)]
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
    use std::net::IpAddr;

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
        let err = g.resolve("localhost:80", None).unwrap_err();
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
        assert!(g.resolve("evil.com:80", None).is_err());
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
    fn urls_the_parser_accepts_are_valid_request_targets() {
        for raw in [
            "http://h/a|b?x={1}&y=[2]^`c",
            "http://h/\u{e4}?q=\u{fc}#frag",
            "http://h/%zz?%",
            "http://user:p%40ss@h:8080/",
            "http://[::1]:8080/x",
            "https://xn--bcher-kva.example/",
            "http://b\u{fc}cher.example/",
        ] {
            let (url, _) = url_checked(raw, &Redaction::default()).unwrap();
            assert!(
                ureq3::http::Uri::try_from(url.as_str()).is_ok(),
                "{raw} -> {url}"
            );
        }
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
            match url_checked(bad, &Redaction::default()) {
                Err(JobError::Permanent { message }) => {
                    assert!(message.starts_with("payload field url:"), "{message}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(url_checked("https://example.com/x?y=1", &Redaction::default()).is_ok());
        // User info leaves the URL and becomes Basic credentials.
        let (url, basic) =
            url_checked("http://admin:S3%40cret@h/x", &Redaction::default()).unwrap();
        assert_eq!(url, "http://h/x");
        use base64::Engine as _;
        let expected = base64::engine::general_purpose::STANDARD.encode("admin:S3@cret");
        assert_eq!(basic, Some(format!("Basic {expected}")));
        // A bad URL's message does not quote its password.
        let Err(JobError::Permanent { message }) =
            url_checked("http://admin:S3cret@[bad/", &Redaction::default())
        else {
            panic!("a bad URL is permanent")
        };
        assert!(!message.contains("S3cret"), "{message}");
    }
}
