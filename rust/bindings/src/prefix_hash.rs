//! `hybridkv._core.hash_token_blocks`: the prefix hashes of one token sequence, its
//! arguments checked here (the one validator) and the chain computed by
//! `hybridkv_core::prefix_hash` with the GIL released.

use hybridkv_core::prefix_hash::{hash_token_blocks as core_hash_blocks, ExtraKeys};
use numpy::{IntoPyArray, PyArray2};
use pyo3::prelude::*;

use crate::arrays::{self, hashes, hashes_to_py};
use crate::errors::{invalid_arg, py_error};
use crate::manager::convert::{media_lists, token_vec};
use crate::manager_args;

/// Chained block hashes of `token_ids` at `block_size` as an `(n, 2)` uint64 array
/// (see `hybridkv_core::prefix_hash` for the algorithm and byte layout).
#[pyfunction]
#[pyo3(signature = (token_ids, block_size, seed=None, parent=None, lora_id=None, cache_salt=None,
    mm_hashes=None, mm_starts=None, mm_lens=None, mm_features=None))]
#[allow(clippy::too_many_arguments)]
pub fn hash_token_blocks<'py>(
    py: Python<'py>,
    token_ids: &Bound<'py, PyAny>,
    block_size: &Bound<'py, PyAny>,
    seed: Option<&Bound<'py, PyAny>>,
    parent: Option<&Bound<'py, PyAny>>,
    lora_id: Option<&Bound<'py, PyAny>>,
    cache_salt: Option<&Bound<'py, PyAny>>,
    mm_hashes: Option<&Bound<'py, PyAny>>,
    mm_starts: Option<&Bound<'py, PyAny>>,
    mm_lens: Option<&Bound<'py, PyAny>>,
    mm_features: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArray2<u64>>> {
    use crate::arrays::given;
    let bs = arrays::int_in(block_size, 1, Some(1 << 63), "block_size")? as usize;
    let seed = match given(seed) {
        None => 0,
        Some(s) => arrays::int_in(s, 0, Some(1 << 64), "seed")? as u64,
    };
    let parent = given(parent)
        .map(|p| arrays::int_in(p, 0, None, "parent"))
        .transpose()?;
    let lora_id = given(lora_id)
        .map(|l| arrays::int_in(l, 0, Some(1 << 63), "lora_id").map(|v| v as i64))
        .transpose()?;
    let cache_salt = match given(cache_salt) {
        None => None,
        Some(s) => manager_args::salt(s)?,
    };
    let tokens = token_vec(token_ids, "token_ids")?;
    if let Some(pos) = tokens.iter().position(|&t| t < 0) {
        return Err(py_error(
            py,
            "InvalidTokenError",
            format!("token id {} at position {pos} is out of range", tokens[pos]),
        ));
    }
    let media = match (given(mm_features), given(mm_hashes)) {
        (Some(_), Some(_)) => {
            return Err(invalid_arg("give mm_features or mm_hashes, not both"));
        }
        (Some(f), None) => manager_args::media_items(f)?,
        (None, None) => Vec::new(),
        (None, Some(h)) => {
            let offs = vec![0i64, hashes(h, "mm_hashes")?.len() as i64].into_pyarray(py);
            media_lists(1, Some(offs.as_any()), Some(h), mm_starts, mm_lens)?
                .pop()
                .unwrap_or_default()
        }
    };
    let extra = ExtraKeys {
        lora_id,
        cache_salt,
        media,
    };
    let hs = py.detach(|| core_hash_blocks(&tokens, bs, seed, parent, &extra));
    Ok(hashes_to_py(py, hs.into_iter()))
}
