"""The per-group memory planner: how many blocks each KV-cache group's pool gets.

Layers with an identical spec form one group; each group owns one pool at its natural
page size (all of its layers together). Bounded groups (state, sliding window, chunked
local, cross attention) get fixed pools right-sized for ``max_num_seqs`` requests;
the groups that grow with the sequence (full attention, MLA, state in mode ``all``)
share the rest so that every one of them holds the same number of tokens.

Sliding-window and chunked-local pools are sized by the tight bound of
:mod:`hybridkv.models.window_bound` (its theorem, proof and manager contract).

Layouts: static and elastic
---------------------------
``layout="static"``: one fixed pool per group, bounded pools sized by the bounds above.
``layout="elastic"``: one arena shared by all groups (``rust/core/src/arena.rs``), each
group at its natural page size. Every bounded group gets a *floor*, the blocks its
running requests can always get: state and cross attention their slots for
``max_num_seqs`` requests, sliding window / chunked local the tight bound, capped at
what the growing groups can ever hold (a request's window blocks cover a subset of its
full-attention positions, so a window pool never holds more blocks in use than the
growing pool of the same block size). The rest of the arena is shared: bounded groups
keep cached state checkpoints in it while the growing groups don't need it, and the
growing groups take it back region by region. ``token_capacity`` is what the growing
groups hold when they own everything but the floors: memory minus floors, over growing
bytes per token, less the arena's null area and region edges
(:mod:`hybridkv.cache.arena_plan`). A plan whose static bounds don't fit but whose capped
floors do, plans. Groups with equal natural pages share one pool of the arena, except a
window whose floor was capped (:mod:`hybridkv.planning.elastic`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hybridkv.errors import PlanError
from hybridkv.models.model_spec import ModelSpec
from hybridkv.models.specs import StateSpec, cdiv
from hybridkv.models.window_bound import BOUNDED_SIZINGS, window_pool_blocks, window_request_blocks
from hybridkv.planning.assemble import _finish, _group_plan
from hybridkv.planning.elastic import _plan_elastic
from hybridkv.planning.grouping import _bounded_blocks, _describe, _groups, group_layers
from hybridkv.planning.limits import MAX_MEMORY_BYTES, _check_common, _check_int, _Unfit
from hybridkv.planning.plan import GroupPlan, MemoryPlan, VllmBaseline
from hybridkv.planning.vllm_layout import (
    VLLM_KERNEL_BLOCK_ALIGNMENT,
    vllm_baseline,
    vllm_runtime_plan,
    vllm_runtime_plan_for,
)

PLAN_LAYOUTS = ("static", "elastic")


def plan_memory(
    model: ModelSpec,
    *,
    memory_bytes: int,
    max_num_seqs: int,
    max_model_len: int,
    max_num_batched_tokens: int,
    block_size: int = 16,
    mamba_cache_mode: str = "align",
    bounded_sizing: str = "tight",
    state_cache_slots: int = 0,
    state_checkpoint_tokens: int | None = None,
    layout: str = "static",
) -> MemoryPlan:
    """Plan ``memory_bytes`` of KV cache for ``model``: one pool per group.

    ``layout="elastic"`` plans one shared arena instead (module docstring, "Layouts"):
    the bounded sizes below become floors (windows capped at the growing capacity),
    ``num_blocks`` is each group's view of the whole arena (its slot address space),
    ``floor_blocks`` its floor, and the growing groups' capacity what the arena leaves
    them beside the floors. ``layout="static"`` (the default) is described next.

    Bounded pools first: sliding window / chunked local by ``bounded_sizing`` (the
    tight bound of the module docstring by default), state ``max_num_seqs`` slots
    (``mamba_cache_mode`` ``none``: 1 per request, ``align``: 2; ``all`` makes the
    state group grow with a checkpoint per block), cross attention
    ``max_num_seqs * cdiv(max_encoder_len, block_size)``, each plus the null block.
    The growing groups then share the rest with equal block counts, so they hold the
    same number of tokens. Raises :class:`PlanError` for bad sizes, when the bounded
    pools don't fit, or when the growing groups can't hold one ``max_model_len``
    request (saying by how many bytes).

    ``state_cache_slots`` (default 0) adds that many spare blocks to every bounded state
    group's pool (modes ``none`` and ``align``). At full load the running states fill a
    pool sized for ``max_num_seqs`` requests, so the checkpoints finished turns leave
    cached are the first blocks evicted and multi-turn prefix hits die; spare slots
    keep up to that many checkpoints per state group alive. They are paid for from the
    growing groups: each costs one state page per state group, counted in
    ``bounded_bytes``, so ``token_capacity`` falls accordingly. In mode ``none`` no
    checkpoint is ever cached, so spare slots would only cost: they are still added
    (the operator asked for them) but buy nothing. In mode ``all`` the state groups
    grow and already keep every checkpoint, so a nonzero value is a
    :class:`PlanError` rather than silently ignored. Negative values are a
    :class:`PlanError`.

    ``state_checkpoint_tokens`` (default ``block_size``) is the block size of every
    bounded state group: where its checkpoints land, and so how often a decoding
    request moves its running state to a fresh block. A state block is one whole state
    at any interval, so this costs no memory; a coarser interval churns the small state
    pool less and keeps cached checkpoints alive longer (per-group pools let the state
    group pick its own interval). It must be a multiple of ``block_size`` so hits on
    state boundaries are block-aligned for attention too; in mode ``all`` (state
    groups grow, one checkpoint per attention block) it must equal ``block_size``.
    """
    kwargs: dict[str, Any] = {
        "memory_bytes": memory_bytes,
        "max_num_seqs": max_num_seqs,
        "max_model_len": max_model_len,
        "max_num_batched_tokens": max_num_batched_tokens,
        "block_size": block_size,
        "mamba_cache_mode": mamba_cache_mode,
        "bounded_sizing": bounded_sizing,
        "state_cache_slots": state_cache_slots,
        "state_checkpoint_tokens": state_checkpoint_tokens,
        "layout": layout,
    }
    try:
        return _plan_memory(model, **kwargs)
    except _Unfit as exc:
        raise PlanError(f"{exc}. {_fit_advice(model, kwargs)}") from None


def _fits(model: ModelSpec, kwargs: dict[str, Any]) -> bool:
    try:
        _plan_memory(model, **kwargs)
    except PlanError:
        return False
    return True


def _largest_fitting(lo: int, hi: int, fits: Any) -> int | None:
    """The largest ``x`` in ``[lo, hi]`` with ``fits(x)`` (``fits`` only gets harder as
    ``x`` rises), or ``None`` when even ``lo`` does not fit."""
    if not fits(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


#: Limits a refusal suggests lowering, with their command-line flags.
_LOWERABLE = (
    ("max_num_seqs", "--max-num-seqs"),
    ("max_model_len", "--max-model-len"),
    ("max_num_batched_tokens", "--max-num-batched-tokens"),
    ("state_cache_slots", "--state-cache-slots"),
)


def _fit_advice(model: ModelSpec, kwargs: dict[str, Any]) -> str:
    """Which limit to lower, and to what, so the plan fits (each alone, the others
    unchanged), and the memory the given limits need (to within 1 MiB)."""
    hints: list[str] = []
    for key, flag in _LOWERABLE:
        current = kwargs[key]
        if not current:
            continue
        low = 0 if key == "state_cache_slots" else 1
        best = _largest_fitting(low, current - 1, lambda x, k=key: _fits(model, {**kwargs, k: x}))
        if best is not None:
            hints.append(f"the largest {flag} that fits is {best} (now {current})")
    # Memory: double until it fits (bounded by 1 PiB), then bisect on MiB.
    mib = 1 << 20
    hi = max(kwargs["memory_bytes"], mib)
    while hi < 1 << 50 and not _fits(model, {**kwargs, "memory_bytes": hi}):
        hi *= 2
    if _fits(model, {**kwargs, "memory_bytes": hi}):
        lo_mib, hi_mib = kwargs["memory_bytes"] // mib, cdiv(hi, mib)
        while lo_mib + 1 < hi_mib:
            mid = (lo_mib + hi_mib) // 2
            if _fits(model, {**kwargs, "memory_bytes": mid * mib}):
                hi_mib = mid
            else:
                lo_mib = mid
        hints.append(f"or raise --memory to {hi_mib} MiB ({hi_mib * mib} bytes)")
    if not hints:
        return "No single limit lowered alone makes it fit."
    return "To fit, lower one limit: " + "; ".join(hints) + "."


def _plan_memory(
    model: ModelSpec,
    *,
    memory_bytes: int,
    max_num_seqs: int,
    max_model_len: int,
    max_num_batched_tokens: int,
    block_size: int,
    mamba_cache_mode: str,
    bounded_sizing: str,
    state_cache_slots: int,
    state_checkpoint_tokens: int | None,
    layout: str,
) -> MemoryPlan:
    """:func:`plan_memory` without the advice on refusals."""
    limits = _check_common(
        model, block_size, max_num_seqs, max_model_len, max_num_batched_tokens, mamba_cache_mode
    )
    _check_int("memory_bytes", memory_bytes)
    if memory_bytes > MAX_MEMORY_BYTES:
        # Byte and block counts are int64 in the core and in numpy; far beyond any
        # machine, and the float arithmetic of the plan would overflow long before.
        raise PlanError(
            f"memory_bytes (about 2**{memory_bytes.bit_length() - 1}) is more than the "
            f"2**63 - 1 bytes (8 EiB) a plan can hold"
        )
    if layout not in PLAN_LAYOUTS:
        raise PlanError(f"layout must be one of {PLAN_LAYOUTS}, got {layout!r}")
    if bounded_sizing not in BOUNDED_SIZINGS:
        raise PlanError(f"bounded_sizing must be one of {BOUNDED_SIZINGS}, got {bounded_sizing!r}")
    _check_int("state_cache_slots", state_cache_slots, minimum=0)
    if state_cache_slots and limits.mamba_cache_mode == "all":
        raise PlanError(
            "state_cache_slots needs mamba_cache_mode 'none' or 'align': in 'all' the "
            f"state groups grow and keep every checkpoint already (got {state_cache_slots})"
        )
    ckpt = block_size
    if state_checkpoint_tokens is not None:
        ckpt = _check_int("state_checkpoint_tokens", state_checkpoint_tokens)
        if ckpt % limits.block_size:
            raise PlanError(
                f"state_checkpoint_tokens {ckpt} must be a positive multiple of the block "
                f"size {limits.block_size}"
            )
        if ckpt != limits.block_size and limits.mamba_cache_mode == "all":
            raise PlanError(
                "state_checkpoint_tokens must equal block_size in mamba_cache_mode 'all' "
                f"(state groups grow with one checkpoint per block), got {ckpt}"
            )
    pending, encoder_only = _groups(model, limits)
    # Bounded pools first, each with its null block: group index -> (blocks, sizing).
    bounded: dict[int, tuple[int, str]] = {}
    for i, g in enumerate(pending):
        if not g.grows:
            n, sizing = _bounded_blocks(g, limits, bounded_sizing)
            if isinstance(g.spec, StateSpec):
                n += state_cache_slots  # spare slots for cached checkpoints
            bounded[i] = (n + 1, sizing)
    if layout == "elastic":
        return _plan_elastic(
            model,
            pending,
            encoder_only,
            limits,
            bounded,
            memory_bytes=memory_bytes,
            bounded_sizing=bounded_sizing,
            state_cache_slots=state_cache_slots,
            ckpt=ckpt,
        )
    bounded_bytes = sum(n * pending[i].page_size_bytes for i, (n, _) in bounded.items())
    if bounded_bytes > memory_bytes:
        parts = ", ".join(
            f"{_describe(pending[i])}: {n * pending[i].page_size_bytes} B"
            for i, (n, _) in bounded.items()
        )
        raise _Unfit(
            f"bounded pools need {bounded_bytes} bytes ({parts}) but memory_bytes is "
            f"{memory_bytes}: short by {bounded_bytes - memory_bytes} bytes"
        )
    # The growing groups share the rest with equal block counts (null block included).
    growing_page = sum(g.page_size_bytes for g in pending if g.grows)
    blocks = 0
    if growing_page:
        rest = memory_bytes - bounded_bytes
        blocks = rest // growing_page
        need = cdiv(max_model_len, block_size) + 1
        if blocks < need:
            raise _Unfit(
                f"growing groups get {max(blocks - 1, 0) * block_size} tokens after "
                f"{bounded_bytes} bytes of bounded pools, but one request of max_model_len="
                f"{max_model_len} needs {need - 1} blocks of {growing_page} bytes: short by "
                f"{need * growing_page - rest} bytes"
            )
    plans = [
        _group_plan(
            i,
            g,
            ckpt if isinstance(g.spec, StateSpec) and not g.grows else block_size,
            *bounded.get(i, (blocks, "growing")),
            floor_blocks=bounded[i][0] - 1 if i in bounded else 0,
        )
        for i, g in enumerate(pending)
    ]
    return _finish(
        model,
        plans,
        encoder_only,
        limits,
        memory_bytes=memory_bytes,
        bounded_sizing=bounded_sizing,
        state_cache_slots=state_cache_slots,
        state_checkpoint_tokens=ckpt,
    )


def plan_with_blocks(
    model: ModelSpec,
    num_blocks: int | Sequence[int],
    *,
    block_size: int = 16,
    max_num_seqs: int,
    max_model_len: int,
    max_num_batched_tokens: int,
    mamba_cache_mode: str = "align",
) -> MemoryPlan:
    """A plan with each group's block count (null block included) given explicitly.

    ``num_blocks`` is one int for every group or one per group (in group order). Pools
    may be smaller than the bounds (tests of exhaustion use that); ``memory_bytes`` is
    the pools' total and ``unused_bytes`` 0.
    """
    limits = _check_common(
        model, block_size, max_num_seqs, max_model_len, max_num_batched_tokens, mamba_cache_mode
    )
    pending, encoder_only = _groups(model, limits)
    if isinstance(num_blocks, int) and not isinstance(num_blocks, bool):
        counts = [num_blocks] * len(pending)
    elif isinstance(num_blocks, Sequence) and not isinstance(num_blocks, str):
        counts = list(num_blocks)
        if len(counts) != len(pending):
            raise PlanError(f"num_blocks has {len(counts)} entries for {len(pending)} groups")
    else:
        raise PlanError(f"num_blocks must be an int or a sequence of ints, got {num_blocks!r}")
    for i, n in enumerate(counts):
        _check_int(f"num_blocks[{i}]", n, minimum=2)
    plans = [
        _group_plan(i, g, block_size, n, "growing" if g.grows else "explicit")
        for i, (g, n) in enumerate(zip(pending, counts, strict=True))
    ]
    return _finish(
        model,
        plans,
        encoder_only,
        limits,
        memory_bytes=sum(p.bytes for p in plans),
        bounded_sizing="explicit",
    )


__all__ = [
    "BOUNDED_SIZINGS",
    "MAX_MEMORY_BYTES",
    "PLAN_LAYOUTS",
    "VLLM_KERNEL_BLOCK_ALIGNMENT",
    "GroupPlan",
    "MemoryPlan",
    "VllmBaseline",
    "group_layers",
    "plan_memory",
    "plan_with_blocks",
    "vllm_baseline",
    "vllm_runtime_plan",
    "vllm_runtime_plan_for",
    "window_pool_blocks",
    "window_request_blocks",
]
