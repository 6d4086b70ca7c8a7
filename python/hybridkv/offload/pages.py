"""Where a block's bytes live on this side of the offload tiers.

The connector reads a block's page out of the engine's KV memory when it stores it, and
writes a loaded page into a freshly allocated block. :class:`PageIO` is that interface.

- :class:`HostPages`: one ``(num_blocks, page_size_bytes)`` uint8 array per group, each
  group at its own page size and indexed by its own block ids (the engine's KV cache
  when it lives in host memory; tests and the bundled tiny model).
- :class:`SyntheticPages`: for the serving simulator, which has no KV memory. A page's
  content is a deterministic function of its key, ``ceil(page_size_bytes / scale)``
  bytes long, so the tiers hold real, checkable bytes at ``1/scale`` of the real size
  and each tier's budget is scaled by the same factor (:meth:`scaled_config`): every
  tier evicts the same blocks it would at full size, up to rounding of each page to
  whole bytes. Loads are verified against the expected content (``mismatches``).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from hybridkv.errors import InvalidArgumentError
from hybridkv.offload.config import (
    CpuTierConfig,
    DiskTierConfig,
    OffloadConfig,
    RedisTierConfig,
    TierConfig,
)
from hybridkv.offload.keys import BlockKey
from hybridkv.offload.tier import Payload

I32 = npt.NDArray[np.int32]


class PageIO(Protocol):
    """Reads and writes whole blocks of one group's KV memory."""

    def page_bytes(self, group: int) -> int:
        """Bytes a stored page of ``group`` has (what the tiers hold per block)."""
        ...

    def read(self, group: int, block_ids: I32, keys: Sequence[BlockKey]) -> list[Payload]:
        """Snapshots (owned copies) of these blocks' pages."""
        ...

    def write(
        self, group: int, block_ids: I32, keys: Sequence[BlockKey], pages: Sequence[Payload]
    ) -> None:
        """Put loaded pages into these (freshly allocated) blocks."""
        ...


class HostPages:
    """The KV cache in host memory: one uint8 array per group at its own page size."""

    def __init__(self, plan: Any) -> None:
        self.arrays: list[npt.NDArray[np.uint8]] = [
            np.zeros((int(g.num_blocks), int(g.page_size_bytes)), dtype=np.uint8)
            for g in plan.groups
        ]

    def page_bytes(self, group: int) -> int:
        return int(self.arrays[group].shape[1])

    def read(self, group: int, block_ids: I32, keys: Sequence[BlockKey]) -> list[Payload]:
        arr = self.arrays[group]
        return [arr[int(b)].tobytes() for b in np.asarray(block_ids).tolist()]

    def write(
        self, group: int, block_ids: I32, keys: Sequence[BlockKey], pages: Sequence[Payload]
    ) -> None:
        arr = self.arrays[group]
        for b, page in zip(np.asarray(block_ids).tolist(), pages, strict=True):
            view = np.frombuffer(page, dtype=np.uint8)
            if view.shape[0] != arr.shape[1]:
                raise InvalidArgumentError(
                    f"group {group}: a page of {view.shape[0]} bytes for blocks of {arr.shape[1]}"
                )
            arr[int(b)] = view


@functools.lru_cache(maxsize=64)
def _chunk_index(nbytes: int) -> npt.NDArray[np.uint8]:
    """Byte ``i`` -> ``(i // 64) % 256`` (cached: a simulation has a few page sizes)."""
    out = (np.arange(nbytes, dtype=np.int64) // 64 % 256).astype(np.uint8)
    out.setflags(write=False)
    return out


def synthetic_page(key: BlockKey, nbytes: int) -> bytes:
    """Deterministic bytes for ``key``: its 64-byte BLAKE2b digest tiled, each 64-byte
    chunk XORed with its index, so every chunk depends on the key and on its position."""
    seed = key.fingerprint + key.group.to_bytes(4, "little") + key.block_hash.to_bytes(16, "little")
    digest = hashlib.blake2b(seed, digest_size=64).digest()
    reps = -(-nbytes // 64)
    tiled = np.frombuffer(digest * reps, dtype=np.uint8, count=nbytes)
    return (tiled ^ _chunk_index(nbytes)).tobytes()


class SyntheticPages:
    """Key-derived pages at ``1/scale`` of each group's real page size (simulation)."""

    def __init__(self, plan: Any, scale: int = 1) -> None:
        if scale < 1:
            raise InvalidArgumentError(f"scale must be >= 1, got {scale}")
        self.scale = int(scale)
        self.real_page_bytes = [int(g.page_size_bytes) for g in plan.groups]
        self.sizes = [max(1, -(-p // self.scale)) for p in self.real_page_bytes]
        self.mismatches = 0
        self.written = 0

    @classmethod
    def for_budget(cls, plan: Any, min_page_bytes: int = 64) -> SyntheticPages:
        """The largest scale that keeps the smallest page at ``min_page_bytes`` or more
        (rounding then moves a budget's capacity by under ``1/min_page_bytes``)."""
        smallest = min((int(g.page_size_bytes) for g in plan.groups), default=1)
        return cls(plan, max(1, smallest // min_page_bytes))

    def page_bytes(self, group: int) -> int:
        return self.sizes[group]

    def read(self, group: int, block_ids: I32, keys: Sequence[BlockKey]) -> list[Payload]:
        return [synthetic_page(k, self.sizes[group]) for k in keys]

    def write(
        self, group: int, block_ids: I32, keys: Sequence[BlockKey], pages: Sequence[Payload]
    ) -> None:
        for key, page in zip(keys, pages, strict=True):
            self.written += 1
            if bytes(page) != synthetic_page(key, self.sizes[group]):
                self.mismatches += 1

    def scaled_config(self, config: OffloadConfig) -> OffloadConfig:
        """``config`` with every budget divided by the scale (rounded up)."""

        def scale(t: TierConfig) -> TierConfig:
            if isinstance(t, CpuTierConfig | DiskTierConfig):
                return replace(t, budget_bytes=-(-t.budget_bytes // self.scale))
            if isinstance(t, RedisTierConfig) and t.budget_bytes is not None:
                return replace(t, budget_bytes=-(-t.budget_bytes // self.scale))
            return t

        return replace(config, tiers=tuple(scale(t) for t in config.tiers))
