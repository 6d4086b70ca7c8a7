"""Stateful tests: the Rust pool (and registry) driven beside the Python reference.

After every step the full state must equal the reference's (reference counts, free
queue in LRU order, cached blocks, every hash-map entry in chain order, counts, pending
events) and satisfy issue 3's invariants; every failing call must raise the same named
error as the reference and leave the snapshot exactly as it was. Example and step
counts come from the loaded hypothesis profile (tests/conftest.py).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import hypothesis.strategies as st
import numpy as np
import pytest
from hybridkv import BlockPool, PoolRegistry, errors
from hybridkv.hashes import to_array
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from reference_pool import RefPool, check_state_invariants, rust_state, same_snapshot

# Few distinct hashes so collisions (one hash, several blocks) are common; some use the
# high 64 bits so both halves of the boundary layout are exercised.
HASHES = [0, 1, 2, 3, 1 << 64, (1 << 64) + 1, (1 << 127) + 5, (1 << 128) - 1]
hash_lists = st.lists(st.sampled_from(HASHES), max_size=6)

# Runs and invariant checks per machine; steps = checks - runs (checks also follow setup).
COUNTS: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def report_steps(request: pytest.FixtureRequest) -> Iterator[None]:
    """With HYBRIDKV_REPORT_STEPS=1, print how many steps each machine executed."""
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if os.environ.get("HYBRIDKV_REPORT_STEPS") and reporter is not None:
        for name in ("PoolMachine", "RegistryMachine"):
            runs, checks = COUNTS[name + ".runs"], COUNTS[name + ".checks"]
            reporter.write_line(f"{name}: {runs} runs, {checks - runs} steps")


def attempt(fn: Callable[[], Any]) -> tuple[Any, type[Exception] | None]:
    try:
        return fn(), None
    except errors.HybridKVError as e:
        return None, type(e)


def as_list(x: Any) -> Any:
    return x.tolist() if isinstance(x, np.ndarray) else x


# Malformed arguments: each must raise InvalidArgumentError before anything happens.
BAD_CALLS: list[tuple[str, Callable[[BlockPool], Any]]] = [
    ("negative n", lambda p: p.allocate(-1)),
    ("float n", lambda p: p.allocate(1.0)),
    ("bool n", lambda p: p.allocate(True)),
    ("float ids", lambda p: p.free(np.array([1.0, 2.0]))),
    ("bool ids", lambda p: p.touch(np.array([True]))),
    ("2-D ids", lambda p: p.evict(np.ones((2, 2), np.int32))),
    ("scalar ids", lambda p: p.free(np.int32(1))),
    ("str ids", lambda p: p.touch(["1"])),
    ("ids beyond int32", lambda p: p.free(np.array([1, 2**33], np.int64))),
    ("huge uint64 ids", lambda p: p.evict(np.array([2**64 - 1], np.uint64))),
    ("hashes (n, 3)", lambda p: p.lookup(np.zeros((2, 3), np.uint64))),
    ("hashes 1-D", lambda p: p.lookup(np.zeros(4, np.uint64))),
    ("float hashes", lambda p: p.lookup(np.zeros((1, 2), np.float64))),
    ("negative hashes", lambda p: p.cache_blocks([1], np.array([[-5, 0]], np.int64))),
    ("object hashes", lambda p: p.cache_blocks([1], [[2**70, 0]])),
    ("ids/hashes mismatch", lambda p: p.cache_blocks([1, 2], to_array([1]))),
]


class PoolMachine(RuleBasedStateMachine):
    """One BlockPool against one RefPool."""

    pool: BlockPool
    ref: RefPool

    @initialize(num_blocks=st.integers(1, 20))
    def setup(self, num_blocks: int) -> None:
        self.pool = BlockPool(num_blocks)
        self.ref = RefPool(num_blocks)
        COUNTS["PoolMachine.runs"] += 1

    def both(self, rust: Callable[[], Any], ref: Callable[[], Any]) -> Any:
        """Run one operation on both; same result or same error (and no change)."""
        before = self.pool.snapshot()
        got, got_exc = attempt(rust)
        want, want_exc = attempt(ref)
        assert got_exc is want_exc, f"rust raised {got_exc}, reference {want_exc}"
        if got_exc is not None:
            assert same_snapshot(before, self.pool.snapshot()), "a failed call changed state"
        else:
            assert as_list(got) == as_list(want)
        return got

    def in_use(self) -> list[int]:
        return [b for b, r in enumerate(self.ref.ref) if r > 0]

    def any_ids(self) -> st.SearchStrategy[list[int]]:
        """Ids in and around the valid range: unknown, negative and null ids too."""
        return st.lists(st.integers(-2, self.ref.num_blocks + 1), max_size=5)

    # --- well-formed operations --------------------------------------------------
    @rule(n=st.integers(0, 6))
    def allocate(self, n: int) -> None:
        self.both(lambda: self.pool.allocate(n), lambda: self.ref.allocate(n))

    @precondition(lambda self: any(r > 0 for r in self.ref.ref))
    @rule(data=st.data())
    def free_in_use(self, data: st.DataObject) -> None:
        ids = data.draw(st.lists(st.sampled_from(self.in_use()), min_size=1, max_size=4))
        self.both(lambda: self.pool.free(np.array(ids, np.int32)), lambda: self.ref.free(ids))

    @rule(data=st.data())
    def free_any(self, data: st.DataObject) -> None:
        ids = data.draw(self.any_ids())
        self.both(lambda: self.pool.free(ids), lambda: self.ref.free(ids))

    @rule(data=st.data())
    def touch(self, data: st.DataObject) -> None:
        ids = data.draw(self.any_ids())
        self.both(lambda: self.pool.touch(np.array(ids, np.int32)), lambda: self.ref.touch(ids))

    @rule(h=st.sampled_from(HASHES))
    def prefix_hit(self, h: int) -> None:
        """The manager's pattern: look a hash up, take a reference on the hit."""
        hit = self.both(lambda: self.pool.lookup(to_array([h])), lambda: self.ref.lookup([h]))
        if hit[0] >= 0:
            b = int(hit[0])
            self.both(lambda: self.pool.touch([b]), lambda: self.ref.touch([b]))

    @precondition(lambda self: any(r > 0 for r in self.ref.ref))
    @rule(data=st.data())
    def cache_in_use(self, data: st.DataObject) -> None:
        ids = data.draw(st.lists(st.sampled_from(self.in_use()), min_size=1, max_size=4))
        hs = data.draw(st.lists(st.sampled_from(HASHES), min_size=len(ids), max_size=len(ids)))
        self.both(
            lambda: self.pool.cache_blocks(np.array(ids, np.int32), to_array(hs)),
            lambda: self.ref.cache_blocks(ids, hs),
        )

    @rule(data=st.data())
    def cache_any(self, data: st.DataObject) -> None:
        ids = data.draw(self.any_ids())
        hs = data.draw(st.lists(st.sampled_from(HASHES), min_size=len(ids), max_size=len(ids)))
        self.both(
            lambda: self.pool.cache_blocks(ids, to_array(hs)),
            lambda: self.ref.cache_blocks(ids, hs),
        )

    @rule(hs=hash_lists)
    def lookup(self, hs: list[int]) -> None:
        self.both(lambda: self.pool.lookup(to_array(hs)), lambda: self.ref.lookup(hs))

    @rule(data=st.data())
    def evict(self, data: st.DataObject) -> None:
        ids = data.draw(self.any_ids())
        self.both(lambda: self.pool.evict(ids), lambda: self.ref.evict(ids))

    @rule()
    def free_everything(self) -> None:
        """Release every reference (so reset_prefix_cache gets to run on idle pools)."""
        ids = [b for b, r in enumerate(self.ref.ref) for _ in range(r)]
        self.both(lambda: self.pool.free(ids), lambda: self.ref.free(ids))

    @rule()
    def reset_prefix_cache(self) -> None:
        self.both(self.pool.reset_prefix_cache, self.ref.reset_prefix_cache)

    @rule()
    def take_events(self) -> None:
        got = [(int(e.kind), e.block_id, e.block_hash) for e in self.pool.take_events()]
        assert got == self.ref.take_events()

    # --- malformed input -----------------------------------------------------------
    @rule(bad=st.sampled_from(BAD_CALLS))
    def bad_input(self, bad: tuple[str, Callable[[BlockPool], Any]]) -> None:
        before = self.pool.snapshot()
        try:
            bad[1](self.pool)
        except errors.InvalidArgumentError:
            pass
        else:
            raise AssertionError(f"{bad[0]} was accepted")
        assert same_snapshot(before, self.pool.snapshot()), f"{bad[0]} changed state"

    # --- after every step ------------------------------------------------------------
    @invariant()
    def matches_reference(self) -> None:
        COUNTS["PoolMachine.checks"] += 1
        state = rust_state(self.pool.snapshot())
        assert state == self.ref.state()
        check_state_invariants(state)
        self.pool.check_invariants()
        assert (self.pool.num_free, self.pool.num_cached, self.pool.num_in_use) == (
            self.ref.num_free,
            self.ref.num_cached,
            self.ref.num_in_use,
        )


class RegistryMachine(RuleBasedStateMachine):
    """A PoolRegistry against one RefPool per group, with ids drawn from any group.

    Every operation names one group; whatever ids it carries (often live ids of another
    group), every other group's snapshot must be exactly as before, and events stay
    tagged with the group that produced them. This is the eviction-broadcast bug made
    impossible, checked on every step.
    """

    reg: PoolRegistry
    refs: list[RefPool]

    @initialize(sizes=st.lists(st.integers(1, 12), min_size=2, max_size=3))
    def setup(self, sizes: list[int]) -> None:
        self.reg = PoolRegistry(sizes)
        self.refs = [RefPool(n) for n in sizes]
        COUNTS["RegistryMachine.runs"] += 1

    def groups(self) -> st.SearchStrategy[int]:
        return st.sampled_from(range(len(self.refs)))

    def live_ids(self, data: st.DataObject) -> list[int]:
        """Ids that mean something in some (randomly chosen) group: in use or cached."""
        src = self.refs[data.draw(self.groups())]
        live = [b for b in range(1, src.num_blocks) if src.ref[b] > 0 or src.hash[b] is not None]
        if not live:
            return []
        return data.draw(st.lists(st.sampled_from(live), max_size=4))

    def on_group(self, g: int, rust: Callable[[], Any], ref: Callable[[], Any]) -> Any:
        before = [self.reg.snapshot(h) for h in range(len(self.refs))]
        got, got_exc = attempt(rust)
        want, want_exc = attempt(ref)
        assert got_exc is want_exc, f"group {g}: rust raised {got_exc}, reference {want_exc}"
        if got_exc is None:
            assert as_list(got) == as_list(want)
        for h, snap in enumerate(before):
            if h != g or got_exc is not None:
                assert same_snapshot(snap, self.reg.snapshot(h)), f"group {h} changed"
        return got

    @rule(data=st.data(), n=st.integers(0, 5))
    def allocate(self, data: st.DataObject, n: int) -> None:
        g = data.draw(self.groups())
        self.on_group(g, lambda: self.reg.allocate(g, n), lambda: self.refs[g].allocate(n))

    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        g, ids = data.draw(self.groups()), self.live_ids(data)
        self.on_group(g, lambda: self.reg.free(g, ids), lambda: self.refs[g].free(ids))

    @rule(data=st.data())
    def touch(self, data: st.DataObject) -> None:
        g, ids = data.draw(self.groups()), self.live_ids(data)
        self.on_group(g, lambda: self.reg.touch(g, ids), lambda: self.refs[g].touch(ids))

    @rule(data=st.data())
    def evict(self, data: st.DataObject) -> None:
        g, ids = data.draw(self.groups()), self.live_ids(data)
        self.on_group(g, lambda: self.reg.evict(g, ids), lambda: self.refs[g].evict(ids))

    @rule(data=st.data())
    def cache_blocks(self, data: st.DataObject) -> None:
        g, ids = data.draw(self.groups()), self.live_ids(data)
        hs = data.draw(st.lists(st.sampled_from(HASHES), min_size=len(ids), max_size=len(ids)))
        self.on_group(
            g,
            lambda: self.reg.cache_blocks(g, ids, to_array(hs)),
            lambda: self.refs[g].cache_blocks(ids, hs),
        )

    @rule(data=st.data(), hs=hash_lists)
    def lookup(self, data: st.DataObject, hs: list[int]) -> None:
        g = data.draw(self.groups())
        self.on_group(g, lambda: self.reg.lookup(g, to_array(hs)), lambda: self.refs[g].lookup(hs))

    @rule(data=st.data())
    def free_group(self, data: st.DataObject) -> None:
        g = data.draw(self.groups())
        ids = [b for b, r in enumerate(self.refs[g].ref) for _ in range(r)]
        self.on_group(g, lambda: self.reg.free(g, ids), lambda: self.refs[g].free(ids))

    @rule(data=st.data())
    def reset_prefix_cache(self, data: st.DataObject) -> None:
        g = data.draw(self.groups())
        self.on_group(g, lambda: self.reg.reset_prefix_cache(g), self.refs[g].reset_prefix_cache)

    @rule(g=st.one_of(st.integers(-3, -1), st.integers(3, 10)))
    def unknown_group(self, g: int) -> None:
        before = [self.reg.snapshot(h) for h in range(len(self.refs))]
        for call in (
            lambda: self.reg.allocate(g, 1),
            lambda: self.reg.free(g, [1]),
            lambda: self.reg.evict(g, [1]),
            lambda: self.reg.lookup(g, to_array([1])),
        ):
            _, exc = attempt(call)
            assert exc is errors.UnknownGroupError
        for h, snap in enumerate(before):
            assert same_snapshot(snap, self.reg.snapshot(h))

    @rule()
    def take_events(self) -> None:
        got = [(e.group, int(e.kind), e.block_id, e.block_hash) for e in self.reg.take_events()]
        want = [(g, *e) for g, ref in enumerate(self.refs) for e in ref.take_events()]
        assert got == want

    @invariant()
    def every_group_matches_its_reference(self) -> None:
        COUNTS["RegistryMachine.checks"] += 1
        for g, ref in enumerate(self.refs):
            state = rust_state(self.reg.snapshot(g))
            assert state == ref.state(), f"group {g}"
            check_state_invariants(state)
        self.reg.check_invariants()


TestPoolMachine = PoolMachine.TestCase
TestRegistryMachine = RegistryMachine.TestCase
