"""Paged attention against its reference: ragged batches, GQA, all three masks, null blocks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from hybridkv import ops
from hybridkv.errors import InvalidArgumentError
from hybridkv.ops import reference
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_helpers import DTYPES, Draw, assert_close, dtypes, offsets


@dataclass(frozen=True)
class _Case:
    """A paged cache, the new tokens' queries and K/V, and the step's metadata."""

    q: torch.Tensor
    kc: torch.Tensor
    vc: torch.Tensor
    new_k: torch.Tensor
    new_v: torch.Tensor
    slots: torch.Tensor
    table: torch.Tensor
    seq_lens: torch.Tensor
    qsl: torch.Tensor


def _build(
    seq_lens: list[int],
    q_lens: list[int],
    block_size: int,
    kv_heads: int,
    group: int,
    head_size: int,
    dtype: torch.dtype,
    window: int | None,
    chunk: int | None,
    perm: list[int],
    extra_cols: int,
    seed: int,
) -> _Case:
    """A cache whose block 0 and every unused block hold NaN, and a block table with
    shuffled ids and the null block wherever no query of the request can look."""
    n = len(seq_lens)
    need = [math.ceil(s / block_size) for s in seq_lens]
    num_blocks = 1 + sum(need)
    cols = max(need) + extra_cols
    table = torch.zeros(n, cols, dtype=torch.int32)
    ids = iter(p + 1 for p in perm)
    for r in range(n):
        first_q = seq_lens[r] - q_lens[r]
        if window is not None:
            lo = max(first_q - window + 1, 0)
        elif chunk is not None:
            lo = first_q // chunk * chunk
        else:
            lo = 0
        for j in range(need[r]):
            bid = next(ids)
            if (j + 1) * block_size > lo:  # blocks wholly before lo stay null
                table[r, j] = bid
    rand = Draw(seed)
    shape = (num_blocks, block_size, kv_heads, head_size)
    kc = torch.full(shape, float("nan"), dtype=dtype)
    vc = torch.full(shape, float("nan"), dtype=dtype)
    used = table[table > 0].long()
    kc[used] = rand.normal(len(used), *shape[1:], dtype=dtype)
    vc[used] = rand.normal(len(used), *shape[1:], dtype=dtype)
    t = sum(q_lens)
    q = rand.normal(t, kv_heads * group, head_size, dtype=dtype)
    new_k = rand.normal(t, kv_heads, head_size, dtype=dtype)
    new_v = rand.normal(t, kv_heads, head_size, dtype=dtype)
    slots = []
    for r in range(n):
        for p in range(seq_lens[r] - q_lens[r], seq_lens[r]):
            slots.append(int(table[r, p // block_size]) * block_size + p % block_size)
    return _Case(
        q=q,
        kc=kc,
        vc=vc,
        new_k=new_k,
        new_v=new_v,
        slots=torch.tensor(slots, dtype=torch.int64),
        table=table,
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        qsl=offsets(q_lens),
    )


def _run(case: _Case, window: int | None, chunk: int | None) -> None:
    """Write the new K/V (kernel vs reference), then attend (kernel vs reference)."""
    q, kc, vc = case.q, case.kc, case.vc
    kc_ref, vc_ref = kc.clone(), vc.clone()
    ops.write_kv(case.new_k, case.new_v, kc, vc, case.slots)
    reference.write_kv(case.new_k, case.new_v, kc_ref, vc_ref, case.slots)
    assert torch.equal(kc.nan_to_num(7.0), kc_ref.nan_to_num(7.0))
    rest = (case.table, case.seq_lens, case.qsl)
    out = ops.paged_attention(q, kc, vc, *rest, sliding_window=window, chunk_size=chunk)
    ref = reference.paged_attention(q, kc, vc, *rest, sliding_window=window, chunk_size=chunk)
    assert_close(out, ref, f"window={window} chunk={chunk}")


@settings(max_examples=30, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 3),
    block_size=st.sampled_from([1, 2, 3, 4, 8, 16]),
    kv_heads=st.integers(1, 2),
    group=st.integers(1, 3),
    head_size=st.sampled_from([16, 24, 32]),
    dtype=dtypes,
    mode=st.sampled_from(["full", "window", "chunk"]),
    extra_cols=st.integers(0, 2),
)
def test_paged_attention_matches_reference(
    data: st.DataObject,
    n: int,
    block_size: int,
    kv_heads: int,
    group: int,
    head_size: int,
    dtype: torch.dtype,
    mode: str,
    extra_cols: int,
) -> None:
    seq_lens = data.draw(st.lists(st.integers(1, 28), min_size=n, max_size=n))
    q_lens = [data.draw(st.integers(1, min(s, 9))) for s in seq_lens]
    window = data.draw(st.integers(1, 10)) if mode == "window" else None
    chunk = data.draw(st.integers(1, 9)) if mode == "chunk" else None
    need = sum(math.ceil(s / block_size) for s in seq_lens)
    perm = data.draw(st.permutations(list(range(need))))
    case = _build(
        seq_lens,
        q_lens,
        block_size,
        kv_heads,
        group,
        head_size,
        dtype,
        window,
        chunk,
        perm,
        extra_cols,
        seed=need,
    )
    _run(case, window, chunk)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_size", [64, 128, 256])
def test_paged_attention_production_head_sizes(head_size: int, dtype: torch.dtype) -> None:
    # A decode row, a chunked-prefill row over a cached prefix and a fresh prefill, GQA 4:1.
    seq_lens, q_lens = [21, 19, 6], [1, 7, 6]
    need = sum(math.ceil(s / 4) for s in seq_lens)
    perm = list(range(need))[::-1]
    for window, chunk in [(None, None), (8, None), (None, 8)]:
        case = _build(seq_lens, q_lens, 4, 2, 4, head_size, dtype, window, chunk, perm, 1, 3)
        _run(case, window, chunk)


def test_sliding_window_never_reads_blocks_outside_the_window() -> None:
    # Blocks before the window are NaN but still listed in the table: they must not be
    # visited at all (a visit would multiply NaN by a zero probability and poison acc).
    case = _build([30], [2], 4, 1, 1, 16, torch.float32, 5, None, list(range(8)), 0, 1)
    kc, vc, table = case.kc, case.vc, case.table
    table[0, :5] = torch.arange(2, 7, dtype=torch.int32)  # ids of "freed" blocks, NaN-filled
    kc[2:7] = float("nan")
    vc[2:7] = float("nan")
    _run(case, 5, None)


def test_rows_with_no_visible_key_give_zeros() -> None:
    # Every block of the context is null: the kernel reads nothing and returns zeros.
    q = torch.randn(2, 2, 16)
    kc = torch.full((3, 4, 1, 16), float("nan"))
    out = ops.paged_attention(
        q,
        kc,
        kc.clone(),
        torch.zeros(1, 2, dtype=torch.int32),
        torch.tensor([6], dtype=torch.int32),
        torch.tensor([0, 2], dtype=torch.int32),
    )
    assert torch.equal(out, torch.zeros_like(q))


def _args() -> tuple[torch.Tensor, ...]:
    q = torch.randn(3, 4, 16)
    kc = torch.randn(5, 4, 2, 16)
    table = torch.tensor([[1, 2], [3, 4]], dtype=torch.int32)
    return (
        q,
        kc,
        kc.clone(),
        table,
        torch.tensor([5, 2], dtype=torch.int32),
        torch.tensor([0, 1, 3], dtype=torch.int32),
    )


def test_paged_attention_accepts_the_valid_call() -> None:
    # The baseline the rejection cases below each break in one place.
    args = _args()
    assert_close(ops.paged_attention(*args), reference.paged_attention(*args), "valid call")


@pytest.mark.parametrize(
    ("index", "bad", "match"),
    [
        (0, torch.randn(3, 3, 16), "multiple of num_kv_heads"),
        (3, torch.tensor([[1, 2], [3, 9]], dtype=torch.int32), "outside the cache"),
        (3, torch.tensor([[1, 2], [3, 4]], dtype=torch.int64), "block_table has dtype"),
        (4, torch.tensor([9, 2], dtype=torch.int32), "block table"),
        (4, torch.tensor([5, 1], dtype=torch.int32), "more queries than context"),
        (5, torch.tensor([0, 1, 4], dtype=torch.int32), "ends at 4"),
        (2, torch.randn(5, 4, 2, 16).half(), "dtype"),
    ],
)
def test_paged_attention_rejects_bad_input(index: int, bad: torch.Tensor, match: str) -> None:
    args = list(_args())
    args[index] = bad
    with pytest.raises(InvalidArgumentError, match=match):
        ops.paged_attention(*args)


def test_paged_attention_rejects_window_and_chunk_together() -> None:
    with pytest.raises(InvalidArgumentError, match="not both"):
        ops.paged_attention(*_args(), sliding_window=4, chunk_size=4)


def test_paged_attention_rejects_short_max_query_len() -> None:
    with pytest.raises(InvalidArgumentError, match="max_query_len 1 is shorter"):
        ops.paged_attention(*_args(), max_query_len=1)
