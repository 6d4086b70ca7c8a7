"""Launcher for the KV write kernel."""

from __future__ import annotations

import torch

from hybridkv.kernels.kv_write import write_kv_kernel
from hybridkv.ops._launch import (
    INDEX_DTYPES,
    check_device,
    check_shape,
    check_tensor,
    interpreted,
    kv_cache_strides,
    next_pow2,
    require,
)


def write_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    check_indices: bool = True,
) -> None:
    """Store ``key``/``value`` ``[num_tokens, num_kv_heads, head_size]`` into the caches.

    The caches are ``[num_blocks, block_size, num_kv_heads, head_size]``; token ``i`` goes
    to slot ``slot_mapping[i] = block * block_size + offset``; a negative slot is a
    padding token and is skipped. ``check_indices`` verifies every slot lies in the
    cache's address space (``num_blocks * block_size``); it reads the slots back to the
    host, so hot paths on a GPU may turn it off.
    """
    check_tensor("key", key, ndim=3)
    check_tensor("value", value, ndim=3)
    check_tensor("key_cache", key_cache, ndim=4)
    check_tensor("value_cache", value_cache, ndim=4)
    check_tensor("slot_mapping", slot_mapping, ndim=1, dtypes=INDEX_DTYPES)
    num_tokens, heads, head_size = key.shape
    check_shape("value", value, key.shape)
    check_shape("slot_mapping", slot_mapping, (num_tokens,))
    num_blocks, block_size = key_cache.shape[0], key_cache.shape[1]
    check_shape("key_cache", key_cache, (num_blocks, block_size, heads, head_size))
    check_shape("value_cache", value_cache, key_cache.shape)
    check_device(write_kv_kernel, key, value, key_cache, value_cache, slot_mapping)
    if check_indices and num_tokens:
        hi = int(slot_mapping.max())
        require(
            hi < num_blocks * block_size,
            f"slot {hi} is outside the cache's {num_blocks * block_size} slots",
        )
    if num_tokens == 0:
        return
    write_kv_kernel[(num_tokens,)](
        key,
        value,
        key_cache,
        value_cache,
        slot_mapping,
        block_size,
        key.stride(0),
        key.stride(1),
        value.stride(0),
        value.stride(1),
        *kv_cache_strides(key_cache, value_cache),
        NUM_HEADS=heads,
        HEAD_SIZE=head_size,
        HEADS_P2=next_pow2(heads),
        HEAD_P2=next_pow2(head_size),
        INTERPRET=interpreted(write_kv_kernel),
    )
