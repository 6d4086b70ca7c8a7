"""The roofline cost model: closed forms against brute force, and its stated behaviour."""

from __future__ import annotations

import numpy as np
import pytest
from hybridkv.cost_model import GPUS, CostModel, Params, _AttnGroup, _keys
from hybridkv.errors import InvalidArgumentError
from hybridkv.models import ModelSpec, load_model
from hybridkv.planner import plan_memory
from hybridkv.specs import ChunkedLocalSpec, FullAttentionSpec, SlidingWindowSpec, StateSpec
from hypothesis import given
from hypothesis import strategies as st


def _brute(kind: str, span: int, x: int) -> float:
    total = 0
    for p in range(x):
        if kind == "sliding_window":
            total += min(p + 1, span)
        elif kind == "chunked_local":
            total += p % span + 1
        elif kind == "cross_attention":
            total += span
        else:
            total += p + 1
    return float(total)


@given(
    st.sampled_from(["full_attention", "sliding_window", "chunked_local", "cross_attention"]),
    st.integers(1, 70),
    st.lists(st.integers(0, 300), min_size=1, max_size=5),
)
def test_attended_keys_closed_forms_match_brute_force(kind: str, span: int, xs: list[int]) -> None:
    a = _AttnGroup(kind, 1, 1.0, 1.0, 0 if kind == "full_attention" else span)
    got = _keys(a, np.asarray(xs, dtype=np.float64))
    assert got.tolist() == [_brute(kind, span, x) for x in xs]


def _plan(model: ModelSpec, memory: int = 2**30) -> object:
    return plan_memory(
        model,
        memory_bytes=memory,
        max_num_seqs=8,
        max_model_len=4096,
        max_num_batched_tokens=1024,
    )


def _hybrid() -> ModelSpec:
    full = FullAttentionSpec(num_kv_heads=2, head_size=64)
    swa = SlidingWindowSpec(num_kv_heads=2, head_size=64, window=128)
    local = ChunkedLocalSpec(num_kv_heads=2, head_size=64, chunk_size=256)
    state = StateSpec(shapes=((3, 256), (4, 32, 16)), dtypes=("bf16", "fp32"))
    return ModelSpec(
        "custom-hybrid",
        (full, swa, local, state, state),
        hidden_size=512,
        vocab_size=1000,
        num_attention_heads=8,
    )


def test_step_cost_components_by_hand() -> None:
    plan = _plan(_hybrid())
    params = Params(total=1e8, active=1e8)
    cm = CostModel(plan, gpu="h100-sxm", params=params)  # type: ignore[arg-type]
    n = np.array([10, 1], dtype=np.int64)
    c = np.array([0, 300], dtype=np.int64)
    cost = cm.step(n, c, 2)
    body = 1e8 - 2 * 1000 * 512
    flops = 2 * body * 11 + 2 * 1000 * 512 * 2
    pair = 4 * 8 * 64  # per layer, q heads x head dim
    full = (55 - 0) + (301 * 302 / 2 - 300 * 301 / 2)
    swa = _brute("sliding_window", 128, 10) + (
        _brute("sliding_window", 128, 301) - _brute("sliding_window", 128, 300)
    )
    loc = _brute("chunked_local", 256, 10) + (
        _brute("chunked_local", 256, 301) - _brute("chunked_local", 256, 300)
    )
    flops += pair * (full + swa + loc)
    state_bytes = 2 * (3 * 256 * 2 + 4 * 32 * 16 * 4)  # two state layers in one group
    flops += 2 * state_bytes * 11
    per_tok = 2 * 2 * 64 * 2  # K+V, 2 heads, bf16
    moved = 1e8 * 2
    moved += per_tok * ((10 + 301) + 11)  # full reads all context
    moved += per_tok * ((10 + 128) + 11)
    moved += per_tok * ((10 + 256) + 11)
    moved += 2 * state_bytes * 2
    assert cost.flops == pytest.approx(flops)
    assert cost.bytes == pytest.approx(moved)
    h100 = GPUS["h100-sxm"]
    assert cost.seconds == pytest.approx(max(flops / h100.peak_flops, moved / h100.peak_bandwidth))


def test_moe_decode_reads_few_experts_and_big_batches_most() -> None:
    model = load_model("qwen3-next-80b-a3b")
    plan = plan_memory(
        model,
        memory_bytes=8 * 2**30,
        max_num_seqs=64,
        max_model_len=8192,
        max_num_batched_tokens=8192,
    )
    cm = CostModel(plan)
    assert cm.params_source == "published"
    one = cm.step(np.array([1]), np.array([0]), 1)
    # Batch 1: dense part plus 10 of 512 experts, about 3e9 active params in bf16.
    assert 2 * 2.5e9 < one.bytes < 2 * 4e9
    big = cm.step(np.full(4096, 1), np.zeros(4096, dtype=np.int64), 4096)
    assert big.bytes > 2 * 79e9  # nearly every expert
    prefill = cm.step(np.array([8192]), np.array([0]), 1)
    dense = plan_memory(
        load_model("llama-3.1-8b"),
        memory_bytes=8 * 2**30,
        max_num_seqs=64,
        max_model_len=8192,
        max_num_batched_tokens=8192,
    )
    dcm = CostModel(dense)
    d_prefill = dcm.step(np.array([8192]), np.array([0]), 1)
    assert d_prefill.flops / dcm.peak_flops > 10 * d_prefill.bytes / dcm.peak_bandwidth
    d_decode = dcm.step(np.array([1]), np.array([4096]), 1)
    assert d_decode.bytes / dcm.peak_bandwidth > 10 * d_decode.flops / dcm.peak_flops
    assert cm.step(np.zeros(3, dtype=np.int64), np.zeros(3, dtype=np.int64), 0).seconds == 0.0
    two = CostModel(plan, num_gpus=2).step(np.array([8192]), np.array([0]), 1)
    assert two.seconds == pytest.approx(prefill.seconds / 2)


def test_unknown_model_gets_the_dense_estimate_and_bad_args_raise() -> None:
    plan = _plan(_hybrid())
    cm = CostModel(plan)  # type: ignore[arg-type]
    assert cm.params_source.startswith("estimated")
    assert cm.params.total == 12 * 5 * 512 * 512 + 1000 * 512
    with pytest.raises(InvalidArgumentError, match="unknown GPU"):
        CostModel(plan, gpu="tpu")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        CostModel(plan, num_gpus=0)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        CostModel(plan, weight_bytes=0)  # type: ignore[arg-type]
