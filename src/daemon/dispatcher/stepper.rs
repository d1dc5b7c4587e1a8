//! The write step's own thread. A step (outcomes written and jobs claimed,
//! see `outcomes.rs`) runs there, on the daemon's connection, while the
//! dispatcher hands out the jobs the step before claimed and collects what
//! finishes. The connection travels with the step and comes back with its
//! result, so one side holds it at a time and no lock guards it.
//!
//! Why a thread: a step and a hand-out followed each other on one core,
//! each waiting for the other (on PostgreSQL the step is mostly the
//! server's time, on SQLite the store's own CPU). Side by side, a drain
//! turns at the pace of the longer of the two.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::job::Completion;
use crate::keys::KeyRules;
use crate::store::{Claim, ClaimRequest, Stepped, Store};

/// The connection: here, or away with a step.
pub(super) struct Stepper {
    store: Option<Box<dyn Store + Send>>,
    out: Sender<Sent>,
    back: Receiver<Back>,
}

/// What one step is to do: the outcomes to write and the claim to make.
pub(super) struct Order {
    /// The outcomes, in the order the completer keeps them.
    pub completions: Vec<Completion>,
    /// The daemon's worker id.
    pub worker: Arc<str>,
    /// The claim's clock (epoch ms).
    pub now: i64,
    /// The claimed jobs' lease end (epoch ms).
    pub lease_until: i64,
    /// What to claim, per queue.
    pub requests: Vec<ClaimRequest>,
    /// The keyed limits in force.
    pub keys: Arc<KeyRules>,
}

/// A step that came back: its order and what the store did.
pub(super) struct Done {
    /// The order, as sent.
    pub order: Order,
    /// What the store did.
    pub stepped: Stepped,
}

/// What the thread sends back: the connection and the step's result, or
/// the panic the step ended in.
pub(super) struct Back {
    store: Box<dyn Store + Send>,
    result: Result<Done, Box<dyn Any + Send>>,
}

struct Sent {
    store: Box<dyn Store + Send>,
    order: Order,
}

impl Stepper {
    /// Starts the thread; the connection stays here until a step takes it.
    pub fn new(store: Box<dyn Store + Send>) -> std::io::Result<Stepper> {
        let (out, inbox) = crossbeam_channel::bounded::<Sent>(1);
        let (outbox, back) = crossbeam_channel::bounded::<Back>(1);
        std::thread::Builder::new()
            .name("jobd-step".into())
            .spawn(move || {
                for Sent { mut store, order } in inbox {
                    let stepped = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        let claim = Claim {
                            worker: &order.worker,
                            now: order.now,
                            lease_until: order.lease_until,
                            requests: &order.requests,
                            keys: &order.keys,
                        };
                        store.complete_and_claim(&order.completions, &claim)
                    }));
                    let result = stepped.map(|stepped| Done { order, stepped });
                    if outbox.send(Back { store, result }).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Stepper {
            store: Some(store),
            out,
            back,
        })
    }

    /// The connection, which must be here.
    pub fn store(&mut self) -> &mut (dyn Store + Send + 'static) {
        self.store
            .as_deref_mut()
            .expect("the connection is away with a write step")
    }

    /// A step has the connection.
    pub fn away(&self) -> bool {
        self.store.is_none()
    }

    /// Sends the connection off with `order`.
    pub fn send(&mut self, order: Order) {
        let store = self
            .store
            .take()
            .expect("one write step at a time: the connection is away");
        if let Err(crossbeam_channel::SendError(sent)) = self.out.send(Sent { store, order }) {
            // The thread is gone (it only ends when this side drops); keep
            // the connection and step here.
            self.store = Some(sent.store);
            panic!("the write step's thread is gone");
        }
    }

    /// Where a step's return arrives, for the dispatcher's wait.
    pub fn returns(&self) -> &Receiver<Back> {
        &self.back
    }

    /// Takes the connection back from a returned step and answers what the
    /// step did; a step that panicked panics here, on the dispatcher's
    /// thread, as it did before steps had a thread of their own.
    pub fn arrived(&mut self, back: Back) -> Done {
        self.store = Some(back.store);
        match back.result {
            Ok(done) => done,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Waits for the step that is away, if one is.
    pub fn wait_back(&mut self) -> Option<Done> {
        if !self.away() {
            return None;
        }
        let back = self
            .back
            .recv()
            .expect("the write step's thread ended with the connection");
        Some(self.arrived(back))
    }

    /// The step that came back, without waiting.
    pub fn try_back(&mut self) -> Option<Done> {
        let back = self.back.try_recv().ok()?;
        Some(self.arrived(back))
    }

    /// Gives the connection back for good (the thread ends). The
    /// dispatcher ends only once its last step came back.
    pub fn into_store(mut self) -> Box<dyn Store + Send> {
        self.store
            .take()
            .expect("no write step is away when the dispatcher ends")
    }
}
