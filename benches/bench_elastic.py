"""The elastic-memory goal table: ``elastic`` vs every other registered layout.

For each (model, memory, trace) it runs ``hybridkv simulate``'s layouts side by side
(the same scheduler, cost model and trace) and prints one markdown row per run with:
prefix hit rate of each layout and elastic's ratio to the others, token capacity
beside the physical limit (memory minus floors, over growing bytes per token), TTFT
p50/p99, modelled output throughput, and the arena waste (peak fraction of memory no
group could use) with the regions moved.

    .venv/bin/python benches/bench_elastic.py [--jobs 2] [--json out.json]
        [--models M ...] [--traces T ...] [--quick]

``--quick`` runs one small configuration (a smoke run for CI).
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

DEFAULT_RUNS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("qwen3-next-80b-a3b", (16, 32)),
    ("nemotron-nano-9b-v2", (16, 32)),
    ("gpt-oss-20b", (8, 16)),
)
TRACES = ("chat", "agentic", "docqa")


def one(model: str, gib: int, trace: str) -> dict[str, Any]:
    from hybridkv.errors import HybridKVError
    from hybridkv.simulate import SimConfig, run

    t0 = time.perf_counter()
    try:
        rep = run(SimConfig(model=model, memory_bytes=gib << 30, trace=trace)).to_dict()
    except HybridKVError as e:  # a configuration no layout can plan: say so in its row
        rep = {"layouts": {}, "skipped": {"elastic": f"{type(e).__name__}: {e}"}}
    return {
        "model": model,
        "gib": gib,
        "trace": trace,
        "wall_s": time.perf_counter() - t0,
        "layouts": rep["layouts"],
        "skipped": rep["skipped"],
    }


def _row(r: dict[str, Any], others: list[str]) -> str:
    lays = r["layouts"]
    e = lays.get("elastic")
    cells = [r["model"], f"{r['gib']} GiB", r["trace"]]
    if e is None:
        return " | ".join([*cells, f"elastic skipped: {r['skipped'].get('elastic')}"])
    hits = [f"{e['prefix_hit_rate']:.3f}"]
    for o in others:
        x = lays.get(o)
        hits.append(
            f"{x['prefix_hit_rate']:.3f} ({e['prefix_hit_rate'] / x['prefix_hit_rate']:.2f}x)"
            if x and x["prefix_hit_rate"]
            else (f"{x['prefix_hit_rate']:.3f}" if x else "-")
        )
    caps = [f"{e['token_capacity']:,}"]
    phys = e.get("physical_token_limit")
    caps.append(f"{phys:,.0f}" if phys else "-")
    for o in others:
        x = lays.get(o)
        caps.append(f"{x['token_capacity']:,}" if x else "-")
    ttft = [f"{e['ttft_p50']:.2f}/{e['ttft_p99']:.2f}"]
    thr = [f"{e['output_throughput']:.0f}"]
    for o in others:
        x = lays.get(o)
        ttft.append(f"{x['ttft_p50']:.2f}/{x['ttft_p99']:.2f}" if x else "-")
        thr.append(f"{x['output_throughput']:.0f}" if x else "-")
    a = e.get("arena", {})
    waste = f"{100 * a.get('waste_fraction_peak', 0.0):.2f} % ({a.get('region_moves', 0)} moves)"
    return " | ".join([*cells, *hits, *caps, *ttft, *thr, waste])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", help="write the raw reports here")
    ap.add_argument("--models", nargs="*")
    ap.add_argument("--traces", nargs="*", default=list(TRACES))
    ap.add_argument("--quick", action="store_true", help="one small run")
    args = ap.parse_args()
    runs = [
        (m, g, t)
        for m, gibs in DEFAULT_RUNS
        if not args.models or m in args.models
        for g in gibs
        for t in args.traces
    ]
    if args.quick:
        runs = [("gpt-oss-20b", 8, "docqa")]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        results = list(ex.map(one, *zip(*runs, strict=True)))
    others = sorted({k for r in results for k in r["layouts"] if k != "elastic"})
    head = ["model", "memory", "trace", "hit elastic"]
    head += [f"hit {o}" for o in others]
    head += ["capacity elastic", "physical limit"] + [f"capacity {o}" for o in others]
    head += ["TTFT p50/p99 elastic"] + [f"TTFT {o}" for o in others]
    head += ["out tok/s elastic"] + [f"out tok/s {o}" for o in others]
    head += ["arena waste peak"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in results:
        print("| " + _row(r, others) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
