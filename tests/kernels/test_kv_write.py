"""The KV write kernel against its reference, over ragged slot mappings with padding."""

from __future__ import annotations

import pytest
import torch
from hybridkv import ops
from hybridkv.errors import InvalidArgumentError
from hybridkv.ops import reference
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_helpers import DTYPES, Draw, dtypes


@settings(max_examples=25, deadline=None)
@given(
    num_tokens=st.integers(0, 12),
    block_size=st.sampled_from([1, 3, 4, 16]),
    heads=st.integers(1, 3),
    head_size=st.sampled_from([8, 12, 64]),
    dtype=dtypes,
    data=st.data(),
)
def test_write_kv_matches_reference(
    num_tokens: int,
    block_size: int,
    heads: int,
    head_size: int,
    dtype: torch.dtype,
    data: st.DataObject,
) -> None:
    num_blocks = 13  # >= num_tokens slots even at block_size 1
    slots = data.draw(
        st.lists(
            st.integers(-1, num_blocks * block_size - 1),
            min_size=num_tokens,
            max_size=num_tokens,
            unique_by=lambda s: s if s >= 0 else object(),
        )
    )
    r = Draw(len(slots))
    key = r.normal(num_tokens, heads, head_size, dtype=dtype)
    value = r.normal(num_tokens, heads, head_size, dtype=dtype)
    kc = r.normal(num_blocks, block_size, heads, head_size, dtype=dtype)
    vc = r.normal(num_blocks, block_size, heads, head_size, dtype=dtype)
    kc_ref, vc_ref = kc.clone(), vc.clone()
    sm = torch.tensor(slots, dtype=torch.int64)
    ops.write_kv(key, value, kc, vc, sm)
    reference.write_kv(key, value, kc_ref, vc_ref, sm)
    assert torch.equal(kc, kc_ref)
    assert torch.equal(vc, vc_ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_write_kv_cache_dtype_differs(dtype: torch.dtype) -> None:
    # fp32 activations written into a lower-precision cache round to nearest.
    key = torch.randn(5, 2, 64)
    kc = torch.zeros(3, 4, 2, 64, dtype=dtype)
    vc = torch.zeros_like(kc)
    ops.write_kv(key, key, kc, vc, torch.tensor([0, 5, 6, -1, 11]))
    flat = kc.view(12, 2, 64)
    assert torch.equal(flat[[0, 5, 6, 11]], key[[0, 1, 2, 4]].to(dtype))
    assert torch.equal(flat[[1, 2, 3, 4, 7, 8, 9, 10]], torch.zeros(8, 2, 64, dtype=dtype))


def test_write_kv_rejects_slot_outside_address_space() -> None:
    kc = torch.zeros(3, 4, 1, 8)
    vc = torch.zeros_like(kc)
    key = torch.ones(2, 1, 8)
    with pytest.raises(InvalidArgumentError, match="outside"):
        ops.write_kv(key, key, kc, vc, torch.tensor([0, 12]))
    assert not kc.any()


def test_write_kv_rejects_shape_mismatch() -> None:
    kc = torch.zeros(3, 4, 2, 8)
    with pytest.raises(InvalidArgumentError, match="key_cache"):
        ops.write_kv(torch.ones(2, 1, 8), torch.ones(2, 1, 8), kc, kc.clone(), torch.tensor([0, 1]))
