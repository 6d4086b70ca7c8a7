"""End to end on the elastic layout: the tiny hybrid model's caches live in ONE arena.

Every layer's K/V and state tensors are strided views over one byte tensor
(:class:`hybridkv.arena_backend.TorchArena`, all NaN to start), and the manager moves
regions of it between groups while requests run. Greedy generation through
Scheduler + KVCacheManager + the Triton kernels (CPU interpreter) must still equal the
dense path token for token, with logits within the fp32 tolerance, and memory must
really have moved between groups mid-run.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest
import torch
from hybridkv.arena_backend import TorchArena
from hybridkv.errors import InvalidArgumentError
from hybridkv.ops.tolerances import tolerance
from hybridkv.planner import plan_memory, plan_with_blocks
from hybridkv.testing.tiny_model import TinyHybridLM, serve

MAX_TOKENS = 8
# Small enough that the groups contend for the arena's 7 regions.
MEMORY = 300_000


def _plan(model: TinyHybridLM) -> object:
    return plan_memory(
        model.model_spec(),
        memory_bytes=MEMORY,
        block_size=4,
        max_num_seqs=4,
        max_model_len=64,
        max_num_batched_tokens=32,
        layout="elastic",
    )


def test_arena_views_share_one_tensor() -> None:
    model = TinyHybridLM(seed=0)
    plan = _plan(model)
    arena = TorchArena(plan)
    g = plan.groups[0]  # type: ignore[attr-defined]
    k, v = arena.layer_views(0, 1, [((4, 2, 8), torch.float32), ((4, 2, 8), torch.float32)])
    assert k.shape == (MEMORY // g.page_size_bytes, 4, 2, 8)
    assert k.stride(0) == g.page_size_bytes // 4
    assert k.untyped_storage().data_ptr() == arena.bytes.untyped_storage().data_ptr()
    # Writing block 3 of a layer's V lands at byte 3 * page + its offset, nowhere else.
    v[3].fill_(1.0)
    changed = (arena.bytes != 0xFF).nonzero().flatten()
    assert changed.min().item() >= 3 * g.page_size_bytes
    assert changed.max().item() < 4 * g.page_size_bytes
    # A state pool's view starts at its base (its floor span's pages tile the span):
    # block 1 of group 2 is bytes [base + page, base + 2 * page).
    st = plan.groups[2]  # type: ignore[attr-defined]
    base = plan.arena.bases[2]  # type: ignore[attr-defined]
    assert st.kind == "state" and base > 0
    s = arena.block_view(2, 0, (4,), torch.float32)
    assert s.shape[0] == (MEMORY - base) // st.page_size_bytes
    arena.bytes.fill_(0xFF)
    s[1].fill_(1.0)
    changed = (arena.bytes != 0xFF).nonzero().flatten()
    assert changed.min().item() == base + st.page_size_bytes
    assert changed.max().item() < base + st.page_size_bytes + 16
    with pytest.raises(InvalidArgumentError):
        arena.layer_views(0, 5, [((4,), torch.float32)])
    with pytest.raises(InvalidArgumentError):
        arena.block_view(0, 0, (g.page_size_bytes,), torch.float32)
    static = plan_with_blocks(
        model.model_spec(),
        8,
        block_size=4,
        max_num_seqs=4,
        max_model_len=64,
        max_num_batched_tokens=32,
    )
    with pytest.raises(InvalidArgumentError):
        TorchArena(static)


def test_elastic_generation_matches_dense_with_memory_moving() -> None:
    model = TinyHybridLM(seed=0)
    plan = _plan(model)
    g = torch.Generator().manual_seed(1)
    # A 40-token shared prefix: enough attention KV that the groups contend for regions
    # mid-run.
    prefix = torch.randint(0, 256, (40,), generator=g).tolist()
    prompts = {r: prefix + torch.randint(0, 256, (2 + r,), generator=g).tolist() for r in range(6)}
    res = serve(
        model,
        prompts,
        MAX_TOKENS,
        plan=plan,
        max_num_batched_tokens=32,
        max_num_seqs=4,
        long_prefill_token_threshold=8,
        arrivals={0: 0, 1: 2, 2: 3, 3: 4, 4: 12, 5: 14},
    )
    # Memory moved between groups while requests were still running.
    moves = res.arena_moves
    assert moves[-1] > 0, "no region changed owner"
    first = next(i for i, m in enumerate(moves) if m > 0)
    assert first < res.steps - 1, "regions only moved after the last step"
    assert res.hit_tokens > 0
    atol, rtol = tolerance(torch.float32)
    for rid, prompt in prompts.items():
        assert res.outputs[rid] == model.dense_generate(prompt, MAX_TOKENS), f"request {rid}"
        dense = model.dense_logits(prompt + res.outputs[rid])
        got = torch.stack(res.logits[rid])
        torch.testing.assert_close(got, dense[len(prompt) - 1 : -1], atol=atol, rtol=rtol)
