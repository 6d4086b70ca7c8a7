"""``hybridkv simulate`` end to end: determinism, the report's shape, both layouts, the
plot, and the offload hook."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hybridkv.cli import main
from hybridkv.cost_model import CostModel
from hybridkv.errors import InvalidArgumentError, PlanError
from hybridkv.models import load_model
from hybridkv.planner import plan_memory, vllm_runtime_plan
from hybridkv.simulate import (
    LayoutResult,
    SimConfig,
    SimReport,
    make_plans,
    render_table,
    run,
    simulate_plan,
)
from hybridkv.traces import load_trace, make_agentic

ARGS = ["simulate", "--model", "qwen3-next-80b-a3b", "--memory", "16GiB", "--json"]


def _json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(argv) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def _strip_measured(report: dict[str, Any]) -> dict[str, Any]:
    for lay in report["layouts"].values():
        assert lay.pop("measured")["scheduler_overhead_us_per_step"]["mean"] > 0
    assert report.pop("measured")["sim_requests_per_wall_s"] > 0
    return report


def test_same_seed_same_report(capsys: pytest.CaptureFixture[str]) -> None:
    a = _strip_measured(_json([*ARGS, "--trace", "docqa", "--seed", "5"], capsys))
    b = _strip_measured(_json([*ARGS, "--trace", "docqa", "--seed", "5"], capsys))
    assert a == b
    c = _strip_measured(_json([*ARGS, "--trace", "docqa", "--seed", "6"], capsys))
    assert c["layouts"] != a["layouts"]


def test_report_shape_and_layout_facts(capsys: pytest.CaptureFixture[str]) -> None:
    r = _json([*ARGS, "--trace", "agentic"], capsys)
    pg, un = r["layouts"]["static"], r["layouts"]["vllm"]
    model = load_model("qwen3-next-80b-a3b")
    plan = plan_memory(
        model,
        memory_bytes=16 * 2**30,
        max_num_seqs=64,
        max_model_len=r["max_model_len"],
        max_num_batched_tokens=8192,
    )
    assert pg["token_capacity"] == plan.token_capacity
    assert un["token_capacity"] == plan.vllm_baseline.token_capacity
    assert un["block_size"] == plan.vllm_baseline.block_size == 544
    for lay in (pg, un):
        for key in (
            "token_capacity",
            "prefix_hit_rate",
            "preemptions",
            "recomputed_tokens",
            "output_throughput",
            "ttft_p50",
            "ttft_p99",
            "steps",
        ):
            assert isinstance(lay[key], int | float), key
        assert lay["ttft_p50"] == lay["ttft_s"]["p50"] <= lay["ttft_p99"]
        assert lay["output_throughput"] == lay["output_throughput_tok_s"]
    for lay in (pg, un):
        assert lay["requests"] == r["trace"]["requests"]
        assert 1 <= lay["peak_concurrency"] <= 64
        assert 0 < lay["mean_concurrency"] <= lay["peak_concurrency"]
        assert 0.0 <= lay["prefix_hit_rate"] < 1.0
        assert lay["output_throughput_tok_s"] > 0
        assert lay["ttft_s"]["p50"] <= lay["ttft_s"]["p99"]
        assert lay["tpot_s"]["p50"] <= lay["tpot_s"]["p99"]
        assert all(0.0 <= p["peak_usage"] <= 1.0 for p in lay["pools"])
    # The ratios' arithmetic is test_ratios_are_static_over_baseline's (known inputs,
    # known ratios); here only what this run's ratio claims: per-group pools at natural
    # page sizes hold more tokens than vLLM's one pool of 544-token pages.
    assert r["ratios_vs"] == "vllm"
    assert set(r["ratios"]) == {
        "token_capacity",
        "peak_concurrency",
        "mean_concurrency",
        "prefix_hit_rate",
        "output_throughput_tok_s",
    }
    assert r["ratios"]["token_capacity"] > 1
    one = _json([*ARGS, "--trace", "agentic", "--layout", "vllm"], capsys)
    assert set(one["layouts"]) == {"vllm"} and "ratios" not in one
    assert _strip_measured(one)["layouts"]["vllm"] == _strip_measured(r)["layouts"]["vllm"]
    # --layout repeats; the order given is the report's order.
    two = _json([*ARGS, "--trace", "agentic", "--layout", "vllm", "--layout", "static"], capsys)
    assert list(two["layouts"]) == ["vllm", "static"] and "ratios" in two


def _with(res: LayoutResult, **fields: float) -> LayoutResult:
    return replace(res, report=res.report | fields)


def test_ratios_are_static_over_baseline() -> None:
    """Known inputs, known ratios: static / baseline, key by key, None on a zero baseline,
    and the table's ratio column (computed separately) says the same."""
    trace = make_agentic(seed=3, sessions=2)
    cfg = SimConfig(model="qwen3-next-80b-a3b", memory_bytes=16 * 2**30, trace="agentic")
    plans = make_plans(cfg, trace)
    plan = plans["static"]
    assert not isinstance(plan, str)
    real = simulate_plan(plan, trace, layout="static", cost=CostModel(plan))
    ones = dict.fromkeys(
        ("peak_concurrency", "mean_concurrency", "prefix_hit_rate", "output_throughput_tok_s"),
        1.0,
    )
    results = {
        "static": _with(
            real,
            **ones | {"token_capacity": 300_000, "mean_concurrency": 6.0, "prefix_hit_rate": 0.25},
        ),
        "vllm": _with(
            real,
            **ones | {"token_capacity": 100_000, "mean_concurrency": 8.0, "prefix_hit_rate": 0.0},
        ),
    }
    cost = {"gpu": "H100", "num_gpus": 1}
    rep = SimReport(cfg, trace, plans, results, cost)
    d = rep.to_dict()
    assert d["ratios_vs"] == "vllm"
    assert d["ratios"] == {
        "token_capacity": 3.0,
        "peak_concurrency": 1.0,
        "mean_concurrency": 0.75,
        "prefix_hit_rate": None,
        "output_throughput_tok_s": 1.0,
    }
    table = render_table(rep)
    names = [str(c) for c in table.columns[0].cells]
    ratio_col = [str(c) for c in table.columns[-1].cells]
    assert ratio_col[names.index("token capacity")] == "3.00x"
    assert ratio_col[names.index("mean concurrency")] == "0.75x"
    assert ratio_col[names.index("prefix hit rate")] == "-"
    # Another baseline, other ratios; without one of the two layouts, no ratios at all.
    three = {**results, "elastic": results["static"]}
    assert SimReport(cfg, trace, plans, three, cost, "elastic").to_dict()["ratios"] == dict(
        ones, token_capacity=1.0, mean_concurrency=1.0, prefix_hit_rate=1.0
    )
    only = SimReport(cfg, trace, plans, {"vllm": results["vllm"]}, cost)
    assert "ratios" not in only.to_dict()


def test_table_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "run.png"
    argv = [*ARGS[:-1], "--trace", "chat", "--seed", "2", "--plot", str(png)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for needle in ("token capacity", "prefix hit rate", "static / vllm", "µs/step"):
        assert needle in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_vllm_plan_and_state_checkpoints() -> None:
    model = load_model("qwen3-next-80b-a3b")
    plan = plan_memory(
        model,
        memory_bytes=16 * 2**30,
        max_num_seqs=64,
        max_model_len=20480,
        max_num_batched_tokens=8192,
    )
    vb = plan.vllm_baseline
    assert vb.num_blocks is not None and vb.page_size_bytes is not None
    v = vllm_runtime_plan(plan)
    assert v.shared_pool and v.token_capacity == vb.token_capacity
    assert {g.block_size for g in v.groups} == {vb.block_size}
    # One pool: every group has all of it, and the memory counts once.
    assert all(g.num_blocks == vb.num_blocks for g in v.groups)
    assert v.total_bytes == vb.num_blocks * vb.page_size_bytes * 12 <= 16 * 2**30
    assert [g.kind for g in v.groups] == ["state"] * 3 + ["full_attention"]
    s = plan_memory(
        model,
        memory_bytes=16 * 2**30,
        max_num_seqs=64,
        max_model_len=20480,
        max_num_batched_tokens=8192,
        state_checkpoint_tokens=256,
    )
    assert [g.block_size for g in s.groups if g.kind == "state"] == [256]
    assert [g.bytes for g in s.groups] == [g.bytes for g in plan.groups]
    assert s.token_capacity == plan.token_capacity
    assert s.to_dict()["state_checkpoint_tokens"] == 256
    with pytest.raises(PlanError, match="multiple"):
        plan_memory(
            model,
            memory_bytes=16 * 2**30,
            max_num_seqs=64,
            max_model_len=20480,
            max_num_batched_tokens=8192,
            state_checkpoint_tokens=100,
        )


def test_state_cache_slots_reach_only_the_per_group_plan(
    capsys: pytest.CaptureFixture[str],
) -> None:
    trace_args = ["--trace", "chat", "--max-model-len", "32768", "--no-progress"]
    old = _strip_measured(_json([*ARGS, *trace_args], capsys))
    new = _strip_measured(_json([*ARGS, *trace_args, "--state-cache-slots", "64"], capsys))
    assert (old["state_cache_slots"], new["state_cache_slots"]) == (0, 64)
    assert new["layouts"]["vllm"] == old["layouts"]["vllm"]
    a, b = old["layouts"]["static"], new["layouts"]["static"]
    assert b["token_capacity"] < a["token_capacity"]
    # The point of the knob: finished turns' checkpoints survive, so more prefix hits.
    assert b["prefix_hit_rate"] > a["prefix_hit_rate"]
    cfg = SimConfig(
        model="qwen3-next-80b-a3b", memory_bytes=16 * 2**30, trace="chat", state_cache_slots=64
    )
    plans = make_plans(cfg, load_trace("chat"))
    base = make_plans(replace(cfg, state_cache_slots=0), load_trace("chat"))
    pg, pg0 = plans["static"], base["static"]
    assert not isinstance(pg, str) and not isinstance(pg0, str)
    assert [g.num_blocks for g in pg.groups if g.kind == "state"] == [
        g.num_blocks + 64 for g in pg0.groups if g.kind == "state"
    ]
    assert plans["vllm"] == base["vllm"]


class _Tier:
    """An external tier that has every prompt's first half (tests the offload hook)."""

    def __init__(self) -> None:
        self.loaded = 0
        self.steps = 0

    def lookup(self, req_ids: np.ndarray, device_hit_tokens: np.ndarray) -> np.ndarray:
        return np.full(req_ids.shape[0], 64, dtype=np.int64)

    def load_seconds(self, tokens: int) -> float:
        self.loaded += tokens
        return tokens * 1e-6

    def after_step(self, manager: object, output: object) -> None:
        self.steps += 1


def test_offload_hook_is_consulted_and_charged() -> None:
    trace = make_agentic(seed=9, sessions=6)
    model = load_model("qwen3-next-80b-a3b")
    plan = plan_memory(
        model,
        memory_bytes=16 * 2**30,
        max_num_seqs=16,
        max_model_len=20480,
        max_num_batched_tokens=4096,
    )
    cost = CostModel(plan)
    base = simulate_plan(plan, trace, layout="static", cost=cost).report
    tier = _Tier()
    res = simulate_plan(plan, trace, layout="static", cost=cost, offload=tier).report
    assert res["external_hit_tokens"] == tier.loaded > 0
    assert tier.steps == res["steps"]
    assert base["external_hit_tokens"] == 0
    assert res["requests"] == base["requests"]


def test_run_rejects_unknown_layout_and_policy() -> None:
    with pytest.raises(InvalidArgumentError, match="layout"):
        run(SimConfig("qwen3-next-80b-a3b", 16 * 2**30, "chat"), ["paged"])
    with pytest.raises(InvalidArgumentError, match="policy"):
        run(SimConfig("qwen3-next-80b-a3b", 16 * 2**30, "chat", policy="lifo"))
