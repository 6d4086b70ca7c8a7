//! numpy at the boundary. A contiguous 1-D int32 id array and a C-ordered `(n, 2)`
//! uint64 hash array are read in place (no Python objects touched per element); any
//! other integer array-like (another integer dtype, a strided view, a list of ints, a
//! list of Python ints too large for one numpy dtype) is converted once, with range
//! checks. Floats, bools, non-int objects and wrong shapes raise
//! `InvalidArgumentError` naming the argument.
//!
//! Also the checks of single Python values every binding shares: an int that is not a
//! bool, an int in a range, a real bool, a sequence that is not text, and
//! `_core.int64_array` (the integer-batch conversion for Python code beside the manager).
//!
//! Hash layout: a 128-bit hash `h` is the row `[h & (2**64-1), h >> 64]` of a C-ordered
//! `(n, 2)` uint64 array, i.e. its 16 little-endian bytes on a little-endian machine.

use numpy::{PyArray1, PyArray2, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyInt, PyList, PyString, PyTuple};

use crate::errors::invalid_arg;

fn numpy_asarray<'py>(py: Python<'py>, obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    py.import("numpy")?.getattr("asarray")?.call1((obj,))
}

/// The dtype kind char (`i`, `u`, `f`, `b`, ...) and shape of an array-like.
fn kind_and_shape(arr: &Bound<'_, PyAny>) -> PyResult<(char, Vec<usize>)> {
    let kind: String = arr.getattr("dtype")?.getattr("kind")?.extract()?;
    let shape: Vec<usize> = arr.getattr("shape")?.extract()?;
    Ok((kind.chars().next().unwrap_or('?'), shape))
}

fn dtype_name(arr: &Bound<'_, PyAny>) -> String {
    arr.getattr("dtype")
        .and_then(|d| d.str())
        .map(|s| s.to_string())
        .unwrap_or_else(|_| "an unknown dtype".into())
}

fn borrow_error(what: &str) -> PyErr {
    invalid_arg(format!(
        "{what}: the array is being written elsewhere and cannot be read"
    ))
}

/// A 1-D vector of i64 from any integer array-like (empty input of any dtype is fine).
pub fn int_vec(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<i64>> {
    let py = obj.py();
    if let Ok(a) = obj.cast::<PyArray1<i64>>() {
        let ro = a.try_readonly().map_err(|_| borrow_error(what))?;
        return Ok(ro.as_array().to_vec());
    }
    let arr = numpy_asarray(py, obj)
        .map_err(|_| invalid_arg(format!("{what} must be a 1-D integer array")))?;
    let (kind, shape) = kind_and_shape(&arr)?;
    if shape.len() != 1 {
        return Err(invalid_arg(format!(
            "{what} must be 1-D, got shape {shape:?}"
        )));
    }
    if shape[0] == 0 {
        return Ok(Vec::new());
    }
    if kind == 'O' {
        // Python ints numpy could not fit in one integer dtype: each must fit int64.
        return object_ints(&arr, what);
    }
    if kind != 'i' && kind != 'u' {
        return Err(invalid_arg(format!(
            "{what} must have an integer dtype, got {}",
            dtype_name(&arr)
        )));
    }
    if kind == 'u' {
        // uint64 values above i64::MAX would wrap in astype: reject them by value.
        let max: u64 = arr.call_method0("max")?.extract().unwrap_or(u64::MAX);
        if max > i64::MAX as u64 {
            return Err(invalid_arg(format!(
                "{what} holds {max}, which is out of range"
            )));
        }
    }
    let converted = arr.call_method1("astype", ("int64",))?;
    let a = converted.cast::<PyArray1<i64>>()?;
    let ro = a.try_readonly().map_err(|_| borrow_error(what))?;
    Ok(ro.as_array().to_vec())
}

/// The values of a 1-D object array holding only Python ints, each in int64.
fn object_ints(arr: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<i64>> {
    let mut out = Vec::new();
    for x in arr.try_iter()? {
        let x = x?;
        if x.is_instance_of::<pyo3::types::PyBool>() || !x.is_instance_of::<pyo3::types::PyInt>() {
            return Err(invalid_arg(format!(
                "{what} must have an integer dtype, got {}",
                dtype_name(arr)
            )));
        }
        out.push(x.extract::<i64>().map_err(|_| {
            let shown = x
                .str()
                .map(|s| s.to_string())
                .unwrap_or_else(|_| "?".into());
            invalid_arg(format!("{what}: {shown} is outside the int64 range"))
        })?);
    }
    Ok(out)
}

fn ids_from_i64(v: Vec<i64>, what: &str) -> PyResult<Vec<i32>> {
    v.into_iter()
        .map(|x| {
            i32::try_from(x)
                .map_err(|_| invalid_arg(format!("{what}: block id {x} is out of the int32 range")))
        })
        .collect()
}

/// Block ids as i32, range-checked to the int32 space (the pool checks its own range).
/// An owned copy, for callers that keep the ids (the pool calls use `with_block_ids`).
#[allow(dead_code)]
pub fn block_ids(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<i32>> {
    if let Ok(a) = obj.cast::<PyArray1<i32>>() {
        let ro = a.try_readonly().map_err(|_| borrow_error(what))?;
        return Ok(ro.as_array().to_vec());
    }
    ids_from_i64(int_vec(obj, what)?, what)
}

/// Run `f` on block ids: a contiguous int32 array is lent in place, anything else is
/// converted first (see `block_ids`).
pub fn with_block_ids<R>(
    obj: &Bound<'_, PyAny>,
    what: &str,
    f: impl FnOnce(&[i32]) -> PyResult<R>,
) -> PyResult<R> {
    if let Ok(a) = obj.cast::<PyArray1<i32>>() {
        let ro = a.try_readonly().map_err(|_| borrow_error(what))?;
        return match ro.as_slice() {
            Ok(s) => f(s),
            Err(_) => f(&ro.as_array().to_vec()),
        };
    }
    f(&ids_from_i64(int_vec(obj, what)?, what)?)
}

fn rows_to_hashes(flat: &[u64]) -> Vec<u128> {
    flat.chunks_exact(2).map(|r| join(r[0], r[1])).collect()
}

/// 128-bit hashes from an `(n, 2)` uint64 array (see the module docs for the layout).
pub fn hashes(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<u128>> {
    let py = obj.py();
    if let Ok(a) = obj.cast::<PyArray2<u64>>() {
        let ro = a.try_readonly().map_err(|_| borrow_error(what))?;
        if ro.shape()[1] != 2 {
            return Err(invalid_arg(format!(
                "{what} must have shape (n, 2), got {:?}",
                ro.shape()
            )));
        }
        if a.is_c_contiguous() {
            if let Ok(s) = ro.as_slice() {
                return Ok(rows_to_hashes(s));
            }
        }
        let v = ro.as_array();
        return Ok(v.rows().into_iter().map(|r| join(r[0], r[1])).collect());
    }
    let arr = numpy_asarray(py, obj)
        .map_err(|_| invalid_arg(format!("{what} must be a (n, 2) uint64 array")))?;
    let (kind, shape) = kind_and_shape(&arr)?;
    if shape.first() == Some(&0) && (shape.len() == 1 || shape == [0, 2]) {
        return Ok(Vec::new());
    }
    if shape.len() != 2 || shape[1] != 2 {
        return Err(invalid_arg(format!(
            "{what} must have shape (n, 2), got {shape:?}"
        )));
    }
    if kind != 'u' && kind != 'i' {
        return Err(invalid_arg(format!(
            "{what} must be uint64, got {}",
            dtype_name(&arr)
        )));
    }
    if kind == 'i' {
        let min: i64 = arr.call_method0("min")?.extract()?;
        if min < 0 {
            return Err(invalid_arg(format!("{what} holds a negative value {min}")));
        }
    }
    let converted = arr.call_method1("astype", ("uint64",))?;
    let a = converted.cast::<PyArray2<u64>>()?;
    let ro = a.try_readonly().map_err(|_| borrow_error(what))?;
    Ok(ro
        .as_array()
        .rows()
        .into_iter()
        .map(|r| join(r[0], r[1]))
        .collect())
}

#[inline]
pub fn join(lo: u64, hi: u64) -> u128 {
    (lo as u128) | ((hi as u128) << 64)
}

#[inline]
pub fn split(h: u128) -> [u64; 2] {
    [h as u64, (h >> 64) as u64]
}

/// An int32 numpy array holding `ids` (one allocation owned by numpy: cheaper than
/// handing numpy a Rust `Vec`, which needs a keeper object per array).
pub fn ids_to_py<'py>(py: Python<'py>, ids: &[i32]) -> Bound<'py, PyArray1<i32>> {
    PyArray1::from_slice(py, ids)
}

/// An `(n, 2)` uint64 array from hashes.
pub fn hashes_to_py<'py>(
    py: Python<'py>,
    hs: impl ExactSizeIterator<Item = u128>,
) -> Bound<'py, PyArray2<u64>> {
    let n = hs.len();
    let arr = PyArray2::<u64>::zeros(py, [n, 2], false);
    // SAFETY: `arr` was created just above and no other reference to it exists, so
    // nothing else can read or borrow it while it is filled.
    if let Ok(out) = unsafe { arr.as_slice_mut() } {
        for (row, h) in out.chunks_exact_mut(2).zip(hs) {
            row.copy_from_slice(&split(h));
        }
    }
    arr
}

/// A Python integer (or numpy integer scalar) as i64; anything else is an
/// `InvalidArgumentError` naming `what`.
pub fn int_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<i64> {
    if obj.is_instance_of::<pyo3::types::PyBool>() {
        return Err(invalid_arg(format!("{what} must be an int, got a bool")));
    }
    obj.extract().map_err(|_| {
        let shown = obj
            .repr()
            .map(|r| r.to_string())
            .unwrap_or_else(|_| "?".into());
        invalid_arg(format!(
            "{what} must be an int in the int64 range, got {shown}"
        ))
    })
}

/// A non-negative count from a Python int.
pub fn count(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<usize> {
    let v = int_arg(obj, what)?;
    if v < 0 {
        return Err(invalid_arg(format!("{what} must be non-negative, got {v}")));
    }
    Ok(v as usize)
}

/// An optional argument that was given and is not None.
pub fn given<'a, 'py>(obj: Option<&'a Bound<'py, PyAny>>) -> Option<&'a Bound<'py, PyAny>> {
    obj.filter(|o| !o.is_none())
}

pub fn repr(obj: &Bound<'_, PyAny>) -> String {
    obj.repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "?".into())
}

pub fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// A Python int or numpy integer (never a bool, float or string).
pub fn is_int(obj: &Bound<'_, PyAny>) -> bool {
    if obj.is_instance_of::<PyBool>() {
        return false;
    }
    if obj.is_instance_of::<PyInt>() {
        return true;
    }
    // numpy integer scalars (np.bool_ is not an integer: it has no `__index__`).
    obj.py()
        .import("numpy")
        .and_then(|np| np.getattr("integer"))
        .and_then(|t| obj.is_instance(&t))
        .unwrap_or(false)
}

/// A plain int, numpy scalar or 0-d array: a batch of one.
pub fn is_scalar(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    if obj.is_instance_of::<PyInt>() {
        return Ok(true);
    }
    if obj.cast::<PyUntypedArray>().is_ok() || obj.hasattr("shape")? {
        return Ok(obj.getattr("shape")?.len()? == 0);
    }
    Ok(false)
}

/// A 1-D int64 batch from an integer array-like; a scalar is a batch of one.
pub fn int_batch(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<i64>> {
    if is_scalar(obj)? {
        return Ok(vec![int_arg(obj, what)?]);
    }
    int_vec(obj, what)
}

/// Whether `obj` is a sequence (list, tuple or any `collections.abc.Sequence`), not
/// text or bytes.
pub fn is_sequence(obj: &Bound<'_, PyAny>) -> bool {
    if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        return true;
    }
    if obj.is_instance_of::<PyString>() || obj.is_instance_of::<PyBytes>() {
        return false;
    }
    obj.py()
        .import("collections.abc")
        .and_then(|m| m.getattr("Sequence"))
        .and_then(|t| obj.is_instance(&t))
        .unwrap_or(false)
}

pub fn items<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, PyAny>>> {
    obj.try_iter()?.collect()
}

/// An int (never a bool or float) in `[lo, hi)`, `hi` at most 2**128.
pub fn int_in(obj: &Bound<'_, PyAny>, lo: u128, hi: Option<u128>, what: &str) -> PyResult<u128> {
    let v = is_int(obj)
        .then(|| obj.extract::<u128>().ok())
        .flatten()
        .filter(|&v| v >= lo && hi.is_none_or(|h| v < h));
    v.ok_or_else(|| {
        let hi = hi.map_or("2**128".to_string(), |h| h.to_string());
        invalid_arg(format!(
            "{what} must be an int in [{lo}, {hi}), got {}",
            repr(obj)
        ))
    })
}

/// A flag that must be a real bool (or numpy bool), not any truthy object.
pub fn flag(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<bool> {
    obj.extract::<bool>()
        .map_err(|_| invalid_arg(format!("{what} must be a bool, got {}", repr(obj))))
}

/// `hybridkv._core.int64_array(value, what)`: a 1-D int64 array from an integer
/// array-like (a scalar is a batch of one), refused as `InvalidArgumentError` naming
/// `what` exactly as the manager's own arguments are: for Python code that takes
/// request ids beside the manager (the offload connector).
#[pyfunction]
pub fn int64_array<'py>(
    value: &Bound<'py, PyAny>,
    what: &str,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    Ok(PyArray1::from_vec(value.py(), int_batch(value, what)?))
}
