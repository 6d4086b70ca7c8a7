"""The offload connector's load path (:class:`hybridkv.offload.connector.OffloadConnector`
inherits it): per request and group, how far the device cache plus the tiers reach
(:meth:`~_LoadPath.lookup_external`, one ``locate`` over every block beyond the device
hit), the hit every group can serve under its own rule (full attention: every block
below it; sliding window and chunked local: the blocks they keep; a checkpoint-only
state group: the checkpoint at exactly that position), the payloads read and held for
that hit, and :meth:`~_LoadPath.load_scheduled`, which writes them into the blocks the
step allocated. Also the results it returns (:class:`ExternalLookup`) and the
connector's counters (:class:`ConnectorStats`)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from hybridkv._core import int64_array
from hybridkv.errors import InvalidArgumentError
from hybridkv.offload.keys import BlockKey, block_keys
from hybridkv.offload.pages import PageIO
from hybridkv.offload.stack import TierStack
from hybridkv.offload.tier import Payload

I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]

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


class _LoadPath:
    """Lookup and load of :class:`hybridkv.offload.connector.OffloadConnector`, which
    sets every attribute below in its ``__init__``."""

    manager: Any
    pages: PageIO
    stack: TierStack
    fingerprint: bytes
    groups: list[Any]
    kinds: list[str]
    block_sizes: list[int]
    granularity: int
    mamba_mode: str
    stats: ConnectorStats
    _pending: dict[int, _Pending]
    _held_bytes: int
    _max_held: int
    _offloaded: OrderedDict[BlockKey, None]
    _key_cache: dict[tuple[int, int], list[BlockKey]]

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
