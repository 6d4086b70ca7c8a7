"""The offload connector: a tier stack bound to one :class:`hybridkv.KVCacheManager`.

Store path (:meth:`OffloadConnector.store`): after a step, every block that is full and
cached and not yet offloaded is snapshotted out of the engine's KV memory (a
:class:`~hybridkv.offload.pages.PageIO`) and queued for the background store worker;
the step waits for neither disk nor network. Each group is stored at its own block size
under ``(fingerprint, group, block hash)``; a state group's blocks are its checkpoints,
keyed by the prefix hash at their position. No chunk size is shared across groups.

Load path: :meth:`lookup_external` says, per request and per group, how many prompt
tokens that group could serve from the device cache plus the tiers, and the position
every group can serve (the request's hit: the minimum over groups, lowered further to a
position where every group's rule holds); disagreements between groups are counted and
reported. The payloads for that hit are read at lookup time and held, so a block evicted
from a tier in between cannot leave a hole. The scheduler then allocates the external
tokens in its one ``allocate_slots`` call (fresh blocks, so the block tables stay the
single truth), and :meth:`load_scheduled` writes the held payloads into those blocks.
An engine calls it between ``schedule()`` and the forward pass, and :meth:`store`
after the forward pass; :meth:`on_step` does both (the simulator's hook).

What each group needs to serve position ``P`` (tokens ``[0, P)`` computed):
full attention / MLA: every block below ``P``; sliding window: the blocks covering the
last ``window - 1`` tokens before ``P``; chunked local: the blocks of ``P``'s chunk before
``P``; state: the checkpoint at exactly ``P``. Blocks below the device hit are on the
device already. Encoder-only and cross-attention groups don't depend on the prefix.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from hybridkv.cache.manager import _int64 as int64_array
from hybridkv.errors import InvalidArgumentError
from hybridkv.offload.config import OffloadConfig
from hybridkv.offload.keys import BlockKey, block_keys, model_fingerprint, require_weights
from hybridkv.offload.pages import PageIO
from hybridkv.offload.stack import TierStack
from hybridkv.offload.tier import Payload
from hybridkv.offload.worker import StoreWorker

I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]

_PREFIX_KINDS = ("full_attention", "mla", "sparse_mla")
_SKIP_KINDS = ("encoder_only", "cross_attention")


@dataclass(frozen=True)
class ExternalLookup:
    """The answer of :meth:`OffloadConnector.lookup_external` (row ``i``: request ``i``)."""

    req_ids: I64
    #: ``(n, num_groups)``: the longest prefix each group alone could serve (device +
    #: tiers); -1 for groups that do not depend on the prefix.
    group_tokens: I64
    #: Tokens already on the device (the manager's hit).
    device_tokens: I64
    #: The position every group can serve (>= ``device_tokens``).
    hit_tokens: I64
    #: Requests whose groups disagreed (their maxima differ).
    disagreements: int

    @property
    def external_tokens(self) -> I64:
        """Tokens to load beyond the device hit."""
        out: I64 = self.hit_tokens - self.device_tokens
        return out


@dataclass
class _Pending:
    start: int  # the device hit the lookup was made against
    hit: int
    # per group: (block index in the request's table, key, payload)
    loads: dict[int, list[tuple[int, BlockKey, Payload]]] = field(default_factory=dict)
    nbytes: int = 0


@dataclass
class ConnectorStats:
    """Counters since the connector was made."""

    lookups: int = 0
    lookup_device_tokens: int = 0
    lookup_hit_tokens: int = 0
    external_tokens_loaded: int = 0
    loaded_blocks: int = 0
    loaded_bytes: int = 0
    disagreements: int = 0
    fetch_shortfalls: int = 0
    stored_blocks: int = 0
    stored_bytes: int = 0
    dropped_store_blocks: int = 0
    per_tier_blocks: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self.__dict__.items()}


class OffloadConnector:
    """Per-group offload for one manager: :meth:`store`, :meth:`lookup_external`,
    :meth:`load_scheduled`; also the scheduler's ``external`` hook (:meth:`lookup`) and
    the simulator's (``on_step``, ``load_seconds``).

    ``weights`` names the weights the engine loaded (a revision such as a Hugging Face
    commit hash, or :func:`~hybridkv.offload.keys.weights_checksum` of the files); it
    goes into the fingerprint that keys every block, so blocks computed with other
    weights under the same config are never served. A disk or Redis tier (blocks that
    outlive the process) is refused without it (an ``OffloadConfigError`` before any
    tier opens); a CPU-only stack dies with the process and may omit it. ``fingerprint``
    replaces the derived digest with the caller's own, which must then cover the
    weights (a digest from :func:`~hybridkv.offload.keys.model_fingerprint` made
    without ``weights`` is refused by the persistent tiers all the same).
    """

    def __init__(
        self,
        manager: Any,
        tiers: OffloadConfig | TierStack,
        pages: PageIO,
        *,
        weights: str | None = None,
        fingerprint: bytes | None = None,
        tp_rank: int = 0,
        tp_size: int = 1,
        extra: Mapping[str, Any] | None = None,
        redis_client: Any = None,
        background: bool = True,
        load_bytes_per_second: float | None = None,
        max_tracked_keys: int = 1 << 20,
        max_held_bytes: int = 1 << 30,
    ) -> None:
        plan = getattr(manager, "plan", None)
        if plan is None:
            raise InvalidArgumentError("the offload connector needs a manager with a .plan")
        if fingerprint is not None and weights is not None:
            raise InvalidArgumentError(
                "pass weights (the connector derives the fingerprint) or fingerprint "
                "(your own digest, which must cover the weights), not both"
            )
        self.manager = manager
        self.plan = plan
        self.pages = pages
        self.fingerprint = fingerprint or model_fingerprint(
            plan, weights=weights, tp_rank=tp_rank, tp_size=tp_size, extra=extra
        )
        if isinstance(tiers, OffloadConfig):
            # Before any tier opens: a tier that outlives the process needs the weights
            # in the fingerprint (the tiers check it too, for callers that open them).
            for kind in tiers.persistent_kinds():
                require_weights(self.fingerprint, kind)
        if isinstance(tiers, TierStack):
            self.stack = tiers
            max_pending = 1 << 30
        else:
            self.stack = TierStack.from_config(
                tiers,
                self.fingerprint,
                redis_client=redis_client,
                max_block_bytes=max(
                    (int(pages.page_bytes(g)) for g in range(len(plan.groups))), default=None
                ),
            )
            max_pending = tiers.max_pending_bytes
        self.worker = StoreWorker(self.stack, max_pending_bytes=max_pending) if background else None
        self.groups = list(plan.groups)
        self.kinds = [str(g.kind) for g in self.groups]
        self.block_sizes = [int(g.block_size) for g in self.groups]
        prefix_sizes = [b for b, k in zip(self.block_sizes, self.kinds, strict=True)
                        if k not in _SKIP_KINDS]  # fmt: skip
        # Hits land where every group has a block boundary (with the usual plans: the
        # state checkpoint interval, a multiple of the attention block size).
        self.granularity = math.lcm(*prefix_sizes) if prefix_sizes else 1
        self.mamba_mode = str(getattr(plan, "mamba_cache_mode", "align"))
        self.load_bytes_per_second = load_bytes_per_second
        self.stats = ConnectorStats(per_tier_blocks=[0] * len(self.stack.tiers))
        # Held lookups: a request that waits (not scheduled this step) keeps its fetched
        # payloads, so the next step's lookup of it costs nothing (bounded in bytes).
        self._pending: dict[int, _Pending] = {}
        self._held_bytes = 0
        self._max_held = max_held_bytes
        self._stored_upto: dict[tuple[int, int], int] = {}
        self._offloaded: OrderedDict[BlockKey, None] = OrderedDict()
        self._max_tracked = max_tracked_keys
        self._steps = 0
        self._key_cache: dict[tuple[int, int], list[BlockKey]] = {}

    # ------------------------------------------------------------------ helpers

    def _known_ids(self, req_ids: npt.ArrayLike) -> I64:
        """Request ids as int64, refusing floats, bools and ids the manager does not
        hold (before anything changes)."""
        ids = int64_array(req_ids, "request ids")
        for rid in ids.tolist():
            if rid not in self.manager:
                raise InvalidArgumentError(f"request {rid} is not in the manager")
        return ids

    def _hashes(self, group: int, req_id: int) -> npt.NDArray[np.uint64]:
        out: npt.NDArray[np.uint64] = np.asarray(
            self.manager.block_hashes(group, int(req_id)), dtype=np.uint64
        ).reshape(-1, 2)
        return out

    def _keys(self, group: int, req_id: int) -> list[BlockKey]:
        """The request's block keys in ``group`` (cached: a waiting request is looked up
        every step, and its hashes only ever grow)."""
        cached = self._key_cache.get((req_id, group))
        hashes = self._hashes(group, req_id)
        if cached is None or len(cached) > hashes.shape[0]:
            cached = []
        if len(cached) < hashes.shape[0]:
            cached = cached + block_keys(self.fingerprint, group, hashes[len(cached) :])
            self._key_cache[(req_id, group)] = cached
        return cached

    def _checkpoint_only(self, g: int) -> bool:
        """A state group that keeps only the running state plus checkpoints: a load
        needs just the checkpoint at the hit (``all`` mode caches every boundary)."""
        return self.kinds[g] == "state" and self.mamba_mode != "all"

    def _group_reach(self, g: int, dev: int, limit: int, present: npt.NDArray[np.bool_]) -> int:
        """The furthest position group ``g`` alone could serve from ``dev``."""
        bs = self.block_sizes[g]
        if self._checkpoint_only(g):
            ks = np.flatnonzero(present)
            pos = (ks + 1) * bs
            pos = pos[(pos > dev) & (pos <= limit)]
            return int(pos.max()) if pos.size else dev
        k0 = dev // bs
        missing = np.flatnonzero(~present[k0:])
        end = k0 + (int(missing[0]) if missing.size else present.shape[0] - k0)
        return max(dev, min(end * bs, limit // bs * bs))

    def _servable(
        self, g: int, pos: int, dev: int, reach: int, present: npt.NDArray[np.bool_]
    ) -> bool:
        bs = self.block_sizes[g]
        if pos == dev:
            return True
        if pos % bs:
            return False
        if self._checkpoint_only(g):
            k = pos // bs - 1
            return 0 <= k < present.shape[0] and bool(present[k])
        return pos <= reach

    def _needed(self, g: int, dev: int, hit: int) -> list[int]:
        """Table entries of group ``g`` a load from ``dev`` to ``hit`` must fill: every
        block the manager will allocate and cache for those tokens, or for a
        checkpoint-only state group the checkpoint at ``hit``."""
        bs = self.block_sizes[g]
        if hit <= dev:
            return []
        if self._checkpoint_only(g):
            return [hit // bs - 1]
        return list(range(dev // bs, hit // bs))

    # ------------------------------------------------------------------ load path

    def lookup_external(
        self, req_ids: npt.ArrayLike, device_hit_tokens: npt.ArrayLike | None = None
    ) -> ExternalLookup:
        """Per request and group, how far the device plus the tiers reach; the hit.

        ``group_tokens[i, g]``: the longest prefix group ``g`` alone could serve (-1 for
        groups that don't depend on the prefix). ``hit_tokens[i]``: the longest prefix
        every group can serve, at most ``num_tokens - 1`` (the last token is computed).
        Groups reaching different lengths count as a disagreement. The payloads of each
        hit are fetched now and held for :meth:`load_scheduled`; a block that vanished
        since the index said it was there lowers the hit (``fetch_shortfalls``).
        """
        ids = self._known_ids(req_ids)
        n, num_groups = ids.shape[0], len(self.groups)
        device = (
            np.zeros(n, dtype=np.int64)
            if device_hit_tokens is None
            else int64_array(device_hit_tokens, "device_hit_tokens")
        )
        if device.shape[0] != n:
            raise InvalidArgumentError(
                f"device_hit_tokens must have one entry per request ({n}), got {device.shape[0]}"
            )
        lengths = np.asarray(self.manager.num_tokens(ids), dtype=np.int64).reshape(-1)
        bad = np.flatnonzero((device < 0) | (device > lengths))
        if bad.size:
            r = int(bad[0])
            raise InvalidArgumentError(
                f"request {int(ids[r])}: device_hit_tokens {int(device[r])} is not in "
                f"[0, {int(lengths[r])}] (the request's tokens)"
            )
        active = [g for g in range(num_groups) if self.kinds[g] not in _SKIP_KINDS]
        group_tokens = np.full((n, num_groups), -1, dtype=np.int64)
        hits = device.copy()
        # Payloads held from an earlier step's lookup of the same request are reused
        # (a waiting request is looked up again every step it is not scheduled).
        reuse: dict[int, dict[BlockKey, Payload]] = {}
        for rid in ids.tolist():
            held = self._pending.get(rid)
            if held is not None:
                reuse[rid] = {k: p for loads in held.loads.values() for _, k, p in loads}
            self._drop_pending(rid)
        # One locate over the blocks of every request and group beyond the device hit
        # (what lies below it is on the device already).
        keys: list[BlockKey] = []
        group_keys: list[dict[int, list[BlockKey]]] = []
        spans: list[dict[int, tuple[int, int, int]]] = []
        for r in range(n):
            row, gk = {}, {}
            for g in active:
                gk[g] = self._keys(g, int(ids[r]))
                first = min(int(device[r]) // self.block_sizes[g], len(gk[g]))
                start = len(keys)
                keys.extend(gk[g][first:])
                row[g] = (first, start, len(keys))
            spans.append(row)
            group_keys.append(gk)
        located = np.asarray(self.stack.locate(keys) if keys else [], dtype=np.int64)
        disagreements = 0
        for r in range(n):
            rid = int(ids[r])
            dev, limit = int(device[r]), max(0, int(lengths[r]) - 1)
            present = {}
            for g, (first, s0, e0) in spans[r].items():
                arr = np.zeros(first + e0 - s0, dtype=np.bool_)
                arr[first:] = located[s0:e0] >= 0
                present[g] = arr
            for attempt in range(num_groups * 4 + 4):
                reach = {g: self._group_reach(g, dev, limit, present[g]) for g in active}
                if attempt == 0:
                    for g in active:
                        group_tokens[r, g] = reach[g]
                    if len(set(reach.values())) > 1:
                        disagreements += 1
                hit = self._common_hit(dev, reach, present)
                missing = self._fetch(rid, dev, hit, group_keys[r], reuse.get(rid, {}))
                if not missing:
                    break
                self.stats.fetch_shortfalls += 1
                for g, k in missing:
                    present[g][k] = False
            else:  # pragma: no cover - blocks kept vanishing: no external hit this time
                hit = dev
                self._drop_pending(rid)
            hits[r] = hit
        self.stats.lookups += n
        self.stats.lookup_device_tokens += int(device.sum())
        self.stats.lookup_hit_tokens += int(hits.sum())
        self.stats.disagreements += disagreements
        return ExternalLookup(ids, group_tokens, device, hits, disagreements)

    def _common_hit(
        self, dev: int, reach: dict[int, int], present: dict[int, npt.NDArray[np.bool_]]
    ) -> int:
        top = min(reach.values(), default=dev)
        gran = self.granularity
        for pos in range(top // gran * gran, dev, -gran):
            if all(self._servable(g, pos, dev, reach[g], present[g]) for g in reach):
                return pos
        return dev

    def _fetch(
        self,
        rid: int,
        dev: int,
        hit: int,
        keys: dict[int, list[BlockKey]],
        held: dict[BlockKey, Payload],
    ) -> list[tuple[int, int]]:
        """Read and hold the payloads of ``rid``'s hit; the (group, entry) pairs that
        could not be read (empty when the hit is held)."""
        self._drop_pending(rid)
        if hit <= dev:
            return []
        want = [(g, k, gk[k]) for g, gk in keys.items() for k in self._needed(g, dev, hit)]
        todo = [key for _, _, key in want if key not in held]
        fetched = dict(zip(todo, self.stack.get(todo), strict=True))
        got = [held[key] if key in held else fetched[key] for _, _, key in want]
        missing = [(g, k) for (g, k, _), p in zip(want, got, strict=True) if p is None]
        if missing:
            return missing
        pending = _Pending(dev, hit)
        for (g, k, key), payload in zip(want, got, strict=True):
            assert payload is not None
            pending.loads.setdefault(g, []).append((k, key, payload))
            pending.nbytes += memoryview(payload).nbytes
        self._pending[rid] = pending
        self._held_bytes += pending.nbytes
        while self._held_bytes > self._max_held and len(self._pending) > 1:
            oldest = next(iter(self._pending))
            if oldest == rid:
                break
            self._drop_pending(oldest)
        return []

    def _drop_pending(self, rid: int) -> None:
        held = self._pending.pop(rid, None)
        if held is not None:
            self._held_bytes -= held.nbytes

    def lookup(self, req_ids: I64, device_hit_tokens: I64) -> I64:
        """The scheduler's ``external`` hook: tokens to load beyond the device hit."""
        return self.lookup_external(req_ids, device_hit_tokens).external_tokens

    def load_scheduled(
        self,
        req_ids: npt.ArrayLike,
        computed_before: npt.ArrayLike,
        num_new_tokens: npt.ArrayLike,
        external: npt.ArrayLike,
    ) -> int:
        """Write held payloads into the blocks the step allocated for external tokens.

        Per request (a scheduler output's rows): ``computed_before`` is the device hit,
        ``num_new_tokens`` what ``allocate_slots`` allocated (external included) and
        ``external`` the tokens to load. Attention pages go to their own table entries;
        a checkpoint-only state group's checkpoint goes to the step's running-state
        entry (``cdiv(end, bs) - 1``), which the model then advances from the hit.
        Returns the number of blocks written. Requests that were looked up but not
        scheduled keep what they hold for their next lookup (up to ``max_held_bytes``).
        """
        written = 0
        ids = int64_array(req_ids, "request ids")
        columns = [
            int64_array(computed_before, "computed_before"),
            int64_array(num_new_tokens, "num_new_tokens"),
            int64_array(external, "external"),
        ]
        if any(c.shape != ids.shape for c in columns):
            raise InvalidArgumentError(
                "req_ids, computed_before, num_new_tokens and external must have one entry "
                f"per request, got lengths {[ids.shape[0], *(c.shape[0] for c in columns)]}"
            )
        # Every row is checked before any page is written or any hold dropped: a bad
        # row anywhere leaves the connector, the pages and every hold as they were.
        plans: list[tuple[int, int, list[tuple[int, I32, list[BlockKey], list[Payload]]]]] = []
        rows = zip(ids.tolist(), *(c.tolist() for c in columns), strict=True)
        seen: set[int] = set()
        for rid, start, new, ext in rows:
            if ext <= 0:
                continue
            if rid in seen:
                raise InvalidArgumentError(f"request {rid} is listed twice with external tokens")
            seen.add(rid)
            pending = self._pending.get(rid)
            if pending is None or pending.start != start or pending.hit != start + ext:
                raise InvalidArgumentError(
                    f"request {rid}: no held lookup for {ext} external tokens from {start}"
                )
            if new < ext:
                raise InvalidArgumentError(
                    f"request {rid}: {new} new tokens cannot hold {ext} external ones"
                )
            end = start + new
            writes = []
            for g, loads in pending.loads.items():
                bs = self.block_sizes[g]
                table = np.asarray(self.manager.block_table(g, np.array([rid])))[0]
                if self._checkpoint_only(g):
                    entries = [-(-end // bs) - 1] * len(loads)
                else:
                    entries = [k for k, _, _ in loads]
                if max(entries) >= table.shape[0]:
                    raise InvalidArgumentError(
                        f"request {rid}: group {g} has no table entry for a loaded page"
                    )
                block_ids = table[np.asarray(entries, dtype=np.int64)].astype(np.int32)
                if (block_ids == 0).any():
                    raise InvalidArgumentError(
                        f"request {rid}: group {g} has no block allocated for a loaded page"
                    )
                writes.append((g, block_ids, [k for _, k, _ in loads], [p for _, _, p in loads]))
            plans.append((rid, ext, writes))
        try:
            for _rid, ext, writes in plans:
                for g, block_ids, load_keys, payloads in writes:
                    self.pages.write(g, block_ids, load_keys, payloads)
                    for key in load_keys:
                        self._offloaded[key] = None
                    written += len(load_keys)
                    self.stats.loaded_bytes += len(load_keys) * int(self.groups[g].page_size_bytes)
                self.stats.external_tokens_loaded += ext
        finally:
            # What was held is used (or, if a write failed, stale); requests scheduled
            # without external tokens don't need what they held.
            for rid in ids.tolist():
                self._drop_pending(rid)
        self.stats.loaded_blocks += written
        return written

    # ------------------------------------------------------------------ store path

    def store(self, req_ids: npt.ArrayLike) -> int:
        """Queue every computed, cached block of these requests not offloaded yet.

        A block qualifies when its tokens are all computed (entry ``k`` with
        ``(k + 1) * bs <= num_computed``) and the table still holds it. A
        checkpoint-only state group (align mode) qualifies only the entry where the
        step just ended, when it ended on a boundary (``num_computed == (k + 1) * bs``):
        an earlier entry the table still holds may be a running state a step carried
        past its boundary (an unaligned chunk), not the checkpoint at that boundary, so
        ``store`` must run after every step for every checkpoint to be offloaded.
        Snapshots are taken now; the tier writes run on the worker thread. Returns the
        number of blocks queued.
        """
        ids = int64_array(req_ids, "request ids")
        ids = ids[[int(r) in self.manager for r in ids.tolist()]]  # finished ones are gone
        if ids.size == 0:
            return 0
        items: list[tuple[BlockKey, Payload]] = []
        real_bytes = 0
        computed = np.asarray(self.manager.num_computed_tokens(ids), dtype=np.int64)
        for g in range(len(self.groups)):
            if self.kinds[g] in _SKIP_KINDS:
                continue
            bs = self.block_sizes[g]
            # Only requests that completed a block since the last store (most decode
            # steps complete none) have their tables exported.
            todo = [
                r
                for r, rid in enumerate(ids.tolist())
                if int(computed[r]) // bs > self._stored_upto.get((rid, g), 0)
            ]
            if not todo:
                continue
            table = np.asarray(self.manager.block_table(g, ids[todo]))
            for row, r in enumerate(todo):
                rid = int(ids[r])
                done = self._stored_upto.get((rid, g), 0)
                upto = min(int(computed[r]) // bs, table.shape[1])
                if upto <= done:
                    continue
                hashes = self._hashes(g, rid)
                upto = min(upto, hashes.shape[0])
                self._stored_upto[(rid, g)] = max(done, upto)
                if upto <= done:
                    continue
                block_ids = table[row, done:upto].astype(np.int32)
                keys = block_keys(self.fingerprint, g, hashes[done:upto])
                # Align mode: only the checkpoint the step just ended on is one.
                ends_here = int(computed[r]) // bs - 1 - done
                only = ends_here if self._checkpoint_only(g) else None
                if only is not None and int(computed[r]) % bs:
                    continue
                fresh = [
                    j
                    for j, (b, k) in enumerate(zip(block_ids.tolist(), keys, strict=True))
                    if b != 0 and k not in self._offloaded and (only is None or j == only)
                ]
                if not fresh:
                    continue
                sel_keys = [keys[j] for j in fresh]
                pages = self.pages.read(g, block_ids[fresh], sel_keys)
                items.extend(zip(sel_keys, pages, strict=True))
                real_bytes += len(fresh) * int(self.groups[g].page_size_bytes)
                for k in sel_keys:
                    self._offloaded[k] = None
        while len(self._offloaded) > self._max_tracked:
            self._offloaded.popitem(last=False)
        if not items:
            return 0
        if self.worker is None:
            self.stack.put(items)
        elif not self.worker.submit(items):
            self.stats.dropped_store_blocks += len(items)
            for k, _ in items:
                self._offloaded.pop(k, None)
            return 0
        self.stats.stored_blocks += len(items)
        self.stats.stored_bytes += real_bytes
        return len(items)

    def forget(self, req_ids: npt.ArrayLike) -> None:
        """Drop the bookkeeping of finished requests."""
        for rid in int64_array(req_ids, "request ids").tolist():
            for g in range(len(self.groups)):
                self._stored_upto.pop((rid, g), None)
                self._key_cache.pop((rid, g), None)
            self._drop_pending(rid)

    # ------------------------------------------------------------------ hooks, stats

    def on_step(self, manager: Any, output: Any) -> None:
        """Per-step hook where an engine runs its forward pass (after ``schedule()``,
        before ``update_from_output()``, which frees finished requests): load the
        step's external tokens, then queue what the step completed for storing."""
        self.load_scheduled(
            output.req_ids,
            output.num_computed_before,
            output.num_new_tokens,
            output.num_external_tokens,
        )
        self.store(output.req_ids)
        self._steps += 1
        if self._steps % 1024 == 0:  # finished requests have left the manager: prune
            gone = {rid for rid, _ in self._stored_upto if rid not in self.manager}
            gone |= {rid for rid, _ in self._key_cache if rid not in self.manager}
            gone |= {rid for rid in self._pending if rid not in self.manager}
            self.forget(np.fromiter(gone, dtype=np.int64, count=len(gone)))

    def load_seconds(self, tokens: int) -> float:
        """Modelled time to load ``tokens`` external tokens (the simulator's hook).

        Attention bytes per token plus one state checkpoint per ``granularity`` tokens,
        over ``load_bytes_per_second`` (0 s when it is not set).
        """
        if not self.load_bytes_per_second:
            return 0.0
        per_token = 0.0
        for g in self.groups:
            if g.kind in _SKIP_KINDS:
                continue
            span = self.granularity if g.kind == "state" else int(g.block_size)
            per_token += int(g.page_size_bytes) / span
        return float(tokens * per_token / self.load_bytes_per_second)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for queued stores (tests, shutdown)."""
        return True if self.worker is None else self.worker.flush(timeout)

    def close(self) -> None:
        """Store what is queued, stop the worker, close the tiers."""
        if self.worker is not None:
            self.worker.close()
        self.stack.close()

    def report(self) -> dict[str, Any]:
        """Connector counters, the worker's and every tier's."""
        stack = self.stack.stats()
        out = self.stats.as_dict()
        out["per_tier_blocks"] = [t["served"] for t in stack["tiers"]]
        out["tiers"] = stack["tiers"]
        out["worker"] = self.worker.stats() if self.worker is not None else None
        out["fingerprint"] = self.fingerprint.hex()
        return out
