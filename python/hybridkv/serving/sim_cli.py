"""``hybridkv simulate``'s command line: the parser (:func:`add_parser`, registered by
:mod:`hybridkv.cli` through :mod:`hybridkv.serving.simulate`), its argument types, the
:class:`SimConfig` it builds, and :func:`main`, which runs the simulation and prints the
table or the JSON (and writes the plot)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from hybridkv.errors import InvalidArgumentError
from hybridkv.serving.cost_model import GPUS
from hybridkv.serving.layouts import LAYOUTS
from hybridkv.serving.scheduler import POLICIES, ExternalPrefixSource
from hybridkv.serving.sharegpt_trace import ShareGPTOptions
from hybridkv.serving.sim_config import SimConfig
from hybridkv.serving.sim_report import render_table, write_plot
from hybridkv.serving.sim_run import run
from hybridkv.serving.traces import TraceWindow

#: The most GPUs ``--num-gpus`` takes (far beyond any one deployment).
MAX_NUM_GPUS = 1 << 16


def _gpu_count(text: str) -> int:
    from hybridkv.argtypes import positive_int

    n = positive_int(text)
    if n > MAX_NUM_GPUS:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_NUM_GPUS} GPUs, got {text}")
    return n


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``hybridkv simulate`` on an argparse subparsers object."""
    from hybridkv.argtypes import add_state_cache_slots_argument, non_negative_int
    from hybridkv.argtypes import positive_int as _positive
    from hybridkv.units import size_type as _size

    p: argparse.ArgumentParser = subparsers.add_parser(
        "simulate",
        help="replay a serving trace on hybridkv's and vLLM's memory layouts (no GPU)",
        description=(
            "Replay a serving trace through the scheduler and the KV-cache manager, with "
            "step times from a roofline cost model. Without --layout every layout runs "
            "and prints side by side."
        ),
    )
    p.add_argument("--model", required=True, help="bundled model name or config.json path")
    p.add_argument("--memory", required=True, type=_size, help="KV-cache memory, e.g. 16GiB")
    p.add_argument(
        "--trace",
        required=True,
        help="a bundled trace (chat, docqa, agentic: small and fast), 'sharegpt' (multi-turn "
        "ShareGPT sessions; needs the 'traces' extra), a Mooncake trace FILE.jsonl[.gz] "
        "(timestamp ms, input_length, output_length, hash_ids of 512-token blocks), or a "
        "hybridkv trace file (.json[.gz])",
    )
    win = p.add_argument_group(
        "trace window (any trace)",
        "which requests run and how fast; applied after the trace is read",
    )
    win.add_argument(
        "--trace-start",
        type=_seconds,
        metavar="SECONDS",
        help="keep requests arriving at or after this trace time (closed-loop turns "
        "follow their session's first request); times are rebased so it is 0",
    )
    win.add_argument(
        "--trace-end",
        type=_seconds,
        metavar="SECONDS",
        help="keep requests arriving before this trace time",
    )
    win.add_argument(
        "--trace-max-requests",
        type=_positive,
        metavar="N",
        help="keep only the first N requests (of the window)",
    )
    win.add_argument(
        "--time-scale",
        type=_scale,
        default=1.0,
        metavar="FACTOR",
        help="multiply every arrival time and think delay (0.5: the same requests twice "
        "as fast; default 1)",
    )
    sg = p.add_argument_group("ShareGPT sessions (--trace sharegpt)")
    sg.add_argument(
        "--sharegpt-sessions", type=_positive, metavar="N", help="sessions to sample (100)"
    )
    sg.add_argument(
        "--sharegpt-min-rounds",
        type=_positive,
        metavar="N",
        help="keep conversations of at least N rounds (user message + reply; 4)",
    )
    sg.add_argument(
        "--sharegpt-session-rate",
        type=_scale,
        metavar="PER_S",
        help="sessions start as a Poisson process at this rate per second (1.0)",
    )
    sg.add_argument(
        "--sharegpt-think-time",
        type=_seconds,
        metavar="SECONDS",
        help="mean exponential think time between a reply and the next turn (5.0)",
    )
    p.add_argument(
        "--layout",
        action="append",
        choices=list(LAYOUTS),
        help="run this layout (repeat for several; default: every layout: "
        + "; ".join(f"{k}: {v.help}" for k, v in LAYOUTS.items())
        + ")",
    )
    p.add_argument("--max-num-seqs", type=_positive, default=64)
    p.add_argument("--max-num-batched-tokens", type=_positive, default=8192)
    p.add_argument("--max-model-len", type=_positive, help="default: the trace's longest request")
    p.add_argument("--block-size", type=_positive, default=16)
    p.add_argument("--mamba-cache-mode", choices=("none", "align", "all"), default="align")
    p.add_argument("--policy", choices=POLICIES, default="fcfs")
    p.add_argument(
        "--state-checkpoint-tokens",
        type=_positive,
        default=256,
        help="static layout, align mode: state checkpoint interval in tokens (elastic: "
        "a kept prompt-end checkpoint lies on the prompt's last multiple of it)",
    )
    p.add_argument(
        "--elastic-checkpoint-tokens",
        type=_positive,
        help="elastic layout, align mode: state block size (default: --block-size; "
        "checkpoints then land where the checkpoint policy puts them)",
    )
    add_state_cache_slots_argument(p)
    p.add_argument(
        "--long-prefill-token-threshold", type=_positive, help="cap one request's prefill chunk"
    )
    p.add_argument("--gpu", choices=sorted(GPUS), default="h100-sxm", help="roofline peaks")
    p.add_argument(
        "--num-gpus",
        type=_gpu_count,
        help="GPUs serving the model (aggregate peaks, ideal TP); default: the smallest "
        "count that holds the weights + KV cache + activations; a count that cannot hold "
        "them is refused",
    )
    p.add_argument(
        "--seed",
        type=non_negative_int,
        help="regenerate the named bundled trace kind, or resample the ShareGPT sessions, "
        "with this seed",
    )
    p.add_argument(
        "--offload",
        metavar="SPEC",
        help="offload tiers, e.g. cpu:8GiB,disk:/path:100GiB,redis://127.0.0.1:6379 "
        "(optionally ,write-back); reports external hits per tier",
    )
    p.add_argument(
        "--offload-weights",
        metavar="ID",
        help="the weights' revision or checksum, part of every offloaded block's key; "
        "required with a disk or redis tier (they keep blocks across runs: without it, "
        "blocks computed with other weights under the same config would be served)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="write a PNG of pool usage and hit rate")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=main)
    return p


def _float_arg(text: str, *, positive: bool) -> float:
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise argparse.ArgumentTypeError(
            f"expected a finite number {'> 0' if positive else '>= 0'}, got {text!r}"
        )
    return v


def _seconds(text: str) -> float:
    """``argparse`` type: finite seconds >= 0."""
    return _float_arg(text, positive=False)


def _scale(text: str) -> float:
    """``argparse`` type: a finite factor or rate > 0."""
    return _float_arg(text, positive=True)


def _sharegpt_options(args: argparse.Namespace) -> ShareGPTOptions | None:
    given = {
        "sessions": getattr(args, "sharegpt_sessions", None),
        "min_rounds": getattr(args, "sharegpt_min_rounds", None),
        "session_rate": getattr(args, "sharegpt_session_rate", None),
        "think_time_s": getattr(args, "sharegpt_think_time", None),
    }
    opts = {k: v for k, v in given.items() if v is not None}
    return ShareGPTOptions(**opts) if opts else None


def config_from_args(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        model=args.model,
        memory_bytes=args.memory,
        trace=args.trace,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len,
        block_size=args.block_size,
        mamba_cache_mode=args.mamba_cache_mode,
        policy=args.policy,
        gpu=args.gpu,
        num_gpus=args.num_gpus,
        seed=args.seed,
        long_prefill_token_threshold=args.long_prefill_token_threshold,
        state_checkpoint_tokens=args.state_checkpoint_tokens,
        elastic_checkpoint_tokens=getattr(args, "elastic_checkpoint_tokens", None),
        state_cache_slots=args.state_cache_slots,
        trace_window=TraceWindow(
            start_s=getattr(args, "trace_start", None),
            end_s=getattr(args, "trace_end", None),
            max_requests=getattr(args, "trace_max_requests", None),
            time_scale=getattr(args, "time_scale", 1.0),
        ),
        sharegpt=_sharegpt_options(args),
    )


def _check_plot_path(path: str) -> None:
    """Refuse a ``--plot`` target the run could not write, before the run starts."""
    import importlib.util
    import os

    text = str(path)
    if not text.lower().endswith(".png"):
        raise InvalidArgumentError(f"--plot writes a PNG: {text!r} does not end in .png")
    target = Path(text)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise InvalidArgumentError(f"--plot: directory {str(parent)!r} does not exist")
    if target.is_dir():
        raise InvalidArgumentError(f"--plot: {text!r} is a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InvalidArgumentError(f"--plot: directory {str(parent)!r} is not writable")
    if importlib.util.find_spec("matplotlib") is None:
        raise InvalidArgumentError("--plot needs matplotlib: pip install matplotlib")


def main(args: argparse.Namespace, offload: ExternalPrefixSource | None = None) -> int:
    """Run ``hybridkv simulate``; HybridKVError propagates for the CLI to report."""
    import json
    import sys

    from rich.console import Console

    cfg = config_from_args(args)
    if args.plot is not None:
        _check_plot_path(args.plot)
    layouts = args.layout or None
    show = not args.no_progress and not args.json and sys.stderr.isatty()
    sim_offload = None
    weights = getattr(args, "offload_weights", None)
    if weights is not None and getattr(args, "offload", None) is None:
        raise InvalidArgumentError("--offload-weights names the weights of --offload's tiers")
    # An empty --offload is an error (parse_offload_spec says so), not a silent no-op.
    if offload is None and getattr(args, "offload", None) is not None:
        from hybridkv.offload import parse_offload_spec
        from hybridkv.offload.sim import SimOffload

        sim_offload = SimOffload(parse_offload_spec(args.offload), weights=weights)
        offload = sim_offload
    try:
        report = run(
            cfg,
            layouts,
            progress=show,
            offload=offload,
            manager_factory=None if sim_offload is None else sim_offload.manager_factory,
        )
    finally:
        if sim_offload is not None:
            sim_offload.close()
    if args.plot:
        write_plot(report, args.plot)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    console = Console(width=None if sys.stdout.isatty() else 120)
    console.print(render_table(report))
    if sim_offload is not None:
        from hybridkv.offload.sim import render_offload

        console.print(render_offload({k: v.report for k, v in report.results.items()}))
    for lay, why in report.to_dict()["skipped"].items():
        console.print(f"[yellow]{lay} layout skipped:[/] {why}")
    console.print(f"GPUs: {report.cost['sizing']}")
    console.print(
        f"simulator: {report.sim_requests_per_wall_s:.1f} simulated requests per wall second"
    )
    if args.plot:
        console.print(f"plot written to {args.plot}")
    return 0
