"""vLLM's prefix-caching cases, re-expressed on a full + sliding-window + state model.

Full hit, partial hit, hit after eviction, LRU eviction order, and a sliding-window
group that needs only the blocks of its window before the hit (and shortens the hit
when one of those is gone). Block size 4, window 8, state checkpoints in align mode;
prefills run in one-block chunks so a state checkpoint is cached at every boundary.
"""

from __future__ import annotations

import numpy as np
from hybridkv import KVCacheManager, ManagerConfig, ManagerGroup
from hybridkv.hashes import to_ints
from hybridkv.kv_events import BlockRemoved

BS = 4
FULL, SWA, STATE = 0, 1, 2


def manager(
    full: int = 64, swa: int = 64, state: int = 64, checkpoint_policy: str = "lru"
) -> KVCacheManager:
    """Scenario manager. Default ``checkpoint_policy="lru"``: these scenarios hit
    interior state checkpoints (a prefill chunk end), which ``"reuse"`` drops at
    release (``tests/test_checkpoint_policy.py`` covers that policy)."""
    cfg = ManagerConfig(
        (
            ManagerGroup("full_attention", BS, full),
            ManagerGroup("sliding_window", BS, swa, window=8),
            ManagerGroup("state", BS, state),
        ),
        "align",
    )
    return KVCacheManager(cfg, enable_kv_events=True, checkpoint_policy=checkpoint_policy)


def prefill(m: KVCacheManager, rid: int, tokens: list[int], chunk: int = BS) -> int:
    m.add_requests([rid], [np.array(tokens, dtype=np.int32)])
    hit = int(m.get_computed_tokens([rid])[0])
    c = hit
    while c < len(tokens):
        n = min(chunk, len(tokens) - c)
        assert m.allocate_slots([rid], [n]).tolist() == [True]
        c += n
    m.check_invariants()
    return hit


def table(m: KVCacheManager, g: int, rid: int) -> list[int]:
    return [int(x) for x in m.block_table(g, [rid])[0]]


def hash_to_block(m: KVCacheManager, g: int) -> dict[int, int]:
    ids, hs = m.cached_blocks(g)
    return dict(zip(to_ints(hs), ids.tolist(), strict=True))


P = list(range(1, 15))  # 14 tokens: 3 full blocks + 2


def test_full_hit_shares_blocks_in_every_group() -> None:
    m = manager()
    prefill(m, 1, P)
    a_full, a_swa, a_state = table(m, FULL, 1), table(m, SWA, 1), table(m, STATE, 1)
    m.add_requests([2], [np.array(P, dtype=np.int32)])
    # Capped at 13 tokens, rounded down to the last position all groups serve: 12.
    assert m.get_computed_tokens([2]).tolist() == [12]
    assert table(m, FULL, 2) == a_full[:3]
    # The window before position 12 is tokens 5..11: blocks 1 and 2 only.
    assert table(m, SWA, 2) == [0, a_swa[1], a_swa[2]]
    # The state checkpoint after 12 tokens, at entry 2.
    assert table(m, STATE, 2) == [0, 0, a_state[2]]
    refs = m.ref_counts(FULL)
    assert [int(refs[b]) for b in a_full[:3]] == [2, 2, 2]
    assert int(m.ref_counts(STATE)[a_state[2]]) == 2
    m.check_invariants()
    st = m.stats()
    assert (st.queries, st.hit_tokens, st.disagreements) == (2, 12, 0)


def test_partial_hit_stops_at_the_first_differing_block() -> None:
    m = manager()
    prefill(m, 1, P)
    a_full = table(m, FULL, 1)
    other = P[:8] + [99] * 6
    m.add_requests([2], [np.array(other, dtype=np.int32)])
    assert m.get_computed_tokens([2]).tolist() == [8]
    assert table(m, FULL, 2) == a_full[:2]
    # SWA block 0 left request 1's window long ago but stays cached, so it serves.
    assert table(m, SWA, 2)[0] != 0
    assert m.allocate_slots([2], [6]).tolist() == [True]
    assert table(m, FULL, 2)[2] not in a_full
    m.check_invariants()


def test_hit_after_eviction_keeps_the_surviving_prefix() -> None:
    m = manager(full=9)  # 8 usable full blocks
    prefill(m, 1, P)  # full blocks ids 1..4 (block 3 partial, uncached)
    assert table(m, FULL, 1) == [1, 2, 3, 4]
    m.free([1])
    # Freed tail first: the uncached partial block 4 goes to the head (it can never be
    # hit), the cached 3, 2, 1 to the tail after the unused blocks.
    assert m.free_queue(FULL).tolist() == [4, 5, 6, 7, 8, 3, 2, 1]
    # Six blocks for another request take 4, 5..8 and then 3: block 2 of P is evicted.
    prefill(m, 2, list(range(100, 124)), chunk=24)
    m.add_requests([3], [np.array(P, dtype=np.int32)])
    assert m.get_computed_tokens([3]).tolist() == [8]
    assert table(m, FULL, 3) == [1, 2]
    m.check_invariants()


def test_lru_eviction_order() -> None:
    m = manager(full=17)
    prefill(m, 1, P)
    q = list(range(200, 213))
    prefill(m, 2, q)
    t1, t2 = table(m, FULL, 1), table(m, FULL, 2)
    h1 = to_ints(m.block_hashes(FULL, 1))
    m.free([1])
    m.free([2])
    queue = m.free_queue(FULL).tolist()
    # Cached blocks: least recently freed first; within a request, its last block
    # first. The partial (uncached) last blocks were put at the head, newest first.
    assert queue[-6:] == t1[2::-1] + t2[2::-1]
    assert queue[:2] == [t2[3], t1[3]]
    m.take_events()
    unused = len(queue) - 8
    # Taking the two uncached blocks, the unused ones and two more evicts request 1's
    # blocks 2 and 1, in that order.
    prefill(m, 3, list(range(300, 300 + 4 * (unused + 4))), chunk=4 * (unused + 4))
    removed = [
        h
        for e in m.take_events()
        if isinstance(e, BlockRemoved) and e.group == FULL
        for h in e.block_hashes
    ]
    assert removed == [h1[2], h1[1]]
    survivors = hash_to_block(m, FULL)
    assert h1[0] in survivors and h1[1] not in survivors
    for h in to_ints(m.block_hashes(FULL, 3))[: unused + 4]:
        assert h in survivors
    m.check_invariants()


def _evict_swa_until(m: KVCacheManager, victims: list[int], rid: int) -> None:
    """Allocate SWA blocks for a fresh request until every block in ``victims`` (SWA
    pool ids) has been handed out again, and no other cached block."""
    queue = m.free_queue(SWA).tolist()
    upto = max(queue.index(b) for b in victims) + 1
    prefill(m, rid, list(range(1000 + 100 * rid, 1000 + 100 * rid + BS * upto)), chunk=BS * upto)


def test_swa_hit_needs_only_the_window() -> None:
    m = manager(swa=12)
    p = list(range(1, 21))  # 20 tokens: 5 full blocks
    prefill(m, 1, p)
    h = to_ints(m.block_hashes(SWA, 1))
    by_hash = hash_to_block(m, SWA)
    early = [by_hash[h[0]], by_hash[h[1]]]  # left the window while request 1 ran
    assert table(m, SWA, 1)[:2] == [0, 0]
    m.free([1])
    _evict_swa_until(m, early, rid=9)
    m.free([9])
    assert h[0] not in hash_to_block(m, SWA) and h[1] not in hash_to_block(m, SWA)
    # Blocks 0 and 1 are gone from the SWA pool, but a hit at 20 needs only tokens
    # 13..19 (blocks 3 and 4): the whole prefix still hits.
    m.add_requests([2], [np.array([*p, 50], dtype=np.int32)])
    assert m.get_computed_tokens([2]).tolist() == [20]
    assert table(m, SWA, 2)[:3] == [0, 0, 0]
    assert m.stats().disagreements == 0
    m.check_invariants()


def test_swa_missing_window_block_shortens_the_hit() -> None:
    m = manager(swa=12)
    p = list(range(1, 21))
    prefill(m, 1, p)
    h = to_ints(m.block_hashes(SWA, 1))
    m.free([1])
    by_hash = hash_to_block(m, SWA)
    _evict_swa_until(m, [by_hash[h[4]]], rid=9)
    m.free([9])
    assert h[4] not in hash_to_block(m, SWA)
    m.add_requests([2], [np.array([*p, 50], dtype=np.int32)])
    # Position 20 needs SWA block 4; 16 needs blocks 2 and 3 (tokens 9..15), both
    # still cached, and the state checkpoint at 16 exists.
    # (Request 1 was freed tail first, so blocks 2 and 3 sit behind block 4 in the
    # queue and survive.)
    survivors = hash_to_block(m, SWA)
    assert h[2] in survivors and h[3] in survivors
    assert m.get_computed_tokens([2]).tolist() == [16]
    st = m.stats()
    assert st.disagreements == 1
    assert st.group_hit_tokens[FULL] == 20
    m.check_invariants()


def test_state_checkpoint_must_exist_at_the_hit() -> None:
    m = manager()
    p = list(range(1, 15))
    # One 14-token chunk: the only state checkpoint is none (14 is mid-block).
    prefill(m, 1, p, chunk=14)
    m.free([1])
    m.add_requests([2], [np.array(p, dtype=np.int32)])
    assert m.get_computed_tokens([2]).tolist() == [0]
    st = m.stats()
    assert st.group_hit_tokens[FULL] == 12 and st.group_hit_tokens[STATE] == 0
    assert st.disagreements == 1


def test_shared_prefix_boundary_points_where_the_state_lags() -> None:
    m = manager()
    p = list(range(1, 15))
    prefill(m, 1, p, chunk=14)  # no state checkpoint anywhere
    m.free([1])
    m.add_requests([2], [np.array(p, dtype=np.int32)])
    assert m.get_computed_tokens([2]).tolist() == [0]
    assert m.shared_prefix_boundary([2]).tolist() == [12]
    # Ending a chunk there caches the state checkpoint: the next request hits it.
    assert m.allocate_slots([2], [12]).tolist() == [True]
    assert m.allocate_slots([2], [2]).tolist() == [True]
    m.add_requests([3], [np.array(p, dtype=np.int32)])
    assert m.get_computed_tokens([3]).tolist() == [12]
    assert m.shared_prefix_boundary([3]).tolist() == [0]


def test_unhashed_freed_blocks_are_reused_before_cached_ones() -> None:
    # Issue 13 item 3, as vLLM 0.33 behaves: a 3-block pool, requests of 17, 17 and 5
    # tokens one after the other, then the first two again. Each 17-token request
    # leaves one cached block and one partial (never hittable) block: the partials go
    # to the head of the free queue and are reused first, so both cached blocks survive
    # and the re-sent requests hit 16 tokens each (appending every freed block instead
    # evicts them: 0 and 0).
    cfg = ManagerConfig((ManagerGroup("full_attention", 16, 4),), "align")
    for shared in (False, True):
        m = KVCacheManager(cfg, shared_pool=shared)
        a = list(range(1, 18))
        b = list(range(100, 117))
        c = list(range(200, 205))
        hits = []
        for rid, toks in enumerate([a, b, c, a, b]):
            m.add_requests([rid], [np.array(toks, dtype=np.int32)])
            h = int(m.get_computed_tokens([rid])[0])
            assert m.allocate_slots([rid], [len(toks) - h]).tolist() == [True]
            m.check_invariants()
            m.free([rid])
            hits.append(h)
        assert hits == [0, 0, 0, 16, 16], shared


def test_chunked_local_claims_no_boundary_without_a_cache() -> None:
    """A chunked-local group serves a chunk start with nothing cached; that is not a
    shared prefix, so a fresh request gets no boundary (it used to get 8)."""
    cfg = ManagerConfig(
        (
            ManagerGroup("full_attention", BS, 64),
            ManagerGroup("chunked_local", BS, 64, chunk_size=8),
            ManagerGroup("state", BS, 64),
        ),
        "align",
    )
    m = KVCacheManager(cfg)
    m.add_requests([1], [np.array(P, dtype=np.int32)])
    assert m.get_computed_tokens([1]).tolist() == [0]
    assert m.shared_prefix_boundary([1]).tolist() == [0]
    assert m.stats().disagreements == 0
    assert m.allocate_slots([1], [len(P)]).tolist() == [True]
    m.free([1])
    # Cached now (full and chunked blocks 0..2, no state checkpoint): the boundary is 12.
    m.add_requests([2], [np.array(P, dtype=np.int32)])
    assert m.get_computed_tokens([2]).tolist() == [0]
    assert m.shared_prefix_boundary([2]).tolist() == [12]
