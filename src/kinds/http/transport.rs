//! Cancel in flight: a transport that waits for input in slices and looks
//! at the job's cancel flag between them (ureq 3's `unversioned::transport`
//! API, hence the exact version pin).

use std::time::{Duration, Instant};
use ureq3::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, NextTimeout, Transport,
};

/// How long a wait on the network lasts before the cancel flag is looked at
/// again: a cancelled request stops within about this long.
pub(super) const CANCEL_SLICE: Duration = Duration::from_millis(100);

scoped_tls::scoped_thread_local! {
    /// The cancel flag of the attempt running on this thread, for the
    /// transport and the resolver, which ureq calls on the job's thread
    /// but without the job's context.
    pub(super) static CANCEL: std::sync::atomic::AtomicBool
}

/// Whether the attempt on this thread was cancelled.
pub(super) fn cancelled() -> bool {
    CANCEL.is_set() && CANCEL.with(|c| c.load(std::sync::atomic::Ordering::Relaxed))
}

pub(super) fn cancel_error() -> std::io::Error {
    std::io::Error::other("the job was cancelled")
}

/// Wraps each new TCP connection (below TLS) in [`Cancellable`].
#[derive(Debug)]
pub(super) struct CancelConnector;

impl<In: Transport> Connector<In> for CancelConnector {
    type Out = Cancellable<In>;

    fn connect(
        &self,
        _details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq3::Error> {
        if cancelled() {
            return Err(ureq3::Error::Io(cancel_error()));
        }
        Ok(chained.map(Cancellable))
    }
}

/// A transport whose waits for input are cut into [`CANCEL_SLICE`]s, the
/// cancel flag looked at between them, so that a cancel stops a request in
/// flight instead of it running to its deadline. A slice that times out has
/// read nothing, so the wait simply goes on; only the last slice's timeout
/// is the request's.
#[derive(Debug)]
pub(super) struct Cancellable<T>(T);

impl<T: Transport> Transport for Cancellable<T> {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.0.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq3::Error> {
        if cancelled() {
            return Err(ureq3::Error::Io(cancel_error()));
        }
        self.0.transmit_output(amount, timeout)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq3::Error> {
        use ureq3::unversioned::transport::time::Duration as UreqDuration;
        let end = match timeout.after {
            UreqDuration::Exact(after) => Some(Instant::now() + after),
            UreqDuration::NotHappening => None,
        };
        loop {
            if cancelled() {
                return Err(ureq3::Error::Io(cancel_error()));
            }
            let left = end.map(|end| end.saturating_duration_since(Instant::now()));
            let last = left.is_some_and(|left| left <= CANCEL_SLICE);
            let slice = NextTimeout {
                after: UreqDuration::Exact(left.map_or(CANCEL_SLICE, |l| l.min(CANCEL_SLICE))),
                ..timeout
            };
            match self.0.await_input(slice) {
                Err(ureq3::Error::Timeout(_)) if !last => {}
                other => return other,
            }
        }
    }

    fn is_open(&mut self) -> bool {
        self.0.is_open()
    }

    fn is_tls(&self) -> bool {
        self.0.is_tls()
    }
}
