"""A simulation's results: one layout's :class:`LayoutResult` (its report and per-step
series), every layout's :class:`SimReport` (the ``--json`` shape, ratios against the
baseline), and their renderings: the rich table and the PNG plot."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from hybridkv.planning.planner import MemoryPlan
from hybridkv.serving.sim_config import SimConfig
from hybridkv.serving.traces import Trace

F64 = npt.NDArray[np.float64]


@dataclass
class LayoutResult:
    """One layout's run: the report and the per-step series (for plots)."""

    report: dict[str, Any]
    times: F64
    usage: F64  # (steps, pools)
    pool_labels: list[str]
    hit_rate: F64


@dataclass
class SimReport:
    """Both layouts' results plus the run's inputs."""

    config: SimConfig
    trace: Trace
    plans: dict[str, MemoryPlan | str]
    results: dict[str, LayoutResult]
    cost: dict[str, Any]
    #: The layout the others are compared with (ratios ``static / baseline``).
    baseline: str = "vllm"
    #: Share of prompt tokens an infinite cache would serve (:mod:`hybridkv.serving.ideal_hit`).
    ideal_hit_rate: float | None = None

    @property
    def sim_requests_per_wall_s(self) -> float:
        """Simulated requests per wall-clock second over every layout's replay (measured)."""
        wall = sum(r.report["measured"]["sim_wall_s"] for r in self.results.values())
        done = sum(r.report["requests"] for r in self.results.values())
        return done / wall if wall > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` shape. Wall-clock measurements sit under ``measured`` keys (the
        run's and each layout's); everything else is a deterministic function of the inputs."""
        cfg = self.config
        plan = next(p for p in self.plans.values() if not isinstance(p, str))
        d: dict[str, Any] = {
            "model": cfg.model,
            "memory_bytes": cfg.memory_bytes,
            "trace": self.trace.summary(),
            "ideal_hit_rate": self.ideal_hit_rate,
            "max_num_seqs": cfg.max_num_seqs,
            "max_num_batched_tokens": cfg.max_num_batched_tokens,
            "max_model_len": plan.max_model_len,
            "block_size": cfg.block_size,
            "mamba_cache_mode": cfg.mamba_cache_mode,
            "state_cache_slots": cfg.state_cache_slots,
            "policy": cfg.policy,
            "cost_model": self.cost,
            "layouts": {k: v.report for k, v in self.results.items()},
            "skipped": {k: v for k, v in self.plans.items() if isinstance(v, str)},
            "measured": {"sim_requests_per_wall_s": self.sim_requests_per_wall_s},
        }
        keys = (
            "token_capacity",
            "peak_concurrency",
            "mean_concurrency",
            "prefix_hit_rate",
            "output_throughput_tok_s",
        )
        if self.baseline in self.results:
            b = self.results[self.baseline].report
            # Every other layout over the baseline; ``ratios`` is static's.
            by = {
                lay: {k: (r.report[k] / b[k] if b[k] else None) for k in keys}
                for lay, r in self.results.items()
                if lay != self.baseline
            }
            if by:
                d["ratios_vs"] = self.baseline
                d["ratios_by_layout"] = by
            if "static" in by:
                d["ratios"] = by["static"]
        clean: dict[str, Any] = _finite(d)
        return clean


def _finite(x: Any) -> Any:
    """JSON-safe: NaN and infinities become None."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def _fmt_num(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e4:
        return f"{x / 1e3:.1f}k"
    if x == int(x):
        return f"{int(x)}"
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


TABLE_ROWS: tuple[tuple[str, str, Callable[[dict[str, Any]], float]], ...] = (
    ("token capacity", "tokens", lambda r: r["token_capacity"]),
    ("block size (growing)", "tokens", lambda r: r["block_size"]),
    ("peak concurrency", "requests", lambda r: r["peak_concurrency"]),
    ("mean concurrency", "requests", lambda r: r["mean_concurrency"]),
    ("prefix hit rate", "% prompt tokens", lambda r: 100.0 * r["prefix_hit_rate"]),
    ("preemptions", "", lambda r: r["preemptions"]),
    ("recomputed tokens", "", lambda r: r["recomputed_tokens"]),
    ("output throughput", "tok/s (modelled)", lambda r: r["output_throughput_tok_s"]),
    ("total throughput", "tok/s (modelled)", lambda r: r["total_throughput_tok_s"]),
    ("makespan", "s (modelled)", lambda r: r["makespan_s"]),
    ("TTFT p50", "s", lambda r: r["ttft_s"]["p50"]),
    ("TTFT p99", "s", lambda r: r["ttft_s"]["p99"]),
    ("TPOT p50", "ms", lambda r: 1e3 * r["tpot_s"]["p50"]),
    ("TPOT p99", "ms", lambda r: 1e3 * r["tpot_s"]["p99"]),
    ("steps", "", lambda r: r["steps"]),
    (
        "simulator speed",
        "requests/wall s (measured)",
        lambda r: r["measured"]["sim_requests_per_wall_s"],
    ),
    (
        "scheduler overhead",
        "µs/step mean (measured)",
        lambda r: r["measured"]["scheduler_overhead_us_per_step"]["mean"],
    ),
    (
        "scheduler overhead p99",
        "µs/step (measured)",
        lambda r: r["measured"]["scheduler_overhead_us_per_step"]["p99"],
    ),
)


def render_table(report: SimReport) -> Any:
    """A rich table: one column per layout, plus static / baseline ratios."""
    from rich.table import Table

    lays = list(report.results)
    cfg = report.config
    s = report.trace.summary()
    title = (
        f"hybridkv simulate: {cfg.model}, {cfg.memory_bytes / 2**30:.1f} GiB KV, trace "
        f"{s['name']} ({s['requests']} requests), {report.cost['gpu']} x{report.cost['num_gpus']} "
        "roofline"
    )
    plan = next(p for p in report.plans.values() if not isinstance(p, str))
    ckpt = cfg.state_checkpoint_tokens if plan.mamba_cache_mode == "align" else None
    caption = (
        f"max_num_seqs {cfg.max_num_seqs}, {cfg.max_num_batched_tokens} batched tokens/step, "
        f"max_model_len {plan.max_model_len}, policy {cfg.policy}"
        + (f", per-group state checkpoints every {ckpt} tokens" if ckpt else "")
        + (
            f", {cfg.state_cache_slots} spare per-group state slots"
            if cfg.state_cache_slots
            else ""
        )
        + (
            f". Ideal hit rate (infinite cache, 16-token blocks): "
            f"{100.0 * report.ideal_hit_rate:.1f}% of prompt tokens"
            if report.ideal_hit_rate is not None
            else ""
        )
        + ". Modelled: roofline step times at datasheet peaks. Measured: wall clock of "
        "schedule() + update_from_output(), manager calls included."
    )
    table = Table(title=title, caption=caption)
    table.add_column("metric")
    table.add_column("unit", style="dim")
    for lay in lays:
        table.add_column(lay, justify="right")
    base = report.baseline
    others = [lay for lay in lays if lay != base] if base in lays else []
    for lay in others:
        table.add_column(f"{lay} / {base}", justify="right", style="bold")
    for name, unit, get in TABLE_ROWS:
        vals = [float(get(report.results[lay].report)) for lay in lays]
        cells = [_fmt_num(v) if math.isfinite(v) else "-" for v in vals]
        b = vals[lays.index(base)] if others else 0.0
        for lay in others:
            a = vals[lays.index(lay)]
            ok = b and math.isfinite(a / b) and not name.startswith(("block size", "simulator"))
            cells.append(f"{a / b:.2f}x" if ok else "-")
        table.add_row(name, unit, *cells)
    return table


def write_plot(report: SimReport, path: str | Path) -> None:
    """PNG: KV usage per pool over modelled time, per layout, and cumulative hit rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lays = list(report.results)
    fig, axes = plt.subplots(len(lays) + 1, 1, figsize=(10, 3.2 * (len(lays) + 1)), sharex=True)
    for ax, lay in zip(axes, lays, strict=False):
        res = report.results[lay]
        for j, label in enumerate(res.pool_labels):
            ax.plot(res.times, 100.0 * res.usage[:, j], label=label, linewidth=1)
        ax.set_ylabel("pool in use (%)")
        ax.set_ylim(0, 105)
        ax.set_title(f"{lay}: KV usage per pool")
        ax.legend(loc="lower right", fontsize="small")
    ax = axes[-1]
    for lay in lays:
        res = report.results[lay]
        ax.plot(res.times, 100.0 * res.hit_rate, label=lay)
    ax.set_ylabel("cumulative prefix hit rate (%)")
    ax.set_xlabel("modelled time (s)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
