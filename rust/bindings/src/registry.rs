//! `hybridkv._core.PoolRegistry`: one pool per group; every id-taking call names it.

use hybridkv_core::{PoolEvent, PoolRegistry};
use numpy::{IntoPyArray, PyArray1, PyArray2};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::arrays::{block_ids, count, hashes};
use crate::block_pool::{events_to_py, snapshot};
use crate::errors::IntoPy;

fn group_index(g: i64, num_groups: usize) -> hybridkv_core::Result<usize> {
    if g < 0 || g as usize >= num_groups {
        return Err(hybridkv_core::Error::UnknownGroup {
            group: g,
            num_groups,
        });
    }
    Ok(g as usize)
}

/// One block pool per KV-cache group, addressed by group index.
#[pyclass(name = "PoolRegistry", module = "hybridkv._core", subclass)]
pub struct PyPoolRegistry {
    inner: PoolRegistry,
}

impl PyPoolRegistry {
    fn pool_mut(&mut self, g: i64) -> PyResult<&mut hybridkv_core::BlockPool> {
        let g = group_index(g, self.inner.num_groups()).py_err()?;
        self.inner.pool_mut(g).py_err()
    }
    fn pool(&self, g: i64) -> PyResult<&hybridkv_core::BlockPool> {
        let g = group_index(g, self.inner.num_groups()).py_err()?;
        self.inner.pool(g).py_err()
    }
}

#[pymethods]
impl PyPoolRegistry {
    #[new]
    fn new(num_blocks_per_group: &Bound<'_, PyAny>) -> PyResult<Self> {
        let sizes = crate::arrays::int_vec(num_blocks_per_group, "num_blocks_per_group")?;
        let mut us = Vec::with_capacity(sizes.len());
        for (i, &s) in sizes.iter().enumerate() {
            if s < 0 {
                return Err(crate::errors::invalid_arg(format!(
                    "num_blocks_per_group[{i}] is negative ({s})"
                )));
            }
            us.push(s as usize);
        }
        Ok(PyPoolRegistry {
            inner: PoolRegistry::new(&us).py_err()?,
        })
    }

    #[getter]
    fn num_groups(&self) -> usize {
        self.inner.num_groups()
    }

    fn num_blocks(&self, group: i64) -> PyResult<usize> {
        Ok(self.pool(group)?.num_blocks())
    }
    fn num_free(&self, group: i64) -> PyResult<usize> {
        Ok(self.pool(group)?.num_free())
    }
    fn num_cached(&self, group: i64) -> PyResult<usize> {
        Ok(self.pool(group)?.num_cached())
    }
    fn num_in_use(&self, group: i64) -> PyResult<usize> {
        Ok(self.pool(group)?.num_in_use())
    }

    fn allocate<'py>(
        &mut self,
        py: Python<'py>,
        group: i64,
        n: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<i32>>> {
        let n = count(n, "n")?;
        Ok(self.pool_mut(group)?.allocate(n).py_err()?.into_pyarray(py))
    }
    fn free(&mut self, group: i64, ids: &Bound<'_, PyAny>) -> PyResult<()> {
        let ids = block_ids(ids, "ids")?;
        self.pool_mut(group)?.free(&ids).py_err()
    }
    fn touch(&mut self, group: i64, ids: &Bound<'_, PyAny>) -> PyResult<()> {
        let ids = block_ids(ids, "ids")?;
        self.pool_mut(group)?.touch(&ids).py_err()
    }
    fn cache_blocks(
        &mut self,
        group: i64,
        ids: &Bound<'_, PyAny>,
        hashes_: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let ids = block_ids(ids, "ids")?;
        let hs = hashes(hashes_, "hashes")?;
        self.pool_mut(group)?.cache_blocks(&ids, &hs).py_err()
    }
    fn lookup<'py>(
        &self,
        py: Python<'py>,
        group: i64,
        hashes_: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<i32>>> {
        let hs = hashes(hashes_, "hashes")?;
        Ok(self.pool(group)?.lookup(&hs).into_pyarray(py))
    }
    fn evict(&mut self, group: i64, ids: &Bound<'_, PyAny>) -> PyResult<()> {
        let ids = block_ids(ids, "ids")?;
        self.pool_mut(group)?.evict(&ids).py_err()
    }
    fn reset_prefix_cache(&mut self, group: i64) -> PyResult<()> {
        self.pool_mut(group)?.reset_prefix_cache().py_err()
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

    fn snapshot<'py>(&self, py: Python<'py>, group: i64) -> PyResult<Bound<'py, PyDict>> {
        snapshot(py, self.pool(group)?)
    }
}
