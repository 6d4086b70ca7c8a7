//! Python bindings for hybridkv-core. Deliberately thin: argument conversion
//! (numpy in, numpy out), error mapping and GIL release. All state and loops live in
//! the core crate.

use pyo3::prelude::*;

mod arrays;
mod block_pool;
mod errors;
mod manager;
mod registry;
mod shared;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<block_pool::PyBlockPool>()?;
    m.add_class::<registry::PyPoolRegistry>()?;
    m.add_class::<manager::PyManager>()?;
    m.add_function(wrap_pyfunction!(manager::hash_token_blocks, m)?)?;
    Ok(())
}
