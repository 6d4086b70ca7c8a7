"""The elastic layout of :func:`hybridkv.planning.planner.plan_memory`
(``layout="elastic"``; :mod:`hybridkv.planning.planner`, "Layouts"): bounded groups get
floors (windows capped at what the growing groups hold), one arena holds them and the
growing groups, and the growing groups' capacity is what the arena leaves beside the
floors.

Pools: groups whose natural pages are equal share one pool of the arena
(:func:`~hybridkv.cache.arena_plan.pool_classes`), except a window group whose floor
had to be capped: its own pool keeps that floor. A capped window's tight bound (every
running request's whole window) is at least what the growing groups can hold, so the
window can use as many blocks as the growing group it would share an LRU queue with;
in one pool the two evict each other's cached blocks and the shared-pool admission
thrashes (Gemma-2-9B, window 4096, 32 GiB agentic: pooled 0.462 hit / 479
preemptions, own pool 0.581 / 753 at more output tok/s; vLLM's shared pool 0.247). An
uncapped window floor is small beside the growing group (gpt-oss-20b, window 128:
1,140 blocks), and pooling lets the growing group use the window's idle floor
(8 GiB chat 0.830 -> 0.909, = vLLM).
"""

from __future__ import annotations

from dataclasses import replace

from hybridkv.cache.arena_plan import ArenaPlan, choose_region_bytes, pool_classes
from hybridkv.errors import PlanError
from hybridkv.models.model_spec import ModelSpec
from hybridkv.models.specs import ChunkedLocalSpec, SlidingWindowSpec, StateSpec, cdiv
from hybridkv.planning.assemble import _finish, _group_plan
from hybridkv.planning.grouping import _Group
from hybridkv.planning.limits import _Limits, _Unfit
from hybridkv.planning.plan import MemoryPlan


def _plan_elastic(
    model: ModelSpec,
    pending: list[_Group],
    encoder_only: tuple[int, ...],
    limits: _Limits,
    bounded: dict[int, tuple[int, str]],
    *,
    memory_bytes: int,
    bounded_sizing: str,
    state_cache_slots: int,
    ckpt: int,
) -> MemoryPlan:
    """The elastic layout of :func:`plan_memory` (:mod:`hybridkv.planning.planner`, "Layouts")."""
    b = limits.block_size
    pages = [g.page_size_bytes for g in pending]
    growing = [g.grows for g in pending]
    sizes = [ckpt if isinstance(g.spec, StateSpec) and not g.grows else b for g in pending]
    kinds = ["state" if isinstance(g.spec, StateSpec) else "attention" for g in pending]
    # A state group's null block is never read or written: it need not be in the null area.
    null_read = [not isinstance(g.spec, StateSpec) for g in pending]
    tight = [bounded[i][0] - 1 if i in bounded else 0 for i in range(len(pending))]
    windows = [
        i
        for i, g in enumerate(pending)
        if isinstance(g.spec, SlidingWindowSpec | ChunkedLocalSpec) and not g.grows
    ]

    def arrange(pool_of: tuple[int, ...]) -> ArenaPlan | None:
        def layout(cap: int | None) -> ArenaPlan:
            floors = [
                min(t, cap) if cap is not None and i in windows else t for i, t in enumerate(tight)
            ]
            return choose_region_bytes(memory_bytes, pages, floors, growing, pool_of, null_read)

        try:
            arena: ArenaPlan | None = layout(None)
        except PlanError:
            arena = None
        if (
            windows
            and any(growing)
            and (arena is None or max(tight[i] for i in windows) > arena.growing_blocks)
        ):
            # Cap window floors at what the growing pools hold: the largest cap x with
            # x <= growing_blocks(x) (growing_blocks falls as x rises).
            lo, hi = 0, max(tight[i] for i in windows)
            best: ArenaPlan | None = None
            while lo <= hi:
                mid = (lo + hi) // 2
                try:
                    a = layout(mid)
                except PlanError:
                    hi = mid - 1
                    continue
                if mid <= a.growing_blocks:
                    best, lo = a, mid + 1
                else:
                    hi = mid - 1
            arena = best
        return arena

    pool_of = pool_classes(pages, sizes, kinds)
    arena = arrange(pool_of)
    # A window whose floor was capped keeps a pool of its own (module docs).
    apart = [
        i
        for i in windows
        if arena is not None and arena.floor_blocks[i] < tight[i] and pool_of.count(pool_of[i]) > 1
    ]
    if apart:
        arena = arrange(pool_classes(pages, sizes, kinds, apart=apart))
    if arena is None:
        floors_bytes = sum(t * p for t, p in zip(tight, pages, strict=True))
        raise _Unfit(
            f"floors need {floors_bytes} bytes but memory_bytes is {memory_bytes}: short by "
            f"{max(floors_bytes - memory_bytes, 0)} bytes (plus the arena's null area)"
        )
    growing_blocks = arena.growing_blocks
    need = cdiv(limits.max_model_len, b)
    if any(growing) and growing_blocks < need:
        raise _Unfit(
            f"growing groups get {growing_blocks * b} tokens beside floors of "
            f"{memory_bytes - arena.elastic_bytes} bytes, but one request of max_model_len="
            f"{limits.max_model_len} needs {need} blocks of "
            f"{sum(p for p, g in zip(pages, growing, strict=True) if g)} bytes"
        )
    plans = []
    for i, g in enumerate(pending):
        view = (memory_bytes - arena.bases[i]) // g.page_size_bytes
        floor = arena.floor_blocks[i]
        if g.grows:
            sizing, held = "growing", growing_blocks
        else:
            sizing = bounded[i][1] if floor == tight[i] else "capped"
            held = floor
        plans.append(
            _group_plan(
                i,
                g,
                ckpt if isinstance(g.spec, StateSpec) and not g.grows else b,
                view,
                sizing,
                floor_blocks=floor,
                bytes_=held * g.page_size_bytes,
            )
        )
    plan = _finish(
        model,
        plans,
        encoder_only,
        limits,
        memory_bytes=memory_bytes,
        bounded_sizing=bounded_sizing,
        state_cache_slots=state_cache_slots,
        state_checkpoint_tokens=ckpt,
    )
    growing_page = sum(p for p, gr in zip(pages, growing, strict=True) if gr)
    # Bounded groups hold their floors and, where a kernel reads it (a window's table
    # entries behind the window point at it), their null block: the null area is the
    # largest such page, and what it takes beyond the growing groups' own null page is
    # theirs, as a bounded pool's null block is part of its bytes in the static layout.
    grow_null = max((p for p, gr in zip(pages, growing, strict=True) if gr), default=0)
    floors_bytes = sum(f * p for f, p in zip(arena.floor_blocks, pages, strict=True)) + max(
        arena.null_bytes - grow_null, 0
    )
    if growing_page:
        capacity = growing_blocks * b
        concurrency = min(float(limits.max_num_seqs), growing_blocks / need)
        physical: float | None = (memory_bytes - floors_bytes) / (growing_page / b)
    else:
        capacity = limits.max_num_seqs * limits.max_model_len
        concurrency = float(limits.max_num_seqs)
        physical = None
    return replace(
        plan,
        token_capacity=capacity,
        max_concurrency=concurrency,
        unused_bytes=arena.elastic_bytes - growing_blocks * growing_page,
        bounded_bytes=floors_bytes,
        physical_token_limit=physical,
        layout="elastic",
        arena=arena,
    )
