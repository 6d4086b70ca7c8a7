//! The argument forms `hybridkv.KVCacheManager` documents, parsed and checked here, once:
//! the Python class hands its arguments over untouched. A plan's groups and arena are
//! read by attribute; request ids, counts and positions are integer array-likes (a
//! scalar is a batch of one, or applies to every request); prompts are one flat token
//! array with offsets or a list of per-request arrays; LoRA ids, cache salts and
//! multimodal items are per-request lists. Every refusal is an `InvalidArgumentError`
//! (`InvalidTokenError` for a token outside int32) naming the argument and, where
//! there is one, the bad value; nothing is refused after the core has been called, so
//! a refused call changes nothing.

use hybridkv_core::prefix_hash::MediaItem;
use hybridkv_core::{ArenaConfig, CheckpointPolicy, GroupConfig, GroupKind};
use numpy::{PyArray1, PyArrayMethods, PyUntypedArray};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};

use crate::arrays::{
    int_arg, int_batch, int_vec, is_int, is_scalar, is_sequence, items, repr, type_name,
};
use crate::errors::{invalid_arg, py_error, IntoPy};

/// Kinds the manager gives a pool (encoder-only layers have no KV cache).
const MANAGED_KINDS: [&str; 7] = [
    "full_attention",
    "mla",
    "sparse_mla",
    "sliding_window",
    "chunked_local",
    "state",
    "cross_attention",
];

/// Request ids (`req_ids`): int64 array-likes, a scalar is a batch of one.
pub fn request_ids(obj: &Bound<'_, PyAny>) -> PyResult<Vec<i64>> {
    int_batch(obj, "request ids")
}

/// One value per request: `None` is zeros, a scalar applies to all `n`.
pub fn per_request(obj: Option<&Bound<'_, PyAny>>, n: usize, what: &str) -> PyResult<Vec<i64>> {
    match obj {
        None => Ok(vec![0; n]),
        Some(o) if o.is_none() => Ok(vec![0; n]),
        Some(o) if is_scalar(o)? => Ok(vec![int_arg(o, what)?; n]),
        Some(o) => int_vec(o, what),
    }
}

/// A per-request sequence (or array) of exactly `n` entries.
fn per_request_list<'py>(
    obj: &Bound<'py, PyAny>,
    n: usize,
    what: &str,
) -> PyResult<Vec<Bound<'py, PyAny>>> {
    if !(is_sequence(obj) || obj.cast::<PyUntypedArray>().is_ok()) {
        return Err(invalid_arg(format!(
            "{what} must be a sequence, got {}",
            type_name(obj)
        )));
    }
    let out = items(obj).map_err(|_| invalid_arg(format!("{what} must be a sequence")))?;
    if out.len() != n {
        return Err(invalid_arg(format!(
            "{what} has {} entries for {n} requests",
            out.len()
        )));
    }
    Ok(out)
}

/// Append `values` to `out` as int32 token ids; `at`: the position of `out[0]` in the
/// whole batch (errors name a token's position as if the prompts were concatenated).
fn push_tokens(
    out: &mut Vec<i32>,
    at: usize,
    obj: &Bound<'_, PyAny>,
    values: Vec<i64>,
) -> PyResult<()> {
    out.reserve(values.len());
    for t in values {
        match i32::try_from(t) {
            Ok(x) => out.push(x),
            Err(_) => {
                return Err(py_error(
                    obj.py(),
                    "InvalidTokenError",
                    format!(
                        "token id {t} at position {} is out of range",
                        at + out.len()
                    ),
                ))
            }
        }
    }
    Ok(())
}

/// Prompts as the caller gave them: flat with offsets, or one vector per request
/// (each copied once from its array, moved into its request as it is).
pub enum Ragged {
    Flat { tokens: Vec<i32>, offsets: Vec<i64> },
    Parts(Vec<Vec<i32>>),
}

/// Either prompt form: `token_ids` flat with `offsets` (`n + 1` of them), or, with
/// `offsets` None, a list of per-request 1-D arrays (kept apart: no concatenation).
pub fn ragged_prompts(
    token_ids: &Bound<'_, PyAny>,
    offsets: Option<&Bound<'_, PyAny>>,
    flat: impl FnOnce(&Bound<'_, PyAny>) -> PyResult<Vec<i32>>,
) -> PyResult<Ragged> {
    if let Some(offs) = offsets.filter(|o| !o.is_none()) {
        return Ok(Ragged::Flat {
            tokens: flat(token_ids)?,
            offsets: int_batch(offs, "offsets")?,
        });
    }
    if token_ids.cast::<PyUntypedArray>().is_ok() {
        return Err(invalid_arg(
            "a flat token array needs offsets (length n + 1)",
        ));
    }
    if !is_sequence(token_ids) {
        return Err(invalid_arg(
            "token_ids must be a flat array with offsets or a list of arrays",
        ));
    }
    let parts = items(token_ids)?;
    let mut out = Vec::with_capacity(parts.len());
    let mut at = 0usize;
    for part in &parts {
        let mut v = Vec::new();
        if let Ok(a) = part.cast::<PyArray1<i32>>() {
            let ro = a.try_readonly().map_err(|_| {
                invalid_arg("token ids: the array is being written elsewhere and cannot be read")
            })?;
            match ro.as_slice() {
                Ok(s) => v.extend_from_slice(s),
                Err(_) => v.extend(ro.as_array().iter()),
            }
        } else {
            push_tokens(&mut v, at, part, int_batch(part, "token ids")?)?;
        }
        at += v.len();
        out.push(v);
    }
    Ok(Ragged::Parts(out))
}

/// Flat tokens and offsets from either prompt form (`ragged_prompts`, concatenated).
pub fn ragged_tokens(
    token_ids: &Bound<'_, PyAny>,
    offsets: Option<&Bound<'_, PyAny>>,
    flat: impl FnOnce(&Bound<'_, PyAny>) -> PyResult<Vec<i32>>,
) -> PyResult<(Vec<i32>, Vec<i64>)> {
    match ragged_prompts(token_ids, offsets, flat)? {
        Ragged::Flat { tokens, offsets } => Ok((tokens, offsets)),
        Ragged::Parts(parts) => {
            let mut tokens = Vec::with_capacity(parts.iter().map(Vec::len).sum());
            let mut offs = Vec::with_capacity(parts.len() + 1);
            offs.push(0i64);
            for p in &parts {
                tokens.extend_from_slice(p);
                offs.push(tokens.len() as i64);
            }
            Ok((tokens, offs))
        }
    }
}

/// LoRA ids per request (`-1`: none), or None when not given.
pub fn lora_ids(obj: Option<&Bound<'_, PyAny>>, n: usize) -> PyResult<Option<Vec<i64>>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    per_request_list(obj, n, "lora_ids")?
        .iter()
        .map(|x| {
            if x.is_none() {
                return Ok(-1);
            }
            match is_int(x).then(|| x.extract::<i64>().ok()).flatten() {
                Some(v) if v >= 0 => Ok(v),
                _ => Err(invalid_arg(format!(
                    "LoRA ids must be non-negative int64 (None for no LoRA), got {}",
                    repr(x)
                ))),
            }
        })
        .collect::<PyResult<Vec<i64>>>()
        .map(Some)
}

/// Cache salts per request: bytes, str (UTF-8 encoded) or None.
pub fn cache_salts(obj: Option<&Bound<'_, PyAny>>, n: usize) -> PyResult<Vec<Option<Vec<u8>>>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(vec![None; n]);
    };
    per_request_list(obj, n, "cache_salts")?
        .iter()
        .map(salt)
        .collect()
}

/// One cache salt: bytes, str (UTF-8 encoded) or None.
pub fn salt(s: &Bound<'_, PyAny>) -> PyResult<Option<Vec<u8>>> {
    if s.is_none() {
        Ok(None)
    } else if let Ok(b) = s.cast::<PyBytes>() {
        Ok(Some(b.as_bytes().to_vec()))
    } else if let Ok(t) = s.cast::<PyString>() {
        t.to_str()
            .map(|t| Some(t.as_bytes().to_vec()))
            .map_err(|_| invalid_arg(format!("cache salt {} is not valid UTF-8 text", repr(s))))
    } else {
        Err(invalid_arg(format!(
            "cache salt must be str, bytes or None, got {}",
            type_name(s)
        )))
    }
}

/// The multimodal items of one sequence: a sequence of `(hash, start, length)`.
pub fn media_items(obj: &Bound<'_, PyAny>) -> PyResult<Vec<MediaItem>> {
    if !(is_sequence(obj) || obj.cast::<PyUntypedArray>().is_ok()) {
        return Err(invalid_arg(format!(
            "multimodal items must be a sequence of (hash, start, length), got {}",
            repr(obj)
        )));
    }
    items(obj)?.iter().map(media_item).collect()
}

/// One multimodal item `(content hash, start, length)`: ints, the hash below 2**128,
/// start below 2**63, length below 2**32.
fn media_item(item: &Bound<'_, PyAny>) -> PyResult<MediaItem> {
    let shape_err = || {
        invalid_arg(format!(
            "multimodal item {} must be (hash, start, length)",
            repr(item)
        ))
    };
    if item.is_instance_of::<PyString>() || item.is_instance_of::<PyBytes>() {
        return Err(shape_err());
    }
    let fields = item
        .try_iter()
        .and_then(|it| it.collect::<PyResult<Vec<_>>>())
        .map_err(|_| shape_err())?;
    let [h, s, n] = fields.as_slice() else {
        return Err(shape_err());
    };
    if !(is_int(h) && is_int(s) && is_int(n)) {
        return Err(shape_err());
    }
    let hash: u128 = h.extract().map_err(|_| {
        invalid_arg(format!(
            "multimodal hash {} is not a 128-bit unsigned value",
            repr(h)
        ))
    })?;
    let negative = |x: &Bound<'_, PyAny>| x.lt(0).unwrap_or(true);
    if negative(s) || negative(n) {
        return Err(invalid_arg(format!(
            "multimodal item {} has a negative start or length",
            repr(item)
        )));
    }
    let too_large = || {
        invalid_arg(format!(
            "multimodal item {}: start or length is too large",
            repr(item)
        ))
    };
    let start: i64 = s.extract().map_err(|_| too_large())?;
    let len: u32 = n.extract().map_err(|_| too_large())?;
    Ok(MediaItem { hash, start, len })
}

/// Multimodal items per request (`mm_features`: per request None or a sequence of
/// `(hash, start, length)`).
pub fn media_features(obj: &Bound<'_, PyAny>, n: usize) -> PyResult<Vec<Vec<MediaItem>>> {
    per_request_list(obj, n, "mm_features")?
        .iter()
        .map(|m| {
            if m.is_none() {
                return Ok(Vec::new());
            }
            if m.is_instance_of::<PyString>() || m.is_instance_of::<PyBytes>() {
                return Err(invalid_arg(format!(
                    "mm_features entries must be sequences of items or None, got {}",
                    repr(m)
                )));
            }
            let entries = items(m).map_err(|_| {
                invalid_arg(format!(
                    "mm_features entries must be sequences of items or None, got {}",
                    repr(m)
                ))
            })?;
            entries.iter().map(media_item).collect()
        })
        .collect()
}

fn attr<'py>(obj: &Bound<'py, PyAny>, name: &str, what: &str) -> PyResult<Bound<'py, PyAny>> {
    obj.getattr(name)
        .map_err(|_| invalid_arg(format!("{what} has no {name}")))
}

/// One group from a plan's group (attributes `kind`, `block_size`, `num_blocks`,
/// `window`, `chunk_size`, `max_encoder_len`) or a `(kind, block_size, num_blocks,
/// param)` tuple.
fn group_config(i: usize, g: &Bound<'_, PyAny>) -> PyResult<GroupConfig> {
    let at = format!("group {i}");
    let (kind_obj, bs, nb, param) = if let Ok(t) = g.cast::<PyTuple>() {
        let [k, bs, nb, p] = t.iter().collect::<Vec<_>>().try_into().map_err(|_| {
            invalid_arg(format!(
                "{at}: a tuple group is (kind, block_size, num_blocks, param)"
            ))
        })?;
        (k, bs, nb, Some(p))
    } else {
        (
            attr(g, "kind", &at)?,
            attr(g, "block_size", &at)?,
            attr(g, "num_blocks", &at)?,
            None,
        )
    };
    let kind = kind_obj
        .extract::<String>()
        .ok()
        .filter(|k| MANAGED_KINDS.contains(&k.as_str()))
        .ok_or_else(|| {
            invalid_arg(format!(
                "{at}: kind {} has no pool (expected one of {})",
                repr(&kind_obj),
                MANAGED_KINDS.join(", ")
            ))
        })?;
    let field = match kind.as_str() {
        "sliding_window" => Some("window"),
        "chunked_local" => Some("chunk_size"),
        "cross_attention" => Some("max_encoder_len"),
        _ => None,
    };
    let param = match (param, field) {
        (Some(p), _) => int_arg(&p, &format!("{at}: parameter"))?,
        (None, None) => 0,
        (None, Some(name)) => {
            let p = attr(g, name, &at)?;
            if p.is_none() {
                return Err(invalid_arg(format!("{at}: a {kind} group needs {name}")));
            }
            int_arg(&p, &format!("{at}: {name}"))?
        }
    };
    let bs = int_arg(&bs, &format!("{at}: block_size"))?;
    let nb = int_arg(&nb, &format!("{at}: num_blocks"))?;
    if bs <= 0 || nb <= 0 || param < 0 {
        return Err(invalid_arg(format!(
            "{at}: block_size {bs} and num_blocks {nb} must be positive, parameter {param} non-negative"
        )));
    }
    Ok(GroupConfig {
        kind: GroupKind::from_name(&kind, param as usize).py_err()?,
        block_size: bs as usize,
        num_blocks: nb as usize,
    })
}

/// Every group of a plan (`plan.groups`).
pub fn group_configs(groups: &Bound<'_, PyAny>) -> PyResult<Vec<GroupConfig>> {
    if !is_sequence(groups) {
        return Err(invalid_arg(format!(
            "groups must be a sequence of groups, got {}",
            type_name(groups)
        )));
    }
    items(groups)?
        .iter()
        .enumerate()
        .map(|(i, g)| group_config(i, g))
        .collect()
}

fn u64_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<u64> {
    if !is_int(obj) {
        return Err(invalid_arg(format!(
            "{what} must be a non-negative int, got {}",
            repr(obj)
        )));
    }
    obj.extract().map_err(|_| {
        invalid_arg(format!(
            "{what} must be a 64-bit unsigned int, got {}",
            repr(obj)
        ))
    })
}

fn u64_list(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<u64>> {
    let list = items(obj).map_err(|_| invalid_arg(format!("{what} must be a sequence")))?;
    list.iter().map(|x| u64_arg(x, what)).collect()
}

/// Per group, blocks of `set_floor_needs` (non-negative ints, a sequence or array).
pub fn floor_needs(obj: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
    u64_list(obj, "floor needs")?
        .into_iter()
        .map(|x| {
            usize::try_from(x).map_err(|_| invalid_arg(format!("floor needs: {x} is out of range")))
        })
        .collect()
}

/// `pool_of` of static pools or an elastic arena (per group, its pool), or None /
/// empty: one pool per group (an arena: one per page class).
pub fn pool_of(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<usize>> {
    let Some(o) = obj.filter(|o| !o.is_none()) else {
        return Ok(Vec::new());
    };
    u64_list(o, "pool_of")?
        .into_iter()
        .map(|p| {
            usize::try_from(p)
                .ok()
                .filter(|&p| p < u32::MAX as usize)
                .ok_or_else(|| invalid_arg(format!("pool_of: pool {p} is out of range")))
        })
        .collect()
}

/// An elastic plan's arena (`plan.arena`: `memory_bytes`, `region_bytes`,
/// `null_bytes`, `page_bytes`, `floor_blocks`), or None for static pools.
pub fn arena_config(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<ArenaConfig>> {
    let Some(a) = obj.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    let field = |name: &str| attr(a, name, "arena");
    Ok(Some(ArenaConfig {
        bytes: u64_arg(&field("memory_bytes")?, "arena memory_bytes")?,
        region_bytes: u64_arg(&field("region_bytes")?, "arena region_bytes")?,
        null_bytes: u64_arg(&field("null_bytes")?, "arena null_bytes")?,
        page_bytes: u64_list(&field("page_bytes")?, "arena page_bytes")?,
        floor_blocks: u64_list(&field("floor_blocks")?, "arena floor_blocks")?
            .into_iter()
            .map(|f| f as usize)
            .collect(),
    }))
}

/// `hash_seed`: an int in `[0, 2**64)`.
pub fn hash_seed(obj: &Bound<'_, PyAny>) -> PyResult<u64> {
    match is_int(obj).then(|| obj.extract::<u64>().ok()).flatten() {
        Some(v) => Ok(v),
        None => Err(invalid_arg(format!(
            "hash_seed must be a 64-bit unsigned int, got {}",
            repr(obj)
        ))),
    }
}

/// `vocab_size`: None or an int in `(0, 2**64)`.
pub fn vocab_size(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<u64>> {
    let Some(v) = obj.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    match is_int(v).then(|| v.extract::<u64>().ok()).flatten() {
        Some(x) if x > 0 => Ok(Some(x)),
        _ => Err(invalid_arg(format!(
            "vocab_size must be a positive int, got {}",
            repr(v)
        ))),
    }
}

/// `checkpoint_policy`: `"reuse"` or `"lru"`; None picks the default (`"lru"` with a
/// shared pool, the only policy it supports, else `"reuse"`).
pub fn checkpoint_policy(
    obj: Option<&Bound<'_, PyAny>>,
    shared_pool: bool,
) -> PyResult<CheckpointPolicy> {
    match obj.filter(|o| !o.is_none()) {
        None if shared_pool => Ok(CheckpointPolicy::Lru),
        None => Ok(CheckpointPolicy::Reuse),
        Some(p) => match p.extract::<String>() {
            Ok(s) => CheckpointPolicy::parse(&s).py_err(),
            Err(_) => Err(invalid_arg(format!(
                "checkpoint_policy must be 'reuse' or 'lru', got {}",
                repr(p)
            ))),
        },
    }
}
