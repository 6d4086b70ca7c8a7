"""Stateful property test of the elastic arena and cross-group allocation.

A hypothesis machine drives an elastic :class:`hybridkv.KVCacheManager` (full attention
beside a state group and a sliding window, small pages, one arena; the full and window
groups have equal pages, so they share one pool; a second machine gives the window
another page, three pools) with random
admissions, steps, decodes, frees, preemptions and junk input, and checks it after
every step against a plain-Python model of the arena (:class:`Layout`: the state
pool's floor one span of exactly its pages at the top, its view's base chosen so its
pages tile that span; below it a grid of regions at multiples of ``region_bytes`` from
the null area; every other pool's view based at ``null mod page``; ids lying wholly
inside one region, block 0 never in one):

- no byte belongs to two live blocks (every non-null block a table holds, mapped to its
  bytes from its group's base, is disjoint from every other live block of any group);
- every block id in a table lies in a region its group's pool owns now (inside its view);
- floors are always held (each pool backs at least the sum of its groups' floors) and a
  floor span never leaves its pool;
- blocks in use are never freed by a region move (reference counts equal the
  references the tables hold; the Rust invariant check);
- effective floors (``set_floor_needs``: per group a need up to its floor, a pool's
  effective floor the sum over its groups) are always held: a pool backs at least its
  effective floor, so a request counted in it never starves; a call that cannot reach
  a floor returns False and changes nothing; bad needs (above a floor, a need for a
  growing group, the wrong length, negative) raise and change nothing;
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

#: The state page (36 B) divides neither the region nor the arena: its span's base is
#: not 0 and its pages cut grid regions unevenly.
PAGES = (10, 36, 10)
KINDS = ("full_attention", "state", "sliding_window")
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
        num_regions=0,
        page_bytes=pages,
        floor_blocks=FLOORS,
        floor_regions=(0, 0, 0),
        growing_blocks=0,
        elastic_bytes=0,
        waste_bytes=0,
        worst_waste_bytes=0,
    )
    return _Plan(groups, "align", arena)


class Layout:
    """Reference arena layout for pages ``pages`` in pools ``pools`` (plain Python)."""

    def __init__(self, pages: tuple[int, ...], pools: tuple[int, ...]) -> None:
        n = max(pools) + 1
        self.pools = pools
        self.ppage = {pools[g]: p for g, p in enumerate(pages)}
        floor = [sum(f for g, f in enumerate(FLOORS) if pools[g] == q) for q in range(n)]
        # A span for a pool of state groups only, all with floors (nothing reads their
        # null blocks); stacked down from the top in pool order.
        spanned = [
            all(KINDS[g] == "state" and FLOORS[g] > 0 for g in range(len(pools)) if pools[g] == q)
            for q in range(n)
        ]
        self.base = [NULL % self.ppage[q] for q in range(n)]
        spans: list[tuple[int, int, int]] = []
        top = MEMORY
        anchor = next(self.ppage[q] for q in range(n) if not spanned[q])
        phase = NULL
        period = REGION + 1
        for q in range(n):
            if spanned[q]:
                p = self.ppage[q]
                s = top - floor[q] * p
                if not spans:
                    # Lowered until some byte x >= NULL is a page edge of both the
                    # anchor (pages from NULL) and this pool (pages from s): by search.
                    def edge(x: int, s: int = s, p: int = p) -> bool:
                        return (x - NULL) % anchor == 0 and (x - s) % p == 0

                    while not any(edge(x) for x in range(NULL, NULL + anchor * p)):
                        s -= 1
                    phase = next(x for x in range(NULL, NULL + anchor * p) if edge(x))
                    period = next(x for x in range(1, anchor * p + 1) if edge(phase + x))
                    if period <= REGION:
                        # The latest common edge within one region of the null area.
                        phase = max(x for x in range(NULL + 1, NULL + REGION + 1) if edge(x))
                self.base[q] = s % p
                spans.append((q, s, top))
                top = s
        # Grid cuts: NULL, then every x = phase (mod REGION) in (NULL, top).
        cuts = [NULL] + [x for x in range(NULL + 1, top) if (x - phase) % REGION == 0]
        grid = list(itertools.pairwise([*cuts, top]))
        self.regions = grid + [(s, e) for _, s, e in reversed(spans)]
        self.num_grid = len(grid)
        self.span_of = {q: len(self.regions) - 1 - i for i, (q, _, _) in enumerate(spans)}
        self.spans = [next(((s, e) for p, s, e in spans if p == q), None) for q in range(n)]

    def bytes_of(self, g: int, b: int) -> tuple[int, int]:
        q = self.pools[g]
        s = self.base[q] + b * self.ppage[q]
        return s, s + self.ppage[q]

    def region_of(self, g: int, b: int) -> int | None:
        """The region holding all of block ``b``'s bytes, or None (edge, null block)."""
        if b == 0:
            return None
        lo, hi = self.bytes_of(g, b)
        return next((r for r, (s, e) in enumerate(self.regions) if s <= lo and hi <= e), None)


class ElasticMachine(RuleBasedStateMachine):
    #: Page per group, and the pools the manager must make of them.
    pages: tuple[int, ...] = PAGES
    pools: tuple[int, ...] = (0, 1, 0)

    def __init__(self) -> None:
        super().__init__()
        self.m = KVCacheManager(_plan(self.pages), enable_prefix_caching=True, hash_seed=0)
        self.reqs: dict[int, int] = {}  # id -> tokens known
        self.next_id = 1
        # Per pool: the effective floor the model expects (the planned floor at first).
        n = max(self.pools) + 1
        self.eff = [sum(f for g, f in enumerate(FLOORS) if self.pools[g] == q) for q in range(n)]

    def snapshot(self) -> tuple[object, ...]:
        ids = self.m.request_ids()
        tables = tuple(self.m.block_table(g, ids).tobytes() for g in range(3))
        return (
            tables,
            tuple(self.m.num_computed_tokens(ids).tolist()),
            tuple(self.m.stats().num_in_use),
            tuple(self.m.arena_info()["owners"]),  # type: ignore[index]
            tuple(self.m.effective_floors()),
            tuple(self.m._core.present_blocks()),
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

    @rule(data=st.data())
    def set_needs(self, data: st.DataObject) -> None:
        needs = [data.draw(st.integers(0, f)) for f in FLOORS]
        before = self.snapshot()
        want = [
            sum(x for g, x in enumerate(needs) if self.pools[g] == q) for q in range(len(self.eff))
        ]
        short = [
            q for q, w in enumerate(want) if self.m._core.present_blocks()[self.pools.index(q)] < w
        ]
        if self.m.set_floor_needs(np.asarray(needs, dtype=np.int64)):
            self.eff = want
        else:
            assert short, "refused though every pool already held its new floor"
            assert self.snapshot() == before

    @rule(
        kind=st.sampled_from(["above_floor", "growing_need", "short_list", "negative"]),
        data=st.data(),
    )
    def bad_needs(self, kind: str, data: st.DataObject) -> None:
        needs: list[int] = list(FLOORS)
        if kind == "above_floor":
            g = data.draw(st.sampled_from([1, 2]))
            needs[g] = FLOORS[g] + data.draw(st.integers(1, 5))
        elif kind == "growing_need":
            needs[0] = 1
        elif kind == "short_list":
            needs = needs[:2]
        else:
            needs[2] = -1
        before = self.snapshot()
        try:
            self.m.set_floor_needs(needs)
        except HybridKVError:
            pass
        else:
            raise AssertionError(f"{kind} was accepted")
        assert self.snapshot() == before

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
        ref = Layout(self.pages, pool)
        assert info["num_regions"] == len(ref.regions)
        assert info["num_grid_regions"] == ref.num_grid
        assert list(info["bases"]) == ref.base
        assert [tuple(x) if x else None for x in info["floor_spans"]] == ref.spans
        for q, r in ref.span_of.items():
            assert owners[r] == q, f"pool {q}'s floor span {r} left it"
        eff = self.m.effective_floors()
        assert eff == self.eff
        for g in range(len(FLOORS)):
            floor = sum(f for h, f in enumerate(FLOORS) if pool[h] == pool[g])
            assert eff[pool[g]] <= floor
            # The effective floor is held: what its requests were promised is there.
            assert present[g] >= eff[pool[g]], f"group {g}'s pool below its effective floor"
        counts = self.m._core.pool_counts()
        ids = self.m.request_ids()
        live: list[tuple[int, int, int, int]] = []
        for g in range(len(self.pages)):
            if not len(ids):
                break
            t = self.m.block_table(g, ids)
            for b in {int(x) for x in t.reshape(-1) if x != 0}:
                assert b < counts[g][0], f"group {g} block {b} outside its view"
                r = ref.region_of(g, b)
                assert r is not None, f"group {g} block {b} straddles a region edge"
                assert owners[r] == pool[g], f"group {g} block {b} in region {r} of {owners[r]}"
                lo, hi = ref.bytes_of(g, b)
                live.append((lo, hi, g, b))
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
    """The plain-Python layout agrees with the manager's views."""
    m = KVCacheManager(_plan(), enable_prefix_caching=True, hash_seed=0)
    info = m.arena_info()
    assert info is not None
    assert m.pool_of == (0, 1, 0)
    ref = Layout(PAGES, m.pool_of)
    # The state floor, 3 pages of 36 B, is the span [892, 1000) (base 892 mod 36 = 28);
    # the grid of 80 B regions covers [40, 892), cut where a 10 B page edge (from 40)
    # meets a 36 B one (from 28): at 100, so [40, 100), [100, 180), ..., [820, 892).
    assert ref.spans == [None, (892, 1000)] and ref.base == [0, 28]
    assert ref.regions[:2] == [(40, 100), (100, 180)]
    assert ref.regions[ref.num_grid - 1] == (820, 892)
    assert info["num_regions"] == len(ref.regions) == 12
    assert list(info["bases"]) == ref.base
    counts = m._core.pool_counts()
    for g, page in enumerate(PAGES):
        q = m.pool_of[g]
        assert counts[g][0] == (MEMORY - ref.base[q]) // page  # the view from its base
    # The pool of the full and window groups (a growing group in it) takes its floor
    # from the bottom of the grid ([40, 120) holds 8 blocks of 10 B); the state pool
    # holds exactly its span.
    owners = info["owners"]
    assert list(owners) == [0] + [-1] * 10 + [1]
    assert m._core.present_blocks()[1] == 3
