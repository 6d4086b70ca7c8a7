//! `hybridkv._core.BlockPool`: one group's pool. `hybridkv.BlockPool` subclasses it
//! to add Python conveniences (event objects, repr).

use hybridkv_core::{BlockPool, PoolEvent};
use numpy::{IntoPyArray, PyArray1, PyArray2};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::arrays::{block_ids, count, hashes, hashes_to_py};
use crate::errors::{to_py, IntoPy};

/// Event kind codes in `take_event_arrays` (and `hybridkv.events.EventKind`).
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

/// A full copy of a pool's state, for tests and debugging.
pub fn snapshot<'py>(py: Python<'py>, p: &BlockPool) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
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
    let mut entries = p.hash_entries();
    entries.sort_unstable();
    d.set_item(
        "map_ids",
        entries
            .iter()
            .map(|c| c.1)
            .collect::<Vec<_>>()
            .into_pyarray(py),
    )?;
    d.set_item("map_hashes", hashes_to_py(py, entries.iter().map(|c| c.0)))?;
    Ok(d)
}

/// The block pool of one KV-cache group (ids local to this pool, 0 = null block).
#[pyclass(name = "BlockPool", module = "hybridkv._core", subclass)]
pub struct PyBlockPool {
    pub inner: BlockPool,
}

#[pymethods]
impl PyBlockPool {
    #[new]
    fn new(num_blocks: &Bound<'_, PyAny>) -> PyResult<Self> {
        let n = count(num_blocks, "num_blocks")?;
        Ok(PyBlockPool {
            inner: BlockPool::new(n).py_err()?,
        })
    }

    #[getter]
    fn num_blocks(&self) -> usize {
        self.inner.num_blocks()
    }
    #[getter]
    fn num_free(&self) -> usize {
        self.inner.num_free()
    }
    #[getter]
    fn num_cached(&self) -> usize {
        self.inner.num_cached()
    }
    #[getter]
    fn num_in_use(&self) -> usize {
        self.inner.num_in_use()
    }
    #[getter]
    fn usage(&self) -> f64 {
        self.inner.usage()
    }

    fn allocate<'py>(
        &mut self,
        py: Python<'py>,
        n: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<i32>>> {
        let n = count(n, "n")?;
        let inner = &mut self.inner;
        let ids = py.detach(|| inner.allocate(n)).py_err()?;
        Ok(ids.into_pyarray(py))
    }

    fn free(&mut self, py: Python<'_>, ids: &Bound<'_, PyAny>) -> PyResult<()> {
        let ids = block_ids(ids, "ids")?;
        let inner = &mut self.inner;
        py.detach(|| inner.free(&ids)).py_err()
    }

    fn touch(&mut self, ids: &Bound<'_, PyAny>) -> PyResult<()> {
        let ids = block_ids(ids, "ids")?;
        self.inner.touch(&ids).py_err()
    }

    fn cache_blocks(&mut self, ids: &Bound<'_, PyAny>, hashes_: &Bound<'_, PyAny>) -> PyResult<()> {
        let ids = block_ids(ids, "ids")?;
        let hs = hashes(hashes_, "hashes")?;
        self.inner.cache_blocks(&ids, &hs).py_err()
    }

    fn lookup<'py>(
        &self,
        py: Python<'py>,
        hashes_: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<i32>>> {
        let hs = hashes(hashes_, "hashes")?;
        Ok(self.inner.lookup(&hs).into_pyarray(py))
    }

    fn evict(&mut self, ids: &Bound<'_, PyAny>) -> PyResult<()> {
        let ids = block_ids(ids, "ids")?;
        self.inner.evict(&ids).py_err()
    }

    fn reset_prefix_cache(&mut self) -> PyResult<()> {
        self.inner.reset_prefix_cache().py_err()
    }

    fn ref_count(&self, id: i64) -> PyResult<u32> {
        let id = i32::try_from(id).unwrap_or(-1);
        self.inner.ref_count(id).map_err(to_py)
    }

    fn free_queue<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i32>> {
        self.inner.free_queue().into_pyarray(py)
    }

    fn take_event_arrays<'py>(&mut self, py: Python<'py>) -> EventArrays<'py> {
        events_to_py(py, &self.inner.take_events())
    }

    fn snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        snapshot(py, &self.inner)
    }

    fn check_invariants(&self) -> PyResult<()> {
        self.inner
            .check_invariants()
            .map_err(|m| crate::errors::invalid_arg(format!("pool invariant violated: {m}")))
    }

    fn __len__(&self) -> usize {
        self.inner.num_blocks()
    }
}
