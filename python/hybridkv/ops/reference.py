"""Pure-PyTorch references for every kernel: same arguments, plain loops, fp32 math.

They favour the obvious formula over speed (per request, per token) and use a
different algorithm where the kernel is clever (the SSD scan is checked against the
token-by-token recurrence). State tensors are updated in place like the kernels do.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _checkpoint_slot(
    slots: torch.Tensor | None,
    first: torch.Tensor | None,
    every: int | None,
    r: int,
    m: int,
    n: int,
) -> int:
    """The slot for the state after ``m`` of request ``r``'s ``n`` new tokens (or -1)."""
    if slots is None or first is None or every is None:
        return -1
    f = int(first[r])
    if m >= n or m < f or (m - f) % every:
        return -1
    j = (m - f) // every
    return int(slots[r, j]) if j < slots.shape[1] else -1


def write_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Reference for :func:`hybridkv.ops.write_kv`."""
    block_size = key_cache.shape[1]
    for i in range(key.shape[0]):
        s = int(slot_mapping[i])
        if s < 0:
            continue
        key_cache[s // block_size, s % block_size] = key[i].to(key_cache.dtype)
        value_cache[s // block_size, s % block_size] = value[i].to(value_cache.dtype)


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
) -> torch.Tensor:
    """Reference for :func:`hybridkv.ops.paged_attention`: gather, mask, softmax.

    Tokens whose block-table entry is the null block 0 are absent (never gathered).
    """
    num_heads, head_size = q.shape[1], q.shape[2]
    num_kv_heads = key_cache.shape[2]
    block_size = key_cache.shape[1]
    group = num_heads // num_kv_heads
    scale = 1.0 / math.sqrt(head_size) if scale is None else scale
    out = torch.zeros_like(q)
    for r in range(seq_lens.shape[0]):
        q0, q1 = int(query_start_loc[r]), int(query_start_loc[r + 1])
        seq_len = int(seq_lens[r])
        if q1 == q0:
            continue
        kpos = torch.arange(seq_len)
        blocks = block_table[r, kpos // block_size].long()
        present = blocks != 0
        kpos = kpos[present]
        offs = (kpos % block_size).long()
        k = key_cache[blocks[present], offs].float()  # [keys, kv_heads, d]
        v = value_cache[blocks[present], offs].float()
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        qpos = torch.arange(seq_len - (q1 - q0), seq_len)
        visible = kpos[None, :] <= qpos[:, None]
        if sliding_window is not None:
            visible &= kpos[None, :] > qpos[:, None] - sliding_window
        if chunk_size is not None:
            visible &= (kpos[None, :] // chunk_size) == (qpos[:, None] // chunk_size)
        # Keys no query can see are dropped, not just masked: like the kernel, the
        # reference must not let a freed block's contents (even NaN) near the result.
        keep = visible.any(0)
        k, v, visible = k[keep], v[keep], visible[:, keep]
        scores = torch.einsum("qhd,khd->hqk", q[q0:q1].float(), k) * scale
        scores = scores.masked_fill(~visible[None], float("-inf"))
        probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows with no key: zeros
        out[q0:q1] = torch.einsum("hqk,khd->qhd", probs, v).to(q.dtype)
    return out


def causal_conv1d(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    query_start_loc: torch.Tensor,
    src_slots: torch.Tensor,
    dst_slots: torch.Tensor | None = None,
    *,
    activation: str | None = "silu",
    checkpoint_slots: torch.Tensor | None = None,
    checkpoint_first: torch.Tensor | None = None,
    checkpoint_every: int | None = None,
) -> torch.Tensor:
    """Reference for both conv launchers (decode is one token per request)."""
    dst_slots = src_slots if dst_slots is None else dst_slots
    width = weight.shape[1]
    out = torch.empty_like(x)
    for r in range(query_start_loc.shape[0] - 1):
        t0, t1 = int(query_start_loc[r]), int(query_start_loc[r + 1])
        src, dst = int(src_slots[r]), int(dst_slots[r])
        prev = (
            conv_state[src].float()
            if src >= 0
            else torch.zeros(width - 1, x.shape[1], dtype=torch.float32)
        )
        seq = torch.cat([prev, x[t0:t1].float()])  # [width - 1 + len, conv_dim]
        for i in range(t1 - t0):
            y = (seq[i : i + width] * weight.float().T).sum(0)
            if bias is not None:
                y = y + bias.float()
            out[t0 + i] = (F.silu(y) if activation == "silu" else y).to(out.dtype)
            ck = _checkpoint_slot(
                checkpoint_slots, checkpoint_first, checkpoint_every, r, i + 1, t1 - t0
            )
            if ck >= 0:
                conv_state[ck] = seq[i + 1 : i + width].to(conv_state.dtype)
        if dst >= 0:
            conv_state[dst] = seq[seq.shape[0] - (width - 1) :].to(conv_state.dtype)
    return out


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
    """Reference for :func:`hybridkv.ops.causal_conv1d_update`."""
    qsl = torch.arange(x.shape[0] + 1)
    return causal_conv1d(
        x, conv_state, weight, bias, qsl, src_slots, dst_slots, activation=activation
    )


def mamba2_ssm(
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
    checkpoint_slots: torch.Tensor | None = None,
    checkpoint_first: torch.Tensor | None = None,
    checkpoint_every: int | None = None,
) -> torch.Tensor:
    """Reference for the SSD scan and the decode step: the recurrence token by token."""
    dst_slots = src_slots if dst_slots is None else dst_slots
    heads, head_dim = x.shape[1], x.shape[2]
    groups, d_state = B.shape[1], B.shape[2]
    rep = heads // groups
    out = torch.empty_like(x)
    for r in range(query_start_loc.shape[0] - 1):
        t0, t1 = int(query_start_loc[r]), int(query_start_loc[r + 1])
        src, dst = int(src_slots[r]), int(dst_slots[r])
        h = (
            state[src].float().clone()
            if src >= 0
            else torch.zeros(heads, head_dim, d_state, dtype=torch.float32)
        )
        for t in range(t0, t1):
            d = dt[t].float() + (dt_bias.float() if dt_bias is not None else 0.0)
            if dt_softplus:
                d = F.softplus(d)
            b = B[t].float().repeat_interleave(rep, dim=0)  # [heads, d_state]
            c = C[t].float().repeat_interleave(rep, dim=0)
            xt = x[t].float()
            h = (
                torch.exp(d * A.float())[:, None, None] * h
                + (d[:, None] * xt)[:, :, None] * b[:, None, :]
            )
            y = torch.einsum("hpn,hn->hp", h, c)
            if D is not None:
                y = y + D.float()[:, None] * xt
            out[t] = y.to(out.dtype)
            ck = _checkpoint_slot(
                checkpoint_slots, checkpoint_first, checkpoint_every, r, t - t0 + 1, t1 - t0
            )
            if ck >= 0:
                state[ck] = h.to(state.dtype)
        if dst >= 0:
            state[dst] = h.to(state.dtype)
    return out


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
    """Reference for :func:`hybridkv.ops.selective_state_update`."""
    qsl = torch.arange(x.shape[0] + 1)
    return mamba2_ssm(
        state, x, dt, A, B, C, D, dt_bias, qsl, src_slots, dst_slots, dt_softplus=dt_softplus
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
    """Reference for :func:`hybridkv.ops.gated_delta_rule`, written as the matrix update
    ``S = alpha S (I - beta k k^T) + beta v k^T`` (the kernel uses the rank-1 form)."""
    dst_slots = src_slots if dst_slots is None else dst_slots
    hk, dk = q.shape[1], q.shape[2]
    hv, dv = v.shape[1], v.shape[2]
    scale = dk**-0.5 if scale is None else scale
    out = torch.empty_like(v)
    eye = torch.eye(dk, dtype=torch.float32)
    for r in range(query_start_loc.shape[0] - 1):
        t0, t1 = int(query_start_loc[r]), int(query_start_loc[r + 1])
        src, dst = int(src_slots[r]), int(dst_slots[r])
        s = state[src].float().clone() if src >= 0 else torch.zeros(hv, dv, dk, dtype=torch.float32)
        for t in range(t0, t1):
            qt = q[t].float().repeat_interleave(hv // hk, dim=0)  # [hv, dk]
            kt = k[t].float().repeat_interleave(hv // hk, dim=0)
            if use_l2norm:
                qt = qt / torch.sqrt((qt * qt).sum(-1, keepdim=True) + 1e-6)
                kt = kt / torch.sqrt((kt * kt).sum(-1, keepdim=True) + 1e-6)
            qt = qt * scale
            alpha = torch.exp(
                -torch.exp(A_log.float()) * F.softplus(a[t].float() + dt_bias.float())
            )
            beta = torch.sigmoid(b[t].float())
            proj = eye - beta[:, None, None] * kt[:, :, None] * kt[:, None, :]
            s = alpha[:, None, None] * (s @ proj) + beta[:, None, None] * (
                v[t].float()[:, :, None] * kt[:, None, :]
            )
            out[t] = torch.einsum("hvk,hk->hv", s, qt).to(out.dtype)
            ck = _checkpoint_slot(
                checkpoint_slots, checkpoint_first, checkpoint_every, r, t - t0 + 1, t1 - t0
            )
            if ck >= 0:
                state[ck] = s.to(state.dtype)
        if dst >= 0:
            state[dst] = s.to(state.dtype)
    return out
