"""The roofline cost model: closed forms against brute force, and its stated behaviour."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hybridkv.cost_model import GPU, GPUS, CostModel, Params, _AttnGroup, _keys
from hybridkv.errors import InvalidArgumentError, PlanError
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
    # 80B bf16 weights need 4 H100s (sized); twice as many GPUs halve a step.
    assert cm.num_gpus == 4
    eight = CostModel(plan, num_gpus=8).step(np.array([8192]), np.array([0]), 1)
    assert eight.seconds == pytest.approx(prefill.seconds / 2)


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


# -- deployment sizing (weights + KV + activations must fit) -------------------------------

_GIB = 2**30
# Usable 9 GiB per GPU (0.9 of 10 GiB). _plan: 1 GiB of KV; activations of 1024 batched
# tokens * 512 hidden * 48 bytes (24 MiB) + 8 logit rows * 1000 * 4 bytes.
_TOY_GPU = GPU("toy", 1e12, 1e12, 10 * _GIB)


def _with_heads(heads: int) -> ModelSpec:
    return dataclasses.replace(_hybrid(), num_attention_heads=heads)


def test_num_gpus_is_sized_to_hold_weights_kv_and_activations() -> None:
    plan = _plan(_hybrid())
    # 8 Gi params in bf16 = 16 GiB of weights: (16 + 1) / n + 0.02 <= 9 needs n = 2.
    cm = CostModel(plan, gpu=_TOY_GPU, params=Params(8 * _GIB, 8 * _GIB))  # type: ignore[arg-type]
    d = cm.deployment
    assert (cm.num_gpus, d.sized) == (2, True)
    assert d.weight_bytes == 16 * _GIB and d.kv_bytes == _GIB
    assert d.activation_bytes == 1024 * 512 * 48 + 8 * 1000 * 4
    assert cm.peak_flops == 2e12
    assert cm.describe()["num_gpus_sized"] is True and "sized: 2 x toy" in d.note
    # 32 GiB of weights: 33 / n + 0.02 <= 9 needs 4; 6 attention heads do not split 4
    # (or 5) ways, so 6.
    big = Params(16 * _GIB, 16 * _GIB)
    assert CostModel(_plan(_with_heads(8)), gpu=_TOY_GPU, params=big).num_gpus == 4  # type: ignore[arg-type]
    six = CostModel(_plan(_with_heads(6)), gpu=_TOY_GPU, params=big)  # type: ignore[arg-type]
    assert six.num_gpus == 6 and "6 attention heads do not split 4 ways" in six.deployment.note


def test_a_given_num_gpus_that_cannot_hold_the_model_is_refused() -> None:
    plan = _plan(_with_heads(6))
    big = Params(16 * _GIB, 16 * _GIB)
    with pytest.raises(PlanError, match=r"does not fit on 3 x toy.*--num-gpus 4"):
        CostModel(plan, gpu=_TOY_GPU, num_gpus=3, params=big)  # type: ignore[arg-type]
    given = CostModel(plan, gpu=_TOY_GPU, num_gpus=4, params=big)  # type: ignore[arg-type]
    assert (given.num_gpus, given.deployment.sized) == (4, False)  # the user's choice stands
    with pytest.raises(PlanError, match="up to 64"):
        CostModel(plan, gpu=_TOY_GPU, params=Params(1e15, 1e15))  # type: ignore[arg-type]


def test_default_deployment_of_the_bundled_80b_model() -> None:
    # 80B bf16 (149 GiB) + 16 GiB of KV cannot run on one 80 GB H100: sized to 4
    # (3 hold the bytes; Qwen3-Next's 16 attention heads need a power-of-two split).
    plan = plan_memory(
        load_model("qwen3-next-80b-a3b"),
        memory_bytes=16 * _GIB,
        max_num_seqs=64,
        max_model_len=8192,
        max_num_batched_tokens=8192,
    )
    assert CostModel(plan).num_gpus == 4
    with pytest.raises(PlanError, match="does not fit on 1 x NVIDIA H100 SXM"):
        CostModel(plan, num_gpus=1)
    assert CostModel(plan, gpu="h200").num_gpus == 2
