"""Stateful property test of the elastic arena and cross-group allocation.

A hypothesis machine drives an elastic :class:`hybridkv.KVCacheManager` (full attention
beside a state group and a sliding window, small pages, one arena; the full and window
groups have equal pages, so they share one pool; a second machine gives the window
another page, three pools) with random
admissions, steps, decodes, frees, preemptions and junk input, and checks it after
every step against a plain-Python model of the arena (regions at multiples of
``region_bytes`` after the null area, ids lying wholly inside one region):

- no byte belongs to two live blocks (every non-null block a table holds, mapped to its
  bytes, is disjoint from every other live block of any group);
- every block id in a table lies in a region its group's pool owns now (inside its view);
- floors are always held (each pool backs at least the sum of its groups' floors);
- blocks in use are never freed by a region move (reference counts equal the
  references the tables hold; the Rust invariant check);
- bad input raises a HybridKVError and leaves every table and count unchanged.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from hybridkv.arena_plan import ArenaPlan
from hybridkv.errors import HybridKVError
from hybridkv.manager import KVCacheManager, ManagerGroup
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

PAGES = (10, 40, 10)
REGION = 80
NULL = 40
MEMORY = 1000
FLOORS = (0, 3, 4)


@dataclass(frozen=True)
class _Plan:
    groups: tuple[ManagerGroup, ...]
    mamba_cache_mode: str
    arena: ArenaPlan


def _plan(pages: tuple[int, ...] = PAGES) -> _Plan:
    groups = (
        ManagerGroup("full_attention", 4, 1),
        ManagerGroup("state", 4, 1),
        ManagerGroup("sliding_window", 4, 1, window=6),
    )
    arena = ArenaPlan(
        memory_bytes=MEMORY,
        region_bytes=REGION,
        null_bytes=NULL,
        num_regions=-(-MEMORY // REGION) - NULL // REGION,
        page_bytes=pages,
        floor_blocks=FLOORS,
        floor_regions=(0, 0, 0),
        growing_blocks=0,
        elastic_bytes=0,
        waste_bytes=0,
        worst_waste_bytes=0,
    )
    return _Plan(groups, "align", arena)


def region_span(r: int) -> tuple[int, int]:
    """Reference region math: cut at multiples of REGION, after the null area."""
    first = NULL // REGION
    s = (first + r) * REGION
    return max(s, NULL), min(s + REGION, MEMORY)


def region_of(page: int, b: int) -> int | None:
    """The region holding all of block ``b``'s bytes, or None (edge or null area)."""
    lo, hi = b * page, (b + 1) * page
    n = -(-MEMORY // REGION) - NULL // REGION
    for r in range(n):
        s, e = region_span(r)
        if s <= lo and hi <= e:
            return r
    return None


class ElasticMachine(RuleBasedStateMachine):
    #: Page per group, and the pools the manager must make of them.
    pages: tuple[int, ...] = PAGES
    pools: tuple[int, ...] = (0, 1, 0)

    def __init__(self) -> None:
        super().__init__()
        self.m = KVCacheManager(_plan(self.pages), enable_prefix_caching=True, hash_seed=0)
        self.reqs: dict[int, int] = {}  # id -> tokens known
        self.next_id = 1

    def snapshot(self) -> tuple[object, ...]:
        ids = self.m.request_ids()
        tables = tuple(self.m.block_table(g, ids).tobytes() for g in range(3))
        return (
            tables,
            tuple(self.m.num_computed_tokens(ids).tolist()),
            tuple(self.m.stats().num_in_use),
            tuple(self.m.arena_info()["owners"]),  # type: ignore[index]
        )

    @rule(n=st.integers(1, 60), base=st.integers(0, 2))
    def add(self, n: int, base: int) -> None:
        rid = self.next_id
        self.next_id += 1
        toks = np.arange(base * 100, base * 100 + n, dtype=np.int32)
        self.m.add_requests([rid], [toks])
        self.m.get_computed_tokens([rid])
        self.reqs[rid] = n

    @precondition(lambda self: bool(self.reqs))
    @rule(data=st.data(), k=st.integers(1, 40))
    def step(self, data: st.DataObject, k: int) -> None:
        rid = data.draw(st.sampled_from(sorted(self.reqs)))
        done = int(self.m.num_computed_tokens([rid])[0])
        if done == self.reqs[rid]:
            self.m.append_tokens([rid], [np.array([7], dtype=np.int32)])
            self.reqs[rid] += 1
        n = min(k, self.reqs[rid] - done)
        self.m.allocate_slots([rid], [n])

    @precondition(lambda self: bool(self.reqs))
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.reqs)))
        self.m.free([rid])
        del self.reqs[rid]

    @precondition(lambda self: bool(self.reqs))
    @rule(data=st.data())
    def preempt(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.reqs)))
        self.m.preempt([rid])
        self.m.get_computed_tokens([rid])

    @rule(kind=st.sampled_from(["free_unknown", "alloc_negative", "alloc_unknown", "dup_add"]))
    def bad_input(self, kind: str) -> None:
        before = self.snapshot()
        known = sorted(self.reqs)
        try:
            if kind == "free_unknown":
                self.m.free([10**9])
            elif kind == "alloc_negative":
                self.m.allocate_slots(known[:1] or [10**9], [-1])
            elif kind == "alloc_unknown":
                self.m.allocate_slots([*known[:1], 10**9], [1] * (len(known[:1]) + 1))
            else:
                dup = known[:1] or [10**9]
                self.m.add_requests([*dup, *dup], [np.array([1], dtype=np.int32)] * 2)
        except HybridKVError:
            pass
        else:
            raise AssertionError(f"{kind} was accepted")
        assert self.snapshot() == before

    @invariant()
    def arena_invariants(self) -> None:
        self.m.check_invariants()
        info = self.m.arena_info()
        assert info is not None
        owners = info["owners"]
        present = self.m._core.present_blocks()
        pool = self.m.pool_of
        assert pool == self.pools
        for g in range(len(FLOORS)):
            floor = sum(f for h, f in enumerate(FLOORS) if pool[h] == pool[g])
            assert present[g] >= floor, f"group {g}'s pool below its floor"
        ids = self.m.request_ids()
        live: list[tuple[int, int, int, int]] = []
        for g, page in enumerate(self.pages):
            if not len(ids):
                break
            t = self.m.block_table(g, ids)
            for b in {int(x) for x in t.reshape(-1) if x != 0}:
                r = region_of(page, b)
                assert r is not None, f"group {g} block {b} straddles a region edge"
                assert owners[r] == pool[g], f"group {g} block {b} in region {r} of {owners[r]}"
                live.append((b * page, (b + 1) * page, g, b))
        live.sort()
        for (_, e1, g1, b1), (s2, _, g2, b2) in itertools.pairwise(live):
            assert e1 <= s2, f"block {b1} of group {g1} overlaps block {b2} of group {g2}"
        # What a group may still obtain covers what it has free.
        ob = self.m.obtainable_blocks()
        free = self.m.stats().num_free
        assert all(int(o) >= int(f) for o, f in zip(ob, free, strict=True))


ElasticMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=40, deadline=None)
TestElasticMachine = ElasticMachine.TestCase


class MixedPagesMachine(ElasticMachine):
    """The window at another page than full attention: three pools, regions move
    between all of them."""

    pages = (10, 40, 20)
    pools = (0, 1, 2)


MixedPagesMachine.TestCase.settings = settings(
    max_examples=30, stateful_step_count=40, deadline=None
)
TestMixedPagesMachine = MixedPagesMachine.TestCase


def test_region_reference_matches_the_core() -> None:
    """The plain-Python region math agrees with the manager's views."""
    m = KVCacheManager(_plan(), enable_prefix_caching=True, hash_seed=0)
    info = m.arena_info()
    assert info is not None
    assert info["num_regions"] == -(-MEMORY // REGION) - NULL // REGION
    counts = m._core.pool_counts()
    for g, page in enumerate(PAGES):
        assert counts[g][0] == MEMORY // page  # the view spans the whole arena
    # The pool of the full and window groups (a growing group in it) takes its floor
    # from the bottom ([40, 80) holds its 4 blocks of 10 B); the state pool's from the
    # top, whole regions first: [880, 960) and [800, 880) for its 3 blocks of 40 B; the
    # short top region [960, 1000) stays for the growing pool.
    owners = info["owners"]
    assert m.pool_of == (0, 1, 0)
    assert list(owners[-3:]) == [1, 1, -1] and owners[0] == 0
