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

/// At most `count` starts in any window of `per`: a sliding window over
/// the key's last `count` start times (kept in its `limit_keys` row). It
/// bursts up to `count` at once and never exceeds `count` in any period,
/// however late the claims come; a token bucket would let a late claim
/// spend the tokens that piled up meanwhile and put more than `count`
/// starts into one period, which is what a remote service's limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRate {
    /// Starts per period (and the burst).
    pub count: u32,
    /// The period.
    pub per: Duration,
}

/// The largest `count` a rate may have: the window keeps that many start
/// times per key.
pub const MAX_RATE_COUNT: u32 = 10_000;

impl KeyRate {
    fn per_ms(&self) -> i64 {
        self.per.as_millis() as i64
    }

    /// A start at `now` (epoch ms) against the key's recent `starts`
    /// (ascending): true, with `now` recorded, if fewer than `count` starts
    /// fall in the period before it; starts older than a period are
    /// dropped either way.
    pub fn admit(&self, starts: &mut Vec<i64>, now: i64) -> bool {
        // A clock stepped back is judged at the latest start recorded, so
        // the window never shrinks.
        let now = now.max(starts.last().copied().unwrap_or(now));
        let since = now - self.per_ms();
        let old = starts.partition_point(|&s| s <= since);
        starts.drain(..old);
        if starts.len() >= self.count as usize {
            return false;
        }
        starts.push(now);
        true
    }

    /// When the next start fits, given the key's recent `starts`
    /// (ascending, as [`KeyRate::admit`] leaves them): at once while fewer
    /// than `count` are recorded, else a period after the `count`-th last.
    pub fn next_start_at(&self, starts: &[i64]) -> i64 {
        let n = self.count as usize;
        if starts.len() < n {
            return 0;
        }
        starts[starts.len() - n] + self.per_ms()
    }
}

/// The limit in force on one key (see [`KeyRules::limit_of`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    handlers: Vec::new(),
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
    /// The persistent exec handlers with `instances`: their jobs without a
    /// key of their own are keyed `handler:<name>` (and [`Self::limits`]
    /// holds the limit of each, see [`handler_limit`]).
    pub handlers: Vec<String>,
}

/// The limit `[exec.handlers.NAME] instances = N` puts on the key
/// `handler:NAME`: N jobs running at once, across every daemon.
pub fn handler_limit(name: &str, instances: u32) -> KeyLimit {
    let mut pattern = String::from("handler:");
    for ch in name.chars() {
        // The name is matched literally: a glob's own characters escaped.
        if matches!(ch, '*' | '?' | '[' | ']' | '{' | '}' | '\\') {
            pattern.push('\\');
        }
        pattern.push(ch);
    }
    KeyLimit::new(
        &format!("exec.handlers.{name}.instances"),
        &pattern,
        Some(instances),
        None,
    )
    .expect("an escaped literal is a glob")
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
    /// job's URL (`source`, from its payload), `smtp:<relay>` of an email
    /// job when email goes over SMTP, `handler:<name>` of an exec job
    /// whose handler (`source`) has `instances`; None for other kinds and
    /// unparsable URLs (the kind refuses those itself).
    pub fn derived_key(&self, kind: &str, source: Option<&str>) -> Option<String> {
        match kind {
            "http" => host_key(source?),
            "email" => self.smtp_relay.as_ref().map(|host| format!("smtp:{host}")),
            "exec" => source
                .filter(|name| self.handlers.iter().any(|h| h == name))
                .map(|name| format!("handler:{name}")),
            _ => None,
        }
    }
}

/// What is going on with one key, as the store reads it for `jobd keys`,
/// the dashboard and the metrics (`Reads::keys`): a key with running jobs,
/// or one no job may start under now (blocked, or held by its rate).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyActivity {
    /// The key.
    pub key: String,
    /// Its jobs running now, on every daemon.
    pub running: u64,
    /// Its jobs ready to start now, counted up to [`READY_COUNTED`] (0
    /// when the caller did not ask).
    pub ready: u64,
    /// Its recent starts (epoch ms, ascending), which its rate counts.
    pub starts: Vec<i64>,
    /// A service's block: until when, and the HTTP status that asked.
    pub blocked: Option<(i64, i64)>,
    /// No job of the key starts before this (its block or its rate).
    pub closed_until: i64,
}

/// Ready jobs of a key are counted up to this many (a key with a million
/// queued must not cost a million index entries per look).
pub const READY_COUNTED: u64 = 1_000;

/// Why a key's jobs do or do not start now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyHold {
    /// A service asked to be left alone until `until` (status `status`).
    Blocked {
        /// Epoch ms.
        until: i64,
        /// The HTTP status of the answer.
        status: i64,
    },
    /// Its rate lets the next job start at `until`.
    Rate {
        /// Epoch ms.
        until: i64,
    },
    /// As many jobs run as its concurrency allows.
    Full,
    /// Jobs start as they come.
    Open,
}

impl KeyHold {
    /// One word for tables and metrics: blocked, rate, full or open.
    pub fn word(&self) -> &'static str {
        match self {
            KeyHold::Blocked { .. } => "blocked",
            KeyHold::Rate { .. } => "rate",
            KeyHold::Full => "full",
            KeyHold::Open => "open",
        }
    }
}

/// A key's activity read against the limits in force.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyStatus {
    /// The names of the sections that fit the key (none: not limited).
    pub limits: Vec<String>,
    /// The limit in force, if any section fits.
    pub limit: Option<Limit>,
    /// Starts within the last period of its rate (0 without a rate).
    pub recent_starts: usize,
    /// Why its jobs do or do not start now.
    pub hold: KeyHold,
}

impl KeyRules {
    /// What `activity` means under these limits at `now` (epoch ms).
    pub fn status(&self, activity: &KeyActivity, now: i64) -> KeyStatus {
        let limit = self.limit_of(&activity.key);
        let rate = limit.and_then(|l| l.rate);
        let recent_starts = rate.map_or(0, |r| {
            activity
                .starts
                .iter()
                .filter(|&&s| s > now - r.per_ms())
                .count()
        });
        let hold = match activity.blocked {
            Some((until, status)) if until > now => KeyHold::Blocked { until, status },
            _ if activity.closed_until > now => KeyHold::Rate {
                until: activity.closed_until,
            },
            _ if limit
                .and_then(|l| l.concurrency)
                .is_some_and(|c| activity.running >= u64::from(c)) =>
            {
                KeyHold::Full
            }
            _ => KeyHold::Open,
        };
        KeyStatus {
            limits: self
                .limits_of(&activity.key)
                .map(|l| l.name.clone())
                .collect(),
            limit,
            recent_starts,
            hold,
        }
    }
}

/// The columns of [`KeyRules::row`], as `jobd keys` and the dashboard
/// head them.
pub const KEY_COLUMNS: [&str; 6] = ["KEY", "LIMITS", "RUNNING", "READY", "RATE", "STATE"];

impl KeyRules {
    /// One key as a row of text under [`KEY_COLUMNS`]: running against
    /// its concurrency (`2/4`), ready jobs (`1000+` past the count), starts
    /// in its rate's last period (`7/10 per 1.0s`), and why jobs do or do
    /// not start (`blocked until … (429)`, `rate: next start at …`,
    /// `full`, `open`).
    pub fn row(&self, activity: &KeyActivity, now: i64) -> Vec<String> {
        let status = self.status(activity, now);
        let limit = status.limit.unwrap_or(Limit {
            concurrency: None,
            rate: None,
        });
        let running = match limit.concurrency {
            Some(c) => format!("{}/{c}", activity.running),
            None => activity.running.to_string(),
        };
        let ready = if activity.ready >= READY_COUNTED {
            format!("{READY_COUNTED}+")
        } else {
            activity.ready.to_string()
        };
        let rate = limit.rate.map_or("-".to_string(), |r| {
            format!(
                "{}/{} per {}",
                status.recent_starts,
                r.count,
                crate::fmt::millis(r.per_ms())
            )
        });
        let state = match status.hold {
            KeyHold::Blocked { until, status } => {
                format!("blocked until {} ({status})", crate::fmt::time(until))
            }
            KeyHold::Rate { until } => format!("rate: next start at {}", crate::fmt::time(until)),
            hold => hold.word().to_string(),
        };
        let limits = if status.limits.is_empty() {
            "-".to_string()
        } else {
            status.limits.join(",")
        };
        vec![activity.key.clone(), limits, running, ready, rate, state]
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

/// Keys starting with this are jobd's own (a fleet-wide queue limit keeps
/// its rate under `jobd:queue:NAME`): `jobd enqueue` refuses them.
pub const RESERVED_PREFIX: &str = "jobd:";

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
            ..KeyRules::default()
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
    fn a_rate_bursts_its_count_and_never_holds_more_in_any_period() {
        let rate = KeyRate {
            count: 10,
            per: Duration::from_secs(1),
        };
        let now = 1_000_000;
        let mut starts = Vec::new();
        for _ in 0..10 {
            assert!(rate.admit(&mut starts, now), "the burst");
        }
        assert!(!rate.admit(&mut starts, now + 999), "the burst is spent");
        let next = rate.next_start_at(&starts);
        assert_eq!(next, now + 1_000);
        assert!(!rate.admit(&mut starts, next - 1));
        assert!(rate.admit(&mut starts, next));
        // Claims on an irregular grid, some late: no one-second window
        // ever holds more than ten starts, and the long run keeps ten a
        // second.
        let mut all = starts.clone();
        let mut t = next;
        while t < next + 10_000 {
            t += 7 + (t % 13) * 11;
            if rate.admit(&mut starts, t) {
                all.push(t);
            }
        }
        for (i, &s) in all.iter().enumerate() {
            let within = all[i..].iter().take_while(|&&x| x < s + 1_000).count();
            assert!(within <= 10, "{within} starts in the second from {s}");
        }
        assert!(all.len() <= 111, "{} starts in 11 s", all.len());
        assert!(all.len() >= 100, "the rate is used: {}", all.len());
        assert!(starts.len() <= 10, "only a period's starts are kept");
    }
}
