"""Whole scheduler step of hybridkv's ``Scheduler`` vs vLLM v1's real ``Scheduler``.

Workload: the one of ``bench_manager.py`` (prompts of 1-8k tokens, half starting with
one shared 2,000-token system prefix, 32-256 output tokens, block size 16, groups full
attention + sliding window 4096 + Mamba state in ``align`` mode, prefix caching on,
at most 256 running requests, 8,192 tokens per step with chunked prefill), with
continuous arrivals: before every step new requests join the waiting queue until it
holds ``--queue`` of them.

Both sides run the same driver. Per step it times, in the calling thread's CPU time,
the intake of that step's arrivals (vLLM: building its ``Request``, which hashes the
prompt's blocks, and ``add_request``; hybridkv: ``add_request``), ``schedule()`` and
``update_from_output()`` with one sampled token per request that samples. The sampled
token is the same fixed id on both sides; nothing else (no model) runs.

Decisions are checked, not assumed: every step, both sides' scheduled requests with
their token counts, and the requests that sample, must be equal. The bench prints the
first step where they differ and exits non-zero if they ever do, since a ratio over
different work would mean nothing.

vLLM's ``Scheduler`` is built from its own ``SchedulerConfig`` and ``CacheConfig`` and
the same ``KVCacheConfig`` groups as ``bench_manager.py`` uses. Its ``ModelConfig``
needs a model checkpoint the CPU-only core install cannot inspect, so the vLLM side
passes a stand-in holding only the fields the scheduler reads (no multimodal input,
decoder-only, ``max_model_len``); every scheduling decision is vLLM's own code.
vLLM runs in a subprocess with the python of a separate venv (default
``/work/vllm-venv``, or ``$VLLM_VENV``); without it only hybridkv's side runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from bench_manager import (
    BS,
    BUDGET,
    MAX_SEQS,
    SYS_PREFIX,
    WINDOW,
    load_workload,
    make_workload,
    run_peer,
    save_workload,
    vllm_kv_groups,
)

CLOCK = time.thread_time
SAMPLED = 7
MAX_MODEL_LEN = 8192 + 512
FULL_BLOCKS = MAX_SEQS * (8192 + 256) // BS * 2 + 1
SWA_BLOCKS = MAX_SEQS * (WINDOW // BS + 2) + BUDGET // BS + 4096
STATE_BLOCKS = MAX_SEQS * 2 + 4096


# --- the driver (identical for both sides) -------------------------------------------


class Side:
    """What the driver needs from a scheduler. ``step`` returns the step's decisions:
    ``[(req_id, num_new_tokens), ...]`` in schedule order and the sampling ids."""

    name = ""

    def add(self, rid: int, prompt: np.ndarray, max_tokens: int) -> None: ...
    def schedule(self) -> Any: ...
    def decisions(self, out: Any) -> tuple[list[tuple[int, int]], list[int]]: ...
    def update(self, out: Any, sample_ids: list[int]) -> int: ...
    def num_waiting(self) -> int: ...


def run_driver(
    side: Side, wl: dict[str, Any], steps: int, warmup: int, queue: int, clock: Callable[[], float]
) -> dict[str, Any]:
    prompts: list[np.ndarray] = wl["prompts"]
    outputs: list[int] = wl["outputs"]
    nxt = 0
    times: list[float] = []
    digest = hashlib.sha256()
    per_step: list[str] = []
    sched_tok = n_sched = n_sampled = finished = 0
    for step in range(warmup + steps):
        t0 = clock()
        while side.num_waiting() < queue and nxt < len(prompts):
            side.add(nxt, prompts[nxt], outputs[nxt])
            nxt += 1
        out = side.schedule()
        t1 = clock()
        sched, sample = side.decisions(out)  # untimed: the check, not the work
        t2 = clock()
        finished += side.update(out, sample)
        t3 = clock()
        key = json.dumps([sched, sample])
        digest.update(key.encode())
        per_step.append(hashlib.sha256(key.encode()).hexdigest()[:16])
        if step >= warmup:
            times.append((t1 - t0) + (t3 - t2))
            sched_tok += sum(n for _, n in sched)
            n_sched += len(sched)
            n_sampled += len(sample)
    return {
        "us_per_step": 1e6 * float(np.mean(times)),
        "us_p50": 1e6 * float(np.percentile(times, 50)),
        "us_p99": 1e6 * float(np.percentile(times, 99)),
        "tokens_per_step": sched_tok / max(steps, 1),
        "reqs_per_step": n_sched / max(steps, 1),
        "sampled_per_step": n_sampled / max(steps, 1),
        "finished": finished,
        "digest": digest.hexdigest(),
        "per_step": per_step,
    }


# --- hybridkv ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Group:
    """A plan group as the scheduler reads it (index, growth, size)."""

    index: int
    kind: str
    block_size: int
    num_blocks: int
    grows: bool
    window: int | None = None
    chunk_size: int | None = None
    max_encoder_len: int | None = None


@dataclass(frozen=True)
class _Plan:
    groups: tuple[_Group, ...]
    mamba_cache_mode: str = "align"


def bench_plan() -> _Plan:
    return _Plan(
        (
            _Group(0, "full_attention", BS, FULL_BLOCKS, True),
            _Group(1, "sliding_window", BS, SWA_BLOCKS, False, window=WINDOW),
            _Group(2, "state", BS, STATE_BLOCKS, False),
        )
    )


class HybridSide(Side):
    name = "hybridkv"

    def __init__(self) -> None:
        from hybridkv import KVCacheManager
        from hybridkv.scheduler import Scheduler

        self.m = KVCacheManager(bench_plan(), enable_prefix_caching=True, hash_seed=0)
        self.s = Scheduler(
            self.m,
            max_num_batched_tokens=BUDGET,
            max_num_seqs=MAX_SEQS,
            max_model_len=MAX_MODEL_LEN,
            # vLLM's scheduler cuts an admitted prompt's chunk at the shared-prefix
            # junction in align mode; so does hybridkv's with this option.
            cut_at_shared_prefix=True,
            # And cuts prefill chunks for the Mamba checkpoints by vLLM's rule.
            chunk_split="vllm",
            # And admits by vLLM's whole-sequence check alone (no hold-back for the
            # running prefills' rest, hybridkv's default).
            reserve_running_prompts=False,
        )

    def add(self, rid: int, prompt: np.ndarray, max_tokens: int) -> None:
        self.s.add_request(rid, prompt, max_tokens)

    def schedule(self) -> Any:
        return self.s.schedule()

    def decisions(self, out: Any) -> tuple[list[tuple[int, int]], list[int]]:
        sched = list(zip(out.req_ids.tolist(), out.num_new_tokens.tolist(), strict=True))
        return sched, out.sample_req_ids.tolist()

    def update(self, out: Any, sample_ids: list[int]) -> int:
        toks = np.full(len(sample_ids), SAMPLED, dtype=np.int32)
        return len(self.s.update_from_output(toks))

    def num_waiting(self) -> int:
        return self.s.num_waiting


# --- vLLM (runs in its own venv) -------------------------------------------------------


def vllm_side_main(wl_path: str, steps: int, warmup: int, queue: int) -> None:
    from types import SimpleNamespace

    import vllm
    from vllm.config import CacheConfig, DeviceConfig, SchedulerConfig, VllmConfig
    from vllm.sampling_params import SamplingParams
    from vllm.utils.hashing import sha256
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.kv_cache_interface import (
        KVCacheConfig,
    )
    from vllm.v1.outputs import ModelRunnerOutput
    from vllm.v1.request import Request
    from vllm.v1.structured_output import StructuredOutputManager

    wl = load_workload(wl_path)
    init_none_hash(sha256)
    groups = vllm_kv_groups()
    # One shared pool holding what hybridkv's three pools hold.
    num_blocks = FULL_BLOCKS + SWA_BLOCKS + STATE_BLOCKS
    kv_cfg = KVCacheConfig(num_blocks=num_blocks, kv_cache_tensors=[], kv_cache_groups=groups)
    sched_cfg = SchedulerConfig(
        max_num_seqs=MAX_SEQS,
        max_num_batched_tokens=BUDGET,
        max_model_len=MAX_MODEL_LEN,
        enable_chunked_prefill=True,
        is_encoder_decoder=False,
    )
    cache_cfg = CacheConfig(block_size=BS, enable_prefix_caching=True, mamba_cache_mode="align")
    cache_cfg.num_gpu_blocks = num_blocks
    vcfg = VllmConfig(
        scheduler_config=sched_cfg, cache_config=cache_cfg, device_config=DeviceConfig("cpu")
    )
    # The fields of ModelConfig the scheduler reads (see the module docstring).
    model_cfg = SimpleNamespace(
        uses_mrope=False,
        is_encoder_decoder=False,
        max_model_len=MAX_MODEL_LEN,
        runner_type="generate",
        is_diffusion=False,
        supports_multimodal_inputs=False,
        return_sampling_mask=False,
        multimodal_config=None,
        hf_config=None,
        skip_tokenizer_init=True,
    )
    object.__setattr__(vcfg, "model_config", model_cfg)
    structured = StructuredOutputManager(vcfg)  # no request uses a grammar
    sched = Scheduler(vcfg, kv_cfg, structured_output_manager=structured, block_size=BS)
    hasher = get_request_block_hasher(BS, sha256)

    class VllmSide(Side):
        name = "vllm"

        def add(self, rid: int, prompt: np.ndarray, max_tokens: int) -> None:
            sp = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
            sched.add_request(Request(str(rid), prompt.tolist(), sp, None, block_hasher=hasher))

        def schedule(self) -> Any:
            return sched.schedule()

        def decisions(self, out: Any) -> tuple[list[tuple[int, int]], list[int]]:
            pairs = [(int(k), int(v)) for k, v in out.num_scheduled_tokens.items()]
            sample = [
                rid
                for rid, _ in pairs
                if sched.requests[str(rid)].num_computed_tokens
                >= sched.requests[str(rid)].num_tokens
            ]
            return pairs, sample

        def update(self, out: Any, sample_ids: list[int]) -> int:
            req_ids = list(out.num_scheduled_tokens)
            chosen = {str(r) for r in sample_ids}
            mro = ModelRunnerOutput(
                req_ids=req_ids,
                req_id_to_index={r: i for i, r in enumerate(req_ids)},
                sampled_token_ids=[[SAMPLED] if r in chosen else [] for r in req_ids],
            )
            done = 0
            for eco in sched.update_from_output(out, mro).values():
                done += sum(1 for o in eco.outputs if o.finish_reason is not None)
            return done

        def num_waiting(self) -> int:
            return len(sched.waiting)

    res = run_driver(VllmSide(), wl, steps, warmup, queue, CLOCK)
    res["version"] = vllm.__version__
    print(json.dumps(res))


def run_vllm(wl_path: str, steps: int, warmup: int, queue: int) -> dict[str, Any] | str:
    args = [wl_path, "--steps", str(steps), "--warmup", str(warmup), "--queue", str(queue)]
    return run_peer(__file__, args)


def first_difference(a: list[str], b: list[str]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--queue", type=int, default=32, help="waiting requests kept queued")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-vllm", action="store_true")
    ap.add_argument("--vllm-side", metavar="WORKLOAD", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.vllm_side:
        vllm_side_main(a.vllm_side, a.steps, a.warmup, a.queue)
        return 0

    from rich.console import Console
    from rich.table import Table

    wl = make_workload(a.requests, a.seed)
    res = run_driver(HybridSide(), wl, a.steps, a.warmup, a.queue, CLOCK)
    vres: dict[str, Any] | str
    if a.no_vllm:
        vres = "vLLM side skipped (--no-vllm)"
    else:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "workload.npz")
            save_workload(wl, path)
            vres = run_vllm(path, a.steps, a.warmup, a.queue)
        # hybridkv once more after vLLM, so both sides see the machine's load alike;
        # the row shows the mean of the two runs.
        again = run_driver(HybridSide(), wl, a.steps, a.warmup, a.queue, CLOCK)
        for k in ("us_per_step", "us_p50", "us_p99"):
            res[k] = (res[k] + again[k]) / 2

    con = Console(width=max(Console().width, 120))
    t = Table(
        title=(
            f"Scheduler step (intake + schedule + update_from_output): {MAX_SEQS} seqs max, "
            f"prompts 1-8k (half share a {SYS_PREFIX}-token prefix), full + SWA {WINDOW} + "
            f"Mamba (align), block {BS}, budget {BUDGET} tokens, {a.queue} queued, "
            f"{a.steps} steps after {a.warmup} warm-up"
        )
    )
    cols = ("scheduler", "CPU µs/step mean", "p50", "p99", "tokens/step", "reqs/step")
    for col in (*cols, "sampled/step", "finished"):
        t.add_column(col, justify="left" if col == "scheduler" else "right")

    def row(name: str, r: dict[str, Any]) -> None:
        t.add_row(
            name,
            f"{r['us_per_step']:.0f}",
            f"{r['us_p50']:.0f}",
            f"{r['us_p99']:.0f}",
            f"{r['tokens_per_step']:.0f}",
            f"{r['reqs_per_step']:.1f}",
            f"{r['sampled_per_step']:.1f}",
            str(r["finished"]),
        )

    row("hybridkv", res)
    if isinstance(vres, dict):
        row(f"vLLM {vres.get('version', '')}", vres)
    con.print(t)
    if not isinstance(vres, dict):
        con.print(vres)
        return 0
    diff = first_difference(res["per_step"], vres["per_step"])
    if diff is not None:
        con.print(
            f"[red]decisions differ from step {diff} on (scheduled requests or sampled "
            "requests): the ratio would compare different work[/red]"
        )
        return 1
    ratio = vres["us_per_step"] / res["us_per_step"]
    r50 = vres["us_p50"] / res["us_p50"]
    r99 = vres["us_p99"] / res["us_p99"]
    con.print(
        f"same decisions on all {a.warmup + a.steps} steps; hybridkv is {ratio:.1f}x faster "
        f"per step than vLLM in CPU time (p50 {r50:.1f}x, p99 {r99:.1f}x); goal >= 30x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
