//! Python bindings for hybridkv-core. Deliberately thin: argument conversion
//! (numpy in, numpy out), error mapping and GIL release. All state and loops live in
//! the core crate.

// A panic in library code would reach Python as a PanicException (or abort the
// process): outside tests every failure is an Error. Clippy enforces it.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::todo,
        clippy::unimplemented,
        clippy::unreachable
    )
)]

use pyo3::prelude::*;

mod arrays;
mod block_pool;
mod errors;
mod manager;
mod manager_args;
mod prefix_hash;
mod registry;
mod sched_step;
mod shared;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<block_pool::PyBlockPool>()?;
    m.add_class::<registry::PyPoolRegistry>()?;
    m.add_class::<manager::PyManager>()?;
    m.add_function(wrap_pyfunction!(prefix_hash::hash_token_blocks, m)?)?;
    m.add_function(wrap_pyfunction!(arrays::int64_array, m)?)?;
    m.add_class::<sched_step::PyTokenLists>()?;
    m.add_function(wrap_pyfunction!(sched_step::running_plan, m)?)?;
    m.add_function(wrap_pyfunction!(sched_step::block_growth, m)?)?;
    Ok(())
}
