//! `hybridkv._core.PoolRegistry`: one pool per group; every id-taking call names it.

use hybridkv_core::{BlockPool, PoolEvent, PoolRegistry};
use numpy::{IntoPyArray, PyArray1, PyArray2};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::arrays::{count, hashes, ids_to_py, int_arg, int_vec, with_block_ids};
use crate::block_pool::{block_id_arg, check_invariants, events_to_py, snapshot};
use crate::errors::{invalid_arg, IntoPy};

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

/// One block pool per KV-cache group, addressed by group index.
#[pyclass(name = "PoolRegistry", module = "hybridkv._core", subclass)]
pub struct PyPoolRegistry {
    inner: PoolRegistry,
}

impl PyPoolRegistry {
    fn pool_mut(&mut self, g: &Bound<'_, PyAny>) -> PyResult<&mut BlockPool> {
        let g = group_index(g, self.inner.num_groups())?;
        self.inner.pool_mut(g).py_err()
    }
    fn pool(&self, g: &Bound<'_, PyAny>) -> PyResult<&BlockPool> {
        let g = group_index(g, self.inner.num_groups())?;
        self.inner.pool(g).py_err()
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
        Ok(PyPoolRegistry { inner })
    }

    #[getter]
    fn num_groups(&self) -> usize {
        self.inner.num_groups()
    }

    fn num_blocks(&self, group: &Bound<'_, PyAny>) -> PyResult<usize> {
        Ok(self.pool(group)?.num_blocks())
    }
    fn num_free(&self, group: &Bound<'_, PyAny>) -> PyResult<usize> {
        Ok(self.pool(group)?.num_free())
    }
    fn num_cached(&self, group: &Bound<'_, PyAny>) -> PyResult<usize> {
        Ok(self.pool(group)?.num_cached())
    }
    fn num_in_use(&self, group: &Bound<'_, PyAny>) -> PyResult<usize> {
        Ok(self.pool(group)?.num_in_use())
    }

    fn allocate<'py>(
        &mut self,
        py: Python<'py>,
        group: &Bound<'py, PyAny>,
        n: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<i32>>> {
        let pool = self.pool_mut(group)?;
        let n = count(n, "n")?;
        Ok(ids_to_py(py, &pool.allocate(n).py_err()?))
    }
    fn free(&mut self, group: &Bound<'_, PyAny>, ids: &Bound<'_, PyAny>) -> PyResult<()> {
        let pool = self.pool_mut(group)?;
        with_block_ids(ids, "ids", |ids| pool.free(ids).py_err())
    }
    fn touch(&mut self, group: &Bound<'_, PyAny>, ids: &Bound<'_, PyAny>) -> PyResult<()> {
        let pool = self.pool_mut(group)?;
        with_block_ids(ids, "ids", |ids| pool.touch(ids).py_err())
    }
    fn cache_blocks(
        &mut self,
        group: &Bound<'_, PyAny>,
        ids: &Bound<'_, PyAny>,
        hashes_: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let pool = self.pool_mut(group)?;
        let hs = hashes(hashes_, "hashes")?;
        with_block_ids(ids, "ids", |ids| pool.cache_blocks(ids, &hs).py_err())
    }
    fn lookup<'py>(
        &self,
        py: Python<'py>,
        group: &Bound<'py, PyAny>,
        hashes_: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<i32>>> {
        let pool = self.pool(group)?;
        let hs = hashes(hashes_, "hashes")?;
        Ok(ids_to_py(py, &pool.lookup(&hs)))
    }
    fn evict(&mut self, group: &Bound<'_, PyAny>, ids: &Bound<'_, PyAny>) -> PyResult<()> {
        let pool = self.pool_mut(group)?;
        with_block_ids(ids, "ids", |ids| pool.evict(ids).py_err())
    }
    fn reset_prefix_cache(&mut self, group: &Bound<'_, PyAny>) -> PyResult<()> {
        self.pool_mut(group)?.reset_prefix_cache().py_err()
    }
    fn ref_count(&self, group: &Bound<'_, PyAny>, id: &Bound<'_, PyAny>) -> PyResult<u32> {
        let pool = self.pool(group)?;
        pool.ref_count(block_id_arg(id, pool.num_blocks())?)
            .py_err()
    }
    fn free_queue<'py>(
        &self,
        py: Python<'py>,
        group: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<i32>>> {
        Ok(self.pool(group)?.free_queue().into_pyarray(py))
    }

    /// Drained events of every pool: (groups, kinds, block ids, hashes).
    #[allow(clippy::type_complexity)]
    fn take_event_arrays<'py>(
        &mut self,
        py: Python<'py>,
    ) -> (
        Bound<'py, PyArray1<i32>>,
        Bound<'py, PyArray1<u8>>,
        Bound<'py, PyArray1<i32>>,
        Bound<'py, PyArray2<u64>>,
    ) {
        let tagged = self.inner.take_events();
        let groups: Vec<i32> = tagged.iter().map(|(g, _)| *g as i32).collect();
        let events: Vec<PoolEvent> = tagged.into_iter().map(|(_, e)| e).collect();
        let (k, b, h) = events_to_py(py, &events);
        (groups.into_pyarray(py), k, b, h)
    }

    fn snapshot<'py>(
        &self,
        py: Python<'py>,
        group: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        snapshot(py, self.pool(group)?)
    }

    /// Check every pool's invariants (`AssertionError` naming the group on a violation).
    fn check_invariants(&self) -> PyResult<()> {
        for (g, p) in self.inner.pools().iter().enumerate() {
            check_invariants(p).map_err(|e| {
                pyo3::exceptions::PyAssertionError::new_err(format!("group {g}: {e}"))
            })?;
        }
        Ok(())
    }
}
