"""What one ``hybridkv simulate`` run depends on: :class:`SimConfig`, the trace it names,
and hybridkv's own plans of it (the base plan every layout starts from, and the plan the
cost model reads)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from hybridkv.errors import PlanError
from hybridkv.planning.planner import MemoryPlan, plan_memory
from hybridkv.serving.sharegpt_trace import ShareGPTOptions
from hybridkv.serving.trace_sources import open_trace
from hybridkv.serving.traces import Trace, TraceWindow


@dataclass(frozen=True)
class SimConfig:
    """Everything a simulation run depends on (with the trace, its whole input)."""

    model: str
    memory_bytes: int
    trace: str
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 8192
    max_model_len: int | None = None
    block_size: int = 16
    mamba_cache_mode: str = "align"
    policy: str = "fcfs"
    gpu: str = "h100-sxm"
    #: ``None``: the smallest count that holds weights + KV + activations (cost model).
    num_gpus: int | None = None
    seed: int | None = None
    long_prefill_token_threshold: int | None = None
    state_checkpoint_tokens: int | None = 256
    state_cache_slots: int = 0
    #: Which part of the trace runs, and how fast (time window, first N, time scale).
    trace_window: TraceWindow = field(default_factory=TraceWindow)
    #: How ``--trace sharegpt`` builds its sessions (``None``: the defaults).
    sharegpt: ShareGPTOptions | None = None


def resolve_trace(
    name_or_path: str,
    seed: int | None = None,
    *,
    window: TraceWindow | None = None,
    sharegpt: ShareGPTOptions | None = None,
) -> Trace:
    """The trace ``--trace`` names (:func:`hybridkv.serving.trace_sources.open_trace`): a bundled
    trace (with ``seed`` a fresh generation of that kind), ``sharegpt``, a Mooncake
    ``.jsonl`` file or a trace file, cut and scaled by ``window``."""
    return open_trace(name_or_path, seed=seed, window=window, sharegpt=sharegpt)


def default_max_model_len(trace: Trace, block_size: int) -> int:
    """The trace's longest request (prompt + output), rounded up to a block."""
    longest = int(trace.summary()["max_seq_len"])
    return max(block_size, -(-longest // block_size) * block_size)


def base_plan(cfg: SimConfig, trace: Trace, layout: str = "static") -> MemoryPlan:
    """hybridkv's own plan of ``cfg`` (the ``static`` layout; other layouts start from
    it), or with ``layout="elastic"`` its elastic plan."""
    from hybridkv.models import load_model

    model = load_model(cfg.model)
    mml = cfg.max_model_len or default_max_model_len(trace, cfg.block_size)
    return plan_memory(
        model,
        memory_bytes=cfg.memory_bytes,
        max_num_seqs=cfg.max_num_seqs,
        max_model_len=mml,
        max_num_batched_tokens=cfg.max_num_batched_tokens,
        block_size=cfg.block_size,
        mamba_cache_mode=cfg.mamba_cache_mode,
        state_cache_slots=cfg.state_cache_slots,
        state_checkpoint_tokens=(
            cfg.state_checkpoint_tokens if cfg.mamba_cache_mode == "align" else None
        ),
        layout=layout,
    )


def runnable_base_plan(cfg: SimConfig, trace: Trace) -> MemoryPlan:
    """The static plan, or the elastic one where the static bounds don't fit."""
    try:
        return base_plan(cfg, trace)
    except PlanError:
        return base_plan(cfg, trace, layout="elastic")


def cost_plan(cfg: SimConfig, trace: Trace) -> MemoryPlan:
    """The plan the cost model reads, the same for every layout: the model's groups at
    their natural page sizes (per-token bytes, layer counts) and the run's limits and
    memory. That geometry does not depend on the pool sizes, so where hybridkv's own
    layouts refuse the memory (their floors don't fit; ``vllm``, which reserves none,
    may still run) it is the static plan at the smallest doubling of the memory that
    fits, with ``memory_bytes`` set back to the run's (the GPU sizing reads it)."""
    try:
        return runnable_base_plan(cfg, trace)
    except PlanError as first:
        mem = cfg.memory_bytes
        for _ in range(16):
            mem *= 2
            try:
                plan = base_plan(replace(cfg, memory_bytes=mem), trace)
            except PlanError:
                continue
            return replace(plan, memory_bytes=cfg.memory_bytes)
        raise first
