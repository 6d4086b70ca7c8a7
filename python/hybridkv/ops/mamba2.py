"""Launchers for the Mamba-2 kernels: causal conv1d (decode, prefill) and the SSD scan."""

from __future__ import annotations

import math

import torch

from hybridkv.kernels.mamba2 import (
    conv1d_state_kernel,
    conv1d_update_kernel,
    conv1d_varlen_kernel,
    selective_state_update_kernel,
    ssd_chunk_scan_kernel,
)
from hybridkv.ops._launch import (
    check_checkpoints,
    check_device,
    check_shape,
    check_slots,
    check_tensor,
    interpreted,
    next_pow2,
    query_lengths,
    require,
)


def _optional(*tensors: torch.Tensor | None) -> list[torch.Tensor]:
    return [t for t in tensors if t is not None]


def _activation(activation: str | None) -> bool:
    require(activation in (None, "silu"), f"activation must be None or 'silu', got {activation!r}")
    return activation == "silu"


def _conv_common(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    src_slots: torch.Tensor,
    dst_slots: torch.Tensor | None,
    num_reqs: int,
) -> tuple[int, int, torch.Tensor]:
    check_tensor("x", x, ndim=2)
    check_tensor("conv_state", conv_state, ndim=3)
    check_tensor("weight", weight, ndim=2)
    conv_dim = x.shape[1]
    kernel = weight.shape[1]
    require(kernel >= 2, f"the conv kernel width must be >= 2, got {kernel}")
    check_shape("weight", weight, (conv_dim, kernel))
    check_shape("conv_state", conv_state, (conv_state.shape[0], kernel - 1, conv_dim))
    if bias is not None:
        check_tensor("bias", bias, ndim=1)
        check_shape("bias", bias, (conv_dim,))
    dst = src_slots if dst_slots is None else dst_slots
    check_slots("src_slots", src_slots, num_reqs, conv_state.shape[0])
    check_slots("dst_slots", dst, num_reqs, conv_state.shape[0])
    return conv_dim, kernel, dst


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    src_slots: torch.Tensor,
    dst_slots: torch.Tensor | None = None,
    *,
    activation: str | None = "silu",
) -> torch.Tensor:
    """Decode step of the depthwise causal conv: one new input row per request.

    ``x``: ``[num_reqs, conv_dim]``; ``conv_state``: ``[num_slots, width - 1, conv_dim]``,
    the last ``width - 1`` inputs, oldest first; ``weight``: ``[conv_dim, width]``.
    Request ``r`` reads slot ``src_slots[r]`` (negative: zeros) and leaves its shifted
    state in ``dst_slots[r]`` (default: the same slot; negative: not kept).
    """
    check_tensor("x", x, ndim=2)
    n = x.shape[0]
    conv_dim, kernel, dst = _conv_common(x, conv_state, weight, bias, src_slots, dst_slots, n)
    out = torch.empty_like(x)
    tensors = [x, conv_state, weight, src_slots, dst, out]
    check_device(conv1d_update_kernel, *(tensors + ([bias] if bias is not None else [])))
    if n == 0:
        return out
    block_c = min(256, next_pow2(conv_dim))
    conv1d_update_kernel[(n, math.ceil(conv_dim / block_c))](
        x,
        conv_state,
        weight,
        bias if bias is not None else x,
        out,
        src_slots,
        dst,
        conv_dim,
        x.stride(0),
        out.stride(0),
        conv_state.stride(0),
        conv_state.stride(1),
        weight.stride(0),
        KERNEL=kernel,
        HAS_BIAS=bias is not None,
        SILU=_activation(activation),
        BLOCK_C=block_c,
        INTERPRET=interpreted(conv1d_update_kernel),
    )
    return out


def causal_conv1d_prefill(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    query_start_loc: torch.Tensor,
    src_slots: torch.Tensor,
    dst_slots: torch.Tensor | None = None,
    *,
    activation: str | None = "silu",
    max_query_len: int | None = None,
    checkpoint_slots: torch.Tensor | None = None,
    checkpoint_first: torch.Tensor | None = None,
    checkpoint_every: int | None = None,
) -> torch.Tensor:
    """Causal conv over each request's new tokens, continuing from its state slot.

    ``x``: ``[num_tokens, conv_dim]``, request ``r`` owning rows
    ``query_start_loc[r]:query_start_loc[r+1]``; the inputs before them come from slot
    ``src_slots[r]`` (negative: zeros, a fresh sequence). The last ``width - 1`` inputs
    go to ``dst_slots[r]`` (default: the same slot; negative: not kept). Optional
    checkpoints (``mamba_cache_mode="all"``): the state after ``checkpoint_first[r] +
    j * checkpoint_every`` new tokens, when strictly inside the step, also goes to
    ``checkpoint_slots[r, j]`` (negative: skipped); those slots must be no request's
    source.
    """
    check_tensor("x", x, ndim=2)
    lens = query_lengths(query_start_loc, x.shape[0])
    n = query_start_loc.shape[0] - 1
    conv_dim, kernel, dst = _conv_common(x, conv_state, weight, bias, src_slots, dst_slots, n)
    has_ckpt = check_checkpoints(
        checkpoint_slots, checkpoint_first, checkpoint_every, n, conv_state.shape[0]
    )
    out = torch.empty_like(x)
    tensors = [x, conv_state, weight, query_start_loc, src_slots, dst, out]
    tensors += _optional(bias, checkpoint_slots, checkpoint_first)
    check_device(conv1d_varlen_kernel, *tensors)
    if n == 0:
        return out
    if max_query_len is None:
        max_query_len = int(lens.max())
    interp = interpreted(conv1d_varlen_kernel)
    block_c = min(128, next_pow2(conv_dim))
    block_t = min(64, next_pow2(max(max_query_len, 1)))
    grid = (n, max(1, math.ceil(max_query_len / block_t)), math.ceil(conv_dim / block_c))
    conv1d_varlen_kernel[grid](
        x,
        conv_state,
        weight,
        bias if bias is not None else x,
        out,
        query_start_loc,
        src_slots,
        conv_dim,
        x.stride(0),
        out.stride(0),
        conv_state.stride(0),
        conv_state.stride(1),
        weight.stride(0),
        KERNEL=kernel,
        HAS_BIAS=bias is not None,
        SILU=_activation(activation),
        BLOCK_T=block_t,
        BLOCK_C=block_c,
        INTERPRET=interp,
    )
    # Later launches, so that no program overwrites a state another one still reads:
    # checkpoints first (their slots are nobody's source), the final states last.
    launches: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    if has_ckpt:
        assert checkpoint_slots is not None and checkpoint_first is not None
        assert checkpoint_every is not None
        for j in range(checkpoint_slots.shape[1]):
            ends = checkpoint_first + j * checkpoint_every
            inside = ends < lens.to(ends.dtype)
            slots_j = torch.where(inside, checkpoint_slots[:, j], -1).contiguous()
            launches.append((slots_j, ends.contiguous()))
    launches.append((dst, None))
    for dst_j, ends_j in launches:
        conv1d_state_kernel[(n, math.ceil(conv_dim / block_c))](
            x,
            conv_state,
            query_start_loc,
            src_slots,
            dst_j,
            ends_j if ends_j is not None else dst_j,
            conv_dim,
            x.stride(0),
            conv_state.stride(0),
            conv_state.stride(1),
            KERNEL=kernel,
            KM1_P2=next_pow2(kernel - 1),
            BLOCK_C=block_c,
            HAS_ENDS=ends_j is not None,
            INTERPRET=interp,
        )
    return out


def _ssm_common(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
) -> tuple[int, int, int, int, int]:
    check_tensor("state", state, ndim=4)
    check_tensor("x", x, ndim=3)
    check_tensor("dt", dt, ndim=2)
    check_tensor("A", A, ndim=1)
    check_tensor("B", B, ndim=3)
    check_tensor("C", C, ndim=3)
    t, heads, head_dim = x.shape
    groups, d_state = B.shape[1], B.shape[2]
    check_shape("state", state, (state.shape[0], heads, head_dim, d_state))
    check_shape("dt", dt, (t, heads))
    check_shape("A", A, (heads,))
    check_shape("B", B, (t, groups, d_state))
    check_shape("C", C, (t, groups, d_state))
    require(
        groups > 0 and heads % groups == 0,
        f"num_heads {heads} is not a multiple of n_groups {groups}",
    )
    if D is not None:
        check_tensor("D", D, ndim=1)
        check_shape("D", D, (heads,))
    if dt_bias is not None:
        check_tensor("dt_bias", dt_bias, ndim=1)
        check_shape("dt_bias", dt_bias, (heads,))
    return t, heads, head_dim, groups, d_state


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
    src_slots: torch.Tensor,
    dst_slots: torch.Tensor | None = None,
    *,
    dt_softplus: bool = True,
) -> torch.Tensor:
    """Decode step of the Mamba-2 SSM, one token per request; returns ``y``.

    ``state``: ``[num_slots, num_heads, head_dim, d_state]``; ``x``: ``[n, num_heads,
    head_dim]``; ``dt``: ``[n, num_heads]`` (raw: ``softplus(dt + dt_bias)`` when
    ``dt_softplus``); ``A``: ``[num_heads]`` (negative); ``B``, ``C``: ``[n, n_groups,
    d_state]``; ``D``: ``[num_heads]``. Slots as in :func:`ssd_prefill`.
    """
    n, heads, head_dim, groups, d_state = _ssm_common(state, x, dt, A, B, C, D, dt_bias)
    dst = src_slots if dst_slots is None else dst_slots
    check_slots("src_slots", src_slots, n, state.shape[0])
    check_slots("dst_slots", dst, n, state.shape[0])
    out = torch.empty_like(x)
    check_device(
        selective_state_update_kernel,
        *([state, x, dt, A, B, C, src_slots, dst, out, *_optional(D, dt_bias)]),
    )
    if n == 0:
        return out
    block_p = min(32, next_pow2(head_dim))
    grid = (n, heads, math.ceil(head_dim / block_p))
    selective_state_update_kernel[grid](
        x,
        dt,
        A,
        B,
        C,
        D if D is not None else A,
        dt_bias if dt_bias is not None else A,
        state,
        out,
        src_slots,
        dst,
        head_dim,
        d_state,
        x.stride(0),
        x.stride(1),
        dt.stride(0),
        B.stride(0),
        B.stride(1),
        C.stride(0),
        C.stride(1),
        out.stride(0),
        out.stride(1),
        state.stride(0),
        state.stride(1),
        state.stride(2),
        HEADS_PER_GROUP=heads // groups,
        HAS_D=D is not None,
        HAS_DT_BIAS=dt_bias is not None,
        DT_SOFTPLUS=dt_softplus,
        BLOCK_P=block_p,
        N_P2=next_pow2(d_state),
        INTERPRET=interpreted(selective_state_update_kernel),
    )
    return out


def ssd_prefill(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
    query_start_loc: torch.Tensor,
    src_slots: torch.Tensor,
    dst_slots: torch.Tensor | None = None,
    *,
    dt_softplus: bool = True,
    chunk: int = 16,
    checkpoint_slots: torch.Tensor | None = None,
    checkpoint_first: torch.Tensor | None = None,
    checkpoint_every: int | None = None,
) -> torch.Tensor:
    """Mamba-2 SSM over each request's new tokens (chunked SSD scan); returns ``y``.

    Shapes as in :func:`selective_state_update` with ``num_tokens`` rows, request ``r``
    owning rows ``query_start_loc[r]:query_start_loc[r+1]``. Request ``r`` starts from
    slot ``src_slots[r]`` (negative: zeros) and leaves its final state in
    ``dst_slots[r]`` (default: the same slot; negative: not kept). ``chunk`` (a power
    of two >= 16 on a GPU) is the scan's tile length. Optional checkpoints as in
    :func:`causal_conv1d_prefill` (the tile shrinks to divide ``checkpoint_every``; on
    a GPU that must be a multiple of 16).
    """
    t, heads, head_dim, groups, d_state = _ssm_common(state, x, dt, A, B, C, D, dt_bias)
    query_lengths(query_start_loc, t)
    n = query_start_loc.shape[0] - 1
    dst = src_slots if dst_slots is None else dst_slots
    check_slots("src_slots", src_slots, n, state.shape[0])
    check_slots("dst_slots", dst, n, state.shape[0])
    require(chunk >= 1 and chunk == next_pow2(chunk), f"chunk must be a power of two: {chunk}")
    has_ckpt = check_checkpoints(
        checkpoint_slots, checkpoint_first, checkpoint_every, n, state.shape[0]
    )
    out = torch.empty_like(x)
    check_device(
        ssd_chunk_scan_kernel,
        *[state, x, dt, A, B, C, query_start_loc, src_slots, dst, out],
        *_optional(D, dt_bias, checkpoint_slots, checkpoint_first),
    )
    if n == 0:
        return out
    interp = interpreted(ssd_chunk_scan_kernel)
    floor = 1 if interp else 16  # tl.dot tiles need >= 16 on a GPU
    chunk = max(floor, chunk)
    if has_ckpt:
        assert checkpoint_every is not None
        # Chunks must end on every checkpoint: the largest power of two dividing it.
        chunk = min(chunk, checkpoint_every & -checkpoint_every)
        require(chunk >= floor, "checkpoint_every must be a multiple of 16 on a GPU")
    block_p = max(floor, min(64, next_pow2(head_dim)))
    grid = (n, heads, math.ceil(head_dim / block_p))
    ssd_chunk_scan_kernel[grid](
        x,
        dt,
        A,
        B,
        C,
        D if D is not None else A,
        dt_bias if dt_bias is not None else A,
        state,
        out,
        query_start_loc,
        src_slots,
        dst,
        checkpoint_slots if has_ckpt else dst,
        checkpoint_first if has_ckpt else dst,
        int(checkpoint_every or 1),
        checkpoint_slots.shape[1] if checkpoint_slots is not None else 0,
        checkpoint_slots.stride(0) if checkpoint_slots is not None else 0,
        head_dim,
        d_state,
        x.stride(0),
        x.stride(1),
        dt.stride(0),
        B.stride(0),
        B.stride(1),
        C.stride(0),
        C.stride(1),
        out.stride(0),
        out.stride(1),
        state.stride(0),
        state.stride(1),
        state.stride(2),
        HEADS_PER_GROUP=heads // groups,
        HAS_D=D is not None,
        HAS_DT_BIAS=dt_bias is not None,
        DT_SOFTPLUS=dt_softplus,
        HAS_CKPT=has_ckpt,
        CHUNK=chunk,
        BLOCK_P=block_p,
        N_P2=max(floor, next_pow2(d_state)),
        DOT_F32=interp or x.dtype == torch.float32,
        INTERPRET=interp,
    )
    return out
