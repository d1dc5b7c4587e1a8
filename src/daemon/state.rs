//! What the running daemon shows of itself, written by the dispatcher and
//! the pools and read by maintenance (heartbeat, `stats` line, history) and
//! by the web layer (`/metrics`, `/healthz`, the dashboard), which knows the
//! daemon only through this.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

use crate::daemon::pool::processes::WorkerPids;
use crate::os::notify::Notifier;

/// What the running daemon shows of itself: the dispatcher and the pools
/// write it, maintenance reads it for the heartbeat and the `stats` line
/// and records its history, the web pages and `/healthz` read it.
#[derive(Debug, Default)]
pub struct DaemonState {
    /// Outcome counts.
    pub counters: Counters,
    /// Jobs held by this daemon now (running or outcome not yet written).
    pub running: AtomicU64,
    /// Set once a stop was asked for: the heartbeat's systemd status then
    /// says "draining" instead of the usual line.
    pub draining: AtomicBool,
    /// When the loop last turned (epoch ms), for health checks.
    pub last_turn: AtomicU64,
    /// Since when the dispatcher's store operations (claims, outcome
    /// writes) have failed without one succeeding (epoch ms; 0 while they
    /// succeed), and the latest failure: a loop that turns but cannot
    /// write (a corrupt or locked file) is not healthy.
    pub failing_since: AtomicU64,
    /// The latest store failure, one sentence.
    pub last_failure: Mutex<String>,
    /// The CPU workers' pids, for resource figures, and the warm handler
    /// processes each keeps (`jobd handlers`).
    pub cpu_pids: Arc<WorkerPids>,
    /// systemd notifications.
    pub notifier: Notifier,
    /// IO threads configured now.
    pub io_size: AtomicU64,
    /// Jobs the IO pool holds now.
    pub io_busy: AtomicU64,
    /// CPU workers configured now.
    pub cpu_size: AtomicU64,
    /// Jobs the CPU pool holds now.
    pub cpu_busy: AtomicU64,
    /// The last hour of heartbeat samples, for the dashboard's charts
    /// (kept only while the metrics listener runs).
    pub history: Mutex<VecDeque<Sample>>,
}

/// Heartbeat samples kept for the dashboard: an hour at one per 5 s.
pub const HISTORY: usize = 720;

impl DaemonState {}

/// Outcome counts since the daemon started, for the `stats` line (which
/// reports the difference from its previous line), the dashboard's history
/// and the metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Attempts that succeeded.
    pub done: AtomicU64,
    /// Attempts that failed (retry, timeout, dead).
    pub failed: AtomicU64,
}
/// One sample of the daemon's history, taken at each heartbeat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// When (epoch ms).
    pub at: i64,
    /// Attempts every daemon finished successfully since this one started.
    pub done: u64,
    /// Attempts that failed (retry, timeout, dead) since this one started.
    pub failed: u64,
    /// Queue lag then (ms).
    pub lag_ms: i64,
}
