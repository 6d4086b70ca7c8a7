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
``new_block_ids_all``, every group in one call; vLLM's ``get_block_ids()`` of the
blocks ``allocate_slots`` returned), appending sampled tokens and freeing finished
requests. The cost of exporting hybridkv's full ``(n, width)`` tables of every group
(``block_tables``) is shown apart. Times are the calling thread's CPU time (the GIL is
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
from dataclasses import dataclass
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


def make_workload(
    n: int, seed: int, *, context: int | None = None, max_output: int | None = None
) -> dict[str, Any]:
    """``context``: every prompt has exactly that many tokens (the shared prefix still
    opens half of them); ``max_output``: every request generates that many tokens."""
    if context is not None:
        return _fixed_workload(n, seed, context, max_output or 256)
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


def _fixed_workload(n: int, seed: int, context: int, output: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    system = rng.integers(1, VOCAB, SYS_PREFIX, dtype=np.int32)
    prompts, shared = [], []
    for i in range(n):
        has = bool(i % 2 == 0) and context > SYS_PREFIX
        body = rng.integers(1, VOCAB, context - SYS_PREFIX if has else context, dtype=np.int32)
        prompts.append(np.concatenate([system, body]) if has else body)
        shared.append(has)
    return {"prompts": prompts, "shared": shared, "outputs": [output] * n}


def max_len(wl: dict[str, Any]) -> int:
    """Longest prompt plus output of a workload (sizes pools and ``max_model_len``)."""
    return max(int(p.shape[0]) + o for p, o in zip(wl["prompts"], wl["outputs"], strict=True))


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
    side: Side,
    wl: dict[str, Any],
    steps: int,
    warmup: int,
    clock: Callable[[], float],
    decode_only: bool = False,
) -> dict[str, Any]:
    """Drive ``side`` over ``wl``. With ``decode_only`` the ``steps`` timed steps are
    the first ones in which every request is decoding (one token each, no admission);
    ``warmup`` is then the most steps to wait for that."""
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

    timing = False
    for step in range(warmup + steps + (10**9 if decode_only else 0)):
        if decode_only and len(step_times) >= steps:
            break
        if decode_only and step >= warmup and not timing:
            raise RuntimeError(f"no decode-only step within {warmup} steps")
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
        if decode_only and not timing:
            timing = bool(ids) and not admit and not waiting and all(x == 1 for x in nums)
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
        if timing if decode_only else step >= warmup:
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
        "steps": len(step_times),
        "running_end": len(running),
    }


# --- hybridkv ------------------------------------------------------------------------


#: Bytes per block of each group kind in the elastic comparison (a full-attention and
#: a window page of 16 tokens x 8 KiB, one Mamba state of 2 MiB): the same blocks as the
#: static pools, in one arena whose floors are the bounded pools' sizes.
_ELASTIC_PAGES = {"full_attention": 16 << 13, "sliding_window": 16 << 13, "state": 2 << 20}


@dataclass(frozen=True)
class _ElasticConfig:
    groups: tuple[Any, ...]
    mamba_cache_mode: str
    arena: Any


def _elastic_config(cfg: Any) -> _ElasticConfig:
    """``cfg``'s groups in one elastic arena holding as many bytes as its static pools
    (bounded groups' pool sizes as floors; ``--elastic-vs-static``)."""
    from hybridkv.cache.arena_plan import choose_region_bytes, pool_classes

    pages = [_ELASTIC_PAGES[g.kind] for g in cfg.groups]
    growing = [g.kind == "full_attention" for g in cfg.groups]
    floors = [0 if gr else g.num_blocks - 1 for g, gr in zip(cfg.groups, growing, strict=True)]
    memory = sum(p * g.num_blocks for p, g in zip(pages, cfg.groups, strict=True))
    # Groups at equal pages share a pool, as the manager lays them out.
    kinds = ["state" if g.kind == "state" else "attention" for g in cfg.groups]
    pools = pool_classes(pages, [g.block_size for g in cfg.groups], kinds)
    arena = choose_region_bytes(memory, pages, floors, growing, pools)
    return _ElasticConfig(cfg.groups, cfg.mamba_cache_mode, arena)


class HybridSide(Side):
    name = "hybridkv"

    def __init__(
        self,
        clock: Callable[[], float],
        max_tokens: int = 8192 + 256,
        swa_groups: int = 1,
        state: bool = True,
        elastic: bool = False,
        full_tables: bool = False,
    ) -> None:
        from hybridkv import KVCacheManager, ManagerConfig, ManagerGroup

        full_blocks = MAX_SEQS * max_tokens // BS * 2 + 1
        swa_blocks = MAX_SEQS * (WINDOW // BS + 2) + BUDGET // BS + 4096
        groups = [ManagerGroup("full_attention", BS, full_blocks)]
        groups += [ManagerGroup("sliding_window", BS, swa_blocks, window=WINDOW)] * swa_groups
        if state:
            groups.append(ManagerGroup("state", BS, MAX_SEQS * 2 + 4096))
        cfg: Any = ManagerConfig(tuple(groups), "align")
        if elastic:
            cfg = _elastic_config(cfg)
        self.m = KVCacheManager(cfg, enable_prefix_caching=True, hash_seed=0)
        self.clock = clock
        self.spent = 0.0
        self.wall = 0.0
        self.t_export = 0.0
        self.t_calls = 0.0
        self.n_export = 0
        self.t_full_export = 0.0
        self.n_full_export = 0
        # The full-table export of the breakdown (untimed): only on the run that prints
        # it. Elsewhere its megabytes of fresh arrays every 10th step (256 x 2,048
        # columns x 3 groups at 32k context) only evicted the manager's own data before
        # the timed steps that follow: work vLLM's side never does.
        self.full_tables = full_tables

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
        self._timed(lambda: self.m.new_block_ids_all(a), export=True)
        # The full tables, for the breakdown only (every 10th step, not in the totals).
        self.n_export += 1
        if self.full_tables and self.n_export % 10 == 0:
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


def vllm_side_main(
    wl_path: str, steps: int, warmup: int, max_tokens: int, decode_only: bool
) -> None:
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
    num_blocks = MAX_SEQS * max_tokens // BS * 2 + MAX_SEQS * (WINDOW // BS + 2) + 8192
    cfg = KVCacheConfig(num_blocks=num_blocks, kv_cache_tensors=[], kv_cache_groups=groups)
    mgr = KVCacheManager(
        cfg,
        max_model_len=max_tokens + 256,
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

    res = run_driver(VllmSide(), wl, steps, warmup, clock, decode_only)
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


def run_vllm(
    wl_path: str, steps: int, warmup: int, max_tokens: int = 8192 + 256, decode_only: bool = False
) -> dict[str, Any] | str:
    args = ["--steps", str(steps), "--warmup", str(warmup), "--max-tokens", str(max_tokens)]
    return run_peer(__file__, [wl_path, *args, *(["--decode-only"] if decode_only else [])])


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--requests", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-vllm", action="store_true")
    ap.add_argument(
        "--decode-steps", type=int, default=200, help="timed steps of the decode-only runs"
    )
    ap.add_argument(
        "--contexts",
        default="1024,4096,16384,32768",
        help="prompt lengths of the decode-only context sweep (comma-separated; '' skips)",
    )
    ap.add_argument(
        "--max-swa-groups",
        type=int,
        default=3,
        help="the sliding-window sweep runs full attention + 0..N window groups (0 skips)",
    )
    ap.add_argument(
        "--elastic-vs-static",
        type=int,
        metavar="RUNS",
        help="only compare hybridkv's elastic arena with its static pools on the main "
        "workload, RUNS times each, alternating",
    )
    ap.add_argument("--vllm-side", metavar="WORKLOAD", help=argparse.SUPPRESS)
    ap.add_argument("--max-tokens", type=int, default=8192 + 256, help=argparse.SUPPRESS)
    ap.add_argument("--decode-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.vllm_side:
        vllm_side_main(a.vllm_side, a.steps, a.warmup, a.max_tokens, a.decode_only)
        return 0

    from rich.console import Console
    from rich.table import Table

    random.seed(a.seed)
    wl = make_workload(a.requests, a.seed)
    if a.elastic_vs_static:
        return elastic_vs_static(wl, a)
    side = HybridSide(CLOCK, full_tables=True)
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
            f"wall-clock mean: {rwall:.1f}x); goal >= 60x (mean and p50)"
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
    decode_section(con, a)
    context_section(con, a)
    swa_section(con, a)
    return 0


def elastic_vs_static(wl: dict[str, Any], a: argparse.Namespace) -> int:
    """``--elastic-vs-static``: the main workload on static pools and on one elastic
    arena of the same bytes, interleaved (the order alternates run by run, so a load
    change hits both sides alike), CPU µs per step of each and their ratio; the summary
    gives the ratio of the summed means and the median of the per-run ratios."""
    rows = []
    for i in range(a.elastic_vs_static):
        order = (False, True) if i % 2 == 0 else (True, False)
        res = {
            el: run_driver(HybridSide(CLOCK, elastic=el), wl, a.steps, a.warmup, CLOCK)
            for el in order
        }
        st, el = res[False], res[True]
        rows.append((st, el))
        print(
            f"run {i + 1}: static {st['us_per_step']:.0f} µs/step (p50 {st['us_p50']:.0f}, "
            f"hit {100 * st['hit_rate']:.1f} %), elastic {el['us_per_step']:.0f} µs/step "
            f"(p50 {el['us_p50']:.0f}, hit {100 * el['hit_rate']:.1f} %): elastic/static "
            f"{el['us_per_step'] / st['us_per_step']:.2f}x mean, "
            f"{el['us_p50'] / st['us_p50']:.2f}x p50",
            flush=True,
        )
    mean = sum(e["us_per_step"] for _, e in rows) / sum(s["us_per_step"] for s, _ in rows)
    med = float(np.median([e["us_per_step"] / s["us_per_step"] for s, e in rows]))
    med50 = float(np.median([e["us_p50"] / s["us_p50"] for s, e in rows]))
    print(
        f"elastic/static over {len(rows)} runs of {a.steps} steps: {mean:.2f}x mean CPU per "
        f"step (median of runs {med:.2f}x mean, {med50:.2f}x p50; goal <= 1.2x)"
    )
    return 0


def _decode_run(
    context: int | None, steps: int, seed: int, vllm: bool
) -> tuple[dict[str, Any], dict[str, Any] | str]:
    """Decode-only steps: MAX_SEQS requests (prompts of the main workload's lengths, or
    all ``context`` long) that never finish while timed; hybridkv twice around vLLM."""
    longest = 8192 if context is None else context
    warmup = longest * MAX_SEQS // BUDGET + 64  # prefill of every prompt, then some
    out = warmup + steps + 16  # nobody finishes while timed
    if context is None:
        wl = {**make_workload(MAX_SEQS, seed), "outputs": [out] * MAX_SEQS}
    else:
        wl = make_workload(MAX_SEQS, seed, context=context, max_output=out)
    mt = max_len(wl)
    res = run_driver(HybridSide(CLOCK, max_tokens=mt), wl, steps, warmup, CLOCK, True)
    if not vllm:
        return res, "vLLM side skipped"
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "workload.npz")
        save_workload(wl, path)
        vres = run_vllm(path, steps, warmup, mt, decode_only=True)
    again = run_driver(HybridSide(CLOCK, max_tokens=mt), wl, steps, warmup, CLOCK, True)
    for k in ("us_per_step", "us_p50", "us_p99", "wall_us_per_step"):
        res[k] = (res[k] + again[k]) / 2
    return res, vres


def decode_section(con: Any, a: argparse.Namespace) -> None:
    from rich.table import Table

    res, vres = _decode_run(None, a.decode_steps, a.seed, not a.no_vllm)
    t = Table(
        title=(
            f"Decode-only steps: {MAX_SEQS} requests decoding one token each (the main "
            f"workload's prompts), {res['steps']} steps"
        )
    )
    for col in ("manager", "CPU µs/step mean", "p50", "p99"):
        t.add_column(col, justify="right" if col != "manager" else "left")
    rows = [("hybridkv", res)]
    if isinstance(vres, dict):
        rows.append((f"vLLM {vres.get('version', '')}", vres))
    for name, r in rows:
        t.add_row(name, f"{r['us_per_step']:.0f}", f"{r['us_p50']:.0f}", f"{r['us_p99']:.0f}")
    con.print(t)
    if isinstance(vres, dict):
        con.print(
            f"decode-only: hybridkv is {vres['us_per_step'] / res['us_per_step']:.1f}x faster "
            f"(p50 {vres['us_p50'] / res['us_p50']:.1f}x); goal >= 100x"
        )
    else:
        con.print(vres)


def context_section(con: Any, a: argparse.Namespace) -> None:
    """hybridkv's decode-only step at growing context: the step's work does not grow
    with context, so neither should its cost (goal: within +-15 % of the shortest)."""
    from rich.table import Table

    contexts = [int(x) for x in a.contexts.split(",") if x.strip()]
    if not contexts:
        return
    t = Table(title=f"hybridkv decode-only step vs context ({MAX_SEQS} requests)")
    for col in ("context tokens", "CPU µs/step mean", "p50", "p99", "mean vs first"):
        t.add_column(col, justify="right")
    first = None
    for c in contexts:
        r, _ = _decode_run(c, a.decode_steps, a.seed, False)
        first = first or r["us_per_step"]
        t.add_row(
            str(c),
            f"{r['us_per_step']:.0f}",
            f"{r['us_p50']:.0f}",
            f"{r['us_p99']:.0f}",
            f"{100 * (r['us_per_step'] / first - 1):+.0f} %",
        )
    con.print(t)


def swa_section(con: Any, a: argparse.Namespace) -> None:
    """hybridkv's step on the main workload with full attention + N sliding-window
    groups of the same block size (no state group): what each window group adds."""
    from rich.table import Table

    if a.max_swa_groups < 1:
        return
    wl = make_workload(a.requests, a.seed)
    t = Table(title="hybridkv step, full attention + N sliding-window 4096 groups (block 16)")
    for col in ("window groups", "CPU µs/step mean", "p50", "added per window group"):
        t.add_column(col, justify="right")
    base = None
    for n in range(a.max_swa_groups + 1):
        r = run_driver(HybridSide(CLOCK, swa_groups=n, state=False), wl, a.steps, a.warmup, CLOCK)
        base = base or r["us_per_step"]
        added = "" if n == 0 else f"{100 * (r['us_per_step'] / base - 1) / n:.0f} % of 0-group"
        t.add_row(str(n), f"{r['us_per_step']:.0f}", f"{r['us_p50']:.0f}", added)
    con.print(t)
    con.print("goal: each extra window group <= 15 % of a one-group (full attention) step")


if __name__ == "__main__":
    sys.exit(main())
