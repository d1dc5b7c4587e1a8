//! systemd's service notifications (docs/reference.md): `READY=1` once the database
//! is open and both pools run, `RELOADING=1` then `READY=1` around a
//! SIGHUP, `STOPPING=1` when draining starts, `WATCHDOG=1` from the
//! dispatcher loop itself (so a stuck loop gets the service restarted), and
//! a `STATUS=` line with live counts.
//!
//! Whether to notify is decided once, at the edge, from the environment
//! systemd sets (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`); the
//! sd-notify crate then sends each datagram to the socket. Without a
//! socket every call does nothing, so the daemon runs the same in a
//! terminal.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Sends systemd notifications, or nothing when not under systemd.
#[derive(Debug, Default)]
pub struct Notifier {
    enabled: bool,
    /// How often to ping the watchdog: half of `WATCHDOG_USEC`.
    watchdog: Option<Duration>,
    last_ping: Mutex<Option<Instant>>,
}

impl Notifier {
    /// A notifier that sends nothing (tests, a terminal).
    pub fn disabled() -> Notifier {
        Notifier::default()
    }

    /// From the environment the daemon was started with: notifications go
    /// out when `NOTIFY_SOCKET` is set; the watchdog is pinged when
    /// `WATCHDOG_USEC` is set and `WATCHDOG_PID`, if set, is this process.
    pub fn from_env(env: &HashMap<String, String>) -> Notifier {
        let enabled = env.get("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty());
        let for_us = env
            .get("WATCHDOG_PID")
            .is_none_or(|pid| pid.trim() == std::process::id().to_string());
        let watchdog = env
            .get("WATCHDOG_USEC")
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|&usec| usec > 0 && for_us && enabled)
            .map(|usec| Duration::from_micros(usec) / 2);
        Notifier {
            enabled,
            watchdog,
            last_ping: Mutex::new(None),
        }
    }

    /// True when notifications go out.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// How often the watchdog wants a ping, if it is on.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if self.enabled {
            // systemd being unreachable must not stop the daemon; it will
            // notice the silence by itself (start timeout, watchdog).
            let _ = sd_notify::notify(states);
        }
    }

    /// `READY=1` with a first status.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `RELOADING=1` (with the monotonic clock systemd wants for
    /// `Type=notify-reload`).
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    /// `STOPPING=1` with why.
    pub fn stopping(&self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    /// `STATUS=…`.
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// `WATCHDOG=1` if one is due (every half watchdog interval); returns
    /// when the next one is due, for the caller's sleep.
    pub fn watchdog(&self, now: Instant) -> Option<Instant> {
        let interval = self.watchdog?;
        let mut last = self.last_ping.lock().ok()?;
        if last.is_none_or(|t| now >= t + interval) {
            self.send(&[NotifyState::Watchdog]);
            *last = Some(now);
        }
        last.map(|t| t + interval)
    }
}

/// The `STATUS=` line: `12 running, 340 queued, lag 0.4s`.
pub fn status_line(running: u64, queued: u64, lag_ms: i64) -> String {
    format!(
        "{running} running, {queued} queued, lag {:.1}s",
        lag_ms.max(0) as f64 / 1000.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_environment_decides_notifications_and_the_watchdog() {
        assert!(!Notifier::from_env(&env(&[])).enabled());
        let n = Notifier::from_env(&env(&[
            ("NOTIFY_SOCKET", "/run/x"),
            ("WATCHDOG_USEC", "4000000"),
        ]));
        assert!(n.enabled());
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(2)));
        let other = Notifier::from_env(&env(&[
            ("NOTIFY_SOCKET", "/run/x"),
            ("WATCHDOG_USEC", "4000000"),
            ("WATCHDOG_PID", "1"),
        ]));
        assert_eq!(
            other.watchdog_interval(),
            None,
            "the watchdog is another process's"
        );
        assert_eq!(
            status_line(12, 340, 420),
            "12 running, 340 queued, lag 0.4s"
        );
    }
}
