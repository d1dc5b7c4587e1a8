//! When the loop turns: the next due time, the change counter confirming a
//! wake-up from the store's watcher, the poll period, and the wait itself.

use crate::job::{now_ms, Pool};
use crate::os::signals::Request;
use crossbeam_channel::select;
use std::time::{Duration, Instant};

use crate::daemon::dispatcher::*;

impl Dispatcher {
    pub(super) fn refresh_next_due(&mut self, queues: &[String], pools: &[Pool]) {
        match self.store.next_run_at(Some(queues), pools, now_ms()) {
            Ok(next) => self.next_due = next,
            Err(e) => {
                crate::store::log_trouble(
                    "read next run_at",
                    &e,
                    "falling back to the poll interval",
                );
                self.next_due = None;
            }
        }
    }

    /// Reads the change counter; true (and work to look for) when another
    /// connection committed.
    pub(super) fn changed(&mut self) -> bool {
        match self.store.change_counter() {
            Ok(v) if v != self.data_version => {
                self.data_version = v;
                self.look_again();
                self.check_cancels = true;
                true
            }
            Ok(_) => false,
            Err(e) => {
                crate::store::log_trouble(
                    "read data_version",
                    &e,
                    "looking again at the next poll",
                );
                false
            }
        }
    }

    /// The period of the fallback poll.
    pub(super) fn poll_period(&self) -> Duration {
        let interval = self.config.daemon.poll_interval;
        if self.watched {
            interval.max(WATCHED_POLL)
        } else {
            interval
        }
    }

    /// A commit file changed: confirm the commit, which becomes visible a
    /// little after the write that woke us.
    pub(super) fn on_wake(&mut self) {
        if self.store.wakes_are_commits() {
            // A round trip less between an insert and its claim.
            self.look_again();
            self.check_cancels = true;
            return;
        }
        // Whatever the write was, look again soon and then less and less
        // often, even if a commit shows now: the commit that shows may be
        // an earlier writer's, and the one that woke us (its writer still
        // in its fsync), or one taken for the echo of this daemon's own,
        // would otherwise wait a whole poll interval (with polling at a
        // minute, bursts of inserts waited for the heartbeat's write, 5 s,
        // to be seen).
        let first = self.config.daemon.poll_interval.min(WAKE_RECHECK);
        self.recheck = Some((Instant::now() + first, first));
        if self.changed() {
            return;
        }
        if self.last_write.elapsed() < ECHO_WINDOW {
            return;
        }
        let until = Instant::now() + CONFIRM_WINDOW;
        while Instant::now() < until {
            if !self.done.is_empty() || !self.requests.is_empty() {
                return;
            }
            std::thread::sleep(CONFIRM_STEP);
            if self.changed() {
                return;
            }
        }
    }

    /// Sleeps until the next thing to do.
    pub(super) fn wait(&mut self) {
        let now = Instant::now();
        // Pinged from this loop, so a loop that stops turning stops the
        // pings and systemd restarts the service.
        let next_ping = self.state.notifier.watchdog(now);
        if (self.maybe_ready && self.can_claim(now)) || self.flush_due(now) {
            return;
        }
        if now >= self.next_poll {
            self.next_poll = now + self.poll_period();
            if self.changed() {
                return;
            }
        }
        if let Some((at, gap)) = self.recheck {
            if now >= at {
                let gap = gap * 2;
                self.recheck =
                    (gap <= WATCHED_POLL.min(self.poll_period())).then(|| (now + gap, gap));
                if self.changed() {
                    return;
                }
            }
        }
        let mut until = self.next_poll.min(self.next_renew);
        if let Some((at, _)) = self.recheck {
            until = until.min(at);
        }
        if self.draining.is_none() && self.free_slots().total() > 0 {
            if let Some(due) = self.next_due {
                let ms = (due - now_ms()).max(0) as u64;
                until = until.min(now + Duration::from_millis(ms));
            }
            if let Some(token) = self.next_token {
                until = until.min(token);
            }
        }
        if self.draining.is_none() {
            if let Some(due) = self.cron.next_due() {
                let ms = (due - now_ms()).max(0) as u64;
                until = until.min(now + Duration::from_millis(ms));
            }
        }
        if let Some(end) = self.completer.next_unblock() {
            let ms = (end - now_ms()).max(0) as u64;
            until = until.min(now + Duration::from_millis(ms));
        }
        for entry in self.in_flight.values().filter(|e| !e.reported) {
            until = until.min(overrun_at(entry, now));
            // Reports are written every PROGRESS_EVERY while they come,
            // not only when something else wakes the loop.
            if entry.control.reports_progress() {
                until = until.min(self.next_progress.max(now));
            }
        }
        // A claim's back-off matters until it ends; once past, a claim that
        // could go would have made this turn return above, and one that
        // cannot (every slot holds an outcome the store refuses) must not
        // wake the loop at once, forever.
        let claim_retry = self.claim_retry_at.filter(|&t| t > now);
        for t in [
            self.completer.deadline(),
            claim_retry,
            self.draining,
            next_ping,
        ]
        .into_iter()
        .flatten()
        {
            until = until.min(t);
        }
        let timeout = until.saturating_duration_since(now);
        crate::logging::flush();
        select! {
            recv(self.done) -> finished => {
                if let Ok(finished) = finished {
                    self.on_finished(finished);
                }
            }
            recv(self.requests) -> request => match request {
                Ok(request) => self.on_request(request),
                // Nobody can ask any more: treat as a stop request.
                Err(_) => {
                    self.requests = crossbeam_channel::never();
                    self.on_request(Request::Stop);
                }
            },
            recv(self.wake) -> woke => match woke {
                Ok(()) => self.on_wake(),
                Err(_) => {
                    // The watcher stopped: polling alone from now on.
                    self.wake = crossbeam_channel::never();
                    self.watched = false;
                    crate::event!(
                        Warn,
                        "pickup.fallback",
                        detail = "the commit watcher stopped; new work is noticed by polling"
                    );
                }
            },
            default(timeout) => {}
        }
    }
}
