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
floors do, plans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hybridkv.cache.arena_plan import ArenaPlan, choose_region_bytes
from hybridkv.errors import PlanError
from hybridkv.models.model_spec import ModelSpec
from hybridkv.models.specs import (
    MAMBA_CACHE_MODES,
    ChunkedLocalSpec,
    CrossAttentionSpec,
    EncoderOnlySpec,
    KVSpec,
    SlidingWindowSpec,
    StateSpec,
    cdiv,
    spec_to_dict,
)
from hybridkv.models.window_bound import (
    BOUNDED_SIZINGS,
    window_pool_blocks,
    window_request_blocks,
)

PLAN_LAYOUTS = ("static", "elastic")


# ---------------------------------------------------------------------------
# plan objects
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupPlan:
    """One KV-cache group and its pool.

    ``page_size_bytes`` covers all of the group's layers; ``num_blocks`` includes the
    null block 0; ``slot_address_space = num_blocks * block_size`` is the size any
    buffer indexed by this group's slot mapping must have. ``max_blocks_per_request``
    (bounded groups) is the most non-null blocks one request holds at once; block
    tables are still ``cdiv(max_model_len, block_size)`` wide for window groups.
    ``sizing`` says how ``num_blocks`` was chosen: ``"growing"``, ``"tight"``,
    ``"per_request"``, ``"slots"`` (state, cross attention) or ``"explicit"``.
    """

    index: int
    kind: str
    layers: tuple[int, ...]
    spec: KVSpec
    block_size: int
    page_size_bytes: int
    num_blocks: int
    bytes: int
    slot_address_space: int
    grows: bool
    window: int | None = None
    chunk_size: int | None = None
    max_encoder_len: int | None = None
    max_blocks_per_request: int | None = None
    sizing: str = "growing"
    floor_blocks: int = 0

    @property
    def num_layers(self) -> int:
        """Number of layers sharing this group's pool."""
        return len(self.layers)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of one group."""
        return {
            "index": self.index,
            "kind": self.kind,
            "layers": list(self.layers),
            "num_layers": self.num_layers,
            "block_size": self.block_size,
            "page_size_bytes": self.page_size_bytes,
            "num_blocks": self.num_blocks,
            "bytes": self.bytes,
            "slot_address_space": self.slot_address_space,
            "grows": self.grows,
            "window": self.window,
            "chunk_size": self.chunk_size,
            "max_encoder_len": self.max_encoder_len,
            "max_blocks_per_request": self.max_blocks_per_request,
            "sizing": self.sizing,
            "floor_blocks": self.floor_blocks,
            "spec": spec_to_dict(self.spec),
        }


@dataclass(frozen=True)
class VllmBaseline:
    """vLLM 0.33's runtime layout of the same memory: ONE shared block pool.

    vLLM groups the layers into ``num_groups`` groups of ``group_size`` layers (each
    spec's layers into ``cdiv(count, group_size)`` groups; ``group_size`` is the fewest
    layers any spec has, or the most when that is under 1.5x the fewest). In a model
    with state layers the attention block size is raised to ``block_size`` tokens, the
    smallest multiple of ``max(16, block_size)`` (its kernels' block alignment) whose
    per-layer page holds one state, and state pages are padded up to that page
    (``page_size_bytes``). All groups draw block ids from one pool of ``num_blocks``
    blocks (null block included) of ``group_size`` pages each: ``memory //
    (page_size_bytes * group_size)``.

    ``token_capacity`` is what the pool holds at runtime for the growing groups while
    ``max_num_seqs`` requests also hold the most the bounded groups can hold at once
    (state: 2 blocks per request in align mode, 1 otherwise; windows: the tight bound
    of the module docstring at vLLM's block size; the same bounds hybridkv sizes its own
    pools by): ``(num_blocks - 1 - reserve) // num_growing_groups * block_size``.
    ``boot_log_token_capacity`` is the figure vLLM 0.33 logs at start-up ("KV cache
    size: N tokens": ``num_blocks / (blocks one max_model_len request needs, summed over
    groups) * max_model_len``) and ``equal_split_token_capacity`` the older per-group
    share ``num_blocks // num_groups * block_size``; neither is what the pool holds at
    runtime. ``groups``: the kind and layer indices of each vLLM group, with its block
    size. Every count is ``None`` when vLLM cannot unify the page sizes (``reason``).
    """

    token_capacity: int | None
    block_size: int | None
    page_size_bytes: int | None
    num_groups: int
    group_size: int
    num_blocks: int | None
    boot_log_token_capacity: int | None = None
    equal_split_token_capacity: int | None = None
    groups: tuple[tuple[str, tuple[int, ...], int], ...] = ()
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of the baseline (``vllm_baseline`` in ``plan --json``)."""
        return {
            "token_capacity": self.token_capacity,
            "block_size": self.block_size,
            "page_size_bytes": self.page_size_bytes,
            "num_groups": self.num_groups,
            "group_size": self.group_size,
            "num_blocks": self.num_blocks,
            "boot_log_token_capacity": self.boot_log_token_capacity,
            "equal_split_token_capacity": self.equal_split_token_capacity,
            "groups": [
                {"kind": k, "layers": list(layers), "block_size": bs}
                for k, layers, bs in self.groups
            ],
            "reason": self.reason,
        }


@dataclass(frozen=True)
class MemoryPlan:
    """A model's KV-cache memory plan: one :class:`GroupPlan` per pool.

    ``token_capacity``: tokens every growing group can hold at once (requests' tokens,
    blocks rounded up). ``max_concurrency``: requests of ``max_model_len`` tokens that
    fit at once, at most ``max_num_seqs`` (the bounded pools are sized for that many).
    ``physical_token_limit``: ``(memory - bounded bytes - growing null blocks) /
    growing bytes per token`` (``None`` without growing groups); ``token_capacity``
    falls short of it by less than one block. With no growing group, capacity is
    ``max_num_seqs * max_model_len``. ``state_cache_slots``: spare blocks every bounded
    state group's pool got beyond its running states (see :func:`plan_memory`).
    ``state_checkpoint_tokens``: the bounded state groups' block size, i.e. where
    their checkpoints land (``None``: ``block_size``).
    """

    groups: tuple[GroupPlan, ...]
    encoder_only_layers: tuple[int, ...]
    token_capacity: int
    max_concurrency: float
    unused_bytes: int
    memory_bytes: int
    max_num_seqs: int
    max_model_len: int
    max_num_batched_tokens: int
    block_size: int
    mamba_cache_mode: str
    bounded_sizing: str
    bounded_bytes: int
    growing_bytes_per_token: float
    physical_token_limit: float | None
    vllm_baseline: VllmBaseline
    model: ModelSpec
    state_cache_slots: int = 0
    state_checkpoint_tokens: int | None = None
    #: Every group draws from one pool of the (common) ``num_blocks``: vLLM's runtime
    #: layout (:func:`vllm_runtime_plan`); each group's ``bytes`` is then that pool.
    shared_pool: bool = False
    layout: str = "static"
    arena: ArenaPlan | None = None

    @property
    def elastic_bytes(self) -> int:
        """Memory every group may draw on beyond the floors (0 for a static plan)."""
        return self.arena.elastic_bytes if self.arena is not None else 0

    @property
    def total_bytes(self) -> int:
        """Bytes of all pools together (a shared pool counted once)."""
        if self.shared_pool:
            return max((g.bytes for g in self.groups), default=0)
        return sum(g.bytes for g in self.groups)

    @property
    def growing_groups(self) -> tuple[GroupPlan, ...]:
        """Groups that share the memory left after the bounded pools."""
        return tuple(g for g in self.groups if g.grows)

    @property
    def bounded_groups(self) -> tuple[GroupPlan, ...]:
        """Groups with fixed, right-sized pools."""
        return tuple(g for g in self.groups if not g.grows)

    def _group_dict(self, group: GroupPlan) -> dict[str, Any]:
        """One group's JSON: ``layers`` as the model numbers them, ``layer_names``, and
        ``cache_layers`` (positions in ``model.layer_specs``, what ``GroupPlan.layers``
        holds)."""
        out = group.to_dict()
        out["cache_layers"] = out["layers"]
        out["layers"] = self.model.model_layers(group.layers)
        out["layer_names"] = [self.model.layer_names[i] for i in group.layers]
        return out

    def to_dict(self) -> dict[str, Any]:
        """The ``hybridkv plan --json`` shape."""
        return {
            "model": self.model.name,
            "model_type": self.model.model_type,
            "model_notes": list(self.model.notes),
            "memory_bytes": self.memory_bytes,
            "max_num_seqs": self.max_num_seqs,
            "max_model_len": self.max_model_len,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "block_size": self.block_size,
            "mamba_cache_mode": self.mamba_cache_mode,
            "bounded_sizing": self.bounded_sizing,
            "token_capacity": self.token_capacity,
            "max_concurrency": self.max_concurrency,
            "unused_bytes": self.unused_bytes,
            "total_bytes": self.total_bytes,
            "bounded_bytes": self.bounded_bytes,
            "growing_bytes_per_token": self.growing_bytes_per_token,
            "physical_token_limit": self.physical_token_limit,
            "encoder_only_layers": list(self.encoder_only_layers),
            "groups": [self._group_dict(g) for g in self.groups],
            "vllm_baseline": self.vllm_baseline.to_dict(),
            "shared_pool": self.shared_pool,
            "state_cache_slots": self.state_cache_slots,
            "state_checkpoint_tokens": self.state_checkpoint_tokens or self.block_size,
            "layout": self.layout,
            "elastic_bytes": self.elastic_bytes,
            "floor_blocks": [g.floor_blocks for g in self.groups],
            "arena": self.arena.to_dict() if self.arena is not None else None,
        }


# ---------------------------------------------------------------------------
# planning
# ---------------------------------------------------------------------------


#: The most KV-cache memory a plan takes: byte counts are int64 everywhere below.
MAX_MEMORY_BYTES = (1 << 63) - 1


def _check_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PlanError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise PlanError(f"{name} must be >= {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class _Limits:
    """The checked engine limits both planners share."""

    block_size: int
    max_num_seqs: int
    max_model_len: int
    max_num_batched_tokens: int
    mamba_cache_mode: str


def _check_common(
    model: object,
    block_size: object,
    max_num_seqs: object,
    max_model_len: object,
    max_num_batched_tokens: object,
    mamba_cache_mode: object,
) -> _Limits:
    if not isinstance(model, ModelSpec):
        raise PlanError(f"model must be a ModelSpec, got {type(model).__name__}")
    sizes = (
        _check_int("block_size", block_size),
        _check_int("max_num_seqs", max_num_seqs),
        _check_int("max_model_len", max_model_len),
        _check_int("max_num_batched_tokens", max_num_batched_tokens),
    )
    if not isinstance(mamba_cache_mode, str) or mamba_cache_mode not in MAMBA_CACHE_MODES:
        raise PlanError(
            f"mamba_cache_mode must be one of {MAMBA_CACHE_MODES}, got {mamba_cache_mode!r}"
        )
    bound = model.max_model_len
    if bound is not None and sizes[2] > bound:
        raise PlanError(
            f"max_model_len {sizes[2]} exceeds the {bound} positions {model.name!r} can run "
            f"(its learned position embeddings); plan with --max-model-len {bound} or less"
        )
    return _Limits(*sizes, mamba_cache_mode=mamba_cache_mode)


@dataclass(frozen=True)
class _Group:
    """A group before sizing: its spec, layers, and how it is planned."""

    spec: KVSpec
    layers: tuple[int, ...]
    grows: bool
    page_size_bytes: int
    max_blocks_per_request: int | None


def group_layers(model: ModelSpec) -> tuple[list[tuple[KVSpec, tuple[int, ...]]], tuple[int, ...]]:
    """Layers with identical specs, in order of first appearance; and encoder-only layers."""
    order: dict[KVSpec, list[int]] = {}
    encoder_only: list[int] = []
    for i, spec in enumerate(model.layer_specs):
        if isinstance(spec, EncoderOnlySpec):
            encoder_only.append(i)
        else:
            order.setdefault(spec, []).append(i)
    return [(spec, tuple(layers)) for spec, layers in order.items()], tuple(encoder_only)


def _groups(model: ModelSpec, limits: _Limits) -> tuple[list[_Group], tuple[int, ...]]:
    grouped, encoder_only = group_layers(model)
    b, m = limits.block_size, limits.max_model_len
    out: list[_Group] = []
    for spec, layers in grouped:
        page = len(layers) * spec.page_size_bytes(b)
        per_req: int | None
        if isinstance(spec, StateSpec):
            per_req = spec.max_blocks_per_request(
                b,
                max_model_len=m,
                max_num_batched_tokens=limits.max_num_batched_tokens,
                mamba_cache_mode=limits.mamba_cache_mode,
            )
        elif isinstance(spec, SlidingWindowSpec | ChunkedLocalSpec) and spec.span >= m:
            # A window or chunk that covers max_model_len never slides: it grows like
            # full attention.
            per_req = None
        else:
            per_req = spec.max_blocks_per_request(
                b, max_model_len=m, max_num_batched_tokens=limits.max_num_batched_tokens
            )
        out.append(_Group(spec, layers, per_req is None, page, per_req))
    return out, encoder_only


def _bounded_blocks(group: _Group, limits: _Limits, bounded_sizing: str) -> tuple[int, str]:
    """Blocks (null excluded) of a bounded group's pool, and the sizing used."""
    spec = group.spec
    if isinstance(spec, SlidingWindowSpec | ChunkedLocalSpec):
        n = window_pool_blocks(
            spec.kind,
            spec.span,
            block_size=limits.block_size,
            max_num_seqs=limits.max_num_seqs,
            max_model_len=limits.max_model_len,
            max_num_batched_tokens=limits.max_num_batched_tokens,
            bounded_sizing=bounded_sizing,
        )
        return n, bounded_sizing
    per_req = group.max_blocks_per_request
    assert per_req is not None  # only growing groups have None
    return limits.max_num_seqs * per_req, "slots"


def _group_plan(
    index: int,
    group: _Group,
    block_size: int,
    num_blocks: int,
    sizing: str,
    *,
    floor_blocks: int = 0,
    bytes_: int | None = None,
) -> GroupPlan:
    spec = group.spec
    return GroupPlan(
        index=index,
        kind=spec.kind,
        layers=group.layers,
        spec=spec,
        block_size=block_size,
        page_size_bytes=group.page_size_bytes,
        num_blocks=num_blocks,
        bytes=num_blocks * group.page_size_bytes if bytes_ is None else bytes_,
        slot_address_space=num_blocks * block_size,
        grows=group.grows,
        window=spec.window if isinstance(spec, SlidingWindowSpec) else None,
        chunk_size=spec.chunk_size if isinstance(spec, ChunkedLocalSpec) else None,
        max_encoder_len=spec.max_encoder_len if isinstance(spec, CrossAttentionSpec) else None,
        max_blocks_per_request=None if group.grows else group.max_blocks_per_request,
        sizing=sizing,
        floor_blocks=floor_blocks,
    )


def _describe(group: _Group) -> str:
    return f"{group.spec.kind} group of {len(group.layers)} layers"


def _finish(
    model: ModelSpec,
    groups: list[GroupPlan],
    encoder_only: tuple[int, ...],
    limits: _Limits,
    *,
    memory_bytes: int,
    bounded_sizing: str,
    state_cache_slots: int = 0,
    state_checkpoint_tokens: int | None = None,
) -> MemoryPlan:
    block_size = limits.block_size
    max_num_seqs = limits.max_num_seqs
    max_model_len = limits.max_model_len
    growing = [g for g in groups if g.grows]
    bounded_bytes = sum(g.bytes for g in groups if not g.grows)
    growing_page = sum(g.page_size_bytes for g in growing)
    if growing:
        blocks = min(g.num_blocks for g in growing) - 1
        token_capacity = blocks * block_size
        concurrency = min(float(max_num_seqs), blocks / cdiv(max_model_len, block_size))
        per_token = growing_page / block_size
        room = memory_bytes - bounded_bytes - growing_page
        physical: float | None = room / per_token
    else:
        token_capacity = max_num_seqs * max_model_len
        concurrency = float(max_num_seqs)
        per_token = 0.0
        physical = None
    total = sum(g.bytes for g in groups)
    return MemoryPlan(
        groups=tuple(groups),
        encoder_only_layers=encoder_only,
        token_capacity=token_capacity,
        max_concurrency=concurrency,
        unused_bytes=memory_bytes - total,
        memory_bytes=memory_bytes,
        max_num_seqs=max_num_seqs,
        max_model_len=max_model_len,
        max_num_batched_tokens=limits.max_num_batched_tokens,
        block_size=block_size,
        mamba_cache_mode=limits.mamba_cache_mode,
        bounded_sizing=bounded_sizing,
        bounded_bytes=bounded_bytes,
        growing_bytes_per_token=per_token,
        physical_token_limit=physical,
        vllm_baseline=vllm_baseline(model, memory_bytes=memory_bytes, limits=limits),
        model=model,
        state_cache_slots=state_cache_slots,
        state_checkpoint_tokens=state_checkpoint_tokens,
    )


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


class _Unfit(PlanError):
    """The limits are valid but the pools do not fit: :func:`plan_memory` adds advice."""


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
    """The elastic layout of :func:`plan_memory` (module docstring, "Layouts")."""
    b = limits.block_size
    pages = [g.page_size_bytes for g in pending]
    growing = [g.grows for g in pending]
    tight = [bounded[i][0] - 1 if i in bounded else 0 for i in range(len(pending))]
    windows = [
        i
        for i, g in enumerate(pending)
        if isinstance(g.spec, SlidingWindowSpec | ChunkedLocalSpec) and not g.grows
    ]

    def layout(cap: int | None) -> ArenaPlan:
        floors = [
            min(t, cap) if cap is not None and i in windows else t for i, t in enumerate(tight)
        ]
        return choose_region_bytes(memory_bytes, pages, floors, growing)

    try:
        arena = layout(None)
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
        view = memory_bytes // g.page_size_bytes
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
    floors_bytes = sum(f * p for f, p in zip(arena.floor_blocks, pages, strict=True))
    from dataclasses import replace

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


# ---------------------------------------------------------------------------
# vLLM's runtime layout (the baseline)
# ---------------------------------------------------------------------------

#: Smallest kernel block of vLLM's attention backends (FlashAttention: multiples of 16):
#: the granularity its hybrid block size is raised in.
VLLM_KERNEL_BLOCK_ALIGNMENT = 16


def _vllm_reserve_blocks(spec: KVSpec, block_size: int, limits: _Limits) -> tuple[int, int]:
    """For one vLLM group of a bounded spec: the most blocks one request holds, and the
    most all ``max_num_seqs`` requests hold at once (the tight bound of the module
    docstring for windows); ``(0, 0)`` for growing specs."""
    s = limits.max_num_seqs
    if isinstance(spec, StateSpec):
        per = 2 if limits.mamba_cache_mode == "align" else 1
        return per, s * per
    if isinstance(spec, SlidingWindowSpec | ChunkedLocalSpec):
        if spec.span >= limits.max_model_len:
            return 0, 0
        per = window_request_blocks(
            spec.kind, spec.span, block_size, limits.max_model_len, limits.max_num_batched_tokens
        )
        pool = window_pool_blocks(
            spec.kind,
            spec.span,
            block_size=block_size,
            max_num_seqs=s,
            max_model_len=limits.max_model_len,
            max_num_batched_tokens=limits.max_num_batched_tokens,
            bounded_sizing="tight",
        )
        return per, pool
    if isinstance(spec, CrossAttentionSpec):
        per = cdiv(spec.max_encoder_len, block_size)
        return per, s * per
    return 0, 0


def vllm_baseline(model: ModelSpec, *, memory_bytes: int, limits: _Limits) -> VllmBaseline:
    """vLLM 0.33's runtime layout of ``memory_bytes`` for ``model`` (see
    :class:`VllmBaseline`; the rules follow ``vllm/platforms/interface.py``
    ``_align_hybrid_block_size`` and ``vllm/v1/core/kv_cache_planning.py``
    ``_get_kv_cache_groups_uniform_page_size`` / ``get_kv_cache_config_from_groups``)."""
    grouped, _ = group_layers(model)
    if not grouped:
        return VllmBaseline(None, None, None, 0, 0, None, reason="model has no cache layers")
    counts = [len(layers) for _, layers in grouped]
    group_size = min(counts)
    if max(counts) < 1.5 * group_size:
        group_size = max(counts)  # vLLM pads the few extra layers instead
    num_groups = sum(cdiv(c, group_size) for c in counts)
    token_specs = [s for s, _ in grouped if not isinstance(s, StateSpec)]
    state_page = max((s.state_bytes for s, _ in grouped if isinstance(s, StateSpec)), default=0)
    bs = limits.block_size
    mml = limits.max_model_len
    if not token_specs:
        page = state_page
        vllm_bs = mml
    else:
        growing = [s for s in token_specs if s.grows_with_sequence]
        # vLLM sizes the block from the model's own (full) attention page per token.
        per_token = (growing or token_specs)[0].bytes_per_token
        vllm_bs = bs
        if state_page:
            align = max(VLLM_KERNEL_BLOCK_ALIGNMENT, bs)
            vllm_bs = align * max(1, cdiv(state_page, align * per_token))
        pages = sorted({vllm_bs * s.bytes_per_token for s in token_specs})
        page = max(pages[-1], state_page)
        odd = [p for p in pages if page % p]
        if odd:
            return VllmBaseline(
                None,
                None,
                None,
                num_groups,
                group_size,
                None,
                reason=f"vLLM cannot unify page sizes {odd} with the largest page {page}",
            )
    num_blocks = memory_bytes // (page * group_size)
    vgroups: list[tuple[str, tuple[int, ...], int]] = []
    reserve = 0
    per_request = 0
    num_growing = 0
    for spec, layers in grouped:
        if isinstance(spec, StateSpec):
            gbs = vllm_bs if limits.mamba_cache_mode != "none" else mml
        else:
            gbs = page // spec.bytes_per_token
        n = cdiv(len(layers), group_size)
        r, held = _vllm_reserve_blocks(spec, gbs, limits)
        for i in range(n):
            vgroups.append((spec.kind, tuple(layers[i::n]), gbs))
            reserve += held
            per_request += r if r else cdiv(mml, gbs)
            num_growing += int(r == 0 and not isinstance(spec, StateSpec))
    usable = max(num_blocks - 1, 0)
    if num_growing:
        capacity = max(usable - reserve, 0) // num_growing * vllm_bs
    else:
        capacity = limits.max_num_seqs * mml
    boot = int(num_blocks / per_request * mml) if per_request else 0
    return VllmBaseline(
        token_capacity=capacity,
        block_size=vllm_bs,
        page_size_bytes=page,
        num_groups=num_groups,
        group_size=group_size,
        num_blocks=num_blocks,
        boot_log_token_capacity=boot,
        equal_split_token_capacity=num_blocks // num_groups * vllm_bs,
        groups=tuple(vgroups),
    )


def vllm_runtime_plan(plan: MemoryPlan) -> MemoryPlan:
    """vLLM 0.33's runtime layout of ``plan``'s memory as a runnable plan: one group per
    vLLM group (its layers, its inflated block size), every group with the shared pool's
    ``num_blocks``, ``shared_pool=True`` (build the manager with it: one id space, one
    LRU queue). ``token_capacity`` is :attr:`VllmBaseline.token_capacity`. Raises
    :class:`PlanError` where vLLM cannot lay the model out, where vLLM's start-up check
    refuses the memory (see :func:`vllm_runtime_plan_for`), or in ``mamba_cache_mode``
    ``all`` (vLLM caches state prefixes only in ``align``)."""
    return _vllm_runtime(
        plan.model,
        plan.vllm_baseline,
        _limits_of(plan),
        memory_bytes=plan.memory_bytes,
        encoder_only=plan.encoder_only_layers,
    )


def vllm_runtime_plan_for(
    model: ModelSpec,
    *,
    memory_bytes: int,
    max_num_seqs: int,
    max_model_len: int,
    max_num_batched_tokens: int,
    block_size: int = 16,
    mamba_cache_mode: str = "align",
) -> MemoryPlan:
    """:func:`vllm_runtime_plan` straight from the model and limits, without hybridkv's
    own plan: vLLM reserves no floors for bounded groups, so it starts where hybridkv's
    planner refuses (``max_num_seqs`` requests' states need not fit: vLLM admits what
    the pool holds and preempts the rest). What it does refuse is vLLM's start-up check
    (``check_enough_kv_cache_memory``): the memory, less one block for the null block,
    must hold one ``max_model_len`` request in every layer at once (full attention
    ``cdiv(max_model_len, block)`` pages per layer, a state layer 2 pages in align mode
    and 1 otherwise, windows their bound)."""
    limits = _check_common(
        model, block_size, max_num_seqs, max_model_len, max_num_batched_tokens, mamba_cache_mode
    )
    _check_int("memory_bytes", memory_bytes)
    vb = vllm_baseline(model, memory_bytes=memory_bytes, limits=limits)
    _, encoder_only = group_layers(model)
    return _vllm_runtime(model, vb, limits, memory_bytes=memory_bytes, encoder_only=encoder_only)


def _vllm_runtime(
    model: ModelSpec,
    vb: VllmBaseline,
    limits: _Limits,
    *,
    memory_bytes: int,
    encoder_only: tuple[int, ...],
) -> MemoryPlan:
    if vb.num_blocks is None or vb.block_size is None or vb.page_size_bytes is None:
        raise PlanError(f"vLLM cannot lay this model out: {vb.reason}")
    if limits.mamba_cache_mode == "all" and any(k == "state" for k, _, _ in vb.groups):
        raise PlanError(
            "vLLM 0.33 keeps Mamba prefix caches only in mamba_cache_mode 'align' (not 'all')"
        )
    specs = model.layer_specs
    mml = limits.max_model_len
    # vLLM's start-up check sums every layer's most for one request (its own padded
    # page) and compares with the memory less one pool block (the null block).
    need_pages = 0
    for _kind, layers, bs in vb.groups:
        per, _ = _vllm_reserve_blocks(specs[layers[0]], bs, limits)
        need_pages += len(layers) * (per or cdiv(mml, bs))
    block_bytes = vb.page_size_bytes * vb.group_size
    need = need_pages * vb.page_size_bytes
    if memory_bytes - block_bytes < need:
        raise PlanError(
            f"vLLM refuses to start: one max_model_len={mml} request needs {need} bytes of "
            f"KV cache in every layer at once ({need_pages} pages of {vb.page_size_bytes} "
            f"bytes), but memory_bytes {memory_bytes} less one {block_bytes}-byte block "
            f"leaves {memory_bytes - block_bytes}; raise --memory to at least "
            f"{need + block_bytes} bytes or lower --max-model-len"
        )
    pool_bytes = vb.num_blocks * vb.page_size_bytes * vb.group_size
    groups = []
    for i, (kind, layers, bs) in enumerate(vb.groups):
        spec = specs[layers[0]]
        grows = kind != "state" and _vllm_reserve_blocks(spec, bs, limits)[0] == 0
        groups.append(
            GroupPlan(
                index=i,
                kind=kind,
                layers=layers,
                spec=spec,
                block_size=bs,
                page_size_bytes=vb.page_size_bytes * vb.group_size,
                num_blocks=vb.num_blocks,
                bytes=pool_bytes,
                slot_address_space=vb.num_blocks * bs,
                grows=grows,
                window=spec.window if isinstance(spec, SlidingWindowSpec) else None,
                chunk_size=spec.chunk_size if isinstance(spec, ChunkedLocalSpec) else None,
                max_encoder_len=(
                    spec.max_encoder_len if isinstance(spec, CrossAttentionSpec) else None
                ),
                max_blocks_per_request=None,
                sizing="shared",
            )
        )
    growing = [g for g in groups if g.grows]
    growing_page = sum(g.page_size_bytes for g in growing)
    return MemoryPlan(
        groups=tuple(groups),
        encoder_only_layers=encoder_only,
        token_capacity=vb.token_capacity or 0,
        max_concurrency=min(
            float(limits.max_num_seqs),
            (vb.token_capacity or 0) // vb.block_size / cdiv(mml, vb.block_size),
        ),
        unused_bytes=memory_bytes - pool_bytes,
        memory_bytes=memory_bytes,
        max_num_seqs=limits.max_num_seqs,
        max_model_len=mml,
        max_num_batched_tokens=limits.max_num_batched_tokens,
        block_size=vb.block_size,
        mamba_cache_mode=limits.mamba_cache_mode,
        bounded_sizing="shared",
        bounded_bytes=0,
        growing_bytes_per_token=growing_page / vb.block_size if growing else 0.0,
        physical_token_limit=None,
        vllm_baseline=vb,
        model=model,
        shared_pool=True,
    )


def _limits_of(plan: MemoryPlan) -> _Limits:
    return _Limits(
        plan.block_size,
        plan.max_num_seqs,
        plan.max_model_len,
        plan.max_num_batched_tokens,
        plan.mamba_cache_mode,
    )


__all__ = [
    "BOUNDED_SIZINGS",
    "PLAN_LAYOUTS",
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
