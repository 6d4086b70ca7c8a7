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
lookups find: the scheduler ends the prefill chunk crossing one there,
``cut_at_shared_prefix``; a long prefill also ends a chunk on the prompt's last multiple
of ``state_checkpoint_tokens``, ``prompt_cut``). Where the static
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
before the prompt's end and at the shared-prefix boundary) and admits by vLLM's
whole-sequence check alone (``reserve_running_prompts=False``: hybridkv's layouts also
hold back what running prefills still need, see the scheduler's docs). ``benches/
bench_vllm_layout.py`` checks this model against vLLM's own ``KVCacheManager``.

Offload hook: ``offload`` (see :class:`hybridkv.serving.scheduler.ExternalPrefixSource`) is
consulted on admission for tokens beyond the device hit; if it has
``load_seconds(tokens) -> float`` the clock is charged that, and ``after_step(manager,
output)`` is called after every step so it can store what it needs.

Where it lives
--------------
This module names the simulator's public parts; each lives in the module of its concept:
:mod:`~hybridkv.serving.sim_config` (the run's config, its trace and base plans),
:mod:`~hybridkv.serving.layouts` (the layouts and their registry),
:mod:`~hybridkv.serving.sim_run` (the step loop, :func:`run`),
:mod:`~hybridkv.serving.sim_report` (results, the table, the plot) and
:mod:`~hybridkv.serving.sim_cli` (``hybridkv simulate``'s parser and ``main``).
"""

from __future__ import annotations

from hybridkv.serving.layouts import (
    LAYOUTS,
    Layout,
    LayoutBuilder,
    LayoutSetup,
    PlanlessBuilder,
    make_layouts,
    make_plans,
    plan_error_static,
    register_layout,
)
from hybridkv.serving.sim_cli import MAX_NUM_GPUS, add_parser, config_from_args, main
from hybridkv.serving.sim_config import (
    SimConfig,
    base_plan,
    cost_plan,
    default_max_model_len,
    resolve_trace,
    runnable_base_plan,
)
from hybridkv.serving.sim_report import (
    TABLE_ROWS,
    LayoutResult,
    SimReport,
    render_table,
    write_plot,
)
from hybridkv.serving.sim_run import run, simulate_plan

__all__ = [
    "LAYOUTS",
    "MAX_NUM_GPUS",
    "TABLE_ROWS",
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
    "plan_error_static",
    "register_layout",
    "render_table",
    "resolve_trace",
    "run",
    "runnable_base_plan",
    "simulate_plan",
    "write_plot",
]
