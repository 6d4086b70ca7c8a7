"""The ``vllm`` layout on hand-made scenarios whose vLLM 0.33 outcome is derived by hand.

Qwen3-Next-80B-A3B under vLLM: 12 full-attention + 36 gated-delta-net layers, one layer's
state 1,097,728 B, one full-attention token 2,048 B: the block grows in steps of 16 to
544 tokens (544 * 2,048 = 1,114,112 B >= one state), four groups of 12 layers (3 state
groups + 1 attention), every group drawing from one pool. In align mode a state block
is cached only where a step ends on a 544-token boundary.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hybridkv import KVCacheManager, ManagerConfig, ManagerGroup
from hybridkv.cli import main
from hybridkv.errors import PlanError
from hybridkv.models import load_model
from hybridkv.planner import plan_memory, vllm_runtime_plan, vllm_runtime_plan_for
from hybridkv.scheduler import Scheduler

B = 544


def vllm_plan(memory: int = 16 << 30, **kw: Any) -> Any:
    limits = {"max_num_seqs": 8, "max_model_len": 8192, "max_num_batched_tokens": 8192}
    limits.update(kw)
    return vllm_runtime_plan(
        plan_memory(load_model("qwen3-next-80b-a3b"), memory_bytes=memory, **limits)
    )


def vllm_scheduler(plan: Any, **kw: Any) -> Scheduler:
    m = KVCacheManager(plan)
    assert m.shared_pool
    return Scheduler(
        m,
        max_num_batched_tokens=plan.max_num_batched_tokens,
        max_num_seqs=plan.max_num_seqs,
        chunk_split="vllm",
        **kw,
    )


def run_one(s: Scheduler, rid: int, prompt: list[int]) -> tuple[int, list[int]]:
    """Run one request alone to completion (one output token): its hit and chunks."""
    s.add_request(rid, np.array(prompt, dtype=np.int32), 1)
    hit, chunks = -1, []
    while s.has_unfinished():
        out = s.schedule()
        if rid in out.new_req_ids.tolist():
            hit = int(out.new_hit_tokens[0])
        chunks += out.num_new_tokens.tolist()
        s.update_from_output(np.full(int(out.samples.sum()), 7, dtype=np.int32))
    return hit, chunks


def test_the_plan_is_vllms_shared_pool() -> None:
    p = vllm_plan()
    assert [(g.kind, len(g.layers), g.block_size) for g in p.groups] == [
        ("state", 12, B),
        ("state", 12, B),
        ("state", 12, B),
        ("full_attention", 12, B),
    ]
    n = (16 << 30) // (B * 2048 * 12)
    assert {g.num_blocks for g in p.groups} == {n} and p.shared_pool


def test_inflated_block_granularity_and_chunk_end_caching() -> None:
    s = vllm_scheduler(vllm_plan())
    prompt = list(range(1, 1001))
    # vLLM's split: the first chunk stops at the last block boundary before the final
    # token ((1000 - 1) // 544 * 544 = 544) so the state there is cached; the rest next.
    assert run_one(s, 1, prompt) == (0, [544, 456])
    # The same prompt again: attention and state agree on 544 (not 992: hits land on
    # the inflated block).
    assert run_one(s, 2, prompt) == (B, [456])
    # A prompt shorter than one inflated block never hits, whatever it shares.
    assert run_one(s, 3, prompt[:500])[0] == 0
    # Sharing 700 tokens: one block's worth.
    assert run_one(s, 4, prompt[:700] + list(range(5000, 5300)))[0] == B


def test_chunks_end_on_block_boundaries_under_a_prefill_cap() -> None:
    s = vllm_scheduler(vllm_plan(), long_prefill_token_threshold=600)
    prompt = list(range(1, 1201))
    # 600-token caps floor to boundaries: 0..544, 544..1088 (the last boundary before
    # token 1199), then the tail: states cached at 544 and 1088.
    assert run_one(s, 1, prompt) == (0, [544, 544, 112])
    assert run_one(s, 2, prompt)[0] == 2 * B


def test_state_cached_only_where_a_chunk_ends_on_a_boundary() -> None:
    # The manager alone (no scheduler split): chunks of 600 never end on 544 or 1088,
    # so attention caches two full blocks but no state checkpoint exists: no hit, and
    # the lookup reports the shared-prefix boundary a split would have cached.
    m = KVCacheManager(vllm_plan())
    toks = np.arange(1, 1201, dtype=np.int32)
    m.add_requests([1], [toks])
    m.get_computed_tokens([1])
    assert m.allocate_slots([1], [600]).tolist() == [True]
    assert m.allocate_slots([1], [600]).tolist() == [True]
    m.free([1])
    m.add_requests([2], [toks])
    assert m.get_computed_tokens([2]).tolist() == [0]
    assert m.shared_prefix_boundary([2]).tolist() == [2 * B]
    m.check_invariants()


def test_junction_split_makes_the_shared_prefix_hit() -> None:
    s = vllm_scheduler(vllm_plan())
    system = list(range(1, 1701))
    # 3,000 tokens: one chunk to the last boundary before its end (2,720), then 280:
    # attention caches 5 blocks, the state only 2,720.
    assert run_one(s, 1, [*system, *range(10000, 11300)]) == (0, [2720, 280])
    # 2,500 tokens sharing 1,700: attention could serve 1,632 (3 blocks) but no state
    # lies there, so the hit is 0 and the lookup reports the shared-prefix boundary
    # 1,632. vLLM stops the first chunk there (the state gets cached), then at the last
    # boundary before the end (2,176), then the tail.
    assert run_one(s, 2, [*system, *range(20000, 20800)]) == (0, [1632, 544, 324])
    # A third request with the same 1,700-token prefix now hits all 3 blocks.
    assert run_one(s, 3, [*system, *range(30000, 30300)])[0] == 3 * B


def shared_manager(num_blocks: int) -> KVCacheManager:
    """Qwen3-Next's vLLM groups by hand: 3 state groups + 1 attention, block 544."""
    state = ManagerGroup("state", B, num_blocks)
    groups = (state, state, state, ManagerGroup("full_attention", B, num_blocks))
    return KVCacheManager(ManagerConfig(groups, "align"), shared_pool=True)


def test_shared_pool_exhaustion_by_hand() -> None:
    toks = np.arange(1, 1102, dtype=np.int32)
    # 8 usable blocks. Chunk 1 (544 tokens): 1 attention + 3 state blocks: 4 left.
    m = shared_manager(9)
    m.add_requests([1], [toks])
    m.get_computed_tokens([1])
    assert m.allocate_slots([1], [544]).tolist() == [True]
    assert m.stats().num_free == (4,) * 4
    # Chunk 2 (to 1100): 2 attention + 3 new state blocks (the old states are released
    # only at the request's next allocation) = 5 > 4: refused, nothing changes; with a
    # pool per group (9 blocks each) it would fit.
    assert m.allocate_slots([1], [556]).tolist() == [False]
    assert m.stats().num_free == (4,) * 4
    # One more block: it fits, leaving none; the next step first releases the three
    # superseded states (entries 0), then needs nothing new.
    m = shared_manager(10)
    m.add_requests([1], [toks])
    m.get_computed_tokens([1])
    assert m.allocate_slots([1], [544]).tolist() == [True]
    assert m.allocate_slots([1], [556]).tolist() == [True]
    assert m.stats().num_free == (0,) * 4
    assert m.allocate_slots([1], [1]).tolist() == [True]
    assert m.stats().num_free == (3,) * 4
    m.check_invariants()


@pytest.mark.parametrize("whole", [True, False])
def test_scheduler_admits_on_the_shared_free_count(whole: bool) -> None:
    # A pool of 8 usable blocks and 600-token requests whose first chunk needs 1
    # attention + 3 state blocks each. Checking only the chunk, admission control lets
    # exactly two in (8 blocks); the third waits instead of failing an allocation.
    # Checking the whole sequence (the default, as vLLM 0.33's
    # scheduler_reserve_full_isl: 2 attention + 3 state blocks; vLLM counts at least
    # that), the second waits too: 5 > the 4 blocks left after the first's chunk.
    p = vllm_plan()
    from dataclasses import replace

    small = replace(p, groups=tuple(replace(g, num_blocks=9) for g in p.groups))
    s = vllm_scheduler(small, long_prefill_token_threshold=B, reserve_full_prompt=whole)
    for rid in range(3):
        s.add_request(rid, np.arange(1 + 2000 * rid, 1 + 2000 * rid + 600, dtype=np.int32), 1)
    out = s.schedule()
    assert out.req_ids.tolist() == ([0] if whole else [0, 1])
    assert out.num_new_tokens.tolist() == ([544] if whole else [544, 544])
    assert out.preempted_req_ids.size == 0


@pytest.mark.parametrize(
    ("argv", "layouts"),
    [
        ([], ["elastic", "static", "vllm"]),
        (["--layout", "vllm"], ["vllm"]),
        (["--layout", "static", "--layout", "vllm"], ["static", "vllm"]),
    ],
)
def test_cli_layout_parsing(
    argv: list[str], layouts: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    base = ["simulate", "--model", "qwen3-next-80b-a3b", "--memory", "16GiB", "--json"]
    assert main([*base, "--trace", "chat", "--seed", "1", *argv]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["layouts"]) == layouts
    if "vllm" in layouts:
        v = out["layouts"]["vllm"]
        assert v["block_size"] == B and {p["num_blocks"] for p in v["pools"]} == {
            v["pools"][0]["num_blocks"]
        }


def test_cli_rejects_an_unknown_layout(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["simulate", "--model", "qwen3-next-80b-a3b", "--memory", "16GiB"]
    assert main([*base, "--trace", "chat", "--layout", "unified"]) == 2
    assert "--layout" in capsys.readouterr().err


PAGE = B * 2048  # one layer's page: 544 tokens of full attention, one padded state


def test_vllm_start_up_check_sums_every_layer() -> None:
    # vLLM's check_enough_kv_cache_memory, by hand for max_model_len 8192: 12 attention
    # layers x cdiv(8192, 544) = 16 pages, 36 state layers x 2 pages (align): 264 pages,
    # plus one 12-page pool block (the null block) held back. Exactly that starts (it
    # runs with fewer blocks than 8 requests' states need: vLLM reserves no floors).
    model = load_model("qwen3-next-80b-a3b")
    limits = {"max_num_seqs": 8, "max_model_len": 8192, "max_num_batched_tokens": 8192}
    need = (12 * 16 + 36 * 2 + 12) * PAGE
    p = vllm_runtime_plan_for(model, memory_bytes=need, **limits)
    assert {g.num_blocks for g in p.groups} == {need // (12 * PAGE)} == {23}
    with pytest.raises(PlanError, match="vLLM refuses to start") as e:
        vllm_runtime_plan_for(model, memory_bytes=need - 1, **limits)
    assert f"at least {need} bytes" in str(e.value)
    # hybridkv's own planner refuses both: 8 requests' floors don't fit.
    with pytest.raises(PlanError):
        plan_memory(model, memory_bytes=need, **limits)


def test_vllm_runs_where_hybridkv_refuses(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    # 4 GiB, 64 sequences: 321 pool blocks of 12 pages (320 usable); 64 requests'
    # align-mode states alone would need 64 x 3 x 2 = 384. vLLM starts (one request fits) and preempts;
    # hybridkv's layouts refuse the floors and say why.
    argv = ["simulate", "--model", "qwen3-next-80b-a3b", "--memory", "4GiB", "--json"]
    assert main([*argv, "--trace", "chat", "--seed", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["layouts"]) == ["vllm"]
    assert set(out["skipped"]) == {"static", "elastic"}
    assert "bounded pools need" in out["skipped"]["static"]
    assert "floors need" in out["skipped"]["elastic"]
    v = out["layouts"]["vllm"]
    assert {p["num_blocks"] for p in v["pools"]} == {(4 << 30) // (12 * PAGE)} == {321}
    assert v["token_capacity"] == 0  # runtime capacity beside 64 requests' states
    assert v["preemptions"] > 0 and v["peak_concurrency"] < 64
