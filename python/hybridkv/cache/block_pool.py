"""The Python face of one KV-cache group's block pool (the state lives in Rust)."""

from __future__ import annotations

import numpy as np

from hybridkv import _core
from hybridkv.cache.pool_events import EventBatch


class BlockPool(_core.BlockPool):
    """The pool of one KV-cache group: ``num_blocks`` blocks with local ids, id 0 null.

    ``allocate(n)`` pops the least recently freed blocks; ``free(ids)`` drops one
    reference each and queues blocks that reach zero at the tail, in the order they
    reach zero; ``touch(ids)`` takes a reference (pulling a free block out of the
    queue: a prefix hit). A free block keeps its hash, and stays findable by
    ``lookup``, until it is handed out again. ``cache_blocks(ids, hashes)`` marks
    in-use blocks as cached; ``evict(ids)`` drops their hashes; ``reset_prefix_cache()``
    drops every hash and is refused while a block is in use.

    Ids are int32 arrays (any integer array-like is converted); hashes are ``(n, 2)``
    uint64 arrays, row ``[low 64 bits, high 64 bits]`` (see :mod:`hybridkv.cache.hashes`).
    Every error is a :class:`hybridkv.errors.HybridKVError` and leaves the pool
    exactly as it was. ``record_events=False`` stops recording events (for pools
    nobody drains). Safe to share between threads: each call is atomic (a lock in the
    bindings), concurrent calls are serialised.
    """

    def take_events(self) -> EventBatch:
        """Drain the events recorded since the last call, oldest first."""
        kind, block_id, block_hash = self.take_event_arrays()
        group = np.zeros(kind.shape[0], dtype=np.int32)
        return EventBatch(group, kind, block_id, block_hash)

    def __repr__(self) -> str:
        return (
            f"BlockPool(num_blocks={self.num_blocks}, free={self.num_free}, "
            f"cached={self.num_cached}, in_use={self.num_in_use})"
        )


class PoolRegistry(_core.PoolRegistry):
    """One block pool per KV-cache group; every call names its group first.

    Block ids are local to their group's pool: an id is only ever applied to the pool
    of the group the call names, so evicting or freeing in one group can never touch
    another group's blocks, hashes or events. Safe to share between threads: each call
    is atomic (a lock in the bindings), concurrent calls are serialised.
    """

    def take_events(self) -> EventBatch:
        """Drain every pool's events, tagged with their group (group order, then time)."""
        return EventBatch(*self.take_event_arrays())

    def __repr__(self) -> str:
        sizes = [self.num_blocks(g) for g in range(self.num_groups)]
        return f"PoolRegistry(num_blocks_per_group={sizes})"
