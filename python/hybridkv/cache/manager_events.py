"""KV-cache events of :class:`hybridkv.KVCacheManager`, shaped like vLLM's KV events.

Cache-aware routers consume ``BlockStored`` / ``BlockRemoved`` / ``AllBlocksCleared``
exactly as vLLM publishes them (block hashes, parent hash, token ids, block size, LoRA
id, medium), with one addition: ``group``, the KV-cache group (pool) the event belongs
to, since every group caches at its own block size in its own pool. Hashes are 128-bit
Python ints (see :mod:`hybridkv.cache.prefix_hash`). ``PrefixDisagreement`` reports a lookup
where some group holds cached blocks past the agreed hit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeAlias

#: The storage medium of the manager's pools (vLLM's ``medium`` field).
MEDIUM_GPU = "GPU"


@dataclass(frozen=True)
class BlockStored:
    """Consecutive blocks of one sequence were cached in ``group``.

    ``block_hashes[i]`` covers ``token_ids[i * block_size:(i + 1) * block_size]``;
    ``parent_block_hash`` is the hash of the block before the first (None at the start).
    """

    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    group: int
    medium: str | None = MEDIUM_GPU


@dataclass(frozen=True)
class BlockRemoved:
    """These hashes are no longer served by ``group`` (their blocks were reused)."""

    block_hashes: list[int]
    group: int
    medium: str | None = MEDIUM_GPU


@dataclass(frozen=True)
class AllBlocksCleared:
    """``group``'s whole prefix cache was reset."""

    group: int
    medium: str | None = MEDIUM_GPU


@dataclass(frozen=True)
class PrefixDisagreement:
    """A lookup where some group holds cached blocks for more than the agreed hit
    ``hit_tokens`` (``group_hit_tokens``: each group's own longest hit, cached or not)."""

    req_id: int
    hit_tokens: int
    group_hit_tokens: list[int] = field(default_factory=list)


KVEvent: TypeAlias = BlockStored | BlockRemoved | AllBlocksCleared | PrefixDisagreement


def events_from_tuples(rows: list[tuple[Any, ...]]) -> list[KVEvent]:
    """Build event objects from the core's tuples (see ``_core.KVCacheManager``)."""
    out: list[KVEvent] = []
    for kind, group, hashes, parent, tokens, block_size, lora, req_id, hit, ghits in rows:
        if kind == 0:
            out.append(BlockStored(hashes, parent, tokens, block_size, lora, group))
        elif kind == 1:
            out.append(BlockRemoved(hashes, group))
        elif kind == 2:
            out.append(AllBlocksCleared(group))
        else:
            out.append(PrefixDisagreement(req_id, hit, ghits))
    return out


__all__ = [
    "MEDIUM_GPU",
    "AllBlocksCleared",
    "BlockRemoved",
    "BlockStored",
    "KVEvent",
    "PrefixDisagreement",
    "events_from_tuples",
]
