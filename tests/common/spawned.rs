//! A child process a test started and that runs until told to stop
//! (`jobd tail`, a client holding a transaction open): it is killed when
//! the test ends, a failed assertion included, so a failing test leaves
//! nothing running behind it.

use std::ops::{Deref, DerefMut};
use std::process::{Child, Command};

pub struct Spawned(Child);

impl Spawned {
    /// Starts `cmd`; panics with the command if it cannot start.
    pub fn start(cmd: &mut Command) -> Spawned {
        match cmd.spawn() {
            Ok(child) => Spawned(child),
            Err(e) => panic!("{cmd:?} did not start: {e}"),
        }
    }
}

impl Deref for Spawned {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for Spawned {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // Already ended and reaped by the test: both calls fail, harmlessly.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
