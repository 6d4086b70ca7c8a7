"""A stateful hypothesis machine: KVCacheManager against the plain-Python reference.

Requests share prefixes, prefill in chunks, decode, get preempted and resume, finish,
and the prefix cache gets reset. After every step the two managers must agree exactly
(block tables, computed counts, hit lengths, reference counts, free queues, cached
blocks), every pool's reference counts must equal the references the live tables hold,
window tables must stay within the planner's per-request bound, and the pools' counts
must add up.
"""

from __future__ import annotations

import numpy as np
import pytest
from hybridkv import KVCacheManager, ManagerConfig, ManagerGroup, errors
from hybridkv.planner import window_request_blocks
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from reference_manager import RefGroup, RefManager

# (groups, mamba mode): full + sliding window + state at different block sizes, chunked
# local with checkpoints at every block, and a model whose state keeps no checkpoints.
CONFIGS: list[tuple[tuple[RefGroup, ...], str]] = [
    (
        (
            RefGroup("full_attention", 4, 40),
            RefGroup("sliding_window", 4, 24, window=7),
            RefGroup("state", 8, 12),
        ),
        "align",
    ),
    (
        (
            RefGroup("full_attention", 4, 48),
            RefGroup("chunked_local", 4, 24, chunk_size=8),
            RefGroup("state", 4, 40),
        ),
        "all",
    ),
    (
        (
            RefGroup("full_attention", 8, 24),
            RefGroup("sliding_window", 4, 30, window=5),
        ),
        "align",
    ),
    (
        (
            RefGroup("sliding_window", 4, 30, window=6),
            RefGroup("state", 4, 10),
        ),
        "none",
    ),
    (
        (
            RefGroup("full_attention", 4, 40),
            RefGroup("cross_attention", 4, 14, max_encoder_len=12),
        ),
        "none",
    ),
    # gpt-oss-like: full attention and a sliding window at one block size sharing one
    # pool (``pool_of``), beside a state group with its own.
    (
        (
            RefGroup("full_attention", 4, 40),
            RefGroup("sliding_window", 4, 40, window=7),
            RefGroup("state", 8, 12),
        ),
        "align",
    ),
]
#: Per config (by index): the groups' pools where some share one.
POOLS: dict[int, tuple[int, ...]] = {5: (0, 0, 1)}
# Extra hash keys a request may carry: none, a LoRA adapter, a cache salt.
EXTRAS: list[tuple[int | None, str | None]] = [(None, None), (1, None), (None, "s")]
PREFIXES = [list(range(1, 30)), [7] * 12 + list(range(40, 60)), [3, 1, 4, 1, 5, 9, 2, 6] * 3]
MAX_LEN = 64


class ManagerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.next_id = 0
        # Per request: the computed count its window blocks were last released to.
        self.start: dict[int, int] = {}

    @initialize(cfg=st.integers(0, len(CONFIGS) - 1), caching=st.booleans())
    def setup(self, cfg: int, caching: bool) -> None:
        groups, mode = CONFIGS[cfg]
        self.groups = groups
        self.advanced: set[int] = set()
        pool_of = POOLS.get(cfg)
        self.ref = RefManager(groups, mode, caching or cfg % 2 == 0, pool_of=pool_of)
        plan = ManagerConfig(
            tuple(
                ManagerGroup(
                    g.kind, g.block_size, g.num_blocks, g.window, g.chunk_size, g.max_encoder_len
                )
                for g in groups
            ),
            mode,
        )
        self.m = KVCacheManager(
            plan, enable_prefix_caching=self.ref.caching, hash_seed=11, pool_of=pool_of
        )

    # -- rules --------------------------------------------------------------------------

    @rule(
        prefix=st.integers(0, len(PREFIXES)),
        cut=st.integers(0, 32),
        suffix=st.lists(st.integers(0, 5), max_size=12),
        extra=st.sampled_from([0, 0, 0, 1, 2]),
        enc=st.integers(0, 12),
    )
    def add(self, prefix: int, cut: int, suffix: list[int], extra: int, enc: int) -> None:
        toks = (PREFIXES[prefix][:cut] if prefix < len(PREFIXES) else []) + suffix
        if not toks or len(toks) > MAX_LEN // 2:
            return
        rid = self.next_id
        self.next_id += 1
        lora, salt = EXTRAS[extra]
        has_cross = any(g.kind == "cross_attention" for g in self.groups)
        enc = enc if has_cross else 0
        self.m.add_requests(
            [rid],
            [np.array(toks, dtype=np.int32)],
            lora_ids=[lora],
            cache_salts=[salt],
            encoder_lens=[enc],
        )
        self.ref.add(rid, toks, extra=(lora, salt), encoder_len=enc)
        self.start[rid] = 0

    @precondition(lambda self: any(r.phase != "running" for r in self.ref.reqs.values()))
    @rule(data=st.data())
    def lookup(self, data: st.DataObject) -> None:
        waiting = sorted(rid for rid, r in self.ref.reqs.items() if r.phase != "running")
        rids = data.draw(st.lists(st.sampled_from(waiting), min_size=1, unique=True))
        got = self.m.get_computed_tokens(rids).tolist()
        assert got == self.ref.lookup(rids)
        assert self.m.shared_prefix_boundary(rids).tolist() == [
            self.ref.reqs[r].boundary for r in rids
        ]
        for rid, h in zip(rids, got, strict=True):
            self.start[rid] = h

    @precondition(lambda self: any(r.phase != "waiting" for r in self.ref.reqs.values()))
    @rule(data=st.data(), new_step=st.booleans())
    def step(self, data: st.DataObject, new_step: bool) -> None:
        active = sorted(rid for rid, r in self.ref.reqs.items() if r.phase != "waiting")
        rids = data.draw(st.lists(st.sampled_from(active), min_size=1, unique=True))
        nums, las = [], []
        for rid in rids:
            r = self.ref.reqs[rid]
            left = len(r.tokens) - r.computed
            nums.append(data.draw(st.integers(0, left), label=f"n[{rid}]"))
            las.append(data.draw(st.sampled_from([0, 0, 0, 1, 3]), label=f"la[{rid}]"))
        # A retry within a step (new_step=False) never re-schedules a request already
        # advanced in it; it may allocate requests looked up after the step's first call.
        new_step = new_step or any(rid in self.advanced for rid in rids)
        before = {rid: r.computed for rid, r in self.ref.reqs.items()}
        got = self.m.allocate_slots(rids, nums, las, new_step=new_step).tolist()
        want = self.ref.allocate(rids, nums, las, new_step=new_step)
        assert got == want
        if new_step:
            self.advanced = set()
            self.start.update(before)
        for rid, n, ok in zip(rids, nums, got, strict=True):
            self.start[rid] = before[rid]
            if ok and n:
                self.advanced.add(rid)

    @precondition(lambda self: any(rid in self.ref.reqs for rid in self.advanced))
    @rule(data=st.data(), sibling=st.booleans())
    def admit_within_step(self, data: st.DataObject, sibling: bool) -> None:
        """A scheduler's retry within a step: look a waiting request up after the step's
        first allocation and allocate it with ``new_step=False``. A hit on a state
        checkpoint that allocation cached must wait for the next step. ``sibling``: the
        request is new and shares what a request advanced this step has computed."""
        waiting = sorted(rid for rid, r in self.ref.reqs.items() if r.phase == "waiting")
        if sibling or not waiting:
            src = self.ref.reqs[
                data.draw(st.sampled_from(sorted(self.advanced & set(self.ref.reqs))))
            ]
            toks = src.tokens[: src.computed] + data.draw(
                st.lists(st.integers(0, 5), min_size=1, max_size=6)
            )
            if len(toks) > MAX_LEN:
                return
            rid = self.next_id
            self.next_id += 1
            lora, salt = src.extra
            self.m.add_requests(
                [rid], [np.array(toks, dtype=np.int32)], lora_ids=[lora], cache_salts=[salt]
            )
            self.ref.add(rid, toks, extra=src.extra)
            self.start[rid] = 0
            waiting = [rid]
        rid = data.draw(st.sampled_from(waiting))
        hit = self.m.get_computed_tokens([rid]).tolist()
        assert hit == self.ref.lookup([rid])
        self.start[rid] = hit[0]
        r = self.ref.reqs[rid]
        n = data.draw(st.integers(1, len(r.tokens) - r.computed))
        deferred = r.phase == "queried" and self.ref._reads_state_of_this_step(r)
        event(f"state hit of this step: {deferred}")
        got = self.m.allocate_slots([rid], [n], new_step=False).tolist()
        assert got == self.ref.allocate([rid], [n], new_step=False)
        if deferred:
            assert got == [False]
        if got[0]:
            self.advanced.add(rid)

    @precondition(lambda self: bool(self.ref.reqs))
    @rule(data=st.data())
    def decode_tokens(self, data: st.DataObject) -> None:
        rids = sorted(self.ref.reqs)
        chosen = data.draw(st.lists(st.sampled_from(rids), min_size=1, unique=True))
        toks = [
            data.draw(st.lists(st.integers(0, 5), max_size=3), label=f"t[{rid}]") for rid in chosen
        ]
        keep = [
            (rid, t)
            for rid, t in zip(chosen, toks, strict=True)
            if len(self.ref.reqs[rid].tokens) + len(t) <= MAX_LEN
        ]
        if not keep:
            return
        self.m.append_tokens(
            [rid for rid, _ in keep], [np.array(t, dtype=np.int32) for _, t in keep]
        )
        for rid, t in keep:
            self.ref.append(rid, t)

    @precondition(lambda self: bool(self.ref.reqs))
    @rule(data=st.data())
    def preempt(self, data: st.DataObject) -> None:
        rids = data.draw(st.lists(st.sampled_from(sorted(self.ref.reqs)), min_size=1, unique=True))
        self.m.preempt(rids)
        self.ref.preempt(rids)
        for rid in rids:
            self.start[rid] = 0

    @precondition(lambda self: bool(self.ref.reqs))
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        rids = data.draw(st.lists(st.sampled_from(sorted(self.ref.reqs)), min_size=1, unique=True))
        self.m.free(rids)
        self.ref.free(rids)
        for rid in rids:
            self.start.pop(rid, None)

    @precondition(lambda self: bool(self.ref.reqs))
    @rule(data=st.data(), which=st.integers(0, 4))
    def bad_call(self, data: st.DataObject, which: int) -> None:
        """Bad input raises a named error; the invariants then confirm nothing changed."""
        rid = data.draw(st.sampled_from(sorted(self.ref.reqs)))
        r = self.ref.reqs[rid]
        calls = [
            (errors.UnknownRequestError, lambda: self.m.allocate_slots([self.next_id + 5], [1])),
            (errors.DuplicateRequestError, lambda: self.m.free([rid, rid])),
            (
                errors.InvalidArgumentError,
                lambda: self.m.allocate_slots([rid], [len(r.tokens) - r.computed + 1]),
            ),
            (errors.DuplicateRequestError, lambda: self.m.add_requests([rid], [[1, 2]])),
            (errors.InvalidTokenError, lambda: self.m.append_tokens([rid], [[3, -1]])),
        ]
        exc, call = calls[which]
        with pytest.raises(exc):
            call()

    @rule()
    def reset_cache(self) -> None:
        assert self.m.reset_prefix_cache() == self.ref.reset_prefix_cache()

    # -- invariants ---------------------------------------------------------------------

    @invariant()
    def agrees_with_reference(self) -> None:
        if not hasattr(self, "m"):
            return
        m, ref = self.m, self.ref
        self.m.check_invariants()
        rids = sorted(ref.reqs)
        assert m.request_ids().tolist() == rids
        assert m.num_computed_tokens(rids).tolist() == [ref.reqs[r].computed for r in rids]
        for g, grp in enumerate(self.groups):
            table = m.block_table(g, rids)
            for i, rid in enumerate(rids):
                want = ref.reqs[rid].tables[g]
                row = table[i].tolist()
                assert row[: len(want)] == want and not any(row[len(want) :]), (g, rid)
                # Ids of this pool only.
                assert all(0 <= b < grp.num_blocks for b in row)
            pool = ref.pools[ref.pool_of[g]]
            assert m.ref_counts(g).tolist() == pool.ref
            assert m.free_queue(g).tolist() == list(pool.queue)
            cached_ids = sorted(m.cached_blocks(g)[0].tolist())
            assert cached_ids == sorted(b for b, k in enumerate(pool.key) if k is not None)
            # Reference counts equal the references live tables hold (those of every
            # group sharing the pool).
            held = np.zeros(grp.num_blocks, dtype=np.int64)
            for h in range(len(self.groups)):
                if ref.pool_of[h] != ref.pool_of[g]:
                    continue
                t = m.block_table(h, rids)
                for i in range(len(rids)):
                    nz = t[i][t[i] != 0]
                    np.add.at(held, nz, 1)
            assert held.tolist() == m.ref_counts(g).tolist()
        s = m.stats()
        for g in range(len(self.groups)):
            assert s.num_free[g] + s.num_in_use[g] + 1 == s.num_blocks[g]
            assert s.num_cached[g] <= s.num_free[g]
        assert s.hit_tokens == ref.hit_tokens
        assert s.disagreements == ref.disagreements
        assert list(s.group_hit_tokens) == ref.group_hits

    @invariant()
    def windows_within_bound(self) -> None:
        """Blocks are released exactly when the planner's bound assumes (planner.py):
        a request holds only blocks meeting ``[s(c), end)`` where ``c`` is the computed
        count it was last released to, so at most ``f(end - c)`` of them."""
        if not hasattr(self, "m"):
            return
        for g, grp in enumerate(self.groups):
            bs = grp.block_size
            for rid, r in self.ref.reqs.items():
                c = self.start[rid]
                live = [k for k, b in enumerate(r.tables[g]) if b]
                if grp.kind in ("sliding_window", "chunked_local"):
                    span = grp.window if grp.kind == "sliding_window" else grp.chunk_size
                    assert span is not None
                    assert all(k >= grp.first_needed(c) // bs for k in live), (rid, live, c)
                    grown = len(r.tables[g]) * bs - c
                    bound = window_request_blocks(grp.kind, span, bs, 10**6, max(0, grown))
                    assert len(live) <= bound, (rid, live, bound)
                elif grp.kind == "state" and self.ref.mode != "all":
                    assert len(live) <= 2, (rid, live)
                    assert all(k >= -(-c // bs) - 1 for k in live), (rid, live, c)


TestManagerMachine = ManagerMachine.TestCase
