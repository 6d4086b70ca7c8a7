//! State shared by the Python threads that hold one object (a manager, a pool, a
//! registry): a mutex, so calls from several threads are serialised instead of failing
//! with PyO3's `RuntimeError: Already borrowed`.
//!
//! The GIL rule that makes this deadlock-free: a thread never waits for the mutex while
//! holding the GIL, and never needs the GIL while holding the mutex.
//! - `with` runs short work with the GIL held when the mutex is free; when another
//!   thread holds it (it is inside a `detached` call, GIL released), it waits with the
//!   GIL released, then tries again.
//! - `detached` releases the GIL, then takes the mutex, runs the work and lets go of
//!   the mutex before taking the GIL back.
//!
//! Arguments are converted (numpy reads, Python calls) before either is entered, and
//! results are turned into Python objects after it returns: nothing that can run
//! Python code, and so switch threads, happens while the mutex is held.

use std::sync::{Mutex, TryLockError};

use pyo3::prelude::*;

use crate::errors::py_error;

pub struct Shared<T> {
    state: Mutex<T>,
    what: &'static str,
}

fn poisoned(py: Python<'_>, what: &str) -> PyErr {
    // Only reachable after a Rust panic inside a call (itself a bug that reached
    // Python as a PanicException): the state may be half-changed, so refuse to go on.
    py_error(
        py,
        "HybridKVError",
        format!("this {what} is unusable: an earlier call failed inside Rust"),
    )
}

impl<T: Send> Shared<T> {
    pub fn new(state: T, what: &'static str) -> Self {
        Shared {
            state: Mutex::new(state),
            what,
        }
    }

    /// Run short work `f` on the state (GIL held unless another thread's call is in
    /// progress, which this one waits out with the GIL released).
    pub fn with<R>(&self, py: Python<'_>, f: impl FnOnce(&mut T) -> R) -> PyResult<R> {
        loop {
            match self.state.try_lock() {
                Ok(mut guard) => return Ok(f(&mut guard)),
                Err(TryLockError::Poisoned(_)) => return Err(poisoned(py, self.what)),
                Err(TryLockError::WouldBlock) => py.detach(|| {
                    // Wait for the holder to finish; the guard is dropped at once and
                    // the mutex taken again above, with the GIL.
                    drop(self.state.lock());
                }),
            }
        }
    }

    /// Run long work `f` on the state with the GIL released.
    pub fn detached<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut T) -> R + Send,
    ) -> PyResult<R> {
        let out = py.detach(|| match self.state.lock() {
            Ok(mut guard) => Some(f(&mut guard)),
            Err(_) => None,
        });
        out.ok_or_else(|| poisoned(py, self.what))
    }
}
