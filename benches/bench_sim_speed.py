"""Simulator speed on the Mooncake conversation trace: simulated requests per wall second.

Runs ``hybridkv simulate`` (the library call behind it, :func:`hybridkv.simulate.run`)
on the one-hour Mooncake conversation trace (12,031 requests, 145 M prompt tokens) for
the default model at 16 GiB of KV, on the GPUs the cost model sizes, ``--runs`` times
with every layout side by side (elastic, static, vllm by default), and prints per run
and layout: wall seconds of the replay (scheduler + manager + clock, trace reading and
planning excluded), simulated requests per wall second, simulated (modelled) seconds
per wall second, the modelled makespan, the prefix hit rate beside the trace's
``ideal_hit_rate``, and the load averages before and after (the machine is shared: say
so next to the figures). A summary gives each layout's median and range over the runs,
and the whole run's wall time (reading the trace, planning and ``ideal_hit_rate``
included). ``--json`` also keeps the first run's whole report (what ``hybridkv
simulate --json`` prints), so one bench run gives the trace's side-by-side figures too.

    .venv/bin/python benches/bench_sim_speed.py [--layout static] [--runs 3]
        [--trace-max-requests N] [--trace PATH] [--json OUT.json]

The trace is looked for beside the checkout's ancestors (``shared/traces/`` next to
``main`` or a worktree), or given with ``--trace``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from hybridkv.simulate import LAYOUTS, SimConfig, run
from hybridkv.traces import TraceWindow

TRACE_NAME = "mooncake_conversation_trace.jsonl"


def find_trace() -> Path | None:
    """``shared/traces/<TRACE_NAME>`` in the nearest ancestor of this file that has it."""
    for parent in Path(__file__).resolve().parents:
        p = parent / "shared" / "traces" / TRACE_NAME
        if p.is_file():
            return p
    return None


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}/{five:.2f}/{fifteen:.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--trace", help=f"a Mooncake .jsonl (default: shared/traces/{TRACE_NAME})")
    ap.add_argument(
        "--layout",
        action="append",
        choices=list(LAYOUTS),
        help="a layout to time (repeatable; default: every layout)",
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--trace-max-requests", type=int)
    ap.add_argument("--model", default="qwen3-next-80b-a3b")
    ap.add_argument("--memory-gib", type=float, default=16.0)
    ap.add_argument("--json", metavar="OUT", help="also write every run's figures here")
    args = ap.parse_args(argv)
    trace = Path(args.trace) if args.trace else find_trace()
    if trace is None:
        # A clone without ../shared/traces (make bench runs every bench): nothing to time.
        print(
            f"bench_sim_speed: no Mooncake trace (shared/traces/{TRACE_NAME}) beside this "
            "checkout; nothing measured (pass --trace PATH)"
        )
        return 0
    if not trace.is_file():
        print(
            f"no Mooncake trace: pass --trace PATH (looked for shared/traces/{TRACE_NAME})",
            file=sys.stderr,
        )
        return 2
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    layouts = args.layout or list(LAYOUTS)
    cfg = SimConfig(
        model=args.model,
        memory_bytes=int(args.memory_gib * 2**30),
        trace=str(trace),
        trace_window=TraceWindow(max_requests=args.trace_max_requests),
    )
    print(
        f"trace {trace}, model {cfg.model}, {args.memory_gib:g} GiB KV, layouts "
        f"{', '.join(layouts)}, {os.cpu_count()} CPUs"
    )
    header = (
        f"{'run':>3}  {'layout':<8} {'requests':>8} {'wall_s':>7} {'sim_req/wall_s':>14} "
        f"{'sim_s/wall_s':>12} {'makespan_s':>10} {'hit_rate':>8} {'ideal':>6}  "
        "load 1/5/15 before -> after"
    )
    print(header)
    rows: list[dict[str, Any]] = []
    totals: list[float] = []
    sizing = ""
    first_report: dict[str, Any] | None = None
    for r in range(1, args.runs + 1):
        before = load()
        t0 = time.perf_counter()
        rep = run(cfg, layouts)
        totals.append(time.perf_counter() - t0)
        after = load()
        sizing = str(rep.cost["sizing"])
        if first_report is None:
            first_report = rep.to_dict()
        for lay, res in rep.results.items():
            rr = res.report
            m = rr["measured"]
            row = {
                "run": r,
                "layout": lay,
                "requests": rr["requests"],
                "wall_s": m["sim_wall_s"],
                "sim_requests_per_wall_s": m["sim_requests_per_wall_s"],
                "sim_s_per_wall_s": rr["makespan_s"] / m["sim_wall_s"],
                "makespan_s": rr["makespan_s"],
                "prefix_hit_rate": rr["prefix_hit_rate"],
                "ideal_hit_rate": rep.ideal_hit_rate,
                "load_before": before,
                "load_after": after,
            }
            rows.append(row)
            print(
                f"{r:>3}  {lay:<8} {row['requests']:>8} {row['wall_s']:7.1f} "
                f"{row['sim_requests_per_wall_s']:14.1f} {row['sim_s_per_wall_s']:12.1f} "
                f"{row['makespan_s']:10.1f} {row['prefix_hit_rate']:8.4f} "
                f"{rep.ideal_hit_rate or 0.0:6.4f}  {before} -> {after}"
            )
        for lay, why in rep.to_dict()["skipped"].items():
            print(f"     {lay} skipped: {why}")
        print(f"     whole run (reading, planning, ideal_hit_rate included): {totals[-1]:.1f} s")
    print("summary: simulated requests per wall second, median [min, max] over runs")
    for lay in layouts:
        xs = [x["sim_requests_per_wall_s"] for x in rows if x["layout"] == lay]
        if xs:
            walls = [x["wall_s"] for x in rows if x["layout"] == lay]
            span = next(x["makespan_s"] for x in rows if x["layout"] == lay)
            print(
                f"  {lay:<8} {statistics.median(xs):8.1f} [{min(xs):.1f}, {max(xs):.1f}]"
                f"  replay {statistics.median(walls):.0f} s of wall for {span:.0f} s simulated"
            )
    print(f"GPUs: {sizing}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"rows": rows, "whole_run_s": totals, "gpus": sizing, "report": first_report},
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
