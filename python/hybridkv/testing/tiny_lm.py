"""The tiny hybrid LM itself: its shapes, seeded random weights, KV-cache specs and
the dense path (:meth:`TinyHybridLM.dense_logits`: a whole sequence with no cache, in
plain PyTorch, written independently of :mod:`hybridkv.ops` so it can referee them).

The cached path that runs the same weights over hybridkv's paged caches is
:mod:`hybridkv.testing.tiny_runner`; :mod:`hybridkv.testing.tiny_model` names both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hybridkv.models.model_spec import ModelSpec
from hybridkv.models.specs import (
    ChunkedLocalSpec,
    FullAttentionSpec,
    KVSpec,
    SlidingWindowSpec,
    StateSpec,
)

FULL, SLIDING, MAMBA2, GDN = "full_attention", "sliding_window", "mamba2", "gated_delta"
CHUNKED = "chunked_local"
LAYER_KINDS = (FULL, SLIDING, MAMBA2, GDN, CHUNKED)
ATTENTION_KINDS = (FULL, SLIDING, CHUNKED)


@dataclass(frozen=True)
class TinyConfig:
    """Shapes of the tiny hybrid model (defaults: the issue's 6-layer model)."""

    vocab_size: int = 256
    hidden: int = 64
    layers: tuple[str, ...] = (FULL, SLIDING, MAMBA2, SLIDING, GDN, FULL)
    window: int = 8
    #: Chunk of the chunked-local layers (a query sees earlier tokens of its chunk).
    chunk: int = 8
    # attention (GQA 2:1, RoPE)
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    rope_theta: float = 10000.0
    # Mamba-2
    mamba_heads: int = 8
    mamba_head_dim: int = 16
    mamba_groups: int = 2
    d_state: int = 16
    d_conv: int = 4
    # gated delta net
    gdn_k_heads: int = 2
    gdn_v_heads: int = 4
    gdn_k_dim: int = 16
    gdn_v_dim: int = 16
    mlp_hidden: int = 128
    eps: float = 1e-6

    def __post_init__(self) -> None:
        for kind in self.layers:
            if kind not in LAYER_KINDS:
                raise ValueError(f"unknown layer kind {kind!r}; known: {LAYER_KINDS}")

    @property
    def mamba_inner(self) -> int:
        """Width of the Mamba-2 SSM input ``x`` (heads x head_dim)."""
        return self.mamba_heads * self.mamba_head_dim

    @property
    def mamba_conv_dim(self) -> int:
        """Channels of the Mamba-2 conv: ``x``, ``B`` and ``C`` together."""
        return self.mamba_inner + 2 * self.mamba_groups * self.d_state

    @property
    def gdn_conv_dim(self) -> int:
        """Channels of the gated-delta-net conv: ``q``, ``k`` and ``v`` together."""
        return 2 * self.gdn_k_heads * self.gdn_k_dim + self.gdn_v_heads * self.gdn_v_dim


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _cut(x: torch.Tensor, sizes: Sequence[int]) -> list[torch.Tensor]:
    """Split the last dimension of ``x`` into consecutive pieces of ``sizes``."""
    out, start = [], 0
    for n in sizes:
        out.append(x[..., start : start + n])
        start += n
    return out


def _cut_heads(x: torch.Tensor, shapes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """Split ``x [tokens, width]`` like :func:`_cut` into pieces of ``heads * dim``
    columns each, shaped ``[tokens, heads, dim]``."""
    pieces = _cut(x, [heads * dim for heads, dim in shapes])
    return [p.reshape(x.shape[0], *shape) for p, shape in zip(pieces, shapes, strict=True)]


def _rope(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate-half RoPE on ``x [tokens, heads, dim]`` at integer positions ``pos``."""
    half = x.shape[-1] // 2
    inv = theta ** (-torch.arange(half, dtype=torch.float64) / half)
    ang = pos.to(torch.float64)[:, None] * inv[None, :]
    cos = ang.cos().to(x.dtype)[:, None, :]
    sin = ang.sin().to(x.dtype)[:, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class TinyHybridLM:
    """Random weights (seeded, deterministic) and the two forward paths' shared math.

    Weights are plain tensors in ``self.w`` keyed ``"{layer}.{name}"``; the model is
    never trained, so no ``nn.Module`` machinery is needed.
    """

    def __init__(
        self, config: TinyConfig | None = None, *, seed: int = 0, dtype: torch.dtype = torch.float32
    ) -> None:
        self.cfg = config or TinyConfig()
        self.dtype = dtype
        g = torch.Generator().manual_seed(seed)
        c = self.cfg
        w: dict[str, torch.Tensor] = {}

        def lin(name: str, fan_in: int, fan_out: int, gain: float = 1.0) -> None:
            w[name] = torch.randn(fan_out, fan_in, generator=g) * (gain / math.sqrt(fan_in))

        def uniform(name: str, n: int, lo: float, hi: float) -> None:
            w[name] = lo + (hi - lo) * torch.rand(n, generator=g)

        w["embed"] = torch.randn(c.vocab_size, c.hidden, generator=g)
        for i, kind in enumerate(c.layers):
            p = f"{i}."
            w[p + "norm"] = 1.0 + 0.1 * torch.randn(c.hidden, generator=g)
            w[p + "mlp_norm"] = 1.0 + 0.1 * torch.randn(c.hidden, generator=g)
            lin(p + "mlp_up", c.hidden, 2 * c.mlp_hidden)
            lin(p + "mlp_down", c.mlp_hidden, c.hidden, 0.5)
            if kind in ATTENTION_KINDS:
                lin(p + "q", c.hidden, c.num_heads * c.head_dim)
                lin(p + "k", c.hidden, c.num_kv_heads * c.head_dim)
                lin(p + "v", c.hidden, c.num_kv_heads * c.head_dim)
                lin(p + "o", c.num_heads * c.head_dim, c.hidden, 0.5)
            elif kind == MAMBA2:
                lin(p + "in", c.hidden, c.mamba_inner + c.mamba_conv_dim + c.mamba_heads)
                w[p + "conv_w"] = torch.randn(c.mamba_conv_dim, c.d_conv, generator=g) * 0.5
                w[p + "conv_b"] = torch.randn(c.mamba_conv_dim, generator=g) * 0.1
                uniform(p + "A", c.mamba_heads, -4.0, -1.0)
                dt = torch.empty(c.mamba_heads).uniform_(0.05, 0.3, generator=g)
                w[p + "dt_bias"] = dt + torch.log(-torch.expm1(-dt))  # softplus^-1
                w[p + "D"] = torch.randn(c.mamba_heads, generator=g)
                w[p + "gnorm"] = 1.0 + 0.1 * torch.randn(c.mamba_inner, generator=g)
                lin(p + "out", c.mamba_inner, c.hidden, 0.5)
            else:
                kd, vd = c.gdn_k_heads * c.gdn_k_dim, c.gdn_v_heads * c.gdn_v_dim
                lin(p + "qkv", c.hidden, 2 * kd + vd)
                lin(p + "z", c.hidden, vd)
                lin(p + "a", c.hidden, c.gdn_v_heads)
                lin(p + "b", c.hidden, c.gdn_v_heads)
                w[p + "conv_w"] = torch.randn(c.gdn_conv_dim, c.d_conv, generator=g) * 0.5
                w[p + "A_log"] = torch.log(torch.empty(c.gdn_v_heads).uniform_(1, 4, generator=g))
                w[p + "dt_bias"] = torch.randn(c.gdn_v_heads, generator=g) * 0.5
                w[p + "gnorm"] = 1.0 + 0.1 * torch.randn(c.gdn_v_dim, generator=g)
                lin(p + "out", vd, c.hidden, 0.5)
        w["final_norm"] = 1.0 + 0.1 * torch.randn(c.hidden, generator=g)
        lin("lm_head", c.hidden, c.vocab_size, 4.0)
        self.w = {k: v.to(dtype) for k, v in w.items()}

    # -- what the KV cache sees ----------------------------------------------------------

    def layer_specs(self) -> list[KVSpec]:
        """One KV-cache spec per layer (states: conv then recurrent, both fp32 here)."""
        c = self.cfg
        dt = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.dtype]
        specs: list[KVSpec] = []
        for kind in c.layers:
            if kind == FULL:
                specs.append(
                    FullAttentionSpec(num_kv_heads=c.num_kv_heads, head_size=c.head_dim, dtype=dt)
                )
            elif kind == SLIDING:
                specs.append(
                    SlidingWindowSpec(
                        num_kv_heads=c.num_kv_heads, head_size=c.head_dim, dtype=dt, window=c.window
                    )
                )
            elif kind == CHUNKED:
                specs.append(
                    ChunkedLocalSpec(
                        num_kv_heads=c.num_kv_heads,
                        head_size=c.head_dim,
                        dtype=dt,
                        chunk_size=c.chunk,
                    )
                )
            elif kind == MAMBA2:
                shapes = (
                    (c.d_conv - 1, c.mamba_conv_dim),
                    (c.mamba_heads, c.mamba_head_dim, c.d_state),
                )
                specs.append(StateSpec(shapes=shapes, dtypes=(dt, "fp32"), family="mamba2"))
            else:
                shapes = (
                    (c.d_conv - 1, c.gdn_conv_dim),
                    (c.gdn_v_heads, c.gdn_v_dim, c.gdn_k_dim),
                )
                specs.append(StateSpec(shapes=shapes, dtypes=(dt, "fp32"), family="gdn"))
        return specs

    def model_spec(self) -> ModelSpec:
        """The :class:`~hybridkv.models.model_spec.ModelSpec` the planner takes."""
        return ModelSpec(
            name="tiny-hybrid",
            layer_specs=self.layer_specs(),
            hidden_size=self.cfg.hidden,
            vocab_size=self.cfg.vocab_size,
            num_attention_heads=self.cfg.num_heads,
        )

    # -- shared pieces -------------------------------------------------------------------

    def _mlp(self, i: int, x: torch.Tensor) -> torch.Tensor:
        h = _rms(x, self.w[f"{i}.mlp_norm"], self.cfg.eps) @ self.w[f"{i}.mlp_up"].T
        gate, up = h.chunk(2, dim=-1)
        return (F.silu(gate) * up) @ self.w[f"{i}.mlp_down"].T

    def _qkv(
        self, i: int, x: torch.Tensor, pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c, w = self.cfg, self.w
        q = (x @ w[f"{i}.q"].T).view(-1, c.num_heads, c.head_dim)
        k = (x @ w[f"{i}.k"].T).view(-1, c.num_kv_heads, c.head_dim)
        v = (x @ w[f"{i}.v"].T).view(-1, c.num_kv_heads, c.head_dim)
        return _rope(q, pos, c.rope_theta), _rope(k, pos, c.rope_theta), v

    def _mamba_in(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = self.cfg
        zxbcdt = x @ self.w[f"{i}.in"].T
        z, xbc, dt = _cut(zxbcdt, [c.mamba_inner, c.mamba_conv_dim, c.mamba_heads])
        return z, xbc, dt

    def _mamba_split(self, xbc: torch.Tensor) -> list[torch.Tensor]:
        """The conv output as the SSM's ``x``, ``B`` and ``C``."""
        c = self.cfg
        bc = (c.mamba_groups, c.d_state)
        return _cut_heads(xbc, [(c.mamba_heads, c.mamba_head_dim), bc, bc])

    def _mamba_out(self, i: int, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y = y.reshape(y.shape[0], -1)
        return _rms(y * F.silu(z), self.w[f"{i}.gnorm"], self.cfg.eps) @ self.w[f"{i}.out"].T

    def _gdn_in(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        w = self.w
        return (
            x @ w[f"{i}.qkv"].T,
            x @ w[f"{i}.z"].T,
            x @ w[f"{i}.a"].T,
            x @ w[f"{i}.b"].T,
        )

    def _gdn_split(self, qkv: torch.Tensor) -> list[torch.Tensor]:
        """The conv output as the recurrence's ``q``, ``k`` and ``v``."""
        c = self.cfg
        qk = (c.gdn_k_heads, c.gdn_k_dim)
        return _cut_heads(qkv, [qk, qk, (c.gdn_v_heads, c.gdn_v_dim)])

    def _gdn_out(self, i: int, o: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        zz = z.reshape(o.shape)
        o = _rms(o, self.w[f"{i}.gnorm"], c.eps) * F.silu(zz)
        return o.reshape(o.shape[0], -1) @ self.w[f"{i}.out"].T

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return _rms(x, self.w["final_norm"], self.cfg.eps) @ self.w["lm_head"].T

    # -- dense reference path ------------------------------------------------------------

    def dense_logits(self, token_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Logits ``[len, vocab]`` (fp32) for every position of one whole sequence."""
        c, w = self.cfg, self.w
        ids = torch.as_tensor(token_ids, dtype=torch.long)
        n = ids.shape[0]
        pos = torch.arange(n)
        x = w["embed"][ids]
        for i, kind in enumerate(c.layers):
            h = _rms(x, w[f"{i}.norm"], c.eps)
            if kind in ATTENTION_KINDS:
                q, k, v = self._qkv(i, h, pos)
                rep = c.num_heads // c.num_kv_heads
                k = k.repeat_interleave(rep, dim=1).float()
                v = v.repeat_interleave(rep, dim=1).float()
                mask = pos[None, :] <= pos[:, None]
                if kind == SLIDING:
                    mask &= pos[None, :] > pos[:, None] - c.window
                elif kind == CHUNKED:
                    mask &= pos[None, :] // c.chunk == pos[:, None] // c.chunk
                s = torch.einsum("qhd,khd->hqk", q.float(), k) / math.sqrt(c.head_dim)
                p = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1)
                o = torch.einsum("hqk,khd->qhd", p, v).to(x.dtype)
                x = x + o.reshape(n, -1) @ w[f"{i}.o"].T
            elif kind == MAMBA2:
                x = x + self._dense_mamba(i, h)
            else:
                x = x + self._dense_gdn(i, h)
            x = x + self._mlp(i, x)
        return self._head(x).float()

    def _dense_conv(self, i: int, xbc: torch.Tensor, bias: bool) -> torch.Tensor:
        weight = self.w[f"{i}.conv_w"]
        b = self.w[f"{i}.conv_b"] if bias else None
        y = F.conv1d(
            xbc.T[None].float(),
            weight.float()[:, None, :],
            None if b is None else b.float(),
            padding=weight.shape[1] - 1,
            groups=weight.shape[0],
        )[0, :, : xbc.shape[0]]
        return F.silu(y).T.to(xbc.dtype)

    def _dense_mamba(self, i: int, h: torch.Tensor) -> torch.Tensor:
        c, w = self.cfg, self.w
        z, xbc, dt = self._mamba_in(i, h)
        xs, b, cc = self._mamba_split(self._dense_conv(i, xbc, bias=True))
        rep = c.mamba_heads // c.mamba_groups
        state = torch.zeros(c.mamba_heads, c.mamba_head_dim, c.d_state)
        a = w[f"{i}.A"].float()
        ys = []
        for t in range(h.shape[0]):
            d = F.softplus(dt[t].float() + w[f"{i}.dt_bias"].float())  # [heads]
            bt = b[t].float().repeat_interleave(rep, 0)  # [heads, d_state]
            ct = cc[t].float().repeat_interleave(rep, 0)
            xt = xs[t].float()  # [heads, head_dim]
            state = state * torch.exp(d * a)[:, None, None] + torch.einsum(
                "h,hp,hn->hpn", d, xt, bt
            )
            ys.append(torch.einsum("hpn,hn->hp", state, ct) + w[f"{i}.D"].float()[:, None] * xt)
        y = torch.stack(ys).to(h.dtype)
        return self._mamba_out(i, y, z)

    def _dense_gdn(self, i: int, h: torch.Tensor) -> torch.Tensor:
        c, w = self.cfg, self.w
        qkv, z, a, b = self._gdn_in(i, h)
        q, k, v = self._gdn_split(self._dense_conv(i, qkv, bias=False))
        rep = c.gdn_v_heads // c.gdn_k_heads
        s = torch.zeros(c.gdn_v_heads, c.gdn_v_dim, c.gdn_k_dim)
        eye = torch.eye(c.gdn_k_dim)
        decay_rate = torch.exp(w[f"{i}.A_log"].float())
        outs = []
        for t in range(h.shape[0]):
            qt = q[t].float() / torch.sqrt((q[t].float() ** 2).sum(-1, keepdim=True) + 1e-6)
            kt = k[t].float() / torch.sqrt((k[t].float() ** 2).sum(-1, keepdim=True) + 1e-6)
            qt = qt.repeat_interleave(rep, 0) / math.sqrt(c.gdn_k_dim)
            kt = kt.repeat_interleave(rep, 0)
            alpha = torch.exp(-decay_rate * F.softplus(a[t].float() + w[f"{i}.dt_bias"].float()))
            beta = torch.sigmoid(b[t].float())
            proj = eye - beta[:, None, None] * torch.einsum("hi,hj->hij", kt, kt)
            s = alpha[:, None, None] * (s @ proj) + beta[:, None, None] * torch.einsum(
                "hv,hk->hvk", v[t].float(), kt
            )
            outs.append(torch.einsum("hvk,hk->hv", s, qt))
        o = torch.stack(outs).to(h.dtype)
        return self._gdn_out(i, o, z)

    def dense_generate(self, prompt: Sequence[int], max_tokens: int) -> list[int]:
        """Greedy continuation of ``prompt`` by re-running the dense path every token."""
        seq = list(prompt)
        out: list[int] = []
        for _ in range(max_tokens):
            nxt = int(self.dense_logits(seq)[-1].argmax())
            out.append(nxt)
            seq.append(nxt)
        return out


__all__ = [
    "ATTENTION_KINDS",
    "CHUNKED",
    "FULL",
    "GDN",
    "LAYER_KINDS",
    "MAMBA2",
    "SLIDING",
    "TinyConfig",
    "TinyHybridLM",
]
