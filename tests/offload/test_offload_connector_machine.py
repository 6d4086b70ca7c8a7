"""The offload connector's stateful abuse machine (issue 15, "extend the stateful abuse
machines to ... the offload connector").

Valid calls (requests arriving with shared prefixes, lookups, loads into the blocks a
step allocated, stores, frees, forgets) run interleaved with hostile ones (float, bool,
string, unknown or 2-D request ids, device hits that are negative, past the prompt or
floats, ragged rows, loads with no held lookup or the wrong one, a bad row behind a good
one). Every hostile call must raise a named ``HybridKVError`` and leave the connector,
the manager, the tiers and the KV pages exactly as they were (snapshots compared).

The reference is plain Python and treats the connector as an allocator: a lookup
allocates a hold (the payload bytes of its hit, ``nbytes`` known in advance from the
page sizes), a load or a later lookup frees it, and holds above ``max_held_bytes`` are
dropped oldest first (never the one just made). The tiers' contents are a set of keys
(budgets large enough that nothing is evicted), grown by what each store must queue:
every computed block still in the request's table. From that set the reference
derives each lookup's answer with the group rules written out loop by loop (full
attention and window: contiguous blocks from the device hit; a checkpoint-only state
group: the checkpoint at exactly the hit; hits on the common granularity, at most the
prompt minus one), and every load must put back exactly the bytes the model computed.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hybridkv.cache.manager import KVCacheManager
from hybridkv.errors import HybridKVError
from hybridkv.offload import BlockKey, block_keys
from hybridkv.offload.config import CpuTierConfig, DiskTierConfig, OffloadConfig
from hybridkv.offload.connector import OffloadConnector
from hybridkv.offload.pages import HostPages
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from offload_helpers import check_loaded, hybrid_plan, model_step

BASE = np.random.default_rng(15).integers(1, 1000, 2400).astype(np.int32)
MAX_HELD = 3 * 40_000  # a few holds: the oldest-first drop is exercised
#: The hostile calls: request ids (for every method), device hits (lookup), loads.
HOSTILE: dict[str, tuple[str, Any]] = {
    **{f"ids {v!r}": ("ids", v) for v in ([1.5], [True], ["0"], [2**70], [[0]], [10**6], [0.0])},
    **{f"device {v}": ("device", v) for v in ("negative", "past", "float", "ragged", "huge")},
    **{
        f"load {v}": ("load", v) for v in ("wrong-start", "wrong-ext", "float", "ragged", "unknown")
    },
}
STATS = {"runs": 0, "hits": 0, "loads": 0, "stores": 0, "hostile": 0, "dropped_holds": 0}


# Derandomized: the coverage check below (every kind of event happened) must not
# depend on which 50 examples a run happens to draw.
@settings(max_examples=50, stateful_step_count=50, derandomize=True)
class ConnectorAbuseMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        STATS["runs"] += 1
        self.dir = Path(tempfile.mkdtemp(prefix="hkv-conn-machine-"))
        self.plan = hybrid_plan()
        config = OffloadConfig(
            tiers=(
                CpuTierConfig(1 << 26, pin_memory=False),
                DiskTierConfig(str(self.dir), 1 << 28, fsync=False),
            )
        )
        self.c = OffloadConnector(
            KVCacheManager(self.plan, enable_prefix_caching=True),
            config,
            HostPages(self.plan),
            weights="machine",
            background=False,
            max_held_bytes=MAX_HELD,
        )
        self.m = self.c.manager
        self.groups = list(self.plan.groups)
        self.active = [g for g, grp in enumerate(self.groups) if grp.kind not in ("encoder_only",)]
        self.gran = math.lcm(*(self.groups[g].block_size for g in self.active))
        # The reference.
        self.tier_keys: set[BlockKey] = set()
        self.holds: OrderedDict[int, tuple[int, int, int]] = OrderedDict()
        self.prompts: dict[int, np.ndarray] = {}
        self.device: dict[int, int] = {}  # waiting requests: their device hit
        self.computed: dict[int, int] = {}  # running requests: tokens computed
        self.next_id = 0

    # ------------------------------------------------------------------ reference

    def _page_bytes(self, g: int) -> int:
        return int(self.c.pages.page_bytes(g))

    def _checkpoint_only(self, g: int) -> bool:
        return self.groups[g].kind == "state" and self.m.mamba_cache_mode != "all"

    def _keys(self, g: int, rid: int) -> list[BlockKey]:
        return block_keys(self.c.fingerprint, g, self.m.block_hashes(g, rid))

    def _ref_lookup(self, rid: int, dev: int) -> tuple[int, dict[int, int], int]:
        """(hit, each group's reach, bytes the hit holds) from the reference's keys."""
        limit = max(0, len(self.prompts[rid]) - 1)
        present: dict[int, list[bool]] = {}
        reach: dict[int, int] = {}
        for g in self.active:
            bs = self.groups[g].block_size
            present[g] = [k in self.tier_keys for k in self._keys(g, rid)]
            if self._checkpoint_only(g):
                ends = [(k + 1) * bs for k, p in enumerate(present[g]) if p]
                ends = [e for e in ends if dev < e <= limit]
                reach[g] = max(ends) if ends else dev
            else:
                k = dev // bs
                while k < len(present[g]) and present[g][k]:
                    k += 1
                reach[g] = max(dev, min(k * bs, limit // bs * bs))
        hit = dev
        top = min(reach.values())
        pos = top // self.gran * self.gran
        while pos > dev:
            ok = True
            for g in self.active:
                bs = self.groups[g].block_size
                if pos % bs:
                    ok = False
                elif self._checkpoint_only(g):
                    k = pos // bs - 1
                    ok = ok and 0 <= k < len(present[g]) and present[g][k]
                else:
                    ok = ok and pos <= reach[g]
            if ok:
                hit = pos
                break
            pos -= self.gran
        nbytes = 0
        if hit > dev:
            for g in self.active:
                bs = self.groups[g].block_size
                count = 1 if self._checkpoint_only(g) else hit // bs - dev // bs
                nbytes += count * self._page_bytes(g)
        return hit, reach, nbytes

    def _ref_hold(self, rid: int, dev: int, hit: int, nbytes: int) -> None:
        self.holds.pop(rid, None)
        if hit <= dev:
            return
        self.holds[rid] = (dev, hit, nbytes)
        while sum(h[2] for h in self.holds.values()) > MAX_HELD and len(self.holds) > 1:
            oldest = next(iter(self.holds))
            if oldest == rid:
                break
            del self.holds[oldest]
            STATS["dropped_holds"] += 1

    def _ref_store(self, rid: int) -> set[BlockKey]:
        """The keys a store of ``rid`` must leave in the tiers: every computed block
        its table still holds; of a checkpoint-only state group, the checkpoint the
        step just ended on (an entry left behind by a step that ran past its boundary
        holds a running state, not that boundary's checkpoint)."""
        out: set[BlockKey] = set()
        done = self.computed[rid]
        for g in self.active:
            bs = self.groups[g].block_size
            table = self.m.block_table(g, [rid])[0]
            keys = self._keys(g, rid)
            for k in range(min(done // bs, len(table), len(keys))):
                if self._checkpoint_only(g) and (k + 1) * bs != done:
                    continue
                if table[k] != 0:
                    out.add(keys[k])
        return out

    # ------------------------------------------------------------------ snapshots

    def _snapshot(self) -> tuple[Any, ...]:
        c, m = self.c, self.m
        ids = m.request_ids()
        pages = hashlib.blake2b()
        for arr in c.pages.arrays:  # type: ignore[attr-defined]
            pages.update(np.ascontiguousarray(arr).tobytes())
        tiers = tuple((t.lru_keys(), t.used_bytes, t.stats.as_dict()) for t in c.stack.tiers)
        return (
            c.stats.as_dict(),
            {k: (v.start, v.hit, v.nbytes, sorted(v.loads)) for k, v in c._pending.items()},
            list(c._pending),
            c._held_bytes,
            list(c._offloaded),
            dict(c._stored_upto),
            sorted(c._key_cache),
            ids.tolist(),
            m.num_tokens(ids).tolist(),
            m.num_computed_tokens(ids).tolist(),
            [t.tolist() for t in m.block_tables(ids)],
            m.stats(),
            [m.ref_counts(g).tolist() for g in range(len(self.groups))],
            [m.cached_blocks(g)[0].tolist() for g in range(len(self.groups))],
            [m.free_queue(g).tolist() for g in range(len(self.groups))],
            tiers,
            c.stack.served,
            c.stack.misses,
            pages.hexdigest(),
        )

    def _refused(self, call: Any) -> None:
        before = self._snapshot()
        with pytest.raises(HybridKVError):
            call()
        assert self._snapshot() == before
        STATS["hostile"] += 1

    # ------------------------------------------------------------------ valid calls

    @initialize(upto=st.sampled_from([0, 528, 1056, 1584, 2112]))
    def warm_tiers(self, upto: int) -> None:
        """A server that ran before: BASE's first ``upto`` tokens computed in aligned
        chunks and stored, then the device emptied (the tiers are warm, the device
        cold)."""
        if upto == 0:
            return
        self.arrive(length=2400, tail=0, seed=0)
        rid = self.next_id - 1
        del self.device[rid]
        self.computed[rid] = 0
        while self.computed[rid] < upto:
            self.compute_n(rid, 528)
        self.restart_device()

    @precondition(lambda self: len(self.prompts) < 6)
    @rule(
        length=st.sampled_from([600, 1100, 1200, 1700, 2400]),
        tail=st.integers(0, 40),
        seed=st.integers(0, 3),
    )
    def arrive(self, length: int, tail: int, seed: int) -> None:
        """A request sharing a prefix of BASE (a few divergent tails)."""
        rid = self.next_id
        self.next_id += 1
        suffix = np.random.default_rng(seed).integers(1, 1000, tail).astype(np.int32)
        prompt = np.concatenate([BASE[:length], suffix])
        self.m.add_requests([rid], [prompt])
        self.prompts[rid] = prompt
        self.device[rid] = int(self.m.get_computed_tokens([rid])[0])

    @precondition(lambda self: self.device)
    @rule(pick=st.lists(st.integers(0, 5), min_size=1, max_size=3, unique=True))
    def lookup(self, pick: list[int]) -> None:
        waiting = sorted(self.device)
        self._lookup(sorted({waiting[i % len(waiting)] for i in pick}))

    def _lookup(self, rids: list[int]) -> None:
        devs = [self.device[r] for r in rids]
        found = self.c.lookup_external(rids, devs)
        for i, rid in enumerate(rids):
            hit, reach, nbytes = self._ref_lookup(rid, devs[i])
            assert int(found.hit_tokens[i]) == hit, (rid, devs[i], reach)
            for g in self.active:
                assert int(found.group_tokens[i, g]) == reach[g]
            self._ref_hold(rid, devs[i], hit, nbytes)
            STATS["hits"] += hit > devs[i]
        assert list(self.c._pending) == list(self.holds)
        for rid, (dev, hit, nbytes) in self.holds.items():
            held = self.c._pending[rid]
            assert (held.start, held.hit, held.nbytes) == (dev, hit, nbytes)

    @precondition(lambda self: self.device)
    @rule(
        data=st.data(),
        chunk=st.sampled_from([1, 16, 300, 528, 2000]),
        abuse=st.sampled_from(["none", "behind", "twice", "short", "other-start"]),
    )
    def schedule(self, data: st.DataObject, chunk: int, abuse: str) -> None:
        """Start a waiting request: allocate its external tokens (what it holds, if
        anything) plus a chunk, load, compute, store. ``abuse``: before the real load,
        with the blocks allocated (so only the bad part can fail), a load with a bad
        row behind the good one, the good row twice, fewer new tokens than external
        ones, or another start; each refused with nothing written or dropped."""
        rid = data.draw(st.sampled_from(sorted(self.device)))
        dev = self.device[rid]
        if rid not in self.holds and data.draw(st.booleans()):
            self._lookup([rid])  # what a scheduler does before admitting a request
        ext = self.holds[rid][1] - dev if rid in self.holds else 0
        remaining = len(self.prompts[rid]) - dev - ext
        new = ext + max(1, min(chunk, remaining))
        if not bool(self.m.allocate_slots([rid], [new])[0]):
            return  # no room now: it stays waiting, its hold kept
        if ext and abuse != "none":
            bad: list[Any] = {
                "behind": [[rid, 10**6], [dev, 0], [new, 600], [ext, 528]],
                "twice": [[rid, rid], [dev, dev], [new, new], [ext, ext]],
                "short": [[rid], [dev], [ext - 1], [ext]],
                "other-start": [[rid], [dev + self.gran], [new], [ext]],
            }[abuse]
            self._refused(lambda: self.c.load_scheduled(*bad))
        written = self.c.load_scheduled([rid], [dev], [new], [ext])
        self.holds.pop(rid, None)
        if ext:
            # Every page below the hit (device-hit ones too) holds the model's bytes.
            checked = check_loaded(self.m, self.c.pages, self.c.fingerprint, rid, dev + ext,
                                   dev + new)  # fmt: skip
            assert checked >= written > 0
            STATS["loads"] += 1
        else:
            assert written == 0
        del self.device[rid]
        model_step(self.m, self.c.pages, self.c.fingerprint, rid, dev + ext, dev + new)
        self.computed[rid] = dev + new
        self._store(rid)

    def _store(self, rid: int) -> None:
        want = self._ref_store(rid)
        queued = self.c.store([rid])
        assert queued == len(want - self.tier_keys)
        self.tier_keys |= want
        STATS["stores"] += queued > 0
        where = self.c.stack.locate(sorted(want))
        assert all(w >= 0 for w in where)

    @precondition(lambda self: self.computed)
    @rule(data=st.data(), chunk=st.sampled_from([1, 16, 500, 528, 1056]))
    def compute(self, data: st.DataObject, chunk: int) -> None:
        self.compute_n(data.draw(st.sampled_from(sorted(self.computed))), chunk)

    def compute_n(self, rid: int, chunk: int) -> None:
        done = self.computed[rid]
        n = min(chunk, len(self.prompts[rid]) - done)
        if n <= 0 or not bool(self.m.allocate_slots([rid], [n])[0]):
            return
        model_step(self.m, self.c.pages, self.c.fingerprint, rid, done, done + n)
        self.computed[rid] = done + n
        self._store(rid)

    @precondition(lambda self: self.prompts)
    @rule(data=st.data(), forget=st.booleans())
    def finish(self, data: st.DataObject, forget: bool) -> None:
        rid = data.draw(st.sampled_from(sorted(self.prompts)))
        self.m.free([rid])
        if forget or rid in self.holds:
            self.c.forget([rid])
            self.holds.pop(rid, None)
        del self.prompts[rid]
        self.device.pop(rid, None)
        self.computed.pop(rid, None)

    @rule()
    def restart_device(self) -> None:
        """Every request finishes (some forgotten) and the idle manager drops its
        prefix cache: every later hit beyond the device is the tiers'."""
        for rid in sorted(self.prompts):
            self.m.free([rid])
            self.c.forget([rid])
        self.prompts.clear()
        self.device.clear()
        self.computed.clear()
        self.holds.clear()
        assert self.m.reset_prefix_cache()

    # ------------------------------------------------------------------ hostile calls

    @rule(data=st.data(), how=st.sampled_from(sorted(HOSTILE)))
    def hostile(self, data: st.DataObject, how: str) -> None:
        """One hostile call (or a few of the same kind), each refused, nothing changed."""
        kind, variant = HOSTILE[how]
        if kind == "ids":
            ids: list[Any] = variant
            self._refused(lambda: self.c.lookup_external(ids, [0] * len(ids)))
            if ids != [10**6]:  # store and forget skip ids the manager no longer holds
                self._refused(lambda: self.c.store(ids))
                self._refused(lambda: self.c.forget(ids))
            return
        if not self.device:
            return
        rid = data.draw(st.sampled_from(sorted(self.device)))
        dev = self.device[rid]
        n = len(self.prompts[rid])
        if kind == "device":
            bad_dev: list[Any] = {
                "negative": [-1],
                "past": [n + 1],
                "float": [0.5],
                "ragged": [0, 0],
                "huge": [2**62],
            }[variant]
            self._refused(lambda: self.c.lookup_external([rid], bad_dev))
            return
        # Loads that do not match a waiting request's hold (or it holds nothing).
        held = self.holds.get(rid)
        ext = held[1] - dev if held else 528
        args: list[Any] = {
            "wrong-start": [[rid], [dev + 16], [ext + 1], [ext]],
            "wrong-ext": [[rid], [dev], [ext + 17], [ext + 16]],
            "float": [[rid], [float(dev)], [ext + 1], [ext]],
            "ragged": [[rid, rid], [dev], [ext + 1], [ext]],
            "unknown": [[10**6], [0], [ext + 1], [ext]],
        }[variant]
        self._refused(lambda: self.c.load_scheduled(*args))

    # ------------------------------------------------------------------ invariants

    @invariant()
    def holds_match_the_reference(self) -> None:
        assert list(self.c._pending) == list(self.holds)
        assert self.c._held_bytes == sum(h[2] for h in self.holds.values())
        assert self.c._held_bytes <= MAX_HELD or len(self.holds) <= 1

    @invariant()
    def tiers_hold_exactly_the_reference_keys(self) -> None:
        for tier in self.c.stack.tiers:
            assert set(tier.lru_keys()) == self.tier_keys

    def teardown(self) -> None:
        self.c.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def test_connector_abuse_machine() -> None:
    saved = dict(STATS)
    ConnectorAbuseMachine.TestCase().runTest()
    # Not vacuous: hits, loads, stores, dropped holds and refusals all happened.
    for name in STATS:
        assert STATS[name] > saved[name], (name, STATS)
