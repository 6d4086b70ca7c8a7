"""Prefix-cache events drained from the Rust pools as one batch of numpy arrays."""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


class EventKind(enum.IntEnum):
    """Codes of ``EventBatch.kind`` (they match the Rust bindings)."""

    STORED = 0
    REMOVED = 1
    ALL_CLEARED = 2


@dataclass(frozen=True)
class PoolEvent:
    """One event: ``block_hash`` is the 128-bit hash as a Python int (0 for a clear)."""

    kind: EventKind
    group: int
    block_id: int
    block_hash: int


@dataclass(frozen=True)
class EventBatch:
    """Events in the order they happened, as parallel arrays.

    ``block_hash`` rows are ``[low 64 bits, high 64 bits]`` of each 128-bit hash.
    """

    group: npt.NDArray[np.int32]
    kind: npt.NDArray[np.uint8]
    block_id: npt.NDArray[np.int32]
    block_hash: npt.NDArray[np.uint64]

    def __len__(self) -> int:
        return int(self.kind.shape[0])

    def __iter__(self) -> Iterator[PoolEvent]:
        for g, k, b, (lo, hi) in zip(
            self.group.tolist(),
            self.kind.tolist(),
            self.block_id.tolist(),
            self.block_hash.tolist(),
            strict=True,
        ):
            yield PoolEvent(EventKind(k), g, b, int(lo) | (int(hi) << 64))

    @classmethod
    def from_arrays(
        cls,
        group: npt.NDArray[np.int32],
        kind: npt.NDArray[np.uint8],
        block_id: npt.NDArray[np.int32],
        block_hash: npt.NDArray[np.uint64],
    ) -> EventBatch:
        return cls(group, kind, block_id, block_hash)
