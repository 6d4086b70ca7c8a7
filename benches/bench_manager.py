"""Scheduler-step cost of hybridkv's KVCacheManager vs vLLM v1's, on one workload.

Workload (the same for both, generated deterministically): 256 running requests,
prompts of 1-8k tokens (half start with one shared 2,000-token system prefix), 32-256
output tokens, block size 16, groups full attention + sliding window 4096 + Mamba state
(align mode), prefix caching on, token budget 8,192 per step with chunked prefill (chunks
end on block boundaries and at the shared-prefix junction, as vLLM's scheduler does in
align mode), continuous arrivals replacing completions.

Each side runs the same driver; only the manager calls are timed: request intake (plus
vLLM's block hashing at request creation), prefix lookups, allocation (one batched call
for hybridkv, one call per request for vLLM), the per-step block-table export (the new
block ids a scheduler hands a model runner that keeps persistent tables: hybridkv's
``new_block_ids`` per group, vLLM's ``get_block_ids()`` of the blocks ``allocate_slots``
returned), appending sampled tokens and freeing finished requests. The cost of exporting
hybridkv's full ``(n, width)`` tables of every group (``block_tables``) is shown apart. Times are the calling thread's CPU time (the GIL is
released inside hybridkv, but its work runs on the calling thread).

vLLM runs in a subprocess with the python of a separate venv (default
``/work/vllm-venv``, or ``$VLLM_VENV``); install it with
``bash ../shared/peers/install_vllm_core.sh /work/vllm-venv``. Without it, only
hybridkv's side runs. vLLM is never a dependency of hybridkv.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

BS = 16
WINDOW = 4096
MAX_SEQS = 256
BUDGET = 8192
SYS_PREFIX = 2000
VOCAB = 150_000
INSTALL = "bash ../shared/peers/install_vllm_core.sh /work/vllm-venv"
# Thread CPU time: the machine this runs on is often shared, and wall-clock time would
# charge both sides for the time other processes hold the CPU.
CLOCK = time.thread_time


# --- workload ------------------------------------------------------------------------


def make_workload(n: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    system = rng.integers(1, VOCAB, SYS_PREFIX, dtype=np.int32)
    prompts, shared = [], []
    for i in range(n):
        total = int(rng.integers(1024, 8193))
        has = bool(i % 2 == 0)
        body = rng.integers(1, VOCAB, max(16, total - SYS_PREFIX) if has else total, dtype=np.int32)
        prompts.append(np.concatenate([system, body]) if has else body)
        shared.append(has)
    outputs = rng.integers(32, 257, n)
    return {"prompts": prompts, "shared": shared, "outputs": outputs.tolist()}


# --- the driver (identical for both sides) -------------------------------------------


class Side:
    """What the driver needs from a manager; each method times itself."""

    name = ""

    def admit(self, ids: list[int], prompts: list[np.ndarray]) -> list[int]: ...
    def allocate(self, ids: list[int], nums: list[int]) -> list[bool]: ...
    def export(self, ids: list[int]) -> None: ...
    def append(self, ids: list[int], toks: list[int]) -> None: ...
    def free(self, ids: list[int]) -> None: ...


def run_driver(
    side: Side, wl: dict[str, Any], steps: int, warmup: int, clock: Callable[[], float]
) -> dict[str, Any]:
    prompts: list[np.ndarray] = wl["prompts"]
    shared: list[bool] = wl["shared"]
    outputs: list[int] = wl["outputs"]
    waiting = deque(range(len(prompts)))
    running: list[int] = []
    computed: dict[int, int] = {}
    total: dict[int, int] = {}
    generated: dict[int, int] = {}
    hit_tok = prompt_tok = fails = 0
    step_times: list[float] = []
    wall_times: list[float] = []
    sampled = 7

    def chunk_end(rid: int, c: int, budget: int) -> int:
        plen = int(prompts[rid].shape[0])
        t = total[rid]
        if c >= plen:
            return min(t, c + budget)  # decode
        cuts = [plen // BS * BS, plen]
        if shared[rid]:
            cuts.insert(0, SYS_PREFIX // BS * BS)
        end = min(x for x in cuts if x > c)
        if c + budget >= end:
            return end
        aligned = (c + budget) // BS * BS
        return aligned if aligned > c else c + budget

    for step in range(warmup + steps):
        t0 = clock()
        side.spent = 0.0  # type: ignore[attr-defined]
        side.wall = 0.0  # type: ignore[attr-defined]
        budget = BUDGET
        ids: list[int] = []
        nums: list[int] = []
        for rid in running:
            if budget <= 0:
                break
            e = chunk_end(rid, computed[rid], budget)
            if e > computed[rid]:
                ids.append(rid)
                nums.append(e - computed[rid])
                budget -= e - computed[rid]
        admit: list[int] = []
        while waiting and len(running) + len(admit) < MAX_SEQS and budget > 0:
            rid = waiting.popleft()
            admit.append(rid)
            budget -= min(int(prompts[rid].shape[0]), budget)
        if admit:
            hits = side.admit(admit, [prompts[r] for r in admit])
            for rid, h in zip(admit, hits, strict=True):
                computed[rid] = h
                total[rid] = int(prompts[rid].shape[0])
                generated[rid] = 0
                hit_tok += h
                prompt_tok += total[rid]
            budget = BUDGET - sum(nums)
            for rid in admit:
                e = chunk_end(rid, computed[rid], max(budget, 0))
                ids.append(rid)
                nums.append(max(e - computed[rid], 0))
                budget -= nums[-1]
            running.extend(admit)
        ok = side.allocate(ids, nums)
        fails += sum(1 for x in ok if not x)
        done_ids = [rid for rid, good in zip(ids, ok, strict=True) if good]
        for rid, n, good in zip(ids, nums, ok, strict=True):
            if good:
                computed[rid] += n
        side.export(done_ids)
        app: list[int] = []
        fin: list[int] = []
        for rid in done_ids:
            if computed[rid] == total[rid]:
                generated[rid] += 1
                if generated[rid] >= outputs[rid]:
                    fin.append(rid)
                else:
                    app.append(rid)
                    total[rid] += 1
        if app:
            side.append(app, [sampled] * len(app))
        if fin:
            side.free(fin)
            gone = set(fin)
            running = [r for r in running if r not in gone]
        if step >= warmup:
            step_times.append(side.spent)  # type: ignore[attr-defined]
            wall_times.append(side.wall)  # type: ignore[attr-defined]
        del t0
    return {
        "us_per_step": 1e6 * float(np.mean(step_times)),
        "us_p50": 1e6 * float(np.percentile(step_times, 50)),
        "us_p99": 1e6 * float(np.percentile(step_times, 99)),
        "wall_us_per_step": 1e6 * float(np.mean(wall_times)),
        "hit_rate": hit_tok / max(prompt_tok, 1),
        "fails": fails,
        "steps": steps,
        "running_end": len(running),
    }


# --- hybridkv ------------------------------------------------------------------------


class HybridSide(Side):
    name = "hybridkv"

    def __init__(self, clock: Callable[[], float]) -> None:
        from hybridkv import KVCacheManager, ManagerConfig, ManagerGroup

        full_blocks = MAX_SEQS * (8192 + 256) // BS * 2 + 1
        swa_blocks = MAX_SEQS * (WINDOW // BS + 2) + BUDGET // BS + 4096
        cfg = ManagerConfig(
            (
                ManagerGroup("full_attention", BS, full_blocks),
                ManagerGroup("sliding_window", BS, swa_blocks, window=WINDOW),
                ManagerGroup("state", BS, MAX_SEQS * 2 + 4096),
            ),
            "align",
        )
        self.m = KVCacheManager(cfg, enable_prefix_caching=True, hash_seed=0)
        self.clock = clock
        self.spent = 0.0
        self.wall = 0.0
        self.t_export = 0.0
        self.t_calls = 0.0
        self.n_export = 0
        self.t_full_export = 0.0
        self.n_full_export = 0

    def _timed(self, f: Callable[[], Any], export: bool = False) -> Any:
        t, w = self.clock(), time.perf_counter()
        out = f()
        self.spent += self.clock() - t
        # The breakdown is wall-clock, like the core's own phase timers.
        dw = time.perf_counter() - w
        self.wall += dw
        if export:
            self.t_export += dw
        else:
            self.t_calls += dw
        return out

    def admit(self, ids: list[int], prompts: list[np.ndarray]) -> list[int]:
        def go() -> Any:
            a = np.asarray(ids, dtype=np.int64)
            self.m.add_requests(a, prompts)
            return self.m.get_computed_tokens(a)

        return [int(x) for x in self._timed(go)]

    def allocate(self, ids: list[int], nums: list[int]) -> list[bool]:
        a = np.asarray(ids, dtype=np.int64)
        n = np.asarray(nums, dtype=np.int64)
        return [bool(x) for x in self._timed(lambda: self.m.allocate_slots(a, n))]

    def export(self, ids: list[int]) -> None:
        a = np.asarray(ids, dtype=np.int64)
        self._timed(lambda: [self.m.new_block_ids(g, a) for g in range(3)], export=True)
        # The full tables, for the breakdown only (every 10th step, not in the totals).
        self.n_export += 1
        if self.n_export % 10 == 0:
            w = time.perf_counter()
            self.m.block_tables(a)
            self.t_full_export += time.perf_counter() - w
            self.n_full_export += 1

    def append(self, ids: list[int], toks: list[int]) -> None:
        a = np.asarray(ids, dtype=np.int64)
        t = np.asarray(toks, dtype=np.int32)
        offs = np.arange(len(ids) + 1, dtype=np.int64)
        self._timed(lambda: self.m.append_tokens(a, t, offs))

    def free(self, ids: list[int]) -> None:
        a = np.asarray(ids, dtype=np.int64)
        self._timed(lambda: self.m.free(a))


# --- vLLM (runs in its own venv) -------------------------------------------------------


def vllm_side_main(wl_path: str, steps: int, warmup: int) -> None:
    import vllm
    from vllm.sampling_params import SamplingParams
    from vllm.utils.hashing import sha256
    from vllm.v1.core.kv_cache_manager import KVCacheManager
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
    from vllm.v1.kv_cache_interface import (
        KVCacheConfig,
    )
    from vllm.v1.request import Request

    wl = load_workload(wl_path)
    init_none_hash(sha256)
    groups = vllm_kv_groups()
    num_blocks = MAX_SEQS * (8192 + 256) // BS * 2 + MAX_SEQS * (WINDOW // BS + 2) + 8192
    cfg = KVCacheConfig(num_blocks=num_blocks, kv_cache_tensors=[], kv_cache_groups=groups)
    mgr = KVCacheManager(
        cfg,
        max_model_len=8192 + 512,
        scheduler_block_size=BS,
        hash_block_size=BS,
        enable_caching=True,
    )
    hasher = get_request_block_hasher(BS, sha256)
    clock = CLOCK

    class VllmSide(Side):
        name = "vllm"

        def __init__(self) -> None:
            self.reqs: dict[int, Any] = {}
            self.pending: dict[int, tuple[int, Any]] = {}
            self.new_blocks: dict[int, Any] = {}
            self.spent = 0.0
            self.wall = 0.0

        def admit(self, ids: list[int], prompts: list[np.ndarray]) -> list[int]:
            t, w = clock(), time.perf_counter()
            out = []
            for rid, p in zip(ids, prompts, strict=True):
                sp = SamplingParams(max_tokens=wl["outputs"][rid])
                r = Request(f"r{rid}", p.tolist(), sp, None, block_hasher=hasher)
                blocks, nhit, _junction = mgr.get_computed_blocks(r)
                self.reqs[rid] = r
                self.pending[rid] = (nhit, blocks)
                out.append(nhit)
            self.spent += clock() - t
            self.wall += time.perf_counter() - w
            return out

        def allocate(self, ids: list[int], nums: list[int]) -> list[bool]:
            t, w = clock(), time.perf_counter()
            mgr.new_step_starts()
            ok = []
            for rid, n in zip(ids, nums, strict=True):
                r = self.reqs[rid]
                if rid in self.pending:
                    nhit, blocks = self.pending.pop(rid)
                    got = mgr.allocate_slots(r, n, nhit, blocks)
                    if got is not None:
                        r.num_computed_tokens += nhit + n
                else:
                    got = mgr.allocate_slots(r, n)
                    if got is not None:
                        r.num_computed_tokens += n
                self.new_blocks[rid] = got
                ok.append(got is not None)
            self.spent += clock() - t
            self.wall += time.perf_counter() - w
            return ok

        def export(self, ids: list[int]) -> None:
            t, w = clock(), time.perf_counter()
            for rid in ids:
                b = self.new_blocks.pop(rid, None)
                if b is not None:
                    b.get_block_ids()
            self.spent += clock() - t
            self.wall += time.perf_counter() - w

        def append(self, ids: list[int], toks: list[int]) -> None:
            t, w = clock(), time.perf_counter()
            for rid, tok in zip(ids, toks, strict=True):
                self.reqs[rid].append_output_token_ids(tok)
            self.spent += clock() - t
            self.wall += time.perf_counter() - w

        def free(self, ids: list[int]) -> None:
            t, w = clock(), time.perf_counter()
            for rid in ids:
                mgr.free(self.reqs.pop(rid))
            self.spent += clock() - t
            self.wall += time.perf_counter() - w

    res = run_driver(VllmSide(), wl, steps, warmup, clock)
    res["version"] = vllm.__version__
    print(json.dumps(res))


def save_workload(wl: dict[str, Any], path: str) -> None:
    lens = np.array([p.shape[0] for p in wl["prompts"]], dtype=np.int64)
    np.savez(
        path,
        tokens=np.concatenate(wl["prompts"]),
        lens=lens,
        shared=np.array(wl["shared"]),
        outputs=np.array(wl["outputs"]),
    )


def load_workload(path: str) -> dict[str, Any]:
    z = np.load(path)
    offs = np.concatenate([[0], np.cumsum(z["lens"])])
    toks = z["tokens"]
    prompts = [toks[offs[i] : offs[i + 1]] for i in range(len(z["lens"]))]
    return {
        "prompts": prompts,
        "shared": z["shared"].tolist(),
        "outputs": z["outputs"].tolist(),
    }


def vllm_python() -> str | None:
    venv = os.environ.get("VLLM_VENV", "/work/vllm-venv")
    py = os.path.join(venv, "bin", "python")
    return py if os.path.exists(py) else None


def run_peer(script: str, args: Sequence[str]) -> dict[str, Any] | str:
    """Run ``script --vllm-side *args`` with vLLM's venv python; its last JSON line, or
    a sentence saying why there is none (no venv: the vLLM side is skipped)."""
    py = vllm_python()
    if py is None:
        return f"vLLM side skipped: no vLLM venv (install it with {INSTALL}, or set VLLM_VENV)"
    proc = subprocess.run(
        [py, script, "--vllm-side", *args], capture_output=True, text=True, timeout=3600
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return "vLLM side failed: " + " | ".join(tail)
    out: dict[str, Any] = json.loads(lines[-1])
    return out


def vllm_kv_groups() -> list[Any]:
    """The workload's KV-cache groups in vLLM's terms (full attention, sliding window,
    Mamba state in ``align`` mode), for the vLLM side of every bench (vLLM venv only)."""
    import torch
    from vllm.v1.kv_cache_interface import (
        FullAttentionSpec,
        KVCacheGroupSpec,
        MambaSpec,
        SlidingWindowSpec,
    )

    kw = {"block_size": BS, "num_kv_heads": 8, "head_size": 128, "dtype": torch.bfloat16}
    return [
        KVCacheGroupSpec(["full.0"], FullAttentionSpec(**kw)),
        KVCacheGroupSpec(["swa.0"], SlidingWindowSpec(sliding_window=WINDOW, **kw)),
        KVCacheGroupSpec(
            ["mamba.0"],
            MambaSpec(
                block_size=BS,
                shapes=((4, 8192), (32, 128, 128)),
                dtypes=(torch.bfloat16, torch.float32),
                mamba_cache_mode="align",
            ),
        ),
    ]


def run_vllm(wl_path: str, steps: int, warmup: int) -> dict[str, Any] | str:
    return run_peer(__file__, [wl_path, "--steps", str(steps), "--warmup", str(warmup)])


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--requests", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-vllm", action="store_true")
    ap.add_argument("--vllm-side", metavar="WORKLOAD", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.vllm_side:
        vllm_side_main(a.vllm_side, a.steps, a.warmup)
        return 0

    from rich.console import Console
    from rich.table import Table

    random.seed(a.seed)
    wl = make_workload(a.requests, a.seed)
    side = HybridSide(CLOCK)
    res = run_driver(side, wl, a.steps, a.warmup, CLOCK)
    st = side.m.stats()
    vres: dict[str, Any] | str
    if a.no_vllm:
        vres = "vLLM side skipped (--no-vllm)"
    else:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "workload.npz")
            save_workload(wl, path)
            vres = run_vllm(path, a.steps, a.warmup)
        # hybridkv once more after vLLM, so both sides see the machine's load alike;
        # the row shows the mean of the two runs.
        again = run_driver(HybridSide(CLOCK), wl, a.steps, a.warmup, CLOCK)
        for k in ("us_per_step", "us_p50", "us_p99", "wall_us_per_step"):
            res[k] = (res[k] + again[k]) / 2

    con = Console()
    t = Table(
        title=(
            f"KV-cache manager per scheduler step: {MAX_SEQS} running, prompts 1-8k "
            f"(half share a {SYS_PREFIX}-token prefix), full + SWA {WINDOW} + Mamba (align), "
            f"block {BS}, budget {BUDGET} tokens, {a.steps} steps after {a.warmup} warm-up"
        )
    )
    for col in (
        "manager",
        "CPU µs/step mean",
        "p50",
        "p99",
        "wall µs/step mean",
        "prefix hit %",
        "alloc failures",
    ):
        t.add_column(col, justify="right" if col != "manager" else "left")
    t.add_row(
        "hybridkv",
        f"{res['us_per_step']:.0f}",
        f"{res['us_p50']:.0f}",
        f"{res['us_p99']:.0f}",
        f"{res['wall_us_per_step']:.0f}",
        f"{100 * res['hit_rate']:.1f}",
        str(res["fails"]),
    )
    if isinstance(vres, dict):
        t.add_row(
            f"vLLM {vres.get('version', '')}",
            f"{vres['us_per_step']:.0f}",
            f"{vres['us_p50']:.0f}",
            f"{vres['us_p99']:.0f}",
            f"{vres['wall_us_per_step']:.0f}",
            f"{100 * vres['hit_rate']:.1f}",
            str(vres["fails"]),
        )
    con.print(t)
    if isinstance(vres, dict):
        ratio = vres["us_per_step"] / res["us_per_step"]
        r50 = vres["us_p50"] / res["us_p50"]
        rwall = vres["wall_us_per_step"] / res["wall_us_per_step"]
        con.print(
            f"hybridkv is {ratio:.1f}x faster per step than vLLM in CPU time (p50: {r50:.1f}x, "
            f"wall-clock mean: {rwall:.1f}x); goal >= 20x"
        )
    else:
        con.print(vres)
    # Breakdown of hybridkv's time (whole run, warm-up included), per step.
    total_steps = a.steps + a.warmup
    bd = Table(title="hybridkv breakdown (wall-clock µs per step, whole run incl. warm-up)")
    cols = (
        "hashing",
        "prefix lookup",
        "allocation",
        "table export (new ids)",
        "bindings + intake/append/free",
        "full tables (not in totals)",
    )
    for col in cols:
        bd.add_column(col, justify="right")
    core = st.hash_seconds + st.lookup_seconds + st.alloc_seconds
    bd.add_row(
        f"{1e6 * st.hash_seconds / total_steps:.1f}",
        f"{1e6 * st.lookup_seconds / total_steps:.1f}",
        f"{1e6 * st.alloc_seconds / total_steps:.1f}",
        f"{1e6 * side.t_export / total_steps:.1f}",
        f"{1e6 * (side.t_calls - core) / total_steps:.1f}",
        f"{1e6 * side.t_full_export / max(side.n_full_export, 1):.1f}",
    )
    con.print(bd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
