"""Elastic pools per page class: groups whose natural pages are equal (same bytes, same
block size) share one pool in the arena, as vLLM's layout shares one for every group;
groups with distinct pages keep their own (``construct.rs`` ``page_classes``,
:func:`hybridkv.cache.arena_plan.pool_classes`), and so does a sliding window whose
floor the planner capped (``hybridkv.planning.elastic``; the plan's ``arena.pool_of``
goes to the manager)."""

from __future__ import annotations

import numpy as np
import pytest
from hybridkv.arena_plan import ArenaPlan, layout_arena, pool_classes
from hybridkv.errors import InvalidArgumentError
from hybridkv.manager import KVCacheManager, ManagerConfig, ManagerGroup
from hybridkv.models import load_model
from hybridkv.planner import plan_memory

KW = {
    "max_num_seqs": 64,
    "max_model_len": 32768,
    "max_num_batched_tokens": 8192,
    "layout": "elastic",
}


def test_gpt_oss_plan_and_manager_share_one_pool() -> None:
    plan = plan_memory(load_model("gpt-oss-20b"), memory_bytes=8 << 30, **KW)
    pages = {g.page_size_bytes for g in plan.groups}
    assert len(pages) == 1 and plan.arena is not None
    assert plan.arena.pool_of == (0, 0)
    assert plan.arena.to_dict()["pool_of"] == [0, 0]
    m = KVCacheManager(plan)
    assert m.pool_of == (0, 0)
    info = m.arena_info()
    assert info is not None and set(info["owners"]) <= {0, -1}
    # The window's floor is still reported per group.
    assert [g.floor_blocks for g in plan.groups] == list(plan.arena.floor_blocks)


def test_plan_table_says_which_groups_share(capsys: pytest.CaptureFixture[str]) -> None:
    from hybridkv.cli import main

    assert main(["plan", "--model", "gpt-oss-20b", "--memory", "8GiB", "--layout", "elastic"]) == 0
    out = capsys.readouterr().out
    assert "groups 0+1 share one pool" in " ".join(out.split())
    assert main(["plan", "--model", "qwen3-next-80b-a3b", "--memory", "32GiB"]) == 0
    assert "one per group" in " ".join(capsys.readouterr().out.split())
    # Gemma-2-9B: equal pages, but the window's floor is capped: its own pool.
    assert main(["plan", "--model", "gemma-2-9b", "--memory", "32GiB", "--max-num-seqs", "64"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "group 0 keeps its own pool beside an equal page" in out
    assert "share one pool" not in out


def test_distinct_pages_keep_their_own_pools() -> None:
    for name, mem in (("qwen3-next-80b-a3b", 16 << 30), ("gemma-3-27b-it", 16 << 30)):
        plan = plan_memory(load_model(name), memory_bytes=mem, **KW)
        assert plan.arena is not None
        n = len(plan.groups)
        assert plan.arena.pool_of == tuple(range(n)), name
        assert KVCacheManager(plan).pool_of == tuple(range(n)), name


def test_pool_classes_rule() -> None:
    assert pool_classes([10, 10, 40], [4, 4, 4], ["attention", "attention", "state"]) == (0, 0, 1)
    # Equal bytes but another block size, or a state group: no sharing.
    assert pool_classes([10, 10], [4, 8], ["attention", "attention"]) == (0, 1)
    assert pool_classes([10, 10], [4, 4], ["attention", "state"]) == (0, 1)
    assert pool_classes([40, 10, 40, 10], [4] * 4, ["attention"] * 4) == (0, 1, 0, 1)


def test_layout_arena_floors_per_pool() -> None:
    # Window floor 5 beside a growing full group at the same page: one pool, floor from
    # the bottom, the growing group holds everything but the window's floor.
    a = layout_arena(1000, 80, 40, [10, 10], [0, 5], [True, False], (0, 0))
    assert a.floor_regions == (1,)  # the grid starts at the null area: [40, 120), 8 ids
    assert a.growing_blocks == 96 - 5
    assert a.elastic_bytes == 1000 - 40 - 5 * 10
    # The same groups in two pools: the window's floor from the top of the grid, whole
    # regions first ([920, 1000) holds 8 ids; a window pool gets no span: its null
    # block is read, see arena_plan's module docs).
    b = layout_arena(1000, 80, 40, [10, 10], [0, 5], [True, False])
    assert b.floor_regions == (0, 1) and b.growing_blocks == 96 - 8


def _plan(pages: tuple[int, int]) -> object:
    class _P:
        groups = (
            ManagerGroup("full_attention", 4, 1),
            ManagerGroup("sliding_window", 4, 1, window=8),
        )
        mamba_cache_mode = "align"
        arena = ArenaPlan(
            memory_bytes=1000,
            region_bytes=80,
            null_bytes=40,
            num_regions=13,
            page_bytes=pages,
            floor_blocks=(0, 3),
            floor_regions=(0, 0),
            growing_blocks=0,
            elastic_bytes=0,
            waste_bytes=0,
            worst_waste_bytes=0,
        )

    return _P()


def _run(m: KVCacheManager, rid: int, toks: np.ndarray) -> bool:
    m.add_requests([rid], [toks])
    m.get_computed_tokens([rid])
    return bool(m.allocate_slots([rid], [len(toks)])[0])


def test_equal_pages_one_lru_in_elastic() -> None:
    m = KVCacheManager(_plan((10, 10)), enable_prefix_caching=True)
    assert m.pool_of == (0, 0)
    toks = np.arange(40, dtype=np.int32)
    assert _run(m, 1, toks)
    m.free([1])
    s = m.stats()
    # Both groups report the one pool: the window's cached tail is in it beside the
    # full group's blocks, and the free queue is one.
    assert s.num_cached[0] == s.num_cached[1] >= 12
    assert m.free_queue(0).tolist() == m.free_queue(1).tolist()
    m.add_requests([2], [toks])
    assert m.get_computed_tokens([2]).tolist() == [36]
    m.free([2])
    # 192 new tokens need every block (48 per group): both groups' cached blocks go
    # from the one queue, no region moves.
    assert _run(m, 3, np.arange(1000, 1192, dtype=np.int32))
    assert m.stats().num_cached[0] == 0
    info = m.arena_info()
    assert info is not None and info["moves"] == 0
    m.check_invariants()


def test_mixed_pages_two_pools_in_elastic() -> None:
    m = KVCacheManager(_plan((10, 20)), enable_prefix_caching=True)
    assert m.pool_of == (0, 1)
    assert _run(m, 1, np.arange(40, dtype=np.int32))
    m.free([1])
    s = m.stats()
    assert s.num_cached[0] == 10 and s.num_cached[1] < s.num_cached[0] + 10
    assert m.free_queue(0).tolist() != m.free_queue(1).tolist()
    m.check_invariants()


def test_static_pool_of_is_checked() -> None:
    def cfg(*groups: ManagerGroup) -> ManagerConfig:
        return ManagerConfig(groups, "align")

    full = ManagerGroup("full_attention", 4, 20)
    win = ManagerGroup("sliding_window", 4, 20, window=8)
    m = KVCacheManager(cfg(full, win), pool_of=[0, 0])
    assert m.pool_of == (0, 0)
    bad = [
        (cfg(full, ManagerGroup("sliding_window", 4, 21, window=8)), [0, 0]),  # sizes differ
        (cfg(full, ManagerGroup("state", 4, 20)), [0, 0]),  # a state group
        (cfg(full, win), [1, 0]),  # not numbered by first group
        (cfg(full, win), [0]),  # one entry short
        (cfg(full, win), [0, -1]),
    ]
    for c, p in bad:
        with pytest.raises(InvalidArgumentError):
            KVCacheManager(c, pool_of=p)
    with pytest.raises(InvalidArgumentError):
        KVCacheManager(cfg(full, win), pool_of=[0, 0], shared_pool=True)


def test_scheduler_counts_a_shared_pool_and_holds_back_the_window_floor() -> None:
    from hybridkv.serving.scheduler import Scheduler

    plan = plan_memory(load_model("gpt-oss-20b"), memory_bytes=8 << 30, **KW)
    m = KVCacheManager(plan)
    # Without the whole-sequence check (vLLM's scheduler_reserve_full_isl, on by
    # default) admission holds the window's floor back, less what running requests hold.
    s = Scheduler(m, max_num_batched_tokens=8192, max_num_seqs=64, reserve_full_prompt=False)
    window = next(g for g in plan.groups if not g.grows)
    # One admission row for the pool both groups share; the window's floor held back,
    # at most 9 blocks (its last 127 tokens at block 16) per running request.
    assert s._row_of is not None and s._row_of.tolist() == [0, 0]
    assert s._reserve == [(0, window.floor_blocks, 16, 9)]
    free = int(m.obtainable_blocks()[0])
    none = np.zeros(0, dtype=np.int64)
    room = s._room(none, none)
    assert room is not None and room.tolist() == [free - window.floor_blocks]
    # Two running requests at 100 and 1000 tokens, 16 new each: they hold 7 and 9 window
    # blocks and need 1 + 1 full and 1 + 1 window blocks this step.
    c = np.asarray([100, 1000], dtype=np.int64)
    n = np.asarray([16, 16], dtype=np.int64)
    room = s._room(c, n)
    assert room is not None and room.tolist() == [free - 4 - (window.floor_blocks - 16)]
    # With it, a new request's own window blocks are in its whole-sequence need (as many
    # as its full group's): nothing more is held back for requests not yet running.
    d = Scheduler(KVCacheManager(plan), max_num_batched_tokens=8192, max_num_seqs=64)
    assert d.reserve_full_prompt and d._reserve == s._reserve
    room = d._room(none, none)
    assert room is not None and room.tolist() == [free]
    room = d._room(c, n)
    assert room is not None and room.tolist() == [free - 4]
    # Separate pools (Qwen3-Next): no shared row, nothing held back.
    q = plan_memory(load_model("qwen3-next-80b-a3b"), memory_bytes=32 << 30, **KW)
    sq = Scheduler(KVCacheManager(q), max_num_batched_tokens=8192, max_num_seqs=64)
    assert sq._row_of is None and sq._reserve == []


def test_capped_window_keeps_its_own_pool() -> None:
    """The pooling rule (``hybridkv.planning.elastic``): a window whose floor the planner
    caps at what the growing group holds keeps its own pool; an uncapped one shares."""
    model = load_model("gemma-2-9b")
    for gib, pooled in ((32, False), (160, False), (200, True)):
        plan = plan_memory(model, memory_bytes=gib << 30, **KW)
        assert plan.arena is not None
        window = plan.groups[0]
        assert window.kind == "sliding_window" and plan.groups[1].grows
        assert plan.groups[0].page_size_bytes == plan.groups[1].page_size_bytes
        # Capped exactly where the windows' tight bound exceeds the growing blocks.
        assert (window.sizing == "capped") is (not pooled), gib
        assert plan.arena.pool_of == ((0, 0) if pooled else (0, 1)), gib
        m = KVCacheManager(plan)
        assert m.pool_of == plan.arena.pool_of, gib
        if not pooled:
            # Its own pool holds its (capped) floor in regions of its own.
            assert window.floor_blocks <= plan.arena.growing_blocks
            info = m.arena_info()
            assert info is not None and 0 in set(info["owners"])
            assert m.stats().num_free[0] >= window.floor_blocks
    # gpt-oss-20b's 128-token window is uncapped at every size: one pool.
    for gib in (8, 16):
        plan = plan_memory(load_model("gpt-oss-20b"), memory_bytes=gib << 30, **KW)
        assert plan.groups[0].sizing != "capped" and plan.arena is not None
        assert plan.arena.pool_of == (0, 0)


def test_pool_classes_apart() -> None:
    kinds = ["attention"] * 3
    assert pool_classes([10, 10, 10], [4] * 3, kinds) == (0, 0, 0)
    assert pool_classes([10, 10, 10], [4] * 3, kinds, apart=[0]) == (0, 1, 1)
    assert pool_classes([10, 10, 10], [4] * 3, kinds, apart=[1]) == (0, 1, 0)
    assert pool_classes([10, 10, 10], [4] * 3, kinds, apart=[0, 1, 2]) == (0, 1, 2)


def test_arena_pool_of_is_checked() -> None:
    """An arena's explicit ``pool_of`` (the plan's): sharing needs equal pages and block
    sizes and no state group; one pool each is always allowed."""

    class _P:
        def __init__(self, pages: tuple[int, int], pool_of: tuple[int, ...]) -> None:
            base = _plan(pages)
            self.groups = base.groups  # type: ignore[attr-defined]
            self.mamba_cache_mode = "align"
            self.arena = ArenaPlan(
                **{**base.arena.__dict__, "pool_of": pool_of}  # type: ignore[attr-defined]
            )

    assert KVCacheManager(_P((10, 10), (0, 1))).pool_of == (0, 1)
    assert KVCacheManager(_P((10, 10), (0, 0))).pool_of == (0, 0)
    assert KVCacheManager(_P((10, 20), (0, 1))).pool_of == (0, 1)
    for pages, p in (((10, 20), (0, 0)), ((10, 10), (1, 0)), ((10, 10), (0,))):
        with pytest.raises(InvalidArgumentError):
            KVCacheManager(_P(pages, p))
    # Separate pools in the arena: each keeps its own free queue.
    m = KVCacheManager(_P((10, 10), (0, 1)), enable_prefix_caching=True)
    assert _run(m, 1, np.arange(40, dtype=np.int32))
    m.free([1])
    assert m.free_queue(0).tolist() != m.free_queue(1).tolist()
    m.check_invariants()


def test_scheduler_with_a_window_in_its_own_pool() -> None:
    from hybridkv.serving.scheduler import Scheduler

    plan = plan_memory(load_model("gemma-2-9b"), memory_bytes=32 << 30, **KW)
    s = Scheduler(KVCacheManager(plan), max_num_batched_tokens=8192, max_num_seqs=64)
    # No shared admission row and no floor held back: the window's pool holds it.
    assert s._row_of is None and s._reserve == []
