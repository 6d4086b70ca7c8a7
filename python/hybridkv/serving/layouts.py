"""The memory layouts ``hybridkv simulate`` compares (``elastic``, ``static``, ``vllm``;
:mod:`hybridkv.serving.simulate` says what each one is): :func:`register_layout` adds
one, :func:`make_layouts` builds each from the run's config and hybridkv's plan (or says
why it cannot run)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hybridkv.errors import InvalidArgumentError, PlanError
from hybridkv.planning.planner import (
    MemoryPlan,
    plan_memory,
    vllm_runtime_plan,
    vllm_runtime_plan_for,
)
from hybridkv.serving.sim_config import SimConfig, base_plan, default_max_model_len
from hybridkv.serving.traces import Trace


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
    # Align mode: a prefill chunk crossing the branch point a lookup found ends there,
    # so the state checkpoints the shared prefix (checkpoint policy); a prompt whose
    # prompt-end checkpoint the manager keeps has it on the prompt's last multiple of
    # the static checkpoint interval (or where its last chunk started, if close).
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

    # vLLM 0.33's admission checks a waiting request's whole sequence against the free
    # blocks, not what running prefills will still take (hybridkv's default).
    return LayoutSetup(vplan, manager, {"chunk_split": "vllm", "reserve_running_prompts": False})


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
