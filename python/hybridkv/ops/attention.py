"""Launcher for paged attention (prefill over a cached prefix, and decode)."""

from __future__ import annotations

import math

import torch

from hybridkv.kernels.paged_attention import paged_attention_kernel
from hybridkv.ops._launch import (
    INDEX_DTYPES,
    check_device,
    check_shape,
    check_tensor,
    interpreted,
    kv_cache_strides,
    next_pow2,
    query_lengths,
    require,
)


def paged_attention(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    *,
    scale: float | None = None,
    sliding_window: int | None = None,
    chunk_size: int | None = None,
    max_query_len: int | None = None,
    out: torch.Tensor | None = None,
    check_indices: bool = True,
) -> torch.Tensor:
    """Attention of new query tokens over their requests' paged K/V.

    ``q``: ``[num_tokens, num_heads, head_size]``, the requests' new tokens back to
    back (request ``r`` owns rows ``query_start_loc[r]:query_start_loc[r+1]``), which are
    the last tokens of its ``seq_lens[r]``-token context; their K/V must already be
    written (:func:`hybridkv.ops.write_kv`). ``block_table``: int32 ``[num_reqs,
    max_blocks]``, column ``j`` holding the block of tokens ``j*block_size ..``; 0 is
    the null block (never read: its tokens count as absent). ``num_heads`` must be a
    multiple of the cache's ``num_kv_heads`` (GQA). At most one of ``sliding_window``
    (a query sees itself and the ``window - 1`` tokens before it) and ``chunk_size``
    (a query sees earlier tokens of its own chunk) is given; neither means full causal.
    ``max_query_len`` (the longest ``q_len``; computed when omitted, which reads
    ``query_start_loc`` back to the host) sizes the launch grid and must not be short.
    Returns ``out`` (allocated like ``q`` when not given).
    """
    check_tensor("q", q, ndim=3)
    check_tensor("key_cache", key_cache, ndim=4)
    check_tensor("value_cache", value_cache, ndim=4)
    check_tensor("block_table", block_table, ndim=2, dtypes=(torch.int32,))
    check_tensor("seq_lens", seq_lens, ndim=1, dtypes=INDEX_DTYPES)
    num_tokens, num_heads, head_size = q.shape
    num_blocks, block_size, num_kv_heads = key_cache.shape[:3]
    check_shape("key_cache", key_cache, (num_blocks, block_size, num_kv_heads, head_size))
    check_shape("value_cache", value_cache, key_cache.shape)
    require(
        key_cache.dtype == q.dtype and value_cache.dtype == q.dtype,
        f"the caches ({key_cache.dtype}, {value_cache.dtype}) must have q's dtype {q.dtype}",
    )
    require(
        num_kv_heads > 0 and num_heads % num_kv_heads == 0,
        f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}",
    )
    num_reqs = seq_lens.shape[0]
    check_shape("query_start_loc", query_start_loc, (num_reqs + 1,))
    require(
        block_table.shape[0] == num_reqs,
        f"block_table has {block_table.shape[0]} rows for {num_reqs} requests",
    )
    require(
        sliding_window is None or chunk_size is None,
        "give sliding_window or chunk_size, not both",
    )
    require(sliding_window is None or sliding_window >= 1, "sliding_window must be >= 1")
    require(chunk_size is None or chunk_size >= 1, "chunk_size must be >= 1")
    if out is None:
        out = torch.empty_like(q)
    else:
        check_tensor("out", out, ndim=3)
        check_shape("out", out, q.shape)
    check_device(
        paged_attention_kernel,
        q,
        key_cache,
        value_cache,
        block_table,
        seq_lens,
        query_start_loc,
        out,
    )
    q_lens = query_lengths(query_start_loc, num_tokens)
    if max_query_len is None or check_indices:
        longest = int(q_lens.max()) if num_reqs else 0
        require(
            max_query_len is None or max_query_len >= longest,
            f"max_query_len {max_query_len} is shorter than a query of {longest} tokens",
        )
        max_query_len = longest if max_query_len is None else max_query_len
    if check_indices and num_reqs:
        require(bool((seq_lens >= q_lens).all()), "a request has more queries than context")
        need = int(seq_lens.max())
        require(
            need <= block_table.shape[1] * block_size,
            f"a context of {need} tokens needs more than the block table's "
            f"{block_table.shape[1]} blocks of {block_size}",
        )
        if block_table.numel():
            require(
                int(block_table.min()) >= 0 and int(block_table.max()) < num_blocks,
                f"block_table holds ids outside the cache's {num_blocks} blocks",
            )
    if num_tokens == 0 or num_reqs == 0:
        return out

    interp = interpreted(paged_attention_kernel)
    group = num_heads // num_kv_heads
    group_p2 = next_pow2(group)
    rows = 64 if max_query_len > 1 else 16
    block_m = max(1, min(next_pow2(max_query_len), rows // group_p2))
    if not interp:
        block_m = max(block_m, 16 // group_p2)  # tl.dot needs >= 16 rows on a GPU
    page_p2 = next_pow2(block_size) if interp else max(16, next_pow2(block_size))
    head_p2 = next_pow2(head_size) if interp else max(16, next_pow2(head_size))
    mode = 0 if sliding_window is None and chunk_size is None else (1 if chunk_size is None else 2)
    grid = (num_reqs, math.ceil(max_query_len / block_m), num_kv_heads)
    paged_attention_kernel[grid](
        q,
        key_cache,
        value_cache,
        out,
        block_table,
        seq_lens,
        query_start_loc,
        float(scale if scale is not None else 1.0 / math.sqrt(head_size)),
        int(sliding_window or 0),
        int(chunk_size or 0),
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        *kv_cache_strides(key_cache, value_cache),
        block_table.stride(0),
        QUERIES_PER_KV=group,
        GROUP_P2=group_p2,
        BLOCK_M=block_m,
        HEAD_SIZE=head_size,
        HEAD_P2=head_p2,
        PAGE=block_size,
        PAGE_P2=page_p2,
        MODE=mode,
        DOT_F32=interp or q.dtype == torch.float32,
        INTERPRET=interp,
    )
    return out
