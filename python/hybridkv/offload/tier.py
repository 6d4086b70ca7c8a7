"""What every offload tier shares: the byte-budget LRU index and the tier interface.

Each tier has one budget for all groups together, in payload bytes, and one LRU over
all of its blocks: a group with small pages is not squeezed by a group with big ones
into an equal share, and nothing is divided by the number of groups. The index is a
Python ``OrderedDict``: a tier operation costs a few hundred nanoseconds of index work
against microseconds to milliseconds of copying, file or network I/O per block, so
moving it to Rust would not show (see ``benches/bench_offload.py``).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields

from hybridkv.errors import InvalidArgumentError
from hybridkv.offload.keys import BlockKey, check_key

#: What a store call accepts as one block's bytes.
Payload = bytes | bytearray | memoryview


def as_bytes_view(data: Payload) -> memoryview:
    """A flat byte view of ``data`` (C-contiguous buffers only)."""
    try:
        view = memoryview(data)
    except TypeError as exc:
        raise InvalidArgumentError(
            f"a block payload is a bytes-like buffer, got {type(data).__name__}"
        ) from exc
    if not view.c_contiguous:
        raise InvalidArgumentError("block payloads must be C-contiguous buffers")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


class ByteLRU:
    """Keys with byte sizes under a budget, least recently used first. Not thread-safe."""

    def __init__(self, budget_bytes: int | None) -> None:
        if budget_bytes is not None and budget_bytes < 1:
            raise InvalidArgumentError(f"a tier budget must be positive, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self.used_bytes = 0
        self._sizes: OrderedDict[BlockKey, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sizes)

    def __contains__(self, key: object) -> bool:
        return key in self._sizes

    def fits(self, nbytes: int) -> bool:
        """Whether one block of ``nbytes`` can ever be held."""
        return self.budget_bytes is None or nbytes <= self.budget_bytes

    def touch(self, key: BlockKey) -> bool:
        """Mark ``key`` most recently used; False if absent."""
        if key not in self._sizes:
            return False
        self._sizes.move_to_end(key)
        return True

    def size_of(self, key: BlockKey) -> int | None:
        return self._sizes.get(key)

    def victims_for(self, nbytes: int) -> list[tuple[BlockKey, int]]:
        """Remove and return the least recently used entries so ``nbytes`` more fit."""
        out: list[tuple[BlockKey, int]] = []
        if self.budget_bytes is None:
            return out
        while self._sizes and self.used_bytes + nbytes > self.budget_bytes:
            key, size = self._sizes.popitem(last=False)
            self.used_bytes -= size
            out.append((key, size))
        return out

    def add(self, key: BlockKey, nbytes: int) -> None:
        """Insert ``key`` as most recently used (call :meth:`victims_for` first)."""
        old = self._sizes.pop(key, None)
        if old is not None:
            self.used_bytes -= old
        self._sizes[key] = nbytes
        self.used_bytes += nbytes

    def add_oldest(self, key: BlockKey, nbytes: int) -> None:
        """Insert ``key`` as least recently used (index rebuild, oldest files first)."""
        self.add(key, nbytes)
        self._sizes.move_to_end(key, last=False)

    def remove(self, key: BlockKey) -> int | None:
        size = self._sizes.pop(key, None)
        if size is not None:
            self.used_bytes -= size
        return size

    def lru_keys(self) -> list[BlockKey]:
        """Keys, least recently used first."""
        return list(self._sizes)


@dataclass
class TierStats:
    """Counters of one tier since it was opened."""

    lookups: int = 0
    hits: int = 0
    stored: int = 0
    stored_bytes: int = 0
    loaded_bytes: int = 0
    evicted: int = 0
    rejected: int = 0
    corrupt_removed: int = 0
    errors: int = 0
    #: Entries at a block's path that are not the tier's (links, FIFOs, devices, a
    #: file where a directory belongs): misses, left alone.
    foreign: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: int(getattr(self, f.name)) for f in fields(self)}


class Tier(ABC):
    """One offload tier. Every method takes a batch and is safe to call from two
    threads (the store worker and the load path); failures inside a tier are misses or
    dropped stores, never exceptions, except for bad arguments."""

    kind: str = "tier"
    #: Whether the tier lives in this process's memory (promotion into it is cheap).
    in_memory: bool = False

    def __init__(self, budget_bytes: int | None) -> None:
        self._lru = ByteLRU(budget_bytes)
        self._lock = threading.RLock()
        self.stats = TierStats()

    @property
    def budget_bytes(self) -> int | None:
        return self._lru.budget_bytes

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return self._lru.used_bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._lru)

    def lru_keys(self) -> list[BlockKey]:
        """Keys this process knows the tier holds, least recently used first."""
        with self._lock:
            return self._lru.lru_keys()

    def _checked_keys(self, keys: Iterable[object]) -> list[BlockKey]:
        """Every key checked (:func:`~hybridkv.offload.keys.check_key`); a tier bound to
        one fingerprint (``self.fingerprint``) also refuses another model's keys."""
        own = getattr(self, "fingerprint", None)
        out = []
        for raw in keys:
            key = check_key(raw)
            if own is not None and key.fingerprint != own:
                raise InvalidArgumentError(
                    f"block key {key.label()} belongs to another model than this "
                    f"{self.kind} tier ({own.hex()})"
                )
            out.append(key)
        return out

    def _checked_items(
        self, items: Sequence[tuple[BlockKey, Payload]]
    ) -> list[tuple[BlockKey, memoryview]]:
        """A put batch with every key and payload checked before anything is stored,
        so a bad item anywhere leaves the tier exactly as it was."""
        out = []
        for item in items:
            if not isinstance(item, tuple) or len(item) != 2:
                raise InvalidArgumentError(f"a put item is (key, payload), got {item!r:.80}")
            out.append((item[0], as_bytes_view(item[1])))
        keys = self._checked_keys(k for k, _ in out)
        return [(k, v) for k, (_, v) in zip(keys, out, strict=True)]

    def _record_hit(self, key: BlockKey, payload: memoryview) -> memoryview:
        """Count a served block and make it most recently used (caller holds the lock)."""
        self._lru.touch(key)
        self.stats.hits += 1
        self.stats.loaded_bytes += payload.nbytes
        return payload

    @abstractmethod
    def contains(self, keys: Sequence[BlockKey]) -> list[bool]:
        """Whether the tier (probably) holds each key; a later ``get`` may still miss."""

    @abstractmethod
    def get(self, keys: Sequence[BlockKey]) -> list[memoryview | None]:
        """Each key's payload, or None; hits become most recently used."""

    @abstractmethod
    def put(
        self, items: Sequence[tuple[BlockKey, Payload]], *, want_evicted: bool = False
    ) -> list[tuple[BlockKey, memoryview]]:
        """Store blocks (a key already held is only touched: same key, same bytes).

        Returns the evicted blocks with their payloads when ``want_evicted`` (write-back
        moves them down a tier); otherwise an empty list.
        """

    @abstractmethod
    def discard(self, keys: Iterable[BlockKey]) -> None:
        """Forget these blocks (missing keys are ignored)."""

    @abstractmethod
    def close(self) -> None:
        """Release resources; the tier must not be used afterwards."""

    def describe(self) -> str:
        budget = "unbounded" if self.budget_bytes is None else f"{self.budget_bytes} B"
        return f"{self.kind}({budget})"
