"""The KV-cache manager a serving engine's scheduler calls every step.

:class:`KVCacheManager` owns one block pool per group of a
:class:`~hybridkv.planning.planner.MemoryPlan` and keeps, per request, one positional block
table per group. All state and loops are in Rust (``hybridkv._core``); every method
takes and returns numpy arrays for a whole batch, and releases the GIL while it works.

Per step a scheduler calls ``get_computed_tokens`` for the requests it admits (prefix
hits), then ONE ``allocate_slots`` for everything it schedules, exports
``block_table``/``slot_mapping`` for the model runner, and after the step
``append_tokens`` (sampled tokens) and ``free`` (finished requests). See
``rust/core/src/manager.rs`` for the exact rules (what each group kind needs for a
hit, when window blocks are released) and ``rust/core/src/prefix_hash.rs`` for the
block-hash algorithm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from hybridkv import _core
from hybridkv.cache.manager_events import KVEvent, events_from_tuples
from hybridkv.cache.prefix_hash import MediaItem

I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]


class GroupLike(Protocol):
    """What the manager reads from a group (a ``GroupPlan`` or :class:`ManagerGroup`)."""

    @property
    def kind(self) -> str: ...
    @property
    def block_size(self) -> int: ...
    @property
    def num_blocks(self) -> int: ...
    @property
    def window(self) -> int | None: ...
    @property
    def chunk_size(self) -> int | None: ...
    @property
    def max_encoder_len(self) -> int | None: ...


class PlanLike(Protocol):
    """What the manager reads from a plan (a ``MemoryPlan`` or :class:`ManagerConfig`)."""

    @property
    def groups(self) -> Sequence[GroupLike]: ...
    @property
    def mamba_cache_mode(self) -> str: ...


@dataclass(frozen=True)
class ManagerGroup:
    """A group given by hand (tests, benchmarks): the fields the manager needs."""

    kind: str
    block_size: int
    num_blocks: int
    window: int | None = None
    chunk_size: int | None = None
    max_encoder_len: int | None = None


@dataclass(frozen=True)
class ManagerConfig:
    """A plan given by hand: groups plus the state-checkpoint mode."""

    groups: tuple[ManagerGroup, ...]
    mamba_cache_mode: str = "align"


@dataclass(frozen=True)
class ManagerStats:
    """Cumulative counters (see :meth:`KVCacheManager.stats`).

    ``hit_rate`` is ``hit_tokens / query_tokens``; ``group_hit_tokens[g]`` is what group
    ``g`` alone could have served; ``disagreements`` counts lookups where some group
    could serve more than the agreed hit from blocks it holds cached (those that report
    a :meth:`~KVCacheManager.shared_prefix_boundary`). ``usage[g]`` is the fraction of pool ``g``'s
    non-null blocks in use, ``num_free``/``num_cached``/``num_in_use`` its block counts.
    Times are seconds spent in hashing, prefix lookup and allocation.
    """

    queries: int
    query_tokens: int
    hit_tokens: int
    group_hit_tokens: tuple[int, ...]
    disagreements: int
    alloc_requests: int
    alloc_failures: int
    preemptions: int
    usage: tuple[float, ...]
    num_blocks: tuple[int, ...]
    num_free: tuple[int, ...]
    num_cached: tuple[int, ...]
    num_in_use: tuple[int, ...]
    hash_seconds: float
    lookup_seconds: float
    alloc_seconds: float
    #: Interior state checkpoints dropped at release (``checkpoint_policy="reuse"``).
    interior_checkpoints_dropped: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.query_tokens if self.query_tokens else 0.0


class KVCacheManager:
    """Per-request block tables across a hybrid model's KV-cache groups.

    ``plan`` is a :class:`~hybridkv.planning.planner.MemoryPlan` (or anything with ``groups``,
    each with ``kind``/``block_size``/``num_blocks``/``window``/``chunk_size``/
    ``max_encoder_len``, and ``mamba_cache_mode``). Block hashes are seeded by
    ``hash_seed`` (never by ``PYTHONHASHSEED``). Token ids must be non-negative and
    below ``vocab_size`` when given. KV events are recorded only with
    ``enable_kv_events=True``; drain them with :meth:`take_events` every step.

    ``shared_pool`` (default: the plan's ``shared_pool`` attribute, else ``False``):
    every group draws from ONE pool of the groups' common ``num_blocks`` (one id space,
    one LRU free queue, a request fits when its groups' blocks together fit the free
    count; prefix lookups stay per group), which is how vLLM lays out a hybrid model's
    cache at runtime. ``usage()`` and ``stats()`` then report that pool for every group.

    ``pool_of`` (static pools, or an elastic arena; default: one pool per group, or the
    arena plan's ``pool_of``): per group, the pool it draws from, pools numbered in the
    order of their first group. Groups sharing a pool need the same ``num_blocks`` (in
    an arena: the same page and block size) and none may be a state group; they share
    it as the groups of a shared pool do (one id space, one LRU queue, needs summed,
    prefix lookups per group) but release window blocks at the start of each step. An
    elastic plan says which of its groups share a pool (``plan.arena.pool_of``, see
    :attr:`pool_of`); an arena without one pools every page class.

    ``checkpoint_policy`` (``mamba_cache_mode="align"``): which cached state checkpoints
    a state group evicts first. ``"reuse"`` (the default, except with a shared pool):
    checkpoints a request moved past that are neither its prompt end nor a fork point
    (two requests extended them, or a lookup's shared-prefix boundary) go first,
    shallowest first, then least recently used; turn ends (what a request holds when it
    finishes) and fork points stay. ``"lru"``: least recently used only, as vLLM does
    (the only choice with a shared pool). See ``rust/core/src/manager/checkpoints.rs``.

    Request ids are integers. This class only documents and types: the bindings check
    every argument once (``rust/bindings/src/manager_args.rs``), before anything
    changes, so bad input raises a :class:`~hybridkv.errors.HybridKVError` subclass
    naming the bad value and changes nothing.

    Threads: a manager may be shared by several threads. Each call is atomic: the
    bindings hold a lock around the Rust state (taken with the GIL released, so a
    waiting thread never blocks the others), so concurrent calls are serialised in
    some order, never refused and never interleaved. A sequence of calls (lookup, then
    allocate) is not atomic as a whole: one scheduler thread per manager is still the
    design. An input array that another thread is writing at that moment (e.g. the
    ``out`` of a running :meth:`block_table_into`) is refused with an
    :class:`~hybridkv.errors.InvalidArgumentError`.
    """

    def __init__(
        self,
        plan: PlanLike,
        *,
        enable_prefix_caching: bool = True,
        hash_seed: int = 0,
        vocab_size: int | None = None,
        enable_kv_events: bool = False,
        shared_pool: bool | None = None,
        checkpoint_policy: str | None = None,
        pool_of: Sequence[int] | None = None,
    ) -> None:
        if shared_pool is None:
            shared_pool = getattr(plan, "shared_pool", False)
        arena = getattr(plan, "arena", None)
        if pool_of is None and arena is not None and getattr(arena, "pool_of", None):
            pool_of = arena.pool_of
        # The bindings check every argument (``rust/bindings/src/manager_args.rs``).
        self._core = _core.KVCacheManager(
            plan.groups,
            plan.mamba_cache_mode,
            bool(enable_prefix_caching),
            hash_seed,
            vocab_size,
            bool(enable_kv_events),
            arena,
            shared_pool,
            checkpoint_policy,
            None if pool_of is None else list(pool_of),
        )
        self.plan = plan
        self.group_kinds: tuple[str, ...] = tuple(str(g.kind) for g in plan.groups)
        self.block_sizes: tuple[int, ...] = tuple(int(g.block_size) for g in plan.groups)
        self.mamba_cache_mode = str(plan.mamba_cache_mode)
        self.enable_prefix_caching = bool(enable_prefix_caching)
        self.hash_seed = int(hash_seed)
        #: Token ids must be below this (None: any non-negative int32).
        self.vocab_size: int | None = None if vocab_size is None else int(vocab_size)
        self.elastic = getattr(plan, "arena", None) is not None
        #: Which cached state checkpoints go first (``"reuse"`` or ``"lru"``).
        self.checkpoint_policy: str = (
            ("lru" if self._core.shared_pool else "reuse")
            if checkpoint_policy is None
            else str(checkpoint_policy)
        )

    # -- properties -----------------------------------------------------------------

    @property
    def num_groups(self) -> int:
        return len(self.group_kinds)

    @property
    def shared_pool(self) -> bool:
        """Whether every group draws from one shared pool (vLLM's runtime layout)."""
        return bool(self._core.shared_pool)

    @property
    def pool_of(self) -> tuple[int, ...]:
        """Per group: the pool it draws from. Static pools: one per group; a shared pool
        (vLLM's layout): all 0; an elastic arena: the plan's pools (groups whose pages
        and block sizes are equal share one, but a window group whose floor the planner
        capped keeps its own: :func:`hybridkv.cache.arena_plan.pool_classes`)."""
        return tuple(int(p) for p in self._core.pool_of)

    @property
    def prompt_keep_min(self) -> int:
        """Align mode, elastic arena: a prompt's last state checkpoint is kept only when
        the prompt computed at least this many tokens up to it beyond its prefix hit
        (twice the attention tokens a state page's bytes hold); 0: always kept. The
        scheduler ends a prefill chunk on the prompt's last block boundary only then."""
        return int(self._core.prompt_keep_min)

    @property
    def num_requests(self) -> int:
        return int(self._core.num_requests)

    def __contains__(self, req_id: int) -> bool:
        return bool(self._core.__contains__(req_id))

    def request_ids(self) -> I64:
        """Ids of every request the manager holds, sorted."""
        return self._core.request_ids()

    # -- requests -------------------------------------------------------------------

    def add_requests(
        self,
        req_ids: npt.ArrayLike,
        token_ids: npt.ArrayLike | Sequence[npt.ArrayLike],
        offsets: npt.ArrayLike | None = None,
        *,
        lora_ids: Sequence[int | None] | None = None,
        cache_salts: Sequence[str | bytes | None] | None = None,
        mm_features: Sequence[Sequence[MediaItem] | None] | None = None,
        encoder_lens: npt.ArrayLike | None = None,
    ) -> None:
        """Add requests with their prompts.

        ``token_ids`` is one flat int32 array with ``offsets`` (length ``n + 1``, request
        ``i`` is ``token_ids[offsets[i]:offsets[i+1]]``) or a list of 1-D arrays with
        ``offsets=None``. Extra hash keys per request: ``lora_ids`` (None = no LoRA),
        ``cache_salts`` (enter the first block's hash), ``mm_features`` (multimodal items
        ``(content hash, start, length)`` entering the hashes of the blocks they
        overlap). ``encoder_lens`` sizes cross-attention tables.
        """
        self._core.add_requests(
            req_ids,
            token_ids,
            offsets,
            lora_ids,
            cache_salts,
            encoder_lens=encoder_lens,
            mm_features=mm_features,
        )

    def append_tokens(
        self,
        req_ids: npt.ArrayLike,
        token_ids: npt.ArrayLike | Sequence[npt.ArrayLike],
        offsets: npt.ArrayLike | None = None,
    ) -> None:
        """Append generated tokens (same ragged forms as :meth:`add_requests`)."""
        self._core.append_tokens(req_ids, token_ids, offsets)

    def free(self, req_ids: npt.ArrayLike) -> None:
        """Drop finished requests; their blocks go back (cached ones stay findable)."""
        self._core.free(req_ids)

    def preempt(self, req_ids: npt.ArrayLike) -> None:
        """Release the requests' blocks and make them wait again; their tokens and
        hashes stay, so :meth:`get_computed_tokens` re-hits their cached prefix."""
        self._core.preempt(req_ids)

    # -- per step -------------------------------------------------------------------

    def get_computed_tokens(self, req_ids: npt.ArrayLike) -> I64:
        """The longest prefix every group can serve from the cache, per request.

        The request takes a reference on the hit blocks and its computed count becomes
        the hit. At most ``num_tokens - 1``: the last token is always computed. The
        requests must be waiting (added or preempted), not running.
        """
        return self._core.get_computed_tokens(req_ids)

    def allocate_slots(
        self,
        req_ids: npt.ArrayLike,
        num_new_tokens: npt.ArrayLike,
        num_lookahead_tokens: npt.ArrayLike | None = None,
        *,
        new_step: bool = True,
    ) -> npt.NDArray[np.bool_]:
        """Allocate this step's blocks for every scheduled request: ONE call per step.

        Request ``i`` computes ``num_new_tokens[i]`` known tokens this step (plus
        ``num_lookahead_tokens`` speculative slots). Per request all-or-nothing across
        groups: ``False`` means nothing changed for it. Success advances its computed
        count and caches the blocks the step completes. With ``new_step=True`` the call
        first releases window blocks that requests' finished tokens no longer need;
        pass ``False`` for a second call within the same step. In such a call a request
        whose prefix hit starts from a state checkpoint cached earlier in this step (not
        computed until this step's forward) reports ``False`` and keeps its hit: it
        fits the next step.
        """
        return self._core.allocate_slots(req_ids, num_new_tokens, num_lookahead_tokens, new_step)

    def block_table(
        self, group: int, req_ids: npt.ArrayLike, max_blocks: int | None = None
    ) -> npt.NDArray[np.int32]:
        """``(n, width)`` int32 block ids of ``group`` (0 = null block), row ``i`` for
        ``req_ids[i]``; entry ``k`` covers tokens ``[k * bs, (k + 1) * bs)``. ``width``
        is the longest table, or ``max_blocks`` when given."""
        return self._core.block_table(group, req_ids, max_blocks)

    def block_table_into(
        self, group: int, req_ids: npt.ArrayLike, out: npt.NDArray[np.int32]
    ) -> npt.NDArray[np.int32]:
        """Write ``group``'s tables for ``req_ids`` into the first rows of ``out`` (a
        persistent C-contiguous int32 ``(rows, max_blocks)`` buffer, e.g. sized
        ``(max_num_seqs, cdiv(max_model_len, block_size))``), zero padding each row, so a
        step allocates nothing. Returns the filled view ``out[:len(req_ids)]``."""
        return out[: self._core.block_table_into(group, req_ids, out)]

    def new_block_ids(
        self, group: int, req_ids: npt.ArrayLike
    ) -> tuple[I64, I64, npt.NDArray[np.int32]]:
        """Incremental table export for a model runner that keeps persistent tables.

        Returns ``(start, offsets, block_ids)``: request ``i``'s table entries appended
        since the previous call for it and ``group`` are
        ``block_ids[offsets[i]:offsets[i+1]]``, to be written at columns ``start[i]``
        onwards. A table rebuilt by a prefix lookup, or emptied by preemption, starts
        again at column 0. Entries later released to the null block (left a window)
        are not re-sent: a runner never reads a request's table outside its window.
        """
        return self._core.new_block_ids(group, req_ids)

    def new_block_ids_all(
        self, req_ids: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int32]]:
        """:meth:`new_block_ids` of every group in one call (one crossing into Rust).

        Returns ``(start, offsets, block_ids)`` with ``start`` of shape
        ``(num_groups, n)`` and ``offsets`` of shape ``(num_groups, n + 1)``: group
        ``g``'s new entries of request ``i`` are
        ``block_ids[offsets[g, i]:offsets[g, i + 1]]``, written from column
        ``start[g, i]`` on. Same rules as :meth:`new_block_ids`; each group's export
        state advances exactly as one ``new_block_ids(g, req_ids)`` call per group would.
        """
        return self._core.new_block_ids_all(req_ids)

    def block_tables(self, req_ids: npt.ArrayLike) -> list[npt.NDArray[np.int32]]:
        """:meth:`block_table` of every group (in group order) for one request order."""
        return self._core.block_tables(req_ids)

    def slot_mapping(self, group: int, req_ids: npt.ArrayLike, positions: npt.ArrayLike) -> I64:
        """Slots ``block * block_size + position % block_size`` in ``group``'s address
        space for parallel arrays of request ids and token positions (-1 where the
        entry is the null block)."""
        return self._core.slot_mapping(group, req_ids, positions)

    def num_computed_tokens(self, req_ids: npt.ArrayLike) -> I64:
        return self._core.num_computed_tokens(req_ids)

    def num_tokens(self, req_ids: npt.ArrayLike) -> I64:
        """Known tokens (prompt + appended) per request."""
        return self._core.num_tokens(req_ids)

    def shared_prefix_boundary(self, req_ids: npt.ArrayLike) -> I64:
        """Per request, from its last :meth:`get_computed_tokens`: the longest prefix some
        single group could serve from blocks it holds cached (the block ending there
        among them) when that is longer than the agreed hit, else 0. Prefixes a group
        serves with nothing cached (a chunked-local group at a chunk start, cross
        attention anywhere) are no evidence of a shared prefix and never count.

        In align mode a state group only checkpoints where a step ends, so a scheduler
        that ends a prefill chunk exactly at this position (and at block boundaries)
        lets the next request sharing the prefix hit all of it.
        """
        return self._core.shared_prefix_boundary(req_ids)

    def block_hashes(self, group: int, req_id: int) -> npt.NDArray[np.uint64]:
        """The request's full-block hashes at ``group``'s block size, ``(n, 2)`` uint64."""
        return self._core.block_hashes(group, req_id)

    # -- cache, events, stats -------------------------------------------------------

    def reset_prefix_cache(self) -> bool:
        """Forget every cached block hash. Refused (``False``) while blocks are in use."""
        return bool(self._core.reset_prefix_cache())

    def take_events(self) -> list[KVEvent]:
        """Drain the KV events recorded since the last call (oldest first)."""
        return events_from_tuples(self._core.take_event_tuples())

    def usage(self) -> npt.NDArray[np.float64]:
        """Per pool: fraction of the non-null blocks in use (elastic: of the blocks
        backed by memory now)."""
        counts = self._core.pool_counts()
        if self.elastic:
            present = self._core.present_blocks()
            return np.array(
                [(c[3] / p) if p else 0.0 for c, p in zip(counts, present, strict=True)],
                dtype=np.float64,
            )
        return np.array(
            [(u / (n - 1)) if n > 1 else 0.0 for n, _f, _c, u in counts], dtype=np.float64
        )

    def free_blocks(self) -> I64:
        """Per pool: free blocks, cached or not (what an allocation can take without
        moving memory; a shared pool reports itself for every group)."""
        return self._core.free_blocks()

    def obtainable_blocks(self) -> I64:
        """Per pool: blocks an allocation could get now. Static pools: their free
        blocks. Elastic: also what the group could take from the shared remainder
        (unowned regions, other groups' whole free regions above their floors)."""
        return np.asarray(self._core.obtainable_blocks(), dtype=np.int64)

    def set_floor_needs(self, needs: npt.ArrayLike) -> bool:
        """Elastic: per group, the blocks its running requests (and those being
        admitted) can still hold at once, at most its planned floor (0 for growing
        groups). A pool's effective floor is the sum over its groups: other pools take
        its idle regions only above it, and a pool below it takes regions now. Returns
        False, changing nothing, when some pool cannot reach its new floor; bad input
        raises :class:`~hybridkv.errors.InvalidArgumentError`, nothing changed."""
        return bool(self._core.set_floor_needs(needs))

    def effective_floors(self) -> list[int]:
        """Per pool: its effective floor (the planned floor until
        :meth:`set_floor_needs`; empty for static pools)."""
        return list(self._core.effective_floors())

    def present_blocks(self) -> I64:
        """Per group: non-null blocks backed by memory now in the pool it draws from
        (elastic pools grow and shrink; static ones hold all theirs)."""
        return np.asarray(self._core.present_blocks(), dtype=np.int64)

    def held_spare(self) -> list[int]:
        """Per pool: blocks it holds above its effective floor that no other pool could
        take now (free blocks beside blocks in use): its floor can rise by that much
        without taking memory from another pool (all 0 for static pools)."""
        return list(self._core.held_spare())

    def arena_info(self) -> dict[str, Any] | None:
        """The elastic arena now (``None`` for static pools): ``region_bytes``,
        ``null_bytes``, ``num_regions``, ``owners`` (pool per region, -1 unowned; see
        :attr:`pool_of`), ``num_grid_regions`` (the regions after those are floor
        spans, pinned), per pool ``bases`` (byte offset of its block 0) and
        ``floor_spans`` (its span's ``(start, end)`` bytes, or ``None``),
        ``waste_bytes`` (bytes no group can use under this ownership),
        ``worst_waste_bytes``, and the counters ``grants`` (regions taken from the
        remainder), ``moves`` (regions moved between groups) and ``evicted_blocks``
        (cached blocks dropped by moves)."""
        info = self._core.arena_info()
        return None if info is None else dict(info)

    def stats(self) -> ManagerStats:
        d = self._core.stats_dict()
        counts = self._core.pool_counts()
        return ManagerStats(
            queries=d["queries"],
            query_tokens=d["query_tokens"],
            hit_tokens=d["hit_tokens"],
            group_hit_tokens=tuple(d["group_hit_tokens"]),
            disagreements=d["disagreements"],
            alloc_requests=d["alloc_requests"],
            alloc_failures=d["alloc_failures"],
            preemptions=d["preemptions"],
            usage=tuple(float(x) for x in self.usage()),
            num_blocks=tuple(c[0] for c in counts),
            num_free=tuple(c[1] for c in counts),
            num_cached=tuple(c[2] for c in counts),
            num_in_use=tuple(c[3] for c in counts),
            hash_seconds=d["ns_hash"] * 1e-9,
            lookup_seconds=d["ns_lookup"] * 1e-9,
            alloc_seconds=d["ns_alloc"] * 1e-9,
            interior_checkpoints_dropped=d["interior_checkpoints_dropped"],
        )

    # -- introspection (tests, debugging) -------------------------------------------

    def ref_counts(self, group: int) -> npt.NDArray[np.uint32]:
        """Reference count of every block of ``group``'s pool (index = block id)."""
        return self._core.ref_counts(group)

    def free_queue(self, group: int) -> I32:
        """``group``'s free queue, next to be allocated first."""
        return self._core.free_queue(group)

    def cached_blocks(self, group: int) -> tuple[I32, npt.NDArray[np.uint64]]:
        """``(block ids, (n, 2) hashes)`` of every block carrying a hash in ``group``."""
        return self._core.cached_blocks(group)

    def check_invariants(self) -> None:
        """Raise if any pool's reference counts differ from what the tables hold."""
        self._core.check_invariants()

    def __repr__(self) -> str:
        kinds = ", ".join(
            f"{k}/{bs}" for k, bs in zip(self.group_kinds, self.block_sizes, strict=True)
        )
        return f"KVCacheManager(groups=[{kinds}], requests={self.num_requests})"


__all__ = ["KVCacheManager", "ManagerConfig", "ManagerGroup", "ManagerStats"]
