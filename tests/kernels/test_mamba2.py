"""Mamba-2 kernels (conv1d decode/prefill, selective_state_update, SSD scan) vs references."""

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
    slot_pairs,
    token_rows,
)

NUM_SLOTS = 16  # room for per-request checkpoint slots


def _conv_inputs(
    lengths: list[int], conv_dim: int, width: int, dtype: torch.dtype, seed: int
) -> tuple[torch.Tensor, ...]:
    r = Draw(seed)
    x = r.normal(sum(lengths), conv_dim, dtype=dtype)
    state = r.normal(NUM_SLOTS, width - 1, conv_dim, dtype=dtype)
    weight = r.normal(conv_dim, width, dtype=dtype)
    bias = r.normal(conv_dim, dtype=dtype)
    return x, state, weight, bias


@settings(max_examples=25, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 3),
    conv_dim=st.integers(1, 40),
    width=st.integers(2, 6),
    dtype=dtypes,
    has_bias=st.booleans(),
    activation=st.sampled_from([None, "silu"]),
)
def test_conv1d_prefill_matches_reference(
    data: st.DataObject,
    n: int,
    conv_dim: int,
    width: int,
    dtype: torch.dtype,
    has_bias: bool,
    activation: str | None,
) -> None:
    batch = data.draw(prefill_batches(n, 12, NUM_SLOTS))
    x, state, weight, bias = _conv_inputs(batch.lengths, conv_dim, width, dtype, batch.num_tokens)
    b = bias if has_bias else None
    slots = (batch.qsl, batch.src, batch.dst)
    ck = batch.checkpoints
    check_state_op(
        lambda s: ops.causal_conv1d_prefill(x, s, weight, b, *slots, activation=activation, **ck),
        lambda s: reference.causal_conv1d(x, s, weight, b, *slots, activation=activation, **ck),
        state,
        "conv",
        exact_state=True,
    )


@settings(max_examples=25, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 3),
    conv_dim=st.integers(1, 24),
    width=st.integers(3, 6),
    dtype=dtypes,
)
def test_conv1d_prefill_checkpoint_into_own_source_matches_reference(
    data: st.DataObject, n: int, conv_dim: int, width: int, dtype: torch.dtype
) -> None:
    # Mode "all" from mid-block across the block's end: the checkpoint goes to the slot
    # the step started from, often with fewer new tokens than width - 1.
    batch = data.draw(own_source_batches(n, width, NUM_SLOTS))
    x, state, weight, bias = _conv_inputs(batch.lengths, conv_dim, width, dtype, batch.num_tokens)
    slots = (batch.qsl, batch.src, batch.dst)
    ck = batch.checkpoints
    check_state_op(
        lambda s: ops.causal_conv1d_prefill(x, s, weight, bias, *slots, **ck),
        lambda s: reference.causal_conv1d(x, s, weight, bias, *slots, **ck),
        state,
        "conv, checkpoint into own source",
        exact_state=True,
    )


@settings(max_examples=25, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 4),
    conv_dim=st.integers(1, 40),
    width=st.integers(2, 4),
    dtype=dtypes,
)
def test_conv1d_update_matches_reference(
    data: st.DataObject, n: int, conv_dim: int, width: int, dtype: torch.dtype
) -> None:
    src, dst = data.draw(slot_pairs(n, NUM_SLOTS))
    x, state, weight, bias = _conv_inputs([1] * n, conv_dim, width, dtype, n * conv_dim)
    src_t, dst_t = torch.tensor(src), torch.tensor(dst)
    check_state_op(
        lambda s: ops.causal_conv1d_update(x, s, weight, bias, src_t, dst_t),
        lambda s: reference.causal_conv1d_update(x, s, weight, bias, src_t, dst_t),
        state,
        "conv update",
        exact_state=True,
    )


def test_conv1d_prefill_then_update_equals_one_long_prefill() -> None:
    # Splitting a sequence across steps through the state slot changes nothing.
    x, state, weight, bias = _conv_inputs([9], 24, 4, torch.float32, 0)
    whole = ops.causal_conv1d_prefill(
        x, state.clone(), weight, bias, offsets([9]), torch.tensor([-1]), torch.tensor([0])
    )
    st_ = state.clone()
    first = ops.causal_conv1d_prefill(
        x[:2], st_, weight, bias, offsets([2]), torch.tensor([-1]), torch.tensor([3])
    )
    rest = [first]
    for i in range(2, 9):
        rest.append(ops.causal_conv1d_update(x[i : i + 1], st_, weight, bias, torch.tensor([3])))
    assert_close(torch.cat(rest), whole, "split vs whole")


def _ssm_inputs(
    t: int, heads: int, head_dim: int, groups: int, d_state: int, dtype: torch.dtype, seed: int
) -> dict[str, torch.Tensor]:
    r = Draw(seed)
    return {
        "state": r.normal(NUM_SLOTS, heads, head_dim, d_state),
        "x": r.normal(t, heads, head_dim, dtype=dtype),
        "dt": r.normal(t, heads, dtype=dtype),
        "A": -r.uniform(heads) * 2 - 0.1,
        "B": r.normal(t, groups, d_state, dtype=dtype),
        "C": r.normal(t, groups, d_state, dtype=dtype),
        "D": r.normal(heads),
        "dt_bias": r.normal(heads),
    }


_ARGS = ("x", "dt", "A", "B", "C")


@settings(max_examples=25, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 3),
    groups=st.integers(1, 2),
    heads_per_group=st.integers(1, 2),
    head_dim=st.integers(1, 20),
    d_state=st.integers(1, 20),
    chunk=st.sampled_from([1, 2, 4, 8, 16]),
    dtype=dtypes,
    has_d=st.booleans(),
    has_bias=st.booleans(),
    softplus=st.booleans(),
)
def test_ssd_prefill_matches_recurrence(
    data: st.DataObject,
    n: int,
    groups: int,
    heads_per_group: int,
    head_dim: int,
    d_state: int,
    chunk: int,
    dtype: torch.dtype,
    has_d: bool,
    has_bias: bool,
    softplus: bool,
) -> None:
    batch = data.draw(prefill_batches(n, 21, NUM_SLOTS))
    heads = groups * heads_per_group
    t = batch.num_tokens
    a = _ssm_inputs(t, heads, head_dim, groups, d_state, dtype, t)
    if not softplus:
        a["dt"] = a["dt"].abs()  # a raw dt must be positive
    d = a["D"] if has_d else None
    bias = a["dt_bias"].abs() if has_bias else None
    args = [*(a[k] for k in _ARGS), d, bias, batch.qsl, batch.src, batch.dst]
    ck = batch.checkpoints
    check_state_op(
        lambda s: ops.ssd_prefill(s, *args, dt_softplus=softplus, chunk=chunk, **ck),
        lambda s: reference.mamba2_ssm(s, *args, dt_softplus=softplus, **ck),
        a["state"],
        "ssd",
    )


@settings(max_examples=25, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 4),
    groups=st.integers(1, 2),
    heads_per_group=st.integers(1, 3),
    head_dim=st.integers(1, 40),
    d_state=st.integers(1, 20),
    dtype=dtypes,
)
def test_selective_state_update_matches_reference(
    data: st.DataObject,
    n: int,
    groups: int,
    heads_per_group: int,
    head_dim: int,
    d_state: int,
    dtype: torch.dtype,
) -> None:
    src, dst = data.draw(slot_pairs(n, NUM_SLOTS))
    heads = groups * heads_per_group
    a = _ssm_inputs(n, heads, head_dim, groups, d_state, dtype, n * head_dim)
    src_t, dst_t = torch.tensor(src), torch.tensor(dst)
    args = [a[k] for k in (*_ARGS, "D", "dt_bias")]
    check_state_op(
        lambda s: ops.selective_state_update(s, *args, src_t, dst_t),
        lambda s: reference.selective_state_update(s, *args, src_t, dst_t),
        a["state"],
        "ssu",
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_ssd_prefill_then_decode_equals_recurrence(dtype: torch.dtype) -> None:
    # Production-like head (64 x 128 state) through prefill then two decode steps.
    a = _ssm_inputs(12, 2, 64, 1, 128, dtype, 1)
    s_k, s_r = a["state"].clone(), a["state"].clone()
    ref = reference.mamba2_ssm(
        s_r, *[a[k] for k in _ARGS], a["D"], a["dt_bias"], offsets([12]), torch.tensor([5])
    )
    pre = token_rows(a, _ARGS, 12, 0, 10)
    outs = [ops.ssd_prefill(s_k, *pre, a["D"], a["dt_bias"], offsets([10]), torch.tensor([5]))]
    for i in (10, 11):
        step = token_rows(a, _ARGS, 12, i, i + 1)
        outs.append(ops.selective_state_update(s_k, *step, a["D"], a["dt_bias"], torch.tensor([5])))
    assert_close(torch.cat(outs), ref, "prefill+decode y")
    assert_close(s_k, s_r, "prefill+decode state")


def test_ssm_rejects_bad_slot_and_keeps_state() -> None:
    a = _ssm_inputs(2, 2, 4, 1, 4, torch.float32, 2)
    before = a["state"].clone()
    with pytest.raises(InvalidArgumentError, match=f"pool has {NUM_SLOTS} slots"):
        ops.selective_state_update(
            a["state"], *[a[k] for k in _ARGS], None, None, torch.tensor([0, NUM_SLOTS])
        )
    assert torch.equal(a["state"], before)


def test_ssm_rejects_heads_not_divisible_by_groups() -> None:
    a = _ssm_inputs(2, 3, 4, 2, 4, torch.float32, 2)
    with pytest.raises(InvalidArgumentError, match="n_groups"):
        ops.ssd_prefill(
            a["state"], *[a[k] for k in _ARGS], None, None, offsets([2]), torch.tensor([0])
        )


def test_conv_rejects_bad_activation_and_state_shape() -> None:
    x, state, weight, bias = _conv_inputs([1], 8, 4, torch.float32, 3)
    with pytest.raises(InvalidArgumentError, match="activation"):
        ops.causal_conv1d_update(x, state, weight, bias, torch.tensor([0]), activation="gelu")
    with pytest.raises(InvalidArgumentError, match="conv_state"):
        ops.causal_conv1d_update(x, state[:, :2], weight, bias, torch.tensor([0]))


def test_prefill_launchers_reject_bad_query_start_loc() -> None:
    x, state, weight, bias = _conv_inputs([3], 8, 4, torch.float32, 4)
    before = state.clone()
    with pytest.raises(InvalidArgumentError, match="ends at 2"):
        ops.causal_conv1d_prefill(x, state, weight, bias, offsets([2]), torch.tensor([0]))
    with pytest.raises(InvalidArgumentError, match="query_start_loc must have 1 dims"):
        ops.causal_conv1d_prefill(x, state, weight, bias, offsets([3])[None], torch.tensor([0]))
    assert torch.equal(state, before)
    a = _ssm_inputs(3, 2, 4, 1, 4, torch.float32, 5)
    with pytest.raises(InvalidArgumentError, match="non-decreasing"):
        ops.ssd_prefill(
            a["state"],
            *[a[k] for k in _ARGS],
            None,
            None,
            torch.tensor([0, 4, 3], dtype=torch.int32),
            torch.tensor([0, 1]),
        )


@pytest.mark.parametrize("every", [4, 16])
def test_checkpoints_equal_the_state_of_a_shorter_prefill(every: int) -> None:
    # Checkpoint j holds exactly what a prefill stopping after those tokens leaves.
    n_tok, first = 37, 3
    a = _ssm_inputs(n_tok, 4, 16, 2, 16, torch.float32, 6)
    x, state, weight, bias = _conv_inputs([n_tok], 48, 4, torch.float32, 7)
    cols = (n_tok - first) // every + 1
    ck = {
        "checkpoint_slots": torch.arange(2, 2 + cols).view(1, cols),
        "checkpoint_first": torch.tensor([first]),
        "checkpoint_every": every,
    }
    src, dst = torch.tensor([0]), torch.tensor([1])
    s_ssm, s_conv = a["state"].clone(), state.clone()
    ops.ssd_prefill(
        s_ssm, *[a[k] for k in _ARGS], a["D"], a["dt_bias"], offsets([n_tok]), src, dst, **ck
    )
    ops.causal_conv1d_prefill(x, s_conv, weight, bias, offsets([n_tok]), src, dst, **ck)
    for j in range(cols):
        m = first + j * every
        p_ssm, p_conv = a["state"].clone(), state.clone()
        rows = token_rows(a, _ARGS, n_tok, 0, m)
        ops.ssd_prefill(p_ssm, *rows, a["D"], a["dt_bias"], offsets([m]), src, dst)
        ops.causal_conv1d_prefill(x[:m], p_conv, weight, bias, offsets([m]), src, dst)
        assert_close(s_ssm[2 + j], p_ssm[1], f"ssm checkpoint {j}")
        assert torch.equal(s_conv[2 + j], p_conv[1]), f"conv checkpoint {j}"
    untouched = 2 + cols
    assert torch.equal(s_ssm[untouched:], a["state"][untouched:])


@pytest.mark.parametrize("width", [2, 4, 6])
@pytest.mark.parametrize(("length", "first"), [(2, 1), (3, 1), (3, 2), (4, 1), (5, 3), (6, 2)])
def test_conv_checkpoint_into_the_requests_own_source_slot(
    width: int, length: int, first: int
) -> None:
    # Mode "all": a step starting mid-block that crosses the block's end writes that
    # block's checkpoint into the slot it started from, then the final state (which,
    # with fewer new tokens than width - 1, still needs the source's old inputs) into
    # the next block's slot. Checkpoint 1 (when inside the step) goes elsewhere.
    x, state, weight, bias = _conv_inputs([length, 3], 8, width, torch.float32, 8)
    qsl = offsets([length, 3])
    src, dst = torch.tensor([4, 9]), torch.tensor([5, 9])
    ck = {
        "checkpoint_slots": torch.tensor([[4, 6], [-1, -1]]),
        "checkpoint_first": torch.tensor([first, 1]),
        "checkpoint_every": 2,
    }
    check_state_op(
        lambda s: ops.causal_conv1d_prefill(x, s, weight, bias, qsl, src, dst, **ck),
        lambda s: reference.causal_conv1d(x, s, weight, bias, qsl, src, dst, **ck),
        state,
        "conv, checkpoint into own source",
        exact_state=True,
    )
    # The final state equals one whole prefill's from the same source.
    whole = state.clone()
    ops.causal_conv1d_prefill(x[:length], whole, weight, bias, offsets([length]), src[:1], dst[:1])
    after = state.clone()
    ops.causal_conv1d_prefill(x, after, weight, bias, qsl, src, dst, **ck)
    assert torch.equal(after[5], whole[5])


@settings(max_examples=10, deadline=None)
@given(data=st.data(), n=st.integers(1, 3), chunk=st.sampled_from([1, 2, 4]), dtype=dtypes)
def test_ssd_prefill_checkpoint_into_own_source_matches_recurrence(
    data: st.DataObject, n: int, chunk: int, dtype: torch.dtype
) -> None:
    batch = data.draw(own_source_batches(n, 6, NUM_SLOTS))
    a = _ssm_inputs(batch.num_tokens, 2, 4, 1, 4, dtype, batch.num_tokens)
    args = [*(a[k] for k in _ARGS), a["D"], a["dt_bias"], batch.qsl, batch.src, batch.dst]
    ck = batch.checkpoints
    check_state_op(
        lambda s: ops.ssd_prefill(s, *args, chunk=chunk, **ck),
        lambda s: reference.mamba2_ssm(s, *args, **ck),
        a["state"],
        "ssd, checkpoint into own source",
    )


def test_ssd_checkpoint_into_the_requests_own_source_slot() -> None:
    a = _ssm_inputs(5, 2, 4, 1, 4, torch.float32, 9)
    args = [*(a[k] for k in _ARGS), a["D"], a["dt_bias"], offsets([2, 3])]
    slots = (torch.tensor([3, 7]), torch.tensor([4, 8]))
    ck = {
        "checkpoint_slots": torch.tensor([[3], [7]]),
        "checkpoint_first": torch.tensor([1, 2]),
        "checkpoint_every": 4,
    }
    check_state_op(
        lambda s: ops.ssd_prefill(s, *args, *slots, chunk=1, **ck),
        lambda s: reference.mamba2_ssm(s, *args, *slots, **ck),
        a["state"],
        "ssd, checkpoint into own source",
    )


@pytest.mark.parametrize(
    ("src", "dst", "ckpt", "culprit"),
    [
        ([1, 2], [3, 1], [[-1], [-1]], "slot 1 is written by request 1"),  # dst = other's src
        ([1, 2], [3, 4], [[-1], [1]], "slot 1 is written by request 1"),  # ckpt = other's src
        ([1, 2], [3, 4], [[4], [-1]], "slot 4 is written by request 0"),  # ckpt = other's dst
        ([1, -1], [3, 3], [[-1], [-1]], "slot 3 is written by request 0"),  # one dst, twice
    ],
)
def test_state_launchers_refuse_a_slot_two_requests_share_a_write_to(
    src: list[int], dst: list[int], ckpt: list[list[int]], culprit: str
) -> None:
    x, state, weight, bias = _conv_inputs([3, 3], 8, 4, torch.float32, 10)
    before = state.clone()
    slots = (offsets([3, 3]), torch.tensor(src), torch.tensor(dst))
    ck = {
        "checkpoint_slots": torch.tensor(ckpt),
        "checkpoint_first": torch.tensor([1, 1]),
        "checkpoint_every": 1,
    }
    with pytest.raises(InvalidArgumentError, match=culprit):
        ops.causal_conv1d_prefill(x, state, weight, bias, *slots, **ck)
    assert torch.equal(state, before)
    a = _ssm_inputs(6, 2, 4, 1, 4, torch.float32, 11)
    with pytest.raises(InvalidArgumentError, match=culprit):
        ops.ssd_prefill(a["state"], *[a[k] for k in _ARGS], None, None, *slots, **ck)
    if not any(c >= 0 for row in ckpt for c in row):
        with pytest.raises(InvalidArgumentError, match=culprit):
            ops.causal_conv1d_update(x[:2], state, weight, bias, *slots[1:])


def test_a_checkpoint_past_the_step_is_no_conflict() -> None:
    # Checkpoint columns beyond the step's tokens are never written: no refusal.
    x, state, weight, bias = _conv_inputs([2, 2], 8, 4, torch.float32, 12)
    ck = {
        "checkpoint_slots": torch.tensor([[2], [-1]]),
        "checkpoint_first": torch.tensor([5, 1]),
        "checkpoint_every": 4,
    }
    slots = (offsets([2, 2]), torch.tensor([1, 2]), torch.tensor([3, 4]))
    check_state_op(
        lambda s: ops.causal_conv1d_prefill(x, s, weight, bias, *slots, **ck),
        lambda s: reference.causal_conv1d(x, s, weight, bias, *slots, **ck),
        state,
        "conv, checkpoint past the step",
        exact_state=True,
    )
