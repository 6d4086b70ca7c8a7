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

The lookup and load path (and :class:`ExternalLookup`, :class:`ConnectorStats`) live in
:mod:`hybridkv.offload.connector_load`, a base of :class:`OffloadConnector`; this module
holds the connector itself, its store path and its hooks.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from hybridkv._core import int64_array
from hybridkv.errors import InvalidArgumentError
from hybridkv.offload.config import OffloadConfig
from hybridkv.offload.connector_load import (
    _SKIP_KINDS,
    ConnectorStats,
    ExternalLookup,
    _LoadPath,
    _Pending,
)
from hybridkv.offload.keys import BlockKey, block_keys, model_fingerprint, require_weights
from hybridkv.offload.pages import PageIO
from hybridkv.offload.stack import TierStack
from hybridkv.offload.tier import Payload
from hybridkv.offload.worker import StoreWorker


class OffloadConnector(_LoadPath):
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


__all__ = ["ConnectorStats", "ExternalLookup", "OffloadConnector"]
