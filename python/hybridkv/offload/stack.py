"""The tier stack: tiers in lookup order (fastest first) and the write policy.

- write-through: a stored block goes into every tier; each tier evicts on its own.
- write-back: a stored block goes into the first tier only; what a tier evicts moves
  down to the next one (and falls off the last).

A lookup asks the tiers in order and stops at the first that holds a key. Under
write-through a hit in a lower tier is copied into the in-memory tiers above it (cheap,
and the next hit on that prefix is served from RAM); slower tiers above a hit are left
alone so that a load never writes to disk or the network on the caller's thread.

The stack is synchronous; :class:`hybridkv.offload.worker.StoreWorker` runs its
``put`` off the scheduler's thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from hybridkv.errors import OffloadConfigError
from hybridkv.offload.block_format import HEADER_BYTES
from hybridkv.offload.config import (
    CpuTierConfig,
    DiskTierConfig,
    OffloadConfig,
    RedisTierConfig,
    WritePolicy,
)
from hybridkv.offload.keys import BlockKey
from hybridkv.offload.tier import Payload, Tier


class TierStack:
    """Ordered tiers with one write policy; batch ``put``/``get``/``locate``."""

    def __init__(self, tiers: Sequence[Tier], *, write_policy: WritePolicy = "write-through"):
        if not tiers:
            raise OffloadConfigError("a tier stack needs at least one tier")
        if write_policy not in ("write-through", "write-back"):
            raise OffloadConfigError(f"unknown write policy {write_policy!r}")
        self.tiers = list(tiers)
        self.write_policy = write_policy
        #: Hits served by each tier (index as in ``tiers``), counted by :meth:`get`.
        self.served = [0] * len(self.tiers)
        self.misses = 0

    @classmethod
    def from_config(
        cls,
        config: OffloadConfig,
        fingerprint: bytes,
        *,
        redis_client: Any = None,
        max_block_bytes: int | None = None,
    ) -> TierStack:
        """Open every tier of ``config`` for the model ``fingerprint``.

        ``max_block_bytes`` (the model's largest page) bounds what a remote read may
        return per block; without it the Redis tier's default bound applies.
        """
        from hybridkv.offload.cpu_tier import CpuTier
        from hybridkv.offload.disk_tier import DiskTier
        from hybridkv.offload.redis_tier import RedisTier

        tiers: list[Tier] = []
        try:
            for tc in config.tiers:
                if isinstance(tc, CpuTierConfig):
                    tiers.append(CpuTier(tc.budget_bytes, pin_memory=tc.pin_memory))
                elif isinstance(tc, DiskTierConfig):
                    tiers.append(DiskTier(tc.path, tc.budget_bytes, fingerprint, fsync=tc.fsync))
                elif isinstance(tc, RedisTierConfig):
                    tiers.append(
                        RedisTier(
                            tc.url,
                            fingerprint,
                            budget_bytes=tc.budget_bytes,
                            socket_timeout_s=tc.socket_timeout_s,
                            connect_timeout_s=tc.connect_timeout_s,
                            retry_interval_s=tc.retry_interval_s,
                            ttl_s=tc.ttl_s,
                            call_timeout_s=tc.call_timeout_s,
                            max_value_bytes=None
                            if max_block_bytes is None
                            else max_block_bytes + HEADER_BYTES,
                            client=redis_client,
                        )
                    )
        except BaseException:
            for t in tiers:
                t.close()
            raise
        return cls(tiers, write_policy=config.write_policy)

    def put(self, items: Sequence[tuple[BlockKey, Payload]]) -> None:
        """Store blocks according to the write policy."""
        if not items:
            return
        if self.write_policy == "write-through":
            for tier in self.tiers:
                tier.put(items)
            return
        moving: Sequence[tuple[BlockKey, Payload]] = items
        for i, tier in enumerate(self.tiers):
            last = i == len(self.tiers) - 1
            evicted = tier.put(moving, want_evicted=not last)
            if last or not evicted:
                break
            moving = evicted

    def locate(self, keys: Sequence[BlockKey]) -> list[int]:
        """For each key, the index of the first tier that holds it, or -1."""
        where = [-1] * len(keys)
        pending = list(range(len(keys)))
        for t, tier in enumerate(self.tiers):
            if not pending:
                break
            held = tier.contains([keys[i] for i in pending])
            still = []
            for i, h in zip(pending, held, strict=True):
                if h:
                    where[i] = t
                else:
                    still.append(i)
            pending = still
        return where

    def get(self, keys: Sequence[BlockKey]) -> list[memoryview | None]:
        """Each key's payload from the first tier that has it, or None."""
        out: list[memoryview | None] = [None] * len(keys)
        pending = list(range(len(keys)))
        for t, tier in enumerate(self.tiers):
            if not pending:
                break
            got = tier.get([keys[i] for i in pending])
            still = []
            found: list[tuple[BlockKey, memoryview]] = []
            for i, payload in zip(pending, got, strict=True):
                if payload is None:
                    still.append(i)
                else:
                    out[i] = payload
                    found.append((keys[i], payload))
            self.served[t] += len(found)
            if found:
                for upper in self.tiers[:t]:
                    if upper.in_memory:
                        self._promote(upper, found)
            pending = still
        self.misses += len(pending)
        return out

    def _promote(self, upper: Tier, found: list[tuple[BlockKey, memoryview]]) -> None:
        # Only write-through promotes: what the promotion evicts from RAM is still in
        # the tiers below. Under write-back an eviction would have to move down a tier,
        # a disk or network write on the loading thread, so write-back never promotes.
        if self.write_policy == "write-through":
            upper.put(found)

    def discard(self, keys: Iterable[BlockKey]) -> None:
        """Forget blocks in every tier."""
        keys = list(keys)
        for tier in self.tiers:
            tier.discard(keys)

    def stats(self) -> dict[str, Any]:
        """Per-tier counters plus which tier served the hits."""
        return {
            "write_policy": self.write_policy,
            "misses": self.misses,
            "tiers": [
                {
                    "kind": tier.kind,
                    "describe": tier.describe(),
                    "blocks": len(tier),
                    "used_bytes": tier.used_bytes,
                    "budget_bytes": tier.budget_bytes,
                    "served": self.served[i],
                    **tier.stats.as_dict(),
                }
                for i, tier in enumerate(self.tiers)
            ],
        }

    def close(self) -> None:
        for tier in self.tiers:
            tier.close()
