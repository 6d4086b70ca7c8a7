"""Launcher for the gated delta net recurrence (decode and prefill)."""

from __future__ import annotations

import math

import torch

from hybridkv.kernels.gated_delta import gated_delta_kernel
from hybridkv.ops._launch import (
    INDEX_DTYPES,
    check_device,
    check_prefill_slots,
    check_shape,
    check_tensor,
    checkpoint_kernel_args,
    interpreted,
    next_pow2,
    optional,
    require,
)


def gated_delta_rule(
    state: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    query_start_loc: torch.Tensor,
    src_slots: torch.Tensor,
    dst_slots: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    use_l2norm: bool = True,
    checkpoint_slots: torch.Tensor | None = None,
    checkpoint_first: torch.Tensor | None = None,
    checkpoint_every: int | None = None,
) -> torch.Tensor:
    """Run the gated delta rule over each request's new tokens; returns ``o``.

    ``state``: ``[num_slots, num_v_heads, head_v_dim, head_k_dim]``; ``q``, ``k``:
    ``[num_tokens, num_k_heads, head_k_dim]``; ``v``: ``[num_tokens, num_v_heads,
    head_v_dim]``; ``a`` (decay input) and ``b`` (beta logit): ``[num_tokens,
    num_v_heads]``; ``A_log``, ``dt_bias``: ``[num_v_heads]``. Request ``r`` owns rows
    ``query_start_loc[r]:query_start_loc[r+1]`` (one row each for decode), starts from
    slot ``src_slots[r]`` (negative: zeros) and leaves its state in ``dst_slots[r]``
    (default: the same slot; negative: not kept). ``scale`` defaults to
    ``head_k_dim ** -0.5``. Optional mid-step checkpoints as in
    :func:`hybridkv.ops.causal_conv1d_prefill`.
    """
    check_tensor("state", state, ndim=4)
    check_tensor("q", q, ndim=3)
    check_tensor("k", k, ndim=3)
    check_tensor("v", v, ndim=3)
    check_tensor("a", a, ndim=2)
    check_tensor("b", b, ndim=2)
    check_tensor("A_log", A_log, ndim=1)
    check_tensor("dt_bias", dt_bias, ndim=1)
    check_tensor("query_start_loc", query_start_loc, ndim=1, dtypes=INDEX_DTYPES)
    t, hk, dk = q.shape
    hv, dv = v.shape[1], v.shape[2]
    check_shape("k", k, q.shape)
    check_shape("v", v, (t, hv, dv))
    check_shape("a", a, (t, hv))
    check_shape("b", b, (t, hv))
    check_shape("A_log", A_log, (hv,))
    check_shape("dt_bias", dt_bias, (hv,))
    check_shape("state", state, (state.shape[0], hv, dv, dk))
    require(hk > 0 and hv % hk == 0, f"num_v_heads {hv} is not a multiple of num_k_heads {hk}")
    lens, dst, has_ckpt = check_prefill_slots(
        *(query_start_loc, t, src_slots, dst_slots, state.shape[0]),
        *(checkpoint_slots, checkpoint_first, checkpoint_every),
    )
    n = lens.shape[0]
    out = torch.empty_like(v)
    check_device(
        gated_delta_kernel,
        *[state, q, k, v, a, b, A_log, dt_bias, query_start_loc, src_slots, dst, out],
        *optional(checkpoint_slots, checkpoint_first),
    )
    if n == 0:
        return out
    block_v = min(32, next_pow2(dv))
    grid = (n, hv, math.ceil(dv / block_v))
    gated_delta_kernel[grid](
        q,
        k,
        v,
        a,
        b,
        A_log,
        dt_bias,
        state,
        out,
        query_start_loc,
        src_slots,
        dst,
        *checkpoint_kernel_args(checkpoint_slots, checkpoint_first, checkpoint_every, dst),
        float(scale if scale is not None else dk**-0.5),
        dk,
        dv,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        a.stride(0),
        b.stride(0),
        out.stride(0),
        out.stride(1),
        state.stride(0),
        state.stride(1),
        state.stride(2),
        V_PER_K=hv // hk,
        L2NORM=use_l2norm,
        HAS_CKPT=has_ckpt,
        BLOCK_V=block_v,
        DK_P2=next_pow2(dk),
        INTERPRET=interpreted(gated_delta_kernel),
    )
    return out


def gated_delta_decode(
    state: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    src_slots: torch.Tensor,
    dst_slots: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    use_l2norm: bool = True,
) -> torch.Tensor:
    """One recurrent step per request: row ``r`` of every input is request ``r``'s token."""
    require(q.dim() == 3, f"q must have 3 dims, got shape {tuple(q.shape)}")
    qsl = torch.arange(q.shape[0] + 1, dtype=torch.int32, device=q.device)
    return gated_delta_rule(
        state,
        q,
        k,
        v,
        a,
        b,
        A_log,
        dt_bias,
        qsl,
        src_slots,
        dst_slots,
        scale=scale,
        use_l2norm=use_l2norm,
    )
