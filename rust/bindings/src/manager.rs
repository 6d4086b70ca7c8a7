//! `hybridkv._core.KVCacheManager` and `hash_token_blocks`: argument conversion, error
//! mapping and GIL release over `hybridkv_core::Manager`. `hybridkv.KVCacheManager`
//! wraps it with the plan conversion and Python-level conveniences.

use hybridkv_core::prefix_hash::{hash_token_blocks as core_hash_blocks, ExtraKeys, MediaItem};
use hybridkv_core::{
    ArenaConfig, CheckpointPolicy, GroupConfig, GroupKind, KvEvent, MambaMode, Manager,
    ManagerConfig, NewRequest,
};
use numpy::{Element, IntoPyArray, PyArray1, PyArray2, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyInt, PyList, PyTuple};

use crate::arrays::{hashes, hashes_to_py, int_arg, int_vec};
use crate::errors::{invalid_arg, py_error, IntoPy};
use crate::shared::Shared;

/// Token ids as i32 (zero-copy read for int32 arrays; other integer dtypes are converted
/// and range-checked: a value outside int32 is an invalid token).
fn token_vec(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<i32>> {
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

/// The prompts of `add_requests`: flat tokens with offsets, or one vector per prompt.
enum Prompts {
    Flat(Vec<i32>, Vec<i64>),
    Parts(Vec<Vec<i32>>),
}

/// One token vector per prompt from a sequence of `n` 1-D integer arrays (int32 read
/// directly; other dtypes range-checked as `token_vec` does).
fn prompt_parts(obj: &Bound<'_, PyAny>, n: usize) -> PyResult<Vec<Vec<i32>>> {
    let seq = obj
        .cast::<PyList>()
        .map(|l| l.iter().collect::<Vec<_>>())
        .or_else(|_| obj.cast::<PyTuple>().map(|t| t.iter().collect::<Vec<_>>()))
        .map_err(|_| {
            invalid_arg("token_ids: without offsets, a list (or tuple) of 1-D token arrays")
        })?;
    if seq.len() != n {
        return Err(invalid_arg(format!(
            "token_ids has {} prompts for {n} request ids",
            seq.len()
        )));
    }
    seq.iter()
        .map(|part| token_vec(part, "token ids"))
        .collect()
}

/// Request ids (int64 array-likes; a plain int, numpy integer or 0-d array is a batch
/// of one). Values outside int64 (uint64 above `i64::MAX`) are refused, never wrapped.
fn id_vec(obj: &Bound<'_, PyAny>) -> PyResult<Vec<i64>> {
    let scalar = obj.is_instance_of::<PyInt>()
        || (obj.hasattr("shape")? && obj.getattr("shape")?.len()? == 0);
    if scalar {
        return Ok(vec![int_arg(obj, "request id")?]);
    }
    int_vec(obj, "req_ids")
}

/// A group index from a Python int (anything else is an `InvalidArgumentError`).
fn group_arg(group: &Bound<'_, PyAny>, n: usize) -> PyResult<usize> {
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
fn bool_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<bool> {
    obj.extract::<bool>().map_err(|_| {
        let shown = obj
            .repr()
            .map(|r| r.to_string())
            .unwrap_or_else(|_| "?".into());
        invalid_arg(format!("{what} must be a bool, got {shown}"))
    })
}

/// Look up `req_ids` (GIL released) and hand back one numpy value per request.
fn per_request<'py, T, F>(
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
fn table_array<'py>(
    py: Python<'py>,
    rows: usize,
    (flat, width): (Vec<i32>, usize),
) -> PyResult<Bound<'py, PyArray2<i32>>> {
    let arr = numpy::ndarray::Array2::from_shape_vec((rows, width), flat)
        .map_err(|e| invalid_arg(format!("block table shape: {e}")))?;
    Ok(PyArray2::from_owned_array(py, arr))
}

/// One event tuple: `kind`, then the nine fields with `set` filled in and None elsewhere.
fn event_tuple<'py>(
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

fn opt_i64_vec(obj: Option<&Bound<'_, PyAny>>, what: &str, n: usize) -> PyResult<Option<Vec<i64>>> {
    match obj {
        None => Ok(None),
        Some(o) if o.is_none() => Ok(None),
        Some(o) => {
            let v = int_vec(o, what)?;
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
fn media_lists(
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

fn salt_list(obj: Option<&Bound<'_, PyAny>>, n: usize) -> PyResult<Vec<Option<Vec<u8>>>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(vec![None; n]);
    };
    let items: Vec<Bound<'_, PyAny>> = obj
        .try_iter()
        .map_err(|_| invalid_arg("cache_salts must be a sequence of bytes or None"))?
        .collect::<PyResult<_>>()?;
    if items.len() != n {
        return Err(invalid_arg(format!(
            "cache_salts has {} entries for {n} requests",
            items.len()
        )));
    }
    items
        .iter()
        .map(|o| {
            if o.is_none() {
                Ok(None)
            } else if let Ok(b) = o.cast::<PyBytes>() {
                Ok(Some(b.as_bytes().to_vec()))
            } else {
                Err(invalid_arg("cache_salts entries must be bytes or None"))
            }
        })
        .collect()
}

/// `(bytes, region_bytes, null_bytes, page_bytes, floor_blocks)` of an elastic arena.
type ArenaArg = (u64, u64, u64, Vec<u64>, Vec<u64>);

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
    /// `groups`: one `(kind, block_size, num_blocks, param)` per group, where `param` is
    /// the window, chunk size or max encoder length (0 where the kind has none).
    /// `shared_pool`: every group draws from one pool of the (common) `num_blocks`.
    ///
    /// `arena`: `(bytes, region_bytes, null_bytes, page_bytes, floor_blocks)` for one
    /// elastic arena shared by all groups (`num_blocks` is then each group's view of it).
    #[new]
    /// `checkpoint_policy`: `"reuse"` or `"lru"` (which cached state checkpoints go first).
    #[pyo3(signature = (groups, mamba_cache_mode, enable_caching, hash_seed, vocab_size, record_events, arena=None, shared_pool=false, checkpoint_policy="reuse"))]
    #[allow(clippy::too_many_arguments)] // mirrors the Python constructor's keywords
    fn new(
        groups: Vec<(String, i64, i64, i64)>,
        mamba_cache_mode: &str,
        enable_caching: bool,
        hash_seed: u64,
        vocab_size: Option<u64>,
        record_events: bool,
        arena: Option<ArenaArg>,
        shared_pool: bool,
        checkpoint_policy: &str,
    ) -> PyResult<Self> {
        let mut cfgs = Vec::with_capacity(groups.len());
        for (i, (kind, bs, nb, param)) in groups.iter().enumerate() {
            if *bs <= 0 || *nb <= 0 || *param < 0 {
                return Err(invalid_arg(format!(
                    "group {i}: block_size {bs} and num_blocks {nb} must be positive, parameter {param} non-negative"
                )));
            }
            cfgs.push(GroupConfig {
                kind: GroupKind::from_name(kind, *param as usize).py_err()?,
                block_size: *bs as usize,
                num_blocks: *nb as usize,
            });
        }
        let cfg = ManagerConfig {
            groups: cfgs,
            mamba_mode: MambaMode::parse(mamba_cache_mode).py_err()?,
            enable_caching,
            hash_seed,
            vocab_size,
            record_events,
            arena: arena.map(
                |(bytes, region_bytes, null_bytes, pages, floors)| ArenaConfig {
                    bytes,
                    region_bytes,
                    null_bytes,
                    page_bytes: pages,
                    floor_blocks: floors.into_iter().map(|f| f as usize).collect(),
                },
            ),
            shared_pool,
            checkpoint_policy: CheckpointPolicy::parse(checkpoint_policy).py_err()?,
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

    #[pyo3(signature = (req_ids, token_ids, offsets, lora_ids=None, cache_salts=None,
        mm_offsets=None, mm_hashes=None, mm_starts=None, mm_lens=None, encoder_lens=None))]
    #[allow(clippy::too_many_arguments)]
    fn add_requests(
        &self,
        py: Python<'_>,
        req_ids: &Bound<'_, PyAny>,
        token_ids: &Bound<'_, PyAny>,
        offsets: &Bound<'_, PyAny>,
        lora_ids: Option<&Bound<'_, PyAny>>,
        cache_salts: Option<&Bound<'_, PyAny>>,
        mm_offsets: Option<&Bound<'_, PyAny>>,
        mm_hashes: Option<&Bound<'_, PyAny>>,
        mm_starts: Option<&Bound<'_, PyAny>>,
        mm_lens: Option<&Bound<'_, PyAny>>,
        encoder_lens: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let ids = id_vec(req_ids)?;
        let n = ids.len();
        // Flat tokens with offsets, or (offsets None) one array per prompt: each part is
        // copied once, straight into the vector its request keeps.
        let input = if offsets.is_none() {
            Prompts::Parts(prompt_parts(token_ids, n)?)
        } else {
            Prompts::Flat(
                token_vec(token_ids, "token_ids")?,
                int_vec(offsets, "offsets")?,
            )
        };
        let loras = opt_i64_vec(lora_ids, "lora_ids", n)?;
        let encs = opt_i64_vec(encoder_lens, "encoder_lens", n)?;
        let salts = salt_list(cache_salts, n)?;
        let media = media_lists(n, mm_offsets, mm_hashes, mm_starts, mm_lens)?;
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
            .detached(py, |m| match input {
                Prompts::Flat(tokens, offs) => m.add_requests(new, &tokens, &offs),
                Prompts::Parts(parts) => m.add_requests_owned(new, parts),
            })?
            .py_err()
    }

    fn append_tokens(
        &self,
        py: Python<'_>,
        req_ids: &Bound<'_, PyAny>,
        token_ids: &Bound<'_, PyAny>,
        offsets: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let ids = id_vec(req_ids)?;
        let tokens = token_vec(token_ids, "token_ids")?;
        let offs = int_vec(offsets, "offsets")?;
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

    #[pyo3(signature = (req_ids, num_new_tokens, num_lookahead_tokens, new_step=None))]
    fn allocate_slots<'py>(
        &self,
        py: Python<'py>,
        req_ids: &Bound<'py, PyAny>,
        num_new_tokens: &Bound<'py, PyAny>,
        num_lookahead_tokens: &Bound<'py, PyAny>,
        new_step: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyArray1<bool>>> {
        let n = int_vec(num_new_tokens, "num_new_tokens")?;
        let la = int_vec(num_lookahead_tokens, "num_lookahead_tokens")?;
        let new_step = match new_step {
            None => true,
            Some(b) => bool_arg(b, "new_step")?,
        };
        per_request(py, &self.inner, req_ids, |m, ids| {
            m.allocate_slots(ids, &n, &la, new_step)
        })
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
    fn block_table_into(
        &self,
        py: Python<'_>,
        group: &Bound<'_, PyAny>,
        req_ids: &Bound<'_, PyAny>,
        out: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
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
            .py_err()
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

    /// The elastic arena (None for static pools): sizes, owners (-1: unowned), waste
    /// and the counters of memory moves.
    fn arena_info<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        // Read under the lock, build the dict after it.
        let info = self.inner.with(py, |m| {
            let a = m.arena()?;
            let st = m.elastic_stats();
            let owners: Vec<i64> = (0..a.num_regions())
                .map(|r| a.owner(r).map_or(-1, |g| g as i64))
                .collect();
            Some((
                (
                    a.config().bytes,
                    a.config().region_bytes,
                    a.null_bytes(),
                    a.num_regions(),
                ),
                owners,
                (a.waste_bytes(), a.worst_waste_bytes()),
                (st.grants, st.moves, st.evicted_blocks, st.orphans),
            ))
        })?;
        let Some(((bytes, region, null, regions), owners, (waste, worst), counts)) = info else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        d.set_item("bytes", bytes)?;
        d.set_item("region_bytes", region)?;
        d.set_item("null_bytes", null)?;
        d.set_item("num_regions", regions)?;
        d.set_item("owners", owners)?;
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

/// Chained block hashes of `token_ids` at `block_size` as an `(n, 2)` uint64 array
/// (see `hybridkv_core::prefix_hash` for the algorithm and byte layout).
#[pyfunction]
#[pyo3(signature = (token_ids, block_size, seed=0, parent=None, lora_id=None, cache_salt=None,
    mm_hashes=None, mm_starts=None, mm_lens=None))]
#[allow(clippy::too_many_arguments)]
pub fn hash_token_blocks<'py>(
    py: Python<'py>,
    token_ids: &Bound<'py, PyAny>,
    block_size: i64,
    seed: u64,
    parent: Option<u128>,
    lora_id: Option<i64>,
    cache_salt: Option<&Bound<'py, PyBytes>>,
    mm_hashes: Option<&Bound<'py, PyAny>>,
    mm_starts: Option<&Bound<'py, PyAny>>,
    mm_lens: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArray2<u64>>> {
    if block_size <= 0 {
        return Err(invalid_arg(format!(
            "block_size must be positive, got {block_size}"
        )));
    }
    let tokens = token_vec(token_ids, "token_ids")?;
    if let Some(pos) = tokens.iter().position(|&t| t < 0) {
        return Err(py_error(
            py,
            "InvalidTokenError",
            format!("token id {} at position {pos} is out of range", tokens[pos]),
        ));
    }
    let media = match mm_hashes {
        None => Vec::new(),
        Some(h) => {
            let offs = vec![0i64, hashes(h, "mm_hashes")?.len() as i64].into_pyarray(py);
            media_lists(1, Some(offs.as_any()), Some(h), mm_starts, mm_lens)?
                .pop()
                .unwrap_or_default()
        }
    };
    let extra = ExtraKeys {
        lora_id,
        cache_salt: cache_salt.map(|b| b.as_bytes().to_vec()),
        media,
    };
    let bs = block_size as usize;
    let hs = py.detach(|| core_hash_blocks(&tokens, bs, seed, parent, &extra));
    Ok(hashes_to_py(py, hs.into_iter()))
}
