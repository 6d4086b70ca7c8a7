//! Conversions the manager's methods share (and `hash_token_blocks`, `prefix_hash.rs`):
//! token ids, request ids, a group index, flags, optional per-request values and flat
//! multimodal arrays in; block tables and event tuples out.

use hybridkv_core::prefix_hash::MediaItem;
use hybridkv_core::Manager;
use numpy::{Element, IntoPyArray, PyArray1, PyArray2, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::arrays::{hashes, int_arg, int_vec};
use crate::errors::{invalid_arg, py_error, IntoPy};
use crate::manager_args;
use crate::shared::Shared;

/// Token ids as i32 (zero-copy read for int32 arrays; other integer dtypes are converted
/// and range-checked: a value outside int32 is an invalid token).
pub(crate) fn token_vec(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<i32>> {
    if let Ok(a) = obj.cast::<PyArray1<i32>>() {
        // Fallible borrow: another thread may be writing this very array (e.g. as the
        // `out` of `block_table_into`, GIL released); that is bad input, not a panic.
        let ro = a.try_readonly().map_err(|_| {
            invalid_arg(format!(
                "{what}: the array is being written elsewhere and cannot be read"
            ))
        })?;
        return Ok(ro
            .as_slice()
            .map(|s| s.to_vec())
            .unwrap_or_else(|_| ro.as_array().to_vec()));
    }
    let v = int_vec(obj, what)?;
    let mut out = Vec::with_capacity(v.len());
    for (pos, &t) in v.iter().enumerate() {
        match i32::try_from(t) {
            Ok(x) => out.push(x),
            Err(_) => {
                return Err(py_error(
                    obj.py(),
                    "InvalidTokenError",
                    format!("token id {t} at position {pos} is out of range"),
                ))
            }
        }
    }
    Ok(out)
}

/// Request ids (int64 array-likes; a plain int, numpy integer or 0-d array is a batch
/// of one). Values outside int64 (uint64 above `i64::MAX`) are refused, never wrapped.
pub(crate) fn id_vec(obj: &Bound<'_, PyAny>) -> PyResult<Vec<i64>> {
    manager_args::request_ids(obj)
}

/// A group index from a Python int (anything else is an `InvalidArgumentError`).
pub(crate) fn group_arg(group: &Bound<'_, PyAny>, n: usize) -> PyResult<usize> {
    let g = int_arg(group, "group")?;
    if g < 0 || g as usize >= n {
        return Err(hybridkv_core::Error::UnknownGroup {
            group: g,
            num_groups: n,
        })
        .py_err();
    }
    Ok(g as usize)
}

/// A flag that must be a real bool (or numpy bool), not any truthy object.
pub(crate) fn bool_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<bool> {
    obj.extract::<bool>().map_err(|_| {
        let shown = obj
            .repr()
            .map(|r| r.to_string())
            .unwrap_or_else(|_| "?".into());
        invalid_arg(format!("{what} must be a bool, got {shown}"))
    })
}

/// Look up `req_ids` (GIL released) and hand back one numpy value per request.
pub(crate) fn per_request<'py, T, F>(
    py: Python<'py>,
    manager: &Shared<Manager>,
    req_ids: &Bound<'py, PyAny>,
    f: F,
) -> PyResult<Bound<'py, PyArray1<T>>>
where
    T: Element + Send,
    F: FnOnce(&mut Manager, &[i64]) -> hybridkv_core::Result<Vec<T>> + Send,
{
    let ids = id_vec(req_ids)?;
    let out = manager.detached(py, |m| f(m, &ids))?.py_err()?;
    Ok(out.into_pyarray(py))
}

/// A `(rows, width)` block table from its row-major entries.
pub(crate) fn table_array<'py>(
    py: Python<'py>,
    rows: usize,
    (flat, width): (Vec<i32>, usize),
) -> PyResult<Bound<'py, PyArray2<i32>>> {
    let arr = numpy::ndarray::Array2::from_shape_vec((rows, width), flat)
        .map_err(|e| invalid_arg(format!("block table shape: {e}")))?;
    Ok(PyArray2::from_owned_array(py, arr))
}

/// One event tuple: `kind`, then the nine fields with `set` filled in and None elsewhere.
pub(crate) fn event_tuple<'py>(
    py: Python<'py>,
    kind: u8,
    set: Vec<(usize, Bound<'py, PyAny>)>,
) -> PyResult<Bound<'py, PyTuple>> {
    let mut row: Vec<Bound<'py, PyAny>> = vec![py.None().into_bound(py); 10];
    row[0] = kind.into_pyobject(py)?.into_any();
    for (i, v) in set {
        row[i] = v;
    }
    PyTuple::new(py, row)
}

pub(crate) fn opt_i64_vec(
    obj: Option<&Bound<'_, PyAny>>,
    what: &str,
    n: usize,
) -> PyResult<Option<Vec<i64>>> {
    match obj {
        None => Ok(None),
        Some(o) if o.is_none() => Ok(None),
        Some(o) => {
            let v = manager_args::per_request(Some(o), n, what)?;
            if v.len() != n {
                return Err(invalid_arg(format!(
                    "{what} has {} entries for {n} requests",
                    v.len()
                )));
            }
            Ok(Some(v))
        }
    }
}

/// Media items of each request from flat arrays: `mm_offsets` (n + 1) into
/// `mm_hashes` (m, 2), `mm_starts` (m), `mm_lens` (m).
pub(crate) fn media_lists(
    n: usize,
    offsets: Option<&Bound<'_, PyAny>>,
    hs: Option<&Bound<'_, PyAny>>,
    starts: Option<&Bound<'_, PyAny>>,
    lens: Option<&Bound<'_, PyAny>>,
) -> PyResult<Vec<Vec<MediaItem>>> {
    let Some(offsets) = offsets.filter(|o| !o.is_none()) else {
        return Ok(vec![Vec::new(); n]);
    };
    let offs = int_vec(offsets, "mm_offsets")?;
    let (Some(hs), Some(starts), Some(lens)) = (hs, starts, lens) else {
        return Err(invalid_arg(
            "mm_offsets needs mm_hashes, mm_starts and mm_lens",
        ));
    };
    let hs = hashes(hs, "mm_hashes")?;
    let starts = int_vec(starts, "mm_starts")?;
    let lens = int_vec(lens, "mm_lens")?;
    let m = hs.len();
    if offs.len() != n + 1 || starts.len() != m || lens.len() != m {
        return Err(invalid_arg(format!(
            "multimodal arrays disagree: {} offsets for {n} requests, {m} hashes, {} starts, {} lengths",
            offs.len(),
            starts.len(),
            lens.len()
        )));
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (a, b) = (offs[i], offs[i + 1]);
        if a < 0 || b < a || b as usize > m {
            return Err(invalid_arg(format!(
                "mm_offsets[{i}..{}] = {a}..{b} is invalid",
                i + 1
            )));
        }
        let mut items = Vec::with_capacity((b - a) as usize);
        for j in a as usize..b as usize {
            if lens[j] < 0 || lens[j] > u32::MAX as i64 {
                return Err(invalid_arg(format!(
                    "mm_lens[{j}] = {} is invalid",
                    lens[j]
                )));
            }
            items.push(MediaItem {
                hash: hs[j],
                start: starts[j],
                len: lens[j] as u32,
            });
        }
        out.push(items);
    }
    Ok(out)
}
