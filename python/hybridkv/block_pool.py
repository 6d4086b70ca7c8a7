"""The Python face of one KV-cache group's block pool (the state lives in Rust)."""

from __future__ import annotations

import numpy as np

from hybridkv import _core
from hybridkv.events import EventBatch


class BlockPool(_core.BlockPool):
    """The pool of one KV-cache group: ``num_blocks`` blocks with local ids, id 0 null.

    ``allocate(n)`` pops the least recently freed blocks; ``free(ids)`` drops one
    reference each and queues blocks that reach zero at the tail, in the order given;
    ``touch(ids)`` takes a reference (pulling a free block out of the queue: a prefix
    hit). A free block keeps its hash, and stays findable by ``lookup``, until it is
    handed out again. Ids are int32 arrays; hashes are ``(n, 2)`` uint64 arrays (see
    :mod:`hybridkv.hashes`). Every error leaves the pool unchanged.
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
    """One :class:`BlockPool`-like pool per group; every call names its group."""

    def take_events(self) -> EventBatch:
        """Drain every pool's events, tagged with their group."""
        return EventBatch(*self.take_event_arrays())
