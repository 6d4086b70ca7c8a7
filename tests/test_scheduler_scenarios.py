"""Scheduler scenarios on the real manager: prefix hits, chunking, preemption order,
priorities, stop tokens, and bad input (named errors, state unchanged)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hybridkv.errors import (
    DuplicateRequestError,
    InvalidArgumentError,
    InvalidTokenError,
    UnknownRequestError,
)
from hybridkv.manager import KVCacheManager
from hybridkv.models import ModelSpec
from hybridkv.planner import plan_memory, plan_with_blocks
from hybridkv.scheduler import Scheduler, SchedulerError
from hybridkv.specs import FullAttentionSpec, SlidingWindowSpec, StateSpec

BS = 4


def _sched(
    blocks: int, *, budget: int = 64, seqs: int = 8, policy: str = "fcfs", **kw: object
) -> Scheduler:
    model = ModelSpec("m", (FullAttentionSpec(num_kv_heads=1, head_size=8),))
    plan = plan_with_blocks(
        model,
        blocks,
        block_size=BS,
        max_num_seqs=seqs,
        max_model_len=64,
        max_num_batched_tokens=budget,
    )
    return Scheduler(
        KVCacheManager(plan),
        max_num_batched_tokens=budget,
        max_num_seqs=seqs,
        policy=policy,
        max_model_len=64,
        **kw,  # type: ignore[arg-type]
    )


def _finish_all(s: Scheduler, limit: int = 1000) -> list[int]:
    order: list[int] = []
    for _ in range(limit):
        if not s.has_unfinished():
            return order
        out = s.schedule()
        done = s.update_from_output(np.full(out.sample_req_ids.shape[0], 3))
        order += [f.req_id for f in done]
    raise AssertionError("did not finish")


def test_prefix_hit_shortens_prefill_and_chunking_respects_budgets() -> None:
    s = _sched(64, budget=10, long_prefill_token_threshold=6)
    prompt = np.arange(1, 30, dtype=np.int32)
    s.add_request(0, prompt, 2)
    chunks = []
    while s.has_unfinished():
        out = s.schedule()
        chunks += out.num_new_tokens.tolist()
        s.update_from_output(np.full(out.sample_req_ids.shape[0], 3))
    assert chunks[:5] == [6, 6, 6, 6, 5] and chunks[5:] == [1]  # 29 prompt tokens, then decode
    s.add_request(1, prompt, 1)
    out = s.schedule()
    # Every full block of the shared prompt is hit; the last token is always computed.
    assert out.new_hit_tokens.tolist() == [28] and out.num_new_tokens.tolist() == [1]
    s.update_from_output([3])


def test_fcfs_preempts_newest_and_it_rehits() -> None:
    # 9 usable blocks = 36 tokens; three requests of 12 prompt + 8 output tokens.
    s = _sched(10, budget=64, seqs=3)
    for i in range(3):
        s.add_request(i, np.arange(100 * i + 1, 100 * i + 13, dtype=np.int32), 8)
    preempted: list[int] = []
    rehits: dict[int, int] = {}
    while s.has_unfinished():
        out = s.schedule()
        preempted += out.preempted_req_ids.tolist()
        rehits.update(
            zip(out.resumed_req_ids.tolist(), out.resumed_hit_tokens.tolist(), strict=True)
        )
        assert out.num_scheduled_tokens <= 64
        s.update_from_output(np.full(out.sample_req_ids.shape[0], 3))
    assert preempted and set(preempted) <= {1, 2} and preempted[0] == 2
    assert rehits[2] > 0  # resumed while its blocks were still cached
    assert s.num_preemptions == len(preempted)
    assert sorted(f.req_id for f in s.finished) == [0, 1, 2]
    assert all(len(f.output_token_ids) == 8 for f in s.finished)


def test_priority_policy_preempts_lowest_priority_first() -> None:
    s = _sched(10, budget=64, seqs=3, policy="priority")
    prios = {0: 2, 1: 0, 2: 1}  # request 0 arrives first but matters least
    for i, p in prios.items():
        s.add_request(i, np.arange(100 * i + 1, 100 * i + 13, dtype=np.int32), 8, priority=p)
    first = s.schedule()
    assert first.req_ids.tolist() == [1, 2, 0]  # rank order
    s.update_from_output(np.full(first.sample_req_ids.shape[0], 3))
    preempted: list[int] = []
    while s.has_unfinished():
        out = s.schedule()
        preempted += out.preempted_req_ids.tolist()
        s.update_from_output(np.full(out.sample_req_ids.shape[0], 3))
    assert preempted and preempted[0] == 0


def test_eos_stops_early_and_mapping_form() -> None:
    s = _sched(32)
    s.add_request(7, [5, 6, 7], 10, eos_token_id=9)
    out = s.schedule()
    s.update_from_output({7: 4})
    out = s.schedule()
    assert out.num_new_tokens.tolist() == [1] and out.num_computed_before.tolist() == [3]
    done = s.update_from_output({7: 9})
    assert [(f.req_id, f.output_token_ids, f.reason) for f in done] == [(7, [4, 9], "stop")]
    assert not s.has_unfinished()
    assert s.manager.num_requests == 0  # type: ignore[attr-defined]


def test_bad_input_raises_named_errors_and_changes_nothing() -> None:
    s = _sched(32)
    s.add_request(1, [1, 2, 3], 2)
    with pytest.raises(DuplicateRequestError):
        s.add_request(1, [1], 1)
    with pytest.raises(InvalidArgumentError):
        s.add_request(2, [], 1)
    with pytest.raises(InvalidArgumentError):
        s.add_request(2, [1], 0)
    with pytest.raises(InvalidArgumentError, match="max_model_len"):
        s.add_request(2, np.ones(60, dtype=np.int32), 10)
    with pytest.raises(InvalidArgumentError):
        s.update_from_output([1])  # no schedule() yet
    with pytest.raises(UnknownRequestError):
        s.preempt([99])
    with pytest.raises(InvalidArgumentError, match="not running"):
        s.preempt([1])
    out = s.schedule()
    with pytest.raises(InvalidArgumentError):
        s.schedule()  # update_from_output() first
    with pytest.raises(InvalidArgumentError):
        s.update_from_output([1, 2])  # one sampling request
    with pytest.raises(InvalidArgumentError):
        s.update_from_output({5: 1})
    with pytest.raises(InvalidArgumentError):
        s.preempt([1])  # mid-step
    assert out.req_ids.tolist() == [1]
    # A sampled token the manager would refuse is refused first: nothing changes.
    for bad_tok in ([-1], [1 << 31], [1 << 70]):
        with pytest.raises(InvalidTokenError):
            s.update_from_output(bad_tok)
        assert s.num_output_tokens(1) == 0
    s.update_from_output([4])
    assert s.num_output_tokens(1) == 1
    assert _finish_all(s) == [1]
    for bad in (
        {"max_num_batched_tokens": 0},
        {"max_num_seqs": True},
        {"policy": "lifo"},
        {"long_prefill_token_threshold": 0},
    ):
        kw = {"max_num_batched_tokens": 8, "max_num_seqs": 2, **bad}
        with pytest.raises(InvalidArgumentError):
            Scheduler(s.manager, **kw)  # type: ignore[arg-type]


def test_request_that_never_fits_is_reported() -> None:
    s = _sched(4)  # 3 usable blocks: 12 tokens
    s.add_request(0, np.arange(1, 30, dtype=np.int32), 1)
    with pytest.raises(SchedulerError, match="does not fit"):
        for _ in range(10):
            out = s.schedule()
            s.update_from_output(np.full(out.sample_req_ids.shape[0], 3))


@pytest.mark.parametrize(
    ("whole", "running", "storm"),
    [(True, True, False), (True, False, True), (False, False, True), (False, True, True)],
)
def test_admission_checks_the_whole_prompt_against_what_running_prefills_still_need(
    whole: bool, running: bool, storm: bool
) -> None:
    # 16 usable blocks; two 40-token prompts (10 blocks each) prefilled 8 tokens a
    # step. Admitting the second on its first chunk alone (2 blocks) lets both grow
    # until one is preempted; checking its whole prompt (10 blocks) against the 14
    # left after the first's chunk still admits it (vLLM's full-sequence check), and
    # a running prefill then starves; also holding back the first's rest (8 blocks)
    # keeps it waiting until the first finishes: no preemption, nothing recomputed.
    s = _sched(
        17,
        budget=16,
        long_prefill_token_threshold=8,
        reserve_full_prompt=whole,
        reserve_running_prompts=running,
    )
    for rid in range(2):
        s.add_request(rid, np.arange(1 + 50 * rid, 41 + 50 * rid, dtype=np.int32), 1)
    first = s.schedule()
    assert first.req_ids.tolist() == ([0] if not storm else [0, 1])
    s.update_from_output(np.full(first.sample_req_ids.shape[0], 3))
    assert sorted(_finish_all(s)) == [0, 1]
    assert (s.num_preemptions > 0) == storm
    assert (s.recomputed_tokens > 0) == storm


def _full_state_sched(
    num_blocks: int, max_num_seqs: int, max_model_len: int, budget: int, **opts: Any
) -> Scheduler:
    """A scheduler over a full-attention + state model of `num_blocks` blocks each."""
    full = FullAttentionSpec(num_kv_heads=1, head_size=8)
    state = StateSpec(shapes=((2, 8),), dtypes=("fp32",))
    plan = plan_with_blocks(
        ModelSpec("h", (full, state)),
        num_blocks,
        block_size=BS,
        max_num_seqs=max_num_seqs,
        max_model_len=max_model_len,
        max_num_batched_tokens=max_model_len,
    )
    return Scheduler(
        KVCacheManager(plan),
        max_num_batched_tokens=budget,
        max_num_seqs=max_num_seqs,
        max_model_len=max_model_len,
        **opts,
    )


def _hybrid_sched(cut: bool, budget: int = 64, like_vllm: bool = False) -> Scheduler:
    return _full_state_sched(
        64,
        4,
        64,
        budget,
        cut_at_shared_prefix=cut,
        chunk_split="vllm" if like_vllm else "hybridkv",
    )


@pytest.mark.parametrize("cut", [False, True])
def test_align_mode_checkpoints_chunk_ends_and_shared_prefix_cut(cut: bool) -> None:
    s = _hybrid_sched(cut)
    assert s.align == BS
    shared = np.arange(1, 19, dtype=np.int32)  # 18 shared tokens: boundary at 16
    hits = []
    chunks = []
    for i in range(3):
        s.add_request(i, np.concatenate([shared, np.full(7, 40 + i, dtype=np.int32)]), 1)
        while s.has_unfinished():
            out = s.schedule()
            hits += out.new_hit_tokens.tolist()
            chunks.append(out.num_new_tokens.tolist())
            s.update_from_output(np.full(out.sample_req_ids.shape[0], 3))
    # Request 0 (25 tokens): one chunk cut at the last block boundary, then the tail.
    assert chunks[:2] == [[24], [1]]
    # Its state checkpoints sit at 24 only: request 1 shares 16 tokens' blocks but no
    # checkpoint there. With the cut, request 1's first chunk ends at 16, so request 2
    # hits the shared prefix.
    assert hits[0] == 0 and hits[1] == 0
    assert hits[2] == (16 if cut else 0)


def _chunks(s: Scheduler, steps: int) -> list[list[tuple[int, int]]]:
    out_chunks = []
    for _ in range(steps):
        out = s.schedule()
        out_chunks.append(list(zip(out.req_ids.tolist(), out.num_new_tokens.tolist(), strict=True)))
        s.update_from_output(np.full(out.sample_req_ids.shape[0], 3))
    return out_chunks


@pytest.mark.parametrize("like_vllm", [False, True])
def test_vllm_chunk_split(like_vllm: bool) -> None:
    # Two 25-token prompts, 6 tokens per step, block 4: both rules cut the first
    # request's chunk to a boundary (4); the 2 tokens left run as a sub-block chunk of
    # the second request by default, while vLLM's rule stops admission there.
    s = _hybrid_sched(False, budget=6, like_vllm=like_vllm)
    for i in range(2):
        s.add_request(i, np.arange(1 + 30 * i, 26 + 30 * i, dtype=np.int32), 1)
    first = _chunks(s, 2)
    if like_vllm:
        assert first == [[(0, 4)], [(0, 4)]]
    else:
        assert first == [[(0, 4), (1, 2)], [(0, 4), (1, 2)]]
    # A 24-token prompt (a multiple of the block): by default one chunk to its end; by
    # vLLM's rule the tail checkpoint lies before the last token (20), then 4 tokens.
    s = _hybrid_sched(False, like_vllm=like_vllm)
    s.add_request(0, np.arange(1, 25, dtype=np.int32), 2)
    assert _chunks(s, 2) == ([[(0, 20)], [(0, 4)]] if like_vllm else [[(0, 24)], [(0, 1)]])


def test_shared_prefix_cut_applies_to_later_prefill_chunks() -> None:
    # The branch point a lookup discovers can lie past the request's first chunk (a
    # long shared document behind a small step budget): the chunk that crosses it must
    # still end there, so the state checkpoints the shared prefix and the third request
    # hits all of it (docqa regression: the cut applied to the first chunk only).
    s = _hybrid_sched(True, budget=12)
    shared = np.arange(1, 23, dtype=np.int32)  # 22 shared tokens: boundary at 20
    hits: list[int] = []
    ends: list[list[int]] = []
    for i in range(3):
        s.add_request(i, np.concatenate([shared, np.full(7, 40 + i, dtype=np.int32)]), 1)
        mine: list[int] = []
        while s.has_unfinished():
            out = s.schedule()
            hits += out.new_hit_tokens.tolist()
            mine += (out.num_computed_before + out.num_new_tokens).tolist()
            s.update_from_output(np.full(out.sample_req_ids.shape[0], 3))
        ends.append(mine)
    # Request 1 found the branch point at 20 (past its first 12-token chunk): one of
    # its chunks ends there.
    assert hits[1] < 12 and 20 in ends[1]
    assert hits[2] == 20


def _long_sched(prompt_cut: int) -> Scheduler:
    return _full_state_sched(256, 2, 512, 512, prompt_cut=prompt_cut)


@pytest.mark.parametrize("prompt_cut", [0, 8])
def test_prompt_cut_ends_a_long_prefill_on_its_coarse_boundary(prompt_cut: int) -> None:
    # A 301-token prompt computed from nothing (>= PROMPT_CUT_MIN x 8 tokens): with
    # prompt_cut 8 its prefill ends a chunk at 296 (the prompt's last multiple of 8)
    # and runs the rest whole; the state checkpoint there serves a prompt sharing the
    # first 298 tokens. Without it the chunk ends at 300 and that prompt hits nothing.
    s = _long_sched(prompt_cut)
    shared = np.arange(1, 299, dtype=np.int32)
    s.add_request(0, np.concatenate([shared, np.asarray([7, 7, 7], dtype=np.int32)]), 1)
    chunks = []
    while s.has_unfinished():
        out = s.schedule()
        chunks.append(out.num_new_tokens.tolist())
        s.update_from_output(np.full(out.sample_req_ids.shape[0], 3))
    assert chunks == ([[296], [5]] if prompt_cut else [[300], [1]])
    s.add_request(1, np.concatenate([shared, np.asarray([9, 9], dtype=np.int32)]), 1)
    out = s.schedule()
    assert out.new_hit_tokens.tolist() == ([296] if prompt_cut else [0])


@pytest.mark.parametrize("bad", [-1, True, 6, 2.0])
def test_prompt_cut_refuses_bad_values(bad: object) -> None:
    with pytest.raises(InvalidArgumentError, match="prompt_cut"):
        _long_sched(bad)  # type: ignore[arg-type]


def test_prompt_cut_leaves_a_short_prefill_from_a_coarse_hit_alone() -> None:
    # Request 1 hits request 0's checkpoint at 256, which is also its prompt's last
    # multiple of prompt_cut, and computes 6 new tokens: no coarse cut applies, so its
    # prefill still ends on the prompt's last block boundary (260) for a prompt-end
    # checkpoint (the rest of a prompt runs whole only after a coarse cut).
    s = _long_sched(8)
    base = np.arange(1, 257, dtype=np.int32)
    s.add_request(0, np.concatenate([base, np.asarray([7, 7, 7], dtype=np.int32)]), 1)
    while s.has_unfinished():
        out = s.schedule()
        s.update_from_output(np.full(out.sample_req_ids.shape[0], 3))
    s.add_request(1, np.concatenate([base, np.arange(500, 506, dtype=np.int32)]), 1)
    chunks = []
    while s.has_unfinished():
        out = s.schedule()
        chunks.append(out.num_new_tokens.tolist())
        if out.new_hit_tokens.size:
            assert out.new_hit_tokens.tolist() == [256]
        s.update_from_output(np.full(out.sample_req_ids.shape[0], 3))
    assert chunks == [[4], [2]]


class _KeepMinManager(KVCacheManager):
    """A manager that keeps a prompt's last checkpoint only after ``keep`` tokens
    computed beyond the hit (what an elastic arena reports as ``prompt_keep_min``)."""

    keep = 0

    @property
    def prompt_keep_min(self) -> int:
        return self.keep


@pytest.mark.parametrize("keep", [0, 12, 40])
def test_a_prompt_ends_its_prefill_on_a_block_boundary_only_where_the_checkpoint_stays(
    keep: int,
) -> None:
    # A 30-token prompt with no hit: its last block boundary (28) lies 28 tokens past
    # the hit. Where the manager keeps that checkpoint (28 >= keep) the prefill ends a
    # chunk there and the last 2 tokens take another step; where it would not (keep 40)
    # the prompt runs whole in one step.
    s = _keep_sched(keep, budget=64, prompt_cut=0, cut_at_shared_prefix=False)
    assert s.prompt_keep_min == keep
    chunks, _ = _run_chunks(s, 0, np.arange(1, 31))
    assert chunks == ([[30]] if keep > 28 else [[28], [2]])


def test_an_elastic_manager_reports_its_prompt_keep_min() -> None:
    full = FullAttentionSpec(num_kv_heads=1, head_size=8)
    state = StateSpec(shapes=((2, 8),), dtypes=("fp32",))
    spec = ModelSpec("h", (full, state))
    kw = dict(block_size=BS, max_num_seqs=2, max_model_len=64, max_num_batched_tokens=64)
    elastic = plan_memory(spec, memory_bytes=200_000, layout="elastic", **kw)  # type: ignore[arg-type]
    m = KVCacheManager(elastic)
    # Twice the full-attention tokens a state page's bytes hold.
    pages = {g.kind: g.page_size_bytes for g in elastic.groups}
    per_token = pages["full_attention"] / BS
    assert m.prompt_keep_min == -(-2 * pages["state"] // per_token)
    assert KVCacheManager(plan_with_blocks(spec, 64, **kw)).prompt_keep_min == 0  # type: ignore[arg-type]


def _keep_sched(
    keep: int, budget: int, prompt_cut: int = 8, cut_at_shared_prefix: bool = True
) -> Scheduler:
    """A full + state scheduler (align mode, 4-token blocks) over a manager that reports
    ``keep`` as its ``prompt_keep_min``, cutting prompts at multiples of ``prompt_cut``."""
    full = FullAttentionSpec(num_kv_heads=1, head_size=8)
    state = StateSpec(shapes=((2, 8),), dtypes=("fp32",))
    plan = plan_with_blocks(
        ModelSpec("h", (full, state)),
        64,
        block_size=BS,
        max_num_seqs=2,
        max_model_len=64,
        max_num_batched_tokens=64,
    )
    m = _KeepMinManager(plan)
    m.keep = keep
    return Scheduler(
        m,
        max_num_batched_tokens=budget,
        max_num_seqs=2,
        max_model_len=64,
        prompt_cut=prompt_cut,
        cut_at_shared_prefix=cut_at_shared_prefix,
    )


def _run_chunks(s: Scheduler, rid: int, prompt: Any) -> tuple[list[list[int]], list[int]]:
    """Run request ``rid`` to its end alone: its chunk sizes per step and its hit."""
    s.add_request(rid, np.asarray(prompt, dtype=np.int32), 1)
    chunks: list[list[int]] = []
    hits: list[int] = []
    while s.has_unfinished():
        out = s.schedule()
        chunks.append(out.num_new_tokens.tolist())
        hits += out.new_hit_tokens.tolist()
        s.update_from_output(np.full(out.sample_req_ids.shape[0], 3))
    return chunks, hits


@pytest.mark.parametrize("keep", [12, 40])
def test_a_kept_prompt_end_lies_on_the_coarse_cut_before_the_final_segment(keep: int) -> None:
    # A 30-token prompt with no hit: its last multiple of prompt_cut (24) lies 24 >= 12
    # tokens past the hit, so with keep 12 the prefill ends a chunk there (not on the
    # last block boundary, 28) and a prompt sharing its first 26 tokens hits 24. With
    # keep 40 nothing is kept: the prompt runs whole and that prompt hits nothing.
    s = _keep_sched(keep, budget=64)
    shared = np.arange(1, 27)
    chunks, _ = _run_chunks(s, 0, np.concatenate([shared, [7, 7, 7, 7]]))
    assert chunks == ([[24], [6]] if keep == 12 else [[30]])
    _, hits = _run_chunks(s, 1, np.concatenate([shared, [9, 9]]))
    assert hits == [24 if keep == 12 else 0]


@pytest.mark.parametrize("keep", [12, 20])
def test_a_last_chunk_starting_near_the_coarse_cut_runs_the_prompt_whole(keep: int) -> None:
    # A 30-token prompt at a 16-token budget: its first chunk ends at 16. With keep 12
    # that chunk end lies >= 12 past the hit and less than 12 before the coarse cut
    # (24): it is the prompt-end checkpoint, and the rest (14) runs whole, one step
    # sooner. With keep 20 it is too shallow: the prefill ends a chunk at 24 instead.
    s = _keep_sched(keep, budget=16)
    shared = np.arange(1, 27)
    chunks, _ = _run_chunks(s, 0, np.concatenate([shared, [7, 7, 7, 7]]))
    assert chunks == ([[16], [14]] if keep == 12 else [[16], [8], [6]])
    _, hits = _run_chunks(s, 1, np.concatenate([shared, [9, 9]]))
    assert hits == [16 if keep == 12 else 24]


def test_a_prompt_end_counts_from_the_shared_prefix_boundary() -> None:
    # Request 0 caches 40 tokens (attention blocks, and a state checkpoint at 40 only).
    # Request 1 shares its first 20 tokens: no checkpoint there (hit 0), so its first
    # chunk ends at that boundary (a fork point). Its prompt (30) then has no coarse cut
    # 12 tokens past the fork point (24 - 20 < 12) and the rest runs whole: no step for
    # a prompt end that would save the 8 tokens past the fork.
    s = _keep_sched(12, budget=64)
    shared = np.arange(1, 21)
    chunks, _ = _run_chunks(s, 0, np.concatenate([shared, np.arange(100, 120)]))
    assert chunks == [[40]]
    chunks, hits = _run_chunks(s, 1, np.concatenate([shared, np.arange(200, 210)]))
    assert hits == [0] and chunks == [[20], [10]]


def _window_sched() -> tuple[Scheduler, KVCacheManager, int, int]:
    """An elastic arena whose sliding window's floor the planner capped (a pool of its
    own, 61 blocks of 256 B beside a full-attention group holding 63 of 128 B)."""
    model = ModelSpec(
        "w",
        (
            FullAttentionSpec(num_kv_heads=1, head_size=8),
            SlidingWindowSpec(num_kv_heads=2, head_size=8, window=48),
        ),
    )
    plan = plan_memory(
        model,
        memory_bytes=24_000,
        layout="elastic",
        block_size=4,
        max_num_seqs=8,
        max_model_len=128,
        max_num_batched_tokens=32,
    )
    assert plan.groups[1].sizing == "capped" and plan.arena is not None
    m = KVCacheManager(plan, enable_prefix_caching=True, hash_seed=0)
    s = Scheduler(m, max_num_batched_tokens=32, max_num_seqs=8, max_model_len=128)
    return s, m, plan.groups[1].floor_blocks, plan.arena.growing_blocks


def _run_checked(s: Scheduler, m: KVCacheManager) -> tuple[int, int, int]:
    """Run to the end, checking every step that the window pool holds its effective
    floor; returns (peak full-pool blocks, peak running, peak window floor)."""
    full = running = eff_peak = 0
    for _ in range(500):
        if not s.has_unfinished():
            return full, running, eff_peak
        out = s.schedule()
        m.check_invariants()
        present = m._core.present_blocks()
        eff = m.effective_floors()
        assert present[1] >= eff[1]
        full, running = max(full, present[0]), max(running, out.num_running)
        eff_peak = max(eff_peak, eff[1])
        s.update_from_output(np.full(out.sample_req_ids.shape[0], 3))
    raise AssertionError("did not finish")


def test_long_requests_use_the_windows_idle_floor_and_short_ones_get_it_back() -> None:
    """Long requests (past the window) hold 13 window blocks each, far below the capped
    floor: the full group takes the rest and all three run at once, with no preemption
    (the planned floor would leave it 63 blocks, two such requests). Then short
    requests (their whole length inside the window) raise the window's effective floor
    again (7 blocks each): nobody starves, every request finishes, no preemption."""
    s, m, floor, growing = _window_sched()
    rng = np.random.default_rng(0)
    for i in range(3):
        s.add_request(i, rng.integers(1, 1000, 100).astype(np.int32), 8)
    full, running, eff_peak = _run_checked(s, m)
    assert running == 3 and s.num_preemptions == 0
    assert full > growing  # the full group held memory of the window's planned floor
    assert eff_peak < floor
    for i in range(10, 18):
        s.add_request(i, rng.integers(1, 1000, 20).astype(np.int32), 8)
    _, running, eff_peak = _run_checked(s, m)
    assert running == 8 and s.num_preemptions == 0
    assert eff_peak == 8 * 7  # every short request's whole length in window blocks
    assert len(s.finished) == 11


def test_set_floor_needs_refuses_bad_needs_and_changes_nothing() -> None:
    _, m, floor, _ = _window_sched()
    before = m.effective_floors()
    for bad in ([0, floor + 1], [1, 0], [0], [0, -1]):
        with pytest.raises(InvalidArgumentError):
            m.set_floor_needs(bad)
        assert m.effective_floors() == before
    assert m.set_floor_needs([0, 5])
    assert m.effective_floors() == [0, 5]
