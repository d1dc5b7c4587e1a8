//! Limit keys (docs/reference.md, "Keyed limits"): what a job's key is when
//! it names none, which `[keys.NAME]` sections limit a key, and the rate
//! arithmetic. The store applies these rules inside the claim's own
//! transaction, so every daemon sharing the database enforces one limit;
//! this module holds no SQL and knows nothing of the daemon.
//!
//! A key is free text (`customer:42`, `host:api.example.com`). A job names
//! its own in `limit_key`; an `http` job that names none is keyed by the
//! host of its URL and an `email` job sent over SMTP by its relay, so a
//! remote service is protected without anyone naming it.

use std::time::Duration;

/// One `[keys.NAME]` section, compiled: the keys its `match` glob fits run
/// at most `concurrency` jobs at once and start at most `rate` jobs per
/// period, across every daemon on the database.
#[derive(Clone, Debug)]
pub struct KeyLimit {
    /// The section's name (`keys.NAME`), used in metrics and messages.
    pub name: String,
    /// The glob as written (`customer:*`).
    pub pattern: String,
    matcher: globset::GlobMatcher,
    /// Jobs of one key running at once, fleet-wide.
    pub concurrency: Option<u32>,
    /// Jobs of one key started per period, fleet-wide.
    pub rate: Option<KeyRate>,
}

impl KeyLimit {
    /// Compiles `pattern`; the error says what is wrong with the glob.
    pub fn new(
        name: &str,
        pattern: &str,
        concurrency: Option<u32>,
        rate: Option<KeyRate>,
    ) -> Result<KeyLimit, String> {
        let glob = globset::GlobBuilder::new(pattern)
            .literal_separator(false)
            .backslash_escape(true)
            .build()
            .map_err(|e| format!("is not a glob ({e})"))?;
        Ok(KeyLimit {
            name: name.to_string(),
            pattern: pattern.to_string(),
            matcher: glob.compile_matcher(),
            concurrency,
            rate,
        })
    }

    /// Whether this section limits `key`.
    pub fn matches(&self, key: &str) -> bool {
        self.matcher.is_match(key)
    }
}

/// `count` starts per `per`, with a burst of `count`: a generic cell rate
/// algorithm (a token bucket that holds `count` tokens) kept as one number
/// per key, its theoretical arrival time (TAT), so the state fits a row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KeyRate {
    /// Starts per period (and the burst).
    pub count: u32,
    /// The period.
    pub per: Duration,
}

impl KeyRate {
    /// Milliseconds between starts at the steady rate.
    fn interval(&self) -> f64 {
        self.per.as_secs_f64() * 1000.0 / f64::from(self.count.max(1))
    }

    /// How far ahead of now the TAT may run: the burst less one start.
    fn tolerance(&self) -> f64 {
        self.interval() * f64::from(self.count.max(1) - 1)
    }

    /// A start at `now` (epoch ms) against the key's TAT (None: never
    /// started, a full bucket): the new TAT if the start fits, else None.
    pub fn admit(&self, tat: Option<f64>, now: i64) -> Option<f64> {
        let now = now as f64;
        let tat = tat.unwrap_or(now).max(now);
        (tat - self.tolerance() <= now).then(|| tat + self.interval())
    }

    /// When the next start fits after a TAT (epoch ms, rounded up).
    pub fn next_start_at(&self, tat: f64) -> i64 {
        (tat - self.tolerance()).ceil() as i64
    }
}

/// The limit in force on one key (see [`KeyRules::limit_of`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limit {
    /// Jobs of the key running at once, fleet-wide.
    pub concurrency: Option<u32>,
    /// Jobs of the key started per period, fleet-wide.
    pub rate: Option<KeyRate>,
}

/// No keyed limits: what a claim without a daemon's config uses.
pub static NO_KEYS: KeyRules = KeyRules {
    limits: Vec::new(),
    smtp_relay: None,
};

/// Every limit in force and what is needed to derive keys: built from the
/// config by the daemon, handed to the store with each claim.
#[derive(Clone, Debug, Default)]
pub struct KeyRules {
    /// The `[keys.*]` sections, by name.
    pub limits: Vec<KeyLimit>,
    /// `email.smtp.host` when email goes over SMTP: email jobs without a
    /// key of their own are keyed `smtp:<host>`.
    pub smtp_relay: Option<String>,
}

impl KeyRules {
    /// True when no section limits any key: a claim then needs keys only
    /// for the blocks services asked for.
    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    /// The sections that limit `key` (every one whose glob fits applies).
    pub fn limits_of<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a KeyLimit> + 'a {
        self.limits.iter().filter(move |l| l.matches(key))
    }

    /// What limits `key` when several sections fit it: the smallest
    /// concurrency among them, and the rate of the first (by name) that
    /// sets one; None when no section fits.
    pub fn limit_of(&self, key: &str) -> Option<Limit> {
        let mut found = None::<Limit>;
        for l in self.limits_of(key) {
            let f = found.get_or_insert(Limit {
                concurrency: None,
                rate: None,
            });
            f.concurrency = match (f.concurrency, l.concurrency) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            f.rate = f.rate.or(l.rate);
        }
        found
    }

    /// The key of a job that names none: `host:<host>[:port]` of an http
    /// job's URL (`url`, from its payload), `smtp:<relay>` of an email job
    /// when email goes over SMTP; None for other kinds and unparsable URLs
    /// (the kind refuses those itself).
    pub fn derived_key(&self, kind: &str, url: Option<&str>) -> Option<String> {
        match kind {
            "http" => host_key(url?),
            "email" => self.smtp_relay.as_ref().map(|host| format!("smtp:{host}")),
            _ => None,
        }
    }
}

/// `host:<host>` of a URL, with `:<port>` when the URL names a port other
/// than its scheme's default; hosts are lower-cased as URLs compare them.
pub fn host_key(url: &str) -> Option<String> {
    let url = url::Url::parse(url).ok()?;
    let host = url.host_str()?;
    Some(match url.port() {
        Some(port) => format!("host:{host}:{port}"),
        None => format!("host:{host}"),
    })
}

/// Longest key jobd accepts; a longer one is a job fault (it is an index
/// key, and a limit key is a name, not data).
pub const MAX_KEY_BYTES: usize = 200;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_jobs_are_keyed_by_host_and_explicit_port() {
        let rules = KeyRules::default();
        for (url, key) in [
            (
                "https://API.Example.com/v1?x=1",
                Some("host:api.example.com"),
            ),
            ("http://example.com:80/", Some("host:example.com")),
            ("http://127.0.0.1:8080/hook", Some("host:127.0.0.1:8080")),
            ("http://user:pw@[::1]:9/x", Some("host:[::1]:9")),
            ("not a url", None),
        ] {
            assert_eq!(
                rules.derived_key("http", Some(url)).as_deref(),
                key,
                "{url}"
            );
        }
        assert_eq!(rules.derived_key("noop", Some("http://a/")), None);
        assert_eq!(rules.derived_key("email", None), None, "file transport");
        let smtp = KeyRules {
            smtp_relay: Some("mail.example.com".into()),
            ..KeyRules::default()
        };
        assert_eq!(
            smtp.derived_key("email", None).as_deref(),
            Some("smtp:mail.example.com")
        );
    }

    #[test]
    fn every_section_whose_glob_fits_limits_a_key() {
        let rules = KeyRules {
            limits: vec![
                KeyLimit::new("customers", "customer:*", Some(2), None).unwrap(),
                KeyLimit::new("big", "customer:4?", Some(9), None).unwrap(),
                KeyLimit::new("hosts", "host:*.example.com", None, None).unwrap(),
            ],
            smtp_relay: None,
        };
        let names =
            |key: &str| -> Vec<String> { rules.limits_of(key).map(|l| l.name.clone()).collect() };
        assert_eq!(names("customer:42"), vec!["customers", "big"]);
        assert_eq!(names("customer:7"), vec!["customers"]);
        assert_eq!(names("host:api.example.com"), vec!["hosts"]);
        assert!(names("host:example.org").is_empty());
        assert!(KeyLimit::new("bad", "customer:[", None, None).is_err());
    }

    #[test]
    fn a_rate_allows_its_burst_then_one_start_per_interval() {
        let rate = KeyRate {
            count: 10,
            per: Duration::from_secs(1),
        };
        let now = 1_000_000;
        let mut tat = None;
        for _ in 0..10 {
            tat = Some(rate.admit(tat, now).expect("the burst"));
        }
        assert_eq!(rate.admit(tat, now), None, "the burst is spent");
        let next = rate.next_start_at(tat.unwrap());
        assert_eq!(next, now + 100);
        assert_eq!(rate.admit(tat, next - 1), None);
        let after = rate.admit(tat, next).expect("one interval later");
        assert_eq!(rate.admit(Some(after), next), None);
        // After the burst, a one-second window holds ten starts, and one
        // more only when a late start carried its token over (the claims
        // here come on a 7 ms grid); the long run keeps ten a second.
        let mut tat = Some(after);
        let mut starts = vec![next];
        let mut t = next;
        while t < next + 5_000 {
            t += 7;
            if let Some(new) = rate.admit(tat, t) {
                tat = Some(new);
                starts.push(t);
            }
        }
        for &s in &starts {
            let within = starts.iter().filter(|&&x| x >= s && x < s + 1_000).count();
            assert!(within <= 11, "{within} starts in the second from {s}");
        }
        assert!(starts.len() <= 51, "{} starts in 5 s", starts.len());
        // An idle key has its whole burst again, no more.
        let later = t + 60_000;
        for _ in 0..10 {
            tat = Some(rate.admit(tat, later).expect("a new burst"));
        }
        assert_eq!(rate.admit(tat, later), None);
    }
}
