//! `hybridkv._core.PoolRegistry`: one pool per group; every id-taking call names it.

use hybridkv_core::{BlockPool, PoolEvent, PoolRegistry};
use numpy::{IntoPyArray, PyArray1, PyArray2};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::arrays::{count, hashes, ids_to_py, int_arg, int_vec, with_block_ids};
use crate::block_pool::{block_id_arg, check_invariants, events_to_py, snapshot};
use crate::errors::{invalid_arg, IntoPy};
use crate::shared::Shared;

/// The group index `g` of a registry with `num_groups` groups (`UnknownGroupError`).
fn group_index(g: &Bound<'_, PyAny>, num_groups: usize) -> PyResult<usize> {
    let g = int_arg(g, "group")?;
    if g < 0 || g as u64 >= num_groups as u64 {
        return Err(hybridkv_core::Error::UnknownGroup {
            group: g,
            num_groups,
        })
        .py_err();
    }
    Ok(g as usize)
}

/// One block pool per KV-cache group, addressed by group index (behind a mutex, like
/// `BlockPool`: threads sharing it are serialised).
#[pyclass(name = "PoolRegistry", module = "hybridkv._core", subclass, frozen)]
pub struct PyPoolRegistry {
    inner: Shared<PoolRegistry>,
    num_groups: usize,
}

impl PyPoolRegistry {
    /// Run `f` on group `g`'s pool (GIL held; see `Shared::with`).
    fn on_pool<R>(
        &self,
        py: Python<'_>,
        g: &Bound<'_, PyAny>,
        f: impl FnOnce(&mut BlockPool) -> R,
    ) -> PyResult<R> {
        let g = group_index(g, self.num_groups)?;
        self.inner.with(py, |r| r.pool_mut(g).map(f))?.py_err()
    }
}

#[pymethods]
impl PyPoolRegistry {
    #[new]
    #[pyo3(signature = (num_blocks_per_group, *, record_events = true))]
    fn new(num_blocks_per_group: &Bound<'_, PyAny>, record_events: bool) -> PyResult<Self> {
        let sizes = int_vec(num_blocks_per_group, "num_blocks_per_group")?;
        let mut us = Vec::with_capacity(sizes.len());
        for (i, &s) in sizes.iter().enumerate() {
            if s < 0 {
                return Err(invalid_arg(format!(
                    "num_blocks_per_group[{i}] must be non-negative, got {s}"
                )));
            }
            us.push(s as usize);
        }
        let mut inner = PoolRegistry::new(&us).py_err()?;
        for g in 0..inner.num_groups() {
            inner.pool_mut(g).py_err()?.set_record_events(record_events);
        }
        Ok(PyPoolRegistry {
            num_groups: inner.num_groups(),
            inner: Shared::new(inner, "PoolRegistry"),
        })
    }

    #[getter]
    fn num_groups(&self) -> usize {
        self.num_groups
    }

    fn num_blocks(&self, py: Python<'_>, group: &Bound<'_, PyAny>) -> PyResult<usize> {
        self.on_pool(py, group, |p| p.num_blocks())
    }
    fn num_free(&self, py: Python<'_>, group: &Bound<'_, PyAny>) -> PyResult<usize> {
        self.on_pool(py, group, |p| p.num_free())
    }
    fn num_cached(&self, py: Python<'_>, group: &Bound<'_, PyAny>) -> PyResult<usize> {
        self.on_pool(py, group, |p| p.num_cached())
    }
    fn num_in_use(&self, py: Python<'_>, group: &Bound<'_, PyAny>) -> PyResult<usize> {
        self.on_pool(py, group, |p| p.num_in_use())
    }

    fn allocate<'py>(
        &self,
        py: Python<'py>,
        group: &Bound<'py, PyAny>,
        n: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<i32>>> {
        let n = count(n, "n")?;
        let ids = self.on_pool(py, group, |p| p.allocate(n))?.py_err()?;
        Ok(ids_to_py(py, &ids))
    }
    fn free(
        &self,
        py: Python<'_>,
        group: &Bound<'_, PyAny>,
        ids: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        group_index(group, self.num_groups)?;
        with_block_ids(ids, "ids", |ids| {
            self.on_pool(py, group, |p| p.free(ids))?.py_err()
        })
    }
    fn touch(
        &self,
        py: Python<'_>,
        group: &Bound<'_, PyAny>,
        ids: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        group_index(group, self.num_groups)?;
        with_block_ids(ids, "ids", |ids| {
            self.on_pool(py, group, |p| p.touch(ids))?.py_err()
        })
    }
    fn cache_blocks(
        &self,
        py: Python<'_>,
        group: &Bound<'_, PyAny>,
        ids: &Bound<'_, PyAny>,
        hashes_: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        group_index(group, self.num_groups)?;
        let hs = hashes(hashes_, "hashes")?;
        with_block_ids(ids, "ids", |ids| {
            self.on_pool(py, group, |p| p.cache_blocks(ids, &hs))?
                .py_err()
        })
    }
    fn lookup<'py>(
        &self,
        py: Python<'py>,
        group: &Bound<'py, PyAny>,
        hashes_: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<i32>>> {
        group_index(group, self.num_groups)?;
        let hs = hashes(hashes_, "hashes")?;
        let ids = self.on_pool(py, group, |p| p.lookup(&hs))?;
        Ok(ids_to_py(py, &ids))
    }
    fn evict(
        &self,
        py: Python<'_>,
        group: &Bound<'_, PyAny>,
        ids: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        group_index(group, self.num_groups)?;
        with_block_ids(ids, "ids", |ids| {
            self.on_pool(py, group, |p| p.evict(ids))?.py_err()
        })
    }
    fn reset_prefix_cache(&self, py: Python<'_>, group: &Bound<'_, PyAny>) -> PyResult<()> {
        self.on_pool(py, group, |p| p.reset_prefix_cache())?
            .py_err()
    }
    fn ref_count(
        &self,
        py: Python<'_>,
        group: &Bound<'_, PyAny>,
        id: &Bound<'_, PyAny>,
    ) -> PyResult<u32> {
        let n = self.on_pool(py, group, |p| p.num_blocks())?;
        let id = block_id_arg(id, n)?;
        self.on_pool(py, group, |p| p.ref_count(id))?.py_err()
    }
    fn free_queue<'py>(
        &self,
        py: Python<'py>,
        group: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<i32>>> {
        Ok(self
            .on_pool(py, group, |p| p.free_queue())?
            .into_pyarray(py))
    }

    /// Drained events of every pool: (groups, kinds, block ids, hashes).
    #[allow(clippy::type_complexity)]
    fn take_event_arrays<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(
        Bound<'py, PyArray1<i32>>,
        Bound<'py, PyArray1<u8>>,
        Bound<'py, PyArray1<i32>>,
        Bound<'py, PyArray2<u64>>,
    )> {
        let tagged = self.inner.with(py, |r| r.take_events())?;
        let groups: Vec<i32> = tagged.iter().map(|(g, _)| *g as i32).collect();
        let events: Vec<PoolEvent> = tagged.into_iter().map(|(_, e)| e).collect();
        let (k, b, h) = events_to_py(py, &events);
        Ok((groups.into_pyarray(py), k, b, h))
    }

    fn snapshot<'py>(
        &self,
        py: Python<'py>,
        group: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        // A copy, so no Python object is built while the registry is locked.
        let copy = self.on_pool(py, group, |p| p.clone())?;
        snapshot(py, &copy)
    }

    /// Check every pool's invariants (`AssertionError` naming the group on a violation).
    fn check_invariants(&self, py: Python<'_>) -> PyResult<()> {
        self.inner.with(py, |r| {
            for (g, p) in r.pools().iter().enumerate() {
                check_invariants(p).map_err(|e| {
                    pyo3::exceptions::PyAssertionError::new_err(format!("group {g}: {e}"))
                })?;
            }
            Ok(())
        })?
    }
}
