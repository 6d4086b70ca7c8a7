//! `hybridkv._core.KVCacheManager`: argument conversion, error mapping and GIL release
//! over `hybridkv_core::Manager`. `hybridkv.KVCacheManager` wraps it with the plan
//! conversion and Python-level conveniences.
//!
//! Why this file stays whole (over 500 lines): it is the class's one `#[pymethods]`
//! block, one thin method per Python method (PyO3 takes a single block per class
//! without its `multiple-pymethods` feature); the conversions they share live in
//! `manager/convert.rs`, the argument forms in `manager_args.rs`.

use hybridkv_core::prefix_hash::ExtraKeys;
use hybridkv_core::{KvEvent, MambaMode, Manager, ManagerConfig, NewRequest};
use numpy::{IntoPyArray, PyArray1, PyArray2, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::arrays::{self, hashes_to_py, int_arg, int_vec};
use crate::errors::{invalid_arg, IntoPy};
use crate::manager_args::{self, Ragged};
use crate::shared::Shared;

pub(crate) mod convert;

use convert::{
    bool_arg, event_tuple, group_arg, id_vec, media_lists, opt_i64_vec, per_request, table_array,
    token_vec,
};

/// The KV-cache manager core (see `hybridkv.KVCacheManager` for the documented API).
///
/// Safe to share between threads: calls are serialised by a mutex (`shared.rs`), long
/// ones with the GIL released, so a second thread waits instead of failing.
#[pyclass(name = "KVCacheManager", module = "hybridkv._core", frozen)]
pub struct PyManager {
    inner: Shared<Manager>,
    /// Fixed at construction: read without taking the lock.
    num_groups: usize,
}

#[pymethods]
impl PyManager {
    /// `groups`: the plan's groups (each with `kind`, `block_size`, `num_blocks`,
    /// `window`, `chunk_size`, `max_encoder_len`) or `(kind, block_size, num_blocks,
    /// param)` tuples, `param` the window, chunk size or max encoder length (0 where
    /// the kind has none). `arena`: the plan's elastic arena (`memory_bytes`,
    /// `region_bytes`, `null_bytes`, `page_bytes`, `floor_blocks`) or None.
    /// `shared_pool`: every group draws from one pool of the (common) `num_blocks`.
    /// `checkpoint_policy`: `"reuse"`, `"lru"` or None (`"lru"` with a shared pool,
    /// else `"reuse"`). `pool_of`: static pools or an elastic arena, per group the pool
    /// it draws from (None: one each; in an arena, one per page class). Every argument
    /// is checked here (`manager_args.rs`).
    #[new]
    #[pyo3(signature = (groups, mamba_cache_mode, enable_caching, hash_seed, vocab_size, record_events, arena=None, shared_pool=None, checkpoint_policy=None, pool_of=None))]
    #[allow(clippy::too_many_arguments)] // mirrors the Python constructor's keywords
    fn new(
        groups: &Bound<'_, PyAny>,
        mamba_cache_mode: &Bound<'_, PyAny>,
        enable_caching: &Bound<'_, PyAny>,
        hash_seed: &Bound<'_, PyAny>,
        vocab_size: Option<&Bound<'_, PyAny>>,
        record_events: &Bound<'_, PyAny>,
        arena: Option<&Bound<'_, PyAny>>,
        shared_pool: Option<&Bound<'_, PyAny>>,
        checkpoint_policy: Option<&Bound<'_, PyAny>>,
        pool_of: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let groups = manager_args::group_configs(groups)?;
        let mode: String = mamba_cache_mode.extract().map_err(|_| {
            invalid_arg(format!(
                "mamba_cache_mode must be 'none', 'align' or 'all', got {}",
                mamba_cache_mode
                    .repr()
                    .map(|r| r.to_string())
                    .unwrap_or_default()
            ))
        })?;
        let shared_pool = match shared_pool.filter(|o| !o.is_none()) {
            None => false,
            Some(b) => arrays::flag(b, "shared_pool")?,
        };
        let cfg = ManagerConfig {
            groups,
            mamba_mode: MambaMode::parse(&mode).py_err()?,
            enable_caching: arrays::flag(enable_caching, "enable_caching")?,
            hash_seed: manager_args::hash_seed(hash_seed)?,
            vocab_size: manager_args::vocab_size(vocab_size)?,
            record_events: arrays::flag(record_events, "record_events")?,
            arena: manager_args::arena_config(arena)?,
            shared_pool,
            pool_of: manager_args::pool_of(pool_of)?,
            checkpoint_policy: manager_args::checkpoint_policy(checkpoint_policy, shared_pool)?,
        };
        let inner = Manager::new(cfg).py_err()?;
        Ok(PyManager {
            num_groups: inner.num_groups(),
            inner: Shared::new(inner, "KVCacheManager"),
        })
    }

    #[getter]
    fn num_groups(&self) -> usize {
        self.num_groups
    }
    #[getter]
    fn num_requests(&self, py: Python<'_>) -> PyResult<usize> {
        self.inner.with(py, |m| m.num_requests())
    }

    /// `token_ids`: flat with `offsets`, or a list of per-request arrays with `offsets`
    /// None. Multimodal items: `mm_features` (per request None or `(hash, start,
    /// length)` items) or the flat `mm_offsets`/`mm_hashes`/`mm_starts`/`mm_lens`.
    #[pyo3(signature = (req_ids, token_ids, offsets=None, lora_ids=None, cache_salts=None,
        mm_offsets=None, mm_hashes=None, mm_starts=None, mm_lens=None, encoder_lens=None,
        mm_features=None))]
    #[allow(clippy::too_many_arguments)]
    fn add_requests(
        &self,
        py: Python<'_>,
        req_ids: &Bound<'_, PyAny>,
        token_ids: &Bound<'_, PyAny>,
        offsets: Option<&Bound<'_, PyAny>>,
        lora_ids: Option<&Bound<'_, PyAny>>,
        cache_salts: Option<&Bound<'_, PyAny>>,
        mm_offsets: Option<&Bound<'_, PyAny>>,
        mm_hashes: Option<&Bound<'_, PyAny>>,
        mm_starts: Option<&Bound<'_, PyAny>>,
        mm_lens: Option<&Bound<'_, PyAny>>,
        encoder_lens: Option<&Bound<'_, PyAny>>,
        mm_features: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let ids = id_vec(req_ids)?;
        let n = ids.len();
        let prompts =
            manager_args::ragged_prompts(token_ids, offsets, |t| token_vec(t, "token_ids"))?;
        let loras = manager_args::lora_ids(lora_ids, n)?;
        let salts = manager_args::cache_salts(cache_salts, n)?;
        let media = match mm_features.filter(|m| !m.is_none()) {
            Some(_) if mm_offsets.is_some_and(|o| !o.is_none()) => {
                return Err(invalid_arg("give mm_features or mm_offsets, not both"))
            }
            Some(m) => manager_args::media_features(m, n)?,
            None => media_lists(n, mm_offsets, mm_hashes, mm_starts, mm_lens)?,
        };
        let encs = opt_i64_vec(encoder_lens, "encoder_lens", n)?;
        let mut new = Vec::with_capacity(n);
        for (i, ((&id, salt), items)) in ids.iter().zip(salts).zip(media).enumerate() {
            let enc = encs.as_ref().map_or(0, |e| e[i]);
            if enc < 0 {
                return Err(invalid_arg(format!(
                    "encoder_lens[{i}] = {enc} is negative"
                )));
            }
            let lora = loras.as_ref().map(|l| l[i]).filter(|&l| l >= 0);
            new.push(NewRequest {
                id,
                extra: ExtraKeys {
                    lora_id: lora,
                    cache_salt: salt,
                    media: items,
                },
                encoder_len: enc as usize,
            });
        }
        self.inner
            .detached(py, |m| match prompts {
                Ragged::Flat { tokens, offsets } => m.add_requests(new, &tokens, &offsets),
                Ragged::Parts(parts) => m.add_requests_owned(new, parts),
            })?
            .py_err()
    }

    /// Same prompt forms as `add_requests`.
    #[pyo3(signature = (req_ids, token_ids, offsets=None))]
    fn append_tokens(
        &self,
        py: Python<'_>,
        req_ids: &Bound<'_, PyAny>,
        token_ids: &Bound<'_, PyAny>,
        offsets: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let ids = id_vec(req_ids)?;
        let (tokens, offs) =
            manager_args::ragged_tokens(token_ids, offsets, |t| token_vec(t, "token_ids"))?;
        self.inner
            .detached(py, |m| m.append_tokens(&ids, &tokens, &offs))?
            .py_err()
    }

    fn get_computed_tokens<'py>(
        &self,
        py: Python<'py>,
        req_ids: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<i64>>> {
        per_request(py, &self.inner, req_ids, |m, ids| {
            m.get_computed_tokens(ids)
        })
    }

    /// `num_new_tokens` and `num_lookahead_tokens` (None: zeros): one per request, or
    /// a scalar for all of them.
    #[pyo3(signature = (req_ids, num_new_tokens, num_lookahead_tokens=None, new_step=None))]
    fn allocate_slots<'py>(
        &self,
        py: Python<'py>,
        req_ids: &Bound<'py, PyAny>,
        num_new_tokens: &Bound<'py, PyAny>,
        num_lookahead_tokens: Option<&Bound<'py, PyAny>>,
        new_step: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyArray1<bool>>> {
        let ids = id_vec(req_ids)?;
        let n = manager_args::per_request(Some(num_new_tokens), ids.len(), "num_new_tokens")?;
        let la =
            manager_args::per_request(num_lookahead_tokens, ids.len(), "num_lookahead_tokens")?;
        let new_step = match new_step {
            None => true,
            Some(b) => bool_arg(b, "new_step")?,
        };
        let out = self
            .inner
            .detached(py, |m| m.allocate_slots(&ids, &n, &la, new_step))?
            .py_err()?;
        Ok(out.into_pyarray(py))
    }

    fn free(&self, py: Python<'_>, req_ids: &Bound<'_, PyAny>) -> PyResult<()> {
        let ids = id_vec(req_ids)?;
        self.inner.detached(py, |m| m.free(&ids))?.py_err()
    }

    fn preempt(&self, py: Python<'_>, req_ids: &Bound<'_, PyAny>) -> PyResult<()> {
        let ids = id_vec(req_ids)?;
        self.inner.detached(py, |m| m.preempt(&ids))?.py_err()
    }

    #[pyo3(signature = (group, req_ids, max_blocks=None))]
    fn block_table<'py>(
        &self,
        py: Python<'py>,
        group: &Bound<'_, PyAny>,
        req_ids: &Bound<'py, PyAny>,
        max_blocks: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyArray2<i32>>> {
        let g = group_arg(group, self.num_groups)?;
        let ids = id_vec(req_ids)?;
        let width = match max_blocks.filter(|w| !w.is_none()) {
            None => None,
            Some(w) => Some(crate::arrays::count(w, "max_blocks")?),
        };
        let table = self
            .inner
            .detached(py, |m| m.block_table(g, &ids, width))?
            .py_err()?;
        table_array(py, ids.len(), table)
    }

    /// Write `group`'s tables for `req_ids` into the first rows of `out`, a C-contiguous
    /// int32 `(rows, width)` array (rows >= len(req_ids)), zero padding every row.
    /// Returns the number of rows written.
    fn block_table_into(
        &self,
        py: Python<'_>,
        group: &Bound<'_, PyAny>,
        req_ids: &Bound<'_, PyAny>,
        out: &Bound<'_, PyAny>,
    ) -> PyResult<usize> {
        let g = group_arg(group, self.num_groups)?;
        let ids = id_vec(req_ids)?;
        let arr = out
            .cast::<PyArray2<i32>>()
            .map_err(|_| invalid_arg("out must be a 2-D int32 numpy array"))?;
        let mut rw = arr
            .try_readwrite()
            .map_err(|_| invalid_arg("out is not writeable (or already borrowed)"))?;
        if !rw.is_c_contiguous() {
            return Err(invalid_arg("out must be C-contiguous"));
        }
        let width = rw.shape()[1];
        let rows = rw.shape()[0];
        if rows < ids.len() {
            return Err(invalid_arg(format!(
                "out has {rows} rows for {} requests",
                ids.len()
            )));
        }
        let slice = rw
            .as_slice_mut()
            .map_err(|_| invalid_arg("out must be C-contiguous"))?;
        self.inner
            .detached(py, |m| m.block_table_into(g, &ids, slice, width))?
            .py_err()?;
        Ok(ids.len())
    }

    /// Entries appended to `group`'s tables since the previous call, per request:
    /// `(start columns (n,), offsets (n + 1,), block ids)`.
    #[allow(clippy::type_complexity)]
    fn new_block_ids<'py>(
        &self,
        py: Python<'py>,
        group: &Bound<'_, PyAny>,
        req_ids: &Bound<'py, PyAny>,
    ) -> PyResult<(
        Bound<'py, PyArray1<i64>>,
        Bound<'py, PyArray1<i64>>,
        Bound<'py, PyArray1<i32>>,
    )> {
        let g = group_arg(group, self.num_groups)?;
        let ids = id_vec(req_ids)?;
        let (starts, offs, blocks) = self
            .inner
            .detached(py, |m| m.new_block_ids(g, &ids))?
            .py_err()?;
        Ok((
            starts.into_pyarray(py),
            offs.into_pyarray(py),
            blocks.into_pyarray(py),
        ))
    }

    /// `new_block_ids` of every group in one call: `(starts (groups, n), offsets
    /// (groups, n + 1), block ids)`; group `g`'s new ids of request `i` are
    /// `ids[offsets[g, i]:offsets[g, i + 1]]`, to be written from column `starts[g, i]`.
    #[allow(clippy::type_complexity)]
    fn new_block_ids_all<'py>(
        &self,
        py: Python<'py>,
        req_ids: &Bound<'py, PyAny>,
    ) -> PyResult<(
        Bound<'py, PyArray2<i64>>,
        Bound<'py, PyArray2<i64>>,
        Bound<'py, PyArray1<i32>>,
    )> {
        let ids = id_vec(req_ids)?;
        let n = ids.len();
        let ng = self.num_groups;
        let (starts, offs, blocks) = self
            .inner
            .detached(py, |m| m.new_block_ids_all(&ids))?
            .py_err()?;
        let shape = |rows: usize, cols: usize, v: Vec<i64>| {
            numpy::ndarray::Array2::from_shape_vec((rows, cols), v)
                .map(|a| PyArray2::from_owned_array(py, a))
                .map_err(|e| invalid_arg(format!("new block ids shape: {e}")))
        };
        Ok((
            shape(ng, n, starts)?,
            shape(ng, n + 1, offs)?,
            blocks.into_pyarray(py),
        ))
    }

    /// `block_table` of every group at once, in group order.
    fn block_tables<'py>(
        &self,
        py: Python<'py>,
        req_ids: &Bound<'py, PyAny>,
    ) -> PyResult<Vec<Bound<'py, PyArray2<i32>>>> {
        let ids = id_vec(req_ids)?;
        let tables = self
            .inner
            .detached(py, |m| m.block_tables(&ids))?
            .py_err()?;
        tables
            .into_iter()
            .map(|t| table_array(py, ids.len(), t))
            .collect()
    }

    fn slot_mapping<'py>(
        &self,
        py: Python<'py>,
        group: &Bound<'_, PyAny>,
        req_ids: &Bound<'py, PyAny>,
        positions: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let g = group_arg(group, self.num_groups)?;
        let pos = int_vec(positions, "positions")?;
        per_request(py, &self.inner, req_ids, |m, ids| {
            m.slot_mapping(g, ids, &pos)
        })
    }

    fn num_computed_tokens<'py>(
        &self,
        py: Python<'py>,
        req_ids: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<i64>>> {
        per_request(py, &self.inner, req_ids, |m, ids| {
            m.num_computed_tokens(ids)
        })
    }

    fn shared_prefix_boundary<'py>(
        &self,
        py: Python<'py>,
        req_ids: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<i64>>> {
        per_request(py, &self.inner, req_ids, |m, ids| {
            m.shared_prefix_boundary(ids)
        })
    }

    fn num_tokens<'py>(
        &self,
        py: Python<'py>,
        req_ids: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<i64>>> {
        per_request(py, &self.inner, req_ids, |m, ids| m.num_tokens(ids))
    }

    fn block_hashes<'py>(
        &self,
        py: Python<'py>,
        group: &Bound<'_, PyAny>,
        req_id: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<u64>>> {
        let g = group_arg(group, self.num_groups)?;
        let id = int_arg(req_id, "req_id")?;
        let hs = self.inner.with(py, |m| m.block_hashes(g, id))?.py_err()?;
        Ok(hashes_to_py(py, hs.into_iter()))
    }

    fn reset_prefix_cache(&self, py: Python<'_>) -> PyResult<bool> {
        self.inner.detached(py, |m| m.reset_prefix_cache())
    }

    fn request_ids<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<i64>>> {
        Ok(self.inner.with(py, |m| m.request_ids())?.into_pyarray(py))
    }

    fn __contains__(&self, py: Python<'_>, req_id: &Bound<'_, PyAny>) -> PyResult<bool> {
        let id = int_arg(req_id, "req_id")?;
        self.inner.with(py, |m| m.contains(id))
    }

    /// Per group: blocks it could allocate now (for an elastic manager, counting memory
    /// it could take from the shared remainder).
    fn obtainable_blocks(&self, py: Python<'_>) -> PyResult<Vec<usize>> {
        self.inner.with(py, |m| m.obtainable_blocks())
    }

    /// Elastic: set every pool's effective floor from per-group needs (core
    /// `Manager::set_floor_needs`); False, nothing changed, when a pool cannot reach it.
    fn set_floor_needs(&self, py: Python<'_>, needs: &Bound<'_, PyAny>) -> PyResult<bool> {
        let needs = manager_args::floor_needs(needs)?;
        self.inner
            .detached(py, |m| m.set_floor_needs(&needs))?
            .py_err()
    }

    /// Per pool: blocks above its effective floor no other pool could take now.
    fn held_spare(&self, py: Python<'_>) -> PyResult<Vec<usize>> {
        self.inner.with(py, |m| m.held_spare())
    }

    /// Per pool: its effective floor (elastic; empty for static pools).
    fn effective_floors(&self, py: Python<'_>) -> PyResult<Vec<usize>> {
        self.inner.with(py, |m| m.effective_floors().to_vec())
    }

    /// Per group: free blocks (cached or not) of the pool it draws from, as int64.
    fn free_blocks<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let v = self.inner.with(py, |m| {
            (0..m.num_groups())
                .filter_map(|g| m.pool(g).ok())
                .map(|p| p.num_free() as i64)
                .collect::<Vec<i64>>()
        })?;
        Ok(v.into_pyarray(py))
    }

    /// Per group: non-null blocks backed by memory now (of the pool it draws from).
    fn present_blocks(&self, py: Python<'_>) -> PyResult<Vec<usize>> {
        self.inner.with(py, |m| {
            (0..m.num_groups())
                .filter_map(|g| m.pool(g).ok())
                .map(|p| p.num_present())
                .collect()
        })
    }

    /// The elastic arena (None for static pools): sizes, owners (pool per region, -1:
    /// unowned), per pool its view's base and its floor span (or None), waste and the
    /// counters of memory moves.
    fn arena_info<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        // Read under the lock, build the dict after it.
        let info = self.inner.with(py, |m| {
            let a = m.arena()?;
            let st = m.elastic_stats();
            let owners: Vec<i64> = (0..a.num_regions())
                .map(|r| a.owner(r).map_or(-1, |g| g as i64))
                .collect();
            let spans: Vec<Option<(u64, u64)>> = (0..a.num_groups())
                .map(|g| a.floor_span(g).map(|r| a.span(r)))
                .collect();
            Some((
                (
                    a.config().bytes,
                    a.config().region_bytes,
                    a.null_bytes(),
                    a.num_regions(),
                ),
                (owners, a.bases().to_vec(), spans, a.num_grid_regions()),
                (a.waste_bytes(), a.worst_waste_bytes()),
                (st.grants, st.moves, st.evicted_blocks, st.orphans),
            ))
        })?;
        let Some((
            (bytes, region, null, regions),
            (owners, bases, spans, grid),
            (waste, worst),
            counts,
        )) = info
        else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        d.set_item("bytes", bytes)?;
        d.set_item("region_bytes", region)?;
        d.set_item("null_bytes", null)?;
        d.set_item("num_regions", regions)?;
        d.set_item("owners", owners)?;
        d.set_item("num_grid_regions", grid)?;
        d.set_item("bases", bases)?;
        d.set_item("floor_spans", spans)?;
        d.set_item("waste_bytes", waste)?;
        d.set_item("worst_waste_bytes", worst)?;
        d.set_item("grants", counts.0)?;
        d.set_item("moves", counts.1)?;
        d.set_item("evicted_blocks", counts.2)?;
        d.set_item("orphans", counts.3)?;
        Ok(Some(d))
    }

    /// Per group, of the pool it draws from: `(num_blocks, num_free, num_cached,
    /// num_in_use)` (with a shared pool every group reports the same pool).
    fn pool_counts(&self, py: Python<'_>) -> PyResult<Vec<(usize, usize, usize, usize)>> {
        self.inner.with(py, |m| {
            (0..m.num_groups())
                .filter_map(|g| m.pool(g).ok())
                .map(|p| (p.num_blocks(), p.num_free(), p.num_cached(), p.num_in_use()))
                .collect()
        })
    }

    #[getter]
    fn shared_pool(&self, py: Python<'_>) -> PyResult<bool> {
        self.inner.with(py, |m| m.shared_pool())
    }

    /// Per group: the pool it draws from (arena regions are owned by pools).
    #[getter]
    fn pool_of(&self, py: Python<'_>) -> PyResult<Vec<usize>> {
        self.inner.with(py, |m| m.pool_of().to_vec())
    }

    #[getter]
    fn prompt_keep_min(&self, py: Python<'_>) -> PyResult<usize> {
        self.inner.with(py, |m| m.prompt_keep_min())
    }

    fn ref_counts<'py>(
        &self,
        py: Python<'py>,
        group: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<u32>>> {
        let g = group_arg(group, self.num_groups)?;
        let counts = self
            .inner
            .with(py, |m| m.pool(g).map(|p| p.ref_counts().to_vec()))?
            .py_err()?;
        Ok(counts.into_pyarray(py))
    }

    fn free_queue<'py>(
        &self,
        py: Python<'py>,
        group: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<i32>>> {
        let g = group_arg(group, self.num_groups)?;
        let queue = self
            .inner
            .with(py, |m| m.pool(g).map(|p| p.free_queue()))?
            .py_err()?;
        Ok(queue.into_pyarray(py))
    }

    /// Cached `(block, hash)` pairs of one pool as `(ids, (n, 2) hashes)`.
    #[allow(clippy::type_complexity)]
    fn cached_blocks<'py>(
        &self,
        py: Python<'py>,
        group: &Bound<'_, PyAny>,
    ) -> PyResult<(Bound<'py, PyArray1<i32>>, Bound<'py, PyArray2<u64>>)> {
        let g = group_arg(group, self.num_groups)?;
        let c = self
            .inner
            .with(py, |m| m.pool(g).map(|p| p.cached_blocks()))?
            .py_err()?;
        let ids: Vec<i32> = c.iter().map(|x| x.0).collect();
        Ok((
            ids.into_pyarray(py),
            hashes_to_py(py, c.iter().map(|x| x.1)),
        ))
    }

    fn stats_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.with(py, |m| m.stats().clone())?;
        let d = PyDict::new(py);
        d.set_item("queries", s.queries)?;
        d.set_item("query_tokens", s.query_tokens)?;
        d.set_item("hit_tokens", s.hit_tokens)?;
        d.set_item("group_hit_tokens", s.group_hit_tokens.clone())?;
        d.set_item("disagreements", s.disagreements)?;
        d.set_item("alloc_requests", s.alloc_requests)?;
        d.set_item("alloc_failures", s.alloc_failures)?;
        d.set_item("preemptions", s.preemptions)?;
        d.set_item(
            "interior_checkpoints_dropped",
            s.interior_checkpoints_dropped,
        )?;
        d.set_item("ns_hash", s.ns_hash)?;
        d.set_item("ns_lookup", s.ns_lookup)?;
        d.set_item("ns_alloc", s.ns_alloc)?;
        Ok(d)
    }

    /// Drained events as tuples `(kind, group, hashes, parent, token_ids, block_size,
    /// lora_id, req_id, hit, group_hits)`; kind 0 stored, 1 removed, 2 cleared,
    /// 3 disagreement (fields a kind does not use are None).
    fn take_event_tuples<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for ev in self.inner.with(py, |m| m.take_events())? {
            let t = match ev {
                KvEvent::Stored {
                    group,
                    hashes,
                    parent,
                    tokens,
                    block_size,
                    lora_id,
                } => event_tuple(
                    py,
                    0,
                    vec![
                        (1, group.into_pyobject(py)?.into_any()),
                        (2, hashes.into_pyobject(py)?.into_any()),
                        (3, parent.into_pyobject(py)?.into_any()),
                        (4, tokens.into_pyobject(py)?.into_any()),
                        (5, block_size.into_pyobject(py)?.into_any()),
                        (6, lora_id.into_pyobject(py)?.into_any()),
                    ],
                )?,
                KvEvent::Removed { group, hashes } => event_tuple(
                    py,
                    1,
                    vec![
                        (1, group.into_pyobject(py)?.into_any()),
                        (2, hashes.into_pyobject(py)?.into_any()),
                    ],
                )?,
                KvEvent::AllCleared { group } => {
                    event_tuple(py, 2, vec![(1, group.into_pyobject(py)?.into_any())])?
                }
                KvEvent::Disagreement {
                    req_id,
                    hit,
                    group_hits,
                } => event_tuple(
                    py,
                    3,
                    vec![
                        (7, req_id.into_pyobject(py)?.into_any()),
                        (8, hit.into_pyobject(py)?.into_any()),
                        (9, group_hits.into_pyobject(py)?.into_any()),
                    ],
                )?,
            };
            out.append(t)?;
        }
        Ok(out)
    }

    fn check_invariants(&self, py: Python<'_>) -> PyResult<()> {
        self.inner
            .detached(py, |m| m.check_invariants())?
            .map_err(|m| invalid_arg(format!("manager invariant violated: {m}")))
    }
}
