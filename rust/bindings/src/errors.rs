//! Core errors become the exception classes defined in `hybridkv.errors`, so Python
//! code catches one hierarchy whichever side raised.

use hybridkv_core::Error;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyType;

/// The `hybridkv.errors` class name for each core error.
fn class_name(e: &Error) -> &'static str {
    match e {
        Error::InvalidBlockId { .. } | Error::NullBlock => "InvalidBlockIdError",
        Error::DoubleFree { .. } => "DoubleFreeError",
        Error::OutOfBlocks { .. } => "OutOfBlocksError",
        Error::NegativeCount { .. } | Error::LengthMismatch { .. } | Error::InvalidArgument(_) => {
            "InvalidArgumentError"
        }
        Error::NotInUse { .. } | Error::AlreadyCached { .. } => "BlockStateError",
        Error::PoolInUse { .. } => "PoolInUseError",
        Error::UnknownGroup { .. } => "UnknownGroupError",
        Error::UnknownRequest { .. } => "UnknownRequestError",
        Error::DuplicateRequest { .. } => "DuplicateRequestError",
        Error::InvalidToken { .. } => "InvalidTokenError",
        Error::RequestState { .. } => "RequestStateError",
    }
}

/// Build a `hybridkv.errors.<name>` exception with `msg`.
pub fn py_error(py: Python<'_>, name: &str, msg: String) -> PyErr {
    let cls = py
        .import("hybridkv.errors")
        .and_then(|m| m.getattr(name))
        .and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from));
    match cls {
        Ok(cls) => PyErr::from_type(cls, msg),
        // The package is broken if this happens; still raise something sensible.
        Err(_) => PyValueError::new_err(msg),
    }
}

/// Convert a core error into the matching Python exception.
pub fn to_py(e: Error) -> PyErr {
    Python::attach(|py| py_error(py, class_name(&e), e.to_string()))
}

/// `InvalidArgumentError` with a message (bad dtype, shape, or value at the boundary).
pub fn invalid_arg(msg: impl Into<String>) -> PyErr {
    Python::attach(|py| py_error(py, "InvalidArgumentError", msg.into()))
}

/// Shorthand for `.map_err(to_py)`.
pub trait IntoPy<T> {
    fn py_err(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for hybridkv_core::Result<T> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}
