"""Deterministic chained 128-bit block hashes, the keys of prefix caching and offload.

``hash_token_blocks`` gives the same hashes :class:`hybridkv.KVCacheManager` uses for a
group with that block size. The algorithm (MurmurHash3 x64-128 over a documented byte
layout, chained through the parent hash, rooted in ``seed``) lives in
``rust/core/src/prefix_hash.rs``; it never depends on Python's ``hash`` or
``PYTHONHASHSEED``, so keys survive restarts and match across machines.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from hybridkv import _core
from hybridkv.errors import InvalidArgumentError

#: One multimodal item: (content hash as a 128-bit int, first token position, length).
MediaItem = tuple[int, int, int]

_MASK64 = (1 << 64) - 1


def _int_in(x: object, lo: int, hi: int, what: str) -> int:
    """``x`` as an int in ``[lo, hi)``: a Python or numpy integer, never a bool or float."""
    ok = isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))
    if ok and lo <= int(x) < hi:  # type: ignore[call-overload]
        return int(x)  # type: ignore[call-overload,no-any-return]
    raise InvalidArgumentError(f"{what} must be an int in [{lo}, {hi}), got {x!r}")


def media_arrays(
    items: Sequence[MediaItem],
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """``(hashes (m, 2) uint64, starts int64, lengths int64)`` from media items."""
    if isinstance(items, (str, bytes)) or not isinstance(items, (Sequence, np.ndarray)):
        raise InvalidArgumentError(
            f"multimodal items must be a sequence of (hash, start, length), got {items!r}"
        )
    hs = np.zeros((len(items), 2), dtype=np.uint64)
    starts = np.zeros(len(items), dtype=np.int64)
    lens = np.zeros(len(items), dtype=np.int64)
    for i, item in enumerate(items):
        try:
            h, s, n = (int(x) for x in item)
        except (TypeError, ValueError, OverflowError):
            raise InvalidArgumentError(
                f"multimodal item {item!r} must be (hash, start, length)"
            ) from None
        if not 0 <= h < 1 << 128:
            raise InvalidArgumentError(f"multimodal hash {h} is not a 128-bit unsigned value")
        if s < 0 or n < 0:
            raise InvalidArgumentError(f"multimodal item {item!r} has a negative start or length")
        if s >= 1 << 63 or n >= 1 << 32:
            raise InvalidArgumentError(f"multimodal item {item!r}: start or length is too large")
        hs[i] = (h & _MASK64, h >> 64)
        starts[i] = s
        lens[i] = n
    return hs, starts, lens


def salt_bytes(salt: str | bytes | None) -> bytes | None:
    """A cache salt as bytes (str is UTF-8 encoded)."""
    if salt is None or isinstance(salt, bytes):
        return salt
    if isinstance(salt, str):
        try:
            return salt.encode()
        except UnicodeEncodeError:
            raise InvalidArgumentError(f"cache salt {salt!r} is not valid UTF-8 text") from None
    raise InvalidArgumentError(f"cache salt must be str, bytes or None, got {type(salt).__name__}")


def hash_token_blocks(
    token_ids: npt.ArrayLike,
    block_size: int,
    *,
    seed: int = 0,
    parent: int | None = None,
    lora_id: int | None = None,
    cache_salt: str | bytes | None = None,
    mm_features: Sequence[MediaItem] | None = None,
) -> npt.NDArray[np.uint64]:
    """Chained hashes of every full block of ``token_ids`` as ``(n, 2)`` uint64 rows
    ``[low 64 bits, high 64 bits]``.

    ``parent`` continues a chain (the hash of the block before ``token_ids[0]``; the
    first block of a sequence starts from the root of ``seed``). ``lora_id`` enters every
    block, ``cache_salt`` only the sequence's first block (so pass it only with
    ``parent=None``), and each multimodal item ``(hash, start, length)`` (positions
    relative to ``token_ids[0]``) the blocks it overlaps.
    """
    block_size = _int_in(block_size, 1, 1 << 63, "block_size")
    seed = _int_in(seed, 0, 1 << 64, "seed")
    parent = None if parent is None else _int_in(parent, 0, 1 << 128, "parent")
    lora_id = None if lora_id is None else _int_in(lora_id, 0, 1 << 63, "lora_id")
    mm = (None, None, None) if mm_features is None else media_arrays(mm_features)
    if mm[0] is not None and not len(mm[0]):
        mm = (None, None, None)
    return _core.hash_token_blocks(
        token_ids,
        block_size,
        seed,
        parent,
        lora_id,
        salt_bytes(cache_salt),
        mm[0],
        mm[1],
        mm[2],
    )


__all__ = ["MediaItem", "hash_token_blocks", "media_arrays", "salt_bytes"]
