"""Launchers for the Mamba-2 kernels: causal conv1d (decode, prefill) and the SSD scan."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from hybridkv.kernels.conv1d import (
    conv1d_state_kernel,
    conv1d_update_kernel,
    conv1d_varlen_kernel,
)
from hybridkv.kernels.mamba2 import selective_state_update_kernel, ssd_chunk_scan_kernel
from hybridkv.ops._launch import (
    check_device,
    check_prefill_slots,
    check_shape,
    check_slot_pair,
    check_tensor,
    checkpoint_kernel_args,
    interpreted,
    next_pow2,
    optional,
    require,
)


@dataclass(frozen=True)
class _Conv:
    """Checked arguments of a conv launcher, and the arguments they make for the
    update and varlen conv kernels (which share a signature but for the slots)."""

    x: torch.Tensor
    conv_state: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    silu: bool
    conv_dim: int
    width: int

    def operands(self, out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The tensors both conv kernels open with (no bias: ``x``, unread)."""
        bias = self.bias if self.bias is not None else self.x
        return self.x, self.conv_state, self.weight, bias, out

    def strides(self, out: torch.Tensor) -> tuple[int, ...]:
        """The strides both conv kernels take after ``conv_dim``."""
        s = self.conv_state
        return self.x.stride(0), out.stride(0), s.stride(0), s.stride(1), self.weight.stride(0)

    def flags(self) -> dict[str, Any]:
        """The compile-time flags both conv kernels take."""
        return {"KERNEL": self.width, "HAS_BIAS": self.bias is not None, "SILU": self.silu}


def _check_conv(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str | None,
) -> _Conv:
    check_tensor("x", x, ndim=2)
    check_tensor("conv_state", conv_state, ndim=3)
    check_tensor("weight", weight, ndim=2)
    conv_dim = x.shape[1]
    width = weight.shape[1]
    require(width >= 2, f"the conv kernel width must be >= 2, got {width}")
    check_shape("weight", weight, (conv_dim, width))
    check_shape("conv_state", conv_state, (conv_state.shape[0], width - 1, conv_dim))
    if bias is not None:
        check_tensor("bias", bias, ndim=1)
        check_shape("bias", bias, (conv_dim,))
    require(activation in (None, "silu"), f"activation must be None or 'silu', got {activation!r}")
    return _Conv(x, conv_state, weight, bias, activation == "silu", conv_dim, width)


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
    conv = _check_conv(x, conv_state, weight, bias, activation)
    n = x.shape[0]
    dst = check_slot_pair(src_slots, dst_slots, n, conv_state.shape[0])
    out = torch.empty_like(x)
    check_device(conv1d_update_kernel, x, conv_state, weight, src_slots, dst, out, *optional(bias))
    if n == 0:
        return out
    block_c = min(256, next_pow2(conv.conv_dim))
    conv1d_update_kernel[(n, math.ceil(conv.conv_dim / block_c))](
        *conv.operands(out),
        src_slots,
        dst,
        conv.conv_dim,
        *conv.strides(out),
        **conv.flags(),
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
    ``checkpoint_slots[r, j]`` (negative: skipped). A checkpoint slot may be the
    request's own source (a step that starts mid-block and crosses its end); a slot
    one request writes that another reads or writes is refused
    (:func:`~hybridkv.ops._launch.check_slot_conflicts`).
    """
    conv = _check_conv(x, conv_state, weight, bias, activation)
    lens, dst, has_ckpt = check_prefill_slots(
        *(query_start_loc, x.shape[0], src_slots, dst_slots, conv_state.shape[0]),
        *(checkpoint_slots, checkpoint_first, checkpoint_every),
    )
    n = lens.shape[0]
    out = torch.empty_like(x)
    check_device(
        conv1d_varlen_kernel,
        *[x, conv_state, weight, query_start_loc, src_slots, dst, out],
        *optional(bias, checkpoint_slots, checkpoint_first),
    )
    if n == 0:
        return out
    if max_query_len is None:
        max_query_len = int(lens.max())
    interp = interpreted(conv1d_varlen_kernel)
    block_c = min(128, next_pow2(conv.conv_dim))
    block_t = min(64, next_pow2(max(max_query_len, 1)))
    c_tiles = math.ceil(conv.conv_dim / block_c)
    conv1d_varlen_kernel[(n, max(1, math.ceil(max_query_len / block_t)), c_tiles)](
        *conv.operands(out),
        query_start_loc,
        src_slots,
        conv.conv_dim,
        *conv.strides(out),
        **conv.flags(),
        BLOCK_T=block_t,
        BLOCK_C=block_c,
        INTERPRET=interp,
    )
    # A second launch, after every read of the states above: each program reads its
    # request's source window once, then writes the checkpoints and the final state
    # (so a checkpoint may go to the request's own source slot).
    conv1d_state_kernel[(n, c_tiles)](
        x,
        conv_state,
        query_start_loc,
        src_slots,
        dst,
        *checkpoint_kernel_args(checkpoint_slots, checkpoint_first, checkpoint_every, dst),
        conv.conv_dim,
        x.stride(0),
        conv_state.stride(0),
        conv_state.stride(1),
        KERNEL=conv.width,
        KM1_P2=next_pow2(conv.width - 1),
        BLOCK_C=block_c,
        HAS_CKPT=has_ckpt,
        INTERPRET=interp,
    )
    return out


@dataclass(frozen=True)
class _SSM:
    """Checked arguments of an SSM launcher, and the arguments they make for the
    decode and SSD scan kernels (which share a signature but for slots and tiles)."""

    state: torch.Tensor
    x: torch.Tensor
    dt: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor | None
    dt_bias: torch.Tensor | None
    heads: int
    head_dim: int
    groups: int
    d_state: int

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor given (for :func:`check_device`)."""
        return [
            self.state,
            self.x,
            self.dt,
            self.A,
            self.B,
            self.C,
            *optional(self.D, self.dt_bias),
        ]

    def operands(self, out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The tensors both SSM kernels open with (no ``D`` / ``dt_bias``: ``A``, unread)."""
        D = self.D if self.D is not None else self.A
        dt_bias = self.dt_bias if self.dt_bias is not None else self.A
        return self.x, self.dt, self.A, self.B, self.C, D, dt_bias, self.state, out

    def sizes_and_strides(self, out: torch.Tensor) -> tuple[int, ...]:
        """``head_dim``, ``d_state`` and the strides both SSM kernels take next."""
        x, B, C, s = self.x, self.B, self.C, self.state
        return (
            *(self.head_dim, self.d_state),
            *(x.stride(0), x.stride(1), self.dt.stride(0)),
            *(B.stride(0), B.stride(1), C.stride(0), C.stride(1)),
            *(out.stride(0), out.stride(1), s.stride(0), s.stride(1), s.stride(2)),
        )

    def flags(self, dt_softplus: bool) -> dict[str, Any]:
        """The compile-time flags both SSM kernels take."""
        return {
            "HEADS_PER_GROUP": self.heads // self.groups,
            "HAS_D": self.D is not None,
            "HAS_DT_BIAS": self.dt_bias is not None,
            "DT_SOFTPLUS": dt_softplus,
        }


def _check_ssm(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
) -> _SSM:
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
    for name, per_head in (("D", D), ("dt_bias", dt_bias)):
        if per_head is not None:
            check_tensor(name, per_head, ndim=1)
            check_shape(name, per_head, (heads,))
    return _SSM(state, x, dt, A, B, C, D, dt_bias, heads, head_dim, groups, d_state)


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
    ssm = _check_ssm(state, x, dt, A, B, C, D, dt_bias)
    n = x.shape[0]
    dst = check_slot_pair(src_slots, dst_slots, n, state.shape[0])
    out = torch.empty_like(x)
    check_device(selective_state_update_kernel, *ssm.tensors(), src_slots, dst, out)
    if n == 0:
        return out
    block_p = min(32, next_pow2(ssm.head_dim))
    selective_state_update_kernel[(n, ssm.heads, math.ceil(ssm.head_dim / block_p))](
        *ssm.operands(out),
        src_slots,
        dst,
        *ssm.sizes_and_strides(out),
        **ssm.flags(dt_softplus),
        BLOCK_P=block_p,
        N_P2=next_pow2(ssm.d_state),
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
    ssm = _check_ssm(state, x, dt, A, B, C, D, dt_bias)
    lens, dst, has_ckpt = check_prefill_slots(
        *(query_start_loc, x.shape[0], src_slots, dst_slots, state.shape[0]),
        *(checkpoint_slots, checkpoint_first, checkpoint_every),
    )
    n = lens.shape[0]
    require(chunk >= 1 and chunk == next_pow2(chunk), f"chunk must be a power of two: {chunk}")
    out = torch.empty_like(x)
    check_device(
        ssd_chunk_scan_kernel,
        *ssm.tensors(),
        *[query_start_loc, src_slots, dst, out],
        *optional(checkpoint_slots, checkpoint_first),
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
    block_p = max(floor, min(64, next_pow2(ssm.head_dim)))
    ssd_chunk_scan_kernel[(n, ssm.heads, math.ceil(ssm.head_dim / block_p))](
        *ssm.operands(out),
        query_start_loc,
        src_slots,
        dst,
        *checkpoint_kernel_args(checkpoint_slots, checkpoint_first, checkpoint_every, dst),
        *ssm.sizes_and_strides(out),
        **ssm.flags(dt_softplus),
        HAS_CKPT=has_ckpt,
        CHUNK=chunk,
        BLOCK_P=block_p,
        N_P2=max(floor, next_pow2(ssm.d_state)),
        DOT_F32=interp or x.dtype == torch.float32,
        INTERPRET=interp,
    )
    return out
