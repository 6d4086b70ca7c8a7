"""KVCacheManager through the Python API: tables, hits, windows, state, bad input."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hybridkv import (
    KVCacheManager,
    ManagerConfig,
    ManagerGroup,
    errors,
    hash_token_blocks,
    plan_memory,
    plan_with_blocks,
)
from hybridkv.kv_events import BlockRemoved, BlockStored, PrefixDisagreement
from hybridkv.models import ModelSpec
from hybridkv.specs import FullAttentionSpec, SlidingWindowSpec, StateSpec

BS = 4


def cfg(
    full: int = 64, swa: int = 32, state: int = 16, window: int = 8, mode: str = "align"
) -> ManagerConfig:
    return ManagerConfig(
        (
            ManagerGroup("full_attention", BS, full),
            ManagerGroup("sliding_window", BS, swa, window=window),
            ManagerGroup("state", BS, state),
        ),
        mode,
    )


def toks(*xs: int) -> np.ndarray:
    return np.array(xs, dtype=np.int32)


def seq(n: int, start: int = 1) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.int32)


def snapshot(m: KVCacheManager) -> dict[str, Any]:
    ids = m.request_ids()
    return {
        "ids": ids.tolist(),
        "tables": [m.block_table(g, ids).tolist() for g in range(m.num_groups)],
        "computed": m.num_computed_tokens(ids).tolist(),
        "ntok": m.num_tokens(ids).tolist(),
        "refs": [m.ref_counts(g).tolist() for g in range(m.num_groups)],
        "queues": [m.free_queue(g).tolist() for g in range(m.num_groups)],
        "cached": [m.cached_blocks(g)[0].tolist() for g in range(m.num_groups)],
    }


def run_prefill(m: KVCacheManager, rid: int, chunks: list[int]) -> int:
    h = int(m.get_computed_tokens([rid])[0])
    for c in chunks:
        assert m.allocate_slots([rid], [c]).tolist() == [True]
    m.check_invariants()
    return h


# --- planner integration -----------------------------------------------------------


def test_built_from_a_memory_plan() -> None:
    attn = {"num_kv_heads": 2, "head_size": 8}
    model = ModelSpec(
        name="t",
        layer_specs=(
            FullAttentionSpec(**attn),
            SlidingWindowSpec(window=8, **attn),
            StateSpec(shapes=((2, 3),), dtypes=("fp32",)),
        ),
    )
    plan = plan_with_blocks(
        model,
        [40, 20, 10],
        block_size=BS,
        max_num_seqs=4,
        max_model_len=64,
        max_num_batched_tokens=32,
    )
    m = KVCacheManager(plan)
    assert m.group_kinds == ("full_attention", "sliding_window", "state")
    assert m.stats().num_blocks == (40, 20, 10)
    m.add_requests([7], [seq(10)])
    assert m.get_computed_tokens([7]).tolist() == [0]
    assert m.allocate_slots([7], [10]).tolist() == [True]
    assert m.block_table(0, [7]).shape == (1, 3)
    m.check_invariants()


def _churn_then_rehit(spare: int, churn: int, policy: str = "lru") -> int:
    """A finishes a 16-token prompt (align checkpoints at 8 and 16); S-1 requests stay
    running with full state use; ``churn`` other requests then run and finish one at a
    time. Returns A's follow-up turn's hit length."""
    attn = {"num_kv_heads": 2, "head_size": 8}
    model = ModelSpec(
        name="t",
        layer_specs=(FullAttentionSpec(**attn), StateSpec(shapes=((2, 3),), dtypes=("fp32",))),
    )
    s = 4
    plan = plan_memory(
        model,
        memory_bytes=1 << 20,
        max_num_seqs=s,
        max_model_len=64,
        max_num_batched_tokens=32,
        block_size=BS,
        state_cache_slots=spare,
    )
    m = KVCacheManager(plan, checkpoint_policy=policy)
    assert m.stats().num_blocks[1] == 2 * s + spare + 1
    p = seq(16)
    m.add_requests([1], [p])
    run_prefill(m, 1, [16])
    m.free([1])
    running = list(range(100, 100 + s - 1))
    m.add_requests(running, [seq(16, 1000 * i) for i in range(1, s)])
    m.get_computed_tokens(running)
    for _ in range(2):
        assert all(m.allocate_slots(running, [8] * len(running)).tolist())
    assert m.stats().num_in_use[1] == 2 * (s - 1)  # every running state slot taken
    for k in range(churn):
        rid = 200 + k
        m.add_requests([rid], [seq(16, 50_000 + 100 * k)])
        run_prefill(m, rid, [8, 8])
        m.free([rid])
    m.add_requests([2], [np.concatenate([p, toks(7)])])
    hit = int(m.get_computed_tokens([2])[0])
    m.check_invariants()
    return hit


@pytest.mark.parametrize("churn", [1, 2, 4])
def test_spare_state_slots_keep_a_finished_checkpoint_through_churn(churn: int) -> None:
    # Each churned request leaves two checkpoints of its own cached (8 and 16), so
    # 2 spare slots per churned request keep A's checkpoints out of the LRU's reach.
    assert _churn_then_rehit(spare=2 * churn, churn=churn) == 16
    # Without spare slots the pool is all running states: the churn evicts A's
    # checkpoints, and the attention blocks A left cached can't be used alone.
    assert _churn_then_rehit(spare=0, churn=churn) == 0
    assert _churn_then_rehit(spare=0, churn=0) == 16  # not evicted without churn


# --- allocation and tables -----------------------------------------------------------


def test_full_swa_state_tables_and_window_release() -> None:
    m = KVCacheManager(cfg())
    m.add_requests([1], [seq(12)])
    run_prefill(m, 1, [8, 4])
    full = m.block_table(0, [1])[0].tolist()
    assert full == [1, 2, 3]
    # After the 8-token chunk the SWA group needs tokens from 8 - 8 + 1 = 1: nothing left
    # the window yet when the second chunk was allocated.
    assert m.block_table(1, [1])[0].tolist() == [1, 2, 3]
    # State: one running block at the entry of the step's last token; the previous
    # checkpoint (after 8 tokens, entry 1) is held until the next step releases it.
    st = m.block_table(2, [1])[0].tolist()
    assert st[2] != 0 and st[0] == 0
    for i in range(9):
        m.append_tokens([1], [toks(100 + i)])
        assert m.allocate_slots([1], [1]).tolist() == [True]
        m.check_invariants()
        c = 12 + i + 1
        table = m.block_table(1, [1])[0]
        first_needed = max(0, (c - 1) - 8 + 1)  # computed before this step: c - 1
        assert (table[: first_needed // BS] == 0).all()
        assert (table[first_needed // BS :] != 0).all()
        # State: at most two live entries (the state read and the state written).
        assert np.count_nonzero(m.block_table(2, [1])[0]) <= 2
    assert m.num_computed_tokens([1]).tolist() == [21]


def test_slot_mapping_and_null_positions() -> None:
    m = KVCacheManager(cfg())
    m.add_requests([1, 2], [seq(6), seq(9, 50)])
    m.get_computed_tokens([1, 2])
    assert m.allocate_slots([1, 2], [6, 9]).tolist() == [True, True]
    t1 = m.block_table(0, [1])[0]
    sm = m.slot_mapping(0, [1, 1, 2], [0, 5, 8])
    t2 = m.block_table(0, [2])[0]
    assert sm.tolist() == [t1[0] * BS, t1[1] * BS + 1, t2[2] * BS]
    assert sm.dtype == np.int64
    with pytest.raises(errors.InvalidArgumentError):
        m.slot_mapping(0, [1], [8])  # beyond the allocated blocks
    with pytest.raises(errors.InvalidArgumentError):
        m.slot_mapping(0, [1, 1], [0])
    with pytest.raises(errors.UnknownGroupError):
        m.slot_mapping(3, [1], [0])
    # Fixed width tables.
    assert m.block_table(0, [1, 2], max_blocks=5).shape == (2, 5)
    with pytest.raises(errors.InvalidArgumentError):
        m.block_table(0, [1, 2], max_blocks=2)


def test_block_table_into_a_persistent_buffer() -> None:
    m = KVCacheManager(cfg())
    m.add_requests([1, 2], [seq(6), seq(13, 50)])
    m.get_computed_tokens([1, 2])
    assert m.allocate_slots([1, 2], [6, 13]).all()
    out = np.full((4, 6), 77, dtype=np.int32)
    view = m.block_table_into(0, [2, 1], out)
    want = m.block_table(0, [2, 1], max_blocks=6)
    assert np.array_equal(view, want) and np.array_equal(out[:2], want)
    assert (out[2:] == 77).all()
    before = out.copy()
    for bad in (
        np.zeros((1, 6), np.int32),  # too few rows
        np.zeros((4, 3), np.int32),  # narrower than a table
        np.zeros((4, 6), np.int64),  # wrong dtype
        np.zeros((6, 4), np.int32).T,  # not C-contiguous
    ):
        with pytest.raises(errors.InvalidArgumentError):
            m.block_table_into(0, [2, 1], bad)
    with pytest.raises(errors.UnknownRequestError):
        m.block_table_into(0, [2, 9], out)
    assert np.array_equal(out, before)


def test_new_block_ids_rebuild_the_tables_incrementally() -> None:
    m = KVCacheManager(cfg())
    m.add_requests([1, 2], [seq(6), seq(13, 50)])
    m.get_computed_tokens([1, 2])
    persistent = {g: np.zeros((2, 16), np.int32) for g in range(3)}
    row = {1: 0, 2: 1}

    def apply() -> None:
        for g in range(3):
            start, offs, ids = m.new_block_ids(g, [1, 2])
            for i, rid in enumerate((1, 2)):
                new = ids[offs[i] : offs[i + 1]]
                persistent[g][row[rid], start[i] : start[i] + len(new)] = new

    def check() -> None:
        for g in range(3):
            full = m.block_table(g, [1, 2], max_blocks=16)
            live = full != 0
            # Every live entry matches; released (null) entries may be stale.
            assert (persistent[g][live] == full[live]).all()

    assert m.allocate_slots([1, 2], [6, 13]).all()
    apply()
    check()
    for step in range(10):
        m.append_tokens([1, 2], [toks(3), toks(4)])
        assert m.allocate_slots([1, 2], [1, 1]).all()
        apply()
        check()
        if step == 4:
            m.preempt([2])
            persistent[0][1] = persistent[1][1] = persistent[2][1] = 0
            m.get_computed_tokens([2])
            assert m.allocate_slots(
                [2], [int(m.num_tokens([2])[0] - m.num_computed_tokens([2])[0]) - 1]
            ).all()
    # Nothing new: empty deltas.
    start, offs, ids = m.new_block_ids(0, [1, 2])
    assert start.tolist() == (-(-m.num_computed_tokens([1, 2]) // BS)).tolist()
    assert offs.tolist() == [0, 0, 0] and ids.size == 0
    with pytest.raises(errors.UnknownRequestError):
        m.new_block_ids(0, [1, 7])


def test_new_block_ids_all_equals_one_call_per_group() -> None:
    """The one-call export gives every group what its own ``new_block_ids`` would, and
    advances each group's export state the same way."""
    a, b = KVCacheManager(cfg()), KVCacheManager(cfg())
    for m in (a, b):
        m.add_requests([1, 2, 3], [seq(6), seq(13, 50), seq(40, 7)])
        m.get_computed_tokens([1, 2, 3])
    rng = np.random.default_rng(3)
    ids = [1, 2, 3]
    for step in range(30):
        nums = [int(rng.integers(1, 9)) for _ in ids]
        for m in (a, b):
            left = m.num_tokens(ids) - m.num_computed_tokens(ids)
            n = np.minimum(np.asarray(nums), left)
            assert m.allocate_slots(ids, n).all()
        asked = [ids[i] for i in rng.permutation(len(ids))[: int(rng.integers(0, 4))]]
        start, offs, got = a.new_block_ids_all(asked)
        assert start.shape == (3, len(asked)) and offs.shape == (3, len(asked) + 1)
        for g in range(3):
            s1, o1, i1 = b.new_block_ids(g, asked)
            assert start[g].tolist() == s1.tolist()
            seg = got[offs[g, 0] : offs[g, -1]]
            assert (offs[g] - offs[g, 0]).tolist() == o1.tolist()
            assert seg.tolist() == i1.tolist()
        for m in (a, b):
            done = m.num_computed_tokens(ids) == m.num_tokens(ids)
            m.append_tokens(ids, [toks(5) if d else toks() for d in done])
        if step == 12:
            for m in (a, b):
                m.preempt([2])
                m.get_computed_tokens([2])
    with pytest.raises(errors.UnknownRequestError):
        a.new_block_ids_all([1, 7])


def test_all_or_nothing_per_request() -> None:
    # Full pool of 6 usable blocks; the SWA pool is tiny so the second request fails
    # on the SWA group alone and must leave nothing allocated anywhere.
    m = KVCacheManager(cfg(full=7, swa=4, state=8))
    m.add_requests([1, 2], [seq(8), seq(8, 30)])
    m.get_computed_tokens([1, 2])
    before = snapshot(m)
    ok = m.allocate_slots([1, 2], [8, 8]).tolist()
    assert ok == [True, False]
    after = snapshot(m)
    i2 = after["ids"].index(2)
    assert all(after["tables"][g][i2] == [0] * len(after["tables"][g][i2]) for g in range(3))
    assert after["computed"][i2] == 0
    assert before["computed"] == [0, 0]
    st = m.stats()
    assert (st.alloc_requests, st.alloc_failures) == (2, 1)
    m.check_invariants()


def test_lookahead_slots_allocated_but_not_computed() -> None:
    m = KVCacheManager(cfg())
    m.add_requests([1], [seq(4)])
    m.get_computed_tokens([1])
    assert m.allocate_slots([1], [4], [5]).tolist() == [True]
    assert m.block_table(0, [1]).shape == (1, 3)  # cdiv(4 + 5, 4)
    assert m.num_computed_tokens([1]).tolist() == [4]


# --- prefix hits -----------------------------------------------------------------------


def test_hit_needs_every_group_and_leaves_one_token() -> None:
    m = KVCacheManager(cfg(), enable_kv_events=True)
    p = seq(16)
    m.add_requests([1], [p])
    run_prefill(m, 1, [8, 8])  # state checkpoints at 8 and 16
    m.free([1])
    m.add_requests([2, 3], [p, np.concatenate([p, toks(99)])])
    hits = m.get_computed_tokens([2, 3]).tolist()
    # Request 2 is the same prompt: capped at 15 -> the state checkpoint at 8 is the
    # longest position all groups serve. Request 3 may use the whole 16.
    assert hits == [8, 16]
    m.check_invariants()
    st = m.stats()
    assert st.queries == 3
    assert st.hit_tokens == 24
    ev = m.take_events()
    assert any(isinstance(e, PrefixDisagreement) and e.req_id == 2 for e in ev)
    # Hit blocks are referenced by both requests in the full group.
    t2, t3 = m.block_table(0, [2, 3])
    assert t2[:2].tolist() == t3[:2].tolist()
    assert m.ref_counts(0)[t2[0]] == 2


def test_swa_hit_needs_only_the_window() -> None:
    m = KVCacheManager(cfg(window=5))
    p = seq(24)
    m.add_requests([1], [p])
    run_prefill(m, 1, [8, 8, 8])
    m.free([1])
    # Evict the SWA group's early blocks by filling its pool from another request;
    # the full group keeps everything cached.
    m.add_requests([9], [seq(40, 500)])
    m.get_computed_tokens([9])
    for _ in range(10):
        assert m.allocate_slots([9], [4]).tolist() == [True]
    m.free([9])
    q = np.concatenate([p, toks(7, 7)])
    m.add_requests([2], [q])
    h = int(m.get_computed_tokens([2])[0])
    assert h == 24
    t = m.block_table(1, [2])[0].tolist()
    # Window 5 before position 24: tokens 20..23, i.e. block 5 only.
    assert t[:5] == [0] * 5 and t[5] != 0
    m.check_invariants()


def test_preempt_then_rehit() -> None:
    m = KVCacheManager(cfg())
    p = seq(17)
    m.add_requests([1], [p])
    run_prefill(m, 1, [8, 8, 1])
    m.append_tokens([1], [toks(5)])
    m.preempt([1])
    assert m.num_computed_tokens([1]).tolist() == [0]
    assert m.stats().num_in_use == (0, 0, 0)
    assert m.get_computed_tokens([1]).tolist() == [16]
    m.check_invariants()
    with pytest.raises(errors.RequestStateError):
        m.allocate_slots([1], [2])
        m.get_computed_tokens([1])


def test_prefix_caching_off_never_hits() -> None:
    m = KVCacheManager(cfg(), enable_prefix_caching=False)
    m.add_requests([1], [seq(16)])
    run_prefill(m, 1, [8, 8])
    m.free([1])
    m.add_requests([2], [seq(17)])
    assert m.get_computed_tokens([2]).tolist() == [0]
    assert m.cached_blocks(0)[0].size == 0


def test_mode_none_means_no_hit_with_a_state_group() -> None:
    m = KVCacheManager(cfg(mode="none"))
    m.add_requests([1], [seq(16)])
    run_prefill(m, 1, [8, 8])
    m.free([1])
    m.add_requests([2], [seq(17)])
    assert m.get_computed_tokens([2]).tolist() == [0]
    assert m.stats().group_hit_tokens[0] == 16


def test_block_hashes_match_free_function_and_seed() -> None:
    m = KVCacheManager(cfg(), hash_seed=123)
    p = seq(10)
    m.add_requests([1], [p], lora_ids=[3], cache_salts=["s"], mm_features=[[(77, 2, 3)]])
    got = m.block_hashes(0, 1)
    want = hash_token_blocks(p, BS, seed=123, lora_id=3, cache_salt=b"s", mm_features=[(77, 2, 3)])
    assert got.shape == (2, 2) and np.array_equal(got, want)
    assert not np.array_equal(want, hash_token_blocks(p, BS, seed=123))
    # Continuing from a parent equals the tail of the chain.
    tail = hash_token_blocks(p[BS:], BS, seed=123, parent=int(want[0, 0]) | int(want[0, 1]) << 64)
    assert not np.array_equal(tail[0], want[1])  # extra keys differ (no LoRA here)
    plain = hash_token_blocks(p, BS, seed=123)
    tail = hash_token_blocks(p[BS:], BS, parent=int(plain[0, 0]) | int(plain[0, 1]) << 64)
    assert np.array_equal(tail[0], plain[1])


def test_extra_keys_separate_caches() -> None:
    m = KVCacheManager(cfg())
    p = seq(16)
    m.add_requests([1], [p], lora_ids=[1])
    run_prefill(m, 1, [8, 8])
    m.free([1])
    q = np.concatenate([p, toks(3)])
    m.add_requests([2, 3, 4], [q, q, q], lora_ids=[1, None, 1], cache_salts=[None, None, "x"])
    assert m.get_computed_tokens([2, 3, 4]).tolist() == [16, 0, 0]


def test_events_stored_and_removed() -> None:
    m = KVCacheManager(cfg(full=4, swa=8, state=8), enable_kv_events=True)
    m.add_requests([1], [seq(8)])
    run_prefill(m, 1, [8])
    ev = m.take_events()
    stored = [e for e in ev if isinstance(e, BlockStored) and e.group == 0]
    assert len(stored) == 1
    assert stored[0].token_ids == list(range(1, 9))
    assert stored[0].parent_block_hash is None and stored[0].block_size == BS
    assert len(stored[0].block_hashes) == 2
    m.free([1])
    m.add_requests([2], [seq(12, 100)])
    m.get_computed_tokens([2])
    assert m.allocate_slots([2], [12]).tolist() == [True]
    ev = m.take_events()
    removed = [e for e in ev if isinstance(e, BlockRemoved) and e.group == 0]
    assert sum(len(e.block_hashes) for e in removed) >= 1
    assert m.take_events() == []


def test_reset_prefix_cache_only_when_idle() -> None:
    m = KVCacheManager(cfg())
    m.add_requests([1], [seq(9)])
    run_prefill(m, 1, [9])
    assert m.reset_prefix_cache() is False
    m.free([1])
    assert m.reset_prefix_cache() is True
    m.add_requests([2], [seq(9)])
    assert m.get_computed_tokens([2]).tolist() == [0]


def test_cross_attention_blocks_for_encoder() -> None:
    c = ManagerConfig(
        (
            ManagerGroup("full_attention", BS, 32),
            ManagerGroup("cross_attention", BS, 16, max_encoder_len=12),
        ),
        "none",
    )
    m = KVCacheManager(c)
    m.add_requests([1], [seq(3)], encoder_lens=[10])
    m.get_computed_tokens([1])
    assert m.allocate_slots([1], [3]).tolist() == [True]
    assert np.count_nonzero(m.block_table(1, [1])) == 3
    assert m.allocate_slots([1], [0]).tolist() == [True]
    with pytest.raises(errors.InvalidArgumentError):
        m.add_requests([2], [seq(3)], encoder_lens=[13])
    with pytest.raises(errors.InvalidArgumentError):
        KVCacheManager(cfg()).add_requests([2], [seq(3)], encoder_lens=[1])


# --- bad input ------------------------------------------------------------------------


def test_bad_input_raises_named_errors_and_changes_nothing() -> None:
    m = KVCacheManager(cfg(), vocab_size=1000)
    m.add_requests([1, 2], [seq(9), seq(5)])
    m.get_computed_tokens([1])
    assert m.allocate_slots([1], [9]).tolist() == [True]
    base = snapshot(m)
    cases: list[tuple[type[Exception], Any]] = [
        (errors.DuplicateRequestError, lambda: m.add_requests([1], [seq(3)])),
        (errors.DuplicateRequestError, lambda: m.add_requests([5, 5], [seq(3), seq(3)])),
        (errors.InvalidTokenError, lambda: m.add_requests([5], [toks(1, -1)])),
        (errors.InvalidTokenError, lambda: m.add_requests([5], [toks(1, 1000)])),
        (errors.InvalidTokenError, lambda: m.add_requests([5], [np.array([2**40])])),
        (errors.InvalidArgumentError, lambda: m.add_requests([5], [np.array([1.5])])),
        (errors.InvalidArgumentError, lambda: m.add_requests([5], [toks()])),
        (errors.InvalidArgumentError, lambda: m.add_requests([5, 6], seq(4), [0, 4])),
        (errors.InvalidArgumentError, lambda: m.add_requests([5], seq(4), [0, 3])),
        (errors.InvalidArgumentError, lambda: m.add_requests([5], [seq(3)], lora_ids=[1, 2])),
        (errors.InvalidArgumentError, lambda: m.add_requests(np.array([1.0]), [seq(3)])),
        (errors.UnknownRequestError, lambda: m.allocate_slots([3], [1])),
        (errors.DuplicateRequestError, lambda: m.allocate_slots([1, 1], [0, 0])),
        (errors.InvalidArgumentError, lambda: m.allocate_slots([1], [1, 2])),
        (errors.InvalidArgumentError, lambda: m.allocate_slots([1], [-1])),
        (errors.InvalidArgumentError, lambda: m.allocate_slots([1], [1])),  # unknown token
        (errors.InvalidArgumentError, lambda: m.allocate_slots([1, 2], [0, 6])),
        (errors.UnknownRequestError, lambda: m.free([1, 3])),
        (errors.UnknownRequestError, lambda: m.preempt([3])),
        (errors.RequestStateError, lambda: m.get_computed_tokens([2, 1])),
        (errors.UnknownRequestError, lambda: m.append_tokens([3], [toks(1)])),
        (errors.InvalidTokenError, lambda: m.append_tokens([1], [toks(-5)])),
        (errors.UnknownGroupError, lambda: m.block_table(3, [1])),
        (errors.UnknownRequestError, lambda: m.block_table(0, [4])),
        (errors.UnknownRequestError, lambda: m.block_hashes(0, 4)),
    ]
    for exc, call in cases:
        with pytest.raises(exc):
            call()
        assert snapshot(m) == base, exc
    m.free([1])
    with pytest.raises(errors.UnknownRequestError):
        m.allocate_slots([1], [1])


def test_out_of_range_ints_are_refused_by_value_never_wrapped() -> None:
    m = KVCacheManager(cfg())
    m.add_requests([1], [seq(5)])
    base = snapshot(m)
    top = 2**64 - 1
    u64 = np.array([top], dtype=np.uint64)
    calls: list[tuple[str, Any]] = [
        ("request ids", lambda: m.free(u64)),
        ("request ids", lambda: m.free([top])),
        ("request ids", lambda: m.allocate_slots(top, [1])),
        ("num_new_tokens", lambda: m.allocate_slots([1], u64)),
        ("num_lookahead_tokens", lambda: m.allocate_slots([1], [1], u64)),
        ("positions", lambda: m.slot_mapping(0, [1], u64)),
        ("offsets", lambda: m.add_requests([7], seq(2), np.array([0, top], np.uint64))),
        ("encoder_lens", lambda: m.add_requests([7], [seq(2)], encoder_lens=u64)),
        ("LoRA ids", lambda: m.add_requests([7], [seq(2)], lora_ids=[top])),
        ("token ids", lambda: m.add_requests([7], [u64])),
        ("group", lambda: m.block_table(top, [1])),
        ("req_id", lambda: m.block_hashes(0, top)),
        ("req_id", lambda: top in m),
    ]
    for what, call in calls:
        with pytest.raises(errors.InvalidArgumentError, match=what) as e:
            call()
        assert str(top) in str(e.value), (what, str(e.value))
        assert "-1" not in str(e.value)
        assert snapshot(m) == base, what


def test_extreme_offsets_and_counts_do_not_overflow() -> None:
    m = KVCacheManager(cfg())
    m.add_requests([1], [seq(10)])
    m.get_computed_tokens([1])
    assert m.allocate_slots([1], [1]).tolist() == [True]
    base = snapshot(m)
    # 5 -> -2**63 wraps to a positive step when subtracted; it must read as decreasing.
    with pytest.raises(errors.InvalidArgumentError, match="offsets"):
        m.add_requests([2, 3, 4, 5], seq(10), [0, 5, -(2**63), -1, 10])
    with pytest.raises(errors.InvalidArgumentError, match="offsets"):
        m.append_tokens([1, 1], seq(4), [0, 2**63 - 1, 4])
    # 1 computed + (2**63 - 1) new wraps negative in i64: still more than it knows.
    with pytest.raises(errors.InvalidArgumentError, match="exceeds"):
        m.allocate_slots([1], [2**63 - 1])
    assert snapshot(m) == base
    assert m.stats().alloc_failures == 0


def test_huge_max_blocks_is_an_error_not_an_allocation() -> None:
    m = KVCacheManager(cfg())
    m.add_requests([1], [seq(5)])
    for width in (2**24 + 1, 2**40, 2**63 - 1):
        with pytest.raises(errors.InvalidArgumentError, match="max_blocks"):
            m.block_table(0, [1], max_blocks=width)
    with pytest.raises(errors.InvalidArgumentError, match="does not fit in memory"):
        m.block_table(0, np.ones(2**22, dtype=np.int64), max_blocks=2**24)
    assert m.block_table(0, [1], max_blocks=7).shape == (1, 7)


def test_duplicate_ids_within_one_call_are_named_as_such() -> None:
    m = KVCacheManager(cfg())
    m.add_requests([1], [seq(5)])
    for call in (
        lambda: m.allocate_slots([1, 1], [1, 1]),
        lambda: m.get_computed_tokens([1, 1]),
        lambda: m.free([1, 1]),
        lambda: m.add_requests([5, 5], [seq(3), seq(3)]),
    ):
        with pytest.raises(errors.DuplicateRequestError, match="more than once in the call"):
            call()
    with pytest.raises(errors.DuplicateRequestError, match='"1" is already present'):
        m.add_requests([1], [seq(3)])
    assert m.request_ids().tolist() == [1]


def test_bad_configs() -> None:
    with pytest.raises(errors.InvalidArgumentError):
        KVCacheManager(ManagerConfig((ManagerGroup("sliding_window", 4, 8),)))
    with pytest.raises(errors.InvalidArgumentError):
        KVCacheManager(ManagerConfig((ManagerGroup("encoder_only", 4, 8),)))
    with pytest.raises(errors.InvalidArgumentError):
        KVCacheManager(ManagerConfig((ManagerGroup("full_attention", 0, 8),)))
    with pytest.raises(errors.InvalidArgumentError):
        KVCacheManager(cfg(mode="sometimes"))
    with pytest.raises(errors.InvalidArgumentError):
        KVCacheManager(ManagerConfig(()))
    with pytest.raises(errors.InvalidArgumentError):
        KVCacheManager(cfg(), hash_seed=-1)


@pytest.mark.parametrize("churn", [1, 2])
def test_reuse_policy_keeps_a_finished_turn_through_churn_without_spare_slots(churn: int) -> None:
    # Under "reuse" each churned request's checkpoint at 8 is interior (it moved past
    # it; its prompt end is 16) and loses its hash at release, so the churn reuses
    # those blocks and A's turn end survives with no spare slots ("lru": 0 above).
    assert _churn_then_rehit(spare=0, churn=churn, policy="reuse") == 16


def test_list_of_prompts_checked_like_the_flat_form() -> None:
    """The list form (each prompt copied once into its request) refuses what the flat
    form refuses, names a bad token's position through the batch, and adds nothing."""
    m = KVCacheManager(cfg(), vocab_size=100)
    with pytest.raises(errors.InvalidTokenError, match="position 5"):
        m.add_requests([1, 2], [toks(1, 2, 3), toks(4, 5, 100)])
    with pytest.raises(errors.InvalidTokenError, match="position 4"):
        m.add_requests([1, 2], [[1, 2, 3], [4, 1 << 40]])
    with pytest.raises(errors.HybridKVError, match="needs a token"):
        m.add_requests([1, 2], [toks(1, 2), toks()])
    with pytest.raises(errors.HybridKVError):
        m.add_requests([1, 2], [toks(1, 2)])
    with pytest.raises(errors.DuplicateRequestError):
        m.add_requests([1, 1], [toks(1, 2), toks(3)])
    assert m.num_requests == 0
    m.add_requests([1, 2], [toks(1, 2, 3, 4, 5), [6, 7]])
    flat = KVCacheManager(cfg(), vocab_size=100)
    flat.add_requests([1, 2], toks(1, 2, 3, 4, 5, 6, 7), [0, 5, 7])
    assert m.num_requests == flat.num_requests == 2
    for mm in (m, flat):
        assert mm.get_computed_tokens([1, 2]).tolist() == [0, 0]
        assert mm.allocate_slots([1, 2], [5, 2]).tolist() == [True, True]
    for g in range(3):
        assert m.block_table(g, [1, 2]).tolist() == flat.block_table(g, [1, 2]).tolist()
