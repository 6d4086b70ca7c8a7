"""The end-to-end proof: a hybrid model reading its cache through hybridkv's block tables
computes what it computes with no cache at all.

A tiny random-weight model (2 full attention, 2 sliding-window (8), 1 Mamba-2, 1 gated
delta net layers) generates greedily for requests sharing a prefix, through
Scheduler + KVCacheManager + the Triton kernels (CPU interpreter), with pools small
enough to force preemption. Every generated token must equal the dense path's greedy
token and every sampled logit row must match the dense logits within the fp32
tolerance of ``hybridkv.ops.tolerances``; the run must really have chunked prefills,
prefix hits served by state checkpoints, released sliding-window blocks and a
preemption with a resumed re-hit. Both state-checkpoint modes run: ``align``
(checkpoints where a step ends) and ``all`` (a checkpoint at every block boundary, the
kernels writing the ones inside a step).
"""

from __future__ import annotations

import os

# The kernels run on CPU tensors: Triton's interpreter must be chosen before they load.
os.environ["TRITON_INTERPRET"] = "1"

import pytest
import torch
from hybridkv.ops.tolerances import tolerance
from hybridkv.planner import plan_with_blocks
from hybridkv.testing.tiny_model import TinyHybridLM, serve

MAX_TOKENS = 8
BLOCK_SIZE = 4
# Blocks per pool (null block included), by group kind: the full-attention pool holds
# 13 blocks of 4 tokens, less than the 4 requests' ~30 tokens each need at once. In
# mode "all" a state group keeps a checkpoint per block, like full attention.
POOL_BLOCKS = {
    "align": {"full_attention": 14, "sliding_window": 24, "state": 12},
    "all": {"full_attention": 14, "sliding_window": 24, "state": 48},
}
# Prefill chunk cap: in "align" the scheduler cuts chunks to end on block boundaries;
# in "all" chunks of 6 put the shared prefix's end (16) inside a step, so the hits on
# it start from a checkpoint written mid-step.
CHUNK_CAP = {"align": 8, "all": 6}


def _prompts() -> dict[int, list[int]]:
    g = torch.Generator().manual_seed(1)
    prefix = torch.randint(0, 256, (16,), generator=g).tolist()
    return {r: prefix + torch.randint(0, 256, (2 + r,), generator=g).tolist() for r in range(4)}


def test_tiny_model_layers_form_four_groups() -> None:
    model = TinyHybridLM(seed=0)
    plan = plan_with_blocks(
        model.model_spec(),
        16,
        block_size=BLOCK_SIZE,
        max_num_seqs=4,
        max_model_len=64,
        max_num_batched_tokens=32,
    )
    assert [(g.kind, g.layers) for g in plan.groups] == [
        ("full_attention", (0, 5)),
        ("sliding_window", (1, 3)),
        ("state", (2,)),
        ("state", (4,)),
    ]


def test_dense_path_is_causal() -> None:
    # Appending tokens never changes earlier logits: the dense path is a valid referee.
    model = TinyHybridLM(seed=3)
    seq = list(range(5, 25))
    whole = model.dense_logits(seq)
    part = model.dense_logits(seq[:13])
    torch.testing.assert_close(whole[:13], part, atol=1e-5, rtol=1e-5)
    assert not torch.equal(model.dense_logits(seq[1:])[-1], whole[-1])


@pytest.mark.parametrize("mode", ["align", "all"])
def test_cached_generation_matches_dense_greedy(mode: str) -> None:
    model = TinyHybridLM(seed=0)
    spec = model.model_spec()
    probe = plan_with_blocks(
        spec, 16, block_size=BLOCK_SIZE, max_num_seqs=4, max_model_len=64, max_num_batched_tokens=32
    )
    plan = plan_with_blocks(
        spec,
        [POOL_BLOCKS[mode][g.kind] for g in probe.groups],
        block_size=BLOCK_SIZE,
        max_num_seqs=4,
        max_model_len=64,
        max_num_batched_tokens=32,
        mamba_cache_mode=mode,
    )
    prompts = _prompts()
    res = serve(
        model,
        prompts,
        MAX_TOKENS,
        plan=plan,
        max_num_batched_tokens=32,
        max_num_seqs=4,
        long_prefill_token_threshold=CHUNK_CAP[mode],
        arrivals={0: 0, 1: 2, 2: 3, 3: 4},
    )

    # What the run went through.
    assert res.preemptions >= 1
    assert res.hit_tokens > 0, "no prefix hit at admission"
    assert res.resumed_hit_tokens > 0, "no re-hit after preemption"
    state_groups = [g.index for g in plan.groups if g.kind == "state"]
    stats = res.manager_stats
    assert all(stats.group_hit_tokens[g] > 0 for g in state_groups), "no state checkpoint hit"
    assert any(t.chunked_prefill_rows for t in res.traces), "no chunked prefill"
    assert any(t.window_nulls for t in res.traces), "no sliding-window block released"
    assert any(t.state_reads for t in res.traces), "no state read from an earlier step"
    assert any(t.decode_rows for t in res.traces)
    if mode == "all":
        assert res.checkpoint_writes > 0, "no checkpoint written inside a step"
        assert res.checkpoint_reads > 0, "no hit started from a mid-step checkpoint"

    atol, rtol = tolerance(torch.float32)
    for rid, prompt in prompts.items():
        assert res.outputs[rid] == model.dense_generate(prompt, MAX_TOKENS), f"request {rid}"
        dense = model.dense_logits(prompt + res.outputs[rid])
        got = torch.stack(res.logits[rid])
        torch.testing.assert_close(got, dense[len(prompt) - 1 : -1], atol=atol, rtol=rtol)


@pytest.mark.parametrize(("prompt_len", "chunk"), [(17, 5), (17, 6), (18, 5)])
def test_mode_all_step_from_mid_block_across_its_end(prompt_len: int, chunk: int) -> None:
    # Issue 13's recipe: block size 4, chunks of 5 over a 17-token prompt make the last
    # prefill step [15, 17) start mid-block and cross 16 with fewer new tokens than
    # d_conv - 1 = 3: its first checkpoint slot is its own source slot.
    model = TinyHybridLM()
    plan = plan_with_blocks(
        model.model_spec(),
        64,
        block_size=4,
        max_num_seqs=1,
        max_model_len=64,
        max_num_batched_tokens=32,
        mamba_cache_mode="all",
    )
    prompt = torch.randint(0, 256, (prompt_len,), generator=torch.Generator().manual_seed(1))
    tokens = prompt.tolist()
    res = serve(
        model,
        {0: tokens},
        4,
        plan=plan,
        max_num_batched_tokens=32,
        max_num_seqs=1,
        long_prefill_token_threshold=chunk,
    )
    assert res.checkpoint_writes > 0
    atol, rtol = tolerance(torch.float32)
    dense = model.dense_logits(tokens + res.outputs[0])
    got = torch.stack(res.logits[0])
    torch.testing.assert_close(got, dense[prompt_len - 1 : -1], atol=atol, rtol=rtol)
    assert res.outputs[0] == model.dense_generate(tokens, 4)
