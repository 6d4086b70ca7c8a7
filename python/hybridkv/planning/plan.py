"""The plan objects: :class:`GroupPlan` (one KV-cache group and its pool),
:class:`VllmBaseline` (vLLM's runtime layout of the same memory) and :class:`MemoryPlan`
(a model's whole plan), with their JSON shapes (``hybridkv plan --json``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hybridkv.cache.arena_plan import ArenaPlan
from hybridkv.models.model_spec import ModelSpec
from hybridkv.models.specs import KVSpec, spec_to_dict


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
    of :mod:`hybridkv.models.window_bound` at vLLM's block size; the same bounds
    hybridkv sizes its own pools by):
    ``(num_blocks - 1 - reserve) // num_growing_groups * block_size``.
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
    falls short of it by less than one block. In the elastic layout ``bounded_bytes``
    is the floors plus the null-area bytes that bounded groups' read null blocks take
    beyond the growing group's null page, and the limit leaves the growing null block
    in (the arena's capacity is within one block per growing group of it). With no growing group, capacity is
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
