//! The outbound guard: which addresses an `http` job may reach
//! (`http.allow_hosts`, `http.deny_networks`, the metadata and embedded
//! IPv4 forms), judged on what a name resolves to, in ureq's resolver hook.

use crate::config::HttpConfig;
use crate::kinds::http::transport::{cancel_error, cancelled, CANCEL_SLICE};
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Instant;
use ureq3::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq3::unversioned::transport::NextTimeout;

/// The hosts and networks requests may reach.
#[derive(Clone, Debug)]
pub struct Guard {
    pub(super) allow_hosts: Vec<String>,
    pub(super) deny_networks: Vec<IpNet>,
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
    pub fn resolve(
        &self,
        netloc: &str,
        deadline: Option<Instant>,
    ) -> std::io::Result<Vec<SocketAddr>> {
        let host = netloc.rsplit_once(':').map_or(netloc, |(h, _)| h);
        if !self.host_allowed(host) {
            return Err(refuse(format!("host {host} is not in http.allow_hosts")));
        }
        let addrs = lookup(netloc, deadline)?;
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

/// Resolves `netloc`, giving up at `deadline`. An address literal needs no
/// lookup; a name is looked up on a helper thread (`getaddrinfo` cannot be
/// cancelled), so the job's thread is free at its deadline, or at a cancel,
/// even when DNS hangs; the helper ends when the lookup does.
pub(super) fn lookup(netloc: &str, deadline: Option<Instant>) -> std::io::Result<Vec<SocketAddr>> {
    lookup_with(netloc, deadline, |name| {
        name.to_socket_addrs().map(|a| a.collect::<Vec<_>>())
    })
}

/// [`lookup`] with the resolving function given, so tests can make it slow.
pub(super) fn lookup_with(
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
    loop {
        if cancelled() {
            return Err(cancel_error());
        }
        let slice = deadline
            .saturating_duration_since(Instant::now())
            .min(CANCEL_SLICE);
        match rx.recv_timeout(slice) {
            Ok(answer) => return answer,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("looking up {host} took past the job's deadline"),
                ))
            }
        }
    }
}

pub(super) fn refuse(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::PermissionDenied, Refused(message))
}

/// The most addresses of one name tried (ureq's resolver holds 16).
pub(super) const MAX_ADDRESSES: usize = 16;

/// The resolver ureq calls for every connection, redirects included: the
/// guard's judgement, within the request's deadline.
#[derive(Debug)]
pub(super) struct GuardedResolver(pub(super) Arc<Guard>);

impl Resolver for GuardedResolver {
    fn resolve(
        &self,
        uri: &ureq3::http::Uri,
        _config: &ureq3::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq3::Error> {
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| ureq3::Error::BadUri(format!("{uri} has no host")))?;
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            });
        let netloc = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let deadline = match timeout.after {
            ureq3::unversioned::transport::time::Duration::Exact(after) => {
                Some(Instant::now() + after)
            }
            ureq3::unversioned::transport::time::Duration::NotHappening => None,
        };
        let addrs = self.0.resolve(&netloc, deadline).map_err(|e| {
            if e.kind() == std::io::ErrorKind::TimedOut {
                ureq3::Error::Timeout(timeout.reason)
            } else {
                ureq3::Error::Io(e)
            }
        })?;
        let mut resolved = self.empty();
        for addr in addrs.into_iter().take(MAX_ADDRESSES) {
            resolved.push(addr);
        }
        if resolved.is_empty() {
            return Err(ureq3::Error::HostNotFound);
        }
        Ok(resolved)
    }
}
