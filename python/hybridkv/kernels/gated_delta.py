"""Gated delta net: the recurrence over per-request state slots, decode and prefill.

Per value head, with state ``S [head_v_dim, head_k_dim]`` and per token::

    q, k  = l2norm(q), l2norm(k);  q *= scale
    alpha = exp(-exp(A_log) * softplus(a + dt_bias));  beta = sigmoid(b)
    S     = alpha * S (I - beta k k^T) + beta v k^T
          = alpha * S + beta (v - alpha * S k) k^T
    o     = S q

Each row of ``S`` evolves on its own (``(S k)_i`` only needs row ``i``), so programs
split the value dimension. Value head ``h`` reads key head ``h // (HV / HK)``.
A request reads its source slot (negative = zeros) and writes its destination slot
(negative = keep nothing); a destination must not be another request's source. With
``HAS_CKPT`` the state after ``ckpt_first[r] + j * ckpt_every`` new tokens (strictly
inside the step) also goes to slot ``ckpt_slots[r, j]`` (negative: skipped).
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
def gated_delta_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    a_ptr,
    b_ptr,
    a_log_ptr,
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
    scale,
    head_k_dim,
    head_v_dim,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_at,
    stride_bt,
    stride_ot,
    stride_oh,
    stride_sn,
    stride_sh,
    stride_sv,
    V_PER_K: tl.constexpr,
    L2NORM: tl.constexpr,
    HAS_CKPT: tl.constexpr,
    BLOCK_V: tl.constexpr,
    DK_P2: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """One program per (request, value head, ``BLOCK_V`` rows of ``S``): the request's
    new tokens in order, from its source state to its destination (and checkpoints)."""
    req = tl.program_id(0)
    head = tl.program_id(1)
    kh = head // V_PER_K
    iv = tl.program_id(2) * BLOCK_V + tl.arange(0, BLOCK_V)
    ik = tl.arange(0, DK_P2)
    v_ok = iv < head_v_dim
    k_ok = ik < head_k_dim
    start, length = request_tokens(query_start_loc_ptr, req)
    src = tl.load(src_ptr + req).to(tl.int64)
    dst = tl.load(dst_ptr + req).to(tl.int64)
    neg_a = -tl.exp(tl.load(a_log_ptr + head).to(tl.float32))
    dt_bias = tl.load(dt_bias_ptr + head).to(tl.float32)

    mask2 = v_ok[:, None] & k_ok[None, :]
    s_off = head * stride_sh + iv[:, None] * stride_sv + ik[None, :]
    s = load_state(state_ptr, src, stride_sn, s_off, mask2, BLOCK_V, DK_P2)
    first = 0
    if HAS_CKPT:
        first = tl.load(ckpt_first_ptr + req)
        ckpt_row = ckpt_slots_ptr + req.to(tl.int64) * stride_ckpt

    for i in range(length):
        t = (start + i).to(tl.int64)
        q = tl.load(q_ptr + t * stride_qt + kh * stride_qh + ik, mask=k_ok, other=0.0)
        k = tl.load(k_ptr + t * stride_kt + kh * stride_kh + ik, mask=k_ok, other=0.0)
        q = q.to(tl.float32)
        k = k.to(tl.float32)
        if L2NORM:
            q = q / tl.sqrt(tl.sum(q * q, 0) + 1e-6)
            k = k / tl.sqrt(tl.sum(k * k, 0) + 1e-6)
        q = q * scale
        v = tl.load(v_ptr + t * stride_vt + head * stride_vh + iv, mask=v_ok, other=0.0)
        a = tl.load(a_ptr + t * stride_at + head).to(tl.float32)
        b = tl.load(b_ptr + t * stride_bt + head).to(tl.float32)
        alpha = tl.exp(neg_a * softplus(a + dt_bias))
        beta = 1.0 / (1.0 + tl.exp(-b))
        s = s * alpha
        pred = tl.sum(s * k[None, :], 1)
        s += (beta * (v.to(tl.float32) - pred))[:, None] * k[None, :]
        o = tl.sum(s * q[None, :], 1)
        tl.store(
            out_ptr + t * stride_ot + head * stride_oh + iv,
            cast_out(o, out_ptr.dtype.element_ty, INTERPRET),
            mask=v_ok,
        )
        if HAS_CKPT:
            slot = checkpoint_slot(ckpt_row, i + 1, length, first, ckpt_every, ckpt_cols)
            store_state(state_ptr, slot, stride_sn, s_off, mask2, s, INTERPRET)
    store_state(state_ptr, dst, stride_sn, s_off, mask2, s, INTERPRET)
