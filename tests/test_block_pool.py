"""Unit tests of hybridkv.BlockPool / PoolRegistry through the Python API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hybridkv
import numpy as np
import pytest
from hybridkv import BlockPool, EventKind, PoolRegistry, errors
from hybridkv.hashes import to_array, to_ints
from reference_pool import check_state_invariants, hash_ints, rust_state, same_snapshot

H = to_array  # hashes as (n, 2) uint64 rows


def ids(*xs: int) -> np.ndarray:
    return np.array(xs, dtype=np.int32)


def events(pool: BlockPool | PoolRegistry) -> list[tuple[int, int, int, int]]:
    return [(e.group, int(e.kind), e.block_id, e.block_hash) for e in pool.take_events()]


# --- construction and counts -------------------------------------------------------


def test_new_pool_is_all_free_in_id_order() -> None:
    p = BlockPool(6)
    assert (p.num_blocks, p.num_free, p.num_cached, p.num_in_use) == (6, 5, 0, 0)
    assert p.free_queue().tolist() == [1, 2, 3, 4, 5]
    assert len(p) == 6
    assert p.usage == 0.0
    assert repr(p) == "BlockPool(num_blocks=6, free=5, cached=0, in_use=0)"


def test_single_block_pool_has_only_the_null_block() -> None:
    p = BlockPool(1)
    assert (p.num_free, p.num_in_use) == (0, 0)
    assert p.allocate(0).tolist() == []
    with pytest.raises(errors.OutOfBlocksError):
        p.allocate(1)


@pytest.mark.parametrize("bad", [0, -1, 2**31, 1.5, "8", None, True])
def test_bad_num_blocks(bad: Any) -> None:
    with pytest.raises(errors.InvalidArgumentError):
        BlockPool(bad)


def test_counts_add_up() -> None:
    p = BlockPool(10)
    a = p.allocate(5)
    p.cache_blocks(a[:3], H([1, 2, 3]))
    p.free(a[:2])
    assert (p.num_free, p.num_cached, p.num_in_use) == (6, 2, 3)
    assert p.num_free + p.num_in_use == p.num_blocks - 1
    assert p.usage == pytest.approx(3 / 9)
    check_state_invariants(rust_state(p.snapshot()))


# --- allocation order --------------------------------------------------------------


def test_allocate_returns_int32_from_the_head() -> None:
    p = BlockPool(8)
    a = p.allocate(3)
    assert a.dtype == np.int32
    assert a.tolist() == [1, 2, 3]
    assert p.ref_count(1) == 1 and p.ref_count(4) == 0


def test_unhashed_free_goes_to_the_head_in_order() -> None:
    # A block without a hash can never be hit: it is reused first (vLLM 0.33's rule).
    p = BlockPool(6)
    a = p.allocate(5)
    p.free(ids(4, 2))
    p.free(ids(5))
    assert p.free_queue().tolist() == [5, 4, 2]
    assert p.allocate(2).tolist() == [5, 4]
    p.free(a[[0, 2]])  # blocks 1, 3
    assert p.free_queue().tolist() == [1, 3, 2]


def test_hashed_free_goes_to_the_tail_lru() -> None:
    p = BlockPool(7)
    a = p.allocate(4)  # 1 2 3 4
    p.cache_blocks(a[[1, 3]], H([20, 40]))
    p.free(a[::-1])  # tail first: 4 (hashed), 3, 2 (hashed), 1
    assert p.free_queue().tolist() == [3, 1, 5, 6, 4, 2]
    assert p.allocate(4).tolist() == [3, 1, 5, 6]
    assert p.lookup(H([20, 40])).tolist() == [2, 4]  # both cached blocks survive
    assert p.allocate(1).tolist() == [4]  # then the least recently freed cached one


def test_repeated_ids_reach_zero_in_order() -> None:
    p = BlockPool(5)
    p.allocate(3)
    p.touch(ids(1))
    p.free(ids(1, 2, 1, 3))
    assert p.free_queue().tolist() == [2, 1, 3, 4]
    assert p.num_in_use == 0


# --- prefix caching ------------------------------------------------------------------


def test_free_block_keeps_hash_until_handed_out() -> None:
    p = BlockPool(4)
    a = p.allocate(2)
    p.cache_blocks(a, H([11, 22]))
    p.free(a)
    assert p.num_cached == 2
    assert p.lookup(H([11, 22, 33])).tolist() == [1, 2, -1]
    events(p)
    # Block 3 (never cached) goes first, then block 1, whose hash goes with it.
    assert p.allocate(2).tolist() == [3, 1]
    assert p.lookup(H([11, 22])).tolist() == [-1, 2]
    assert events(p) == [(0, EventKind.REMOVED, 1, 11)]
    assert p.num_cached == 1


def test_touch_is_a_prefix_hit_that_leaves_the_queue() -> None:
    p = BlockPool(6)
    a = p.allocate(3)
    p.cache_blocks(a, H([7, 8, 9]))
    p.free(a)
    assert p.free_queue().tolist() == [4, 5, 1, 2, 3]
    hit = p.lookup(H([8]))
    p.touch(hit)
    assert p.free_queue().tolist() == [4, 5, 1, 3]
    assert p.ref_count(2) == 1 and p.num_cached == 2
    # Still cached while in use; a second user shares it.
    p.touch(hit)
    assert p.ref_count(2) == 2
    assert p.lookup(H([8])).tolist() == [2]
    p.free(ids(2, 2))
    assert p.free_queue().tolist()[-1] == 2


def test_cache_blocks_events_and_idempotence() -> None:
    p = BlockPool(5)
    a = p.allocate(2)
    p.cache_blocks(a, H([5, 6]))
    p.cache_blocks(a, H([5, 6]))  # same hashes: no-op
    assert events(p) == [(0, EventKind.STORED, 1, 5), (0, EventKind.STORED, 2, 6)]
    assert events(p) == []


def test_one_hash_several_blocks_lookup_finds_the_oldest() -> None:
    p = BlockPool(6)
    a = p.allocate(3)
    p.cache_blocks(a[[1, 0, 2]], H([9, 9, 9]))
    assert p.lookup(H([9])).tolist() == [2]
    p.evict(ids(2))
    assert p.lookup(H([9])).tolist() == [1]
    p.evict(ids(1, 3))
    assert p.lookup(H([9])).tolist() == [-1]


def test_hashes_use_all_128_bits() -> None:
    p = BlockPool(4)
    lo, hi = 5, 5 | (1 << 64)
    big = (1 << 128) - 1
    p.cache_blocks(p.allocate(3), H([lo, hi, big]))
    assert p.lookup(H([lo, hi, big, 1 << 64])).tolist() == [1, 2, 3, -1]
    got = [e.block_hash for e in p.take_events()]
    assert got == [lo, hi, big]
    assert hash_ints(p.snapshot()["cached_hashes"]) == [lo, hi, big]
    assert to_ints(H([lo, hi, big])) == [lo, hi, big]


def test_evict_in_use_and_free_blocks() -> None:
    p = BlockPool(5)
    a = p.allocate(2)
    p.cache_blocks(a, H([1, 2]))
    p.free(a[1:])
    events(p)
    p.evict(a)
    assert p.lookup(H([1, 2])).tolist() == [-1, -1]
    assert p.ref_count(1) == 1  # still in use
    assert p.free_queue().tolist() == [3, 4, 2]  # block 2 keeps its queue place
    assert p.num_cached == 0
    assert events(p) == [(0, EventKind.REMOVED, 1, 1), (0, EventKind.REMOVED, 2, 2)]
    p.evict(a)  # uncached: no-op, no events
    assert events(p) == []


def test_reset_prefix_cache_only_when_idle() -> None:
    p = BlockPool(4)
    a = p.allocate(2)
    p.cache_blocks(a, H([1, 2]))
    before = p.snapshot()
    with pytest.raises(errors.PoolInUseError, match="2 blocks are in use"):
        p.reset_prefix_cache()
    assert same_snapshot(before, p.snapshot())
    p.free(a)
    events(p)
    p.reset_prefix_cache()
    assert p.num_cached == 0
    assert p.lookup(H([1, 2])).tolist() == [-1, -1]
    assert events(p) == [(0, EventKind.ALL_CLEARED, -1, 0)]
    # Reallocating a block whose hash was cleared records nothing more.
    p.allocate(3)
    assert events(p) == []


def test_event_batch_arrays() -> None:
    p = BlockPool(3)
    p.cache_blocks(p.allocate(1), H([3 << 64]))
    batch = p.take_events()
    assert len(batch) == 1
    assert batch.kind.dtype == np.uint8 and batch.block_id.dtype == np.int32
    assert batch.group.dtype == np.int32 and batch.block_hash.shape == (1, 2)
    assert batch.block_hash.tolist() == [[0, 3]]
    (e,) = list(batch)
    assert (e.kind, e.group, e.block_id, e.block_hash) == (EventKind.STORED, 0, 1, 3 << 64)


def test_record_events_off() -> None:
    p = BlockPool(3, record_events=False)
    assert not p.record_events
    p.cache_blocks(p.allocate(1), H([1]))
    assert len(p.take_events()) == 0
    p.record_events = True
    p.evict(ids(1))
    assert events(p) == [(0, EventKind.REMOVED, 1, 1)]


# --- accepted input forms ----------------------------------------------------------


def test_accepts_other_integer_forms() -> None:
    p = BlockPool(10)
    p.allocate(np.int64(6))
    p.free([1, 2])  # a list
    p.free(np.array([3], dtype=np.uint64))
    p.free(np.array([4], dtype=">i4"))  # byte-swapped int32
    p.free(np.arange(12, dtype=np.int32)[5:7][::-1])  # strided, reversed view: 6, 5
    # Unhashed: each call's blocks go to the head in order.
    assert p.free_queue().tolist()[:6] == [6, 5, 4, 3, 1, 2]
    p.free(np.array([], dtype=np.float64))  # empty: nothing to check
    a = p.allocate(2)
    p.cache_blocks(a.astype(np.int64), np.array([[1, 0], [2, 0]], dtype=np.int64))
    p.cache_blocks(a, [[1, 0], [2, 0]])
    hs = np.array([[1, 0, 9], [2, 0, 9]], dtype=np.uint64)[:, :2]  # non-contiguous rows
    assert p.lookup(hs).tolist() == a.tolist()
    assert p.lookup(np.zeros((0, 2), np.uint64)).tolist() == []


def test_hash_helpers_reject_bad_values() -> None:
    with pytest.raises(errors.InvalidArgumentError):
        to_array([-1])
    with pytest.raises(errors.InvalidArgumentError):
        to_array([1 << 128])
    with pytest.raises(errors.InvalidArgumentError):
        to_array([1.5])  # type: ignore[list-item]
    with pytest.raises(errors.InvalidArgumentError):
        to_ints(np.zeros(4, np.uint64))
    assert to_array([]).shape == (0, 2)


# --- bad input: named error, state unchanged ------------------------------------------


def _pool_with_state() -> BlockPool:
    """A pool with in-use, cached-free, free and multiply referenced blocks."""
    p = BlockPool(10)
    a = p.allocate(6)  # 1..6
    p.cache_blocks(a[:4], H([100, 101, 102, 1 << 100]))
    p.touch(ids(2))  # block 2: two references
    p.free(ids(3, 5))  # block 3 cached and free, block 5 free
    return p


BAD: list[tuple[str, Callable[[BlockPool], object], type[Exception], str]] = [
    ("double free", lambda p: p.free(ids(3)), errors.DoubleFreeError, "block 3"),
    ("double free in a batch", lambda p: p.free(ids(1, 4, 1)), errors.DoubleFreeError, "block 1"),
    (
        "too many frees of a shared block",
        lambda p: p.free(ids(2, 2, 2)),
        errors.DoubleFreeError,
        "2",
    ),
    ("unknown id", lambda p: p.free(ids(1, 10)), errors.InvalidBlockIdError, "10"),
    ("negative id", lambda p: p.touch(ids(-1)), errors.InvalidBlockIdError, "-1"),
    ("id beyond int32", lambda p: p.free([1, 2**40]), errors.InvalidArgumentError, "1099511627776"),
    ("null block free", lambda p: p.free(ids(1, 0)), errors.InvalidBlockIdError, "null"),
    ("null block touch", lambda p: p.touch(ids(0)), errors.InvalidBlockIdError, "null"),
    ("null block evict", lambda p: p.evict(ids(0)), errors.InvalidBlockIdError, "null"),
    ("unknown id evict", lambda p: p.evict(ids(1, 99)), errors.InvalidBlockIdError, "99"),
    ("n larger than free", lambda p: p.allocate(6), errors.OutOfBlocksError, "only 5 are free"),
    ("negative n", lambda p: p.allocate(-2), errors.InvalidArgumentError, "-2"),
    # Validated before any buffer is sized from n (no capacity-overflow panic or abort).
    ("huge n", lambda p: p.allocate(2**62), errors.OutOfBlocksError, str(2**62)),
    ("n beyond int64", lambda p: p.allocate(2**64), errors.InvalidArgumentError, "int64"),
    ("float n", lambda p: p.allocate(2.0), errors.InvalidArgumentError, "n must be an int"),
    ("float ids", lambda p: p.free(np.array([1.0])), errors.InvalidArgumentError, "float64"),
    ("bool ids", lambda p: p.touch(np.array([True])), errors.InvalidArgumentError, "bool"),
    ("string ids", lambda p: p.free(["1"]), errors.InvalidArgumentError, "integer dtype"),
    ("2-D ids", lambda p: p.free(np.array([[1]], np.int32)), errors.InvalidArgumentError, "1-D"),
    ("scalar ids", lambda p: p.evict(1), errors.InvalidArgumentError, "1-D"),
    (
        "uint64 ids too large",
        lambda p: p.free(np.array([2**63], np.uint64)),
        errors.InvalidArgumentError,
        "out of range",
    ),
    (
        "hashes wrong shape",
        lambda p: p.cache_blocks(ids(6), np.zeros((1, 3), np.uint64)),
        errors.InvalidArgumentError,
        "(n, 2)",
    ),
    (
        "hashes 1-D",
        lambda p: p.cache_blocks(ids(6), np.zeros(2, np.uint64)),
        errors.InvalidArgumentError,
        "(n, 2)",
    ),
    (
        "float hashes",
        lambda p: p.lookup(np.zeros((1, 2), np.float32)),
        errors.InvalidArgumentError,
        "float32",
    ),
    (
        "negative hashes",
        lambda p: p.lookup(np.array([[-1, 0]], np.int64)),
        errors.InvalidArgumentError,
        "negative",
    ),
    (
        "length mismatch",
        lambda p: p.cache_blocks(ids(6, 4), H([1])),
        errors.InvalidArgumentError,
        "lengths differ",
    ),
    (
        "cache a free block",
        lambda p: p.cache_blocks(ids(6, 5), H([7, 8])),
        errors.BlockStateError,
        "block 5 is not in use",
    ),
    (
        "re-cache under another hash",
        lambda p: p.cache_blocks(ids(6, 1), H([7, 8])),
        errors.BlockStateError,
        "block 1 already carries",
    ),
    (
        "same block twice, two hashes",
        lambda p: p.cache_blocks(ids(6, 2, 6), H([7, 101, 9])),
        errors.BlockStateError,
        "block 6",
    ),
    ("reset while in use", lambda p: p.reset_prefix_cache(), errors.PoolInUseError, "in use"),
    ("ref_count of unknown id", lambda p: p.ref_count(10), errors.InvalidBlockIdError, "10"),
]


@pytest.mark.parametrize(("call", "exc", "needle"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_raises_named_error_and_changes_nothing(
    call: Callable[[BlockPool], object], exc: type[Exception], needle: str
) -> None:
    p = _pool_with_state()
    before = p.snapshot()
    assert len(before["event_kinds"]) > 0  # pending events are part of the state
    with pytest.raises(exc) as info:
        call(p)
    assert isinstance(info.value, errors.HybridKVError)
    assert isinstance(info.value, ValueError)
    assert needle in str(info.value)
    assert same_snapshot(before, p.snapshot())
    p.check_invariants()


# --- the registry: ids never cross pools -------------------------------------------


def test_registry_ids_are_per_group() -> None:
    r = PoolRegistry([4, 8])
    assert r.num_groups == 2 and r.num_blocks(1) == 8
    a0 = r.allocate(0, 3)
    a1 = r.allocate(1, 3)
    assert a0.tolist() == a1.tolist() == [1, 2, 3]  # same local ids, different pools
    r.cache_blocks(0, a0, H([1, 2, 3]))
    r.cache_blocks(1, a1, H([7, 8, 9]))
    r.take_events()
    snap1 = r.snapshot(1)
    # Evicting (and freeing) these ids in group 0 must not touch group 1: the
    # eviction-broadcast bug cannot be expressed.
    r.evict(0, a0)
    r.free(0, a0)
    assert same_snapshot(snap1, r.snapshot(1))
    assert r.lookup(1, H([7, 8, 9])).tolist() == [1, 2, 3]
    assert r.lookup(0, H([1, 2, 3])).tolist() == [-1, -1, -1]
    ev = r.take_events()
    assert set(ev.group.tolist()) == {0}
    assert [(e.kind, e.block_id, e.block_hash) for e in ev] == [
        (EventKind.REMOVED, 1, 1),
        (EventKind.REMOVED, 2, 2),
        (EventKind.REMOVED, 3, 3),
    ]
    r.check_invariants()


def test_registry_rejects_ids_from_another_pool() -> None:
    r = PoolRegistry([4, 8])
    r.allocate(0, 1)
    big = r.allocate(1, 6)  # 1..6 in group 1; 4..6 do not exist in group 0
    snaps = [r.snapshot(0), r.snapshot(1)]
    with pytest.raises(errors.InvalidBlockIdError, match="block id 4 is out of range"):
        r.free(0, big[3:])
    with pytest.raises(errors.DoubleFreeError, match="block 2"):
        r.free(0, big[:2])  # block 1 is in use in group 0, block 2 is not
    with pytest.raises(errors.InvalidBlockIdError):
        r.evict(0, big)
    with pytest.raises(errors.BlockStateError):
        r.cache_blocks(0, big[1:2], H([5]))
    assert same_snapshot(snaps[0], r.snapshot(0))
    assert same_snapshot(snaps[1], r.snapshot(1))


@pytest.mark.parametrize("group", [2, -1, 2**70, 1.0, "0", None])
def test_registry_unknown_group(group: Any) -> None:
    r = PoolRegistry([4, 8])
    snaps = [r.snapshot(0), r.snapshot(1)]
    exc = errors.UnknownGroupError if isinstance(group, int) and -1 <= group <= 2 else None
    with pytest.raises(exc or errors.InvalidArgumentError):
        r.allocate(group, 1)
    with pytest.raises(exc or errors.InvalidArgumentError):
        r.lookup(group, H([1]))
    assert same_snapshot(snaps[0], r.snapshot(0))
    assert same_snapshot(snaps[1], r.snapshot(1))


@pytest.mark.parametrize("sizes", [[4, 0], [4, -1], [[4]], [4.0], "4"])
def test_registry_bad_sizes(sizes: Any) -> None:
    with pytest.raises(errors.InvalidArgumentError):
        PoolRegistry(sizes)


def test_registry_repr_and_events_tagged_in_group_order() -> None:
    r = hybridkv.PoolRegistry([3, 5, 2])
    assert repr(r) == "PoolRegistry(num_blocks_per_group=[3, 5, 2])"
    r.cache_blocks(2, r.allocate(2, 1), H([20]))
    r.cache_blocks(0, r.allocate(0, 1), H([10]))
    ev = r.take_events()
    assert ev.group.tolist() == [0, 2]
    assert [e.block_hash for e in ev] == [10, 20]
