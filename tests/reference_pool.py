"""A plain-Python reference of one block pool, written for clarity, not speed.

The stateful tests run it beside the Rust pool and require identical results, errors,
events and state after every step. Semantics (issue 3):

- ids ``0..num_blocks``; 0 is the null block, never handed out, freed or cached;
- a block is free (ref 0, in the LRU free queue) or in use (ref > 0), never both;
- ``allocate`` pops the queue head; ``free`` takes the blocks that reach ref 0, in
  that order, and puts those carrying a hash at the tail (reusable: evicted least
  recently freed first) and those without one at the head, the first of them becoming
  the head (never hittable: reused before any cached block, as vLLM 0.33 does);
  ``touch`` takes a reference, pulling a free block out of the queue;
- a free block keeps its hash (and stays findable) until allocation hands it out,
  which removes the hash (``Removed`` event);
- one hash may be carried by several blocks; ``lookup`` returns the oldest;
- every operation processes its ids in order and validates all of them before
  changing anything; the first offending position decides the error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from hybridkv import errors

STORED, REMOVED, ALL_CLEARED = 0, 1, 2

Event = tuple[int, int, int]  # (kind, block id or -1, hash or 0)


class RefPool:
    """The reference pool. Methods mirror ``hybridkv.BlockPool`` on Python ints."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise errors.InvalidArgumentError(f"num_blocks must be at least 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.ref = [0] * num_blocks
        self.hash: list[int | None] = [None] * num_blocks
        # An insertion-ordered dict is an ordered set: head = first key.
        self.queue: dict[int, None] = dict.fromkeys(range(1, num_blocks))
        self.chains: dict[int, list[int]] = {}
        self.events: list[Event] = []

    # --- counts ----------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self.queue)

    @property
    def num_cached(self) -> int:
        return sum(1 for b in self.queue if self.hash[b] is not None)

    @property
    def num_in_use(self) -> int:
        return sum(1 for r in self.ref[1:] if r > 0)

    # --- operations ------------------------------------------------------------
    def _check_real(self, b: int) -> None:
        if not 0 <= b < self.num_blocks:
            raise errors.InvalidBlockIdError(f"block id {b} out of range")
        if b == 0:
            raise errors.InvalidBlockIdError("null block")

    def allocate(self, n: int) -> list[int]:
        if n < 0:
            raise errors.InvalidArgumentError(f"n must be non-negative, got {n}")
        if n > len(self.queue):
            raise errors.OutOfBlocksError(f"{n} > {len(self.queue)}")
        out = []
        for _ in range(n):
            b = next(iter(self.queue))
            del self.queue[b]
            self.ref[b] = 1
            self._drop_hash(b)
            out.append(b)
        return out

    def free(self, ids: Sequence[int]) -> None:
        taken: dict[int, int] = {}
        for b in ids:
            self._check_real(b)
            if self.ref[b] - taken.get(b, 0) <= 0:
                raise errors.DoubleFreeError(f"block {b}")
            taken[b] = taken.get(b, 0) + 1
        front: list[int] = []
        for b in ids:
            self.ref[b] -= 1
            if self.ref[b] == 0:
                if self.hash[b] is None:
                    front.append(b)
                else:
                    self.queue[b] = None
        if front:
            self.queue = dict.fromkeys([*front, *self.queue])

    def touch(self, ids: Sequence[int]) -> None:
        for b in ids:
            self._check_real(b)
        for b in ids:
            if self.ref[b] == 0:
                del self.queue[b]
            self.ref[b] += 1

    def cache_blocks(self, ids: Sequence[int], hashes: Sequence[int]) -> None:
        if len(ids) != len(hashes):
            raise errors.InvalidArgumentError("lengths differ")
        tentative: dict[int, int] = {}
        for b, h in zip(ids, hashes, strict=True):
            self._check_real(b)
            if self.ref[b] == 0:
                raise errors.BlockStateError(f"block {b} not in use")
            current = self.hash[b] if self.hash[b] is not None else tentative.get(b)
            if current is not None and current != h:
                raise errors.BlockStateError(f"block {b} carries another hash")
            tentative[b] = h
        for b, h in zip(ids, hashes, strict=True):
            if self.hash[b] is not None:
                continue
            self.hash[b] = h
            self.chains.setdefault(h, []).append(b)
            self.events.append((STORED, b, h))

    def lookup(self, hashes: Sequence[int]) -> list[int]:
        return [self.chains[h][0] if h in self.chains else -1 for h in hashes]

    def evict(self, ids: Sequence[int]) -> None:
        for b in ids:
            self._check_real(b)
        for b in ids:
            self._drop_hash(b)

    def reset_prefix_cache(self) -> None:
        if self.num_in_use > 0:
            raise errors.PoolInUseError(f"{self.num_in_use} in use")
        self.hash = [None] * self.num_blocks
        self.chains = {}
        self.events.append((ALL_CLEARED, -1, 0))

    def take_events(self) -> list[Event]:
        out, self.events = self.events, []
        return out

    def _drop_hash(self, b: int) -> None:
        h = self.hash[b]
        if h is None:
            return
        chain = self.chains[h]
        chain.remove(b)
        if not chain:
            del self.chains[h]
        self.hash[b] = None
        self.events.append((REMOVED, b, h))

    # --- comparison ------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The same shape as :func:`rust_state` of the Rust pool's snapshot."""
        cached = [(b, h) for b, h in enumerate(self.hash) if h is not None]
        return {
            "num_blocks": self.num_blocks,
            "num_free": self.num_free,
            "num_cached": self.num_cached,
            "num_in_use": self.num_in_use,
            "ref_counts": list(self.ref),
            "free_queue": list(self.queue),
            "cached": cached,
            "map": [(h, b) for h in sorted(self.chains) for b in self.chains[h]],
            "events": list(self.events),
        }


def hash_ints(arr: Any) -> list[int]:
    """``(n, 2)`` uint64 rows -> Python ints."""
    return [int(lo) | (int(hi) << 64) for lo, hi in np.asarray(arr).reshape(-1, 2).tolist()]


def rust_state(snap: dict[str, Any]) -> dict[str, Any]:
    """A Rust ``snapshot()`` as plain Python values, comparable to ``RefPool.state()``."""
    return {
        "num_blocks": snap["num_blocks"],
        "num_free": snap["num_free"],
        "num_cached": snap["num_cached"],
        "num_in_use": snap["num_in_use"],
        "ref_counts": snap["ref_counts"].tolist(),
        "free_queue": snap["free_queue"].tolist(),
        "cached": list(
            zip(snap["cached_ids"].tolist(), hash_ints(snap["cached_hashes"]), strict=True)
        ),
        "map": list(zip(hash_ints(snap["map_hashes"]), snap["map_ids"].tolist(), strict=True)),
        "events": list(
            zip(
                snap["event_kinds"].tolist(),
                snap["event_blocks"].tolist(),
                hash_ints(snap["event_hashes"]),
                strict=True,
            )
        ),
    }


def check_state_invariants(s: dict[str, Any]) -> None:
    """Issue 3's invariants over one pool's state (from either implementation)."""
    n = s["num_blocks"]
    refs = s["ref_counts"]
    queue = s["free_queue"]
    assert len(refs) == n
    assert refs[0] == 0, "the null block is never referenced"
    assert 0 not in queue, "the null block is never free"
    assert len(set(queue)) == len(queue), "a block is queued twice"
    in_queue = set(queue)
    for b in range(1, n):
        assert refs[b] >= 0
        # free xor in use; ref 0 <=> in the free queue
        assert (refs[b] == 0) == (b in in_queue), f"block {b}: ref {refs[b]}"
    carried = dict(s["cached"])
    assert 0 not in carried, "the null block never carries a hash"
    for h, b in s["map"]:
        assert carried.get(b) == h, f"map entry {h:#x} -> {b} but block carries {carried.get(b)}"
    assert len(s["map"]) == len(carried), "a hashed block is missing from the map"
    assert s["num_free"] == len(queue)
    assert s["num_in_use"] == sum(1 for r in refs[1:] if r > 0)
    assert s["num_free"] + s["num_in_use"] == n - 1
    assert s["num_cached"] == sum(1 for b in queue if b in carried)


def same_snapshot(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two pool snapshots are identical (arrays compared by dtype, shape, values)."""
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, np.ndarray):
            if x.dtype != y.dtype or x.shape != y.shape or not np.array_equal(x, y):
                return False
        elif x != y:
            return False
    return True
