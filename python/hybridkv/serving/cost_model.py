"""A roofline cost model for one serving step, so the simulator needs no GPU.

The model
---------
A step runs every scheduled request's new tokens through the model once. Its modelled
duration is the roofline bound

    t_step = max(FLOPs / peak_flops, bytes / peak_bandwidth)

against the named GPU's datasheet peaks (bf16 dense tensor FLOP/s and HBM bandwidth,
times ``num_gpus`` with ideal tensor-parallel scaling). It is a lower bound on a real
engine's step time (no kernel launch, communication or efficiency losses), applied the
same way to every layout, so ratios between layouts are what it is for.

FLOPs, with ``T`` new tokens in the step and ``S`` of them sampled (the last position
of a request that has finished its prompt):

* weights: ``2 * body_params * T`` where ``body_params`` is the active parameter count
  minus the embedding and LM head, plus ``2 * vocab * hidden * S`` for the LM head;
* attention: ``4 * q_heads * head_dim`` per layer per (query, key) pair (QK^T and PV).
  A request with ``c`` tokens already computed and ``n`` new attends, summed over its
  new tokens, to ``f(c + n) - f(c)`` keys, with ``f`` the closed form for the layer's
  kind: causal ``x(x+1)/2``; sliding window of ``W`` capped at ``W`` keys; chunked local
  restarting at every chunk; cross attention ``max_encoder_len`` keys per token;
* state layers (Mamba-2, gated delta net): 2 FLOPs per state byte per token (a decayed
  outer-product update and a read-out over the state, at 2-byte elements).

Bytes moved:

* weights, once per step: all non-expert parameters, plus for MoE layers the experts
  the step's ``T`` tokens touch, expected ``E * (1 - (1 - k/E)^T)`` of ``E`` with top-k
  routing (so decode at batch 1 reads ``k`` experts and large batches read nearly all);
* KV cache: every attention group reads the keys its new tokens attend to, once per
  request (flash-attention style), ``min(context, window)`` tokens for windowed kinds,
  and writes the new tokens; bytes per token come from the memory plan's page sizes;
* state: each scheduled request reads and writes its state once per state group.

Deployment
----------
The model has to fit. When ``num_gpus`` is not given, it is sized: the smallest count
of the named GPU whose usable memory (``memory_utilization`` of what the card reports,
0.9 as in vLLM) holds the weights (``total params * weight_bytes``), the plan's KV-cache
memory and the activations of one step (estimated as ``max_num_batched_tokens * hidden
* 2 bytes * 24`` plus ``max_num_seqs`` fp32 logit rows), weights and KV split evenly
across the GPUs (ideal tensor parallelism), activations replicated on each, and that
divides the attention head count (tensor-parallel ranks split heads). A given
``num_gpus`` that cannot hold it all is refused with a :class:`PlanError` saying how
much is needed and the smallest count that fits. :meth:`CostModel.describe` reports
the sizing.

Parameter counts come from the model cards (:data:`PUBLISHED_PARAMS`, facts) for the
bundled models; any other model gets the dense estimate ``12 * L * d^2 + V * d``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from hybridkv.errors import InvalidArgumentError, PlanError

if TYPE_CHECKING:
    from hybridkv.planning.planner import MemoryPlan

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class GPU:
    """Datasheet peaks of one accelerator: bf16 dense FLOP/s, memory bytes/s, and its
    memory in bytes (as the driver reports it)."""

    name: str
    peak_flops: float
    peak_bandwidth: float
    memory_bytes: int


_MIB = 1 << 20
_GIB = 1 << 30

#: Datasheet numbers (bf16 dense tensor core, no sparsity; HBM bandwidth); memory as
#: nvidia-smi reports it (an "80 GB" H100 shows 81559 MiB).
GPUS: dict[str, GPU] = {
    "h100-sxm": GPU("NVIDIA H100 SXM", 989e12, 3.35e12, 81559 * _MIB),
    "h100-pcie": GPU("NVIDIA H100 PCIe", 756e12, 2.0e12, 81559 * _MIB),
    "h200": GPU("NVIDIA H200 SXM", 989e12, 4.8e12, 143771 * _MIB),
    "a100-80gb": GPU("NVIDIA A100 80GB SXM", 312e12, 2.039e12, 81920 * _MIB),
    "b200": GPU("NVIDIA B200", 2250e12, 8.0e12, 183359 * _MIB),
}

#: Share of a GPU's memory a serving engine may use (vLLM's gpu_memory_utilization).
MEMORY_UTILIZATION = 0.9
#: Most GPUs the sizing considers.
MAX_GPUS = 64
#: Activation bytes per batched token per hidden unit (bf16 hidden states, residual,
#: QKV and MLP intermediates live at once: about 24 hidden-sized bf16 vectors).
_ACT_BYTES_PER_TOKEN_HIDDEN = 2 * 24


@dataclass(frozen=True)
class Deployment:
    """How many GPUs serve the model and what each must hold (module docstring)."""

    gpu: GPU
    num_gpus: int
    sized: bool  # True: chosen by the sizing; False: given
    weight_bytes: float
    kv_bytes: float
    activation_bytes: float  # per GPU
    usable_bytes_per_gpu: float
    note: str

    def describe(self) -> dict[str, Any]:
        return {
            "num_gpus": self.num_gpus,
            "num_gpus_sized": self.sized,
            "weights_gib": self.weight_bytes / _GIB,
            "kv_cache_gib": self.kv_bytes / _GIB,
            "activations_gib_per_gpu": self.activation_bytes / _GIB,
            "usable_gib_per_gpu": self.usable_bytes_per_gpu / _GIB,
            "memory_per_gpu_gib": self.per_gpu_bytes / _GIB,
            "sizing": self.note,
        }

    @property
    def per_gpu_bytes(self) -> float:
        return (self.weight_bytes + self.kv_bytes) / self.num_gpus + self.activation_bytes


def _fits(n: int, weights: float, kv: float, act: float, usable: float) -> bool:
    return (weights + kv) / n + act <= usable


def size_deployment(
    plan: MemoryPlan,
    gpu: GPU,
    params: Params,
    *,
    num_gpus: int | None = None,
    weight_bytes: float = 2.0,
    memory_utilization: float = MEMORY_UTILIZATION,
) -> Deployment:
    """Size (``num_gpus=None``) or check (a given count) the GPUs for ``plan``: see the
    module docstring. Raises :class:`PlanError` when nothing (or the given count) fits."""
    model = plan.model
    hidden = int(model.hidden_size or 4096)
    vocab = int(model.vocab_size or 32000)
    weights = params.total * weight_bytes
    kv = float(plan.memory_bytes)
    act = float(
        plan.max_num_batched_tokens * hidden * _ACT_BYTES_PER_TOKEN_HIDDEN
        + plan.max_num_seqs * vocab * 4
    )
    usable = gpu.memory_bytes * memory_utilization
    need = f"{weights / _GIB:.1f} GiB of weights ({params.total / 1e9:.3g}B params at {weight_bytes:g} bytes) + {kv / _GIB:.1f} GiB of KV cache + {act / _GIB:.2f} GiB of activations per GPU"
    heads = int(model.num_attention_heads or 0)
    smallest = next((n for n in range(1, MAX_GPUS + 1) if _fits(n, weights, kv, act, usable)), None)
    cap = f"one {gpu.name} offers {usable / _GIB:.1f} GiB ({memory_utilization:.0%} of {gpu.memory_bytes / _GIB:.1f} GiB)"
    if num_gpus is not None:
        if not _fits(num_gpus, weights, kv, act, usable):
            hint = (
                f"the smallest count that fits is {smallest} (--num-gpus {smallest}), or give less --memory"
                if smallest is not None
                else f"no count up to {MAX_GPUS} fits"
            )
            raise PlanError(
                f"{plan.model.name} does not fit on {num_gpus} x {gpu.name}: {need}; {cap}; {hint}"
            )
        return Deployment(
            gpu,
            num_gpus,
            False,
            weights,
            kv,
            act,
            usable,
            f"given: {num_gpus} x {gpu.name}; {need}",
        )
    if smallest is None:
        raise PlanError(
            f"{plan.model.name} does not fit on up to {MAX_GPUS} x {gpu.name}: {need}; {cap}"
        )
    n = next(
        (k for k in range(smallest, MAX_GPUS + 1) if not heads or heads % k == 0),
        smallest,
    )
    why = f"sized: {n} x {gpu.name}, the smallest count that holds {need} ({cap})"
    if n != smallest:
        why += f"; {smallest} would hold the bytes but {heads} attention heads do not split {smallest} ways"
    return Deployment(gpu, n, True, weights, kv, act, usable, why)


@dataclass(frozen=True)
class Params:
    """Published parameter counts of one model (total, active per token, MoE routing)."""

    total: float
    active: float
    num_experts: int = 0
    experts_per_token: int = 0


#: From the model cards (facts). MoE entries give the routed expert count and top-k
#: (as in each bundled config.json).
PUBLISHED_PARAMS: dict[str, Params] = {
    "qwen3-next-80b-a3b": Params(80e9, 3e9, 512, 10),
    "qwen3.5-35b-a3b": Params(35e9, 3e9, 256, 8),
    "qwen3.5-4b": Params(4e9, 4e9),
    "deepseek-v3": Params(671e9, 37e9, 256, 8),
    "falcon-h1-7b": Params(7.6e9, 7.6e9),
    "gemma-3-27b-it": Params(27e9, 27e9),
    "gpt-oss-20b": Params(21e9, 3.6e9, 32, 4),
    "granite-4.0-h-small": Params(32e9, 9e9, 72, 10),
    "jamba-1.5-mini": Params(52e9, 12e9, 16, 2),
    "llama-3.1-8b": Params(8e9, 8e9),
    "llama-4-scout-17b-16e": Params(109e9, 17e9, 16, 1),
    "nemotron-nano-9b-v2": Params(9e9, 9e9),
    "whisper-large-v3": Params(1.55e9, 1.55e9),
    "zamba2-2.7b": Params(2.7e9, 2.7e9),
}

_ATTENTION_KINDS = (
    "full_attention",
    "mla",
    "sparse_mla",
    "sliding_window",
    "chunked_local",
    "cross_attention",
)


@dataclass(frozen=True)
class _AttnGroup:
    kind: str
    layers: int
    flops_per_pair: float  # per (query, key) pair, all layers of the group
    kv_bytes_per_token: float  # all layers of the group
    span: int  # window, chunk size or encoder length; 0 for causal full attention


@dataclass(frozen=True)
class StepCost:
    """Modelled cost of one step."""

    seconds: float
    flops: float
    bytes: float


class CostModel:
    """Roofline step cost for one model, memory plan and GPU (see the module docstring)."""

    def __init__(
        self,
        plan: MemoryPlan,
        *,
        gpu: str | GPU = "h100-sxm",
        num_gpus: int | None = None,
        weight_bytes: float = 2.0,
        params: Params | None = None,
        memory_utilization: float = MEMORY_UTILIZATION,
    ) -> None:
        if isinstance(gpu, str):
            try:
                gpu = GPUS[gpu.lower()]
            except KeyError:
                raise InvalidArgumentError(
                    f"unknown GPU {gpu!r}; known: {', '.join(sorted(GPUS))}"
                ) from None
        if num_gpus is not None and (
            isinstance(num_gpus, bool) or not isinstance(num_gpus, int) or num_gpus < 1
        ):
            raise InvalidArgumentError(f"num_gpus must be a positive int, got {num_gpus!r}")
        if not weight_bytes > 0:
            raise InvalidArgumentError(f"weight_bytes must be > 0, got {weight_bytes!r}")
        if not 0 < memory_utilization <= 1:
            raise InvalidArgumentError(
                f"memory_utilization must be in (0, 1], got {memory_utilization!r}"
            )
        model = plan.model
        self.gpu = gpu
        self.weight_bytes = float(weight_bytes)
        hidden = int(model.hidden_size or 4096)
        vocab = int(model.vocab_size or 32000)
        heads = int(model.num_attention_heads or max(1, hidden // 128))
        self.params = (
            params
            or PUBLISHED_PARAMS.get(model.name)
            or _dense_estimate(model.num_layers, hidden, vocab)
        )
        self.params_source = (
            "given"
            if params is not None
            else "published"
            if model.name in PUBLISHED_PARAMS
            else "estimated 12*L*d^2+V*d"
        )
        p = self.params
        self.deployment = size_deployment(
            plan,
            gpu,
            p,
            num_gpus=num_gpus,
            weight_bytes=self.weight_bytes,
            memory_utilization=memory_utilization,
        )
        self.num_gpus = self.deployment.num_gpus
        self.peak_flops = gpu.peak_flops * self.num_gpus
        self.peak_bandwidth = gpu.peak_bandwidth * self.num_gpus
        self.lm_head_params = float(vocab * hidden)
        self.body_params = max(p.active - 2.0 * self.lm_head_params, 0.1 * p.active)
        e, k = p.num_experts, p.experts_per_token
        if e > k > 0 and p.total > p.active:
            per_expert = (p.total - p.active) / (e - k)
            self.routed_params = per_expert * e
        else:
            self.routed_params = 0.0
        self.static_params = p.total - self.routed_params

        self._attn: list[_AttnGroup] = []
        self._state_bytes = 0.0
        self._state_flops_per_token = 0.0
        # Per-layer geometry from the layer specs: q heads from the config, head size
        # from the spec (TP already divided heads in the spec; the peaks are aggregate,
        # so we count the whole model's work).
        for g in plan.groups:
            n_layers = len(g.layers)
            if g.kind in _ATTENTION_KINDS:
                head = int(getattr(g.spec, "head_size", 0) or hidden // heads)
                flops_pair = 4.0 * heads * head * n_layers
                span = int(g.window or g.chunk_size or g.max_encoder_len or 0)
                bpt = g.page_size_bytes / g.block_size * model.tp
                self._attn.append(_AttnGroup(g.kind, n_layers, flops_pair, bpt, span))
            elif g.kind == "state":
                state = float(g.page_size_bytes) * model.tp
                self._state_bytes += state
                self._state_flops_per_token += 2.0 * state

    def describe(self) -> dict[str, Any]:
        """The constants the model uses, for reports."""
        return {
            "gpu": self.gpu.name,
            "num_gpus": self.num_gpus,
            "peak_tflops": self.peak_flops / 1e12,
            "peak_tb_per_s": self.peak_bandwidth / 1e12,
            "total_params": self.params.total,
            "active_params": self.params.active,
            "params_source": self.params_source,
            "weight_bytes_per_param": self.weight_bytes,
            **self.deployment.describe(),
        }

    def step(self, num_new: I64, num_computed: I64, num_sampled: int) -> StepCost:
        """Cost of one step: request ``i`` computes ``num_new[i]`` tokens after
        ``num_computed[i]`` cached ones; ``num_sampled`` positions go through the LM head."""
        n = np.asarray(num_new, dtype=np.float64)
        c = np.asarray(num_computed, dtype=np.float64)
        tokens = float(n.sum())
        if tokens <= 0:
            return StepCost(0.0, 0.0, 0.0)
        flops = 2.0 * self.body_params * tokens + 2.0 * self.lm_head_params * num_sampled
        e, k = self.params.num_experts, self.params.experts_per_token
        if self.routed_params > 0:
            touched = 1.0 - (1.0 - k / e) ** tokens
            weights = self.static_params + self.routed_params * touched
        else:
            weights = self.params.total
        moved = weights * self.weight_bytes
        end = c + n
        for a in self._attn:
            pairs = float((_keys(a, end) - _keys(a, c)).sum())
            flops += a.flops_per_pair * pairs
            if a.kind == "cross_attention":
                read = np.full_like(end, float(a.span))
            elif a.span:
                read = np.minimum(end, a.span)
            else:
                read = end
            moved += a.kv_bytes_per_token * (float(read.sum()) + tokens)
        if self._state_bytes:
            flops += self._state_flops_per_token * tokens
            moved += 2.0 * self._state_bytes * n.shape[0]
        seconds = max(flops / self.peak_flops, moved / self.peak_bandwidth)
        return StepCost(seconds, flops, moved)


def _keys(a: _AttnGroup, x: F64) -> F64:
    """Total keys attended by positions ``0 .. x-1`` (closed forms, vectorised)."""
    if a.kind == "cross_attention":
        cross: F64 = x * float(a.span)
        return cross
    if a.kind == "chunked_local" and a.span:
        q, r = np.divmod(x, float(a.span))
        out: F64 = q * (a.span * (a.span + 1) / 2.0) + r * (r + 1) / 2.0
        return out
    if a.kind == "sliding_window" and a.span:
        w = float(a.span)
        head = np.minimum(x, w)
        win: F64 = head * (head + 1) / 2.0 + np.maximum(x - w, 0.0) * w
        return win
    causal: F64 = x * (x + 1) / 2.0
    return causal


def _dense_estimate(layers: int, hidden: int, vocab: int) -> Params:
    total = 12.0 * layers * hidden * hidden + float(vocab * hidden)
    return Params(total, total)


__all__ = [
    "GPU",
    "GPUS",
    "MEMORY_UTILIZATION",
    "PUBLISHED_PARAMS",
    "CostModel",
    "Deployment",
    "Params",
    "StepCost",
    "size_deployment",
]
