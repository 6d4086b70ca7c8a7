"""Gated delta net recurrence (decode and prefill over state slots) vs the matrix-form reference."""

from __future__ import annotations

import pytest
import torch
from hybridkv import ops
from hybridkv.errors import InvalidArgumentError
from hybridkv.ops import reference
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_helpers import (
    DTYPES,
    Draw,
    assert_close,
    check_state_op,
    dtypes,
    offsets,
    own_source_batches,
    prefill_batches,
    token_rows,
)

NUM_SLOTS = 16  # room for per-request checkpoint slots


def _inputs(
    t: int, hk: int, hv: int, dk: int, dv: int, dtype: torch.dtype, seed: int
) -> dict[str, torch.Tensor]:
    r = Draw(seed)
    return {
        "state": r.normal(NUM_SLOTS, hv, dv, dk),
        "q": r.normal(t, hk, dk, dtype=dtype),
        "k": r.normal(t, hk, dk, dtype=dtype),
        "v": r.normal(t, hv, dv, dtype=dtype),
        "a": r.normal(t, hv, dtype=dtype),
        "b": r.normal(t, hv, dtype=dtype),
        "A_log": r.normal(hv) * 0.5,
        "dt_bias": r.normal(hv),
    }


_ARGS = ("q", "k", "v", "a", "b", "A_log", "dt_bias")


@settings(max_examples=25, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 3),
    hk=st.integers(1, 2),
    v_per_k=st.integers(1, 2),
    dk=st.integers(1, 20),
    dv=st.integers(1, 40),
    dtype=dtypes,
    l2norm=st.booleans(),
)
def test_gated_delta_prefill_matches_reference(
    data: st.DataObject,
    n: int,
    hk: int,
    v_per_k: int,
    dk: int,
    dv: int,
    dtype: torch.dtype,
    l2norm: bool,
) -> None:
    batch = data.draw(prefill_batches(n, 10, NUM_SLOTS))
    t = batch.num_tokens
    a = _inputs(t, hk, hk * v_per_k, dk, dv, dtype, t + dk)
    if not l2norm:  # unnormalised keys must stay small for the recurrence to be stable
        a["q"] = (a["q"].float() / (dk**0.5 + 1)).to(dtype)
        a["k"] = (a["k"].float() / (dk**0.5 + 1)).to(dtype)
    args = [*(a[k] for k in _ARGS), batch.qsl, batch.src, batch.dst]
    ck = batch.checkpoints
    check_state_op(
        lambda s: ops.gated_delta_rule(s, *args, use_l2norm=l2norm, **ck),
        lambda s: reference.gated_delta_rule(s, *args, use_l2norm=l2norm, **ck),
        a["state"],
        "gdn",
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_gated_delta_prefill_then_decode(dtype: torch.dtype) -> None:
    # Qwen3-Next-like head shape (128 x 128, two value heads per key head).
    a = _inputs(6, 1, 2, 128, 128, dtype, 4)
    s_k, s_r = a["state"].clone(), a["state"].clone()
    ref = reference.gated_delta_rule(
        s_r, *[a[k] for k in _ARGS], offsets([6]), torch.tensor([-1]), torch.tensor([2])
    )
    pre = token_rows(a, _ARGS, 6, 0, 4)
    outs = [ops.gated_delta_rule(s_k, *pre, offsets([4]), torch.tensor([-1]), torch.tensor([2]))]
    for i in (4, 5):
        outs.append(
            ops.gated_delta_decode(s_k, *token_rows(a, _ARGS, 6, i, i + 1), torch.tensor([2]))
        )
    assert_close(torch.cat(outs), ref, "gdn prefill+decode o")
    assert_close(s_k[2], s_r[2], "gdn prefill+decode state")


def test_gated_delta_rejects_head_mismatch_and_keeps_state() -> None:
    a = _inputs(2, 2, 3, 4, 4, torch.float32, 5)
    before = a["state"].clone()
    with pytest.raises(InvalidArgumentError, match="multiple of num_k_heads"):
        ops.gated_delta_rule(a["state"], *[a[k] for k in _ARGS], offsets([2]), torch.tensor([0]))
    assert torch.equal(a["state"], before)


def test_gated_delta_checkpoint_into_the_requests_own_source_slot() -> None:
    # Mode "all": a step starting mid-block writes the block's checkpoint where it began.
    a = _inputs(5, 1, 2, 4, 4, torch.float32, 6)
    args = [*(a[k] for k in _ARGS), offsets([2, 3]), torch.tensor([3, 7]), torch.tensor([4, 8])]
    ck = {
        "checkpoint_slots": torch.tensor([[3], [7]]),
        "checkpoint_first": torch.tensor([1, 2]),
        "checkpoint_every": 4,
    }
    check_state_op(
        lambda s: ops.gated_delta_rule(s, *args, **ck),
        lambda s: reference.gated_delta_rule(s, *args, **ck),
        a["state"],
        "gdn, checkpoint into own source",
    )


@settings(max_examples=10, deadline=None)
@given(data=st.data(), n=st.integers(1, 3), dtype=dtypes)
def test_gated_delta_checkpoint_into_own_source_matches_reference(
    data: st.DataObject, n: int, dtype: torch.dtype
) -> None:
    batch = data.draw(own_source_batches(n, 6, NUM_SLOTS))
    a = _inputs(batch.num_tokens, 1, 2, 4, 4, dtype, batch.num_tokens)
    args = [*(a[k] for k in _ARGS), batch.qsl, batch.src, batch.dst]
    ck = batch.checkpoints
    check_state_op(
        lambda s: ops.gated_delta_rule(s, *args, **ck),
        lambda s: reference.gated_delta_rule(s, *args, **ck),
        a["state"],
        "gdn, checkpoint into own source",
    )


def test_gated_delta_refuses_a_checkpoint_into_another_requests_source() -> None:
    a = _inputs(4, 1, 2, 4, 4, torch.float32, 7)
    before = a["state"].clone()
    ck = {
        "checkpoint_slots": torch.tensor([[2], [-1]]),
        "checkpoint_first": torch.tensor([1, 1]),
        "checkpoint_every": 1,
    }
    args = [*(a[k] for k in _ARGS), offsets([2, 2]), torch.tensor([1, 2]), torch.tensor([3, 4])]
    with pytest.raises(InvalidArgumentError, match="slot 2 is written by request 0"):
        ops.gated_delta_rule(a["state"], *args, **ck)
    assert torch.equal(a["state"], before)
