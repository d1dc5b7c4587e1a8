//! The backoff before a retry (docs/reference.md), as a pure function so tests pin it
//! without a clock or a random source.
//!
//! `delay = min(backoff_max, backoff_base * 2^(attempt-1))`, then spread by
//! ±[`JITTER`] so that a thousand jobs failing together against one server do
//! not all come back in the same millisecond, and clamped to `backoff_max`.

use std::time::Duration;

use crate::config::RetryConfig;

/// The spread around the exponential delay: ±20 %. Wide enough to break up
/// a thundering herd after an outage, narrow enough that an operator reading
/// `next_run_in=4s` can trust it to a second.
pub const JITTER: f64 = 0.2;

/// The delay before retrying after `attempt` (1 for the first) failed.
/// `unit` is a number in `[0, 1)` (random in the daemon, fixed in tests); 0.5
/// gives the exact exponential delay.
pub fn backoff(config: &RetryConfig, attempt: i64, unit: f64) -> Duration {
    let exponent = attempt.saturating_sub(1).clamp(0, 62) as i32;
    let base = config.backoff_base.as_secs_f64();
    let max = config.backoff_max.as_secs_f64();
    let delay = (base * 2f64.powi(exponent)).min(max);
    let spread = 1.0 + JITTER * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
    Duration::from_secs_f64((delay * spread).clamp(0.0, max))
}

/// [`backoff`] with a random spread, as the daemon uses it.
pub fn backoff_jittered(config: &RetryConfig, attempt: i64) -> Duration {
    backoff(config, attempt, fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(base_ms: u64, max_ms: u64) -> RetryConfig {
        RetryConfig {
            max_attempts: 20,
            backoff_base: Duration::from_millis(base_ms),
            backoff_max: Duration::from_millis(max_ms),
            max_snoozes: 100,
        }
    }

    #[test]
    fn delay_doubles_per_attempt_and_stops_at_the_maximum() {
        let c = config(1_000, 3_600_000);
        let ms = |attempt| backoff(&c, attempt, 0.5).as_millis();
        assert_eq!(ms(1), 1_000);
        assert_eq!(ms(2), 2_000);
        assert_eq!(ms(3), 4_000);
        assert_eq!(ms(12), 2_048_000);
        assert_eq!(ms(13), 3_600_000);
        assert_eq!(ms(1_000), 3_600_000);
    }

    #[test]
    fn jitter_spreads_twenty_percent_either_way_but_never_past_the_maximum() {
        let c = config(1_000, 10_000);
        assert_eq!(backoff(&c, 1, 0.0).as_millis(), 800);
        assert_eq!(backoff(&c, 1, 0.999_999).as_millis(), 1_199);
        assert_eq!(backoff(&c, 10, 0.999_999).as_millis(), 10_000);
        for _ in 0..1_000 {
            let d = backoff_jittered(&c, 2).as_millis();
            assert!((1_600..=2_400).contains(&d), "{d}");
        }
    }

    #[test]
    fn nonsense_attempt_numbers_do_not_overflow() {
        let c = config(1_000, 60_000);
        assert_eq!(backoff(&c, 0, 0.5).as_millis(), 1_000);
        assert_eq!(backoff(&c, -5, 0.5).as_millis(), 1_000);
        assert_eq!(backoff(&c, i64::MAX, 0.5).as_millis(), 60_000);
    }
}
