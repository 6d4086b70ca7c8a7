//! `hybridkv._core.BlockPool`: one group's pool. `hybridkv.BlockPool` subclasses it
//! to add Python conveniences (event objects, repr).

use hybridkv_core::{BlockPool, Error, PoolEvent};
use numpy::{IntoPyArray, PyArray1, PyArray2};
use pyo3::exceptions::PyAssertionError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::arrays::{count, hashes, hashes_to_py, ids_to_py, int_arg, with_block_ids};
use crate::errors::{to_py, IntoPy};
use crate::shared::Shared;

/// Event kind codes in `take_event_arrays` (and `hybridkv.cache.pool_events.EventKind`).
pub const EV_STORED: u8 = 0;
pub const EV_REMOVED: u8 = 1;
pub const EV_CLEARED: u8 = 2;

pub type EventArrays<'py> = (
    Bound<'py, PyArray1<u8>>,
    Bound<'py, PyArray1<i32>>,
    Bound<'py, PyArray2<u64>>,
);

/// Events as three parallel arrays: kind codes, block ids (-1 for a clear), hashes.
pub fn events_to_py<'py>(py: Python<'py>, events: &[PoolEvent]) -> EventArrays<'py> {
    let mut kinds = Vec::with_capacity(events.len());
    let mut blocks = Vec::with_capacity(events.len());
    let mut hs = Vec::with_capacity(events.len());
    for e in events {
        let (k, b, h) = match *e {
            PoolEvent::Stored { block, hash } => (EV_STORED, block, hash),
            PoolEvent::Removed { block, hash } => (EV_REMOVED, block, hash),
            PoolEvent::AllCleared => (EV_CLEARED, -1, 0),
        };
        kinds.push(k);
        blocks.push(b);
        hs.push(h);
    }
    (
        kinds.into_pyarray(py),
        blocks.into_pyarray(py),
        hashes_to_py(py, hs.into_iter()),
    )
}

/// A full copy of a pool's observable state, for tests and debugging: reference
/// counts, the free queue in order, cached blocks, every hash-map entry (hashes
/// ascending, each chain oldest first, so the block a lookup returns comes first),
/// the counters, and the events not yet taken (left in place).
pub fn snapshot<'py>(py: Python<'py>, p: &BlockPool) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("num_blocks", p.num_blocks())?;
    d.set_item("num_free", p.num_free())?;
    d.set_item("num_cached", p.num_cached())?;
    d.set_item("num_in_use", p.num_in_use())?;
    d.set_item("ref_counts", p.ref_counts().to_vec().into_pyarray(py))?;
    d.set_item("free_queue", p.free_queue().into_pyarray(py))?;
    let cached = p.cached_blocks();
    d.set_item(
        "cached_ids",
        cached
            .iter()
            .map(|c| c.0)
            .collect::<Vec<_>>()
            .into_pyarray(py),
    )?;
    d.set_item(
        "cached_hashes",
        hashes_to_py(py, cached.iter().map(|c| c.1)),
    )?;
    let entries = p.hash_entries();
    d.set_item(
        "map_ids",
        entries
            .iter()
            .map(|c| c.1)
            .collect::<Vec<_>>()
            .into_pyarray(py),
    )?;
    d.set_item("map_hashes", hashes_to_py(py, entries.iter().map(|c| c.0)))?;
    let (k, b, h) = events_to_py(py, p.pending_events());
    d.set_item("event_kinds", k)?;
    d.set_item("event_blocks", b)?;
    d.set_item("event_hashes", h)?;
    Ok(d)
}

/// The block pool of one KV-cache group (ids local to this pool, 0 = null block).
///
/// Calls are microseconds of work, so the GIL is kept: releasing and re-taking it
/// would cost more than it lets other threads gain. The pool sits behind a mutex
/// (`shared.rs`), so threads sharing it are serialised, never refused.
#[pyclass(name = "BlockPool", module = "hybridkv._core", subclass, frozen)]
pub struct PyBlockPool {
    inner: Shared<BlockPool>,
    num_blocks: usize,
}

#[pymethods]
impl PyBlockPool {
    #[new]
    #[pyo3(signature = (num_blocks, *, record_events = true))]
    fn new(num_blocks: &Bound<'_, PyAny>, record_events: bool) -> PyResult<Self> {
        let n = count(num_blocks, "num_blocks")?;
        let mut inner = BlockPool::new(n).py_err()?;
        inner.set_record_events(record_events);
        Ok(PyBlockPool {
            num_blocks: inner.num_blocks(),
            inner: Shared::new(inner, "BlockPool"),
        })
    }

    #[getter]
    fn num_blocks(&self) -> usize {
        self.num_blocks
    }
    #[getter]
    fn num_free(&self, py: Python<'_>) -> PyResult<usize> {
        self.inner.with(py, |p| p.num_free())
    }
    #[getter]
    fn num_cached(&self, py: Python<'_>) -> PyResult<usize> {
        self.inner.with(py, |p| p.num_cached())
    }
    #[getter]
    fn num_in_use(&self, py: Python<'_>) -> PyResult<usize> {
        self.inner.with(py, |p| p.num_in_use())
    }
    #[getter]
    fn usage(&self, py: Python<'_>) -> PyResult<f64> {
        self.inner.with(py, |p| p.usage())
    }
    #[getter]
    fn record_events(&self, py: Python<'_>) -> PyResult<bool> {
        self.inner.with(py, |p| p.record_events())
    }
    #[setter]
    fn set_record_events(&self, py: Python<'_>, on: bool) -> PyResult<()> {
        self.inner.with(py, |p| p.set_record_events(on))
    }

    fn allocate<'py>(
        &self,
        py: Python<'py>,
        n: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<i32>>> {
        let n = count(n, "n")?;
        let ids = self.inner.with(py, |p| p.allocate(n))?.py_err()?;
        Ok(ids_to_py(py, &ids))
    }

    fn free(&self, py: Python<'_>, ids: &Bound<'_, PyAny>) -> PyResult<()> {
        with_block_ids(ids, "ids", |ids| {
            self.inner.with(py, |p| p.free(ids))?.py_err()
        })
    }

    fn touch(&self, py: Python<'_>, ids: &Bound<'_, PyAny>) -> PyResult<()> {
        with_block_ids(ids, "ids", |ids| {
            self.inner.with(py, |p| p.touch(ids))?.py_err()
        })
    }

    fn cache_blocks(
        &self,
        py: Python<'_>,
        ids: &Bound<'_, PyAny>,
        hashes_: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let hs = hashes(hashes_, "hashes")?;
        with_block_ids(ids, "ids", |ids| {
            self.inner.with(py, |p| p.cache_blocks(ids, &hs))?.py_err()
        })
    }

    fn lookup<'py>(
        &self,
        py: Python<'py>,
        hashes_: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<i32>>> {
        let hs = hashes(hashes_, "hashes")?;
        let ids = self.inner.with(py, |p| p.lookup(&hs))?;
        Ok(ids_to_py(py, &ids))
    }

    fn evict(&self, py: Python<'_>, ids: &Bound<'_, PyAny>) -> PyResult<()> {
        with_block_ids(ids, "ids", |ids| {
            self.inner.with(py, |p| p.evict(ids))?.py_err()
        })
    }

    fn reset_prefix_cache(&self, py: Python<'_>) -> PyResult<()> {
        self.inner.with(py, |p| p.reset_prefix_cache())?.py_err()
    }

    fn ref_count(&self, py: Python<'_>, id: &Bound<'_, PyAny>) -> PyResult<u32> {
        let id = block_id_arg(id, self.num_blocks)?;
        self.inner.with(py, |p| p.ref_count(id))?.py_err()
    }

    fn free_queue<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<i32>>> {
        Ok(self.inner.with(py, |p| p.free_queue())?.into_pyarray(py))
    }

    fn take_event_arrays<'py>(&self, py: Python<'py>) -> PyResult<EventArrays<'py>> {
        let events = self.inner.with(py, |p| p.take_events())?;
        Ok(events_to_py(py, &events))
    }

    fn snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        // A copy, so no Python object is built while the pool is locked.
        let copy = self.inner.with(py, |p| p.clone())?;
        snapshot(py, &copy)
    }

    fn check_invariants(&self, py: Python<'_>) -> PyResult<()> {
        self.inner.with(py, |p| check_invariants(p))?
    }

    fn __len__(&self) -> usize {
        self.num_blocks
    }
}

/// One block id from a Python int; out-of-int32 values are reported as out of range.
pub fn block_id_arg(obj: &Bound<'_, PyAny>, num_blocks: usize) -> PyResult<i32> {
    let v = int_arg(obj, "id")?;
    i32::try_from(v).map_err(|_| to_py(Error::InvalidBlockId { id: v, num_blocks }))
}

/// `check_invariants` for Python: a violation is an `AssertionError` (a bug in the
/// pool, not bad input).
pub fn check_invariants(p: &BlockPool) -> PyResult<()> {
    p.check_invariants()
        .map_err(|m| PyAssertionError::new_err(format!("pool invariant violated: {m}")))
}
