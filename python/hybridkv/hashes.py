"""Conversions between 128-bit block hashes as Python ints and the ``(n, 2)`` uint64
layout the core uses: row ``[h & (2**64 - 1), h >> 64]``."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

_MASK = (1 << 64) - 1


def to_array(hashes: Iterable[int]) -> npt.NDArray[np.uint64]:
    """Pack Python ints (each ``0 <= h < 2**128``) into an ``(n, 2)`` uint64 array."""
    rows = []
    for h in hashes:
        if not 0 <= h < 1 << 128:
            from hybridkv.errors import InvalidArgumentError

            raise InvalidArgumentError(f"block hash {h} is not a 128-bit unsigned value")
        rows.append((h & _MASK, h >> 64))
    return np.array(rows, dtype=np.uint64).reshape(len(rows), 2)


def to_ints(arr: npt.NDArray[np.uint64]) -> list[int]:
    """Unpack an ``(n, 2)`` uint64 array into Python ints."""
    return [int(lo) | (int(hi) << 64) for lo, hi in np.asarray(arr).reshape(-1, 2).tolist()]
