"""Serving simulation: a trace through the scheduler and the real KV-cache manager, no GPU.

``hybridkv simulate --model NAME --memory SIZE --trace NAME|PATH`` plans the memory,
builds a :class:`hybridkv.KVCacheManager` and a :class:`hybridkv.serving.scheduler.Scheduler`
over it, and replays the trace as a discrete-event simulation: every step the
scheduler plans a batch (real allocation, real prefix lookups, real preemptions) and
the clock advances by that batch's modelled duration from the roofline
:class:`hybridkv.serving.cost_model.CostModel`. Requests arrive at their trace times (or,
closed-loop, a think/tool delay after their parent finished); each sampled token is
the trace's next output token, so later turns really hit the blocks earlier turns
wrote. The wall-clock time of ``schedule()`` plus ``update_from_output()`` (the
scheduler and every manager call it makes) is measured per step.

Layouts
-------
A layout is a way to lay the same memory out; :func:`register_layout` adds one (a
name and a builder from the run's config and hybridkv's plan to a
:class:`LayoutSetup`: plan, manager factory, scheduler options). Without ``--layout``
every registered layout runs and the report puts them side by side, with ``static``
over the ``vllm`` baseline as ratios.

``static`` is hybridkv's plan (:func:`hybridkv.planning.planner.plan_memory`): one pool per
KV-cache group at its natural page size, bounded pools right-sized, the growing groups
sharing the rest. In ``mamba_cache_mode="align"`` its state groups checkpoint every
``state_checkpoint_tokens`` (default 256; the planner's ``state_checkpoint_tokens``): a
state block is one whole state at any interval, so this costs no memory, but at the
16-token attention block size decoding would move every request's running state to a
fresh block every 16 tokens and churn the small state pool, evicting the end-of-turn
checkpoints that later turns need. The state pool itself is sized for
``max_num_seqs`` running states with no spare slots by default;
``state_cache_slots`` (``--state-cache-slots N``) gives every static state pool ``N``
spare blocks for cached checkpoints, paid for in token capacity (the ``vllm`` layout,
whose states share its one pool, is unaffected).

``elastic`` (the first layout, hybridkv's default) is ``plan_memory(layout="elastic")``:
one arena shared by every group at its natural page size, bounded groups holding
floors and the rest flowing between groups region by region
(``rust/core/src/arena.rs``). In align mode its state block is the attention block
(``elastic_checkpoint_tokens``, default ``block_size``), so its checkpoint policy, not an
interval, decides where checkpoints land (prompt ends, turn ends, and the branch points
lookups find: the scheduler ends an admitted request's first chunk there,
``cut_at_shared_prefix``). Where the static
bounds don't fit but the capped floors do, only ``elastic`` runs. Its report adds
``arena``: region size, waste (bytes no group could use, mean and peak over steps and
as a fraction of memory) and how many regions were granted and moved.

``vllm`` is vLLM 0.33's runtime layout (:func:`hybridkv.planning.planner.vllm_runtime_plan`):
vLLM's layer groups of ``group_size`` layers, the attention block size raised until a
page holds a state page (state pages padded to it), and ONE block pool shared by every
group (a :class:`hybridkv.KVCacheManager` with ``shared_pool=True``: one id space, one
LRU free queue where unhashed freed blocks go to the front and hashed ones to the back,
allocation checked against the global free count, blocks that left a window released
when their request is next allocated). Prefix hits and state checkpoints land on the
inflated block (a prompt shorter than one block gets no hit). The scheduler cuts
align-mode prefill chunks by vLLM's rule (``chunk_split="vllm"``: a state is cached
only where a chunk ends on a block boundary; chunks stop at the last block boundary
before the prompt's end and at the shared-prefix boundary). ``benches/
bench_vllm_layout.py`` checks this model against vLLM's own ``KVCacheManager``.

Offload hook: ``offload`` (see :class:`hybridkv.serving.scheduler.ExternalPrefixSource`) is
consulted on admission for tokens beyond the device hit; if it has
``load_seconds(tokens) -> float`` the clock is charged that, and ``after_step(manager,
output)`` is called after every step so it can store what it needs.
"""

from __future__ import annotations

import argparse
import heapq
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from hybridkv.errors import HybridKVError, InvalidArgumentError, PlanError
from hybridkv.planning.planner import (
    MemoryPlan,
    plan_memory,
    vllm_runtime_plan,
    vllm_runtime_plan_for,
)
from hybridkv.serving.cost_model import GPUS, CostModel
from hybridkv.serving.ideal_hit import ideal_hit_rate
from hybridkv.serving.scheduler import POLICIES, ExternalPrefixSource, Scheduler
from hybridkv.serving.sharegpt_trace import ShareGPTOptions
from hybridkv.serving.trace_sources import open_trace
from hybridkv.serving.traces import Trace, TraceWindow

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


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
    #: The ``elastic`` layout's state block size in align mode (``None``: ``block_size``:
    #: checkpoints land only where its checkpoint policy puts them: prompt ends, turn
    #: ends, branch points; ``rust/core/src/manager/checkpoints.rs``).
    elastic_checkpoint_tokens: int | None = None
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


# -- layouts --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayoutSetup:
    """How one layout runs: its plan, its manager and the scheduler options it needs.

    ``manager_factory`` builds the manager from ``plan`` (``None``: a
    :class:`hybridkv.KVCacheManager` over ``plan`` with prefix caching on);
    ``scheduler_options`` are extra :class:`hybridkv.serving.scheduler.Scheduler` keyword
    arguments (e.g. vLLM's chunk-split rule)."""

    plan: MemoryPlan
    manager_factory: Callable[[MemoryPlan], Any] | None = None
    scheduler_options: Mapping[str, Any] = field(default_factory=dict)


#: Builds a layout from the run's config and hybridkv's own plan of it; raises
#: :class:`PlanError` (the report shows why) when the layout cannot run.
LayoutBuilder = Callable[[SimConfig, MemoryPlan], LayoutSetup]


#: Builds a layout from the run's config and trace alone, for where hybridkv's own plan
#: of the config is refused (a peer's layout that reserves no floors may still run).
PlanlessBuilder = Callable[[SimConfig, Trace], LayoutSetup]


@dataclass(frozen=True)
class Layout:
    """A named way to lay the KV-cache memory out (one column of the report)."""

    name: str
    help: str
    build: LayoutBuilder
    build_without_plan: PlanlessBuilder | None = None


#: Every layout ``simulate`` knows, in report order (see :func:`register_layout`).
LAYOUTS: dict[str, Layout] = {}


def register_layout(
    name: str,
    build: LayoutBuilder,
    help: str,
    *,
    build_without_plan: PlanlessBuilder | None = None,
) -> None:
    """Add a layout: ``build(cfg, plan)`` returns its :class:`LayoutSetup`;
    ``build_without_plan(cfg, trace)``, if given, builds it where hybridkv's own plan
    of ``cfg`` is refused (otherwise the layout reports that refusal)."""
    if name in LAYOUTS:
        raise InvalidArgumentError(f"layout {name!r} is already registered")
    LAYOUTS[name] = Layout(name, help, build, build_without_plan)


def _static(cfg: SimConfig, plan: MemoryPlan) -> LayoutSetup:
    if plan.layout != "static":  # the static bounds did not fit (see make_layouts)
        raise PlanError(str(plan_error_static(cfg, plan)))
    return LayoutSetup(plan)


def plan_error_static(cfg: SimConfig, plan: MemoryPlan) -> PlanError:
    """Why the static plan of ``cfg`` (with ``plan``'s limits) is refused."""
    try:
        plan_memory(
            plan.model,
            memory_bytes=cfg.memory_bytes,
            max_num_seqs=plan.max_num_seqs,
            max_model_len=plan.max_model_len,
            max_num_batched_tokens=plan.max_num_batched_tokens,
            block_size=plan.block_size,
            mamba_cache_mode=plan.mamba_cache_mode,
            state_cache_slots=plan.state_cache_slots,
            state_checkpoint_tokens=plan.state_checkpoint_tokens,
        )
    except PlanError as e:
        return e
    return PlanError("static plan unavailable")


def _elastic(cfg: SimConfig, plan: MemoryPlan) -> LayoutSetup:
    ckpt = (
        cfg.elastic_checkpoint_tokens or plan.block_size
        if plan.mamba_cache_mode == "align"
        else None
    )
    # Align mode: the first chunk of an admitted request ends at the branch point its
    # lookup found, so the state checkpoints the shared prefix (checkpoint policy).
    sched: dict[str, Any] = (
        {"cut_at_shared_prefix": True, "prompt_cut": cfg.state_checkpoint_tokens or 0}
        if plan.mamba_cache_mode == "align"
        else {}
    )
    if plan.layout == "elastic" and (plan.state_checkpoint_tokens or plan.block_size) == (
        ckpt or plan.block_size
    ):
        return LayoutSetup(plan, scheduler_options=sched)
    return LayoutSetup(
        plan_memory(
            plan.model,
            memory_bytes=cfg.memory_bytes,
            max_num_seqs=plan.max_num_seqs,
            max_model_len=plan.max_model_len,
            max_num_batched_tokens=plan.max_num_batched_tokens,
            block_size=plan.block_size,
            mamba_cache_mode=plan.mamba_cache_mode,
            bounded_sizing=plan.bounded_sizing,
            state_cache_slots=plan.state_cache_slots,
            state_checkpoint_tokens=ckpt,
            layout="elastic",
        ),
        scheduler_options=sched,
    )


def _vllm(cfg: SimConfig, plan: MemoryPlan) -> LayoutSetup:
    return _vllm_setup(vllm_runtime_plan(plan))


def _vllm_alone(cfg: SimConfig, trace: Trace) -> LayoutSetup:
    # vLLM reserves no floors: it starts wherever one max_model_len request fits.
    from hybridkv.models import load_model

    return _vllm_setup(
        vllm_runtime_plan_for(
            load_model(cfg.model),
            memory_bytes=cfg.memory_bytes,
            max_num_seqs=cfg.max_num_seqs,
            max_model_len=cfg.max_model_len or default_max_model_len(trace, cfg.block_size),
            max_num_batched_tokens=cfg.max_num_batched_tokens,
            block_size=cfg.block_size,
            mamba_cache_mode=cfg.mamba_cache_mode,
        )
    )


def _vllm_setup(vplan: MemoryPlan) -> LayoutSetup:
    # vLLM keeps prefix caching for a model with state layers only in align mode.
    caching = vplan.mamba_cache_mode == "align" or all(g.kind != "state" for g in vplan.groups)

    def manager(p: MemoryPlan) -> Any:
        from hybridkv.cache.manager import KVCacheManager

        return KVCacheManager(p, enable_prefix_caching=caching, hash_seed=0)

    return LayoutSetup(vplan, manager, {"chunk_split": "vllm"})


register_layout(
    "elastic",
    _elastic,
    "hybridkv's default: one arena shared by all groups at natural page sizes, floors for "
    "bounded groups",
)
register_layout("static", _static, "hybridkv's per-group pools at natural page sizes (planner)")
register_layout(
    "vllm",
    _vllm,
    "vLLM 0.33's runtime layout: one shared pool at its inflated block size",
    build_without_plan=_vllm_alone,
)


def make_layouts(
    cfg: SimConfig, trace: Trace, names: Sequence[str] | None = None
) -> dict[str, LayoutSetup | str]:
    """Per layout (all registered ones by default): its setup, or why it cannot run.
    Where hybridkv's own plan is refused, a layout with ``build_without_plan`` (vLLM's,
    which reserves no floors) still runs; the others report the refusal."""
    refused: dict[str, PlanError] = {}
    plan: MemoryPlan | None = None
    try:
        plan = base_plan(cfg, trace)
    except PlanError as e:
        refused["static"] = e
        try:
            plan = base_plan(cfg, trace, layout="elastic")
        except PlanError as e2:
            refused["elastic"] = e2
    out: dict[str, LayoutSetup | str] = {}
    for name in names if names is not None else list(LAYOUTS):
        lay = LAYOUTS[name]
        try:
            if plan is not None:
                out[name] = lay.build(cfg, plan)
            elif lay.build_without_plan is not None:
                out[name] = lay.build_without_plan(cfg, trace)
            else:
                out[name] = str(refused.get(name, refused["elastic"]))
        except PlanError as e:
            out[name] = str(e)
    return out


def make_plans(cfg: SimConfig, trace: Trace) -> dict[str, MemoryPlan | str]:
    """Per layout: its plan, or why it cannot run."""
    return {k: v if isinstance(v, str) else v.plan for k, v in make_layouts(cfg, trace).items()}


def _pool_used(manager: Any, plan: MemoryPlan) -> F64:
    """Fraction of each pool's usable blocks in use (held by requests)."""
    u = manager.usage()
    row = np.zeros(len(plan.groups))
    got = np.asarray(u, dtype=np.float64).reshape(-1)[: len(plan.groups)]
    row[: got.shape[0]] = got
    return row


def _pct(x: F64, q: float) -> float:
    return float(np.percentile(x, q)) if x.size else float("nan")


def _dist(x: F64) -> dict[str, float]:
    return {
        "mean": float(x.mean()) if x.size else float("nan"),
        "p50": _pct(x, 50),
        "p99": _pct(x, 99),
    }


@dataclass
class LayoutResult:
    """One layout's run: the report and the per-step series (for plots)."""

    report: dict[str, Any]
    times: F64
    usage: F64  # (steps, pools)
    pool_labels: list[str]
    hit_rate: F64


def simulate_plan(
    plan: MemoryPlan,
    trace: Trace,
    *,
    layout: str,
    cost: CostModel,
    policy: str = "fcfs",
    long_prefill_token_threshold: int | None = None,
    offload: ExternalPrefixSource | None = None,
    manager_factory: Callable[[MemoryPlan], Any] | None = None,
    on_progress: Callable[[int, float], None] | None = None,
    scheduler_options: Mapping[str, Any] | None = None,
) -> LayoutResult:
    """Replay ``trace`` on ``plan`` (module docstring); returns the layout's result."""
    n = trace.num_requests
    prompt_lens = trace.prompt_lens
    out_lens = trace.output_lens
    longest = int((prompt_lens + out_lens).max()) if n else 0
    if longest > plan.max_model_len:
        raise InvalidArgumentError(
            f"trace {trace.name!r} has a request of {longest} tokens, above max_model_len "
            f"{plan.max_model_len}"
        )
    if manager_factory is None:
        from hybridkv.cache.manager import KVCacheManager

        manager = KVCacheManager(plan, enable_prefix_caching=True, hash_seed=0)
    else:
        manager = manager_factory(plan)
    sched = Scheduler(
        manager,
        max_num_batched_tokens=plan.max_num_batched_tokens,
        max_num_seqs=plan.max_num_seqs,
        policy=policy,
        long_prefill_token_threshold=long_prefill_token_threshold,
        max_model_len=plan.max_model_len,
        block_size=min([g.block_size for g in plan.groups if g.grows] or [plan.block_size]),
        external=offload,
        **dict(scheduler_options or {}),
    )
    children: dict[int, list[int]] = {}
    for i, p in enumerate(trace.parent.tolist()):
        if p >= 0:
            children.setdefault(p, []).append(i)
    pending: list[tuple[float, int]] = [
        (float(trace.arrival[i]), i) for i in range(n) if trace.parent[i] < 0
    ]
    heapq.heapify(pending)
    arrived = np.full(n, np.nan)
    first_tok = np.full(n, np.nan)
    finish = np.full(n, np.nan)
    n_out = np.zeros(n, dtype=np.int64)
    # Every request's output tokens in one flat array (one vectorised pass, not one
    # list per request): the token request i samples next is out_flat[out_at[i] + n_out[i]].
    out_flat = trace.segments_tokens(trace.output_seg)
    out_at = np.concatenate([[0], np.cumsum(out_lens)[:-1]]).astype(np.int64)
    wall0 = time.perf_counter()
    load_seconds = getattr(offload, "load_seconds", None)
    after_step = getattr(offload, "after_step", None)
    on_step = getattr(offload, "on_step", None)

    t = 0.0
    steps = 0
    idle_steps = 0
    busy_time = 0.0
    conc_time = 0.0
    peak_conc = 0
    hit_tokens = prompt_tokens = 0
    resumed_hits = preemptions = 0
    ext_tokens = 0
    overhead_ns: list[int] = []
    times: list[float] = []
    usage_rows: list[F64] = []
    hit_series: list[float] = []
    done_count = 0
    arena_info = getattr(manager, "arena_info", None)
    waste_rows: list[float] = []
    while pending or sched.has_unfinished():
        if not sched.has_unfinished() and pending[0][0] > t:
            t = pending[0][0]  # idle: jump to the next arrival
        while pending and pending[0][0] <= t:
            _, i = heapq.heappop(pending)
            arrived[i] = t
            sched.add_request(
                i,
                trace.prompt_tokens(i),
                int(out_lens[i]),
                priority=int(trace.priority[i]),
                arrival_time=t,
            )
        t0 = time.perf_counter_ns()
        out = sched.schedule()
        t1 = time.perf_counter_ns()
        ids = out.req_ids
        ext = out.num_external_tokens
        c = cost.step(
            out.num_new_tokens - ext, out.num_computed_before + ext, int(out.samples.sum())
        )
        dt = c.seconds
        if load_seconds is not None and int(ext.sum()):
            dt += float(load_seconds(int(ext.sum())))
        if on_step is not None:  # where an engine's forward pass runs: load, then store
            on_step(manager, out)
        sidx = np.asarray(out.sample_req_ids, dtype=np.int64)
        tokens = out_flat[out_at[sidx] + n_out[sidx]]
        t2 = time.perf_counter_ns()
        done = sched.update_from_output(tokens)
        t3 = time.perf_counter_ns()
        overhead_ns.append((t1 - t0) + (t3 - t2))
        if after_step is not None:
            after_step(manager, out)
        steps += 1
        if ids.size == 0:
            idle_steps += 1
            if idle_steps > 1000:
                raise HybridKVError("simulation stalled: 1000 steps without scheduled work")
            if not pending and not sched.has_unfinished():
                break
            if pending and sched.num_running == 0 and dt == 0.0:
                t = max(t, pending[0][0])
            continue
        idle_steps = 0
        t += dt
        busy_time += dt
        conc_time += dt * out.num_running
        peak_conc = max(peak_conc, out.num_running)
        hit_tokens += int(out.new_hit_tokens.sum())
        prompt_tokens += int(out.new_prompt_lens.sum())
        resumed_hits += int(out.resumed_hit_tokens.sum())
        preemptions += int(out.preempted_req_ids.size)
        ext_tokens += int(ext.sum())
        if sidx.size:
            firsts = sidx[n_out[sidx] == 0]
            first_tok[firsts] = t
            n_out[sidx] += 1
        for f in done:
            finish[f.req_id] = t
            done_count += 1
            for ch in children.get(f.req_id, ()):
                heapq.heappush(pending, (t + float(trace.arrival[ch]), ch))
        times.append(t)
        usage_rows.append(_pool_used(manager, plan))
        if arena_info is not None:
            info = arena_info()
            if info is not None:
                waste_rows.append(float(info["waste_bytes"]))
        hit_series.append(hit_tokens / prompt_tokens if prompt_tokens else 0.0)
        if on_progress is not None and (done or steps % 64 == 0):
            on_progress(done_count, t)
    if on_progress is not None:
        on_progress(done_count, t)
    recomputed = sched.recomputed_tokens
    wall = time.perf_counter() - wall0

    finished = ~np.isnan(finish)
    if not bool(finished.all()):
        raise HybridKVError(f"{int((~finished).sum())} requests never finished")
    bad = [f.req_id for f in sched.finished if len(f.output_token_ids) != out_lens[f.req_id]]
    if bad:
        raise HybridKVError(f"requests {bad[:5]} finished with the wrong output length")
    ttft = first_tok - arrived
    multi = out_lens > 1
    tpot = (finish[multi] - first_tok[multi]) / (out_lens[multi] - 1)
    makespan = t
    oh = np.asarray(overhead_ns, dtype=np.float64) / 1e3
    total_out = int(out_lens.sum())
    total_in = int(prompt_lens.sum())
    grows = [g for g in plan.groups if g.grows]
    usage = np.vstack(usage_rows) if usage_rows else np.zeros((0, len(plan.groups)))
    report: dict[str, Any] = {
        "layout": layout,
        "token_capacity": int(plan.token_capacity),
        "physical_token_limit": plan.physical_token_limit,
        "block_size": int(grows[0].block_size if grows else plan.block_size),
        "pools": [
            {
                "group": g.index,
                "kind": g.kind,
                "grows": g.grows,
                "layers": len(g.layers),
                "block_size": g.block_size,
                "num_blocks": g.num_blocks,
                "bytes": g.bytes,
                "peak_usage": float(usage[:, g.index].max()) if usage.size else 0.0,
            }
            for g in plan.groups
        ],
        "requests": n,
        "steps": steps,
        "peak_concurrency": int(peak_conc),
        "mean_concurrency": conc_time / busy_time if busy_time else 0.0,
        "prompt_tokens": prompt_tokens,
        "prefix_hit_tokens": hit_tokens,
        "prefix_hit_rate": hit_tokens / prompt_tokens if prompt_tokens else 0.0,
        "preemptions": preemptions,
        "resumed_hit_tokens": resumed_hits,
        "recomputed_tokens": recomputed,
        "external_hit_tokens": ext_tokens,
        "makespan_s": makespan,
        "output_throughput_tok_s": total_out / makespan if makespan else 0.0,
        "total_throughput_tok_s": (total_out + total_in) / makespan if makespan else 0.0,
        "output_throughput": total_out / makespan if makespan else 0.0,
        "ttft_p50": _pct(ttft, 50),
        "ttft_p99": _pct(ttft, 99),
        "ttft_s": _dist(ttft),
        "tpot_s": _dist(tpot),
        "measured": {
            "scheduler_overhead_us_per_step": _dist(oh),
            "scheduler_overhead_s_total": float(oh.sum() / 1e6),
            "sim_wall_s": wall,
            "sim_requests_per_wall_s": n / wall if wall > 0 else 0.0,
        },
    }
    stats = getattr(manager, "stats", None)
    if stats is not None and steps:
        # The manager's own timers (inside the overhead above): hashing, lookup, allocation.
        st = stats()
        inner = st.hash_seconds + st.lookup_seconds + st.alloc_seconds
        report["measured"]["manager_us_per_step"] = 1e6 * inner / steps
    final_info = manager.arena_info() if waste_rows else None
    if final_info is not None:
        w = np.asarray(waste_rows, dtype=np.float64)
        report["arena"] = {
            "region_bytes": int(final_info["region_bytes"]),
            "num_regions": int(final_info["num_regions"]),
            "waste_bytes_mean": float(w.mean()),
            "waste_bytes_peak": float(w.max()),
            "waste_fraction_peak": float(w.max()) / plan.memory_bytes,
            "worst_waste_fraction": int(final_info["worst_waste_bytes"]) / plan.memory_bytes,
            "region_grants": int(final_info["grants"]),
            "region_moves": int(final_info["moves"]),
            "evicted_by_moves": int(final_info["evicted_blocks"]),
        }
    offload_report = getattr(offload, "report", None)
    if offload_report is not None:
        report["offload"] = offload_report()
    labels = [f"g{g.index} {g.kind}" for g in plan.groups]
    return LayoutResult(report, np.asarray(times), usage, labels, np.asarray(hit_series))


# -- orchestration, report, plot --------------------------------------------------------


@dataclass
class SimReport:
    """Both layouts' results plus the run's inputs."""

    config: SimConfig
    trace: Trace
    plans: dict[str, MemoryPlan | str]
    results: dict[str, LayoutResult]
    cost: dict[str, Any]
    #: The layout the others are compared with (ratios ``static / baseline``).
    baseline: str = "vllm"
    #: Share of prompt tokens an infinite cache would serve (:mod:`hybridkv.serving.ideal_hit`).
    ideal_hit_rate: float | None = None

    @property
    def sim_requests_per_wall_s(self) -> float:
        """Simulated requests per wall-clock second over every layout's replay (measured)."""
        wall = sum(r.report["measured"]["sim_wall_s"] for r in self.results.values())
        done = sum(r.report["requests"] for r in self.results.values())
        return done / wall if wall > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` shape. Wall-clock measurements sit under ``measured`` keys (the
        run's and each layout's); everything else is a deterministic function of the inputs."""
        cfg = self.config
        plan = next(p for p in self.plans.values() if not isinstance(p, str))
        d: dict[str, Any] = {
            "model": cfg.model,
            "memory_bytes": cfg.memory_bytes,
            "trace": self.trace.summary(),
            "ideal_hit_rate": self.ideal_hit_rate,
            "max_num_seqs": cfg.max_num_seqs,
            "max_num_batched_tokens": cfg.max_num_batched_tokens,
            "max_model_len": plan.max_model_len,
            "block_size": cfg.block_size,
            "mamba_cache_mode": cfg.mamba_cache_mode,
            "state_cache_slots": cfg.state_cache_slots,
            "policy": cfg.policy,
            "cost_model": self.cost,
            "layouts": {k: v.report for k, v in self.results.items()},
            "skipped": {k: v for k, v in self.plans.items() if isinstance(v, str)},
            "measured": {"sim_requests_per_wall_s": self.sim_requests_per_wall_s},
        }
        keys = (
            "token_capacity",
            "peak_concurrency",
            "mean_concurrency",
            "prefix_hit_rate",
            "output_throughput_tok_s",
        )
        if self.baseline in self.results:
            b = self.results[self.baseline].report
            # Every other layout over the baseline; ``ratios`` is static's.
            by = {
                lay: {k: (r.report[k] / b[k] if b[k] else None) for k in keys}
                for lay, r in self.results.items()
                if lay != self.baseline
            }
            if by:
                d["ratios_vs"] = self.baseline
                d["ratios_by_layout"] = by
            if "static" in by:
                d["ratios"] = by["static"]
        clean: dict[str, Any] = _finite(d)
        return clean


def _finite(x: Any) -> Any:
    """JSON-safe: NaN and infinities become None."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def run(
    cfg: SimConfig,
    layouts: Sequence[str] | None = None,
    *,
    progress: bool = False,
    offload: ExternalPrefixSource | None = None,
    manager_factory: Callable[[MemoryPlan], Any] | None = None,
) -> SimReport:
    """Plan, then simulate ``cfg`` on each of ``layouts`` (default: every registered
    layout) with a rich progress bar. ``manager_factory`` (offload) replaces every
    layout's own manager factory."""
    names = list(LAYOUTS) if layouts is None else list(dict.fromkeys(layouts))
    for lay in names:
        if lay not in LAYOUTS:
            raise InvalidArgumentError(f"layout must be one of {tuple(LAYOUTS)}, got {lay!r}")
    if not names:
        raise InvalidArgumentError("no layout given")
    if cfg.policy not in POLICIES:
        raise InvalidArgumentError(f"policy must be one of {POLICIES}, got {cfg.policy!r}")
    trace = resolve_trace(cfg.trace, cfg.seed, window=cfg.trace_window, sharegpt=cfg.sharegpt)
    setups = make_layouts(cfg, trace, names)
    plans = {k: v if isinstance(v, str) else v.plan for k, v in setups.items()}
    runnable = [(k, s) for k, s in setups.items() if not isinstance(s, str)]
    if not runnable:
        raise PlanError("; ".join(f"{k}: {v}" for k, v in plans.items()))
    # Step times come from hybridkv's plan of the model, the same for every layout.
    cost = CostModel(cost_plan(cfg, trace), gpu=cfg.gpu, num_gpus=cfg.num_gpus)
    results: dict[str, LayoutResult] = {}

    def go(bar: Callable[[str], Callable[[int, float], None] | None]) -> None:
        for lay, setup in runnable:
            results[lay] = simulate_plan(
                setup.plan,
                trace,
                layout=lay,
                cost=cost,
                policy=cfg.policy,
                long_prefill_token_threshold=cfg.long_prefill_token_threshold,
                offload=offload,
                manager_factory=manager_factory or setup.manager_factory,
                on_progress=bar(lay),
                scheduler_options=setup.scheduler_options,
            )

    if progress:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        cols = (
            TextColumn("{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("requests  t={task.fields[t]:7.1f}s modelled"),
        )
        with Progress(*cols, console=Console(stderr=True), transient=False) as prog:

            def bar(lay: str) -> Callable[[int, float], None]:
                task = prog.add_task(lay, total=trace.num_requests, t=0.0)
                return lambda done, t: prog.update(task, completed=done, t=t)

            go(bar)
    else:
        go(lambda lay: None)
    return SimReport(
        cfg, trace, plans, results, cost.describe(), ideal_hit_rate=ideal_hit_rate(trace)
    )


def _fmt_num(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e4:
        return f"{x / 1e3:.1f}k"
    if x == int(x):
        return f"{int(x)}"
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


TABLE_ROWS: tuple[tuple[str, str, Callable[[dict[str, Any]], float]], ...] = (
    ("token capacity", "tokens", lambda r: r["token_capacity"]),
    ("block size (growing)", "tokens", lambda r: r["block_size"]),
    ("peak concurrency", "requests", lambda r: r["peak_concurrency"]),
    ("mean concurrency", "requests", lambda r: r["mean_concurrency"]),
    ("prefix hit rate", "% prompt tokens", lambda r: 100.0 * r["prefix_hit_rate"]),
    ("preemptions", "", lambda r: r["preemptions"]),
    ("recomputed tokens", "", lambda r: r["recomputed_tokens"]),
    ("output throughput", "tok/s (modelled)", lambda r: r["output_throughput_tok_s"]),
    ("total throughput", "tok/s (modelled)", lambda r: r["total_throughput_tok_s"]),
    ("makespan", "s (modelled)", lambda r: r["makespan_s"]),
    ("TTFT p50", "s", lambda r: r["ttft_s"]["p50"]),
    ("TTFT p99", "s", lambda r: r["ttft_s"]["p99"]),
    ("TPOT p50", "ms", lambda r: 1e3 * r["tpot_s"]["p50"]),
    ("TPOT p99", "ms", lambda r: 1e3 * r["tpot_s"]["p99"]),
    ("steps", "", lambda r: r["steps"]),
    (
        "simulator speed",
        "requests/wall s (measured)",
        lambda r: r["measured"]["sim_requests_per_wall_s"],
    ),
    (
        "scheduler overhead",
        "µs/step mean (measured)",
        lambda r: r["measured"]["scheduler_overhead_us_per_step"]["mean"],
    ),
    (
        "scheduler overhead p99",
        "µs/step (measured)",
        lambda r: r["measured"]["scheduler_overhead_us_per_step"]["p99"],
    ),
)


def render_table(report: SimReport) -> Any:
    """A rich table: one column per layout, plus static / baseline ratios."""
    from rich.table import Table

    lays = list(report.results)
    cfg = report.config
    s = report.trace.summary()
    title = (
        f"hybridkv simulate: {cfg.model}, {cfg.memory_bytes / 2**30:.1f} GiB KV, trace "
        f"{s['name']} ({s['requests']} requests), {report.cost['gpu']} x{report.cost['num_gpus']} "
        "roofline"
    )
    plan = next(p for p in report.plans.values() if not isinstance(p, str))
    ckpt = cfg.state_checkpoint_tokens if plan.mamba_cache_mode == "align" else None
    caption = (
        f"max_num_seqs {cfg.max_num_seqs}, {cfg.max_num_batched_tokens} batched tokens/step, "
        f"max_model_len {plan.max_model_len}, policy {cfg.policy}"
        + (f", per-group state checkpoints every {ckpt} tokens" if ckpt else "")
        + (
            f", {cfg.state_cache_slots} spare per-group state slots"
            if cfg.state_cache_slots
            else ""
        )
        + (
            f". Ideal hit rate (infinite cache, 16-token blocks): "
            f"{100.0 * report.ideal_hit_rate:.1f}% of prompt tokens"
            if report.ideal_hit_rate is not None
            else ""
        )
        + ". Modelled: roofline step times at datasheet peaks. Measured: wall clock of "
        "schedule() + update_from_output(), manager calls included."
    )
    table = Table(title=title, caption=caption)
    table.add_column("metric")
    table.add_column("unit", style="dim")
    for lay in lays:
        table.add_column(lay, justify="right")
    base = report.baseline
    others = [lay for lay in lays if lay != base] if base in lays else []
    for lay in others:
        table.add_column(f"{lay} / {base}", justify="right", style="bold")
    for name, unit, get in TABLE_ROWS:
        vals = [float(get(report.results[lay].report)) for lay in lays]
        cells = [_fmt_num(v) if math.isfinite(v) else "-" for v in vals]
        b = vals[lays.index(base)] if others else 0.0
        for lay in others:
            a = vals[lays.index(lay)]
            ok = b and math.isfinite(a / b) and not name.startswith(("block size", "simulator"))
            cells.append(f"{a / b:.2f}x" if ok else "-")
        table.add_row(name, unit, *cells)
    return table


def write_plot(report: SimReport, path: str | Path) -> None:
    """PNG: KV usage per pool over modelled time, per layout, and cumulative hit rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lays = list(report.results)
    fig, axes = plt.subplots(len(lays) + 1, 1, figsize=(10, 3.2 * (len(lays) + 1)), sharex=True)
    for ax, lay in zip(axes, lays, strict=False):
        res = report.results[lay]
        for j, label in enumerate(res.pool_labels):
            ax.plot(res.times, 100.0 * res.usage[:, j], label=label, linewidth=1)
        ax.set_ylabel("pool in use (%)")
        ax.set_ylim(0, 105)
        ax.set_title(f"{lay}: KV usage per pool")
        ax.legend(loc="lower right", fontsize="small")
    ax = axes[-1]
    for lay in lays:
        res = report.results[lay]
        ax.plot(res.times, 100.0 * res.hit_rate, label=lay)
    ax.set_ylabel("cumulative prefix hit rate (%)")
    ax.set_xlabel("modelled time (s)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- CLI ------------------------------------------------------------------------------------


#: The most GPUs ``--num-gpus`` takes (far beyond any one deployment).
MAX_NUM_GPUS = 1 << 16


def _gpu_count(text: str) -> int:
    from hybridkv.argtypes import positive_int

    n = positive_int(text)
    if n > MAX_NUM_GPUS:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_NUM_GPUS} GPUs, got {text}")
    return n


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``hybridkv simulate`` on an argparse subparsers object."""
    from hybridkv.argtypes import add_state_cache_slots_argument, non_negative_int
    from hybridkv.argtypes import positive_int as _positive
    from hybridkv.units import size_type as _size

    p: argparse.ArgumentParser = subparsers.add_parser(
        "simulate",
        help="replay a serving trace on hybridkv's and vLLM's memory layouts (no GPU)",
        description=(
            "Replay a serving trace through the scheduler and the KV-cache manager, with "
            "step times from a roofline cost model. Without --layout every layout runs "
            "and prints side by side."
        ),
    )
    p.add_argument("--model", required=True, help="bundled model name or config.json path")
    p.add_argument("--memory", required=True, type=_size, help="KV-cache memory, e.g. 16GiB")
    p.add_argument(
        "--trace",
        required=True,
        help="a bundled trace (chat, docqa, agentic: small and fast), 'sharegpt' (multi-turn "
        "ShareGPT sessions; needs the 'traces' extra), a Mooncake trace FILE.jsonl[.gz] "
        "(timestamp ms, input_length, output_length, hash_ids of 512-token blocks), or a "
        "hybridkv trace file (.json[.gz])",
    )
    win = p.add_argument_group(
        "trace window (any trace)",
        "which requests run and how fast; applied after the trace is read",
    )
    win.add_argument(
        "--trace-start",
        type=_seconds,
        metavar="SECONDS",
        help="keep requests arriving at or after this trace time (closed-loop turns "
        "follow their session's first request); times are rebased so it is 0",
    )
    win.add_argument(
        "--trace-end",
        type=_seconds,
        metavar="SECONDS",
        help="keep requests arriving before this trace time",
    )
    win.add_argument(
        "--trace-max-requests",
        type=_positive,
        metavar="N",
        help="keep only the first N requests (of the window)",
    )
    win.add_argument(
        "--time-scale",
        type=_scale,
        default=1.0,
        metavar="FACTOR",
        help="multiply every arrival time and think delay (0.5: the same requests twice "
        "as fast; default 1)",
    )
    sg = p.add_argument_group("ShareGPT sessions (--trace sharegpt)")
    sg.add_argument(
        "--sharegpt-sessions", type=_positive, metavar="N", help="sessions to sample (100)"
    )
    sg.add_argument(
        "--sharegpt-min-rounds",
        type=_positive,
        metavar="N",
        help="keep conversations of at least N rounds (user message + reply; 4)",
    )
    sg.add_argument(
        "--sharegpt-session-rate",
        type=_scale,
        metavar="PER_S",
        help="sessions start as a Poisson process at this rate per second (1.0)",
    )
    sg.add_argument(
        "--sharegpt-think-time",
        type=_seconds,
        metavar="SECONDS",
        help="mean exponential think time between a reply and the next turn (5.0)",
    )
    p.add_argument(
        "--layout",
        action="append",
        choices=list(LAYOUTS),
        help="run this layout (repeat for several; default: every layout: "
        + "; ".join(f"{k}: {v.help}" for k, v in LAYOUTS.items())
        + ")",
    )
    p.add_argument("--max-num-seqs", type=_positive, default=64)
    p.add_argument("--max-num-batched-tokens", type=_positive, default=8192)
    p.add_argument("--max-model-len", type=_positive, help="default: the trace's longest request")
    p.add_argument("--block-size", type=_positive, default=16)
    p.add_argument("--mamba-cache-mode", choices=("none", "align", "all"), default="align")
    p.add_argument("--policy", choices=POLICIES, default="fcfs")
    p.add_argument(
        "--state-checkpoint-tokens",
        type=_positive,
        default=256,
        help="static layout, align mode: state checkpoint interval in tokens",
    )
    p.add_argument(
        "--elastic-checkpoint-tokens",
        type=_positive,
        help="elastic layout, align mode: state block size (default: --block-size; "
        "checkpoints then land where the checkpoint policy puts them)",
    )
    add_state_cache_slots_argument(p)
    p.add_argument(
        "--long-prefill-token-threshold", type=_positive, help="cap one request's prefill chunk"
    )
    p.add_argument("--gpu", choices=sorted(GPUS), default="h100-sxm", help="roofline peaks")
    p.add_argument(
        "--num-gpus",
        type=_gpu_count,
        help="GPUs serving the model (aggregate peaks, ideal TP); default: the smallest "
        "count that holds the weights + KV cache + activations; a count that cannot hold "
        "them is refused",
    )
    p.add_argument(
        "--seed",
        type=non_negative_int,
        help="regenerate the named bundled trace kind, or resample the ShareGPT sessions, "
        "with this seed",
    )
    p.add_argument(
        "--offload",
        metavar="SPEC",
        help="offload tiers, e.g. cpu:8GiB,disk:/path:100GiB,redis://127.0.0.1:6379 "
        "(optionally ,write-back); reports external hits per tier",
    )
    p.add_argument(
        "--offload-weights",
        metavar="ID",
        help="the weights' revision or checksum, part of every offloaded block's key; "
        "required with a disk or redis tier (they keep blocks across runs: without it, "
        "blocks computed with other weights under the same config would be served)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="write a PNG of pool usage and hit rate")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=main)
    return p


def _float_arg(text: str, *, positive: bool) -> float:
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise argparse.ArgumentTypeError(
            f"expected a finite number {'> 0' if positive else '>= 0'}, got {text!r}"
        )
    return v


def _seconds(text: str) -> float:
    """``argparse`` type: finite seconds >= 0."""
    return _float_arg(text, positive=False)


def _scale(text: str) -> float:
    """``argparse`` type: a finite factor or rate > 0."""
    return _float_arg(text, positive=True)


def _sharegpt_options(args: argparse.Namespace) -> ShareGPTOptions | None:
    given = {
        "sessions": getattr(args, "sharegpt_sessions", None),
        "min_rounds": getattr(args, "sharegpt_min_rounds", None),
        "session_rate": getattr(args, "sharegpt_session_rate", None),
        "think_time_s": getattr(args, "sharegpt_think_time", None),
    }
    opts = {k: v for k, v in given.items() if v is not None}
    return ShareGPTOptions(**opts) if opts else None


def config_from_args(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        model=args.model,
        memory_bytes=args.memory,
        trace=args.trace,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len,
        block_size=args.block_size,
        mamba_cache_mode=args.mamba_cache_mode,
        policy=args.policy,
        gpu=args.gpu,
        num_gpus=args.num_gpus,
        seed=args.seed,
        long_prefill_token_threshold=args.long_prefill_token_threshold,
        state_checkpoint_tokens=args.state_checkpoint_tokens,
        elastic_checkpoint_tokens=getattr(args, "elastic_checkpoint_tokens", None),
        state_cache_slots=args.state_cache_slots,
        trace_window=TraceWindow(
            start_s=getattr(args, "trace_start", None),
            end_s=getattr(args, "trace_end", None),
            max_requests=getattr(args, "trace_max_requests", None),
            time_scale=getattr(args, "time_scale", 1.0),
        ),
        sharegpt=_sharegpt_options(args),
    )


def _check_plot_path(path: str) -> None:
    """Refuse a ``--plot`` target the run could not write, before the run starts."""
    import importlib.util
    import os

    text = str(path)
    if not text.lower().endswith(".png"):
        raise InvalidArgumentError(f"--plot writes a PNG: {text!r} does not end in .png")
    target = Path(text)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise InvalidArgumentError(f"--plot: directory {str(parent)!r} does not exist")
    if target.is_dir():
        raise InvalidArgumentError(f"--plot: {text!r} is a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InvalidArgumentError(f"--plot: directory {str(parent)!r} is not writable")
    if importlib.util.find_spec("matplotlib") is None:
        raise InvalidArgumentError("--plot needs matplotlib: pip install matplotlib")


def main(args: argparse.Namespace, offload: ExternalPrefixSource | None = None) -> int:
    """Run ``hybridkv simulate``; HybridKVError propagates for the CLI to report."""
    import json
    import sys

    from rich.console import Console

    cfg = config_from_args(args)
    if args.plot is not None:
        _check_plot_path(args.plot)
    layouts = args.layout or None
    show = not args.no_progress and not args.json and sys.stderr.isatty()
    sim_offload = None
    weights = getattr(args, "offload_weights", None)
    if weights is not None and getattr(args, "offload", None) is None:
        raise InvalidArgumentError("--offload-weights names the weights of --offload's tiers")
    # An empty --offload is an error (parse_offload_spec says so), not a silent no-op.
    if offload is None and getattr(args, "offload", None) is not None:
        from hybridkv.offload import parse_offload_spec
        from hybridkv.offload.sim import SimOffload

        sim_offload = SimOffload(parse_offload_spec(args.offload), weights=weights)
        offload = sim_offload
    try:
        report = run(
            cfg,
            layouts,
            progress=show,
            offload=offload,
            manager_factory=None if sim_offload is None else sim_offload.manager_factory,
        )
    finally:
        if sim_offload is not None:
            sim_offload.close()
    if args.plot:
        write_plot(report, args.plot)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    console = Console(width=None if sys.stdout.isatty() else 120)
    console.print(render_table(report))
    if sim_offload is not None:
        from hybridkv.offload.sim import render_offload

        console.print(render_offload({k: v.report for k, v in report.results.items()}))
    for lay, why in report.to_dict()["skipped"].items():
        console.print(f"[yellow]{lay} layout skipped:[/] {why}")
    console.print(f"GPUs: {report.cost['sizing']}")
    console.print(
        f"simulator: {report.sim_requests_per_wall_s:.1f} simulated requests per wall second"
    )
    if args.plot:
        console.print(f"plot written to {args.plot}")
    return 0


__all__ = [
    "LAYOUTS",
    "Layout",
    "LayoutBuilder",
    "LayoutResult",
    "LayoutSetup",
    "PlanlessBuilder",
    "SimConfig",
    "SimReport",
    "add_parser",
    "base_plan",
    "config_from_args",
    "cost_plan",
    "default_max_model_len",
    "main",
    "make_layouts",
    "make_plans",
    "register_layout",
    "render_table",
    "resolve_trace",
    "run",
    "simulate_plan",
    "write_plot",
]
