"""Causal conv1d over per-request state slots: the short convolution in front of a
Mamba-2 or gated-delta-net mixer, for decode (one token per request), varlen prefill,
and the conv-state store with mid-step checkpoints.

Each request's conv state is the last ``kernel - 1`` inputs, kept in a slot of its
state group's pool. Slots follow the rules of :mod:`hybridkv.kernels.mamba2`: a source
slot (negative = zeros), a destination slot (negative = keep nothing), and every kernel
reads a request's source before it writes any of that request's slots.
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
    request_tokens,
)


@triton.jit
def conv1d_update_kernel(
    x_ptr,
    conv_state_ptr,
    weight_ptr,
    bias_ptr,
    out_ptr,
    src_ptr,
    dst_ptr,
    conv_dim,
    stride_xt,
    stride_ot,
    stride_sn,
    stride_sk,
    stride_wc,
    KERNEL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr,
    BLOCK_C: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """Decode: one new input per request; ``out = silu(w · [state, x] + b)``, shift state."""
    req = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < conv_dim
    src = tl.load(src_ptr + req).to(tl.int64)
    dst = tl.load(dst_ptr + req).to(tl.int64)
    x = tl.load(x_ptr + req.to(tl.int64) * stride_xt + c, mask=c_ok, other=0.0).to(tl.float32)
    acc = tl.zeros([BLOCK_C], tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    acc += x * tl.load(weight_ptr + c * stride_wc + (KERNEL - 1), mask=c_ok).to(tl.float32)
    # The window is [state[0], ..., state[K-2], x]; the new state drops state[0].
    for k in tl.static_range(KERNEL - 1):
        if src >= 0:
            sk = tl.load(conv_state_ptr + src * stride_sn + k * stride_sk + c, mask=c_ok)
            sk = sk.to(tl.float32)
        else:
            sk = tl.zeros([BLOCK_C], tl.float32)
        acc += sk * tl.load(weight_ptr + c * stride_wc + k, mask=c_ok).to(tl.float32)
        # Two ifs: k is a compile-time constant, dst a runtime value.
        if k > 0:  # noqa: SIM102
            if dst >= 0:
                tl.store(
                    conv_state_ptr + dst * stride_sn + (k - 1) * stride_sk + c,
                    cast_out(sk, conv_state_ptr.dtype.element_ty, INTERPRET),
                    mask=c_ok,
                )
    if dst >= 0:
        tl.store(
            conv_state_ptr + dst * stride_sn + (KERNEL - 2) * stride_sk + c,
            cast_out(x, conv_state_ptr.dtype.element_ty, INTERPRET),
            mask=c_ok,
        )
    if SILU:
        acc = acc / (1.0 + tl.exp(-acc))
    tl.store(
        out_ptr + req.to(tl.int64) * stride_ot + c,
        cast_out(acc, out_ptr.dtype.element_ty, INTERPRET),
        mask=c_ok,
    )


@triton.jit
def conv1d_varlen_kernel(
    x_ptr,
    conv_state_ptr,
    weight_ptr,
    bias_ptr,
    out_ptr,
    query_start_loc_ptr,
    src_ptr,
    conv_dim,
    stride_xt,
    stride_ot,
    stride_sn,
    stride_sk,
    stride_wc,
    KERNEL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_C: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """Prefill: causal conv over each request's new tokens, the slot's inputs before them.

    Reads states only; :func:`conv1d_state_kernel` writes the new ones afterwards.
    """
    req = tl.program_id(0)
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    start, length = request_tokens(query_start_loc_ptr, req)
    if tl.program_id(1) * BLOCK_T < length:
        src = tl.load(src_ptr + req).to(tl.int64)
        t_ok = t < length
        c_ok = c < conv_dim
        acc = tl.zeros([BLOCK_T, BLOCK_C], tl.float32)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
        for k in tl.static_range(KERNEL):
            w = tl.load(weight_ptr + c * stride_wc + k, mask=c_ok, other=0.0).to(tl.float32)
            idx = t - (KERNEL - 1) + k  # input position relative to the first new token
            in_seq = t_ok & (idx >= 0)
            xs = tl.load(
                x_ptr + (start + idx).to(tl.int64)[:, None] * stride_xt + c[None, :],
                mask=in_seq[:, None] & c_ok[None, :],
                other=0.0,
            ).to(tl.float32)
            # (src is broadcast before '&': the interpreter mishandles bool & scalar.)
            in_state = t_ok & (idx < 0) & ((idx * 0 + src) >= 0)
            ss = tl.load(
                conv_state_ptr
                + src * stride_sn
                + (KERNEL - 1 + idx)[:, None] * stride_sk
                + c[None, :],
                mask=in_state[:, None] & c_ok[None, :],
                other=0.0,
            ).to(tl.float32)
            acc += (xs + ss) * w[None, :]
        if SILU:
            acc = acc / (1.0 + tl.exp(-acc))
        tl.store(
            out_ptr + (start + t).to(tl.int64)[:, None] * stride_ot + c[None, :],
            cast_out(acc, out_ptr.dtype.element_ty, INTERPRET),
            mask=t_ok[:, None] & c_ok[None, :],
        )


@triton.jit
def _store_conv_window(
    x_ptr,
    conv_state_ptr,
    slot,
    start,
    end,
    old,
    c,
    c_ok,
    stride_xt,
    stride_sn,
    stride_sk,
    KERNEL: tl.constexpr,
    KM1_P2: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """Store in ``slot`` the last ``KERNEL - 1`` inputs after ``end`` new tokens.

    Row ``j`` is the input at ``end - (KERNEL - 1) + j`` relative to the first new
    token: a new token's row of ``x`` when that is >= 0, else row ``end + j`` of
    ``old`` (the source slot's window, already in registers). ``old`` rows are picked
    by a one-hot select and sum, exact for finite states.
    """
    j = tl.arange(0, KM1_P2)
    j_ok = j < KERNEL - 1
    idx = end - (KERNEL - 1) + j
    xs = tl.load(
        x_ptr + (start + idx).to(tl.int64)[:, None] * stride_xt + c[None, :],
        mask=(j_ok & (idx >= 0))[:, None] & c_ok[None, :],
        other=0.0,
    ).to(tl.float32)
    pick = (end + j)[:, None] == j[None, :]  # [row of the new window, row of old]
    from_old = tl.sum(tl.where(pick[:, :, None], old[None, :, :], 0.0), 1)
    tl.store(
        conv_state_ptr + slot * stride_sn + j[:, None] * stride_sk + c[None, :],
        cast_out(xs + from_old, conv_state_ptr.dtype.element_ty, INTERPRET),
        mask=j_ok[:, None] & c_ok[None, :],
    )


@triton.jit
def conv1d_state_kernel(
    x_ptr,
    conv_state_ptr,
    query_start_loc_ptr,
    src_ptr,
    dst_ptr,
    ckpt_slots_ptr,
    ckpt_first_ptr,
    ckpt_every,
    ckpt_cols,
    stride_ckpt,
    conv_dim,
    stride_xt,
    stride_sn,
    stride_sk,
    KERNEL: tl.constexpr,
    KM1_P2: tl.constexpr,
    BLOCK_C: tl.constexpr,
    HAS_CKPT: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """After prefill: the destination slot gets the last ``KERNEL - 1`` inputs.

    With ``HAS_CKPT`` the window after ``ckpt_first[r] + j * ckpt_every`` new tokens
    (strictly inside the step) also goes to slot ``ckpt_slots[r, j]`` (negative:
    skipped). Inputs older than the new tokens come from the source slot, read once
    into registers before any store: a checkpoint or the destination may be the
    request's own source slot (in mode ``all`` a step that starts mid-block writes
    that block's checkpoint into the slot it started from).
    """
    req = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < conv_dim
    start, length = request_tokens(query_start_loc_ptr, req)
    src = tl.load(src_ptr + req).to(tl.int64)
    dst = tl.load(dst_ptr + req).to(tl.int64)
    j = tl.arange(0, KM1_P2)
    # (src is broadcast before '&': the interpreter mishandles bool & scalar.)
    old_ok = (j < KERNEL - 1) & ((j * 0 + src) >= 0)
    old = tl.load(
        conv_state_ptr + src * stride_sn + j[:, None] * stride_sk + c[None, :],
        mask=old_ok[:, None] & c_ok[None, :],
        other=0.0,
    ).to(tl.float32)
    if HAS_CKPT:
        first = tl.load(ckpt_first_ptr + req)
        ckpt_row = ckpt_slots_ptr + req.to(tl.int64) * stride_ckpt
        for m in range(0, ckpt_cols):
            end = first + m * ckpt_every
            slot = checkpoint_slot(ckpt_row, end, length, first, ckpt_every, ckpt_cols)
            if slot >= 0:
                _store_conv_window(
                    x_ptr,
                    conv_state_ptr,
                    slot,
                    start,
                    end,
                    old,
                    c,
                    c_ok,
                    stride_xt,
                    stride_sn,
                    stride_sk,
                    KERNEL,
                    KM1_P2,
                    INTERPRET,
                )
    if dst >= 0:
        _store_conv_window(
            x_ptr,
            conv_state_ptr,
            dst,
            start,
            length,
            old,
            c,
            c_ok,
            stride_xt,
            stride_sn,
            stride_sk,
            KERNEL,
            KM1_P2,
            INTERPRET,
        )
