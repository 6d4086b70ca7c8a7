"""Mamba-2 kernels over per-request state slots: the SSD recurrence (decode step and
chunked prefill scan); the causal conv1d in front of it is :mod:`hybridkv.kernels.conv1d`.

Per head ``h`` with state ``H [head_dim, d_state]``, per token::

    dt  = softplus(dt_raw + dt_bias)          (when DT_SOFTPLUS)
    H   = exp(dt * A) * H + dt * x B^T
    y   = H C + D * x

``B`` and ``C`` are shared by the ``num_heads / n_groups`` heads of a group.

Each request names a source slot (its initial state; negative = start from zeros)
and a destination slot (where its final state goes; negative = keep nothing). They
may be equal, and a mid-step checkpoint may go to the request's own source slot (every
kernel reads a request's source before it writes any of that request's slots). A
destination or checkpoint slot must not be another request's source in the same
launch, nor another request's destination or checkpoint (the launchers refuse both).
"""

# Triton reads a kernel parameter's annotation as a type specialization, so the
# parameters stay unannotated and the jit decorator is untyped.
# mypy: disable-error-code="no-untyped-def,untyped-decorator,misc"

from __future__ import annotations

import triton
import triton.language as tl

from hybridkv.kernels.common import (
    cast_out,
    checkpoint_slot,
    load_state,
    request_tokens,
    softplus,
    store_state,
)


@triton.jit
def selective_state_update_kernel(
    x_ptr,
    dt_ptr,
    a_ptr,
    b_ptr,
    c_ptr,
    d_ptr,
    dt_bias_ptr,
    state_ptr,
    out_ptr,
    src_ptr,
    dst_ptr,
    head_dim,
    d_state,
    stride_xt,
    stride_xh,
    stride_dtt,
    stride_bt,
    stride_bg,
    stride_ct,
    stride_cg,
    stride_ot,
    stride_oh,
    stride_sn,
    stride_sh,
    stride_sp,
    HEADS_PER_GROUP: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_DT_BIAS: tl.constexpr,
    DT_SOFTPLUS: tl.constexpr,
    BLOCK_P: tl.constexpr,
    N_P2: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """Decode: one token per request, one program per (request, head, head_dim tile)."""
    req = tl.program_id(0)
    head = tl.program_id(1)
    p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.arange(0, N_P2)
    p_ok = p < head_dim
    n_ok = n < d_state
    src = tl.load(src_ptr + req).to(tl.int64)
    dst = tl.load(dst_ptr + req).to(tl.int64)
    grp = head // HEADS_PER_GROUP
    t64 = req.to(tl.int64)

    x = tl.load(x_ptr + t64 * stride_xt + head * stride_xh + p, mask=p_ok, other=0.0)
    x = x.to(tl.float32)
    dt = tl.load(dt_ptr + t64 * stride_dtt + head).to(tl.float32)
    if HAS_DT_BIAS:
        dt += tl.load(dt_bias_ptr + head).to(tl.float32)
    if DT_SOFTPLUS:
        dt = softplus(dt)
    a = tl.load(a_ptr + head).to(tl.float32)
    bv = tl.load(b_ptr + t64 * stride_bt + grp * stride_bg + n, mask=n_ok, other=0.0)
    cv = tl.load(c_ptr + t64 * stride_ct + grp * stride_cg + n, mask=n_ok, other=0.0)
    mask2 = p_ok[:, None] & n_ok[None, :]
    s_off = head * stride_sh + p[:, None] * stride_sp + n[None, :]
    h = load_state(state_ptr, src, stride_sn, s_off, mask2, BLOCK_P, N_P2)
    h = h * tl.exp(dt * a) + (dt * x)[:, None] * bv.to(tl.float32)[None, :]
    y = tl.sum(h * cv.to(tl.float32)[None, :], 1)
    if HAS_D:
        y += x * tl.load(d_ptr + head).to(tl.float32)
    store_state(state_ptr, dst, stride_sn, s_off, mask2, h, INTERPRET)
    tl.store(
        out_ptr + t64 * stride_ot + head * stride_oh + p,
        cast_out(y, out_ptr.dtype.element_ty, INTERPRET),
        mask=p_ok,
    )


@triton.jit
def ssd_chunk_scan_kernel(
    x_ptr,
    dt_ptr,
    a_ptr,
    b_ptr,
    c_ptr,
    d_ptr,
    dt_bias_ptr,
    state_ptr,
    out_ptr,
    query_start_loc_ptr,
    src_ptr,
    dst_ptr,
    ckpt_slots_ptr,
    ckpt_first_ptr,
    ckpt_every,
    ckpt_cols,
    stride_ckpt,
    head_dim,
    d_state,
    stride_xt,
    stride_xh,
    stride_dtt,
    stride_bt,
    stride_bg,
    stride_ct,
    stride_cg,
    stride_ot,
    stride_oh,
    stride_sn,
    stride_sh,
    stride_sp,
    HEADS_PER_GROUP: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_DT_BIAS: tl.constexpr,
    DT_SOFTPLUS: tl.constexpr,
    HAS_CKPT: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK_P: tl.constexpr,
    N_P2: tl.constexpr,
    DOT_F32: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """Prefill: the chunked (SSD) form of the recurrence over each request's new tokens.

    Within a chunk of ``CHUNK`` tokens, with ``cs`` the running sum of ``dt * A``::

        y_t   = exp(cs_t) C_t H0  +  sum_{s<=t} exp(cs_t - cs_s) (C_t · B_s) dt_s x_s
        H_end = exp(cs_T) H0      +  sum_s exp(cs_T - cs_s) dt_s x_s B_s^T

    so each chunk is three small matrix products plus the carried state ``H0``. Tokens
    outside the request get ``dt = 0`` (decay 1, no input), leaving the state as is.

    With ``HAS_CKPT`` the state after ``ckpt_first[r] + j * ckpt_every`` new tokens
    (each strictly inside the step) also goes to slot ``ckpt_slots[r, j]`` (negative:
    skipped). The chunk grid is shifted so chunks end on those points, which needs
    ``CHUNK`` to divide ``ckpt_every``.
    """
    req = tl.program_id(0)
    head = tl.program_id(1)
    p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.arange(0, N_P2)
    tt = tl.arange(0, CHUNK)
    p_ok = p < head_dim
    n_ok = n < d_state
    start, length = request_tokens(query_start_loc_ptr, req)
    src = tl.load(src_ptr + req).to(tl.int64)
    dst = tl.load(dst_ptr + req).to(tl.int64)
    grp = head // HEADS_PER_GROUP
    a = tl.load(a_ptr + head).to(tl.float32)
    if HAS_DT_BIAS:
        dt_bias = tl.load(dt_bias_ptr + head).to(tl.float32)
    if HAS_D:
        dskip = tl.load(d_ptr + head).to(tl.float32)

    mask2 = p_ok[:, None] & n_ok[None, :]
    s_off = head * stride_sh + p[:, None] * stride_sp + n[None, :]
    h = load_state(state_ptr, src, stride_sn, s_off, mask2, BLOCK_P, N_P2)
    causal = tt[:, None] >= tt[None, :]
    shift = 0
    if HAS_CKPT:
        first = tl.load(ckpt_first_ptr + req)
        ckpt_row = ckpt_slots_ptr + req.to(tl.int64) * stride_ckpt
        shift = (CHUNK - first % CHUNK) % CHUNK

    for c0 in range(-shift, length, CHUNK):
        t = c0 + tt
        t_ok = (t >= 0) & (t < length)
        row = (start + t).to(tl.int64)
        dt = tl.load(dt_ptr + row * stride_dtt + head, mask=t_ok, other=0.0).to(tl.float32)
        if HAS_DT_BIAS:
            dt += dt_bias
        if DT_SOFTPLUS:
            dt = softplus(dt)
        dt = tl.where(t_ok, dt, 0.0)
        cs = tl.cumsum(dt * a, 0)
        x = tl.load(
            x_ptr + row[:, None] * stride_xt + head * stride_xh + p[None, :],
            mask=t_ok[:, None] & p_ok[None, :],
            other=0.0,
        )
        bm = tl.load(
            b_ptr + row[:, None] * stride_bt + grp * stride_bg + n[None, :],
            mask=t_ok[:, None] & n_ok[None, :],
            other=0.0,
        )
        cm = tl.load(
            c_ptr + row[:, None] * stride_ct + grp * stride_cg + n[None, :],
            mask=t_ok[:, None] & n_ok[None, :],
            other=0.0,
        )
        xf = x.to(tl.float32)
        if DOT_F32:
            x = xf
            bm = bm.to(tl.float32)
            cm = cm.to(tl.float32)
        # Intra-chunk: masked decay-weighted (C B^T), then times dt-scaled inputs.
        cb = tl.dot(cm, tl.trans(bm), input_precision="ieee")
        decay = tl.exp(tl.where(causal, cs[:, None] - cs[None, :], float("-inf")))
        mix = cb * decay * dt[None, :]
        y = tl.dot(mix.to(x.dtype), x, input_precision="ieee")
        # Inter-chunk: the carried state seen through each token's C, decayed.
        y += tl.dot(cm.to(tl.float32), tl.trans(h), input_precision="ieee") * tl.exp(cs)[:, None]
        if HAS_D:
            y += xf * dskip
        tl.store(
            out_ptr + row[:, None] * stride_ot + head * stride_oh + p[None, :],
            cast_out(y, out_ptr.dtype.element_ty, INTERPRET),
            mask=t_ok[:, None] & p_ok[None, :],
        )
        cs_end = tl.sum(tl.where(tt == CHUNK - 1, cs, 0.0), 0)
        w = tl.exp(cs_end - cs) * dt
        h = h * tl.exp(cs_end) + tl.dot(
            tl.trans(xf * w[:, None]), bm.to(tl.float32), input_precision="ieee"
        )
        if HAS_CKPT:
            # c0 + CHUNK: the new tokens consumed so far.
            slot = checkpoint_slot(ckpt_row, c0 + CHUNK, length, first, ckpt_every, ckpt_cols)
            store_state(state_ptr, slot, stride_sn, s_off, mask2, h, INTERPRET)
    store_state(state_ptr, dst, stride_sn, s_off, mask2, h, INTERPRET)
