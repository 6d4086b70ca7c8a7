"""The memory planner: the tight window bound (against brute force), pool sizes, capacity."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import pytest
from hybridkv.errors import PlanError
from hybridkv.models import ModelSpec, load_model
from hybridkv.planner import (
    plan_memory,
    plan_with_blocks,
    vllm_runtime_plan,
    window_pool_blocks,
    window_request_blocks,
)
from hybridkv.specs import (
    ChunkedLocalSpec,
    CrossAttentionSpec,
    EncoderOnlySpec,
    FullAttentionSpec,
    MLASpec,
    SlidingWindowSpec,
    StateSpec,
)
from hypothesis import given
from hypothesis import strategies as st


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ---------------------------------------------------------------------------
# brute force: which blocks a request holds (the manager contract, rule 2)
# ---------------------------------------------------------------------------


def first_needed(kind: str, span: int, c: int) -> int:
    """First position a step starting at computed count ``c`` still needs."""
    if kind == "sliding_window":
        return max(0, c - span + 1)
    return (c // span) * span


def held_blocks(kind: str, span: int, bs: int, c: int, n: int) -> set[int]:
    """Block indices a request holds during a step: blocks meeting [first_needed(c), c + n)."""
    return {p // bs for p in range(first_needed(kind, span, c), c + n)}


def brute_request_max(kind: str, span: int, bs: int, m: int, n: int) -> int:
    return max(len(held_blocks(kind, span, bs, c, n)) for c in range(m - n + 1))


def brute_pool_max(kind: str, span: int, bs: int, s: int, m: int, b: int) -> int:
    """Most blocks ``s`` requests can hold at once with ``b`` new tokens in all (knapsack)."""
    g = [brute_request_max(kind, span, bs, m, n) for n in range(min(b, m) + 1)]
    best = [0] * (b + 1)
    for _ in range(s):
        best = [
            max(best[t - n] + g[n] for n in range(min(t, len(g) - 1) + 1)) for t in range(b + 1)
        ]
    return best[b]


small = st.integers


def window_cases(
    *, span: int, bs: int, s: int, m: tuple[int, int], b: int
) -> dict[str, st.SearchStrategy[Any]]:
    """``@given`` arguments of a window-bound case: kind and sizes up to the given maxima."""
    return {
        "kind": st.sampled_from(["sliding_window", "chunked_local"]),
        "span": small(1, span),
        "bs": small(1, bs),
        "s": small(1, s),
        "m": small(*m),
        "b": small(1, b),
    }


@given(**window_cases(span=12, bs=6, s=3, m=(1, 40), b=14))
def test_tight_bound_against_brute_force(
    kind: str, span: int, bs: int, s: int, m: int, b: int
) -> None:
    bound = window_pool_blocks(
        kind, span, block_size=bs, max_num_seqs=s, max_model_len=m, max_num_batched_tokens=b
    )
    brute = brute_pool_max(kind, span, bs, s, m, b)
    assert bound >= brute  # safe
    exact_chunk = m >= span * bs // math.gcd(span, bs) + b
    if (kind == "sliding_window" and span >= 2) or (
        kind == "chunked_local" and span >= 2 and exact_chunk
    ):
        assert bound == brute  # and tight
    for n in range(min(b, m) + 1):
        assert window_request_blocks(kind, span, bs, m, n) >= brute_request_max(
            kind, span, bs, m, n
        )
    per_request = window_pool_blocks(
        kind,
        span,
        block_size=bs,
        max_num_seqs=s,
        max_model_len=m,
        max_num_batched_tokens=b,
        bounded_sizing="per_request",
    )
    assert per_request >= bound


def test_tight_bound_exhaustive_small_grid() -> None:
    grid = itertools.product(
        range(2, 9), (1, 2, 3, 4), (1, 2, 3), (1, 3, 5, 8), ("sliding_window", "chunked_local")
    )
    for span, bs, s, b, kind in grid:
        m = span * bs + b + 3
        bound = window_pool_blocks(
            kind, span, block_size=bs, max_num_seqs=s, max_model_len=m, max_num_batched_tokens=b
        )
        assert bound == brute_pool_max(kind, span, bs, s, m, b), (kind, span, bs, s, b)


@given(data=st.data(), **window_cases(span=10, bs=5, s=4, m=(4, 48), b=12))
def test_adversarial_schedules_never_exceed_the_bound(
    kind: str, span: int, bs: int, s: int, m: int, b: int, data: st.DataObject
) -> None:
    """Random multi-step schedules through a reference manager that follows the contract:
    at each step first trim every request to its window, then allocate new tokens' blocks."""
    bound = window_pool_blocks(
        kind, span, block_size=bs, max_num_seqs=s, max_model_len=m, max_num_batched_tokens=b
    )
    running: dict[int, tuple[int, set[int]]] = {}  # id -> (computed, held blocks)
    next_id = 0
    for _ in range(data.draw(st.integers(1, 25), label="steps")):
        # arrivals, some with a prefix hit that touches only the window blocks
        while len(running) < s and data.draw(st.booleans(), label="arrive"):
            hit = data.draw(st.integers(0, m - 1), label="hit")
            start = first_needed(kind, span, hit)
            running[next_id] = (hit, {p // bs for p in range(start, hit)})
            next_id += 1
        # finishes and preemptions free everything
        for rid in list(running):
            if data.draw(st.integers(0, 5), label="finish") == 0:
                del running[rid]
        # schedule: new tokens per request, at most b in all, c + n <= m
        budget = b
        plan: dict[int, int] = {}
        for rid, (c, _) in running.items():
            n = data.draw(st.integers(0, min(budget, m - c)), label="n")
            plan[rid] = n
            budget -= n
        # rule 2: trim every request first ...
        for rid, (c, held) in running.items():
            keep = first_needed(kind, span, c) // bs
            running[rid] = (c, {blk for blk in held if blk >= keep})
        # ... then allocate
        for rid, n in plan.items():
            c, held = running[rid]
            held |= {p // bs for p in range(c, c + n)}
            assert len(held) <= window_request_blocks(kind, span, bs, m, n)
        in_use = sum(len(h) for _, h in running.values())
        assert in_use <= bound
        for rid, n in plan.items():
            c, held = running[rid]
            running[rid] = (c + n, held)
            if c + n >= m:
                del running[rid]


#: Engine limits of the Gemma 3 examples: S=64, M=32768, B=8192.
GEMMA_LIMITS: dict[str, Any] = {
    "max_num_seqs": 64,
    "max_model_len": 32768,
    "max_num_batched_tokens": 8192,
}


def test_gemma3_style_tight_vs_per_request() -> None:
    m = load_model("gemma-3-27b-it")
    kw: dict[str, Any] = {"memory_bytes": 400 << 30, **GEMMA_LIMITS}
    tight = plan_memory(m, **kw)
    loose = plan_memory(m, bounded_sizing="per_request", **kw)
    sw_t = next(g for g in tight.groups if g.kind == "sliding_window")
    sw_l = next(g for g in loose.groups if g.kind == "sliding_window")
    # W=1024, b=16: f(0)=cdiv(1038,16)=65, first step costs 16*65-1038+1=3 tokens,
    # 64 first steps, then (8192-192)//16 = 500 more blocks; plus the null block.
    assert sw_t.num_blocks == 64 * 65 + 64 + 500 + 1
    assert sw_l.num_blocks == 64 * (cdiv(1023 + 8192, 16) + 1) + 1
    assert sw_l.bytes > 7 * sw_t.bytes
    assert tight.token_capacity > loose.token_capacity


# ---------------------------------------------------------------------------
# random models and budgets
# ---------------------------------------------------------------------------


@st.composite
def specs(draw: st.DrawFn) -> Any:
    heads = draw(st.integers(1, 8))
    head = draw(st.integers(1, 256))
    custom = draw(st.one_of(st.none(), st.integers(1, 5000)))
    attn: dict[str, Any] = {
        "num_kv_heads": heads,
        "head_size": head,
        "custom_bytes_per_token": custom,
    }
    kind = draw(st.integers(0, 6))
    if kind == 0:
        return FullAttentionSpec(**attn)
    if kind == 1:
        return SlidingWindowSpec(window=draw(st.integers(1, 5000)), **attn)
    if kind == 2:
        return ChunkedLocalSpec(chunk_size=draw(st.integers(1, 5000)), **attn)
    if kind == 3:
        return CrossAttentionSpec(max_encoder_len=draw(st.integers(1, 3000)), **attn)
    if kind == 4:
        return MLASpec(
            kv_lora_rank=draw(st.integers(1, 600)),
            qk_rope_head_dim=draw(st.integers(0, 64)),
            custom_bytes_per_token=custom,
        )
    if kind == 5:
        dims = st.tuples(st.integers(1, 64), st.integers(1, 300))
        return StateSpec(
            shapes=(draw(dims), draw(dims)),
            dtypes=(draw(st.sampled_from(["bf16", "fp32"])), "bf16"),
        )
    return EncoderOnlySpec()


@st.composite
def models(draw: st.DrawFn) -> ModelSpec:
    pool = draw(st.lists(specs(), min_size=1, max_size=4))
    layers = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=12))
    return ModelSpec("random", layers)


@given(
    model=models(),
    memory=st.integers(1, 1 << 36),
    s=st.integers(1, 64),
    m=st.integers(1, 20000),
    b=st.integers(1, 10000),
    bs=st.integers(1, 64),
    mode=st.sampled_from(["none", "align", "all"]),
    sizing=st.sampled_from(["tight", "per_request"]),
)
def test_plan_invariants(
    model: ModelSpec, memory: int, s: int, m: int, b: int, bs: int, mode: str, sizing: str
) -> None:
    kw: dict[str, Any] = {
        "memory_bytes": memory,
        "max_num_seqs": s,
        "max_model_len": m,
        "max_num_batched_tokens": b,
        "block_size": bs,
        "mamba_cache_mode": mode,
        "bounded_sizing": sizing,
    }
    try:
        plan = plan_memory(model, **kw)
    except PlanError as exc:
        assert "short by" in str(exc)
        return
    assert plan.total_bytes <= memory
    assert plan.unused_bytes == memory - plan.total_bytes >= 0
    seen: list[int] = list(plan.encoder_only_layers)
    for g in plan.groups:
        seen += g.layers
        assert len({model.layer_specs[i] for i in g.layers}) == 1
        assert g.slot_address_space == g.num_blocks * g.block_size
        assert g.bytes == g.num_blocks * g.page_size_bytes
        assert g.page_size_bytes == len(g.layers) * g.spec.page_size_bytes(bs)
        if g.kind == "state" and not g.grows:
            assert g.num_blocks == s * (1 if mode == "none" else 2) + 1
        if g.kind == "cross_attention":
            assert g.max_encoder_len is not None
            assert g.num_blocks == s * cdiv(g.max_encoder_len, bs) + 1
        if g.kind in ("sliding_window", "chunked_local") and not g.grows:
            span = g.window if g.window is not None else g.chunk_size
            assert span is not None and span < m
            assert g.num_blocks == 1 + window_pool_blocks(
                g.kind,
                span,
                block_size=bs,
                max_num_seqs=s,
                max_model_len=m,
                max_num_batched_tokens=b,
                bounded_sizing=sizing,
            )
        assert g.grows == (
            g.kind in ("full_attention", "mla")
            or (g.kind == "state" and mode == "all")
            or (g.kind == "sliding_window" and g.window is not None and g.window >= m)
            or (g.kind == "chunked_local" and g.chunk_size is not None and g.chunk_size >= m)
        )
    assert sorted(seen) == list(range(model.num_layers))
    growing = [g for g in plan.groups if g.grows]
    if not growing:
        assert plan.token_capacity == s * m
        return
    assert len({g.num_blocks for g in growing}) == 1  # all hold the same number of tokens
    bounded = sum(g.bytes for g in plan.groups if not g.grows)
    per_token = sum(g.page_size_bytes for g in growing) / bs
    nulls = sum(g.page_size_bytes for g in growing)
    physical = (memory - bounded) / per_token
    assert plan.token_capacity <= physical
    # the null blocks are fixed overhead; beyond them, less than one block is lost
    assert (memory - bounded - nulls) / per_token - plan.token_capacity < bs
    assert plan.physical_token_limit is not None
    assert plan.physical_token_limit == pytest.approx((memory - bounded - nulls) / per_token)
    assert plan.token_capacity >= cdiv(m, bs) * bs
    assert 0 < plan.max_concurrency <= s
    json.dumps(plan.to_dict())


def test_custom_dtype_that_divides_nothing_plans() -> None:
    odd = FullAttentionSpec(num_kv_heads=8, head_size=128, custom_bytes_per_token=131)
    sw = SlidingWindowSpec(num_kv_heads=8, head_size=128, custom_bytes_per_token=97, window=509)
    state = StateSpec(shapes=((3, 1001),), dtypes=("bf16",))
    model = ModelSpec("odd", [sw, sw, odd, state])
    plan = plan_memory(
        model,
        memory_bytes=10**9 + 7,
        max_num_seqs=13,
        max_model_len=4099,
        max_num_batched_tokens=777,
        block_size=16,
    )
    pages = [g.page_size_bytes for g in plan.groups]
    assert pages == [2 * 16 * 97, 16 * 131, 3 * 1001 * 2]  # groups in first-layer order
    full = next(g for g in plan.groups if g.grows)
    assert plan.token_capacity == (full.num_blocks - 1) * 16
    assert plan.total_bytes <= 10**9 + 7
    # the baseline cannot unify 97- and 131-byte pages
    assert plan.vllm_baseline.token_capacity is None
    assert "cannot unify" in (plan.vllm_baseline.reason or "")
    with pytest.raises(PlanError, match="cannot lay"):
        vllm_runtime_plan(plan)


def test_gemma3_capacity_counts_only_global_layers() -> None:
    m = load_model("gemma-3-27b-it")
    kw: dict[str, Any] = {"memory_bytes": 60 << 30, **GEMMA_LIMITS}
    plan = plan_memory(m, **kw)
    sw, full = plan.groups
    bpt = 2 * 16 * 128 * 2
    assert full.num_layers == 10 and full.grows and not sw.grows
    rest = (60 << 30) - sw.bytes
    assert plan.token_capacity == (rest // (10 * 16 * bpt) - 1) * 16
    all_full = ModelSpec("dense", [FullAttentionSpec(num_kv_heads=16, head_size=128)] * 62)
    dense = plan_memory(all_full, **kw)
    assert plan.growing_bytes_per_token == 10 * bpt
    # even after paying for the sliding-window pool, about 3x a layout that grows all 62
    assert plan.token_capacity > 3 * dense.token_capacity


def test_mamba_cache_modes() -> None:
    attn = FullAttentionSpec(num_kv_heads=2, head_size=64)
    state = StateSpec(shapes=((3, 64), (4, 16, 16)), dtypes=("bf16", "bf16"))
    model = ModelSpec("m", [state, state, attn])
    kw: dict[str, Any] = {
        "memory_bytes": 1 << 30,
        "max_num_seqs": 10,
        "max_model_len": 1024,
        "max_num_batched_tokens": 256,
    }
    none = plan_memory(model, mamba_cache_mode="none", **kw)
    align = plan_memory(model, mamba_cache_mode="align", **kw)
    every = plan_memory(model, mamba_cache_mode="all", **kw)
    assert none.groups[0].num_blocks == 11 and align.groups[0].num_blocks == 21
    assert not align.groups[0].grows and align.groups[0].max_blocks_per_request == 2
    st_all, at_all = every.groups
    assert st_all.grows and st_all.num_blocks == at_all.num_blocks  # a checkpoint per block
    assert every.token_capacity < align.token_capacity


def test_window_covering_max_model_len_grows() -> None:
    sw = SlidingWindowSpec(num_kv_heads=2, head_size=64, window=4096)
    plan = plan_memory(
        ModelSpec("w", [sw]),
        memory_bytes=1 << 30,
        max_num_seqs=4,
        max_model_len=4096,
        max_num_batched_tokens=512,
    )
    (g,) = plan.groups
    assert g.grows and g.window == 4096 and g.max_blocks_per_request is None


def test_plan_errors_say_what_and_by_how_much() -> None:
    state = StateSpec(shapes=((1000,),), dtypes=("bf16",))
    attn = FullAttentionSpec(num_kv_heads=1, head_size=8)
    model = ModelSpec("m", [state, attn])
    kw: dict[str, Any] = {"max_num_seqs": 4, "max_model_len": 64, "max_num_batched_tokens": 16}
    need = (4 * 2 + 1) * 2000
    with pytest.raises(PlanError, match=f"short by {need - 1000} bytes"):
        plan_memory(model, memory_bytes=1000, **kw)
    page = 16 * 32
    with pytest.raises(PlanError, match=f"short by {5 * page - page} bytes"):
        plan_memory(model, memory_bytes=need + page, **kw)
    ok = plan_memory(model, memory_bytes=need + 5 * page, **kw)
    assert ok.token_capacity == 64
    for bad in (
        {"memory_bytes": 0},
        {"memory_bytes": -5},
        {"max_num_seqs": 0},
        {"max_model_len": -1},
        {"max_num_batched_tokens": 0},
        {"block_size": 0},
        {"mamba_cache_mode": "some"},
        {"bounded_sizing": "loose"},
        {"memory_bytes": 1.5},
    ):
        args = {"memory_bytes": 1 << 30, **kw, **bad}
        with pytest.raises(PlanError):
            plan_memory(model, **args)
    with pytest.raises(PlanError, match="ModelSpec"):
        plan_memory("llama", memory_bytes=1 << 30, **kw)  # type: ignore[arg-type]


def test_plan_with_blocks() -> None:
    sw = SlidingWindowSpec(num_kv_heads=1, head_size=8, window=32)
    attn = FullAttentionSpec(num_kv_heads=1, head_size=8)
    model = ModelSpec("m", [sw, attn, EncoderOnlySpec()])
    kw: dict[str, Any] = {"max_num_seqs": 2, "max_model_len": 128, "max_num_batched_tokens": 32}
    p = plan_with_blocks(model, 10, **kw)
    assert [g.num_blocks for g in p.groups] == [10, 10]
    assert p.token_capacity == 9 * 16
    assert p.unused_bytes == 0 and p.memory_bytes == p.total_bytes
    assert p.encoder_only_layers == (2,)
    q = plan_with_blocks(model, [5, 12], block_size=4, **kw)
    assert [g.slot_address_space for g in q.groups] == [20, 48]
    assert q.token_capacity == 11 * 4 and q.groups[0].sizing == "explicit"
    with pytest.raises(PlanError, match="2 groups"):
        plan_with_blocks(model, [5], **kw)
    with pytest.raises(PlanError, match=">= 2"):
        plan_with_blocks(model, [5, 1], **kw)
    with pytest.raises(PlanError):
        plan_with_blocks(model, "10", **kw)  # type: ignore[arg-type]


def test_vllm_baseline_hybrid_by_hand() -> None:
    m = load_model("qwen3-next-80b-a3b")
    mem = 60 << 30
    plan = plan_memory(
        m, memory_bytes=mem, max_num_seqs=256, max_model_len=32768, max_num_batched_tokens=8192
    )
    base = plan.vllm_baseline
    state_page = 3 * 8192 * 2 + 32 * 128 * 128 * 2
    attn_bpt = 2 * 2 * 256 * 2
    # vLLM: the block grows in steps of 16 until one layer's page holds a state.
    block = 16 * cdiv(state_page, 16 * attn_bpt)
    assert base.block_size == block == 544
    assert base.page_size_bytes == block * attn_bpt  # the state page padded up to it
    assert base.group_size == 12 and base.num_groups == 4  # 36 GDN = 3 groups of 12, + 1
    n = mem // (block * attn_bpt * 12)
    assert base.num_blocks == n == 4818
    # Runtime: the one full-attention group gets what 256 requests' 3 x 2 state blocks
    # leave of the pool (null block excluded).
    assert base.token_capacity == (n - 1 - 256 * 3 * 2) * block
    assert base.boot_log_token_capacity == int(n / (cdiv(32768, block) + 3 * 2) * 32768)
    assert base.equal_split_token_capacity == n // 4 * block
    gdn = [i for i in range(48) if i % 4 != 3]
    assert [g[1] for g in base.groups] == [
        tuple(gdn[0::3]),
        tuple(gdn[1::3]),
        tuple(gdn[2::3]),
        tuple(range(3, 48, 4)),
    ]
    v = vllm_runtime_plan(plan)
    assert v.shared_pool and v.token_capacity == base.token_capacity
    assert [g.grows for g in v.groups] == [False, False, False, True]
    with pytest.raises(PlanError, match="align"):
        vllm_runtime_plan(
            plan_memory(
                m,
                memory_bytes=mem,
                max_num_seqs=8,
                max_model_len=1024,
                max_num_batched_tokens=1024,
                mamba_cache_mode="all",
            )
        )


def test_vllm_baseline_single_group_matches_physical() -> None:
    m = load_model("llama-3.1-8b")
    plan = plan_memory(
        m, memory_bytes=40 << 30, max_num_seqs=64, max_model_len=8192, max_num_batched_tokens=4096
    )
    base = plan.vllm_baseline
    assert base.num_groups == 1 and base.block_size == 16
    assert base.token_capacity == plan.token_capacity  # one pool, null block kept by both
    assert base.equal_split_token_capacity == plan.token_capacity + 16


def test_to_dict_shape() -> None:
    m = load_model("gpt-oss-20b")
    d = plan_memory(
        m, memory_bytes=20 << 30, max_num_seqs=32, max_model_len=8192, max_num_batched_tokens=2048
    ).to_dict()
    for key in ("token_capacity", "max_concurrency", "unused_bytes", "groups", "vllm_baseline"):
        assert key in d
    assert "token_capacity" in d["vllm_baseline"]
    for g in d["groups"]:
        for key in (
            "kind",
            "layers",
            "block_size",
            "page_size_bytes",
            "num_blocks",
            "bytes",
            "slot_address_space",
        ):
            assert key in g
    json.dumps(d)


# ---------------------------------------------------------------------------
# spare state slots for cached checkpoints
# ---------------------------------------------------------------------------


def _two_state_model() -> ModelSpec:
    attn = {"num_kv_heads": 2, "head_size": 8}
    return ModelSpec(
        name="two-states",
        layer_specs=(
            FullAttentionSpec(**attn),
            SlidingWindowSpec(window=8, **attn),
            StateSpec(shapes=((2, 3),), dtypes=("fp32",)),
            StateSpec(shapes=((4, 5),), dtypes=("fp16",)),
            StateSpec(shapes=((2, 3),), dtypes=("fp32",)),
        ),
    )


SPARE_KW: dict[str, Any] = {
    "memory_bytes": 1 << 20,
    "max_num_seqs": 4,
    "max_model_len": 64,
    "max_num_batched_tokens": 32,
    "block_size": 4,
}


@pytest.mark.parametrize("mode", ["none", "align"])
@pytest.mark.parametrize("spare", [1, 7, 50])
def test_state_cache_slots_grow_every_state_pool_by_exactly_n_pages(mode: str, spare: int) -> None:
    model = _two_state_model()
    base = plan_memory(model, mamba_cache_mode=mode, **SPARE_KW)
    more = plan_memory(model, mamba_cache_mode=mode, state_cache_slots=spare, **SPARE_KW)
    assert base.state_cache_slots == 0 and more.state_cache_slots == spare
    state_pages = 0
    for a, b in zip(base.groups, more.groups, strict=True):
        if a.kind == "state":
            assert b.num_blocks == a.num_blocks + spare
            assert b.bytes == a.bytes + spare * a.page_size_bytes
            assert b.slot_address_space == b.num_blocks * b.block_size
            assert b.max_blocks_per_request == a.max_blocks_per_request  # per request: unchanged
            state_pages += a.page_size_bytes
        elif not a.grows:
            assert b == a  # window pools are untouched
    assert sum(1 for g in base.groups if g.kind == "state") == 2
    assert more.bounded_bytes == base.bounded_bytes + spare * state_pages
    # The growing group pays: its block count is what the smaller rest buys.
    growing_page = sum(g.page_size_bytes for g in more.growing_groups)
    blocks = (more.memory_bytes - more.bounded_bytes) // growing_page
    assert [g.num_blocks for g in more.growing_groups] == [blocks]
    assert more.token_capacity == (blocks - 1) * more.block_size
    assert more.token_capacity <= base.token_capacity
    assert more.total_bytes <= more.memory_bytes
    assert more.to_dict()["state_cache_slots"] == spare


def test_state_cache_slots_cost_token_capacity_on_a_real_model() -> None:
    m = load_model("qwen3-next-80b-a3b")
    kw: dict[str, Any] = {
        "memory_bytes": 16 << 30,
        "max_num_seqs": 64,
        "max_model_len": 32768,
        "max_num_batched_tokens": 8192,
    }
    base = plan_memory(m, **kw)
    prev = base
    for spare in (16, 64, 128):
        plan = plan_memory(m, state_cache_slots=spare, **kw)
        (state,) = [g for g in plan.groups if g.kind == "state"]
        (state0,) = [g for g in base.groups if g.kind == "state"]
        assert state.num_blocks == state0.num_blocks + spare
        assert plan.token_capacity < prev.token_capacity
        assert plan.physical_token_limit is not None and base.physical_token_limit is not None
        lost = base.physical_token_limit - plan.physical_token_limit
        assert lost == pytest.approx(spare * state.page_size_bytes / plan.growing_bytes_per_token)
        prev = plan


def test_state_cache_slots_zero_is_the_old_plan() -> None:
    for name in ("qwen3-next-80b-a3b", "gpt-oss-20b"):
        m = load_model(name)
        kw: dict[str, Any] = {
            "memory_bytes": 20 << 30,
            "max_num_seqs": 32,
            "max_model_len": 8192,
            "max_num_batched_tokens": 2048,
        }
        old = plan_memory(m, **kw)
        assert plan_memory(m, state_cache_slots=0, **kw) == old
        assert old.to_dict()["state_cache_slots"] == 0


def test_state_cache_slots_without_state_groups_change_no_pool() -> None:
    m = load_model("gpt-oss-20b")
    kw: dict[str, Any] = {
        "memory_bytes": 20 << 30,
        "max_num_seqs": 32,
        "max_model_len": 8192,
        "max_num_batched_tokens": 2048,
    }
    assert plan_memory(m, state_cache_slots=9, **kw).groups == plan_memory(m, **kw).groups


@pytest.mark.parametrize("bad", [-1, 1.5, True, "4", None])
def test_state_cache_slots_bad_values(bad: Any) -> None:
    with pytest.raises(PlanError, match="state_cache_slots"):
        plan_memory(_two_state_model(), state_cache_slots=bad, **SPARE_KW)


def test_state_cache_slots_rejected_in_mode_all() -> None:
    model = _two_state_model()
    with pytest.raises(PlanError, match="mamba_cache_mode"):
        plan_memory(model, mamba_cache_mode="all", state_cache_slots=1, **SPARE_KW)
    every = plan_memory(model, mamba_cache_mode="all", state_cache_slots=0, **SPARE_KW)
    assert every.state_cache_slots == 0


def test_state_cache_slots_that_do_not_fit_say_by_how_much() -> None:
    with pytest.raises(PlanError, match="short by"):
        plan_memory(_two_state_model(), state_cache_slots=10**6, **SPARE_KW)


def test_state_checkpoint_interval_is_the_state_groups_block_size() -> None:
    model = load_model("qwen3-next-80b-a3b")
    limits = dict(
        memory_bytes=16 * 2**30, max_num_seqs=64, max_model_len=20480, max_num_batched_tokens=8192
    )
    base = plan_memory(model, **limits)
    coarse = plan_memory(model, **limits, state_checkpoint_tokens=256)
    for a, b in zip(base.groups, coarse.groups, strict=True):
        assert b.bytes == a.bytes and b.num_blocks == a.num_blocks
        want = 256 if b.kind == "state" else 16
        assert b.block_size == want and b.slot_address_space == b.num_blocks * want
    assert coarse.token_capacity == base.token_capacity
    assert base.to_dict()["state_checkpoint_tokens"] == 16
    assert coarse.to_dict()["state_checkpoint_tokens"] == 256
    with pytest.raises(PlanError, match="multiple of the block size 16"):
        plan_memory(model, **limits, state_checkpoint_tokens=40)
    with pytest.raises(PlanError, match="'all'"):
        plan_memory(model, **limits, mamba_cache_mode="all", state_checkpoint_tokens=32)
    for bad in (0, -16, 1.5, True):
        with pytest.raises(PlanError, match="state_checkpoint_tokens"):
            plan_memory(model, **limits, state_checkpoint_tokens=bad)  # type: ignore[arg-type]
