//! Durations and sizes as config values: `"30s"`, `"5m"`, `"10MiB"`, parsed
//! and bounded ([`MAX_DURATION`], [`MAX_SIZE`]) where serde reads them, so
//! an impossible value is refused naming its key.

use std::time::Duration;

/// The longest duration any key takes: far beyond any useful setting, and
/// short enough that epoch-millisecond arithmetic on it cannot overflow
/// (`daemon.lease = "99999999999999d"` made `lease_until` wrap around).
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// The largest size any key takes (1 PiB).
pub const MAX_SIZE: u64 = 1 << 50;

/// Durations as strings like `"250ms"`, `"30s"`, `"5m"`, `"7d"`.
pub mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Parses a duration string of at most 100 years ([`crate::config::units::MAX_DURATION`]),
    /// with a message that shows the expected form.
    pub fn parse(s: &str) -> Result<Duration, String> {
        let d = parse_unbounded(s)?;
        if d > crate::config::units::MAX_DURATION {
            return Err(format!("must be at most 100 years (got {s:?})"));
        }
        Ok(d)
    }

    /// Parses a duration string of any length (the caller bounds it).
    /// Months and years are refused: they have no fixed length (humantime
    /// reads `1M` as 30.44 days, where a reader may see a minute, and `1y`
    /// as 365.25 days).
    pub fn parse_unbounded(s: &str) -> Result<Duration, String> {
        let units = s
            .split(|c: char| c.is_ascii_digit() || c.is_whitespace() || c == '.')
            .filter(|u| !u.is_empty());
        for unit in units {
            if matches!(unit, "M" | "month" | "months" | "y" | "year" | "years") {
                return Err(format!(
                    "must be a duration in fixed units, ms to weeks: months and years vary in length (got {s:?}; write days, e.g. \"30d\" or \"365d\", and m for minutes)"
                ));
            }
        }
        humantime::parse_duration(s.trim()).map_err(|e| {
            format!("must be a duration like \"250ms\", \"30s\" or \"5m\" (got {s:?}: {e})")
        })
    }

    /// Serde: write the duration back in the same form.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    /// Serde: read a duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Text(String),
            Number(i64),
        }
        match Form::deserialize(d) {
            Ok(Form::Text(s)) => parse(&s).map_err(serde::de::Error::custom),
            Ok(Form::Number(n)) => Err(serde::de::Error::custom(format!(
                "must be a duration string like \"{n}s\" or \"{n}ms\" (got the number {n})"
            ))),
            Err(_) => Err(serde::de::Error::custom(
                "must be a duration string like \"250ms\", \"30s\" or \"5m\"",
            )),
        }
    }
}

/// Optional durations (absent: none).
pub(crate) mod opt_duration_str {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => crate::config::units::duration_str::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        crate::config::units::duration_str::deserialize(d).map(Some)
    }
}

/// Sizes as strings like `"512MiB"` or plain byte counts.
pub mod size_str {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serde: write sizes as byte counts.
    pub fn serialize<S: Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*n)
    }

    /// Serde: read `"512MiB"`, `"1MB"` or an integer.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Number(u64),
            Text(String),
        }
        let bad = |got: &str| {
            serde::de::Error::custom(format!(
                "must be a size like \"512MiB\" or a number of bytes (got {got})"
            ))
        };
        let n = match Form::deserialize(d) {
            Ok(Form::Number(n)) => n,
            Ok(Form::Text(s)) => {
                let text = s.trim();
                let unit =
                    text.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.' || c == ' ');
                // "1.5" would be rounded to 2 bytes, and "1Mb" read as a
                // megabyte where it says megabit: both are refused.
                if unit.is_empty() && text.contains('.') {
                    return Err(serde::de::Error::custom(format!(
                        "must be a whole number of bytes or a size with a unit like \"1.5MiB\" (got {s:?})"
                    )));
                }
                if unit.len() > 1 && unit.ends_with('b') {
                    return Err(serde::de::Error::custom(format!(
                        "must be a size in bytes: {s:?} reads as bits; write B, as in \"1MB\" or \"1MiB\""
                    )));
                }
                parse_size::parse_size(text).map_err(|_| bad(&format!("{s:?}")))?
            }
            Err(_) => return Err(bad("a value of another type")),
        };
        if n > crate::config::units::MAX_SIZE {
            return Err(serde::de::Error::custom(format!(
                "must be at most 1PiB (got {n} bytes)"
            )));
        }
        Ok(n)
    }
}
