"""``--layout vllm`` checked against vLLM 0.33's own ``KVCacheManager``, call for call.

The ``vllm`` layout of ``hybridkv simulate`` models vLLM's runtime hybrid layout (one
shared block pool at the inflated block size, its free-queue order, its align-mode
state caching). This bench runs the simulator on that layout with a recording proxy
around the manager: every call the scheduler makes (requests added, prefix lookups
and their hits, the step's allocation and its per-request outcomes, sampled tokens,
frees, preemptions) goes into a log. A subprocess in vLLM's own venv (default
``/work/vllm-venv``, or ``$VLLM_VENV``; install it with ``bash
../shared/peers/install_vllm_core.sh /work/vllm-venv``) replays the log on vLLM's real
``KVCacheManager`` built with the same groups, block size and pool size, so both
managers see the same scheduler decisions, and compares every outcome: hit tokens per
lookup, allocation success per request, and blocks in use after every step. Hit
tokens are summed over every lookup the scheduler makes (a waiting request looked up
again each step it is not admitted, a preempted one again on resuming), so they measure
the managers' agreement, not the run's prefix hit rate (printed beside it).

Lockstep details (the scheduler's, not the manager's): hybridkv's scheduler looks
prefixes up for its admissions before the step's one allocation call, and a lookup
holds (pins) its hit blocks; vLLM's scheduler looks up and allocates each admission
together. The replay pins vLLM's hit blocks at lookup time too (``BlockPool.touch``)
and unpins them right before that request's ``allocate_slots`` (which takes them
again), so the running requests allocated earlier in the step cannot evict them in
either manager. Where a hit differs, vLLM is allocated from its own hit to the same
end position, so the two stay comparable.

Traces: the bundled chat, docqa and agentic traces, a slice of the Mooncake
conversation trace (``shared/traces/mooncake_conversation_trace.jsonl`` beside the
checkout, read by the simulator's own reader: each 512-token hash block becomes
deterministic tokens) and ``sharegpt`` (the simulator's default ShareGPT multi-turn
sessions, seed 0; needs the ``traces`` extra). Model Qwen3-Next-80B-A3B (vLLM's
block: 544 tokens), at 16 GiB (``make run``'s setting) and at a tight 4 GiB where the
pool runs out.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

MOONCAKE = Path("/work/shared/traces/mooncake_conversation_trace.jsonl")
INSTALL = "bash ../shared/peers/install_vllm_core.sh /work/vllm-venv"
MODEL = "qwen3-next-80b-a3b"


# --- hybridkv side: the simulator with a recording manager -------------------------------


class Recorder:
    """A KVCacheManager proxy that logs every call the scheduler makes."""

    def __init__(self, inner: Any) -> None:
        self._m = inner
        self.ops: list[tuple[Any, ...]] = []
        self.peak = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._m, name)

    def _used(self) -> int:
        n, free, _c, _u = self._m._core.pool_counts()[0]
        return int(n - 1 - free)

    def add_requests(self, ids: Any, token_ids: Any, offsets: Any = None) -> None:
        self._m.add_requests(ids, token_ids, offsets)
        assert offsets is None  # the scheduler passes one array per request
        toks = [np.ascontiguousarray(t, dtype=np.int32).tobytes() for t in token_ids]
        self.ops.append(("add", np.asarray(ids).tolist(), toks))

    def get_computed_tokens(self, ids: Any) -> Any:
        hits = self._m.get_computed_tokens(ids)
        self.ops.append(("hit", np.asarray(ids).tolist(), np.asarray(hits).tolist()))
        return hits

    def allocate_slots(self, ids: Any, nums: Any, lookahead: Any = None, **kw: Any) -> Any:
        ok = self._m.allocate_slots(ids, nums, lookahead, **kw)
        used = self._used()
        self.peak = max(self.peak, used)
        self.ops.append(
            (
                "alloc",
                np.asarray(ids).tolist(),
                np.asarray(nums).tolist(),
                bool(kw.get("new_step", True)),
                np.asarray(ok).tolist(),
                used,
            )
        )
        return ok

    def append_tokens(self, ids: Any, token_ids: Any, offsets: Any = None) -> None:
        self._m.append_tokens(ids, token_ids, offsets)
        flat = np.asarray(token_ids, dtype=np.int64).tolist()
        offs = np.asarray(offsets, dtype=np.int64).tolist()
        per = [flat[offs[i] : offs[i + 1]] for i in range(len(offs) - 1)]
        self.ops.append(("append", np.asarray(ids).tolist(), per))

    def free(self, ids: Any) -> None:
        self._m.free(ids)
        self.ops.append(("free", np.asarray(ids).tolist()))

    def preempt(self, ids: Any) -> None:
        self._m.preempt(ids)
        self.ops.append(("preempt", np.asarray(ids).tolist()))


def find_mooncake() -> Path:
    """``shared/traces/<name>`` beside the nearest ancestor of this checkout that has it
    (``main`` and every worktree), else the integrator's path."""
    for parent in Path(__file__).resolve().parents:
        p = parent / "shared" / "traces" / MOONCAKE.name
        if p.is_file():
            return p
    return MOONCAKE


def bench_trace(name: str, mooncake_requests: int) -> Any:
    """The trace a row runs: a bundled one, ``sharegpt`` (the simulator's default
    sessions, seed 0) or ``mooncake`` (its first ``mooncake_requests`` requests, read by
    the simulator's own reader)."""
    from hybridkv.serving.trace_sources import open_trace
    from hybridkv.serving.traces import TraceWindow

    if name == "mooncake":
        return open_trace(str(find_mooncake()), window=TraceWindow(max_requests=mooncake_requests))
    return open_trace(name)


def run_hybridkv(trace_name: str, memory: int, mooncake_requests: int) -> dict[str, Any]:
    from hybridkv.cost_model import CostModel
    from hybridkv.simulate import SimConfig, cost_plan, make_layouts, simulate_plan

    trace = bench_trace(trace_name, mooncake_requests)
    cfg = SimConfig(model=MODEL, memory_bytes=memory, trace=trace_name)
    setup = make_layouts(cfg, trace, ["vllm"])["vllm"]
    if isinstance(setup, str):
        raise SystemExit(f"vllm layout cannot run: {setup}")
    plan = setup.plan
    rec: list[Recorder] = []

    def factory(p: Any) -> Recorder:
        assert setup.manager_factory is not None
        r = Recorder(setup.manager_factory(p))
        rec.append(r)
        return r

    cost = CostModel(cost_plan(cfg, trace))
    t0 = time.perf_counter()
    res = simulate_plan(
        plan,
        trace,
        layout="vllm",
        cost=cost,
        manager_factory=factory,
        scheduler_options=setup.scheduler_options,
    ).report
    wall = time.perf_counter() - t0
    r = rec[0]
    lookups = [op for op in r.ops if op[0] == "hit"]
    allocs = [op for op in r.ops if op[0] == "alloc"]
    return {
        "trace": trace.name,
        "requests": trace.num_requests,
        "memory_gib": memory / 2**30,
        "groups": [(g.kind, g.block_size) for g in plan.groups],
        "num_blocks": plan.groups[0].num_blocks,
        "max_model_len": plan.max_model_len,
        "ops": r.ops,
        "hit_tokens": sum(sum(op[2]) for op in lookups),
        "alloc_failures": sum(op[4].count(False) for op in allocs),
        "peak_blocks": r.peak,
        "preemptions": res["preemptions"],
        "prefix_hit_rate": res["prefix_hit_rate"],
        "wall_s": wall,
    }


# --- vLLM side (its own venv) -------------------------------------------------------------


def vllm_side_main(log_path: str) -> None:
    import torch
    import vllm
    from vllm.sampling_params import SamplingParams
    from vllm.utils.hashing import sha256
    from vllm.v1.core.kv_cache_manager import KVCacheManager
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
    from vllm.v1.kv_cache_interface import (
        FullAttentionSpec,
        KVCacheConfig,
        KVCacheGroupSpec,
        MambaSpec,
    )
    from vllm.v1.request import Request

    with open(log_path, "rb") as f:
        run = pickle.load(f)
    init_none_hash(sha256)
    groups = []
    bs = run["groups"][0][1]
    for i, (kind, gbs) in enumerate(run["groups"]):
        if gbs != bs:
            raise SystemExit(f"group {i}: block size {gbs} differs from {bs}")
        if kind == "state":
            spec: Any = MambaSpec(
                block_size=gbs,
                shapes=((3, 8192), (32, 128, 128)),
                dtypes=(torch.bfloat16, torch.bfloat16),
                mamba_cache_mode="align",
            )
        elif kind == "full_attention":
            spec = FullAttentionSpec(
                block_size=gbs, num_kv_heads=2, head_size=256, dtype=torch.bfloat16
            )
        else:
            raise SystemExit(f"group kind {kind} is not replayed by this bench")
        groups.append(KVCacheGroupSpec([f"layer.{i}"], spec))
    n_blocks = run["num_blocks"]
    cfg = KVCacheConfig(num_blocks=n_blocks, kv_cache_tensors=[], kv_cache_groups=groups)
    mgr = KVCacheManager(
        cfg,
        max_model_len=run["max_model_len"],
        scheduler_block_size=bs,
        hash_block_size=bs,
        enable_caching=True,
    )
    pool = mgr.block_pool
    hasher = get_request_block_hasher(bs, sha256)
    reqs: dict[int, Any] = {}
    pinned: dict[int, tuple[Any, int, int]] = {}  # rid -> (blocks, vLLM hit, our hit)
    allocated: set[int] = set()
    hit_tokens = fails = peak = 0
    hit_diff = alloc_diff = used_diff = 0
    first_diff: str | None = None
    max_used_diff = 0

    def unpin(rid: int) -> tuple[Any, int, int] | None:
        got = pinned.pop(rid, None)
        if got is not None:
            pool.free_blocks([b for g in got[0].blocks for b in g])
        return got

    def release(rid: int) -> None:
        unpin(rid)
        if rid in allocated:
            mgr.free(reqs[rid])
            allocated.discard(rid)
        reqs[rid].num_computed_tokens = 0

    for k, op in enumerate(run["ops"]):
        kind = op[0]
        if kind == "add":
            for rid, raw in zip(op[1], op[2], strict=True):
                toks = np.frombuffer(raw, dtype=np.int32).tolist()
                sp = SamplingParams(max_tokens=run["max_model_len"])
                reqs[rid] = Request(f"r{rid}", toks, sp, None, block_hasher=hasher)
        elif kind == "hit":
            for rid, ours in zip(op[1], op[2], strict=True):
                release(rid)
                r = reqs[rid]
                blocks, nhit, _junction = mgr.get_computed_blocks(r)
                pool.touch([b for g in blocks.blocks for b in g])
                pinned[rid] = (blocks, nhit, ours)
                hit_tokens += nhit
                if nhit != ours:
                    hit_diff += 1
                    first_diff = first_diff or f"op {k}: request {rid} hit {nhit} vs {ours}"
        elif kind == "alloc":
            _, ids, nums, new_step, oks, used = op
            if new_step:
                mgr.new_step_starts()
            for rid, n, ours in zip(ids, nums, oks, strict=True):
                r = reqs[rid]
                got = unpin(rid)
                if got is not None:
                    blocks, nhit, our_hit = got
                    end = our_hit + n
                    new = mgr.allocate_slots(r, end - nhit, nhit, blocks)
                    if new is None:
                        # Not taken: pin again, as our lookup still holds its blocks.
                        pool.touch([b for g in blocks.blocks for b in g])
                        pinned[rid] = got
                    else:
                        r.num_computed_tokens = end
                        allocated.add(rid)
                else:
                    new = mgr.allocate_slots(r, n)
                    if new is not None:
                        r.num_computed_tokens += n
                ok = new is not None
                fails += int(not ok)
                if ok != ours:
                    alloc_diff += 1
                    first_diff = first_diff or f"op {k}: request {rid} allocation {ok} vs {ours}"
            in_use = n_blocks - 1 - pool.get_num_free_blocks()
            peak = max(peak, in_use)
            if in_use != used:
                used_diff += 1
                max_used_diff = max(max_used_diff, abs(in_use - used))
        elif kind == "append":
            for rid, toks in zip(op[1], op[2], strict=True):
                for t in toks:
                    reqs[rid].append_output_token_ids(t)
        elif kind == "free":
            for rid in op[1]:
                release(rid)
                del reqs[rid]
        elif kind == "preempt":
            for rid in op[1]:
                release(rid)
    print(
        json.dumps(
            {
                "version": vllm.__version__,
                "hit_tokens": hit_tokens,
                "alloc_failures": fails,
                "peak_blocks": peak,
                "hit_mismatches": hit_diff,
                "alloc_mismatches": alloc_diff,
                "steps_with_other_usage": used_diff,
                "max_usage_gap_blocks": max_used_diff,
                "first_mismatch": first_diff,
            }
        )
    )


def vllm_python() -> str | None:
    venv = os.environ.get("VLLM_VENV", "/work/vllm-venv")
    py = os.path.join(venv, "bin", "python")
    return py if os.path.exists(py) else None


def run_vllm(run: dict[str, Any]) -> dict[str, Any] | str:
    py = vllm_python()
    if py is None:
        return f"vLLM side skipped: no vLLM venv (install it with {INSTALL})"
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "log.pkl")
        with open(path, "wb") as f:
            pickle.dump(run, f, protocol=4)
        proc = subprocess.run(
            [py, __file__, "--vllm-side", path], capture_output=True, text=True, timeout=7200
        )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return "vLLM side failed: " + " | ".join(tail)
    out: dict[str, Any] = json.loads(lines[-1])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--traces", default="chat,docqa,agentic,mooncake,sharegpt")
    ap.add_argument("--memory-gib", default="16,4", help="comma-separated KV sizes")
    ap.add_argument("--mooncake-requests", type=int, default=300)
    ap.add_argument("--vllm-side", metavar="LOG", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.vllm_side:
        vllm_side_main(a.vllm_side)
        return 0
    from rich.console import Console
    from rich.table import Table

    con = Console(width=200)
    t = Table(
        title=(
            f"--layout vllm vs vLLM's own KVCacheManager, same scheduler decisions: {MODEL}, "
            "max_num_seqs 64, 8192 batched tokens"
        )
    )
    for col in (
        "trace",
        "KV",
        "requests",
        "lookup hit tokens vLLM",
        "lookup hit tokens model",
        "gap",
        "alloc fails vLLM",
        "alloc fails model",
        "peak blocks vLLM",
        "peak blocks model",
        "lookups differing",
        "allocs differing",
        "steps, other usage",
    ):
        t.add_column(col, justify="left" if col == "trace" else "right")
    notes: list[str] = []
    # The model is exact today (RESULTS.md): any disagreement with vLLM's own code, or a
    # vLLM side that ran and failed, fails the bench so `make bench` cannot hide it.
    disagreements = 0
    for mem in (float(x) for x in a.memory_gib.split(",")):
        for name in a.traces.split(","):
            if name == "mooncake" and not find_mooncake().exists():
                notes.append(f"{MOONCAKE.name} not found beside the checkout: mooncake skipped")
                continue
            try:
                run = run_hybridkv(name, int(mem * 2**30), a.mooncake_requests)
            except Exception as e:  # a layout that cannot run at this memory
                notes.append(f"{name} at {mem:g} GiB: {e}")
                continue
            v = run_vllm(run)
            if isinstance(v, str):
                notes.append(v)
                disagreements += int(v.startswith("vLLM side failed"))
                t.add_row(
                    run["trace"],
                    f"{mem:g} GiB",
                    str(run["requests"]),
                    "-",
                    f"{run['hit_tokens']:,}",
                    "-",
                    "-",
                    str(run["alloc_failures"]),
                    "-",
                    str(run["peak_blocks"]),
                    "-",
                    "-",
                    "-",
                )
                continue
            gap = (run["hit_tokens"] - v["hit_tokens"]) / max(v["hit_tokens"], 1)
            # One line per row as it completes (a long run keeps what it measured).
            row = {k: run[k] for k in ("trace", "requests", "memory_gib", "num_blocks")}
            row |= {f"model_{k}": run[k] for k in ("hit_tokens", "alloc_failures", "peak_blocks")}
            row |= {f"vllm_{k}": val for k, val in v.items()}
            row |= {"preemptions": run["preemptions"], "prefix_hit_rate": run["prefix_hit_rate"]}
            print("row " + json.dumps(row), flush=True)
            t.add_row(
                run["trace"],
                f"{mem:g} GiB",
                str(run["requests"]),
                f"{v['hit_tokens']:,}",
                f"{run['hit_tokens']:,}",
                f"{100 * gap:+.2f}%",
                str(v["alloc_failures"]),
                str(run["alloc_failures"]),
                str(v["peak_blocks"]),
                str(run["peak_blocks"]),
                str(v["hit_mismatches"]),
                str(v["alloc_mismatches"]),
                str(v["steps_with_other_usage"]),
            )
            disagreements += int(
                v["hit_mismatches"] > 0
                or v["alloc_mismatches"] > 0
                or v["steps_with_other_usage"] > 0
                or v["hit_tokens"] != run["hit_tokens"]
            )
            if v["first_mismatch"]:
                notes.append(f"{run['trace']} {mem:g} GiB first mismatch: {v['first_mismatch']}")
            version = v["version"]
            notes.append(
                f"{run['trace']} {mem:g} GiB: vLLM {version}; model {run['num_blocks']} blocks "
                f"of {run['groups'][0][1]} tokens, {run['preemptions']} preemptions, hit rate "
                f"{run['prefix_hit_rate']:.3f}, simulated in {run['wall_s']:.1f} s"
            )
    con.print(t)
    for n in notes:
        con.print(n, highlight=False)
    if disagreements:
        con.print(f"{disagreements} row(s) disagree with vLLM's own KVCacheManager", style="red")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
