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

#: One multimodal item: (content hash as a 128-bit int, first token position, length).
MediaItem = tuple[int, int, int]


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
    relative to ``token_ids[0]``) the blocks it overlaps. Bad arguments raise
    :class:`~hybridkv.errors.InvalidArgumentError` (a negative or out-of-int32 token:
    :class:`~hybridkv.errors.InvalidTokenError`).
    """
    # The bindings check every argument (``rust/bindings/src/manager_args.rs``).
    return _core.hash_token_blocks(
        token_ids,
        block_size,
        seed,
        parent,
        lora_id,
        cache_salt,
        mm_features=mm_features,
    )


__all__ = ["MediaItem", "hash_token_blocks"]
