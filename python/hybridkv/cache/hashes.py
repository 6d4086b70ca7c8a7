"""Conversions between 128-bit block hashes as Python ints and the ``(n, 2)`` uint64
layout the core uses: row ``[h & (2**64 - 1), h >> 64]``."""

from __future__ import annotations

import operator
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from hybridkv.errors import InvalidArgumentError

_MASK = (1 << 64) - 1


def to_array(hashes: Iterable[int]) -> npt.NDArray[np.uint64]:
    """Pack Python ints (each ``0 <= h < 2**128``) into an ``(n, 2)`` uint64 array."""
    rows = []
    for h in hashes:
        try:
            v = operator.index(h)
        except TypeError:
            raise InvalidArgumentError(f"block hash {h!r} is not an integer") from None
        if isinstance(h, bool) or not 0 <= v < 1 << 128:
            raise InvalidArgumentError(f"block hash {h!r} is not a 128-bit unsigned value")
        rows.append((v & _MASK, v >> 64))
    return np.array(rows, dtype=np.uint64).reshape(len(rows), 2)


def to_ints(arr: npt.ArrayLike) -> list[int]:
    """Unpack an ``(n, 2)`` uint64 array into Python ints."""
    a = np.asarray(arr)
    if a.ndim != 2 or a.shape[1] != 2:
        raise InvalidArgumentError(f"hashes must have shape (n, 2), got {a.shape}")
    return [int(lo) | (int(hi) << 64) for lo, hi in a.astype(np.uint64).tolist()]
