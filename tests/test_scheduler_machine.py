"""A stateful hypothesis machine over the scheduler driving the real KV-cache manager.

Random arrivals (shared prefixes, random lengths, priorities), random budgets, chunk
caps and pools small enough to force preemption. A plain-Python reference scheduler
over the reference manager (``tests/reference_scheduler.py``) runs in lockstep: every
step's decisions (batch, chunk sizes, computed-before, samples, admissions and their
hits, resumptions, victims, queue sizes) and the scheduled requests' block tables
must be identical. Checked every step besides: the token and sequence
budgets hold, scheduled work is consistent, a request preempted in one step and
readmitted in the next re-hits its own cached prefix (every block below its last
block boundary: nothing can be evicted between the preemption and the lookup). At
teardown every request has finished with exactly its requested output (the sampled
tokens, in order) and every pool is back to nothing in use.
"""

from __future__ import annotations

import numpy as np
import pytest
from hybridkv.manager import KVCacheManager
from hybridkv.models import ModelSpec
from hybridkv.planner import plan_memory, plan_with_blocks
from hybridkv.scheduler import Scheduler, SchedulerError, SchedulerOutput
from hybridkv.specs import ChunkedLocalSpec, FullAttentionSpec, SlidingWindowSpec, StateSpec
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from reference_manager import RefGroup, RefManager
from reference_scheduler import RefScheduler, RefSchedulerError, RefStep

VOCAB = 50
MAX_MODEL_LEN = 48
BASES = [np.arange(40, dtype=np.int32) % VOCAB, (np.arange(40, dtype=np.int32) * 7 + 3) % VOCAB]


def _model(kind: str) -> ModelSpec:
    full = FullAttentionSpec(num_kv_heads=1, head_size=8)
    if kind == "full":
        return ModelSpec("m-full", (full, full))
    swa = SlidingWindowSpec(num_kv_heads=1, head_size=8, window=12)
    state = StateSpec(shapes=((2, 8),), dtypes=("fp32",))
    if kind == "chunked":
        local = ChunkedLocalSpec(num_kv_heads=1, head_size=8, chunk_size=16)
        return ModelSpec("m-chunked", (full, local, state))
    return ModelSpec("m-hybrid", (full, swa, state))


def _sampled(req_id: int, k: int) -> int:
    return (req_id * 31 + k * 7 + 1) % VOCAB


class SchedulerMachine(RuleBasedStateMachine):
    @initialize(
        kind=st.sampled_from(["full", "hybrid", "chunked"]),
        block_size=st.sampled_from([4, 8]),
        max_num_seqs=st.integers(1, 5),
        budget=st.integers(1, 40),
        extra_blocks=st.integers(0, 12),
        policy=st.sampled_from(["fcfs", "priority"]),
        chunk_cap=st.one_of(st.none(), st.integers(1, 20)),
        cut=st.booleans(),
    )
    def setup(
        self,
        kind: str,
        block_size: int,
        max_num_seqs: int,
        budget: int,
        extra_blocks: int,
        policy: str,
        chunk_cap: int | None,
        cut: bool,
    ) -> None:
        model = _model(kind)
        # Bounded pools as the planner sizes them; the growing pool just big enough
        # for one request at max_model_len plus a few blocks, so preemption happens.
        ref = plan_memory(
            model,
            memory_bytes=1 << 30,
            max_num_seqs=max_num_seqs,
            max_model_len=MAX_MODEL_LEN,
            max_num_batched_tokens=budget,
            block_size=block_size,
        )
        grow = -(-MAX_MODEL_LEN // block_size) + 1 + extra_blocks
        counts = [grow if g.grows else g.num_blocks for g in ref.groups]
        self.plan = plan_with_blocks(
            model,
            counts,
            block_size=block_size,
            max_num_seqs=max_num_seqs,
            max_model_len=MAX_MODEL_LEN,
            max_num_batched_tokens=budget,
        )
        self.manager = KVCacheManager(self.plan)
        # Count allocate_slots calls: exactly one per step that schedules anything.
        self.alloc_calls = 0
        real = self.manager.allocate_slots

        def counted(*args: object, **kwargs: object) -> object:
            self.alloc_calls += 1
            return real(*args, **kwargs)  # type: ignore[arg-type]

        self.manager.allocate_slots = counted  # type: ignore[method-assign,assignment]
        self.sched = Scheduler(
            self.manager,
            max_num_batched_tokens=budget,
            max_num_seqs=max_num_seqs,
            policy=policy,
            max_model_len=MAX_MODEL_LEN,
            long_prefill_token_threshold=chunk_cap,
            cut_at_shared_prefix=cut,
        )
        groups = [
            RefGroup(g.kind, g.block_size, g.num_blocks, g.window, g.chunk_size)
            for g in self.plan.groups
        ]
        self.ref = RefScheduler(
            RefManager(groups, mode=self.plan.mamba_cache_mode),
            budget=budget,
            max_num_seqs=max_num_seqs,
            policy=policy,
            chunk_cap=chunk_cap,
            cut_at_shared_prefix=cut,
        )
        assert self.ref.growing == [g.index for g in self.plan.groups if g.grows]
        assert self.ref.align == self.sched.align
        self.broken = False  # both raised "never fits": nothing more to compare
        self.bs = block_size
        self.budget = budget
        self.max_num_seqs = max_num_seqs
        self.next_id = 0
        self.want: dict[int, int] = {}  # req id -> requested output length
        self.known: dict[int, int] = {}  # req id -> tokens known (prompt + sampled)
        self.computed: dict[int, int] = {}  # req id -> computed tokens (our mirror)
        self.expect_rehit: dict[int, int] = {}  # valid for the next schedule() only
        self.rehits_checked = 0
        self.compared = 0

    @rule(
        base=st.integers(0, 1),
        prefix=st.integers(0, 40),
        suffix=st.lists(st.integers(0, VOCAB - 1), max_size=12),
        out_len=st.integers(1, 8),
        priority=st.integers(0, 2),
    )
    def add_request(
        self, base: int, prefix: int, suffix: list[int], out_len: int, priority: int
    ) -> None:
        prompt = np.concatenate([BASES[base][:prefix], np.asarray(suffix, dtype=np.int32)])
        if prompt.shape[0] == 0:
            prompt = np.asarray([1], dtype=np.int32)
        prompt = prompt[: MAX_MODEL_LEN - out_len]
        rid = self.next_id
        self.next_id += 1
        self.sched.add_request(rid, prompt, out_len, priority=priority)
        self.ref.add(rid, prompt.tolist(), out_len, priority)
        self.want[rid] = out_len
        self.known[rid] = int(prompt.shape[0])
        self.computed[rid] = 0

    @precondition(lambda self: self.sched.has_unfinished() and not self.broken)
    @rule()
    def step(self) -> None:
        self._step()

    @precondition(lambda self: self.sched.num_running > 0 and not self.broken)
    @rule(data=st.data())
    def force_preempt(self, data: st.DataObject) -> None:
        running = self.sched.running_ids().tolist()
        rid = data.draw(st.sampled_from(running))
        self.sched.preempt([rid])
        self.ref.preempt([rid])
        self.expect_rehit[rid] = self._rehit(rid)
        self.computed[rid] = 0

    def _rehit(self, rid: int) -> int:
        """A lower bound on what preempted ``rid`` must re-hit if it is readmitted before
        anything is allocated: the longest block-aligned prefix (below its known
        tokens) whose blocks are all still cached, as each group needs them: full
        attention every block, the sliding window the blocks of the ``window`` tokens
        before the hit (one more than it needs), the state group a checkpoint exactly
        there. Its own blocks were just freed, so they all count."""
        limit = min(self.computed[rid], self.known[rid] - 1) // self.bs
        cached = []
        for g in range(len(self.plan.groups)):
            _, hashes = self.manager.cached_blocks(g)
            cached.append({(int(lo), int(hi)) for lo, hi in hashes.tolist()})
        own = [
            [(int(lo), int(hi)) for lo, hi in self.manager.block_hashes(g, rid).tolist()]
            for g in range(len(self.plan.groups))
        ]
        for k in range(limit, 0, -1):
            ok = True
            for g, grp in enumerate(self.plan.groups):
                if grp.kind == "full_attention":
                    need = range(k)
                elif grp.kind == "sliding_window":
                    assert grp.window is not None
                    need = range(max(0, k * self.bs - grp.window) // self.bs, k)
                else:
                    need = range(k - 1, k)
                if not all(own[g][j] in cached[g] for j in need):
                    ok = False
                    break
            if ok:
                return k * self.bs
        return 0

    def _compare(self, out: SchedulerOutput, want: RefStep) -> None:
        """The real step's decisions against the reference's, field by field."""
        got = RefStep(
            req_ids=out.req_ids.tolist(),
            num_new_tokens=out.num_new_tokens.tolist(),
            num_computed_before=out.num_computed_before.tolist(),
            samples=out.samples.tolist(),
            new=list(zip(out.new_req_ids.tolist(), out.new_hit_tokens.tolist(), strict=True)),
            resumed=list(
                zip(out.resumed_req_ids.tolist(), out.resumed_hit_tokens.tolist(), strict=True)
            ),
            preempted=out.preempted_req_ids.tolist(),
            num_running=out.num_running,
            num_waiting=out.num_waiting,
        )
        assert got == want, f"step {out.step}:\n real {got}\n  ref {want}"
        ids = got.req_ids
        for g in range(len(self.plan.groups)):
            table = self.manager.block_table(g, ids) if ids else None
            for i, rid in enumerate(ids):
                assert table is not None
                ref_table = self.ref.m.reqs[rid].tables[g]
                row = table[i].tolist()
                assert row[: len(ref_table)] == ref_table, (out.step, g, rid)
                assert not any(row[len(ref_table) :]), (out.step, g, rid)

    def _step(self) -> None:
        before = self.alloc_calls
        try:
            out = self.sched.schedule()
        except SchedulerError:
            with pytest.raises(RefSchedulerError):
                self.ref.schedule()
            self.broken = True
            return
        self._compare(out, self.ref.schedule())
        self.compared += 1
        ids = out.req_ids.tolist()
        assert self.alloc_calls - before <= 1
        assert self.alloc_calls - before == 1 or not ids
        # Budgets.
        assert out.num_scheduled_tokens <= self.budget
        assert len(ids) <= self.max_num_seqs
        assert out.num_running <= self.max_num_seqs
        assert len(set(ids)) == len(ids)
        assert np.all(out.num_new_tokens >= 1)
        # Re-hits of requests preempted just before this step.
        for rid, h in zip(
            out.resumed_req_ids.tolist(), out.resumed_hit_tokens.tolist(), strict=True
        ):
            if rid in self.expect_rehit:
                assert h >= self.expect_rehit[rid], (rid, h, self.expect_rehit[rid])
                self.rehits_checked += 1
        self.expect_rehit.clear()
        for rid, h in zip(out.new_req_ids.tolist(), out.new_hit_tokens.tolist(), strict=True):
            assert 0 <= h < self.known[rid]
        for rid in out.resumed_req_ids.tolist():
            self.computed[rid] = 0
        # Consistent work: computed-before matches our mirror (or the admission hit).
        admitted = set(out.new_req_ids.tolist()) | set(out.resumed_req_ids.tolist())
        for rid, c, n, s in zip(
            ids,
            out.num_computed_before.tolist(),
            out.num_new_tokens.tolist(),
            out.samples.tolist(),
            strict=True,
        ):
            if rid not in admitted:
                assert c == self.computed[rid], (rid, c, self.computed[rid])
            assert c + n <= self.known[rid]
            assert s == (c + n == self.known[rid])
            self.computed[rid] = c + n
        assert np.array_equal(
            self.manager.num_computed_tokens(out.req_ids),
            out.num_computed_before + out.num_new_tokens,
        )
        sample_ids = out.sample_req_ids.tolist()
        toks = [_sampled(r, self.sched.num_output_tokens(r)) for r in sample_ids]
        done = self.sched.update_from_output(np.asarray(toks, dtype=np.int64))
        ref_done = self.ref.update(dict(zip(sample_ids, toks, strict=True)))
        assert sorted(ref_done) == sorted(f.req_id for f in done)
        for rid in sample_ids:
            self.known[rid] += 1
        for f in done:
            assert len(f.output_token_ids) == self.want[f.req_id]
            assert f.output_token_ids == [_sampled(f.req_id, k) for k in range(self.want[f.req_id])]
            assert f.reason == "length"
            del self.want[f.req_id]
        running = set(self.sched.running_ids().tolist())
        finished = {f.req_id for f in done}
        for rid in out.preempted_req_ids.tolist():
            assert rid not in running
            if rid in finished:
                continue  # a victim that finished in its last step is freed instead
            self.expect_rehit[rid] = self._rehit(rid)
            self.computed[rid] = 0

    @invariant()
    def pools_consistent(self) -> None:
        if hasattr(self, "manager"):
            self.manager.check_invariants()

    def teardown(self) -> None:
        if not hasattr(self, "sched") or self.sched._last is not None or self.broken:
            return  # not set up, a check failed mid-step (reported), or never fits
        for _ in range(20_000):
            if not self.sched.has_unfinished():
                break
            self._step()
        assert not self.sched.has_unfinished()
        assert not self.want, f"unfinished: {sorted(self.want)}"
        assert self.manager.num_requests == 0
        stats = self.manager.stats()
        # Everything freed: every non-null block of every pool is free (cached or not).
        assert all(n == 0 for n in stats.num_in_use), stats.num_in_use
        assert list(stats.num_free) == [b - 1 for b in stats.num_blocks]
        assert all(c <= f for c, f in zip(stats.num_cached, stats.num_free, strict=True))
        self.manager.check_invariants()
        STATS["runs"] += 1
        STATS["preemptions"] += self.sched.num_preemptions
        STATS["rehits_checked"] += self.rehits_checked
        STATS["hit_tokens"] += stats.hit_tokens
        STATS["steps_compared"] += self.compared


STATS = {"runs": 0, "preemptions": 0, "rehits_checked": 0, "hit_tokens": 0, "steps_compared": 0}


def test_scheduler_machine() -> None:
    """Run the machine; it must not be vacuous: it preempts, checks re-hits, hits."""
    SchedulerMachine.TestCase().runTest()
    print(STATS)
    assert STATS["runs"] > 0
    assert STATS["preemptions"] > 0
    assert STATS["rehits_checked"] > 0
    assert STATS["hit_tokens"] > 0
    assert STATS["steps_compared"] > 0
