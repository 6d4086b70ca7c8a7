"""Paged attention over a group's block table: prefill over a cached prefix and decode.

One program handles ``BLOCK_M`` consecutive query tokens of one request and all the
query heads that share one KV head (GQA), so each K/V page is loaded once for all of
them. The queries of a request are the last ``q_len`` tokens of its ``seq_len``-token
context, and their K/V must already be in the cache. The program walks only the pages
its rows can see and keeps an online softmax in fp32.

Masks (``k`` key position, ``p`` query position):

- ``MODE == 0`` full causal: ``k <= p``;
- ``MODE == 1`` sliding window of ``window`` tokens: ``p - window < k <= p``;
- ``MODE == 2`` chunked local attention: ``k <= p`` and ``k // chunk == p // chunk``.

Pages before the first visible one are never visited, and a page whose block-table
entry is the null block 0 is masked out of every load, so it is never read.
"""

# Triton reads a kernel parameter's annotation as a type specialization, so the
# parameters stay unannotated and the jit decorator is untyped.
# mypy: disable-error-code="no-untyped-def,untyped-decorator,misc"

from __future__ import annotations

import triton
import triton.language as tl

from hybridkv.kernels.common import cast_out, request_tokens


@triton.jit
def paged_attention_kernel(
    q_ptr,
    key_cache_ptr,
    value_cache_ptr,
    out_ptr,
    block_table_ptr,
    seq_lens_ptr,
    query_start_loc_ptr,
    scale,
    window,
    chunk_size,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_bt,
    QUERIES_PER_KV: tl.constexpr,
    GROUP_P2: tl.constexpr,
    BLOCK_M: tl.constexpr,
    HEAD_SIZE: tl.constexpr,
    HEAD_P2: tl.constexpr,
    PAGE: tl.constexpr,
    PAGE_P2: tl.constexpr,
    MODE: tl.constexpr,
    DOT_F32: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """One program per (request, ``BLOCK_M`` query tokens, KV head); see the module
    docstring for the masks (``MODE``) and which pages are read."""
    req = tl.program_id(0)
    tile = tl.program_id(1)
    kv_head = tl.program_id(2)

    q_start, q_len = request_tokens(query_start_loc_ptr, req)
    if tile * BLOCK_M < q_len:
        ctx = tl.load(seq_lens_ptr + req) - q_len  # tokens before this step's queries

        # Rows are (query token, head within the KV head's group), token-major.
        rows = tl.arange(0, BLOCK_M * GROUP_P2)
        tok = tile * BLOCK_M + rows // GROUP_P2
        head = kv_head * QUERIES_PER_KV + rows % GROUP_P2
        row_ok = (tok < q_len) & (rows % GROUP_P2 < QUERIES_PER_KV)
        pos = ctx + tok
        d = tl.arange(0, HEAD_P2)
        d_ok = d < HEAD_SIZE

        q_off = (q_start + tok).to(tl.int64) * stride_qt + head * stride_qh
        q = tl.load(q_ptr + q_off[:, None] + d[None, :], mask=row_ok[:, None] & d_ok[None, :])
        if DOT_F32:
            q = q.to(tl.float32)

        first_pos = ctx + tile * BLOCK_M
        last_pos = ctx + tl.minimum((tile + 1) * BLOCK_M, q_len) - 1
        # The first key each row may see; the walk starts at the tile's earliest one.
        if MODE == 1:
            row_lo = pos - window + 1
            lo = tl.maximum(first_pos - window + 1, 0)
        elif MODE == 2:
            row_lo = (pos // chunk_size) * chunk_size
            lo = (first_pos // chunk_size) * chunk_size
        else:
            row_lo = tl.zeros_like(pos)
            lo = 0

        m_i = tl.full([BLOCK_M * GROUP_P2], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M * GROUP_P2], tl.float32)
        acc = tl.zeros([BLOCK_M * GROUP_P2, HEAD_P2], tl.float32)
        s_off = tl.arange(0, PAGE_P2)
        bt_row = block_table_ptr + req.to(tl.int64) * stride_bt
        for page in range(lo // PAGE, last_pos // PAGE + 1):
            block = tl.load(bt_row + page).to(tl.int64)
            kpos = page * PAGE + s_off
            # (A scalar condition is broadcast before '&': the interpreter mishandles bool & scalar.)
            key_ok = (s_off < PAGE) & (kpos <= last_pos) & ((s_off * 0 + block) > 0)
            ld_mask = key_ok[:, None] & d_ok[None, :]
            k_off = block * stride_kb + s_off[:, None] * stride_ks + kv_head * stride_kh
            k = tl.load(key_cache_ptr + k_off + d[None, :], mask=ld_mask, other=0.0)
            if DOT_F32:
                k = k.to(tl.float32)
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
            visible = (
                key_ok[None, :]
                & (kpos[None, :] <= pos[:, None])
                & (kpos[None, :] >= row_lo[:, None])
            )
            s = tl.where(visible, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # A row that has seen no visible key yet keeps m = -inf; shift by 0 then.
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp(s - m_safe[:, None])
            alpha = tl.exp(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            v_off = block * stride_vb + s_off[:, None] * stride_vs + kv_head * stride_vh
            v = tl.load(value_cache_ptr + v_off + d[None, :], mask=ld_mask, other=0.0)
            if DOT_F32:
                v = v.to(tl.float32)
            else:
                p = p.to(v.dtype)
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
            m_i = m_new

        out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
        o_off = (q_start + tok).to(tl.int64) * stride_ot + head * stride_oh
        tl.store(
            out_ptr + o_off[:, None] + d[None, :],
            cast_out(out, out_ptr.dtype.element_ty, INTERPRET),
            mask=row_ok[:, None] & d_ok[None, :],
        )
